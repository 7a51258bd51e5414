"""Contract tests of the node's store: every test runs on SQLite and on PostgreSQL (``store_url`` fixture)."""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.protocol.auditlog import decode_entry
from client.protocol.errors import ConfigError, InputError, StoreError
from client.protocol.kinds import CATEGORIES, KINDS, TLP_LEVELS
from node.store import (
    DigestItem,
    HeadRow,
    IndicatorRow,
    PublishRow,
    SealedItem,
    StateCounts,
    Store,
    merge_rows,
    open_store,
)
from node.store.base import PEER_TREE_HEADS_KEPT, QuotaRequest
from node.store.migrations import load_migrations

NOW = 1_700_000_000
DAY = 86_400


def row(canonical: str, kind: str = "phone", **kw: Any) -> IndicatorRow:
    fields: dict[str, Any] = {
        "category": "investment",
        "first_seen": NOW - 100,
        "last_seen": NOW - 50,
        "confidence": 50,
        "tlp": "GREEN",
        "reports": 1,
        "expires_at": None,
        "source": "feed-a",
    }
    fields.update(kw)
    return IndicatorRow(kind=kind, canonical=canonical, **fields)


def dg(seed: str, n: int = 64) -> bytes:
    """A deterministic digest of ``n`` bytes."""
    return hashlib.sha512(seed.encode()).digest()[:n]


def is_pg(url: str) -> bool:
    return url.startswith("postgresql://")


@contextmanager
def raw(url: str) -> Iterator[Callable[..., object]]:
    """Run raw SQL on the store's database (``?`` placeholders on both backends), bypassing the store."""
    if is_pg(url):
        with psycopg.connect(url, autocommit=True) as pg:
            yield lambda q, p=(): pg.execute(q.replace("?", "%s"), p)
    else:
        lite = sqlite3.connect(url, isolation_level=None)
        try:
            yield lambda q, p=(): lite.execute(q, p)
        finally:
            lite.close()


def ev(action: str) -> dict[str, Any]:
    """An audit event as the node writes them (only the fields a test needs)."""
    return {"action": action}


def actions(entries: list[bytes]) -> list[str]:
    """The ``action`` of each stored entry, checking each carries its index and the chain link."""
    out = []
    for index, entry in enumerate(entries):
        value = decode_entry(entry)
        assert value["i"] == index
        assert value["prev"] == (
            "" if index == 0 else hashlib.sha256(b"\x00" + entries[index - 1]).hexdigest()
        )
        out.append(value["action"])
    return out


def drop_audit_triggers(sql: Callable[..., object], url: str) -> None:
    if is_pg(url):
        sql("DROP TRIGGER audit_log_no_change ON audit_log")
    else:
        sql("DROP TRIGGER audit_log_no_update")
        sql("DROP TRIGGER audit_log_no_delete")


# --- schema and migrations ----------------------------------------------------------------------------


def test_migrations_are_idempotent_on_reopen(store_url: str) -> None:
    n = len(load_migrations("postgres" if is_pg(store_url) else "sqlite"))
    with open_store(store_url) as s:
        assert s.schema_version() == n
        s.upsert_indicators([row("+6591234567")], now=NOW)
        s.append_audit([ev("e0")])
    for _ in range(2):
        with open_store(store_url) as s:
            assert s.schema_version() == n
            assert s.get_indicator("phone", "+6591234567") is not None
            assert s.audit_size() == 1
            assert s.integrity_check() == []
    with raw(store_url) as sql:
        if is_pg(store_url):
            with psycopg.connect(store_url) as c:
                count = c.execute("SELECT count(*) FROM schema_version").fetchone()
        else:
            count = sqlite3.connect(store_url).execute("SELECT count(*) FROM schema_version").fetchone()
        assert count == (n,)
        sql("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)", (n + 1, "future", 0))
    with pytest.raises(StoreError, match="newer than this software"):
        open_store(store_url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_schema_checks_mirror_client_kinds(backend: str) -> None:
    text = load_migrations(backend)[0].sql

    def in_list(column: str) -> tuple[str, ...]:
        """The values a CHECK allows: an IN list (PostgreSQL) or an OR chain of equalities (SQLite)."""
        m = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", text)
        if m:
            return tuple(re.findall(r"'([^']*)'", m.group(1)))
        m = re.search(rf"CHECK \(({column} = '[^']*'(?:\s+OR\s+{column} = '[^']*')*)\)", text)
        assert m, column
        return tuple(re.findall(rf"{column} = '([^']*)'", m.group(1)))

    assert in_list("kind") == KINDS
    assert in_list("category") == CATEGORIES
    assert in_list("tlp") == TLP_LEVELS


def test_migrations_upgrade_a_version_1_store(store_url: str) -> None:
    """A store written by schema version 1 keeps its data; migration 2 trims peer tree heads to 64."""
    backend = "postgres" if is_pg(store_url) else "sqlite"
    first = load_migrations(backend)[0]
    create = (
        "CREATE TABLE schema_version "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
    )
    if is_pg(store_url):
        with psycopg.connect(store_url, autocommit=True) as pg:
            pg.execute(create)
            pg.execute(first.sql.encode())
    else:
        lite = sqlite3.connect(store_url, isolation_level=None)
        lite.executescript(f"{create};\n{first.sql}")
        lite.close()
        os.chmod(store_url, 0o600)  # a store of an earlier release may be 0644: the operator tightens it
    with raw(store_url) as sql:
        sql("INSERT INTO schema_version (version, name, applied_at) VALUES (1, 'initial', 0)")
        sql("INSERT INTO publications (version, manifest) VALUES (?, ?)", (1, b"m1"))
        sql("INSERT INTO publication_filters (version, kind, tier, data) VALUES (1, 'phone', 1, ?)", (b"f1",))
        sql("INSERT INTO publications (version, manifest) VALUES (?, ?)", (2, b"m2"))
        for v, b in [(1, 0), (1, 1), (2, 0), (2, 1)]:  # schema 4 kept every bucket of every version
            sql(
                "INSERT INTO publication_buckets (version, kind, tier, bucket_id, data) "
                "VALUES (?, 'phone', 1, ?, ?)",
                (v, b, b"b%d-%d" % (v, b)),
            )
        sql("INSERT INTO peer_manifests (peer_id, manifest) VALUES ('th', ?)", (b"pm",))
        sql("INSERT INTO peer_filters (peer_id, kind, tier, data) VALUES ('th', 'phone', 1, ?)", (b"pf",))
        for i in range(70):
            sql(
                "INSERT INTO peer_tree_heads (peer_id, size, timestamp, root, signature) "
                "VALUES (?, ?, ?, ?, ?)",
                ("th", i, 1000 + i, bytes([i]) * 32, b"s"),
            )
    with open_store(store_url) as s:
        assert s.schema_version() == len(load_migrations(backend))
        assert (s.manifest(1), s.get_filter(1, "phone", 1), s.latest_version()) == (b"m1", b"f1", 2)
        assert (s.peer_manifest("th"), s.peer_filter("th", "phone", 1)) == (b"pm", b"pf")
        assert s.peer_records("th", "phone", 1) is None
        assert [h.size for h in s.peer_tree_heads("th")] == list(range(70 - PEER_TREE_HEADS_KEPT, 70))
        # migration 5: each version's buckets are served as before; the latest ones are current (their
        # hash unknown, so a publication writes them again) and a publication can carry them
        assert [s.get_bucket(v, "phone", 1, b) for v in (1, 2) for b in (0, 1)] == [
            b"b1-0",
            b"b1-1",
            b"b2-0",
            b"b2-1",
        ]
        assert s.current_bucket_hashes("phone", 1, 2) == bytes(64)
        s.save_publication(3, b"m3", {}, {("phone", 1, 1): b"b3-1"}, carry={("phone", 1): 2})
        assert [s.get_bucket(3, "phone", 1, b) for b in (0, 1)] == [b"b2-0", b"b3-1"]
        assert s.get_bucket(2, "phone", 1, 1) == b"b2-1"
        assert s.integrity_check() == []
        assert s.prune_publications(1) == 2
        assert [s.get_bucket(3, "phone", 1, b) for b in (0, 1)] == [b"b2-0", b"b3-1"]
        assert s.get_bucket(2, "phone", 1, 0) is None
        assert s.integrity_check() == []


def _modes(path: Path) -> dict[str, int]:
    return {
        suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode)
        for suffix in ("", "-wal", "-shm")
        if os.path.exists(f"{path}{suffix}")
    }


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_sqlite_store_files_are_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "store.db"
    old = os.umask(umask)
    try:
        with open_store(str(path)) as s:
            assert _modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
            s.upsert_indicators([row("+6591234567", digests={(1, 1): dg("a")})], now=NOW, audit=[ev("w")])
            s.save_publication(1, b"m", {("phone", 1): b"f" * 5000}, {})
            assert _modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
        with open_store(str(path)) as s:  # reopened (SQLite removed -wal and -shm on close)
            s.append_audit([ev("again")])
            assert _modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    finally:
        os.umask(old)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_sqlite_store_refuses_files_others_may_access(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "store.db"
    with open_store(str(path)) as s:
        s.upsert_indicators([row("+6591234567")], now=NOW, audit=[ev("w")])
    loose = Path(f"{path}{suffix}")
    if suffix:
        loose.write_bytes(b"")  # left behind by a crash, created under a loose umask
    loose.chmod(0o644)
    before = {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError) as refused:
        open_store(str(path))
    message = str(refused.value)
    assert str(loose) in message and "0644" in message and f"chmod 600 {loose}" in message
    after = {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before  # nothing opened, created or changed
    loose.chmod(0o600)
    with open_store(str(path)) as s:
        assert s.get_indicator("phone", "+6591234567") is not None


def test_sqlite_memory_is_refused() -> None:
    with pytest.raises(InputError):
        open_store(":memory:")


def test_closed_store_refuses_calls(store_url: str) -> None:
    s = open_store(store_url)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.audit_size()


# --- indicators: upsert and merge ---------------------------------------------------------------------


def test_upsert_stores_then_merges(store: Store) -> None:
    first = row("+6591234567", digests={(1, 1): dg("a"), (1, 2): dg("h", 32)})
    res = store.upsert_indicators([first, row("+6598765432")], now=NOW)
    assert (res.stored, res.updated) == (2, 0)
    res = store.upsert_indicators([first, row("+6598765432")], now=NOW + 1)
    assert (res.stored, res.updated) == (0, 2)
    newer = row(
        "+6591234567",
        category="romance",
        first_seen=NOW - 500,
        last_seen=NOW,
        confidence=30,
        tlp="CLEAR",
        reports=7,
        expires_at=NOW + DAY,
        source="feed-b",
        digests={(2, 1): dg("b")},
    )
    res = store.upsert_indicators([newer, row("+6590000000")], now=NOW + 2)
    assert (res.stored, res.updated) == (1, 1)
    got = store.get_indicator("phone", "+6591234567")
    assert got is not None
    assert (got.first_seen, got.last_seen, got.reports, got.confidence) == (NOW - 500, NOW, 7, 50)
    assert (got.category, got.expires_at, got.source) == ("romance", NOW + DAY, "feed-b")
    assert got.tlp == "GREEN"  # the more restrictive of GREEN and CLEAR
    assert got.updated_at == NOW + 2 and got.retracted_at is None
    assert got.digests == {(1, 1): dg("a"), (1, 2): dg("h", 32), (2, 1): dg("b")}


def test_older_row_keeps_newer_category_and_expiry(store: Store) -> None:
    store.upsert_indicators(
        [row("x@example.org", "email", category="loan", last_seen=NOW, expires_at=None)], now=NOW
    )
    older = row(
        "x@example.org", "email", category="phishing", last_seen=NOW - 10, expires_at=NOW + 5, tlp="AMBER"
    )
    assert store.upsert_indicators([older], now=NOW + 1).updated == 1
    got = store.get_indicator("email", "x@example.org")
    assert got is not None
    assert (got.category, got.expires_at, got.tlp, got.source) == ("loan", None, "AMBER", "feed-a")


_row_strategy = st.builds(
    lambda cat, fs, span, conf, tlp, rep, exp, src: dict(
        category=cat,
        first_seen=fs,
        last_seen=fs + span,
        confidence=conf,
        tlp=tlp,
        reports=rep,
        expires_at=exp,
        source=src,
    ),
    st.sampled_from(CATEGORIES),
    st.integers(0, 2**40),
    st.integers(0, 1000),
    st.integers(0, 100),
    st.sampled_from(TLP_LEVELS),
    st.integers(1, 10**6),
    st.none() | st.integers(0, 2**40),
    st.sampled_from(["a", "b"]),
)
_counter = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=_row_strategy, new=_row_strategy)
def test_sql_merge_equals_merge_rows(store: Store, old: dict[str, Any], new: dict[str, Any]) -> None:
    key = f"+659{next(_counter):07d}"
    a, b = row(key, **old), row(key, **new)
    store.upsert_indicators([a], now=NOW)
    store.upsert_indicators([b], now=NOW)
    got = store.get_indicator("phone", key)
    want = merge_rows(a, b)
    assert got is not None
    fields = ("category", "first_seen", "last_seen", "confidence", "tlp", "reports", "expires_at", "source")
    assert {f: getattr(got, f) for f in fields} == {f: getattr(want, f) for f in fields}
    # within one batch the same rule applies, and the pair counts once
    key2 = key + "9"
    res = store.upsert_indicators([row(key2, **old), row(key2, **new)], now=NOW)
    assert (res.stored, res.updated) == (1, 0)
    got2 = store.get_indicator("phone", key2)
    assert got2 is not None and {f: getattr(got2, f) for f in fields} == {f: getattr(want, f) for f in fields}


def test_upsert_clears_retraction(store: Store) -> None:
    store.upsert_indicators([row("1.2.3.4", "ipv4")], now=NOW)
    assert store.retract("ipv4", "1.2.3.4", now=NOW + 1)
    assert not store.retract("ipv4", "1.2.3.4", now=NOW + 2)  # already retracted
    assert not store.retract("ipv4", "9.9.9.9", now=NOW + 2)  # never stored
    rec = store.get_indicator("ipv4", "1.2.3.4")
    assert rec is not None and rec.retracted_at == NOW + 1
    store.upsert_indicators([row("1.2.3.4", "ipv4")], now=NOW + 3)
    rec = store.get_indicator("ipv4", "1.2.3.4")
    assert rec is not None and rec.retracted_at is None


def test_feed_batch_moves_its_cursor_with_its_rows_or_not_at_all(store: Store) -> None:
    store.upsert_indicators([row("+60111111111"), row("+60222222222")], now=NOW)
    key = "feed.th.cursor"
    first = store.save_feed_batch(
        [row("+60333333333"), row("+60111111111")],
        [("phone", "+60222222222"), ("phone", "+60999999999")],
        now=NOW + 1,
        key=key,
        expect=None,
        value="page-1",
        audit=[ev("feed")],
    )
    assert first is not None
    result, retracted = first
    assert (result.stored, result.updated, retracted) == (1, 1, 1)
    assert store.get_meta(key) == "page-1"
    gone = store.get_indicator("phone", "+60222222222")
    assert gone is not None and gone.retracted_at == NOW + 1
    assert actions(store.audit_entries(0, store.audit_size())) == ["feed"]

    # A stale cursor (another replica stored this page first): nothing of the batch is written.
    for stale in (None, "page-0"):
        late = store.save_feed_batch(
            [row("+60444444444")],
            [("phone", "+60111111111")],
            now=NOW + 2,
            key=key,
            expect=stale,
            value="page-2",
            audit=[ev("feed")],
        )
        assert late is None
    assert store.get_meta(key) == "page-1"
    assert store.get_indicator("phone", "+60444444444") is None
    kept = store.get_indicator("phone", "+60111111111")
    assert kept is not None and kept.retracted_at is None
    assert store.audit_size() == 1

    # A bad row fails the whole batch: the cursor stays where it was.
    with pytest.raises(StoreError):
        store.save_feed_batch(
            [row("+60555555555", confidence=101)], [], now=NOW + 3, key=key, expect="page-1", value="page-2"
        )
    assert store.get_meta(key) == "page-1"
    assert store.get_indicator("phone", "+60555555555") is None
    assert store.save_feed_batch([], [], now=NOW + 4, key=key, expect="page-1", value="page-2") is not None
    assert store.get_meta(key) == "page-2"


def test_concurrent_feed_batches_store_one_page_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    try:
        outcomes: list[object] = []

        def save(s: Store, n: int) -> None:
            outcomes.append(
                s.save_feed_batch(
                    [row(f"+6066666666{n}")], [], now=NOW, key="feed.k", expect=None, value=str(n)
                )
            )

        threads = [threading.Thread(target=save, args=(s, n)) for n, s in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winner = stores[0].get_meta("feed.k")
        assert sum(o is not None for o in outcomes) == 1 and winner is not None
        held = [n for n in range(4) if stores[0].get_indicator("phone", f"+6066666666{n}") is not None]
        assert held == [int(winner)]
    finally:
        for s in stores:
            s.close()


def test_set_tlp_is_the_way_to_relax(store: Store) -> None:
    store.upsert_indicators([row("d.example", "domain", tlp="RED")], now=NOW)
    store.upsert_indicators([row("d.example", "domain", tlp="CLEAR", last_seen=NOW)], now=NOW + 1)
    rec = store.get_indicator("domain", "d.example")
    assert rec is not None and rec.tlp == "RED"
    assert store.set_tlp("domain", "d.example", "GREEN", now=NOW + 2)
    rec = store.get_indicator("domain", "d.example")
    assert rec is not None and rec.tlp == "GREEN"
    assert not store.set_tlp("domain", "nope.example", "GREEN", now=NOW)
    with pytest.raises(InputError):
        store.set_tlp("domain", "d.example", "PURPLE", now=NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"confidence": 101},
        {"tlp": "WHITE"},
        {"category": "spam"},
        {"reports": 0},
        {"first_seen": NOW, "last_seen": NOW - 1},
        {"kind": "fax"},
        {"digests": {(1, 1): b"short"}},
        {"digests": {(1, 3): dg("t")}},
    ],
    ids=lambda b: next(iter(b)),
)
def test_failing_batch_leaves_nothing(store: Store, bad: dict[str, Any]) -> None:
    store.upsert_indicators([row("+6500000000", confidence=10)], now=NOW, audit=[ev("ok")])
    fields = {"kind": "phone", **bad}
    kind = fields.pop("kind")
    batch = [
        row("+6500000000", confidence=90, digests={(1, 1): dg("0")}),
        row("+6511111111", digests={(1, 1): dg("1")}),
        row("+6522222222", kind, **fields),
        row("+6533333333", digests={(1, 1): dg("3")}),
    ]
    with pytest.raises(StoreError):
        store.upsert_indicators(batch, now=NOW + 1, audit=[ev("batch")])
    assert store.get_indicator("phone", "+6511111111") is None
    assert store.get_indicator("phone", "+6533333333") is None
    kept = store.get_indicator("phone", "+6500000000")
    assert kept is not None and kept.confidence == 10 and kept.digests == {}
    assert actions(store.audit_entries(0, store.audit_size())) == ["ok"]
    assert store.integrity_check() == []


# --- publishing, expiry, retraction -------------------------------------------------------------------


def _seed_publishable(store: Store) -> None:
    store.upsert_indicators(
        [
            row("+6501", digests={(1, 1): dg("p1"), (2, 1): dg("p1-e2")}),
            row("+6502", digests={(1, 1): dg("p2"), (1, 2): dg("p2h", 32)}),
            row("+6503", expires_at=NOW, digests={(1, 1): dg("p3")}),  # expires exactly now
            row("+6504", expires_at=NOW + 1, digests={(1, 1): dg("p4")}),
            row("+6505", tlp="RED", digests={(1, 1): dg("p5")}),
            row("+6506", digests={(1, 1): dg("p6")}),
            row("a.example", "domain", tlp="AMBER+STRICT", digests={(1, 2): dg("d1", 32)}),
            row("+6507"),  # no digest at all
        ],
        now=NOW,
    )
    assert store.retract("phone", "+6506", now=NOW)


def test_iter_publishable_applies_the_rules(store: Store) -> None:
    _seed_publishable(store)
    rows = list(store.iter_publishable(1, now=NOW))
    assert rows == sorted(rows, key=lambda r: (r.kind, r.tier, r.digest))
    assert {(r.kind, r.tier, r.digest) for r in rows} == {
        ("domain", 2, dg("d1", 32)),
        ("phone", 1, dg("p1")),
        ("phone", 1, dg("p2")),
        ("phone", 2, dg("p2h", 32)),
        ("phone", 1, dg("p4")),
    }
    p4 = next(r for r in rows if r.digest == dg("p4"))
    assert p4 == PublishRow("phone", 1, dg("p4"), "investment", NOW - 100, NOW - 50, 50, "GREEN", 1, NOW + 1)
    assert [r.digest for r in store.iter_publishable(2, now=NOW)] == [dg("p1-e2")]
    assert dg("p4") not in {r.digest for r in store.iter_publishable(1, now=NOW + 1)}  # expired by then
    assert store.lookup_digest(1, 1, "phone", dg("p4"), now=NOW) == p4
    for gone in ("p3", "p5", "p6"):
        assert store.lookup_digest(1, 1, "phone", dg(gone), now=NOW) is None
    assert store.lookup_digest(1, 1, "email", dg("p4"), now=NOW) is None  # wrong kind


def test_sealed_records_are_kept_until_the_metadata_or_digest_changes(store: Store) -> None:
    store.upsert_indicators(
        [
            row("+6501", digests={(1, 1): dg("a"), (1, 2): dg("ah", 32)}),
            row("+6502", digests={(1, 1): dg("b")}),
        ],
        now=NOW,
    )

    def cached() -> dict[tuple[bytes, int], bytes | None]:
        return {(it.row.digest, it.row.tier): it.sealed for it in store.iter_sealing(1, now=NOW)}

    items = list(store.iter_sealing(1, now=NOW))
    assert sorted(it.row for it in items) == sorted(store.iter_publishable(1, now=NOW))
    assert all(it.sealed is None for it in items)  # nothing sealed yet
    ids = {it.row.digest: it.indicator_id for it in items}
    assert ids[dg("a")] == ids[dg("ah", 32)] != ids[dg("b")]
    took = store.cache_sealed(
        1, [SealedItem(it.indicator_id, it.row.tier, it.sealed_key, b"R" + it.row.digest) for it in items]
    )
    assert took == 3
    assert cached() == {(d, t): b"R" + d for d, t in cached()}

    # Ingesting the same metadata again keeps every record; a new last_seen drops +6501's (both tiers).
    store.upsert_indicators([row("+6502")], now=NOW + 5)
    assert None not in cached().values()
    store.upsert_indicators([row("+6501", last_seen=NOW - 10)], now=NOW + 5)
    assert cached() == {(dg("a"), 1): None, (dg("ah", 32), 2): None, (dg("b"), 1): b"R" + dg("b")}

    # A record cached under a key that is stale by the time it is written is never returned.
    stale = next(it for it in store.iter_sealing(1, now=NOW) if it.row.digest == dg("a"))
    assert store.set_tlp("phone", "+6501", "AMBER", now=NOW + 6)
    assert store.cache_sealed(1, [SealedItem(stale.indicator_id, 1, stale.sealed_key, b"old")]) == 1
    assert cached()[(dg("a"), 1)] is None

    # A new digest drops the row's record; the same digest written again keeps it.
    assert store.cache_sealed(1, [SealedItem(ids[dg("b")], 1, "x", b"?")]) == 1
    assert cached()[(dg("b"), 1)] is None  # cached under a key that is not the row's
    fresh = next(it for it in store.iter_sealing(1, now=NOW) if it.row.digest == dg("b"))
    assert store.cache_sealed(1, [SealedItem(fresh.indicator_id, 1, fresh.sealed_key, b"Rb")]) == 1
    store.set_digests([DigestItem("phone", "+6502", 1, 1, dg("b"))])
    assert cached()[(dg("b"), 1)] == b"Rb"
    store.set_digests([DigestItem("phone", "+6502", 1, 1, dg("b2"))])
    assert cached()[(dg("b2"), 1)] is None

    # Rows that are gone, or of another epoch, take nothing.
    assert store.cache_sealed(2, [SealedItem(fresh.indicator_id, 1, fresh.sealed_key, b"Rb")]) == 0
    assert store.cache_sealed(1, [SealedItem(10**9, 1, "k", b"R")]) == 0
    assert store.cache_sealed(1, []) == 0


def test_publish_counts_and_records_in_tag_order(store: Store) -> None:
    _seed_publishable(store)
    assert store.publish_counts(1, now=NOW) == {
        ("domain", 2, "AMBER+STRICT"): 1,
        ("phone", 1, "GREEN"): 3,
        ("phone", 2, "GREEN"): 1,
    }
    assert store.publish_counts(2, now=NOW) == {("phone", 1, "GREEN"): 1}
    assert store.publish_counts(1, now=NOW + 1) == {
        ("domain", 2, "AMBER+STRICT"): 1,
        ("phone", 1, "GREEN"): 2,
        ("phone", 2, "GREEN"): 1,
    }
    # Only rows whose record is cached under their metadata now are streamed, ordered by record.
    sealed = {dg("p1"): b"\xff" * 62, dg("p2"): b"\x00" * 62, dg("p4"): b"\x80" * 62}
    items = {it.row.digest: it for it in store.iter_sealing(1, now=NOW, stale_only=True)}
    assert set(items) == {dg("p1"), dg("p2"), dg("p4"), dg("p2h", 32), dg("d1", 32)}
    store.cache_sealed(
        1, [SealedItem(items[d].indicator_id, 1, items[d].sealed_key, r) for d, r in sealed.items()]
    )
    assert {it.row.digest for it in store.iter_sealing(1, now=NOW, stale_only=True)} == {
        dg("p2h", 32),
        dg("d1", 32),
    }
    batches = list(store.iter_records(1, "phone", 1, now=NOW, withheld=(), batch=2))
    assert [b.total for b in batches] == [3, 3]
    assert b"".join(b.digests for b in batches) == dg("p2") + dg("p4") + dg("p1")
    assert b"".join(b.records for b in batches) == sealed[dg("p2")] + sealed[dg("p4")] + sealed[dg("p1")]
    assert store.set_tlp("phone", "+6504", "AMBER+STRICT", now=NOW + 1)
    (only,) = store.iter_records(1, "phone", 1, now=NOW, withheld=("AMBER+STRICT",), batch=10)
    assert (only.total, only.digests) == (2, dg("p2") + dg("p1"))
    assert list(store.iter_records(1, "phone", 2, now=NOW, withheld=(), batch=10)) == []  # not sealed
    with pytest.raises(InputError, match="batch"):
        list(store.iter_records(1, "phone", 1, now=NOW, withheld=(), batch=0))


def test_counts_expired_and_purge(store: Store) -> None:
    _seed_publishable(store)
    assert store.counts(now=NOW) == {
        "domain": StateCounts(active=1),
        "phone": StateCounts(active=5, expired=1, retracted=1),
    }
    assert store.expired(now=NOW) == 1
    assert store.expired(now=NOW + 1) == 2
    assert store.purge(before=NOW, audit=[ev("purge-0")]) == 0  # nothing strictly before NOW
    assert store.purge(before=NOW + 2, audit=[ev("purge")]) == 3
    assert store.get_indicator("phone", "+6506") is None
    assert store.counts(now=NOW + 2) == {"domain": StateCounts(active=1), "phone": StateCounts(active=4)}
    assert store.withheld_counts(now=NOW + 2) == {
        "domain": {"RED": 0, "AMBER+STRICT": 1},
        "phone": {"RED": 1, "AMBER+STRICT": 0},
    }
    assert store.audit_size() == 2
    assert store.integrity_check() == []


def test_withheld_counts_only_active_red_and_amber_strict(store: Store) -> None:
    _seed_publishable(store)
    assert store.set_tlp("phone", "+6504", "RED", now=NOW)  # expires at NOW + 1
    assert store.set_tlp("phone", "+6506", "RED", now=NOW)  # retracted
    assert store.withheld_counts(now=NOW) == {
        "domain": {"RED": 0, "AMBER+STRICT": 1},
        "phone": {"RED": 2, "AMBER+STRICT": 0},
    }
    assert store.withheld_counts(now=NOW + 1)["phone"] == {"RED": 1, "AMBER+STRICT": 0}


def test_iteration_does_not_hold_the_threads_transaction(store: Store, store_url: str) -> None:
    store.upsert_indicators([row(f"+65{i:08d}", digests={(1, 1): dg(str(i))}) for i in range(5000)], now=NOW)
    it = store.iter_publishable(1, now=NOW)
    first = next(it)
    store.upsert_indicators([row("+6599999999", digests={(1, 1): dg("late")})], now=NOW, audit=[ev("during")])
    with open_store(store_url) as other:  # another connection sees the write committed already
        assert other.audit_size() == 1
        assert other.get_indicator("phone", "+6599999999") is not None
    rest = list(it)
    assert len(rest) + 1 == 5000  # the iteration's snapshot predates the late row
    assert first not in rest


def test_digest_recomputation(store: Store) -> None:
    store.upsert_indicators([row("+6501", digests={(1, 1): dg("a")}), row("+6502"), row("+6503")], now=NOW)
    store.retract("phone", "+6503", now=NOW)
    assert sorted(store.iter_needing_digest(2, 1, now=NOW)) == [("phone", "+6501"), ("phone", "+6502")]
    assert (
        store.set_digests(
            [DigestItem("phone", "+6501", 2, 1, dg("a2")), DigestItem("phone", "+6502", 2, 1, dg("b2"))]
        )
        == 2
    )
    assert list(store.iter_needing_digest(2, 1, now=NOW)) == []
    with pytest.raises(StoreError):
        store.set_digests(
            [DigestItem("phone", "+6501", 3, 1, dg("a3")), DigestItem("phone", "+6599", 3, 1, dg("x"))]
        )
    rec = store.get_indicator("phone", "+6501")
    assert rec is not None and set(rec.digests) == {(1, 1), (2, 1)}  # all or nothing
    assert store.delete_digests(epoch_below=2) == 1
    rec = store.get_indicator("phone", "+6501")
    assert rec is not None and rec.digests == {(2, 1): dg("a2")}


def test_deleting_one_tiers_digests(store: Store) -> None:
    both = {(1, 1): dg("a"), (1, 2): dg("a-h", 32), (2, 2): dg("a-h2", 32)}
    store.upsert_indicators(
        [row("+6501", digests=both), row("x.example", "domain", digests={(1, 1): dg("d")})], now=NOW
    )
    assert store.delete_tier_digests(2) == 2
    rec = store.get_indicator("phone", "+6501")
    assert rec is not None and rec.digests == {(1, 1): dg("a")}
    assert store.delete_tier_digests(2) == 0
    assert sorted(store.iter_needing_digest(1, 2, now=NOW)) == [("domain", "x.example"), ("phone", "+6501")]


# --- publications ---------------------------------------------------------------------------------------


def test_publications_round_trip_and_prune(store: Store) -> None:
    assert store.latest_manifest() is None and store.latest_version() is None
    for v in (1, 2, 3):
        store.save_publication(
            v,
            b"manifest-%d" % v,
            {("phone", 1): b"filter-%d" % v, ("url", 2): b"u"},
            {("phone", 1, 0): b"b0-%d" % v, ("phone", 1, 255): b"b255"},
            audit=[ev(f"pub-{v}")],
        )
    assert store.latest_version() == 3 and store.latest_manifest() == b"manifest-3"
    assert store.manifest(2) == b"manifest-2" and store.manifest(9) is None
    assert store.get_filter(2, "phone", 1) == b"filter-2" and store.get_filter(2, "phone", 2) is None
    assert store.get_bucket(3, "phone", 1, 0) == b"b0-3" and store.get_bucket(3, "phone", 1, 1) is None
    for stale in (3, 2):
        with pytest.raises(StoreError, match="not newer"):
            store.save_publication(stale, b"m", {}, {}, audit=[ev("refused")])
    assert actions(store.audit_entries(0, store.audit_size())) == ["pub-1", "pub-2", "pub-3"]
    assert store.prune_publications(2) == 1
    assert store.get_filter(1, "phone", 1) is None and store.get_bucket(1, "phone", 1, 0) is None
    assert store.manifest(1) == b"manifest-1"  # every published manifest is kept forever
    assert store.get_filter(2, "phone", 1) == b"filter-2"
    with pytest.raises(InputError):
        store.prune_publications(0)
    assert store.integrity_check() == []


def test_a_publication_writes_only_the_buckets_that_changed(store: Store, store_url: str) -> None:
    """Buckets are stored once per change: a publication stages or gives the changed ones and carries
    the rest of each (kind, tier) named in ``carry``; earlier versions keep their own bytes."""
    sha = hashlib.sha256
    store.save_publication(1, b"m1", {}, {("phone", 1, b): b"a%d" % b for b in range(4)}, carry={})
    assert store.current_bucket_hashes("phone", 1, 4) == b"".join(sha(b"a%d" % b).digest() for b in range(4))
    assert store.current_bucket_hashes("phone", 1, 5)[-32:] == bytes(32)  # no bucket 4
    assert store.current_bucket_hashes("url", 1, 1) == bytes(32)
    assert store.stage_buckets(2, [("phone", 1, 2, b"b2")]) == 1
    assert store.get_bucket(1, "phone", 1, 2) == b"a2" and store.get_bucket(2, "phone", 1, 2) is None
    assert store.current_bucket_hashes("phone", 1, 4)[64:96] == sha(b"a2").digest()  # staged: not current
    carry = {("phone", 1): 4, ("url", 2): 1}
    for wrong in (0, 2):  # a publication that staged other than it counts is refused, nothing saved
        with pytest.raises(StoreError, match="another publication"):
            store.save_publication(2, b"m2", {}, {("url", 2, 0): b"u0"}, carry=carry, staged=wrong)
    assert store.latest_version() == 1
    store.save_publication(2, b"m2", {}, {("url", 2, 0): b"u0"}, carry=carry, staged=1, audit=[ev("pub-2")])
    assert [store.get_bucket(2, "phone", 1, b) for b in range(4)] == [b"a0", b"a1", b"b2", b"a3"]
    assert [store.get_bucket(1, "phone", 1, b) for b in range(4)] == [b"a0", b"a1", b"a2", b"a3"]
    assert store.get_bucket(2, "url", 2, 0) == b"u0" and store.get_bucket(1, "url", 2, 0) is None
    with raw(store_url) as sql:  # the carried buckets were not written again
        cur: Any = sql("SELECT count(*) FROM bucket_data WHERE version = 2")
        assert cur.fetchone()[0] == 2
    # fewer buckets (2 of phone), url dropped: only what is carried stays
    store.save_publication(3, b"m3", {}, {}, carry={("phone", 1): 2})
    assert [store.get_bucket(3, "phone", 1, b) for b in range(4)] == [b"a0", b"a1", None, None]
    assert store.get_bucket(3, "url", 2, 0) is None and store.get_bucket(2, "url", 2, 0) == b"u0"
    assert store.get_bucket(9, "phone", 1, 0) is None  # no such version
    # a staged bucket is not newer than a saved version; a failed publication's staging is dropped
    with pytest.raises(StoreError, match="not newer"):
        store.stage_buckets(3, [("phone", 1, 0, b"late")])
    store.stage_buckets(4, [("phone", 1, 0, b"never")])
    assert store.integrity_check() == []
    assert store.drop_staged_buckets() == 1 and store.drop_staged_buckets() == 0
    store.save_publication(4, b"m4", {}, {}, carry={("phone", 1): 2})
    assert store.get_bucket(4, "phone", 1, 0) == b"a0"
    # pruning keeps every bucket a kept version still uses, whichever version wrote it
    assert store.prune_publications(1) == 3
    assert [store.get_bucket(4, "phone", 1, b) for b in range(2)] == [b"a0", b"a1"]
    assert store.get_bucket(3, "phone", 1, 0) is None and store.get_bucket(2, "url", 2, 0) is None
    with raw(store_url) as sql:
        cur = sql("SELECT count(*) FROM bucket_data")
        assert cur.fetchone()[0] == 2  # a0 and a1, written by version 1
    assert store.integrity_check() == []
    with raw(store_url) as sql:  # a bucket span of a pruned version is a problem
        sql(
            "INSERT INTO bucket_spans (kind, tier, bucket_id, first_version, until_version) "
            "VALUES ('url', 1, 0, 1, 2)"
        )
    assert any("belong to a pruned publication" in p for p in store.integrity_check())


def test_manifests_are_kept_forever_and_listed_after_a_version(store: Store, store_url: str) -> None:
    assert store.manifests_after(0, limit=10) == [] and store.oldest_kept_version() is None
    for v in range(1, 6):
        store.save_publication(v, b"m%d" % v, {("phone", 1): b"f%d" % v}, {("phone", 1, 0): b"b%d" % v})
    assert store.oldest_kept_version() == 1
    assert store.prune_publications(2) == 3
    assert store.prune_publications(2) == 0  # pruned versions count once
    assert store.prune_publications(5) == 0 and store.oldest_kept_version() == 4  # pruned for good
    assert store.latest_version() == 5 and store.latest_manifest() == b"m5"
    assert [store.manifest(v) for v in range(1, 6)] == [b"m%d" % v for v in range(1, 6)]
    assert [store.get_filter(v, "phone", 1) for v in range(1, 6)] == [None, None, None, b"f4", b"f5"]
    assert [store.get_bucket(v, "phone", 1, 0) for v in range(1, 6)] == [None, None, None, b"b4", b"b5"]
    assert store.manifests_after(0, limit=10) == [(v, b"m%d" % v) for v in range(1, 6)]
    assert store.manifests_after(2, limit=2) == [(3, b"m3"), (4, b"m4")]
    assert store.manifests_after(-1, limit=1) == [(1, b"m1")]
    assert store.manifests_after(5, limit=3) == [] and store.manifests_after(0, limit=0) == []
    with pytest.raises(InputError):
        store.manifests_after(0, limit=-1)
    store.save_publication(6, b"m6", {("phone", 1): b"f6"}, {})
    assert store.prune_publications(2) == 1 and store.get_filter(4, "phone", 1) is None
    assert store.oldest_kept_version() == 5
    assert store.manifest(4) == b"m4" and store.get_filter(5, "phone", 1) == b"f5"
    assert store.integrity_check() == []
    with raw(store_url) as sql:  # a filter of a pruned version is a problem
        sql("INSERT INTO publication_filters (version, kind, tier, data) VALUES (1, 'url', 1, ?)", (b"x",))
    assert any("belong to a pruned publication" in p for p in store.integrity_check())


# --- rate limiting ----------------------------------------------------------------------------------------


def _take(store: Store, now: float, amount: int = 1, **kw: Any) -> Any:
    limits: dict[str, Any] = {"rate_per_s": 1.0, "burst": 5.0, "daily_limit": 1000, **kw}
    return store.consume_quota("peer-sg", amount, now=now, **limits)


def test_quota_token_bucket(store: Store) -> None:
    t0 = float(NOW)
    assert all(_take(store, t0).allowed for _ in range(5))
    refused = _take(store, t0)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(1.0) and refused.tokens_left == 0
    assert _take(store, t0 + 2.5, 2).allowed
    refused = _take(store, t0 + 2.5)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert refused.daily_used == 7  # the refused calls consumed nothing
    ok = _take(store, t0 + 3.0)
    assert ok.allowed and ok.tokens_left == pytest.approx(0.0) and ok.daily_used == 8
    assert _take(store, t0 + 1000).tokens_left == pytest.approx(4.0)  # refill caps at burst
    never = _take(store, t0 + 1000, 6)
    assert not never.allowed and math.isinf(never.retry_after_s)
    assert store.consume_quota(
        "other", 1, now=t0, rate_per_s=1, burst=1, daily_limit=1
    ).allowed  # per subject
    with pytest.raises(InputError):
        _take(store, t0, 0)


def test_quota_daily_limit_resets_at_utc_midnight(store: Store) -> None:
    day_start = float(NOW - NOW % DAY)
    t = day_start + DAY - 100
    for _ in range(3):
        assert _take(store, t, daily_limit=3).allowed
    refused = _take(store, t, daily_limit=3)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(100) and refused.daily_used == 3
    nxt = _take(store, day_start + DAY, daily_limit=3)
    assert nxt.allowed and nxt.daily_used == 1


def test_quota_persists_across_reopen(store_url: str) -> None:
    with open_store(store_url) as s:
        assert _take(s, float(NOW), 5).allowed
    with open_store(store_url) as s:
        d = _take(s, float(NOW))
        assert not d.allowed and d.daily_used == 5


def test_quota_is_atomic_across_threads(store_url: str) -> None:
    store = open_store(store_url)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            d = store.consume_quota("peer-th", 1, now=float(NOW), rate_per_s=0.0, burst=25.0, daily_limit=100)
            with lock:
                allowed.append(d.allowed)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert len(allowed) == 60 and allowed.count(True) == 25


def test_consume_quotas_takes_all_or_nothing_with_its_audit_entry(store: Store) -> None:
    t = float(NOW)
    pooled = QuotaRequest("oprf:*:phone", 3, 1e9, 1e9, 10)
    peer = QuotaRequest("oprf:TH:phone", 3, 1.0, 5.0, 1000)
    seen: list[list[int]] = []

    def audit(decisions: Any) -> list[Any]:
        seen.append([d.daily_used for d in decisions])
        return [ev(f"took-{decisions[-1].daily_used}")]

    taken = store.consume_quotas([pooled, peer], now=t, audit=audit)
    assert [d.allowed for d in taken] == [True, True] and [d.daily_used for d in taken] == [3, 3]
    assert seen == [[3, 3]] and actions(store.audit_entries(0, store.audit_size())) == ["took-3"]
    # The peer's bucket (5) refuses the second batch: nothing of the pooled quota is taken, no entry.
    refused = store.consume_quotas([pooled, peer], now=t, audit=audit)
    assert [d.allowed for d in refused] == [True, False] and refused[1].retry_after_s == pytest.approx(1.0)
    assert seen == [[3, 3]] and store.audit_size() == 1
    # The pooled quota refuses first (3 + 8 > 10): decisions stop at it, the peer is not charged.
    first = store.consume_quotas(
        [QuotaRequest("oprf:*:phone", 8, 1e9, 1e9, 10), peer], now=t + 9, audit=audit
    )
    assert len(first) == 1 and not first[0].allowed and first[0].daily_used == 3
    assert _take_subject(store, "oprf:TH:phone", t + 9).daily_used == 4  # 3 before, 1 now
    with pytest.raises(InputError):
        store.consume_quotas([peer, peer], now=t, audit=audit)


def test_consume_quotas_is_atomic_across_threads(store_url: str) -> None:
    store = open_store(store_url)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def worker(peer: str) -> None:
        for _ in range(10):
            decisions = store.consume_quotas(
                [
                    QuotaRequest("oprf:*:url", 1, 1e9, 1e9, 25),
                    QuotaRequest(f"oprf:{peer}:url", 1, 0.0, 50.0, 50),
                ],
                now=float(NOW),
                audit=lambda d: [ev("evaluated")],
            )
            with lock:
                outcomes.append(decisions[-1].allowed)

    threads = [threading.Thread(target=worker, args=(f"P{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 60 and outcomes.count(True) == 25
    assert (
        store.audit_size() == 25 and _take_subject(store, "oprf:*:url", float(NOW), limit=0).daily_used == 25
    )
    store.close()


def _take_subject(store: Store, subject: str, now: float, *, limit: int = 1000) -> Any:
    return store.consume_quota(subject, 1, now=now, rate_per_s=1e9, burst=1e9, daily_limit=limit)


# --- audit log --------------------------------------------------------------------------------------------


def test_audit_append_and_read(store: Store) -> None:
    assert store.append_audit([]) == 0
    assert store.append_audit([ev("a"), ev("b")]) == 0
    assert store.append_audit([ev("c")]) == 2
    assert store.audit_size() == 3
    entries = store.audit_entries(0, 3)
    assert actions(entries) == ["a", "b", "c"]
    assert store.audit_entries(1, 3) == entries[1:]
    assert store.audit_leaf_hashes(0, 3) == [hashlib.sha256(b"\x00" + e).digest() for e in entries]
    assert store.audit_entries(3, 3) == []
    for bad in ((2, 4), (-1, 1), (2, 1)):
        with pytest.raises(InputError):
            store.audit_entries(*bad)
    with pytest.raises(InputError):
        store.append_audit(["text"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="float"):
        store.append_audit([{"action": "x", "ratio": 0.5}])
    with pytest.raises(InputError, match="reserved"):
        store.append_audit([{"action": "x", "i": 7}])
    assert store.audit_size() == 3


def test_audit_rides_with_the_event(store: Store) -> None:
    store.upsert_indicators([row("+6501")], now=NOW, audit=[ev("ingest")])
    store.retract("phone", "+6501", now=NOW, audit=[ev("retract")])
    store.set_meta("epoch", "7", audit=[ev("epoch")])
    store.record_sighting("peer-my", "phone", 1, b"tag", now=NOW, audit=[ev("sighting")])
    with pytest.raises(StoreError):
        store.upsert_indicators([row("+6502", confidence=-1)], now=NOW, audit=[ev("failed-ingest")])
    with pytest.raises(StoreError):
        store.record_sighting("peer-my", "phone", 9, b"tag", now=NOW, audit=[ev("failed-sighting")])
    assert actions(store.audit_entries(0, store.audit_size())) == ["ingest", "retract", "epoch", "sighting"]
    assert store.get_meta("epoch") == "7"


def test_concurrent_appenders_get_contiguous_indices(store_url: str) -> None:
    store = open_store(store_url)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                if i % 3 == 0:
                    store.upsert_indicators([row(f"+65{n}{i:06d}")], now=NOW, audit=[ev(f"w{n}-{i}")])
                else:
                    store.append_audit([ev(f"w{n}-{i}"), ev(f"w{n}-{i}+")][: 1 + i % 2])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    size = store.audit_size()
    entries = store.audit_entries(0, size)
    expected = {f"w{n}-{i}" for n in range(6) for i in range(15)}
    expected |= {f"w{n}-{i}+" for n in range(6) for i in range(15) if i % 3 and i % 2}
    assert len(entries) == size == len(expected) and set(actions(entries)) == expected
    assert store.integrity_check() == []
    store.close()


def test_audit_log_is_append_only_in_the_database(store: Store, store_url: str) -> None:
    store.append_audit([ev("a"), ev("b")])
    before = store.audit_entries(0, 2)
    with raw(store_url) as sql:
        for q in ("UPDATE audit_log SET entry = ? WHERE idx = 0", "DELETE FROM audit_log WHERE idx = ?"):
            with pytest.raises((sqlite3.Error, psycopg.Error), match="append-only"):
                sql(q, (b"x",) if "UPDATE" in q else (0,))
    assert store.audit_entries(0, 2) == before


def test_tree_heads(store: Store) -> None:
    store.append_audit([ev("a"), ev("b"), ev("c")])
    assert store.latest_tree_head() is None
    store.save_tree_head(2, b"r" * 32, 1000, b"s" * 64)
    store.save_tree_head(3, b"R" * 32, 2000, b"S" * 64)
    store.save_tree_head(3, b"R" * 32, 3000, b"T" * 64)
    assert store.latest_tree_head() == HeadRow(3, b"R" * 32, 3000, b"T" * 64)
    assert [(h.size, h.timestamp) for h in store.tree_heads()] == [(2, 1000), (3, 2000), (3, 3000)]
    store.save_tree_head(3, b"R" * 32, 3000, b"T" * 64)  # a replica signing the same head: a no-op
    assert len(store.tree_heads()) == 3
    with pytest.raises(StoreError, match="exceeds"):
        store.save_tree_head(4, b"r" * 32, 4000, b"s" * 64)


def test_consume_quota_each_decides_each_request_as_one_after_the_other(store: Store, store_url: str) -> None:
    t = float(NOW)
    mine = QuotaRequest("check:MY/ana", 2, 1.0, 5.0, 1000)
    other = QuotaRequest("check:MY/ben", 4, 1.0, 5.0, 1000)
    # The same subject twice: the second sees what the first took; a refusal takes nothing and does not
    # stop the requests after it (each is its own check).
    taken = store.consume_quota_each([mine, other, mine, mine, other], now=t)
    assert [d.allowed for d in taken] == [True, True, True, False, False]
    assert [d.daily_used for d in taken] == [2, 4, 4, 4, 4]
    assert taken[3].retry_after_s == pytest.approx(1.0) and taken[4].retry_after_s == pytest.approx(3.0)
    with open_store(store_url) as again:  # committed, as consume_quota would have
        later = again.consume_quota("check:MY/ana", 1, now=t, rate_per_s=1.0, burst=5.0, daily_limit=1000)
        assert later.allowed and later.daily_used == 5
    assert store.consume_quota_each([], now=t) == []
    with pytest.raises(InputError):  # a bad request fails the call before anything is taken
        store.consume_quota_each([mine, QuotaRequest("check:MY/ana", 0, 1.0, 5.0, 1000)], now=t)
    assert _take_subject(store, "check:MY/ana", t + 1000).daily_used == 6  # 5, then this one


def test_consume_quota_each_is_atomic_across_threads(store_url: str) -> None:
    store = open_store(store_url)
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(5):
            subjects = [f"check:P{n}", "check:shared", f"check:P{n}"]
            batch = [QuotaRequest(s, 1, 0.0, 25.0, 100) for s in subjects]
            decisions = store.consume_quota_each(batch, now=float(NOW))
            with lock:
                allowed.append(decisions[1].allowed)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 30 and allowed.count(True) == 25
    assert _take_subject(store, "check:P0", float(NOW), limit=0).daily_used == 10
    store.close()


# --- peers, sightings, meta -------------------------------------------------------------------------------


def test_peer_state_replaced_atomically(store: Store) -> None:
    assert store.peer_manifest("th") is None
    store.save_peer_state("th", b"m1", {("phone", 1): b"f1", ("url", 2): b"u1"})
    store.save_peer_state("th", b"m2", {("phone", 1): b"f2"})
    store.save_peer_state("vn", b"v1", {})
    assert store.peer_manifest("th") == b"m2" and store.peer_manifest("vn") == b"v1"
    assert store.peer_filter("th", "phone", 1) == b"f2"
    assert store.peer_filter("th", "url", 2) is None  # dropped with the old state


def test_peer_manifests_reads_the_asked_peers_that_have_one(store: Store) -> None:
    assert store.peer_manifests(["th", "vn"]) == {}
    store.save_peer_state("th", b"m1", {})
    store.save_peer_state("vn", b"v1", {})
    store.save_peer_state("sg", b"s1", {})
    assert store.peer_manifests(["th", "vn", "la"]) == {"th": b"m1", "vn": b"v1"}
    store.save_peer_state("th", b"m2", {})
    assert store.peer_manifests(["th"]) == {"th": b"m2"} == {"th": store.peer_manifest("th")}
    assert store.peer_manifests([]) == {}


def test_peer_record_sets_are_replaced_with_the_peer_state(store: Store) -> None:
    assert store.peer_records("th", "phone", 1) is None
    filters = {("phone", 1): b"f1", ("url", 2): b"u1"}
    store.save_peer_state("th", b"m1", filters, {("phone", 1): b"r1", ("url", 2): b"ru1"}, audit=[ev("s1")])
    assert (store.peer_records("th", "phone", 1), store.peer_records("th", "url", 2)) == (b"r1", b"ru1")
    store.save_peer_state("th", b"m2", {("phone", 1): b"f2"}, {("phone", 1): b"r2"}, audit=[ev("s2")])
    assert store.peer_records("th", "phone", 1) == b"r2"
    assert store.peer_records("th", "url", 2) is None  # dropped with the old state, as its filter
    assert store.peer_records("th", "phone", 2) is None
    store.save_peer_state("vn", b"v1", {("email", 1): b"fv"}, {("email", 1): b"rv"})
    store.save_peer_state("th", b"m3", {("phone", 1): b"f3"})  # no record sets given: none kept
    assert store.peer_records("th", "phone", 1) is None and store.peer_filter("th", "phone", 1) == b"f3"
    assert store.peer_manifest("th") == b"m3" and store.peer_records("vn", "email", 1) == b"rv"
    assert actions(store.audit_entries(0, store.audit_size())) == ["s1", "s2"]
    assert store.integrity_check() == []


def test_peer_state_never_goes_back_to_an_older_version(store: Store) -> None:
    # Two replicas sharing the store may finish syncs of one peer out of order: the later version stays.
    assert store.save_peer_state("th", b"m5", {("phone", 1): b"f5"}, {("phone", 1): b"r5"}, version=5)
    assert not store.save_peer_state("th", b"m4", {("url", 1): b"f4"}, {("url", 1): b"r4"}, version=4)
    assert (store.peer_manifest("th"), store.peer_filter("th", "phone", 1)) == (b"m5", b"f5")
    assert store.peer_records("th", "phone", 1) == b"r5" and store.peer_filter("th", "url", 1) is None
    assert store.save_peer_state("th", b"m5", {("phone", 1): b"f5"}, version=5)  # the same version again
    assert store.save_peer_state("vn", b"v1", {}, version=1)  # versions are per peer
    assert store.save_peer_state("th", b"m6", {("phone", 1): b"f6"}, version=6, audit=[ev("s6")])
    assert not store.save_peer_state("th", b"m5", {}, version=5, audit=[ev("late")])  # audited still
    assert (store.peer_manifest("th"), store.peer_filter("th", "phone", 1)) == (b"m6", b"f6")
    assert store.peer_manifest("vn") == b"v1"
    assert actions(store.audit_entries(0, store.audit_size())) == ["s6", "late"]
    assert store.integrity_check() == []


def test_peer_state_is_saved_in_one_transaction(store: Store) -> None:
    store.save_peer_state("th", b"m1", {("phone", 1): b"f1"}, {("phone", 1): b"r1"}, audit=[ev("s1")])
    bad: Any = {("phone", 1): b"r2", ("url", 1): None}  # a record set the database refuses
    with pytest.raises(StoreError):
        store.save_peer_state("th", b"m2", {("phone", 1): b"f2"}, bad, audit=[ev("s2")])
    with pytest.raises(InputError):
        store.save_peer_state("th", b"m2", {("phone", 1): b"f2"}, audit=[{"action": "x", "ratio": 0.5}])
    assert (store.peer_manifest("th"), store.peer_filter("th", "phone", 1)) == (b"m1", b"f1")
    assert store.peer_records("th", "phone", 1) == b"r1"
    assert actions(store.audit_entries(0, store.audit_size())) == ["s1"]


def test_peer_tree_heads_keep_only_the_latest(store: Store) -> None:
    kept = PEER_TREE_HEADS_KEPT
    for size in range(kept + 6):
        store.save_peer_tree_head("th", size, bytes([size]) * 32, 1000 + size, b"s" * 64)
    store.save_peer_tree_head("vn", 1, b"v" * 32, 100, b"u" * 64)
    heads = store.peer_tree_heads("th")
    assert len(heads) == kept and [h.size for h in heads] == list(range(6, kept + 6))
    store.save_peer_tree_head("th", kept + 5, b"z" * 32, 9999, b"t" * 64)  # same size, later: the latest
    heads = store.peer_tree_heads("th")
    assert (
        len(heads) == kept
        and heads[0].size == 7
        and (heads[-1].size, heads[-1].timestamp) == (kept + 5, 9999)
    )
    store.save_peer_tree_head("th", 0, b"o" * 32, 1, b"s" * 64)  # older than every kept head: not kept
    assert store.peer_tree_heads("th") == heads
    assert [h.root for h in store.peer_tree_heads("vn")] == [b"v" * 32]


def test_peer_tree_heads_keep_conflicts(store: Store) -> None:
    store.save_peer_tree_head("th", 5, b"a" * 32, 100, b"s" * 64)
    store.save_peer_tree_head("th", 5, b"a" * 32, 100, b"s" * 64)  # identical: once
    store.save_peer_tree_head("th", 5, b"b" * 32, 100, b"t" * 64)  # a split view: both kept
    store.save_peer_tree_head("vn", 1, b"c" * 32, 100, b"u" * 64)
    assert [h.root for h in store.peer_tree_heads("th")] == [b"a" * 32, b"b" * 32]
    assert store.peer_tree_heads("none") == []


def test_reset_peer_tree_heads_keeps_the_dropped_ones_as_evidence(store: Store) -> None:
    for size in (3, 5, 8):
        store.save_peer_tree_head("th", size, bytes([size]) * 32, 100 + size, b"s" * 64)
    store.save_peer_tree_head("vn", 9, b"v" * 32, 100, b"u" * 64)
    seen: list[tuple[str | None, list[int]]] = []

    def evidence(before: str | None, dropped: list[HeadRow]) -> str:
        seen.append((before, [h.size for h in dropped]))
        return f"{before or ''}+{','.join(str(h.size) for h in dropped)}"

    new = HeadRow(4, b"n" * 32, 200, b"t" * 64)
    store.reset_peer_tree_heads("th", new, meta_key="recovery.th", meta_value=evidence, audit=[ev("r1")])
    assert store.peer_tree_heads("th") == [new]
    assert [h.size for h in store.peer_tree_heads("vn")] == [9]  # another peer's untouched
    assert seen[-1] == (None, [3, 5, 8]) and store.get_meta("recovery.th") == "+3,5,8"
    assert actions(store.audit_entries(0, store.audit_size()))[-1] == "r1"
    store.save_peer_tree_head("th", 6, b"6" * 32, 300, b"s" * 64)
    store.reset_peer_tree_heads("th", new, meta_key="recovery.th", meta_value=evidence)
    assert store.get_meta("recovery.th") == "+3,5,8+4,6"
    with pytest.raises(StoreError):  # a failing evidence leaves everything as it was
        store.reset_peer_tree_heads("th", new, meta_key="recovery.th", meta_value=_fail, audit=[ev("r2")])
    assert store.get_meta("recovery.th") == "+3,5,8+4,6" and store.peer_tree_heads("th") == [new]
    assert actions(store.audit_entries(0, store.audit_size()))[-1] == "r1"


def _fail(before: str | None, dropped: list[HeadRow]) -> str:
    raise StoreError("evidence could not be written")


def test_an_adopted_manifest_counts_as_a_pruned_publication(store: Store) -> None:
    store.save_publication(1, b"m1", {("phone", 1): b"f1"}, {("phone", 1, 0): b"b1"})
    store.adopt_manifest(4, b"m4", audit=[ev("adopted")])
    assert store.latest_version() == 4 and store.latest_manifest() == b"m4" and store.manifest(4) == b"m4"
    assert store.manifests_after(1, limit=5) == [(4, b"m4")]
    assert store.oldest_kept_version() == 1 and store.get_filter(4, "phone", 1) is None
    with pytest.raises(StoreError, match="not newer"):
        store.adopt_manifest(4, b"other")
    with pytest.raises(StoreError, match="not newer"):
        store.save_publication(3, b"m3", {}, {})
    store.save_publication(5, b"m5", {("phone", 1): b"f5"}, {})
    assert store.prune_publications(1) == 1 and store.oldest_kept_version() == 5
    assert store.integrity_check() == []


def test_sightings_and_meta(store: Store) -> None:
    store.record_sighting("th", "phone", 1, b"t1", now=NOW)
    store.record_sighting("vn", "url", 2, b"t2", now=NOW + 1)
    assert [(s.peer_id, s.tag, s.at) for s in store.sightings()] == [
        ("th", b"t1", NOW),
        ("vn", b"t2", NOW + 1),
    ]
    assert [s.kind for s in store.sightings("vn")] == ["url"]
    assert store.get_meta("epoch") is None
    store.set_meta("epoch", "1")
    store.set_meta("epoch", "2")
    assert store.get_meta("epoch") == "2"


def test_swap_meta_is_a_compare_and_swap(store: Store) -> None:
    assert store.swap_meta("oprf.epoch", None, "1", also={"started.1": "100"}, audit=[ev("first")])
    assert not store.swap_meta("oprf.epoch", None, "9", also={"x": "y"}, audit=[ev("lost")])
    assert not store.swap_meta("oprf.epoch", "2", "3", also={"x": "y"}, audit=[ev("lost")])
    assert store.get_meta("oprf.epoch") == "1" and store.get_meta("x") is None  # nothing of a lost swap
    assert store.swap_meta("oprf.epoch", "1", "2", also={"started.2": "200", "started.1": "101"})
    assert [store.get_meta(k) for k in ("oprf.epoch", "started.1", "started.2")] == ["2", "101", "200"]
    assert actions(store.audit_entries(0, store.audit_size())) == ["first"]


def test_concurrent_swaps_of_one_value_have_one_winner(store_url: str) -> None:
    store = open_store(store_url)
    store.set_meta("epoch", "1")
    start = threading.Barrier(6)
    wins: list[bool] = []

    def worker(n: int) -> None:
        start.wait()
        wins.append(store.swap_meta("epoch", "1", "2", also={f"by.{n}": "x"}, audit=[ev(f"swap{n}")]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(wins) == [False] * 5 + [True]
    assert store.get_meta("epoch") == "2" and len(actions(store.audit_entries(0, store.audit_size()))) == 1
    assert sum(store.get_meta(f"by.{n}") is not None for n in range(6)) == 1
    store.close()


def test_wrapped_keys_are_added_once_and_never_changed(store: Store, store_url: str) -> None:
    kek, other = "ab" * 32, "cd" * 32
    assert store.wrapped_key("oprf", 1) is None and store.wrapped_key_epochs("oprf") == []
    assert store.add_wrapped_key("oprf", 2, kek, b"two", now=NOW, audit=[ev("stored")])
    assert not store.add_wrapped_key("oprf", 2, other, b"another", now=NOW + 1, audit=[ev("lost")])
    assert store.add_wrapped_key("oprf", 1, kek, b"one", now=NOW)
    row = store.wrapped_key("oprf", 2)
    assert row is not None and (row.purpose, row.epoch, row.kek, row.blob, row.created_at) == (
        "oprf", 2, kek, b"two", NOW,
    )  # fmt: skip
    assert store.wrapped_key_epochs("oprf") == [1, 2] and store.wrapped_key_epochs("hmac") == []
    assert store.add_wrapped_key("hmac", 1, kek, b"secret", now=NOW)  # the federation secret, generation 1
    assert store.wrapped_key_epochs("hmac") == [1] and store.wrapped_key_epochs("oprf") == [1, 2]
    assert actions(store.audit_entries(0, store.audit_size())) == ["stored"]
    for args, field in (
        (("signing", 1, kek), "purpose"), (("oprf", 0, kek), "epoch"), (("oprf", 3, "AB" * 32), "kek"),
        (("oprf", 3, "ab"), "kek"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=f"^{field}: "):
            store.add_wrapped_key(*args, b"x", now=NOW)
    assert store.wrapped_key_epochs("oprf") == [1, 2]
    with raw(store_url) as sql, pytest.raises((sqlite3.Error, psycopg.Error), match="never changed"):
        sql("UPDATE wrapped_keys SET blob = ? WHERE epoch = 2", (b"forged",))
    assert store.wrapped_key("oprf", 2) == row


# --- integrity ----------------------------------------------------------------------------------------------


def _populated(store: Store) -> None:
    store.upsert_indicators([row("+6501", digests={(1, 1): dg("a")})], now=NOW)
    store.append_audit([ev(f"e{i}") for i in range(6)])
    store.save_tree_head(6, b"r" * 32, 1, b"s" * 64)


def test_integrity_check_passes_on_a_good_store(store: Store) -> None:
    assert store.integrity_check() == []
    _populated(store)
    assert store.integrity_check() == []


def test_integrity_check_reports_an_audit_gap(store: Store, store_url: str) -> None:
    _populated(store)
    with raw(store_url) as sql:
        drop_audit_triggers(sql, store_url)
        sql("DELETE FROM audit_log WHERE idx = 3")
    problems = store.integrity_check()
    assert any("break at index 3" in p for p in problems), problems
    assert any("holds 5 entries" in p for p in problems), problems
    with pytest.raises(StoreError):
        store.audit_entries(0, 6)


def test_integrity_check_reports_tampering(store: Store, store_url: str) -> None:
    _populated(store)
    with raw(store_url) as sql:
        drop_audit_triggers(sql, store_url)
        sql("UPDATE audit_log SET entry = ? WHERE idx = 4", (b"forged",))
        sql(
            "INSERT INTO tree_heads (size, timestamp, root, signature) VALUES (?, ?, ?, ?)",
            (99, 2, b"r" * 32, b"s"),
        )
    problems = store.integrity_check()
    assert any("leaf hash" in p and "index 4" in p for p in problems), problems
    assert any("tree head of size 99" in p for p in problems), problems


def test_integrity_check_reports_orphan_digests(store: Store, store_url: str) -> None:
    _populated(store)
    with raw(store_url) as sql:
        if is_pg(store_url):
            sql("ALTER TABLE digests DROP CONSTRAINT digests_indicator_id_fkey")
        else:
            sql("PRAGMA foreign_keys=OFF")
        sql("DELETE FROM indicators")
    problems = store.integrity_check()
    assert any("1 digests belong to no parent row" in p for p in problems), problems


def test_close_waits_for_an_operation_in_progress_and_refuses_new_ones(store_url: str) -> None:
    """Closing while another thread is inside a transaction must wait for it (SQLite crashed otherwise)."""
    store = open_store(store_url)
    store.append_audit([ev("first")])
    if is_pg(store_url):
        blocker: Any = psycopg.connect(store_url)
        blocker.execute("SELECT size FROM audit_state WHERE id = 1 FOR UPDATE")
    else:
        blocker = sqlite3.connect(store_url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    connections: Any = store._all  # type: ignore[attr-defined]  # the store's open connections
    before = len(connections)
    writer = threading.Thread(target=lambda: store.append_audit([ev("second")]), daemon=True)
    writer.start()
    # The append has opened its connection inside the store's operation, past every "closed" check: it
    # now waits for the database lock, and cannot finish before the blocker lets go.
    deadline = time.monotonic() + 10
    while len(connections) == before:
        assert writer.is_alive() and time.monotonic() < deadline, "the append never reached the database"
        time.sleep(0.01)
    closer = threading.Thread(target=store.close, daemon=True)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive()  # close waits for the append in progress
    if is_pg(store_url):
        blocker.rollback()
    else:
        blocker.execute("ROLLBACK")
    blocker.close()
    closer.join(10)
    writer.join(10)
    assert not closer.is_alive() and not writer.is_alive()
    with pytest.raises(StoreError, match="closed"):
        store.audit_size()
    with open_store(store_url) as again:
        assert actions(again.audit_entries(0, again.audit_size())) == ["first", "second"]
