"""HMAC tier digests: RFC primitives, the project's pinned vectors, and properties of the construction."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol.digest import (
    HmacDigester,
    derive_epoch_key,
    hkdf_sha256,
    hmac_digest,
    hmac_digests,
    hmac_message,
    hmac_sha256,
    oprf_input,
)
from client.protocol.errors import InputError, UnknownKind
from client.protocol.kinds import KINDS, indicator_bytes

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hmac.json").read_text(encoding="utf-8"))
KEY = bytes(range(32))


@pytest.mark.parametrize("case", VECTORS["rfc4231"], ids=lambda c: f"rfc4231-{c['case']}")
def test_rfc4231_hmac_sha256(case: dict[str, str]) -> None:
    assert hmac_sha256(bytes.fromhex(case["key"]), bytes.fromhex(case["data"])).hex() == case["hmac_sha256"]


@pytest.mark.parametrize("case", VECTORS["rfc5869"], ids=lambda c: f"rfc5869-{c['case']}")
def test_rfc5869_hkdf_sha256(case: dict[str, object]) -> None:
    okm = hkdf_sha256(
        bytes.fromhex(str(case["ikm"])),
        salt=bytes.fromhex(str(case["salt"])),
        info=bytes.fromhex(str(case["info"])),
        length=int(str(case["length"])),
    )
    assert okm.hex() == case["okm"]


def test_epoch_keys_match_vectors() -> None:
    secret = bytes.fromhex(VECTORS["federation_secret"])
    for entry in VECTORS["epoch_keys"]:
        assert derive_epoch_key(secret, entry["epoch"]).hex() == entry["key"]


@pytest.mark.parametrize("case", VECTORS["digests"], ids=lambda c: f"{c['kind']}-{c['epoch']}")
def test_digest_vectors(case: dict[str, object]) -> None:
    epoch, kind, canonical = int(str(case["epoch"])), str(case["kind"]), str(case["canonical"])
    key = bytes.fromhex(str(case["key"]))
    assert hmac_message(epoch, kind, canonical).hex() == case["message"]
    assert oprf_input(kind, canonical).hex() == case["oprf_input"]
    assert hmac_digest(key, epoch, kind, canonical).hex() == case["digest"]
    assert HmacDigester(key, epoch, kind).digest(canonical).hex() == case["digest"]


def test_message_layout_is_label_epoch_indicator() -> None:
    assert hmac_message(258, "phone", "+65") == b"petanda/v1/hmac\x00\x00\x00\x01\x02phone\x00+65"
    assert oprf_input("phone", "+65") == indicator_bytes("phone", "+65")


def test_hkdf_agrees_with_cryptography_with_an_empty_salt() -> None:
    expected = HKDF(SHA256(), 32, None, b"info").derive(b"ikm")
    assert hkdf_sha256(b"ikm", info=b"info") == expected


def test_domain_separation() -> None:
    base = hmac_digest(KEY, 1, "domain", "example.com")
    assert hmac_digest(KEY, 2, "domain", "example.com") != base
    assert hmac_digest(KEY, 1, "url", "example.com") != base
    assert hmac_digest(bytes(32), 1, "domain", "example.com") != base
    assert derive_epoch_key(KEY, 1) != derive_epoch_key(KEY, 2)


def test_refusals() -> None:
    with pytest.raises(InputError):
        hmac_digest(b"short", 1, "phone", "+65")
    with pytest.raises(InputError):
        hmac_digest(KEY, -1, "phone", "+65")
    with pytest.raises(InputError):
        hmac_digest(KEY, 1 << 32, "phone", "+65")
    with pytest.raises(UnknownKind):
        hmac_digest(KEY, 1, "nope", "+65")
    with pytest.raises(UnknownKind):
        HmacDigester(KEY, 1, "nope")
    with pytest.raises(InputError):
        derive_epoch_key(b"too short", 1)
    with pytest.raises(InputError):
        hkdf_sha256(b"x", info=b"", length=255 * 32 + 1)


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    epoch=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(KINDS),
    canonicals=st.lists(st.text(max_size=40), max_size=8),
)
def test_fast_paths_equal_the_stdlib_hmac(key: bytes, epoch: int, kind: str, canonicals: list[str]) -> None:
    expected = [hmac.new(key, hmac_message(epoch, kind, c), hashlib.sha256).digest() for c in canonicals]
    assert [hmac_digest(key, epoch, kind, c) for c in canonicals] == expected
    assert hmac_digests(key, epoch, kind, canonicals) == expected
    digester = HmacDigester(key, epoch, kind)
    assert [digester.digest(c) for c in canonicals] == expected
