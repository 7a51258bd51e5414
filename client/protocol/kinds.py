"""Indicator kinds, their codes and the byte encodings that every digest starts from.

The protocol version is :data:`client.protocol.versions.PROTOCOL_VERSION`; each domain-separation
label carries the version in which its bytes last changed (``petanda/v1/…``, ``petanda/v2/…``).

Two member states' digests match only if they agree on these bytes exactly; ``docs/PROTOCOL.md``
specifies them and ``tests/vectors/`` pins them.
"""

from __future__ import annotations

from typing import Final

from client.protocol.errors import UnknownKind

__all__ = [
    "CATEGORIES",
    "KINDS",
    "TIER_HMAC",
    "TIER_OPRF",
    "TLP_LEVELS",
    "indicator_bytes",
    "kind_code",
]

#: The indicator kinds, in the order of their one-byte codes (index + 1) used in binary headers.
KINDS: Final[tuple[str, ...]] = (
    "phone",
    "email",
    "url",
    "domain",
    "ipv4",
    "ipv6",
    "bank_account",
    "crypto_wallet",
    "handle",
)

#: Digest tiers, with their one-byte codes used in binary headers.
TIER_OPRF: Final = 1
TIER_HMAC: Final = 2

#: Scam categories an indicator's metadata may carry.
CATEGORIES: Final[tuple[str, ...]] = (
    "investment",
    "romance",
    "job_task",
    "impersonation_authority",
    "impersonation_bank",
    "impersonation_courier",
    "phishing",
    "ecommerce",
    "loan",
    "sextortion",
    "money_mule",
    "scam_compound",
    "other",
)

#: TLP 2.0 markings, least to most restrictive.
TLP_LEVELS: Final[tuple[str, ...]] = ("CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED")


def kind_code(kind: str) -> int:
    """Return the one-byte code of ``kind`` (1-based), raising :class:`UnknownKind` for a bad name."""
    try:
        return KINDS.index(kind) + 1
    except ValueError:
        raise UnknownKind(kind, KINDS) from None


def indicator_bytes(kind: str, canonical: str) -> bytes:
    """Encode a canonical indicator as the input of every digest: ``kind || 0x00 || canonical (UTF-8)``.

    Kind names contain no NUL byte, so the encoding is injective across kinds: a domain and an e-mail
    host that happen to spell the same never collide.
    """
    kind_code(kind)
    return kind.encode("ascii") + b"\x00" + canonical.encode("utf-8")
