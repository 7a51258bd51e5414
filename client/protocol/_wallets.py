"""Canonical crypto-currency wallet addresses (private: use :func:`client.protocol.canonical.normalize`).

The canonical form is ``chain:address`` with the chain's checksum verified: base58check (Bitcoin and
Litecoin legacy, TRON) is never case-folded, bech32/bech32m (BIP 173/350) is lower-cased, EVM addresses
are lower-cased after their EIP-55 mixed-case checksum, if any, verifies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import base58
from bech32 import CHARSET, bech32_hrp_expand, bech32_polymod, convertbits
from Crypto.Hash import keccak

from client.protocol.errors import InvalidIndicator

__all__ = ["CHAINS", "CHAIN_ALIASES", "canonical_wallet"]

_KIND: Final = "crypto_wallet"
_BECH32_CONST: Final = 1
_BECH32M_CONST: Final = 0x2BC830A3
_BECH32_MAX_LENGTH: Final = 90
_EVM_ADDRESS = re.compile(r"0[xX]([0-9a-fA-F]{40})")

#: Canonical chain names.
CHAINS: Final[tuple[str, ...]] = ("btc", "eth", "ltc", "trx")

#: Accepted spellings of each chain (lower case). Every EVM chain shares one address space (the same key
#: controls the same address on each), so EVM chains are all read as ``eth``.
CHAIN_ALIASES: Final[dict[str, str]] = {
    "btc": "btc",
    "bitcoin": "btc",
    "xbt": "btc",
    "eth": "eth",
    "ethereum": "eth",
    "erc20": "eth",
    "erc-20": "eth",
    "evm": "eth",
    "bsc": "eth",
    "bep20": "eth",
    "bep-20": "eth",
    "bnb": "eth",
    "polygon": "eth",
    "matic": "eth",
    "arbitrum": "eth",
    "optimism": "eth",
    "base": "eth",
    "avax": "eth",
    "ltc": "ltc",
    "litecoin": "ltc",
    "trx": "trx",
    "tron": "trx",
    "trc20": "trx",
    "trc-20": "trx",
}
_TOKEN_PREFIXES: Final = ("usdt-", "usdt_", "usdt ", "usdc-", "usdc_", "usdc ")


def _refuse(reason: str) -> InvalidIndicator:
    return InvalidIndicator(_KIND, reason)


def _base58check(address: str, versions: tuple[int, ...], chain: str) -> str:
    """Verify a base58check address of 1 version byte + 20 bytes; return it unchanged (never case-folded)."""
    try:
        payload = base58.b58decode_check(address)
    except ValueError:
        raise _refuse(
            f"{chain} address fails its base58check checksum or has a non-base58 character"
        ) from None
    if len(payload) != 21:
        raise _refuse(f"{chain} address has {len(payload)} bytes, expected 21")
    if payload[0] not in versions:
        raise _refuse(f"{chain} address has version byte 0x{payload[0]:02x}, not one of this chain's")
    if base58.b58encode_check(payload).decode("ascii") != address:
        raise _refuse(f"{chain} address is not in canonical base58")
    return address


def _segwit(address: str, hrp: str, chain: str) -> str:
    """Verify a segwit address (BIP 173 bech32 for version 0, BIP 350 bech32m for 1-16); return lower case."""
    if len(address) > _BECH32_MAX_LENGTH:
        raise _refuse(f"{chain} segwit address longer than {_BECH32_MAX_LENGTH} characters")
    if not all(33 <= ord(c) <= 126 for c in address):
        raise _refuse(f"{chain} segwit address has a character outside printable ASCII")
    if address.lower() != address and address.upper() != address:
        raise _refuse(f"{chain} segwit address mixes upper and lower case")
    address = address.lower()
    pos = address.rfind("1")
    if address[:pos] != hrp or pos + 7 > len(address):
        raise _refuse(f"{chain} segwit address must start with '{hrp}1'")
    try:
        data = [CHARSET.index(c) for c in address[pos + 1 :]]
    except ValueError:
        raise _refuse(f"{chain} segwit address has a character outside the bech32 alphabet") from None
    constant = bech32_polymod(bech32_hrp_expand(hrp) + data)
    version = data[0]
    if version > 16:
        raise _refuse(f"{chain} segwit version {version} does not exist")
    if constant != (_BECH32_CONST if version == 0 else _BECH32M_CONST):
        raise _refuse(f"{chain} segwit address fails its bech32{'' if version == 0 else 'm'} checksum")
    program = convertbits(data[1:-6], 5, 8, False)
    if program is None or not 2 <= len(program) <= 40:
        raise _refuse(f"{chain} segwit address has a malformed witness program")
    if version == 0 and len(program) not in (20, 32):
        raise _refuse(f"{chain} segwit version 0 program must be 20 or 32 bytes, not {len(program)}")
    return address


def _btc(address: str) -> str:
    if address[:3].lower() == "bc1":
        return _segwit(address, "bc", "btc")
    return _base58check(address, (0x00, 0x05), "btc")


def _ltc(address: str) -> str:
    if address[:4].lower() == "ltc1":
        return _segwit(address, "ltc", "ltc")
    return _base58check(address, (0x30, 0x32, 0x05), "ltc")


def _trx(address: str) -> str:
    return _base58check(address, (0x41,), "trx")


def _eth(address: str) -> str:
    match = _EVM_ADDRESS.fullmatch(address)
    if match is None:
        raise _refuse("eth address must be 0x followed by 40 hexadecimal digits")
    digits = match[1]
    lower = digits.lower()
    if digits != lower and digits != digits.upper():
        checksum = keccak.new(digest_bits=256, data=lower.encode("ascii")).hexdigest()
        for char, nibble in zip(digits, checksum, strict=False):
            if char.isalpha() and char.isupper() != (int(nibble, 16) >= 8):
                raise _refuse("eth address is mixed-case but its EIP-55 checksum does not verify")
    return "0x" + lower


_CHECKERS: Final[dict[str, Callable[[str], str]]] = {"btc": _btc, "eth": _eth, "ltc": _ltc, "trx": _trx}


def _detect_chain(address: str) -> str:
    """Guess the chain of a bare address from its shape (the checksum then decides)."""
    if address[:2] in ("0x", "0X"):
        return "eth"
    if address[:3].lower() == "bc1" or address[:1] in ("1", "3"):
        return "btc"
    if address[:4].lower() == "ltc1" or address[:1] in ("L", "M"):
        return "ltc"
    if address[:1] == "T":
        return "trx"
    raise _refuse("cannot tell the chain from the address; write it as chain:address")


def canonical_wallet(value: str) -> str:
    """Return ``chain:address`` for ``chain:address`` (chain aliases allowed) or a bare address."""
    chain_text, colon, address = value.partition(":")
    if colon:
        chain_name = chain_text.strip().lower()
        for prefix in _TOKEN_PREFIXES:
            if chain_name.startswith(prefix):
                chain_name = chain_name[len(prefix) :]
                break
        chain = CHAIN_ALIASES.get(chain_name)
        if chain is None:
            raise _refuse(f"unknown chain {chain_text.strip()!r}; known: {', '.join(sorted(CHAIN_ALIASES))}")
        # Payment URIs (BIP 21, EIP 681) carry parameters after the address.
        address = re.split(r"[?@/]", address.strip(), maxsplit=1)[0]
        if not address:
            raise _refuse("no address after the chain")
    else:
        address = chain_text
        chain = _detect_chain(address)
    return f"{chain}:{_CHECKERS[chain](address)}"
