"""Match-only metadata: sealing, opening, buckets, and the pinned vectors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol.errors import DecryptionError, EncodingError, InputError, UnknownKind
from client.protocol.kinds import CATEGORIES, TIER_HMAC, TIER_OPRF, TLP_LEVELS
from client.protocol.merkle import MerkleTree
from client.protocol.metadata import (
    DEFAULT_PREFIX_BITS,
    RECORD_SIZE,
    BucketStream,
    IndicatorMeta,
    SealedRecord,
    Sealer,
    _seal,
    associated_data,
    bucket_id,
    buckets_of_records,
    buckets_root,
    build_buckets,
    choose_prefix_bits,
    decode_bucket,
    encode_bucket,
    encode_record,
    meta_key,
    open_match,
    open_record,
    record_nonce,
    seal,
    tag_of,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "metadata.json").read_text())
CTX = {"node_id": "SG", "epoch": 7, "kind": "phone", "tier": TIER_OPRF}
META = IndicatorMeta("romance", date(2024, 12, 31), date(2025, 2, 1), 65, "GREEN", 12)
D1 = bytes(range(64))
D2 = bytes(range(1, 65))


def _seal_ctx(digest: bytes, meta: IndicatorMeta = META) -> SealedRecord:
    return seal(digest, meta, node_id="SG", epoch=7, kind="phone", tier=TIER_OPRF)


def _open(digest: bytes, records: list[SealedRecord], **override: object) -> IndicatorMeta | None:
    ctx = {**CTX, **override}
    return open_match(digest, records, **ctx)  # type: ignore[arg-type]


# --- vectors ------------------------------------------------------------------------------------------


def test_record_vector() -> None:
    v = VECTORS["records"][0]
    digest = bytes.fromhex(v["digest"])
    meta = IndicatorMeta(
        v["meta"]["category"],
        date.fromisoformat(v["meta"]["first_seen"]),
        date.fromisoformat(v["meta"]["last_seen"]),
        v["meta"]["confidence"],
        v["meta"]["tlp"],
        v["meta"]["reports"],
    )
    ctx = {k: v[k] for k in ("node_id", "epoch", "kind", "tier")}
    tag = tag_of(digest)
    assert tag.hex() == v["tag"]
    assert meta_key(digest).hex() == v["key"]
    assert associated_data(tag, **ctx).hex() == v["associated_data"]
    assert meta.to_bytes().hex() == v["plaintext"]
    record = _seal(digest, meta, bytes.fromhex(v["nonce"]), **ctx)
    assert record.ciphertext.hex() == v["ciphertext"]
    assert bucket_id(tag, 15) == v["bucket_id_15"]
    assert open_match(digest, [record], **ctx) == meta


def test_bucket_vector() -> None:
    v = VECTORS["buckets"]
    encoded = [bytes.fromhex(b) for b in v["encoded"]]
    assert buckets_root(encoded).hex() == v["buckets_root"]
    records = [r for b in encoded for r in decode_bucket(b)]
    assert [encode_bucket(decode_bucket(b)) for b in encoded] == encoded
    assert build_buckets(records, v["prefix_bits"]) == encoded


def test_plaintext_layout() -> None:
    raw = IndicatorMeta("investment", date(1970, 1, 1), date(1970, 1, 2), 100, "CLEAR", 1).to_bytes()
    assert raw == bytes([1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 100, 1, 0, 0, 0, 1])


# --- sealing and opening ------------------------------------------------------------------------------


def test_round_trip_and_synthetic_nonces() -> None:
    # Protocol 2: the nonce is derived from the key and the whole plaintext, so a record that did not change
    # is the same bytes at the next publication (incremental sync), and a changed one gets another nonce.
    r1, r2 = _seal_ctx(D1), _seal_ctx(D1)
    assert r1 == r2
    assert r1 == _seal(D1, META, record_nonce(D1, META, **CTX), **CTX)  # type: ignore[arg-type]
    assert _open(D1, [r1]) == META
    assert len(r1.ciphertext) == 32
    other = _seal_ctx(D1, dataclasses.replace(META, confidence=META.confidence - 1))
    assert other.nonce != r1.nonce and other.ciphertext != r1.ciphertext


def test_another_digest_cannot_open() -> None:
    record = _seal_ctx(D1)
    assert _open(D2, [record]) is None  # its tag is not there
    forged = SealedRecord(tag_of(D2), record.nonce, record.ciphertext)
    with pytest.raises(DecryptionError):
        _open(D2, [forged])  # tag present, key wrong


@pytest.mark.parametrize(
    "override", [{"node_id": "MY"}, {"epoch": 8}, {"kind": "email"}, {"tier": TIER_HMAC}], ids=str
)
def test_associated_data_binds_the_context(override: dict[str, object]) -> None:
    record = _seal_ctx(D1)
    with pytest.raises(DecryptionError):
        _open(D1, [record], **override)


def test_tampered_records_are_refused() -> None:
    record = _seal_ctx(D1)
    for i in range(len(record.ciphertext)):
        bad = bytearray(record.ciphertext)
        bad[i] ^= 1
        with pytest.raises(DecryptionError):
            open_record(D1, replace(record, ciphertext=bytes(bad)), **CTX)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        open_record(D1, replace(record, nonce=bytes(12)), **CTX)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        open_record(D1, replace(record, ciphertext=record.ciphertext[:-1]), **CTX)  # type: ignore[arg-type]


def test_authentic_but_malformed_plaintext_is_an_encoding_error() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    tag = tag_of(D1)
    nonce = bytes(12)
    bad_plain = bytes([1, 99]) + META.to_bytes()[2:]  # category code 99
    ct = ChaCha20Poly1305(meta_key(D1)).encrypt(nonce, bad_plain, associated_data(tag, **CTX))  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="category"):
        _open(D1, [SealedRecord(tag, nonce, ct)])


def test_red_is_never_sealed() -> None:
    with pytest.raises(InputError, match="RED"):
        _seal_ctx(D1, replace(META, tlp="RED"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("category", "crypto"),
        ("first_seen", date(1969, 12, 31)),
        ("first_seen", datetime(2025, 1, 1)),
        ("last_seen", date(2024, 1, 1)),
        ("confidence", 101),
        ("confidence", -1),
        ("confidence", True),
        ("tlp", "AMBER-STRICT"),
        ("reports", 0),
        ("reports", 2**32),
    ],
)
def test_metadata_validation(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field.split("_")[0]):
        replace(META, **{field: value})


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        tag_of(b"x" * 33)
    with pytest.raises(UnknownKind):
        seal(D1, META, node_id="SG", epoch=7, kind="nope", tier=TIER_OPRF)
    with pytest.raises(InputError):
        seal(D1, META, node_id="SG", epoch=7, kind="phone", tier=3)
    with pytest.raises(InputError):
        seal(D1, META, node_id="", epoch=7, kind="phone", tier=TIER_OPRF)
    with pytest.raises(InputError):
        seal(D1, META, node_id="sg", epoch=7, kind="phone", tier=TIER_OPRF)
    with pytest.raises(InputError):
        bucket_id(bytes(16), 25)


# --- buckets ------------------------------------------------------------------------------------------


def test_bucket_ids_and_sizing() -> None:
    tag = bytes([0b1011_0000]) + bytes(15)
    assert bucket_id(tag, 0) == 0
    assert bucket_id(tag, 1) == 1
    assert bucket_id(tag, 4) == 0b1011
    assert bucket_id(bytes([0xFF] * 16), 24) == 2**24 - 1
    assert choose_prefix_bits(1_000_000) == DEFAULT_PREFIX_BITS == 15
    assert choose_prefix_bits(0) == 0
    assert choose_prefix_bits(32) == 0
    assert choose_prefix_bits(33) == 1
    assert choose_prefix_bits(10**12) == 24


def test_bucket_codec_is_canonical() -> None:
    records = [_seal_ctx(bytes([i]) * 32) for i in range(5)]
    data = encode_bucket(records)
    assert encode_bucket(reversed(records)) == data
    decoded = decode_bucket(data)
    assert [r.tag for r in decoded] == sorted(r.tag for r in records)
    with pytest.raises(InputError, match="two records"):
        encode_bucket([records[0], records[0]])


def _bucket(records: list[SealedRecord]) -> bytes:
    return encode_bucket(records)


def test_bucket_decoder_is_strict() -> None:
    r1, r2 = sorted((_seal_ctx(D1), _seal_ctx(D2)), key=lambda r: r.tag)
    good = _bucket([r1, r2])
    one = len(r1.tag) + len(r1.nonce) + 2 + len(r1.ciphertext)
    cases = {
        "version": b"\x02" + good[1:],
        "count": good[:1] + (3).to_bytes(4, "big") + good[5:],
        "end": good + b"\x00",
        "record 1 ciphertext": good[:-1],
        "record 1 tag": good[:5] + good[5 + one :] + good[5 : 5 + one],  # out of order
    }
    for field, data in cases.items():
        with pytest.raises(EncodingError, match=field):
            decode_bucket(data)
    short_ct = b"\x01" + (1).to_bytes(4, "big") + r1.tag + r1.nonce + (15).to_bytes(2, "big") + bytes(16)
    with pytest.raises(EncodingError, match="Poly1305"):
        decode_bucket(short_ct)
    with pytest.raises(EncodingError, match="truncated"):
        decode_bucket(b"\x01")
    with pytest.raises(EncodingError):
        decode_bucket("not bytes")  # type: ignore[arg-type]
    wrong = bucket_id(r1.tag, 4) ^ 1
    with pytest.raises(EncodingError, match="does not belong"):
        decode_bucket(_bucket([r1]), bucket=wrong, prefix_bits=4)
    assert decode_bucket(_bucket([r1]), bucket=bucket_id(r1.tag, 4), prefix_bits=4) == [r1]


def test_buckets_cover_every_record_and_prove_inclusion() -> None:
    digests = [bytes([i, 7]) * 16 for i in range(40)]
    records = [_seal_ctx(d) for d in digests]
    buckets = build_buckets(records, 3)
    assert len(buckets) == 8
    tree = MerkleTree.from_entries(buckets)
    assert tree.root() == buckets_root(buckets)
    for d in digests:
        b = bucket_id(tag_of(d), 3)
        assert _open(d, decode_bucket(buckets[b], bucket=b, prefix_bits=3)) == META
    with pytest.raises(InputError):
        buckets_root(buckets[:3])


# --- properties ---------------------------------------------------------------------------------------

metas = st.builds(
    IndicatorMeta,
    category=st.sampled_from(CATEGORIES),
    first_seen=st.dates(min_value=date(1970, 1, 1), max_value=date(2100, 1, 1)),
    last_seen=st.just(date(2100, 1, 1)),
    confidence=st.integers(0, 100),
    tlp=st.sampled_from(TLP_LEVELS[:-1]),
    reports=st.integers(1, 2**32 - 1),
)


@settings(max_examples=100, deadline=None)
@given(
    digest=st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64)),
    meta=metas,
    node_id=st.from_regex(r"[A-Z0-9-]{1,16}", fullmatch=True),
    epoch=st.integers(0, 2**32 - 1),
)
def test_seal_open_round_trip(digest: bytes, meta: IndicatorMeta, node_id: str, epoch: int) -> None:
    record = seal(digest, meta, node_id=node_id, epoch=epoch, kind="url", tier=TIER_HMAC)
    bucket = decode_bucket(encode_bucket([record]))
    assert open_match(digest, bucket, node_id=node_id, epoch=epoch, kind="url", tier=TIER_HMAC) == meta
    assert IndicatorMeta.from_bytes(meta.to_bytes()) == meta


@settings(max_examples=100, deadline=None)
@given(
    tier=st.sampled_from((TIER_OPRF, TIER_HMAC)),
    data=st.data(),
    meta=metas,
    seconds=st.tuples(st.integers(0, 86_399), st.integers(0, 86_399)),
    node_id=st.from_regex(r"[A-Z0-9-]{1,16}", fullmatch=True),
    epoch=st.integers(0, 2**32 - 1),
)
def test_the_sealer_gives_the_bytes_of_seal(
    tier: int, data: st.DataObject, meta: IndicatorMeta, seconds: tuple[int, int], node_id: str, epoch: int
) -> None:
    digest = data.draw(
        st.binary(min_size=64 if tier == TIER_OPRF else 32, max_size=64 if tier == TIER_OPRF else 32)
    )
    sealer = Sealer(node_id=node_id, epoch=epoch, kind="phone", tier=tier)
    day = date(1970, 1, 1).toordinal()
    got = sealer.seal_fields(
        digest,
        category=meta.category,
        first_seen=(meta.first_seen.toordinal() - day) * 86_400 + seconds[0],
        last_seen=(meta.last_seen.toordinal() - day) * 86_400 + seconds[1],
        confidence=meta.confidence,
        tlp=meta.tlp,
        reports=meta.reports,
    )
    assert got == encode_record(seal(digest, meta, node_id=node_id, epoch=epoch, kind="phone", tier=tier))


def test_the_sealer_refuses_what_seal_refuses() -> None:
    sealer = Sealer(node_id="MY", epoch=1, kind="phone", tier=TIER_OPRF)
    fields = dict(
        category="investment", first_seen=0, last_seen=86_400, confidence=70, tlp="GREEN", reports=1
    )
    for bad, says in [
        ({"tlp": "RED"}, "TLP:RED"),
        ({"category": "nope"}, "category"),
        ({"confidence": 101}, "confidence"),
        ({"reports": 0}, "reports"),
        ({"first_seen": 2 * 86_400}, "before first_seen"),
        ({"first_seen": -86_400}, "1970"),
    ]:
        with pytest.raises(InputError, match=says):
            sealer.seal_fields(bytes(64), **{**fields, **bad})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="64 bytes"):
        sealer.seal_fields(bytes(32), **fields)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_bucket_decoder_never_crashes_and_round_trips(data: bytes) -> None:
    try:
        records = decode_bucket(data)
    except EncodingError:
        return
    assert encode_bucket(records) == data


@pytest.mark.parametrize("prefix_bits", [0, 1, 3, 8])
def test_buckets_of_encoded_records_equal_the_buckets_of_records(prefix_bits: int) -> None:
    records = [_seal_ctx(bytes([i % 256, i // 256]) * 32) for i in range(300)]
    encoded = b"".join(encode_record(r) for r in reversed(records))
    assert buckets_of_records(encoded, prefix_bits) == build_buckets(records, prefix_bits)
    assert buckets_of_records(b"", prefix_bits) == build_buckets([], prefix_bits)
    with pytest.raises(InputError, match="one tag"):
        buckets_of_records(encoded + encode_record(records[7]), prefix_bits)
    with pytest.raises(InputError, match="whole number"):
        buckets_of_records(encoded[:-1], prefix_bits)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 8), st.lists(st.integers(1, 90), max_size=6))
def test_a_bucket_stream_fed_in_chunks_gives_the_buckets_of_records(
    prefix_bits: int, cuts: list[int]
) -> None:
    records = sorted((_seal_ctx(bytes([i % 256, i // 256]) * 32) for i in range(200)), key=lambda r: r.tag)
    encoded = b"".join(encode_record(r) for r in records)
    stream = BucketStream(prefix_bits)
    out: list[tuple[int, bytes]] = []
    position = 0
    for cut in cuts:  # chunks of any size, a bucket split across them
        out += stream.feed(encoded[position * RECORD_SIZE : (position + cut) * RECORD_SIZE])
        position += cut
    out += stream.feed(encoded[position * RECORD_SIZE :])
    out += stream.finish()
    assert [b for b, _ in out] == list(range(1 << prefix_bits)) and stream.count == 200
    assert [data for _, data in out] == build_buckets(records, prefix_bits)


def test_a_bucket_stream_refuses_records_out_of_order_or_twice() -> None:
    records = sorted((_seal_ctx(bytes([i]) * 64) for i in range(10)), key=lambda r: r.tag)
    encoded = [encode_record(r) for r in records]
    with pytest.raises(InputError, match="out of tag order"):
        BucketStream(2).feed(encoded[3] + encoded[2])
    stream = BucketStream(2)
    stream.feed(encoded[5])
    with pytest.raises(InputError, match="two records with one tag"):
        stream.feed(encoded[5])
    with pytest.raises(InputError, match="out of tag order"):
        stream.feed(encoded[4])
    with pytest.raises(InputError, match="whole number"):
        stream.feed(encoded[6][:-1])
    assert [data for _, data in BucketStream(1).finish()] == build_buckets([], 1)
