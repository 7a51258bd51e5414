"""The store's change log (schema 6), the contract a publication that follows the change relies on.

CONTRACT TESTS on a real store of each backend (``store`` fixture: SQLite and PostgreSQL): every way a
row changes is logged in its own transaction (an upsert, a retraction, a TLP change, digests written,
replaced or deleted, a purge), expiries are found by time, a publication consumes the log up to the mark
it took and no further, and the counts and buckets it reads come without reading every row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from client.protocol.errors import StoreError
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from node.store import DigestItem, IndicatorRow, Store

NOW = 1_764_000_000


def _digest(canonical: str, tier: int = TIER_OPRF, salt: str = "") -> bytes:
    return hashlib.sha512(f"{salt}{tier}/{canonical}".encode()).digest()[: 64 if tier == TIER_OPRF else 32]


def _row(i: int, **kw: Any) -> IndicatorRow:
    canonical = f"+6012{i:07d}"
    fields: dict[str, Any] = {
        "category": "investment",
        "first_seen": NOW - 86_400,
        "last_seen": NOW - 60,
        "confidence": 70,
        "tlp": "GREEN",
        "digests": {(1, TIER_OPRF): _digest(canonical), (1, TIER_HMAC): _digest(canonical, TIER_HMAC)},
    }
    fields.update(kw)
    return IndicatorRow(kind="phone", canonical=canonical, **fields)


def _changed(store: Store, *, upto: int, now: int = NOW, since: int | None = None) -> dict[str, set[int]]:
    """The changed rows by canonical value: the tiers seen, and 0 added for a row not publishable."""
    names = {_digest(f"+6012{i:07d}", t): f"+6012{i:07d}" for i in range(20) for t in (TIER_OPRF, TIER_HMAC)}
    names[_digest("new", TIER_HMAC)] = _row(3).canonical
    out: dict[str, set[int]] = {}
    for item in store.iter_changed(1, upto=upto, now=now, expired_after=since):
        out.setdefault(names[item.row.digest], set()).add(item.row.tier if item.live else 0)
    return out


def _seal_all(store: Store) -> None:
    """Cache a record for every row, as a publication does (only sealed rows can have been published)."""
    from node.store import SealedItem

    items = [
        SealedItem(r.indicator_id, r.row.tier, r.sealed_key, b"r" * 62)
        for r in store.iter_sealing(1, now=NOW)
    ]
    store.cache_sealed(1, items)


def test_every_change_is_logged_and_a_publication_consumes_up_to_its_mark(store: Store) -> None:
    assert store.change_mark() == 0
    store.upsert_indicators([_row(i) for i in range(5)], now=NOW)
    mark = store.change_mark()
    assert mark > 0
    assert set(_changed(store, upto=mark)) == {f"+6012{i:07d}" for i in range(5)}
    assert _changed(store, upto=0) == {}

    _seal_all(store)
    assert store.change_mark() == mark  # caching records is no change
    store.save_publication(1, b"m1", {}, {}, changes_upto=mark, meta={"publish.state": "x"})
    assert store.get_meta("publish.state") == "x"
    assert _changed(store, upto=store.change_mark()) == {}

    # each of these is a change of one indicator; the rows of a retracted or RED one are not live
    store.upsert_indicators([_row(0, reports=3)], now=NOW + 1)
    store.retract("phone", _row(1).canonical, now=NOW + 1)
    store.set_tlp("phone", _row(2).canonical, "RED", now=NOW + 1)
    store.set_digests([DigestItem("phone", _row(3).canonical, 1, TIER_HMAC, _digest("new", TIER_HMAC))])
    mark2 = store.change_mark()
    assert mark2 > mark
    changed = _changed(store, upto=mark2)
    assert changed == {
        _row(0).canonical: {TIER_OPRF, TIER_HMAC},
        _row(1).canonical: {0},
        _row(2).canonical: {0},
        _row(3).canonical: {TIER_OPRF, TIER_HMAC},  # its HMAC row holds a digest of another value now
    }
    # the HMAC digest replaced left its row after it was sealed: the publication takes its record out
    assert store.gone_digests(1, upto=mark2) == [("phone", TIER_HMAC, _digest(_row(3).canonical, TIER_HMAC))]

    # a change after the mark a publication took stays for the next one
    store.upsert_indicators([_row(4, confidence=99)], now=NOW + 2)
    store.save_publication(2, b"m2", {}, {}, changes_upto=mark2)
    assert set(_changed(store, upto=store.change_mark())) == {_row(4).canonical}
    assert store.gone_digests(1, upto=store.change_mark()) == []


def test_deleted_digests_and_purged_rows_are_logged_once_sealed(store: Store) -> None:
    store.upsert_indicators([_row(i) for i in range(4)], now=NOW)
    store.upsert_indicators([_row(9)], now=NOW)  # never sealed: never published, so its deletion is no change
    _seal_all(store)
    store.upsert_indicators([_row(10)], now=NOW)
    store.save_publication(1, b"m1", {}, {}, changes_upto=store.change_mark())
    store.retract_many([("phone", _row(i).canonical) for i in (0, 10)], now=NOW + 1)
    assert store.purge(before=NOW + 2) == 2
    store.delete_tier_digests(TIER_HMAC)
    gone = set(store.gone_digests(1, upto=store.change_mark()))
    assert gone == {("phone", TIER_OPRF, _digest(_row(0).canonical))} | {
        ("phone", TIER_HMAC, _digest(_row(i).canonical, TIER_HMAC)) for i in range(4)
    } | {("phone", TIER_HMAC, _digest(_row(9).canonical, TIER_HMAC))}


def test_expiries_are_found_by_time_between_two_publications(store: Store) -> None:
    store.upsert_indicators(
        [_row(0, expires_at=NOW + 100), _row(1, expires_at=NOW + 200), _row(2, expires_at=None)], now=NOW
    )
    store.save_publication(1, b"m1", {}, {}, changes_upto=store.change_mark())
    mark = store.change_mark()
    assert _changed(store, upto=mark, now=NOW + 150, since=NOW) == {_row(0).canonical: {0}}
    assert _changed(store, upto=mark, now=NOW + 250, since=NOW + 150) == {_row(1).canonical: {0}}
    # a clock that went back: what expired in between may be live again, and is looked at too
    assert _changed(store, upto=mark, now=NOW + 150, since=NOW + 250) == {
        _row(1).canonical: {TIER_OPRF, TIER_HMAC}
    }
    assert _changed(store, upto=mark, now=NOW + 250, since=None) == {}


def test_withheld_counts_and_current_buckets(store: Store) -> None:
    store.upsert_indicators(
        [_row(i) for i in range(3)] + [_row(i, tlp="AMBER+STRICT") for i in range(3, 6)], now=NOW
    )
    store.retract("phone", _row(5).canonical, now=NOW)
    assert store.withheld_count(1, now=NOW, tlp="AMBER+STRICT") == {
        ("phone", TIER_OPRF): 2,
        ("phone", TIER_HMAC): 2,
    }
    assert store.withheld_count(1, now=NOW, tlp="CLEAR") == {}
    store.stage_buckets(1, [("phone", TIER_OPRF, b, b"bucket%d" % b) for b in range(4)])
    store.save_publication(1, b"m1", {}, {}, staged=4, carry={("phone", TIER_OPRF): 4})
    store.stage_buckets(2, [("phone", TIER_OPRF, 2, b"newer")])
    store.save_publication(2, b"m2", {}, {}, staged=1, carry={("phone", TIER_OPRF): 4})
    assert store.current_buckets("phone", TIER_OPRF, [0, 2, 7]) == {0: b"bucket0", 2: b"newer"}
    assert store.current_buckets("phone", TIER_HMAC, [0]) == {}
    with pytest.raises(StoreError):
        store.save_publication(2, b"m2", {}, {})
