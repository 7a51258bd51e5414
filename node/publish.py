"""Publishing: rebuild the node's filters, metadata buckets and signed manifest from its store.

One publication is one new manifest version. For every (kind, tier) with live indicators it holds a
Bloom filter of their digests and ``2**prefix_bits`` buckets of sealed metadata; the manifest signs the
filter hashes, the buckets' Merkle roots, the counts, the epoch's OPRF public key and the previous
manifest's hash. TLP:RED indicators are never published; AMBER+STRICT ones are held back too (see
``docs/operators.md``: sharing them with named peers only is not implemented yet, so they stay home).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.bloom import BloomFilter, filter_capacity
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
from client.protocol.metadata import (
    IndicatorMeta,
    buckets_of_records,
    buckets_root,
    choose_prefix_bits,
    encode_record,
    seal,
)
from node.store.base import PublishRow, SealedItem, Store

__all__ = ["Publication", "day_of", "publish"]

#: Records sealed afresh go back to the store in batches of this many (one transaction each).
_SEALED_BATCH = 20_000

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


def _meta(row: PublishRow) -> IndicatorMeta:
    return IndicatorMeta(
        category=row.category,
        first_seen=day_of(row.first_seen),
        last_seen=day_of(row.last_seen),
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
    # Digests and sealed records accumulate as flat bytes (64 or 32 and 62 bytes an indicator), never as
    # Python objects per indicator: a publication of millions stays within a few hundred bytes each.
    digests: dict[tuple[str, int], bytearray] = defaultdict(bytearray)
    records: dict[tuple[str, int], bytearray] = defaultdict(bytearray)
    counts: dict[tuple[str, int], int] = defaultdict(int)
    withheld = 0
    # Sealing is deterministic (synthetic nonces), so a row's record is sealed once and kept with it:
    # only rows that are new or whose metadata or digest changed since are sealed again (the store
    # compares the metadata it was sealed under), and their records go back in batches.
    fresh: list[SealedItem] = []
    for item in store.iter_sealing(epoch, now=now):
        row = item.row
        if row.tier == TIER_HMAC and on_hmac is not None and row.kind not in on_hmac:
            continue
        if row.tlp in WITHHELD_TLP:
            withheld += 1
            continue
        key = (row.kind, row.tier)
        digests[key] += row.digest
        record = item.sealed
        if record is None:
            sealed = seal(row.digest, _meta(row), node_id=node_id, epoch=epoch, kind=row.kind, tier=row.tier)
            record = encode_record(sealed)
            fresh.append(SealedItem(item.indicator_id, row.tier, item.sealed_key, record))
            if len(fresh) >= _SEALED_BATCH:
                store.cache_sealed(epoch, fresh)
                fresh.clear()
        records[key] += record
        counts[key] += 1
    store.cache_sealed(epoch, fresh)

    filters: dict[tuple[str, int], bytes] = {}
    buckets: dict[tuple[str, int, int], bytes] = {}
    entries = []
    for key in sorted(counts):
        kind, tier = key
        n = counts[key]
        bloom = BloomFilter.build(
            digests.pop(key),
            p=false_positive_rate,
            kind=kind,
            tier=tier,
            epoch=epoch,
            node_id=node_id,
            capacity=filter_capacity(n),
        )
        filters[key] = bloom.to_bytes()
        del bloom
        prefix_bits = min(max_prefix_bits, choose_prefix_bits(n))
        encoded = buckets_of_records(records.pop(key), prefix_bits)
        for bucket, data in enumerate(encoded):
            buckets[(kind, tier, bucket)] = data
        entries.append(
            FilterEntry(
                kind=kind,
                tier=tier,
                filter_sha256=hashlib.sha256(filters[key]).digest(),
                count=n,
                prefix_bits=prefix_bits,
                buckets_root=buckets_root(encoded),
                records_size=sum(len(b) for b in encoded),
            )
        )
    publishes_hmac = any(e.tier == TIER_HMAC for e in entries)
    if publishes_hmac and hmac_key is None:
        raise InputError("an HMAC-tier filter is published without the federation HMAC key")

    previous_bytes = store.latest_manifest()
    previous, previous_hash = _previous(previous_bytes)
    issued_at = max(now, previous.issued_at) if previous else now
    manifest = Manifest(
        node_id=node_id,
        epoch=epoch,
        # The store's publication version and the manifest's are the same sequence; taking the larger
        # keeps them moving forward together even if one was written without the other.
        version=max(previous.version if previous else 0, store.latest_version() or 0) + 1,
        issued_at=issued_at,
        expires_at=issued_at + validity_s,
        previous_hash=previous_hash,
        oprf_public_key=oprf_public_key,
        entries=tuple(entries),
        hmac_fingerprint=hmac_fingerprint(hmac_key) if hmac_key is not None else NO_HMAC,
        extensions=extensions,
    )
    signed = sign_manifest(manifest, signing_key)
    counts = dict(counts)
    summary = {f"{kind}/{'oprf' if tier == 1 else 'hmac'}": n for (kind, tier), n in counts.items()}
    events = list(audit(summary, manifest_hash(manifest).hex()))
    store.save_publication(manifest.version, signed.to_bytes(), filters, buckets, audit=events)
    return Publication(signed=signed, counts=counts, withheld=withheld)
