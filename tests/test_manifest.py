"""Signed manifests: RFC 8032 through cryptography, pinned vectors, codecs, and every refusal."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol.errors import (
    ChainError,
    EncodingError,
    ExpiredError,
    FilterMismatchError,
    InputError,
    RollbackError,
    SignatureError,
    WrongNodeError,
)
from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF
from client.protocol.manifest import (
    GENESIS_HASH,
    FilterEntry,
    FilterIdentity,
    Manifest,
    SignedManifest,
    manifest_hash,
    sign_manifest,
    verify_bucket,
    verify_chain,
    verify_filter,
    verify_manifest,
)
from client.protocol.merkle import MerkleTree

VECTORS = json.loads((Path(__file__).parent / "vectors" / "manifest.json").read_text())
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key()
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
T0 = 1_767_225_600
DAY = 86_400
FILTER = b"PBF1 pretend filter bytes"
BUCKETS = [b"bucket-%d" % i for i in range(4)]


def _manifest(version: int = 1, previous: Manifest | None = None, **changes: object) -> Manifest:
    base = Manifest(
        node_id="SG",
        epoch=7,
        version=version,
        issued_at=T0 + version * 60,
        expires_at=T0 + version * 60 + DAY,
        previous_hash=GENESIS_HASH if previous is None else manifest_hash(previous),
        oprf_public_key=bytes(32),
        entries=(
            FilterEntry(
                "phone",
                TIER_OPRF,
                hashlib.sha256(FILTER).digest(),
                3,
                2,
                MerkleTree.from_entries(BUCKETS).root(),
            ),
            FilterEntry("url", TIER_HMAC, bytes(32), 0, 0, bytes(32)),
        ),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _verify(
    m: Manifest,
    previous: Manifest | None = None,
    *,
    now: int | None = None,
    key: Ed25519PrivateKey = KEY,
    **kw: object,
) -> None:
    verify_manifest(
        sign_manifest(m, key),
        PUB,
        expected_node="SG",
        previous=previous,
        now=m.issued_at + 10 if now is None else now,
        **kw,  # type: ignore[arg-type]
    )


# --- vectors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["rfc8032"], ids=lambda c: f"rfc8032-test{c['test']}")
def test_rfc8032_through_cryptography(case: dict[str, object]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(case["secret_key"])))
    message = bytes.fromhex(str(case["message"]))
    assert key.public_key().public_bytes_raw().hex() == case["public_key"]
    assert key.sign(message).hex() == case["signature"]
    pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(case["public_key"])))
    pub.verify(bytes.fromhex(str(case["signature"])), message)


def test_manifest_vectors_decode_verify_and_chain() -> None:
    pub = bytes.fromhex(VECTORS["manifests"][0]["public_key"])
    previous: Manifest | None = None
    for case in VECTORS["manifests"]:
        signed = SignedManifest.from_bytes(bytes.fromhex(case["signed"]))
        assert signed.manifest.to_bytes().hex() == case["canonical"]
        assert manifest_hash(signed.manifest).hex() == case["manifest_hash"]
        assert signed.to_bytes().hex() == case["signed"]
        assert Manifest.from_bytes(bytes.fromhex(case["canonical"])) == signed.manifest
        verify_manifest(signed, pub, expected_node="SG", previous=previous, now=signed.manifest.issued_at)
        previous = signed.manifest


def test_canonical_layout_starts_with_the_label() -> None:
    raw = _manifest().to_bytes()
    assert raw.startswith(b"petanda/v2/manifest\x00\x02SG\x00\x00\x00\x07" + (1).to_bytes(8, "big"))
    # format 2: three hashes in the fixed part, two entries of 1 + 1 + 32 + 8 + 1 + 32 + 8 bytes, and an
    # empty list of extensions
    assert len(raw) == 20 + 3 + 4 + 8 * 3 + 32 * 3 + 2 + 2 * 83 + 2


def test_entries_are_sorted_and_unique() -> None:
    m = _manifest()
    shuffled = replace(m, entries=tuple(reversed(m.entries)))
    assert shuffled.to_bytes() == m.to_bytes()
    with pytest.raises(InputError, match="two filter entries"):
        replace(m, entries=(m.entries[0], m.entries[0]))


# --- a valid chain and each refusal ------------------------------------------------------------------


def test_valid_chain_and_gap() -> None:
    m1 = _manifest(1)
    _verify(m1)
    m2 = _manifest(2, m1)
    _verify(m2, m1)
    _verify(m2, m2)  # the same manifest again is fine
    m5 = _manifest(5, _manifest(4, _manifest(3, m2)))
    _verify(m5, m2)  # a gap is accepted on signature and version
    with pytest.raises(ChainError, match="skips"):
        _verify(m5, m2, require_contiguous=True)


def test_signature_error() -> None:
    m = _manifest()
    with pytest.raises(SignatureError):
        _verify(m, key=OTHER_KEY)
    signed = sign_manifest(m, KEY)
    forged = SignedManifest(replace(m, version=2), signed.signature)
    with pytest.raises(SignatureError):
        verify_manifest(forged, PUB, expected_node="SG", previous=None, now=m.issued_at)


def test_wrong_node_error() -> None:
    m = _manifest(node_id="MY")
    with pytest.raises(WrongNodeError):
        _verify(m)


def test_rollback_errors() -> None:
    m1, m2 = _manifest(1), _manifest(2, _manifest(1))
    with pytest.raises(RollbackError, match="older"):
        _verify(m1, m2)
    other2 = replace(m2, oprf_public_key=bytes([1]) * 32)
    with pytest.raises(RollbackError, match="equivocation"):
        _verify(other2, m2)
    with pytest.raises(RollbackError, match="epoch"):
        _verify(_manifest(3, m2, epoch=6), m2)
    with pytest.raises(RollbackError, match="issued before"):
        _verify(_manifest(3, m2, issued_at=m2.issued_at - 1), m2, now=m2.issued_at)


def test_chain_error() -> None:
    m1 = _manifest(1)
    with pytest.raises(ChainError, match="fork"):
        _verify(_manifest(2, previous_hash=bytes([9]) * 32), m1)
    with pytest.raises(ChainError):
        _verify(_manifest(2), m1)  # claims to be a first manifest


def test_expired_error() -> None:
    m = _manifest()
    _verify(m, now=m.expires_at)
    with pytest.raises(ExpiredError, match="expired"):
        _verify(m, now=m.expires_at + 1)
    _verify(m, now=m.issued_at - 300)
    with pytest.raises(ExpiredError, match="future"):
        _verify(m, now=m.issued_at - 301)
    with pytest.raises(ExpiredError, match="future"):
        _verify(m, now=m.issued_at - 10, max_clock_skew=5)


def test_previous_of_another_node_is_a_caller_error() -> None:
    with pytest.raises(InputError):
        _verify(_manifest(2), _manifest(1, node_id="MY"))


def test_public_key_as_raw_bytes() -> None:
    m = _manifest()
    verify_manifest(
        sign_manifest(m, KEY), PUB.public_bytes_raw(), expected_node="SG", previous=None, now=m.issued_at
    )
    with pytest.raises(InputError):
        verify_manifest(sign_manifest(m, KEY), b"short", expected_node="SG", previous=None, now=m.issued_at)


def test_verify_chain() -> None:
    m1 = _manifest(1)
    m2 = _manifest(2, m1)
    m3 = _manifest(3, m2)
    chain = [sign_manifest(m, KEY) for m in (m2, m3)]
    verify_chain(chain, PUB, expected_node="SG", previous=m1, now=m3.issued_at)
    # only the newest must be current
    verify_chain(chain, PUB, expected_node="SG", previous=m1, now=m3.expires_at)
    with pytest.raises(ExpiredError):
        verify_chain(chain, PUB, expected_node="SG", previous=m1, now=m3.expires_at + 1)
    with pytest.raises(ChainError):
        verify_chain(chain[1:], PUB, expected_node="SG", previous=m1, now=m3.issued_at)
    broken = [chain[0], sign_manifest(_manifest(3, m1), KEY)]
    with pytest.raises(ChainError):
        verify_chain(broken, PUB, expected_node="SG", previous=m1, now=m3.issued_at)
    with pytest.raises(SignatureError):
        verify_chain(
            [chain[0], sign_manifest(m3, OTHER_KEY)], PUB, expected_node="SG", previous=m1, now=m3.issued_at
        )
    with pytest.raises(InputError):
        verify_chain([], PUB, expected_node="SG", previous=m1, now=m3.issued_at)


# --- filters and buckets ------------------------------------------------------------------------------


def test_verify_filter() -> None:
    m = _manifest()
    verify_filter(m, "phone", TIER_OPRF, FILTER)
    with pytest.raises(FilterMismatchError, match="differs"):
        verify_filter(m, "phone", TIER_OPRF, FILTER + b"x")
    with pytest.raises(FilterMismatchError, match="lists no filter"):
        verify_filter(m, "email", TIER_OPRF, FILTER)

    def header(node: str, epoch: int = 7, kind: str = "phone", tier: int = TIER_OPRF) -> FilterIdentity:
        return FilterIdentity(node, epoch, kind, tier)

    verify_filter(m, "phone", TIER_OPRF, FILTER, identify=lambda _: header("SG"))
    with pytest.raises(WrongNodeError):
        verify_filter(m, "phone", TIER_OPRF, FILTER, identify=lambda _: header("MY"))
    with pytest.raises(FilterMismatchError, match="epoch 8"):
        verify_filter(m, "phone", TIER_OPRF, FILTER, identify=lambda _: header("SG", epoch=8))


def test_verify_bucket() -> None:
    m = _manifest()
    tree = MerkleTree.from_entries(BUCKETS)
    for b, data in enumerate(BUCKETS):
        verify_bucket(m, "phone", TIER_OPRF, b, data, tree.inclusion_proof(b))
    with pytest.raises(FilterMismatchError, match="bucket 1"):
        verify_bucket(m, "phone", TIER_OPRF, 1, BUCKETS[1] + b"x", tree.inclusion_proof(1))
    with pytest.raises(FilterMismatchError):
        verify_bucket(m, "phone", TIER_OPRF, 2, BUCKETS[1], tree.inclusion_proof(1))
    with pytest.raises(FilterMismatchError):
        verify_bucket(m, "phone", TIER_OPRF, 4, BUCKETS[1], tree.inclusion_proof(1))


# --- codecs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node_id", ""),
        ("node_id", "X" * 17),
        ("node_id", "sg"),
        ("epoch", 2**32),
        ("version", 0),
        ("version", 2**64),
        ("expires_at", T0),
        ("previous_hash", b"short"),
        ("oprf_public_key", bytes(31)),
    ],
)
def test_manifest_validation(field: str, value: object) -> None:
    with pytest.raises(InputError):
        replace(_manifest(), **{field: value})


def test_filter_entry_validation() -> None:
    good = _manifest().entries[0]
    for field, value in [
        ("kind", "nope"),
        ("tier", 3),
        ("count", -1),
        ("prefix_bits", 25),
        ("filter_sha256", b""),
    ]:
        with pytest.raises(InputError):
            replace(good, **{field: value})


def test_decoders_are_strict() -> None:
    signed = sign_manifest(_manifest(), KEY).to_bytes()
    raw = _manifest().to_bytes()
    label = len(b"petanda/v2/manifest\x00")
    entries_at = len(raw) - 2 - 2 * 83
    entries = raw[entries_at:-2]
    bad_order = raw[:entries_at] + entries[83:] + entries[:83] + raw[-2:]
    cases = {
        "label": b"petanda/v1/manifest\x00" + raw[label:],
        "node_id": raw[:label] + b"\x00" + raw[label + 3 :],
        "end": raw + b"\x00",
        "entry 0 kind": raw[:entries_at] + b"\x0a" + raw[entries_at + 1 :],
        "entry 1": bad_order,
        "truncated": raw[:-1],
        "at least 1": raw[: label + 3 + 4] + bytes(8) + raw[label + 3 + 12 :],  # version 0
    }
    for field, data in cases.items():
        with pytest.raises(EncodingError, match=field):
            Manifest.from_bytes(data)
    with pytest.raises(EncodingError, match="signature"):
        SignedManifest.from_bytes(signed[:-1])
    with pytest.raises(EncodingError, match="signature"):
        SignedManifest.from_bytes(signed + b"\x00")
    assert SignedManifest.from_bytes(signed).to_bytes() == signed


entries_strategy = st.lists(
    st.builds(
        FilterEntry,
        kind=st.sampled_from(KINDS),
        tier=st.sampled_from((TIER_OPRF, TIER_HMAC)),
        filter_sha256=st.binary(min_size=32, max_size=32),
        count=st.integers(0, 2**64 - 1),
        prefix_bits=st.integers(0, 24),
        buckets_root=st.binary(min_size=32, max_size=32),
    ),
    max_size=6,
    unique_by=lambda e: (e.kind, e.tier),
)


@settings(max_examples=100, deadline=None)
@given(
    node_id=st.from_regex(r"[A-Z0-9-]{1,16}", fullmatch=True),
    epoch=st.integers(0, 2**32 - 1),
    version=st.integers(1, 2**64 - 1),
    issued_at=st.integers(0, 2**63),
    lifetime=st.integers(1, 2**62),
    previous=st.binary(min_size=32, max_size=32),
    entries=entries_strategy,
)
def test_codec_round_trip(
    node_id: str,
    epoch: int,
    version: int,
    issued_at: int,
    lifetime: int,
    previous: bytes,
    entries: list[FilterEntry],
) -> None:
    m = Manifest(
        node_id, epoch, version, issued_at, issued_at + lifetime, previous, bytes(32), tuple(entries)
    )
    assert Manifest.from_bytes(m.to_bytes()) == m
    signed = SignedManifest(m, bytes(64))
    assert SignedManifest.from_bytes(signed.to_bytes()) == signed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes(data: bytes) -> None:
    try:
        m = Manifest.from_bytes(b"petanda/v1/manifest\x00" + data)
    except EncodingError:
        return
    assert m.to_bytes() == b"petanda/v1/manifest\x00" + data


def test_a_signing_key_rollover_is_followed_only_where_it_is_announced() -> None:
    from cryptography.hazmat.primitives import serialization

    from client.protocol.manifest import EXT_NEXT_SIGNING_KEY, key_after

    new_raw = OTHER_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    old_raw = PUB.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    first = _manifest(1)
    announce = _manifest(2, first, extensions=((EXT_NEXT_SIGNING_KEY, new_raw),))
    after = _manifest(3, announce)
    assert announce.next_signing_key == new_raw and key_after(announce, old_raw) == new_raw
    assert key_after(first, old_raw) == old_raw
    chain = [sign_manifest(announce, KEY), sign_manifest(after, OTHER_KEY)]
    verify_chain(chain, PUB, expected_node="SG", previous=first, now=T0 + 10)  # old key, then the new one
    verify_manifest(chain[1], PUB, expected_node="SG", previous=announce, now=T0 + 10)
    with pytest.raises(SignatureError):  # the new key signs nothing before its announcement
        verify_chain(
            [sign_manifest(announce, OTHER_KEY), chain[1]],
            PUB,
            expected_node="SG",
            previous=first,
            now=T0 + 10,
        )
    with pytest.raises(SignatureError):  # and the old key nothing after it
        verify_chain(
            [chain[0], sign_manifest(after, KEY)], PUB, expected_node="SG", previous=first, now=T0 + 10
        )
    with pytest.raises(InputError, match="next_signing_key"):
        _manifest(2, first, extensions=((EXT_NEXT_SIGNING_KEY, b"short"),))
