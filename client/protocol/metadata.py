"""Match-only metadata: sealed per-indicator records that only the holder of the indicator's digest opens.

For each published digest ``d`` (32 bytes for the HMAC tier, 64 for the OPRF tier) the publisher
derives (docs/PROTOCOL.md)::

    tag = SHA-256("petanda/v1/tag" || 0x00 || d)[:16]
    K   = HKDF-SHA256(IKM = d, salt = "", info = "petanda/v1/meta-key", L = 32)
    AD  = "petanda/v1/meta" || 0x00 || u8 len(node_id) || node_id || u32be(epoch) || u8 kind || u8 tier || tag
    record = tag || nonce || ChaCha20-Poly1305(K, nonce, plaintext, AD)
    nonce  = HMAC-SHA256(K, "petanda/v2/nonce" || 0x00 || AD || plaintext)[:12]

and files the record in bucket ``bucket_id(tag, prefix_bits)`` (the first ``prefix_bits`` bits of the
tag). Every bucket, in bucket order, is the *record set* of a filter (:class:`RecordSet`), which a peer
downloads at sync with the filter and checks against the manifest's ``buckets_root``. A check then opens
the record of a hit locally: its holder sees nothing but the one blinded evaluation that every check
makes, whatever the answer. A peer learns only the records its own digests open.

ChaCha20-Poly1305 rather than AES-GCM: constant time and fast without AES instructions (phones).
The plaintext is a fixed 16-byte encoding (:meth:`IndicatorMeta.to_bytes`), so every ciphertext has
the same length and reveals nothing through its size.

One module of this size: it is one format, from sealing a record to the record set, and its specification.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from client.protocol._encoding import Reader, Writer
from client.protocol.digest import hkdf_sha256
from client.protocol.errors import DecryptionError, EncodingError, InputError
from client.protocol.kinds import CATEGORIES, TIER_HMAC, TIER_OPRF, TLP_LEVELS, kind_code
from client.protocol.merkle import root_hash

__all__ = [
    "BUCKET_FORMAT_VERSION",
    "BUCKET_HEADER_SIZE",
    "DEFAULT_PREFIX_BITS",
    "MAX_PREFIX_BITS",
    "META_FORMAT_VERSION",
    "NONCE_SIZE",
    "PLAINTEXT_SIZE",
    "RECORD_SIZE",
    "TAG_SIZE",
    "BucketStream",
    "IndicatorMeta",
    "RecordSet",
    "SealedRecord",
    "Sealer",
    "associated_data",
    "bucket_id",
    "buckets_of_records",
    "buckets_root",
    "build_buckets",
    "build_record_set",
    "choose_prefix_bits",
    "decode_bucket",
    "encode_bucket",
    "encode_record",
    "meta_key",
    "open_match",
    "open_record",
    "record_nonce",
    "seal",
    "tag_of",
]

TAG_SIZE: Final = 16
NONCE_SIZE: Final = 12
_AEAD_TAG_SIZE: Final = 16
#: Version byte at the start of every plaintext.
META_FORMAT_VERSION: Final = 1
#: Size of an encoded :class:`IndicatorMeta`.
PLAINTEXT_SIZE: Final = 16
#: Version byte at the start of every encoded bucket.
BUCKET_FORMAT_VERSION: Final = 1
#: Bucket prefix length for about a million indicators: 2**15 buckets of ~31 records.
#: Bytes of one encoded record: tag, nonce, u16 length and the 32-byte ciphertext of the 16-byte plaintext.
RECORD_SIZE: Final = TAG_SIZE + NONCE_SIZE + 2 + PLAINTEXT_SIZE + _AEAD_TAG_SIZE
#: Bytes of a bucket's header: u8 version and u32 count.
BUCKET_HEADER_SIZE: Final = 5
DEFAULT_PREFIX_BITS: Final = 15
#: Largest bucket prefix length a manifest may declare (16 Mi buckets).
MAX_PREFIX_BITS: Final = 24

_TAG_LABEL: Final = b"petanda/v1/tag\x00"
_NONCE_LABEL: Final = b"petanda/v2/nonce\x00"
_KEY_INFO: Final = b"petanda/v1/meta-key"
_AD_LABEL: Final = b"petanda/v1/meta\x00"
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_MAX_U32: Final = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class IndicatorMeta:
    """What a match reveals about an indicator. Validated on construction (:class:`InputError`).

    Attributes:
        category: one of :data:`client.protocol.kinds.CATEGORIES`.
        first_seen: UTC date of the first report (not before 1970-01-01).
        last_seen: UTC date of the latest report, not before ``first_seen``.
        confidence: 0 to 100.
        tlp: one of :data:`client.protocol.kinds.TLP_LEVELS` (RED is never sealed).
        reports: number of reports, 1 to 2**32 - 1.
    """

    category: str
    first_seen: date
    last_seen: date
    confidence: int
    tlp: str
    reports: int

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise InputError(f"category {self.category!r} is not one of: {', '.join(CATEGORIES)}")
        for name in ("first_seen", "last_seen"):
            value = getattr(self, name)
            if not isinstance(value, date) or hasattr(value, "hour"):  # a datetime is a date too
                raise InputError(f"{name} must be a date, not {type(value).__name__}")
            if not 0 <= value.toordinal() - _EPOCH_DAY <= _MAX_U32:
                raise InputError(f"{name} {value.isoformat()} is before 1970-01-01")
        if self.last_seen < self.first_seen:
            raise InputError(f"last_seen {self.last_seen} is before first_seen {self.first_seen}")
        if not _is_int(self.confidence) or not 0 <= self.confidence <= 100:
            raise InputError(f"confidence {self.confidence!r} is not an integer from 0 to 100")
        if self.tlp not in TLP_LEVELS:
            raise InputError(f"tlp {self.tlp!r} is not one of: {', '.join(TLP_LEVELS)}")
        if not _is_int(self.reports) or not 1 <= self.reports <= _MAX_U32:
            raise InputError(f"reports {self.reports!r} is not an integer from 1 to {_MAX_U32}")

    def to_bytes(self) -> bytes:
        """The canonical 16-byte plaintext: version, category, first/last seen (u32 days since
        1970-01-01), confidence, TLP, reports (u32), all big-endian."""
        w = Writer()
        w.u8(META_FORMAT_VERSION, "version")
        w.u8(CATEGORIES.index(self.category) + 1, "category")
        w.u32(self.first_seen.toordinal() - _EPOCH_DAY, "first_seen")
        w.u32(self.last_seen.toordinal() - _EPOCH_DAY, "last_seen")
        w.u8(self.confidence, "confidence")
        w.u8(TLP_LEVELS.index(self.tlp) + 1, "tlp")
        w.u32(self.reports, "reports")
        return w.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IndicatorMeta:
        """Decode :meth:`to_bytes` strictly (:class:`EncodingError` naming the field)."""
        r = Reader(data, "metadata")
        if len(data) != PLAINTEXT_SIZE:
            raise r.error("length", f"{len(data)} bytes, expected {PLAINTEXT_SIZE}")
        if (version := r.u8("version")) != META_FORMAT_VERSION:
            raise r.error("version", f"unknown version {version}")
        category = r.u8("category")
        if not 1 <= category <= len(CATEGORIES):
            raise r.error("category", f"unknown code {category}")
        first, last, confidence, tlp = (
            r.u32("first_seen"),
            r.u32("last_seen"),
            r.u8("confidence"),
            r.u8("tlp"),
        )
        if not 1 <= tlp <= len(TLP_LEVELS):
            raise r.error("tlp", f"unknown code {tlp}")
        reports = r.u32("reports")
        r.end()
        try:
            return cls(
                category=CATEGORIES[category - 1],
                first_seen=_day(first),
                last_seen=_day(last),
                confidence=confidence,
                tlp=TLP_LEVELS[tlp - 1],
                reports=reports,
            )
        except (InputError, OverflowError, ValueError) as exc:
            raise EncodingError(f"metadata: {exc}") from None


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """One sealed metadata record: 16-byte tag, 12-byte nonce, ChaCha20-Poly1305 ciphertext."""

    tag: bytes
    nonce: bytes
    ciphertext: bytes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _day(days: int) -> date:
    return date.fromordinal(_EPOCH_DAY + days)


def _check_digest(digest: bytes) -> None:
    if not isinstance(digest, bytes) or len(digest) not in (32, 64):
        raise InputError("indicator digest must be 32 (HMAC tier) or 64 (OPRF tier) bytes")


def _check_prefix_bits(prefix_bits: int) -> None:
    if not _is_int(prefix_bits) or not 0 <= prefix_bits <= MAX_PREFIX_BITS:
        raise InputError(f"prefix_bits {prefix_bits!r} is not from 0 to {MAX_PREFIX_BITS}")


def tag_of(digest: bytes) -> bytes:
    """The 16-byte tag that names ``digest``'s record: ``SHA-256("petanda/v1/tag" || 0x00 || d)[:16]``."""
    _check_digest(digest)
    return hashlib.sha256(_TAG_LABEL + digest).digest()[:TAG_SIZE]


def meta_key(digest: bytes) -> bytes:
    """The record key of ``digest``: ``HKDF-SHA256(d, info="petanda/v1/meta-key")``."""
    _check_digest(digest)
    return hkdf_sha256(digest, info=_KEY_INFO)


def associated_data(tag: bytes, *, node_id: str, epoch: int, kind: str, tier: int) -> bytes:
    """The AEAD associated data binding a record to its publisher, epoch, kind, tier and tag."""
    if tier not in (TIER_OPRF, TIER_HMAC) or isinstance(tier, bool):
        raise InputError(f"tier {tier!r} is not {TIER_OPRF} (OPRF) or {TIER_HMAC} (HMAC)")
    w = Writer(_AD_LABEL)
    w.node_id(node_id)
    w.u32(epoch, "epoch")
    w.u8(kind_code(kind), "kind")
    w.u8(tier, "tier")
    w.fixed(tag, TAG_SIZE, "tag")
    return w.getvalue()


def bucket_id(tag: bytes, prefix_bits: int) -> int:
    """The bucket of a tag: its first ``prefix_bits`` bits as a big-endian integer (0 when 0 bits)."""
    _check_prefix_bits(prefix_bits)
    if not isinstance(tag, bytes) or len(tag) != TAG_SIZE:
        raise InputError(f"tag must be {TAG_SIZE} bytes")
    return int.from_bytes(tag[:4], "big") >> (32 - prefix_bits)


def choose_prefix_bits(n: int, *, target: int = 32) -> int:
    """The smallest prefix length whose buckets hold at most ``target`` records on average (capped)."""
    if not _is_int(n) or n < 0 or not _is_int(target) or target < 1:
        raise InputError(f"cannot size buckets for n={n!r}, target={target!r}")
    bits = 0
    while bits < MAX_PREFIX_BITS and n > target << bits:
        bits += 1
    return bits


def _seal(
    digest: bytes, meta: IndicatorMeta, nonce: bytes, *, node_id: str, epoch: int, kind: str, tier: int
) -> SealedRecord:
    tag = tag_of(digest)
    ad = associated_data(tag, node_id=node_id, epoch=epoch, kind=kind, tier=tier)
    ciphertext = ChaCha20Poly1305(meta_key(digest)).encrypt(nonce, meta.to_bytes(), ad)
    return SealedRecord(tag, nonce, ciphertext)


def seal(
    digest: bytes, meta: IndicatorMeta, *, node_id: str, epoch: int, kind: str, tier: int
) -> SealedRecord:
    """Seal ``meta`` under the key derived from ``digest``, with a synthetic nonce (:func:`record_nonce`).

    The same record sealed again in the next publication is the same bytes, so an incremental sync moves
    only the records that changed. A nonce derived from the key and the whole plaintext never repeats for
    two different plaintexts under one key (deterministic AEAD, as AES-SIV does it); it reveals only that
    a record did not change, which the delta reveals anyway.

    Raises:
        InputError: a bad argument, or ``meta`` is TLP:RED (never published).
    """
    if not isinstance(meta, IndicatorMeta):
        raise InputError("meta must be an IndicatorMeta")
    if meta.tlp == "RED":
        raise InputError("a TLP:RED indicator is never published")
    # The tag, AD, key and plaintext once for both the nonce and the AEAD (a publish seals every record).
    tag = tag_of(digest)
    ad = associated_data(tag, node_id=node_id, epoch=epoch, kind=kind, tier=tier)
    key, plaintext = meta_key(digest), meta.to_bytes()
    nonce = _synthetic_nonce(key, ad, plaintext)
    return SealedRecord(tag, nonce, ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad))


def _synthetic_nonce(key: bytes, ad: bytes, plaintext: bytes) -> bytes:
    return hmac.digest(key, _NONCE_LABEL + ad + plaintext, "sha256")[:NONCE_SIZE]


_PLAINTEXT: Final = struct.Struct(">BBIIBBI")
assert _PLAINTEXT.size == PLAINTEXT_SIZE
_CATEGORY_CODE: Final = {name: i + 1 for i, name in enumerate(CATEGORIES)}
_TLP_CODE: Final = {name: i + 1 for i, name in enumerate(TLP_LEVELS)}
# HMAC-SHA256 keyed with the empty salt (32 zero bytes, RFC 5869): its inner and outer states once.
_ZERO_INNER: Final = hashlib.sha256(bytes(0x36 for _ in range(64)))
_ZERO_OUTER: Final = hashlib.sha256(bytes(0x5C for _ in range(64)))
_SECONDS_PER_DAY: Final = 86_400


class Sealer:
    """Seals the records of one filter, ``(node_id, epoch, kind, tier)``, many at a time: the same bytes
    as ``encode_record(seal(digest, meta, ...))`` (a test compares them), computed from the metadata's
    fields without building an :class:`IndicatorMeta` or a :class:`Writer` per record. A publication
    seals every record of a new node or epoch: this is its inner loop (~3x :func:`seal`'s rate).
    """

    __slots__ = ("_ad_prefix", "_digest_len")

    def __init__(self, *, node_id: str, epoch: int, kind: str, tier: int) -> None:
        self._ad_prefix = associated_data(
            bytes(TAG_SIZE), node_id=node_id, epoch=epoch, kind=kind, tier=tier
        )[:-TAG_SIZE]
        self._digest_len = 64 if tier == TIER_OPRF else 32

    def seal_fields(
        self,
        digest: bytes,
        *,
        category: str,
        first_seen: int,
        last_seen: int,
        confidence: int,
        tlp: str,
        reports: int,
    ) -> bytes:
        """The encoded record (:func:`encode_record`) of ``digest`` with this metadata; ``first_seen`` and
        ``last_seen`` are Unix seconds (their UTC days are sealed).

        Raises:
            InputError: a field :class:`IndicatorMeta` refuses, a TLP:RED record, or a digest of the
                wrong length for the tier.
        """
        if not isinstance(digest, bytes) or len(digest) != self._digest_len:
            raise InputError(f"indicator digest must be {self._digest_len} bytes for this tier")
        first, last = first_seen // _SECONDS_PER_DAY, last_seen // _SECONDS_PER_DAY
        cat, level = _CATEGORY_CODE.get(category), _TLP_CODE.get(tlp)
        if (
            cat is None
            or level is None
            or tlp == "RED"
            or not 0 <= first <= last <= _MAX_U32
            or not 0 <= confidence <= 100
            or not 1 <= reports <= _MAX_U32
        ):
            if tlp == "RED":
                raise InputError("a TLP:RED indicator is never published")
            if not (0 <= first <= _MAX_U32 and 0 <= last <= _MAX_U32):
                raise InputError(f"first_seen {first_seen} or last_seen {last_seen} is before 1970-01-01")
            IndicatorMeta(
                category, _day(first), _day(last), confidence, tlp, reports
            )  # raises, naming the field
        plaintext = _PLAINTEXT.pack(META_FORMAT_VERSION, cat, first, last, confidence, level, reports)
        tag = hashlib.sha256(_TAG_LABEL + digest).digest()[:TAG_SIZE]
        ad = self._ad_prefix + tag
        inner = _ZERO_INNER.copy()
        inner.update(digest)
        outer = _ZERO_OUTER.copy()
        outer.update(inner.digest())
        key = hmac.digest(outer.digest(), _KEY_INFO + b"\x01", "sha256")  # HKDF-SHA256, one block
        nonce = hmac.digest(key, _NONCE_LABEL + ad + plaintext, "sha256")[:NONCE_SIZE]
        ciphertext = ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)
        return tag + nonce + len(ciphertext).to_bytes(2, "big") + ciphertext


def record_nonce(
    digest: bytes, meta: IndicatorMeta, *, node_id: str, epoch: int, kind: str, tier: int
) -> bytes:
    """``HMAC-SHA256(K, "petanda/v2/nonce" || 0x00 || AD || plaintext)[:12]`` with ``K`` the record key:
    the nonce of a record, fixed by what it seals."""
    ad = associated_data(tag_of(digest), node_id=node_id, epoch=epoch, kind=kind, tier=tier)
    return _synthetic_nonce(meta_key(digest), ad, meta.to_bytes())


def open_record(
    digest: bytes, record: SealedRecord, *, node_id: str, epoch: int, kind: str, tier: int
) -> IndicatorMeta:
    """Decrypt one record with ``digest``.

    Raises:
        DecryptionError: the record does not authenticate (wrong digest, altered bytes or context).
        EncodingError: it authenticates but the plaintext is malformed.
    """
    ad = associated_data(record.tag, node_id=node_id, epoch=epoch, kind=kind, tier=tier)
    try:
        plaintext = ChaCha20Poly1305(meta_key(digest)).decrypt(record.nonce, record.ciphertext, ad)
    except (InvalidTag, ValueError):
        raise DecryptionError(
            f"a metadata record of {node_id} (epoch {epoch}, {kind}, tier {tier}) does not authenticate "
            "under our digest"
        ) from None
    return IndicatorMeta.from_bytes(plaintext)


def open_match(
    digest: bytes, bucket_records: Iterable[SealedRecord], *, node_id: str, epoch: int, kind: str, tier: int
) -> IndicatorMeta | None:
    """Find ``digest``'s record among ``bucket_records`` and decrypt it; ``None`` if its tag is absent
    (a filter false positive, or the publisher dropped the record).

    Raises:
        DecryptionError: a record with our tag is present but does not authenticate.
    """
    tag = tag_of(digest)
    for record in bucket_records:
        if record.tag == tag:
            return open_record(digest, record, node_id=node_id, epoch=epoch, kind=kind, tier=tier)
    return None


# --- buckets ------------------------------------------------------------------------------------------


def encode_bucket(records: Iterable[SealedRecord]) -> bytes:
    """Encode records as one bucket, sorted by tag (duplicate tags refused).

    Layout: ``u8 version (1) || u32be count || count x (tag[16] || nonce[12] || u16be len || ciphertext)``.
    """
    ordered = sorted(records, key=lambda rec: rec.tag)
    w = Writer()
    w.u8(BUCKET_FORMAT_VERSION, "bucket version")
    w.u32(len(ordered), "bucket count")
    previous = b""
    for rec in ordered:
        if rec.tag == previous:
            raise InputError(f"two records with tag {rec.tag.hex()} in one bucket")
        previous = rec.tag
        w.fixed(rec.tag, TAG_SIZE, "record tag")
        w.fixed(rec.nonce, NONCE_SIZE, "record nonce")
        if len(rec.ciphertext) < _AEAD_TAG_SIZE:
            raise InputError("record ciphertext is shorter than the Poly1305 tag")
        w.blob16(rec.ciphertext, "record ciphertext")
    return w.getvalue()


def decode_bucket(
    data: bytes, *, bucket: int | None = None, prefix_bits: int | None = None
) -> list[SealedRecord]:
    """Decode a bucket strictly: known version, exact count, tags strictly increasing, no trailing bytes.

    With ``bucket`` and ``prefix_bits`` also check that every tag belongs to that bucket.

    Raises:
        EncodingError: naming the field (and record index) at fault.
    """
    if (bucket is None) != (prefix_bits is None):
        raise InputError("give both bucket and prefix_bits, or neither")
    r = Reader(data, "metadata bucket")
    if (version := r.u8("version")) != BUCKET_FORMAT_VERSION:
        raise r.error("version", f"unknown version {version}")
    count = r.u32("count")
    if count * (TAG_SIZE + NONCE_SIZE + 2 + _AEAD_TAG_SIZE) > r.remaining:
        raise r.error("count", f"{count} records cannot fit in {r.remaining} bytes")
    records: list[SealedRecord] = []
    previous = b""
    for i in range(count):
        tag = r.take(TAG_SIZE, f"record {i} tag")
        if tag <= previous:
            raise r.error(f"record {i} tag", "not in strictly increasing order")
        if bucket is not None and prefix_bits is not None and bucket_id(tag, prefix_bits) != bucket:
            raise r.error(f"record {i} tag", f"does not belong to bucket {bucket}")
        nonce = r.take(NONCE_SIZE, f"record {i} nonce")
        ciphertext = r.blob16(f"record {i} ciphertext")
        if len(ciphertext) < _AEAD_TAG_SIZE:
            raise r.error(f"record {i} ciphertext", "shorter than the Poly1305 tag")
        records.append(SealedRecord(tag, nonce, ciphertext))
        previous = tag
    r.end()
    return records


def encode_record(record: SealedRecord) -> bytes:
    """One record as a bucket lists it: ``tag || nonce || u16 length || ciphertext`` (62 bytes)."""
    if len(record.ciphertext) != PLAINTEXT_SIZE + _AEAD_TAG_SIZE:
        raise InputError("a record of format 1 has a 32-byte ciphertext")
    return record.tag + record.nonce + len(record.ciphertext).to_bytes(2, "big") + record.ciphertext


def buckets_of_records(encoded: bytes | bytearray, prefix_bits: int) -> list[bytes]:
    """Every one of the ``2**prefix_bits`` buckets of records given as concatenated
    :func:`encode_record` bytes: the same bytes as :func:`build_buckets`, built by sorting the records
    by tag in numpy (a publication of millions sorts in seconds and holds no object per record).

    Raises:
        InputError: a partial record, or two records with one tag.
    """
    _check_prefix_bits(prefix_bits)
    if len(encoded) % RECORD_SIZE:
        raise InputError(f"{len(encoded)} bytes are not a whole number of {RECORD_SIZE}-byte records")
    n = len(encoded) // RECORD_SIZE
    rows = np.frombuffer(encoded, dtype=np.uint8).reshape(n, RECORD_SIZE)  # a view: no copy
    hi = rows[:, :8].copy().view(">u8").ravel()
    lo = rows[:, 8:16].copy().view(">u8").ravel()
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    if n > 1 and bool(((hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])).any()):
        raise InputError("two records with one tag")
    ordered = rows[order]
    del rows, lo
    n_buckets = 1 << prefix_bits
    which = (hi >> np.uint64(64 - prefix_bits)).astype(np.int64) if prefix_bits else np.zeros(n, np.int64)
    sizes = np.bincount(which, minlength=n_buckets).tolist()
    del hi, which, order
    out = []
    position = 0
    for size in sizes:
        head = bytes([BUCKET_FORMAT_VERSION]) + size.to_bytes(4, "big")
        out.append(head + ordered[position : position + size].tobytes())
        position += size
    return out


class BucketStream:
    """The ``2**prefix_bits`` buckets of records fed in tag order, in chunks of concatenated
    :func:`encode_record` bytes: :meth:`feed` returns the buckets a chunk completes, :meth:`finish` the
    rest (empty ones included), each as ``(bucket_id, bytes)`` in bucket order. The bytes equal those of
    :func:`buckets_of_records`; memory is one chunk and one bucket, whatever the number of records.

    Raises (from :meth:`feed`):
        InputError: a partial record, records out of tag order, or two records with one tag.
    """

    __slots__ = ("_last", "_next", "_pending", "_pending_count", "_prefix_bits", "count")

    def __init__(self, prefix_bits: int) -> None:
        _check_prefix_bits(prefix_bits)
        self._prefix_bits = prefix_bits
        self._next = 0  # the bucket being filled
        self._pending: list[bytes] = []
        self._pending_count = 0
        self._last = b""  # the tag of the last record fed
        self.count = 0

    @property
    def prefix_bits(self) -> int:
        """The buckets' prefix length."""
        return self._prefix_bits

    def _close(self, upto: int) -> list[tuple[int, bytes]]:
        """Emit the bucket being filled and the empty ones before ``upto``."""
        out = []
        while self._next < upto:
            head = bytes([BUCKET_FORMAT_VERSION]) + self._pending_count.to_bytes(4, "big")
            out.append((self._next, head + b"".join(self._pending)))
            self._pending, self._pending_count = [], 0
            self._next += 1
        return out

    def feed(self, encoded: bytes | bytearray) -> list[tuple[int, bytes]]:
        if len(encoded) % RECORD_SIZE:
            raise InputError(f"{len(encoded)} bytes are not a whole number of {RECORD_SIZE}-byte records")
        n = len(encoded) // RECORD_SIZE
        if n == 0:
            return []
        rows = np.frombuffer(encoded, dtype=np.uint8).reshape(n, RECORD_SIZE)
        tags = rows[:, :TAG_SIZE]
        first = bytes(tags[0])
        if first <= self._last:
            raise InputError("records out of tag order, or two records with one tag")
        if n > 1:
            keys = tags.copy().view(">u8")
            hi, lo = keys[:, 0], keys[:, 1]
            ascending = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
            if not bool(ascending.all()):
                raise InputError("records out of tag order, or two records with one tag")
        else:
            hi = tags[:, :8].copy().view(">u8").ravel()
        self._last = bytes(tags[-1])
        self.count += n
        bits = self._prefix_bits
        which = (hi >> np.uint64(64 - bits)).astype(np.int64) if bits else np.zeros(n, np.int64)
        out: list[tuple[int, bytes]] = []
        # the rows of each bucket present in this chunk: boundaries where the bucket id changes
        cuts = np.flatnonzero(which[1:] != which[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), n]
        for start, end in zip(starts, ends, strict=True):
            bucket = int(which[start])
            if bucket != self._next:
                out += self._close(bucket)
            self._pending.append(bytes(encoded[start * RECORD_SIZE : end * RECORD_SIZE]))
            self._pending_count += end - start
        return out

    def finish(self) -> list[tuple[int, bytes]]:
        """The remaining buckets, up to the last one."""
        return self._close(1 << self._prefix_bits)


def build_buckets(records: Iterable[SealedRecord], prefix_bits: int) -> list[bytes]:
    """Encode every one of the ``2**prefix_bits`` buckets, in bucket order (empty ones included)."""
    _check_prefix_bits(prefix_bits)
    grouped: list[list[SealedRecord]] = [[] for _ in range(1 << prefix_bits)]
    for rec in records:
        grouped[bucket_id(rec.tag, prefix_bits)].append(rec)
    return [encode_bucket(group) for group in grouped]


def buckets_root(buckets: Sequence[bytes]) -> bytes:
    """RFC 9162 Merkle root whose leaves are the encoded buckets in bucket order (a power of two of them).

    The manifest signs this root; a peer checks one bucket with its inclusion proof
    (:func:`client.protocol.manifest.verify_bucket`).
    """
    n = len(buckets)
    if n == 0 or n & (n - 1):
        raise InputError(f"{n} buckets: expected a power of two")
    return root_hash(buckets)


# --- record sets --------------------------------------------------------------------------------------


def build_record_set(records: Iterable[SealedRecord], prefix_bits: int) -> tuple[bytes, bytes]:
    """The record set of ``records`` (every bucket, in bucket order) and its ``buckets_root``."""
    buckets = build_buckets(records, prefix_bits)
    return b"".join(buckets), buckets_root(buckets)


class RecordSet:
    """A peer's record set for one filter, parsed once: every bucket in bucket order, ready for lookups.

    Only fixed-size records (format 1, 16-byte plaintext) are accepted, so a set of ``count`` records in
    ``2**prefix_bits`` buckets is exactly ``5 * 2**prefix_bits + 62 * count`` bytes. Parsing is
    vectorised (numpy): a national record set of millions of records is checked in well under a second.
    """

    __slots__ = ("_data", "_starts", "count", "prefix_bits")

    def __init__(self, data: bytes, prefix_bits: int, starts: np.ndarray, count: int) -> None:
        self._data = data
        self._starts = starts
        self.prefix_bits = prefix_bits
        self.count = count

    @classmethod
    def from_bytes(cls, data: bytes, prefix_bits: int) -> RecordSet:
        """Parse strictly: every bucket's version and count, every record's length, every tag strictly
        increasing within its bucket and belonging to it, no trailing bytes.

        Raises:
            EncodingError: naming the bucket (and record) at fault.
        """
        _check_prefix_bits(prefix_bits)
        if not isinstance(data, bytes):
            raise InputError("a record set is bytes")
        n_buckets = 1 << prefix_bits
        starts = np.empty(n_buckets + 1, dtype=np.int64)
        counts = np.empty(n_buckets, dtype=np.int64)
        position = 0
        size = len(data)
        for b in range(n_buckets):
            if position + BUCKET_HEADER_SIZE > size:
                raise EncodingError(f"record set: bucket {b} of {n_buckets} is missing")
            if data[position] != BUCKET_FORMAT_VERSION:
                raise EncodingError(f"record set: bucket {b} has unknown version {data[position]}")
            count = int.from_bytes(data[position + 1 : position + 5], "big")
            starts[b], counts[b] = position, count
            position += BUCKET_HEADER_SIZE + count * RECORD_SIZE
            if position > size:
                raise EncodingError(f"record set: bucket {b} announces {count} records past the end")
        if position != size:
            raise EncodingError(f"record set: {size - position} bytes after the last bucket")
        starts[n_buckets] = size
        total = int(counts.sum())
        if total:
            buf = np.frombuffer(data, dtype=np.uint8)
            bucket_of = np.repeat(np.arange(n_buckets, dtype=np.int64), counts)
            # The records without the bucket headers, as one (total, 62) array: one byte mask over the
            # data and one copy of the records (not an index per byte, which took ~8 times the set).
            keep = np.ones(len(buf), dtype=np.bool_)
            for offset in range(BUCKET_HEADER_SIZE):
                keep[starts[:-1] + offset] = False
            rows = buf[keep].reshape(total, RECORD_SIZE)
            del keep
            length_at = TAG_SIZE + NONCE_SIZE
            lengths = rows[:, length_at].astype(np.int64) << 8 | rows[:, length_at + 1]
            bad = np.flatnonzero(lengths != PLAINTEXT_SIZE + _AEAD_TAG_SIZE)
            if bad.size:
                i = int(bad[0])
                raise EncodingError(
                    f"record set: record {i} (bucket {int(bucket_of[i])}) has a ciphertext "
                    f"of {int(lengths[i])} bytes, expected {PLAINTEXT_SIZE + _AEAD_TAG_SIZE}"
                )
            tags = rows[:, :TAG_SIZE]
            hi = tags[:, :8].copy().view(">u8").ravel()
            lo = tags[:, 8:16].copy().view(">u8").ravel()
            prefix = (hi >> np.uint64(64 - prefix_bits)) if prefix_bits else np.zeros(total, dtype=np.uint64)
            bad = np.flatnonzero(prefix.astype(np.int64) != bucket_of)
            if bad.size:
                i = int(bad[0])
                raise EncodingError(f"record set: record {i} does not belong to bucket {int(bucket_of[i])}")
            same = bucket_of[1:] == bucket_of[:-1]
            increasing = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
            bad = np.flatnonzero(same & ~increasing)
            if bad.size:
                i = int(bad[0]) + 1
                raise EncodingError(
                    f"record set: record {i} (bucket {int(bucket_of[i])}) is not in strictly increasing "
                    "tag order"
                )
        return cls(data, prefix_bits, starts, total)

    def bucket(self, number: int) -> bytes:
        """The encoded bucket ``number``."""
        return self._data[int(self._starts[number]) : int(self._starts[number + 1])]

    def buckets(self) -> list[bytes]:
        """Every encoded bucket, in bucket order."""
        return [self.bucket(b) for b in range(1 << self.prefix_bits)]

    def root(self) -> bytes:
        """The ``buckets_root`` of the set (what the manifest signs)."""
        return buckets_root(self.buckets())

    def to_bytes(self) -> bytes:
        """The record set exactly as downloaded."""
        return self._data

    def find(self, tag: bytes) -> SealedRecord | None:
        """The record with ``tag``, or ``None``."""
        for record in decode_bucket(self.bucket(bucket_id(tag, self.prefix_bits))):
            if record.tag == tag:
                return record
        return None

    def open(self, digest: bytes, *, node_id: str, epoch: int, kind: str, tier: int) -> IndicatorMeta | None:
        """Open ``digest``'s record; ``None`` when the set holds no record with its tag.

        Raises:
            DecryptionError: a record with our tag is present but does not authenticate.
        """
        record = self.find(tag_of(digest))
        if record is None:
            return None
        return open_record(digest, record, node_id=node_id, epoch=epoch, kind=kind, tier=tier)
