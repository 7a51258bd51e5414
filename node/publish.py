"""Publishing: rebuild the node's filters, metadata buckets and signed manifest from its store.

One publication is one new manifest version. For every (kind, tier) with live indicators it holds a
Bloom filter of their digests and ``2**prefix_bits`` buckets of sealed metadata; the manifest signs the
filter hashes, the buckets' Merkle roots, the counts, the epoch's OPRF public key and the previous
manifest's hash. TLP:RED indicators are never published; AMBER+STRICT ones are held back too (see
``docs/operators.md``: sharing them with named peers only is not implemented yet, so they stay home).

A publication either builds every filter from scratch (:func:`_from_scratch`: the store's rows streamed
in tag order, ADR 0020) or, after a change, updates the last one (:func:`_incremental`: the store's change
log, the last buckets and the filter's per-bit counters kept in a cache directory, ADR 0021); both give
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.bloom import (
    BloomBuilder,
    BloomFilter,
    CountingBloom,
    bloom_parameters,
    filter_capacity,
    splice,
)
from client.protocol.digest import hmac_fingerprint
from client.protocol.errors import EncodingError, InputError
from client.protocol.kinds import TIER_HMAC
from client.protocol.manifest import (
    GENESIS_HASH,
    NO_HMAC,
    SIGNATURE_SIZE,
    FilterEntry,
    Manifest,
    SignedManifest,
    manifest_hash,
    sign_manifest,
)
from client.protocol.merkle import leaf_hash, root_from_hashes
from client.protocol.metadata import (
    BUCKET_FORMAT_VERSION,
    BUCKET_HEADER_SIZE,
    RECORD_SIZE,
    TAG_SIZE,
    BucketStream,
    Sealer,
    choose_prefix_bits,
    tag_of,
)
from node import pubcache
from node.store.base import PublishRow, SealedItem, Store

__all__ = ["Publication", "day_of", "publish"]

#: Records sealed afresh go back to the store in batches of this many (one transaction each).
_SEALED_BATCH = 20_000
#: Records are streamed from the store in batches of this many (64 + 62 bytes each).
_RECORD_BATCH = 20_000
#: Changed buckets are staged in the store in batches of this many (one transaction each).
_BUCKET_BATCH = 2_000
#: Bytes of buckets an incremental publication holds at once (read, edited and staged): at 10M a bucket is
#: ~75 KB, and 2,000 of them held three times over (read, edited, bound by the driver) took 529 MiB.
_BUCKET_BATCH_BYTES = 16 << 20

#: Meta key of what the last publication depended on besides the rows (JSON: :func:`_state`, its version
#: and ``now``).
_STATE_META = "publish.state"
#: A publication follows the change while at most a tenth of the published rows changed, but always up
#: to the first and never beyond the second number of rows: the changes are held in memory (~300 bytes a
#: row), and beyond that a build from scratch costs about as much.
_INCREMENTAL_MIN = 10_000
_INCREMENTAL_MAX = 250_000

#: TLP markings that never leave the node in a publication.
WITHHELD_TLP = frozenset({"RED", "AMBER+STRICT"})


def day_of(seconds: int) -> date:
    """The UTC calendar day of a Unix time."""
    return datetime.fromtimestamp(seconds, UTC).date()


@dataclass(frozen=True, slots=True)
class Publication:
    """What :func:`publish` stored: the signed manifest and how many indicators each filter holds."""

    signed: SignedManifest
    counts: dict[tuple[str, int], int]
    withheld: int
    #: Whether it was the previous publication updated by the changes since (else built from scratch).
    incremental: bool = False


def _seal(sealers: dict[tuple[str, int], Sealer], row: PublishRow, node_id: str, epoch: int) -> bytes:
    """The encoded sealed record of ``row`` (one :class:`Sealer` per kind and tier)."""
    sealer = sealers.get((row.kind, row.tier))
    if sealer is None:
        sealer = sealers[(row.kind, row.tier)] = Sealer(
            node_id=node_id, epoch=epoch, kind=row.kind, tier=row.tier
        )
    return sealer.seal_fields(
        row.digest,
        category=row.category,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        confidence=row.confidence,
        tlp=row.tlp,
        reports=row.reports,
    )


def _previous(data: bytes | None) -> tuple[Manifest | None, bytes]:
    """The node's last manifest and the hash the next one names. One of format 1 (signed before this
    node was upgraded) cannot be parsed, but its hash is still SHA-256 of its canonical bytes (all but
    the 64-byte signature): the chain goes on across the upgrade."""
    if data is None:
        return None, GENESIS_HASH
    try:
        previous = SignedManifest.from_bytes(data).manifest
    except EncodingError:
        return None, hashlib.sha256(data[:-SIGNATURE_SIZE]).digest()
    return previous, manifest_hash(previous)


@dataclass(slots=True)
class _Built:
    """One filter of a publication: its manifest entry and bytes, how many buckets it staged, and what
    to keep for the next publication (None: nothing worth keeping)."""

    entry: FilterEntry
    data: bytes
    staged: int
    cache: pubcache.FilterCache | None


def _build(
    store: Store,
    version: int,
    epoch: int,
    kind: str,
    tier: int,
    *,
    now: int,
    node_id: str,
    false_positive_rate: float,
    max_prefix_bits: int,
    counting: bool,
) -> _Built | None:
    """Build the filter and buckets of ``(kind, tier)`` from the store's records streamed in tag order:
    the filter in chunks, the buckets one after another, and stage only the buckets whose bytes differ
    from the current ones (the others are carried). Memory is the filter's bit array (with ``counting``,
    its counters: four times that), one batch and the buckets' hashes, whatever the number of records.
    None when the stream is empty."""
    builder: BloomBuilder | CountingBloom | None = None
    stream: BucketStream | None = None
    previous = b""
    leaves: list[bytes] = []
    staged: list[tuple[str, int, int, bytes]] = []
    records_size = 0
    written = 0
    m = k = 0

    def take(done: list[tuple[int, bytes]]) -> None:
        nonlocal records_size, written
        for bucket, data in done:
            digest = hashlib.sha256(data).digest()
            leaves.append(leaf_hash(data))
            records_size += len(data)
            if previous[32 * bucket : 32 * bucket + 32] != digest:
                staged.append((kind, tier, bucket, data))
        if len(staged) >= _BUCKET_BATCH:
            written += store.stage_buckets(version, staged)
            staged.clear()

    for batch in store.iter_records(epoch, kind, tier, now=now, withheld=WITHHELD_TLP, batch=_RECORD_BATCH):
        if builder is None or stream is None:
            m, k = bloom_parameters(filter_capacity(batch.total), false_positive_rate)
            if counting:
                builder = CountingBloom(m, k)
            else:
                builder = BloomBuilder(
                    capacity=filter_capacity(batch.total),
                    p=false_positive_rate,
                    kind=kind,
                    tier=tier,
                    epoch=epoch,
                    node_id=node_id,
                )
            stream = BucketStream(min(max_prefix_bits, choose_prefix_bits(batch.total)))
            previous = store.current_bucket_hashes(kind, tier, 1 << stream.prefix_bits)
        if isinstance(builder, CountingBloom):
            builder.update(CountingBloom.words(batch.digests, tier), saturate=True)
        else:
            builder.add(batch.digests)
        take(stream.feed(batch.records))
    if builder is None or stream is None:
        return None
    take(stream.finish())
    written += store.stage_buckets(version, staged)
    if isinstance(builder, CountingBloom):
        bloom = BloomFilter(
            bits=builder.bits(), m=m, k=k, n=stream.count, kind=kind, tier=tier, epoch=epoch, node_id=node_id
        )
    else:
        bloom = builder.finish()
    data = bloom.to_bytes()
    entry = FilterEntry(
        kind=kind,
        tier=tier,
        filter_sha256=hashlib.sha256(data).digest(),
        count=stream.count,
        prefix_bits=stream.prefix_bits,
        buckets_root=root_from_hashes(leaves),
        records_size=records_size,
    )
    keep = None
    if isinstance(builder, CountingBloom) and not builder.saturated:
        keep = pubcache.FilterCache(builder, bytearray(b"".join(leaves)))
    return _Built(entry, data, written, keep)


def _bucket_of(tag: bytes, prefix_bits: int) -> int:
    return int.from_bytes(tag[:4], "big") >> (32 - prefix_bits) if prefix_bits else 0


def _edit_bucket(
    data: bytes, items: list[tuple[bytes, bytes, bytes | None]], added: list[bytes], removed: list[bytes]
) -> bytes | None:
    """Bucket ``data`` with each ``(tag, digest, record)`` of ``items`` applied (the record with that
    tag replaced by ``record``, inserted in tag order, or removed when ``record`` is None), the digests
    added and removed appended to ``added`` and ``removed``; None when nothing changed. Each record is
    found by a binary search over the bucket's sorted tags."""
    body = bytearray(data[BUCKET_HEADER_SIZE:])
    changed = False
    for tag, digest, record in items:
        lo, hi = 0, len(body) // RECORD_SIZE
        while lo < hi:
            mid = (lo + hi) // 2
            if body[RECORD_SIZE * mid : RECORD_SIZE * mid + TAG_SIZE] < tag:
                lo = mid + 1
            else:
                hi = mid
        at = RECORD_SIZE * lo
        found = body[at : at + TAG_SIZE] == tag
        if record is None:
            if found:
                del body[at : at + RECORD_SIZE]
                removed.append(digest)
                changed = True
        elif not found:
            body[at:at] = record
            added.append(digest)
            changed = True
        elif body[at : at + RECORD_SIZE] != record:
            body[at : at + RECORD_SIZE] = record
            changed = True
    if not changed:
        return None
    return bytes([BUCKET_FORMAT_VERSION]) + (len(body) // RECORD_SIZE).to_bytes(4, "big") + bytes(body)


def _update(
    store: Store,
    version: int,
    previous: Manifest,
    entry: FilterEntry,
    changes: dict[bytes, bytes | None],
    cache: pubcache.FilterCache,
    *,
    max_prefix_bits: int,
) -> _Built | None:
    """The filter and buckets of ``entry``'s ``(kind, tier)`` from those of the previous publication and
    the changes (digest -> its record now, None when it is not published now): the buckets holding a
    changed record are rewritten and staged, the others carried; the filter is the previous one with
    the bits of the added digests set and of the removed ones cleared where their counters fall to 0.
    None when it cannot be done so (the filter would change size or bucket count, or the counters are
    not those of the previous filter): the caller builds from scratch."""
    kind, tier, bits_prefix = entry.kind, entry.tier, entry.prefix_bits
    if not changes:  # carried whole: the same filter and buckets, the same cache
        same = store.get_filter(previous.version, kind, tier)
        if same is None or hashlib.sha256(same).digest() != entry.filter_sha256:
            return None
        return _Built(entry, same, 0, None)
    by_bucket: dict[int, list[tuple[bytes, bytes, bytes | None]]] = {}
    for digest, record in changes.items():
        tag = tag_of(digest)
        by_bucket.setdefault(_bucket_of(tag, bits_prefix), []).append((tag, digest, record))
    added: list[bytes] = []
    removed: list[bytes] = []
    staged: list[tuple[str, int, int, bytes]] = []
    written = touched = 0
    ids = sorted(by_bucket)
    bucket_bytes = RECORD_SIZE * entry.count >> bits_prefix  # on average
    per_batch = max(1, min(_BUCKET_BATCH, _BUCKET_BATCH_BYTES // max(1, bucket_bytes)))
    for start in range(0, len(ids), per_batch):  # a batch of buckets in memory at a time
        chunk = ids[start : start + per_batch]
        old = store.current_buckets(kind, tier, chunk)
        if len(old) != len(chunk):
            return None
        for bucket in chunk:
            data = _edit_bucket(old[bucket], by_bucket[bucket], added, removed)
            if data is None:
                continue
            touched += 1
            cache.leaves[32 * bucket : 32 * bucket + 32] = leaf_hash(data)
            staged.append((kind, tier, bucket, data))
        written += store.stage_buckets(version, staged)
        staged.clear()
    if not touched:
        return _update(store, version, previous, entry, {}, cache, max_prefix_bits=max_prefix_bits)
    count = entry.count + len(added) - len(removed)
    if (
        count < 1
        or filter_capacity(count) != filter_capacity(entry.count)
        or min(max_prefix_bits, choose_prefix_bits(count)) != bits_prefix
    ):
        return None
    before_filter = store.get_filter(previous.version, kind, tier)
    if before_filter is None or hashlib.sha256(before_filter).digest() != entry.filter_sha256:
        return None
    m = cache.counting.counters.shape[0] * 2
    bits = np.frombuffer(before_filter, dtype=np.uint8, offset=len(before_filter) - m // 8).copy()
    moved = cache.counting.update(
        CountingBloom.words(b"".join(added), tier), CountingBloom.words(b"".join(removed), tier)
    )
    if moved is None or not CountingBloom.patch(bits, *moved):
        return None
    data = splice(before_filter, bits, count)
    del before_filter, bits
    n_buckets = 1 << bits_prefix
    leaves = bytes(cache.leaves)
    new_entry = FilterEntry(
        kind=kind,
        tier=tier,
        filter_sha256=hashlib.sha256(data).digest(),
        count=count,
        prefix_bits=bits_prefix,
        buckets_root=root_from_hashes([leaves[32 * b : 32 * b + 32] for b in range(n_buckets)]),
        records_size=BUCKET_HEADER_SIZE * n_buckets + RECORD_SIZE * count,
    )
    return _Built(new_entry, data, written, cache)


def _state(
    *,
    node_id: str,
    epoch: int,
    false_positive_rate: float,
    max_prefix_bits: int,
    on_hmac: frozenset[str] | None,
) -> dict[str, Any]:
    """What a publication's bytes depend on besides the rows: a change of any forces a build from scratch."""
    return {
        "node_id": node_id,
        "epoch": epoch,
        "false_positive_rate": false_positive_rate,
        "max_prefix_bits": max_prefix_bits,
        "hmac_kinds": None if on_hmac is None else sorted(on_hmac),
        "withheld": sorted(WITHHELD_TLP),
    }


def _changes(
    store: Store,
    epoch: int,
    *,
    mark: int,
    now: int,
    since: int,
    node_id: str,
    limit: int,
    publishes: Callable[[str, int, str], bool],
) -> dict[tuple[str, int], dict[bytes, bytes | None]] | None:
    """Per ``(kind, tier)``, every digest that may have entered, left or changed in the publication since
    the one made at ``since``, with its record now (None: not published now); the stale records among
    them are sealed and cached. None when more than ``limit`` rows changed (a build from scratch is
    then as cheap)."""
    changes: dict[tuple[str, int], dict[bytes, bytes | None]] = {}
    gone = store.gone_digests(epoch, upto=mark)
    if len(gone) > limit:
        return None
    for kind, tier, digest in gone:
        changes.setdefault((kind, tier), {})[digest] = None
    sealers: dict[tuple[str, int], Sealer] = {}
    fresh: list[SealedItem] = []
    seen = len(gone)
    for item in store.iter_changed(epoch, upto=mark, now=now, expired_after=since):
        seen += 1
        if seen > limit:
            return None
        row = item.row
        mine = changes.setdefault((row.kind, row.tier), {})
        if not item.live or not publishes(row.kind, row.tier, row.tlp):
            mine.setdefault(row.digest, None)
            continue
        record = item.sealed
        if record is None:
            record = _seal(sealers, row, node_id, epoch)
            fresh.append(SealedItem(item.indicator_id, row.tier, item.sealed_key, record))
            if len(fresh) >= _SEALED_BATCH:
                store.cache_sealed(epoch, fresh)
                fresh.clear()
        mine[row.digest] = record
    store.cache_sealed(epoch, fresh)
    return changes


def publish(
    store: Store,
    *,
    node_id: str,
    epoch: int,
    oprf_public_key: bytes,
    signing_key: Ed25519PrivateKey,
    now: int,
    false_positive_rate: float,
    max_prefix_bits: int,
    validity_s: int,
    hmac_key: bytes | None = None,
    extensions: tuple[tuple[int, bytes], ...] = (),
    hmac_kinds: Collection[str] | None = None,
    audit: Callable[[dict[str, int], str], Iterable[dict[str, Any]]] = lambda counts, mhash: (),
    cache_dir: Path | None = None,
) -> Publication:
    """Build and store the next publication from the store's live indicators of ``epoch``.

    ``hmac_key`` is the epoch's federation HMAC key, whose fingerprint the manifest signs whenever it is
    given (and an HMAC-tier filter needs it); without it the fingerprint is :data:`NO_HMAC`.
    ``hmac_kinds`` are the kinds published on the HMAC tier: the store's HMAC digests of other kinds
    (a kind taken off the tier) are left out; ``None`` publishes every HMAC digest the store holds.
    ``audit`` turns the per-filter counts and the manifest's hash (hex) into the audit events stored
    with the publication, in the same transaction.

    With ``cache_dir`` (the node's cache directory) the publication follows the change (ADR 0021): it
    reads the store's change log since the last publication, and updates that publication's filters
    (per-bit counters kept in ``cache_dir``) and buckets in place; it builds from scratch when there is
    no usable last publication or cache, when its parameters or epoch changed, when a filter appears,
    vanishes, or changes size or bucket count, or when more than a tenth of the rows (at least 10,000,
    at most 250,000) changed. Either way the bytes are those of a build from scratch.
    """
    on_hmac = None if hmac_kinds is None else frozenset(hmac_kinds)

    def published(kind: str, tier: int) -> bool:
        return tier != TIER_HMAC or on_hmac is None or kind in on_hmac

    def publishes(kind: str, tier: int, tlp: str) -> bool:
        return tlp not in WITHHELD_TLP and published(kind, tier)

    # Every change logged up to here is visible to the reads below; later ones stay for the next one.
    mark = store.change_mark()
    previous_bytes = store.latest_manifest()
    previous, previous_hash = _previous(previous_bytes)
    # The store's publication version and the manifest's are the same sequence; taking the larger keeps
    # them moving forward together even if one was written without the other.
    version = max(previous.version if previous else 0, store.latest_version() or 0) + 1
    state = _state(
        node_id=node_id,
        epoch=epoch,
        false_positive_rate=false_positive_rate,
        max_prefix_bits=max_prefix_bits,
        on_hmac=on_hmac,
    )
    store.drop_staged_buckets()

    built: dict[tuple[str, int], _Built] | None = None
    withheld = 0
    incremental = False
    if cache_dir is not None and previous is not None:
        built = _incremental(
            store,
            version,
            previous,
            state,
            mark=mark,
            now=now,
            node_id=node_id,
            epoch=epoch,
            cache_dir=cache_dir,
            publishes=publishes,
        )
        if built is None:
            store.drop_staged_buckets()
        else:
            incremental = True
            tallies = store.withheld_count(epoch, now=now, tlp="AMBER+STRICT")
            withheld = sum(n for (k, t), n in tallies.items() if published(k, t))
    if built is None:
        built, withheld = _from_scratch(
            store,
            version,
            epoch,
            now=now,
            node_id=node_id,
            false_positive_rate=false_positive_rate,
            max_prefix_bits=max_prefix_bits,
            counting=cache_dir is not None,
            published=published,
        )

    entries = [b.entry for _, b in sorted(built.items())]
    publishes_hmac = any(e.tier == TIER_HMAC for e in entries)
    if publishes_hmac and hmac_key is None:
        raise InputError("an HMAC-tier filter is published without the federation HMAC key")

    issued_at = max(now, previous.issued_at) if previous else now
    manifest = Manifest(
        node_id=node_id,
        epoch=epoch,
        version=version,
        issued_at=issued_at,
        expires_at=issued_at + validity_s,
        previous_hash=previous_hash,
        oprf_public_key=oprf_public_key,
        entries=tuple(entries),
        hmac_fingerprint=hmac_fingerprint(hmac_key) if hmac_key is not None else NO_HMAC,
        extensions=extensions,
    )
    signed = sign_manifest(manifest, signing_key)
    counts = {key: b.entry.count for key, b in built.items()}
    summary = {f"{kind}/{'oprf' if tier == 1 else 'hmac'}": n for (kind, tier), n in counts.items()}
    events = list(audit(summary, manifest_hash(manifest).hex()))
    store.save_publication(
        manifest.version,
        signed.to_bytes(),
        {key: b.data for key, b in built.items()},
        {},
        audit=events,
        carry={key: 1 << b.entry.prefix_bits for key, b in built.items()},
        staged=sum(b.staged for b in built.values()),
        changes_upto=mark,
        meta={_STATE_META: json.dumps({**state, "version": version, "now": now}, sort_keys=True)},
    )
    if cache_dir is not None:
        _keep(cache_dir, built, epoch=epoch, node_id=node_id, false_positive_rate=false_positive_rate)
    return Publication(signed=signed, counts=counts, withheld=withheld, incremental=incremental)


def _keep(
    cache_dir: Path,
    built: dict[tuple[str, int], _Built],
    *,
    epoch: int,
    node_id: str,
    false_positive_rate: float,
) -> None:
    """Write what the next publication updates, once this one is saved (a crash before leaves caches
    that name the previous filters: the next publication builds those from scratch)."""
    for (kind, tier), b in built.items():
        if b.cache is None and b.staged == 0:
            continue  # carried whole: its cache still names it
        m, k = bloom_parameters(filter_capacity(b.entry.count), false_positive_rate)
        if b.cache is None:
            pubcache.drop(cache_dir, kind, tier)
        else:
            pubcache.save(cache_dir, b.entry, b.cache, epoch=epoch, node_id=node_id, m=m, k=k)


def _from_scratch(
    store: Store,
    version: int,
    epoch: int,
    *,
    now: int,
    node_id: str,
    false_positive_rate: float,
    max_prefix_bits: int,
    counting: bool,
    published: Callable[[str, int], bool],
) -> tuple[dict[tuple[str, int], _Built], int]:
    """Every filter built from the store's rows: the rows whose record is missing or stale are sealed
    first, then each filter is streamed in tag order. Returns the filters and how many rows are withheld."""
    # Sealing is deterministic (synthetic nonces), so a row's record is sealed once and kept with it:
    # only rows that are new or whose metadata or digest changed since are sealed (the store compares
    # the metadata it was sealed under), and their records go back in batches.
    fresh: list[SealedItem] = []
    sealers: dict[tuple[str, int], Sealer] = {}
    for item in store.iter_sealing(epoch, now=now, stale_only=True):
        row = item.row
        if row.tlp in WITHHELD_TLP or not published(row.kind, row.tier):
            continue
        fresh.append(
            SealedItem(item.indicator_id, row.tier, item.sealed_key, _seal(sealers, row, node_id, epoch))
        )
        if len(fresh) >= _SEALED_BATCH:
            store.cache_sealed(epoch, fresh)
            fresh.clear()
    store.cache_sealed(epoch, fresh)

    tallies = store.publish_counts(epoch, now=now)
    withheld = sum(n for (k, t, tlp), n in tallies.items() if tlp in WITHHELD_TLP and published(k, t))
    keys = sorted({(k, t) for (k, t, tlp) in tallies if tlp not in WITHHELD_TLP and published(k, t)})
    built: dict[tuple[str, int], _Built] = {}
    for kind, tier in keys:
        one = _build(
            store,
            version,
            epoch,
            kind,
            tier,
            now=now,
            node_id=node_id,
            false_positive_rate=false_positive_rate,
            max_prefix_bits=max_prefix_bits,
            counting=counting,
        )
        if one is not None:
            built[(kind, tier)] = one
    return built, withheld


def _incremental(
    store: Store,
    version: int,
    previous: Manifest,
    state: dict[str, Any],
    *,
    mark: int,
    now: int,
    node_id: str,
    epoch: int,
    cache_dir: Path,
    publishes: Callable[[str, int, str], bool],
) -> dict[tuple[str, int], _Built] | None:
    """Every filter of the previous publication updated by the changes since (:func:`_update`); None
    when the publication must be built from scratch instead."""
    raw = store.get_meta(_STATE_META)
    try:
        last = json.loads(raw) if raw else None
        since = int(last.pop("now")) if isinstance(last, dict) else None
        last_version = last.pop("version") if isinstance(last, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    if since is None or last != state or last_version != previous.version or previous.epoch != epoch:
        return None
    total = sum(e.count for e in previous.entries)
    changes = _changes(
        store,
        epoch,
        mark=mark,
        now=now,
        since=since,
        node_id=node_id,
        limit=min(_INCREMENTAL_MAX, max(_INCREMENTAL_MIN, total // 10)),
        publishes=publishes,
    )
    if changes is None:
        return None
    entries = {(e.kind, e.tier): e for e in previous.entries}
    if any(
        record is not None for key, mine in changes.items() if key not in entries for record in mine.values()
    ):
        return None  # a filter appears
    false_positive_rate = float(state["false_positive_rate"])
    built: dict[tuple[str, int], _Built] = {}
    for key, entry in sorted(entries.items()):
        m, k = bloom_parameters(filter_capacity(entry.count), false_positive_rate)
        mine = changes.get(key, {})
        if mine:  # the counters of the last filter; no zeroed array allocated only to be replaced
            found = pubcache.load(cache_dir, entry, epoch=epoch, node_id=node_id, m=m, k=k)
            if found is None:
                return None
            cache = found
        else:  # carried whole: _update reads no counters
            cache = pubcache.FilterCache(CountingBloom(m, k), bytearray())
        one = _update(
            store, version, previous, entry, mine, cache, max_prefix_bits=int(state["max_prefix_bits"])
        )
        if one is None:
            return None
        built[key] = one
    return built
