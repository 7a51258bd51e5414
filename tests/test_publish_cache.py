"""A publication re-seals only the records whose metadata or digest changed, and gives the same bytes as one
that seals everything afresh.

INTEGRATION TESTS of node/publish.py on a real store of each backend (``store`` fixture): the records kept
with their digest rows (schema version 3) are reused while the row's metadata is unchanged, re-sealed when
it changes, and a publication from the cache equals, byte for byte, one from an emptied cache.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.errors import InputError
from client.protocol.kinds import TIER_OPRF
from client.protocol.manifest import SignedManifest
from client.protocol.metadata import RecordSet
from node.publish import Publication, publish
from node.store import IndicatorRow, Store
from tests.test_store_contract import raw

NOW = int(datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp())
KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))


def _digest(canonical: str) -> bytes:
    return hashlib.sha512(canonical.encode()).digest()


def _row(i: int, **kw: Any) -> IndicatorRow:
    canonical = f"+6012{i:07d}"
    fields: dict[str, Any] = {
        "category": "investment",
        "first_seen": NOW - 86_400 * 30,
        "last_seen": NOW - 86_400,
        "confidence": 70,
        "tlp": "GREEN",
        "reports": 1,
        "expires_at": None,
        "source": "test",
        "digests": {(1, TIER_OPRF): _digest(canonical)},
    }
    fields.update(kw)
    return IndicatorRow(kind="phone", canonical=canonical, **fields)


def _publish(store: Store, now: int) -> Publication:
    return publish(
        store,
        node_id="MY",
        epoch=1,
        oprf_public_key=bytes(32),
        signing_key=KEY,
        now=now,
        false_positive_rate=1e-6,
        max_prefix_bits=16,
        validity_s=86_400,
    )


def _records(store: Store, signed: SignedManifest) -> RecordSet:
    (entry,) = signed.manifest.entries
    version = signed.manifest.version
    buckets = [store.get_bucket(version, "phone", TIER_OPRF, b) for b in range(1 << entry.prefix_bits)]
    assert None not in buckets
    return RecordSet.from_bytes(b"".join(b for b in buckets if b is not None), entry.prefix_bits)


def _cached(store: Store) -> dict[bytes, bytes | None]:
    return {it.row.digest: it.sealed for it in store.iter_sealing(1, now=NOW)}


def test_a_publication_reuses_unchanged_records_and_equals_one_sealed_afresh(
    store: Store, store_url: str
) -> None:
    store.upsert_indicators([_row(i) for i in range(300)], now=NOW)
    first = _publish(store, NOW)
    cache = _cached(store)
    assert len(cache) == 300 and None not in cache.values()  # every record was kept with its row
    published = _records(store, first.signed).to_bytes()
    for record in cache.values():  # ... and is the record published for its digest
        assert record is not None and record in published

    # Unchanged rows: the next publication takes their records from the store, not from sealing: a copy
    # of another row's record planted under a row's current key is published as is, and caught only as a
    # duplicate tag (the cache is the node's own; the store's integrity is not in question here).
    digests = list(cache)
    planted, other = digests[0], digests[-1]
    item = next(it for it in store.iter_sealing(1, now=NOW) if it.row.digest == planted)
    update = "UPDATE digests SET sealed = ? WHERE indicator_id = ? AND tier = ?"
    with raw(store_url) as sql:
        sql(update, (cache[other], item.indicator_id, TIER_OPRF))
    with pytest.raises(InputError, match="two records with one tag"):  # reused as stored, not resealed
        _publish(store, NOW + 30)
    with raw(store_url) as sql:
        sql(update, (cache[planted], item.indicator_id, TIER_OPRF))

    # One changed and ten new rows: only those are sealed, and the changed one opens to its new metadata.
    store.upsert_indicators(
        [_row(7, reports=5, confidence=90)] + [_row(i) for i in range(300, 310)], now=NOW + 60
    )
    after = _cached(store)
    assert sum(v is None for v in after.values()) == 11
    second = _publish(store, NOW + 60)
    assert second.counts == {("phone", TIER_OPRF): 310}
    second_set = _records(store, second.signed)
    meta = second_set.open(_digest("+60120000007"), node_id="MY", epoch=1, kind="phone", tier=TIER_OPRF)
    assert meta is not None and (meta.reports, meta.confidence) == (5, 90)
    assert meta.first_seen == date(2026, 10, 30)
    kept = _cached(store)
    assert {d for d, v in kept.items() if v != cache.get(d)} == {
        _digest(f"+6012{i:07d}") for i in [7, *range(300, 310)]
    }

    # Emptied cache: sealing everything again gives the same record set, byte for byte.
    with raw(store_url) as sql:
        sql("UPDATE digests SET sealed = NULL, sealed_key = NULL")
    third = _publish(store, NOW + 120)
    assert _records(store, third.signed).to_bytes() == second_set.to_bytes()
    assert third.signed.manifest.entries[0].buckets_root == second.signed.manifest.entries[0].buckets_root
    assert _cached(store) == kept
