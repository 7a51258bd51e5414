"""Incremental sync: the change of one published filter and its record set between two versions.

A peer that holds version ``a`` of a (kind, tier) fetches the delta to version ``b`` instead of both
artefacts whole, applies it to the bytes it holds, and verifies the result exactly as a full download
(the filter's SHA-256 and the record set's size, count and Merkle root, which manifest ``b`` signs):
so a peer ends with the same bytes a full download gives, and a delta it cannot apply or verify is
refused (the full download stays the fallback). Encoding (docs/PROTOCOL.md, "Deltas")::

    "petanda/v2/delta" || 0x00 || u64 from_version || u64 to_version || u8 kind || u8 tier
    filter:  u8 mode
             mode 0 (whole): u32 length || the new filter
             mode 1 (bits):  u32 count || u32 length || count x varint gap      [same length only]
    records: u8 mode
             mode 0 (whole): u32 length || the new record set
             mode 1 (records): u32 count || count x (u32 bucket || u32 removed || removed x tag[16]
                                                      || u32 added || added x record[62])
                                                                               [same bucket count only]

integers big-endian. Mode 1 of the filter flips bits of the serialised filter (header included): bit
``i`` is bit ``7 - i % 8`` of byte ``i // 8``; the positions, strictly increasing, are sent as gaps (the
first from 0), each an unsigned LEB128 varint. Mode 1 of the records names each changed bucket once
(strictly increasing): the tags its records lose and the records it gains; the bucket is the old one
without the lost and with the gained, sorted by tag. A change of a few records costs their 62 bytes and
a few bytes per changed filter bit, whatever the node's size.
Deltas carry nothing a full download does not: a hostile member learns from a delta request only the
version the asker holds, which its GetManifest cursor already tells.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from client.protocol._encoding import Reader, Writer
from client.protocol.errors import EncodingError
from client.protocol.kinds import kind_code
from client.protocol.metadata import (
    BUCKET_FORMAT_VERSION,
    BUCKET_HEADER_SIZE,
    RECORD_SIZE,
    TAG_SIZE,
    RecordSet,
    decode_bucket,
    encode_bucket,
)

__all__ = ["DELTA_LABEL", "Delta", "apply_delta", "decode_delta", "make_delta"]

#: Domain-separation prefix of a delta.
DELTA_LABEL: Final = b"petanda/v2/delta\x00"
_WHOLE, _PARTS = 0, 1


class Delta:
    """A decoded delta (see the module docstring); :func:`apply_delta` applies it."""

    __slots__ = ("filter_part", "from_version", "kind_code", "records_part", "tier", "to_version")

    def __init__(
        self,
        from_version: int,
        to_version: int,
        kind_code: int,
        tier: int,
        filter_part: bytes | list[int],
        records_part: bytes | list[tuple[int, list[bytes], list[bytes]]],
    ) -> None:
        self.from_version, self.to_version = from_version, to_version
        self.kind_code, self.tier = kind_code, tier
        self.filter_part, self.records_part = filter_part, records_part


def _varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value, concatenated (vectorised)."""
    v = values.astype(np.uint64)
    if not len(v):
        return b""
    sizes = np.maximum(1, (np.floor(np.log2(np.maximum(v, 1).astype(np.float64))).astype(np.int64) // 7) + 1)
    width = int(sizes.max())
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    more = np.arange(width)[None, :] < (sizes[:, None] - 1)
    groups |= (more * 0x80).astype(np.uint8)
    return groups[np.arange(width)[None, :] < sizes[:, None]].tobytes()


def _read_varints(data: bytes, count: int) -> np.ndarray:
    """Decode exactly ``count`` LEB128 varints filling ``data`` (each at most 5 bytes)."""
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) != count or (count and ends[-1] != len(b) - 1):
        raise EncodingError(f"delta: filter gaps hold {len(ends)} varints, the count says {count}")
    if not count:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= 5:
        raise EncodingError("delta: a filter gap is longer than 5 bytes")
    group = np.repeat(np.arange(count), ends - starts + 1)
    position = np.arange(len(b)) - starts[group]
    parts = (b & 0x7F).astype(np.int64) << (7 * position)
    return np.add.reduceat(parts, starts)


def make_delta(
    *,
    from_version: int,
    to_version: int,
    kind: str,
    tier: int,
    old_filter: bytes,
    new_filter: bytes,
    old_records: RecordSet,
    new_records: RecordSet,
) -> bytes:
    """Encode the change from (``old_filter``, ``old_records``) to (``new_filter``, ``new_records``)."""
    w = Writer(DELTA_LABEL)
    w.u64(from_version, "from_version")
    w.u64(to_version, "to_version")
    w.u8(kind_code(kind), "kind")
    w.u8(tier, "tier")
    _filter_part(w, old_filter, new_filter)
    _records_part(w, old_records, new_records)
    return w.getvalue()


def _filter_part(w: Writer, old: bytes, new: bytes) -> None:
    """The filter's change as flipped bits when the filter kept its size and that is smaller, else whole."""
    if len(old) == len(new):
        flipped = np.flatnonzero(np.unpackbits(np.frombuffer(old, np.uint8) ^ np.frombuffer(new, np.uint8)))
        gaps = _varints(np.diff(flipped, prepend=0))
        if len(gaps) + 8 < len(new):
            w.u8(_PARTS, "filter mode")
            w.u32(len(flipped), "filter bits")
            w.u32(len(gaps), "filter gaps length")
            w.fixed(gaps, len(gaps), "filter gaps")
            return
    w.u8(_WHOLE, "filter mode")
    w.u32(len(new), "filter length")
    w.fixed(new, len(new), "filter")


def _records_part(w: Writer, old: RecordSet, new: RecordSet) -> None:
    """The record set's change as records lost and gained per bucket when it kept its bucket count and
    that is smaller, else whole."""
    if old.prefix_bits == new.prefix_bits:
        part = Writer()
        changed = [b for b in range(1 << new.prefix_bits) if old.bucket(b) != new.bucket(b)]
        part.u32(len(changed), "buckets")
        for b in changed:
            before = {r.tag: r for r in decode_bucket(old.bucket(b))}
            after = {r.tag: r for r in decode_bucket(new.bucket(b))}
            removed = sorted(t for t, r in before.items() if after.get(t) != r)
            added = sorted((r for t, r in after.items() if before.get(t) != r), key=lambda r: r.tag)
            part.u32(b, "bucket")
            part.u32(len(removed), "removed")
            for tag in removed:
                part.fixed(tag, TAG_SIZE, "removed tag")
            part.u32(len(added), "added")
            for record in added:
                part.fixed(encode_bucket([record])[BUCKET_HEADER_SIZE:], RECORD_SIZE, "added record")
        encoded = part.getvalue()
        if len(encoded) < len(new.to_bytes()):
            w.u8(_PARTS, "records mode")
            w.fixed(encoded, len(encoded), "records change")
            return
    data = new.to_bytes()
    w.u8(_WHOLE, "records mode")
    w.u32(len(data), "records length")
    w.fixed(data, len(data), "records")


def decode_delta(data: bytes) -> Delta:
    """Decode strictly (:class:`EncodingError` naming the field)."""
    r = Reader(data, "delta")
    if r.take(len(DELTA_LABEL), "label") != DELTA_LABEL:
        raise r.error("label", "not a petanda/v2 delta")
    from_version, to_version = r.u64("from_version"), r.u64("to_version")
    code, tier = r.u8("kind"), r.u8("tier")
    filter_part: bytes | list[int]
    mode = r.u8("filter mode")
    if mode == _WHOLE:
        filter_part = r.take(r.u32("filter length"), "filter")
    elif mode == _PARTS:
        count = r.u32("filter bits")
        gaps = _read_varints(r.take(r.u32("filter gaps length"), "filter gaps"), count)
        if count > 1 and (gaps[1:] <= 0).any():
            raise r.error("filter gaps", "bit positions not strictly increasing")
        filter_part = [int(p) for p in np.cumsum(gaps)]
    else:
        raise r.error("filter mode", f"unknown mode {mode}")
    records_part: bytes | list[tuple[int, list[bytes], list[bytes]]]
    mode = r.u8("records mode")
    if mode == _WHOLE:
        records_part = r.take(r.u32("records length"), "records")
    elif mode == _PARTS:
        buckets: list[tuple[int, list[bytes], list[bytes]]] = []
        for i in range(r.u32("buckets")):
            bucket = r.u32(f"bucket entry {i}")
            if buckets and bucket <= buckets[-1][0]:
                raise r.error(f"bucket entry {i}", "not in strictly increasing order")
            removed = [r.take(TAG_SIZE, f"bucket entry {i} removed tag") for _ in range(r.u32("removed"))]
            added = [r.take(RECORD_SIZE, f"bucket entry {i} added record") for _ in range(r.u32("added"))]
            buckets.append((bucket, removed, added))
        records_part = buckets
    else:
        raise r.error("records mode", f"unknown mode {mode}")
    r.end()
    return Delta(from_version, to_version, code, tier, filter_part, records_part)


def apply_delta(delta: Delta, old_filter: bytes, old_records: RecordSet) -> tuple[bytes, bytes]:
    """The new filter and record-set bytes; the caller verifies them against the new manifest.

    Raises:
        EncodingError: an entry that does not fit the old artefacts (index out of range).
    """
    if isinstance(delta.filter_part, bytes):
        new_filter = delta.filter_part
    else:
        bits = np.unpackbits(np.frombuffer(old_filter, dtype=np.uint8))
        positions = np.asarray(delta.filter_part, dtype=np.int64)
        if len(positions) and positions[-1] >= len(bits):
            raise EncodingError(f"delta: filter bit {int(positions[-1])} is past the end ({len(bits)} bits)")
        bits[positions] ^= 1
        new_filter = np.packbits(bits).tobytes()
    if isinstance(delta.records_part, bytes):
        new_records = delta.records_part
    else:
        n_buckets = 1 << old_records.prefix_bits
        changes = {bucket: (removed, added) for bucket, removed, added in delta.records_part}
        if changes and max(changes) >= n_buckets:
            raise EncodingError(f"delta: bucket {max(changes)} is past the {n_buckets} buckets")
        out = []
        for b in range(n_buckets):
            if b not in changes:
                out.append(old_records.bucket(b))
                continue
            removed, added = changes[b]
            kept = {r.tag: r for r in decode_bucket(old_records.bucket(b))}
            for tag in removed:
                if kept.pop(tag, None) is None:
                    raise EncodingError(f"delta: bucket {b} has no record {tag.hex()} to remove")
            for raw in added:
                (record,) = decode_bucket(bytes([BUCKET_FORMAT_VERSION]) + (1).to_bytes(4, "big") + raw)
                if record.tag in kept:
                    raise EncodingError(f"delta: bucket {b} already has a record {record.tag.hex()}")
                kept[record.tag] = record
            out.append(encode_bucket(kept.values()))
        new_records = b"".join(out)
    return new_filter, new_records
