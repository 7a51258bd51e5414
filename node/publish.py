"""Publishing: rebuild the node's filters, metadata buckets and signed manifest from its store.

One publication is one new manifest version. For every (kind, tier) with live indicators it holds a
Bloom filter of their digests and ``2**prefix_bits`` buckets of sealed metadata; the manifest signs the
filter hashes, the buckets' Merkle roots, the counts, the epoch's OPRF public key and the previous
manifest's hash. TLP:RED indicators are never published; AMBER+STRICT ones are held back too (see
``docs/operators.md``: sharing them with named peers only is not implemented yet, so they stay home).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.bloom import BloomBuilder, filter_capacity
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
from client.protocol.metadata import BucketStream, Sealer, choose_prefix_bits
from node.store.base import PublishRow, SealedItem, Store

__all__ = ["Publication", "day_of", "publish"]

#: Records sealed afresh go back to the store in batches of this many (one transaction each).
_SEALED_BATCH = 20_000
#: Records are streamed from the store in batches of this many (64 + 62 bytes each).
_RECORD_BATCH = 20_000
#: Changed buckets are staged in the store in batches of this many (one transaction each).
_BUCKET_BATCH = 2_000

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
) -> tuple[FilterEntry, bytes, int] | None:
    """Build the filter and buckets of ``(kind, tier)`` from the store's records streamed in tag order:
    the filter in chunks, the buckets one after another, and stage only the buckets whose bytes differ
    from the current ones (the others are carried). Memory is the filter's bit array, one batch and the
    buckets' hashes, whatever the number of records. Returns the entry, the filter and how many buckets
    were staged; None when the stream is empty."""
    builder: BloomBuilder | None = None
    stream: BucketStream | None = None
    previous = b""
    leaves: list[bytes] = []
    staged: list[tuple[str, int, int, bytes]] = []
    records_size = 0
    written = 0

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
        builder.add(batch.digests)
        take(stream.feed(batch.records))
    if builder is None or stream is None:
        return None
    take(stream.finish())
    written += store.stage_buckets(version, staged)
    data = builder.finish().to_bytes()
    entry = FilterEntry(
        kind=kind,
        tier=tier,
        filter_sha256=hashlib.sha256(data).digest(),
        count=stream.count,
        prefix_bits=stream.prefix_bits,
        buckets_root=root_from_hashes(leaves),
        records_size=records_size,
    )
    return entry, data, written


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
) -> Publication:
    """Build and store the next publication from the store's live indicators of ``epoch``.

    ``hmac_key`` is the epoch's federation HMAC key, whose fingerprint the manifest signs whenever it is
    given (and an HMAC-tier filter needs it); without it the fingerprint is :data:`NO_HMAC`.
    ``hmac_kinds`` are the kinds published on the HMAC tier: the store's HMAC digests of other kinds
    (a kind taken off the tier) are left out; ``None`` publishes every HMAC digest the store holds.
    ``audit`` turns the per-filter counts and the manifest's hash (hex) into the audit events stored
    with the publication, in the same transaction.
    """
    on_hmac = None if hmac_kinds is None else frozenset(hmac_kinds)

    def published(kind: str, tier: int) -> bool:
        return tier != TIER_HMAC or on_hmac is None or kind in on_hmac

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
    previous_bytes = store.latest_manifest()
    previous, previous_hash = _previous(previous_bytes)
    # The store's publication version and the manifest's are the same sequence; taking the larger keeps
    # them moving forward together even if one was written without the other.
    version = max(previous.version if previous else 0, store.latest_version() or 0) + 1

    store.drop_staged_buckets()
    filters: dict[tuple[str, int], bytes] = {}
    carry: dict[tuple[str, int], int] = {}
    staged = 0
    counts: dict[tuple[str, int], int] = {}
    entries = []
    for kind, tier in keys:
        built = _build(
            store,
            version,
            epoch,
            kind,
            tier,
            now=now,
            node_id=node_id,
            false_positive_rate=false_positive_rate,
            max_prefix_bits=max_prefix_bits,
        )
        if built is None:
            continue
        entry, data, written = built
        staged += written
        filters[(kind, tier)] = data
        carry[(kind, tier)] = 1 << entry.prefix_bits
        counts[(kind, tier)] = entry.count
        entries.append(entry)
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
    summary = {f"{kind}/{'oprf' if tier == 1 else 'hmac'}": n for (kind, tier), n in counts.items()}
    events = list(audit(summary, manifest_hash(manifest).hex()))
    store.save_publication(
        manifest.version, signed.to_bytes(), filters, {}, audit=events, carry=carry, staged=staged
    )
    return Publication(signed=signed, counts=counts, withheld=withheld)
