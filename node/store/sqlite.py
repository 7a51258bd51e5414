"""SQLite backend of the store: the embedded default.

Durability: WAL journal with ``synchronous=FULL``, so a transaction that returned is on disk, and a
crash at any point leaves the last committed state. ``foreign_keys=ON``, ``trusted_schema=OFF``.

Threads: each thread gets its own connection (``threading.local``); a connection is only ever used by
the thread that opened it, and closed when that thread ends or on :meth:`SQLiteStore.close`. Every
write transaction starts with ``BEGIN IMMEDIATE``, which takes SQLite's single write lock at once: writers
(threads or processes) are serialised — that is what keeps audit indices contiguous — and wait up to
``busy_timeout_s`` for one another; readers never wait (WAL). Streaming iterators open a connection of
their own, so a long iteration never holds a transaction of the thread's other calls.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

from client.protocol.errors import InputError, StoreError
from node.store._sql import MERGE_SET, PUBLISH_COLUMNS, PUBLISHABLE_WHERE, invariant_problems
from node.store.base import (
    AuditEvent,
    DigestItem,
    IndicatorRecord,
    IndicatorRow,
    OperationGate,
    PublishRow,
    QuotaDecision,
    QuotaState,
    Sighting,
    StateCounts,
    Store,
    TreeHead,
    UpsertResult,
    chain_entries,
    check_events,
    check_range,
    dedupe_digests,
    dedupe_rows,
    leaf_hash,
    quota_step,
    record_from_row,
    tlp_rank,
)
from node.store.migrations import load_migrations

__all__ = ["SQLiteStore"]

_COLUMNS: Final = (
    "kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, source, "
    "retracted_at, updated_at"
)
_UPSERT: Final = (
    f"INSERT INTO indicators ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "  # noqa: S608
    f"ON CONFLICT (kind, canonical) DO UPDATE SET {MERGE_SET['sqlite']}"
)
_SET_DIGEST: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "
    "VALUES ((SELECT id FROM indicators WHERE kind = ? AND canonical = ?), ?, ?, ?) "
    "ON CONFLICT (indicator_id, epoch, tier) DO UPDATE SET digest = excluded.digest"
)
_PUBLISHABLE: Final = (
    f"SELECT {PUBLISH_COLUMNS} FROM digests d JOIN indicators i ON i.id = d.indicator_id "  # noqa: S608
    f"WHERE d.epoch = ? AND {PUBLISHABLE_WHERE.format(now='?')}"
)


def _reason(e: sqlite3.Error) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class _Conn:
    """A thread's connection; closed when the thread's local storage drops it (the thread ended)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: S110 - closing during interpreter shutdown may fail; nothing to do
            pass


class SQLiteStore(Store):
    """The store in one SQLite file (plus its ``-wal`` and ``-shm`` companions)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating if needed) the store at ``path`` and apply pending migrations."""
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise InputError(f"SQLite store needs a file path, got {self._path!r}")
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._gate = OperationGate()
        self._migrate()

    # connections and transactions -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise StoreError(f"SQLite store {self._path}: cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA trusted_schema=OFF")
            conn.execute("PRAGMA cache_size=-65536")  # KiB: 64 MiB per connection, allocated as used
            conn.execute("PRAGMA wal_autocheckpoint=10000")  # pages: checkpoint the WAL at ~40 MB
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {self._path}: {_reason(e)}") from e
        return conn

    def _conn(self) -> sqlite3.Connection:
        holder: _Conn | None = getattr(self._local, "holder", None)
        if holder is None:
            if self._gate.closed:
                raise StoreError("the store is closed")
            holder = _Conn(self._connect())
            self._local.holder = holder
            with self._lock:
                self._all.add(holder)
        return holder.conn

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """Run a transaction: ``BEGIN IMMEDIATE`` for writes, a deferred snapshot for reads."""
        with self._gate.operation():
            with self._tx_on(self._conn(), write=write) as conn:
                yield conn

    @contextmanager
    def _tx_on(self, conn: sqlite3.Connection, *, write: bool) -> Iterator[sqlite3.Connection]:
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self._path}: cannot begin a transaction: {_reason(e)}") from e
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"SQLite store {self._path}: {_reason(e)}") from e
            raise

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        with self._gate.operation():
            try:
                row: tuple[Any, ...] | None = self._conn().execute(sql, params).fetchone()
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self._path}: {_reason(e)}") from e
        return row

    def _all_rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._gate.operation():
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"SQLite store {self._path}: {_reason(e)}") from e

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Yield rows of one query from a snapshot on a connection of its own."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            cur = conn.execute(sql, params)
            while rows := cur.fetchmany(2000):
                yield from rows
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self._path}: {_reason(e)}") from e
        finally:
            conn.close()

    def _migrate(self) -> None:
        migrations = load_migrations("sqlite")
        with self._tx() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > len(migrations):
                raise StoreError(
                    f"SQLite store {self._path} has schema version {current}, newer than this "
                    f"software's {len(migrations)}: upgrade Petanda"
                )
            for mig in migrations[current:]:
                for statement in _statements(mig.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (mig.version, mig.name, int(time.time())),
                )

    @staticmethod
    def _append(conn: sqlite3.Connection, events: list[AuditEvent]) -> int:
        if not events:
            return int(conn.execute("SELECT size FROM audit_state WHERE id = 1").fetchone()[0])
        end = conn.execute(
            "UPDATE audit_state SET size = size + ? WHERE id = 1 RETURNING size", (len(events),)
        ).fetchall()[0][0]
        start = int(end) - len(events)
        previous = None
        if start > 0:
            row = conn.execute("SELECT entry FROM audit_log WHERE idx = ?", (start - 1,)).fetchone()
            if row is None:
                raise StoreError(f"audit entry {start - 1} is missing: run integrity_check")
            previous = bytes(row[0])
        entries = chain_entries(start, previous, events)
        conn.executemany(
            "INSERT INTO audit_log (idx, entry, leaf_hash) VALUES (?, ?, ?)",
            [(start + i, e, leaf_hash(e)) for i, e in enumerate(entries)],
        )
        return start

    # indicators and digests -------------------------------------------------------------------------

    def upsert_indicators(
        self, rows: Iterable[IndicatorRow], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> UpsertResult:
        events = check_events(audit)
        batch = dedupe_rows(rows)
        params = [
            (r.kind, r.canonical, r.category, r.first_seen, r.last_seen, r.confidence, r.tlp, r.reports,
             r.expires_at, r.source, now)
            for r in batch
        ]  # fmt: skip
        digests = [(r.kind, r.canonical, e, t, d) for r in batch for (e, t), d in r.digests.items()]
        with self._tx() as conn:
            (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM indicators").fetchone()
            conn.executemany(_UPSERT, params)
            (stored,) = conn.execute("SELECT count(*) FROM indicators WHERE id > ?", (before,)).fetchone()
            if digests:
                conn.executemany(_SET_DIGEST, digests)
            self._append(conn, events)
        return UpsertResult(stored=stored, updated=len(batch) - stored)

    def get_indicator(self, kind: str, canonical: str) -> IndicatorRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(
                f"SELECT id, {_COLUMNS} FROM indicators WHERE kind = ? AND canonical = ?",  # noqa: S608
                (kind, canonical),
            ).fetchone()
            if row is None:
                return None
            digests = conn.execute(
                "SELECT epoch, tier, digest FROM digests WHERE indicator_id = ?", (row[0],)
            ).fetchall()
        return record_from_row(row[1:], {(e, t): bytes(d) for e, t, d in digests})

    def set_tlp(
        self, kind: str, canonical: str, tlp: str, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        tlp_rank(tlp)
        events = check_events(audit)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE indicators SET tlp = ?, updated_at = ? WHERE kind = ? AND canonical = ?",
                (tlp, now, kind, canonical),
            )
            self._append(conn, events)
            return cur.rowcount > 0

    def retract(self, kind: str, canonical: str, *, now: int, audit: Sequence[AuditEvent] = ()) -> bool:
        events = check_events(audit)
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE indicators SET retracted_at = ?, updated_at = ? "
                "WHERE kind = ? AND canonical = ? AND retracted_at IS NULL",
                (now, now, kind, canonical),
            )
            self._append(conn, events)
            return cur.rowcount > 0

    def expired(self, *, now: int) -> int:
        row = self._one(
            "SELECT count(*) FROM indicators WHERE retracted_at IS NULL AND expires_at <= ?", (now,)
        )
        return int(row[0]) if row else 0

    def purge(self, *, before: int, audit: Sequence[AuditEvent] = ()) -> int:
        events = check_events(audit)
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM indicators WHERE retracted_at < ? OR expires_at < ?", (before, before)
            )
            self._append(conn, events)
            return cur.rowcount

    def set_digests(self, items: Iterable[DigestItem]) -> int:
        params = dedupe_digests(items)
        with self._tx() as conn:
            conn.executemany(_SET_DIGEST, params)
        return len(params)

    def iter_needing_digest(self, epoch: int, tier: int, *, now: int) -> Iterator[tuple[str, str]]:
        sql = (
            "SELECT i.kind, i.canonical FROM indicators i WHERE i.retracted_at IS NULL "
            "AND (i.expires_at IS NULL OR i.expires_at > ?) AND NOT EXISTS "
            "(SELECT 1 FROM digests d WHERE d.indicator_id = i.id AND d.epoch = ? AND d.tier = ?) "
            "ORDER BY i.id"
        )
        for kind, canonical in self._stream(sql, (now, epoch, tier)):
            yield str(kind), str(canonical)

    def delete_digests(self, *, epoch_below: int) -> int:
        with self._tx() as conn:
            return conn.execute("DELETE FROM digests WHERE epoch < ?", (epoch_below,)).rowcount

    def iter_publishable(self, epoch: int, *, now: int) -> Iterator[PublishRow]:
        for row in self._stream(_PUBLISHABLE + " ORDER BY i.kind, d.tier, d.digest", (epoch, now)):
            yield PublishRow(*row)

    def lookup_digest(
        self, epoch: int, tier: int, kind: str, digest: bytes, *, now: int
    ) -> PublishRow | None:
        row = self._one(
            _PUBLISHABLE + " AND d.tier = ? AND d.digest = ? AND i.kind = ?", (epoch, now, tier, digest, kind)
        )
        return PublishRow(*row) if row else None

    def counts(self, *, now: int) -> dict[str, StateCounts]:
        rows = self._all_rows(
            "SELECT kind, "
            "sum(CASE WHEN retracted_at IS NULL AND (expires_at IS NULL OR expires_at > ?) "
            "    THEN 1 ELSE 0 END), "
            "sum(CASE WHEN retracted_at IS NULL AND expires_at <= ? THEN 1 ELSE 0 END), "
            "sum(CASE WHEN retracted_at IS NOT NULL THEN 1 ELSE 0 END) "
            "FROM indicators GROUP BY kind ORDER BY kind",
            (now, now),
        )
        return {k: StateCounts(int(a), int(e), int(r)) for k, a, e, r in rows}

    # publications -----------------------------------------------------------------------------------

    def save_publication(
        self,
        version: int,
        manifest: bytes,
        filters: Mapping[tuple[str, int], bytes],
        buckets: Mapping[tuple[str, int, int], bytes],
        *,
        audit: Sequence[AuditEvent] = (),
    ) -> None:
        events = check_events(audit)
        with self._tx() as conn:
            (latest,) = conn.execute("SELECT max(version) FROM publications").fetchone()
            if latest is not None and version <= latest:
                raise StoreError(f"publication version {version} is not newer than the stored {latest}")
            conn.execute("INSERT INTO publications (version, manifest) VALUES (?, ?)", (version, manifest))
            conn.executemany(
                "INSERT INTO publication_filters (version, kind, tier, data) VALUES (?, ?, ?, ?)",
                [(version, k, t, d) for (k, t), d in filters.items()],
            )
            conn.executemany(
                "INSERT INTO publication_buckets (version, kind, tier, bucket_id, data) "
                "VALUES (?, ?, ?, ?, ?)",
                [(version, k, t, b, d) for (k, t, b), d in buckets.items()],
            )
            self._append(conn, events)

    def latest_version(self) -> int | None:
        row = self._one("SELECT max(version) FROM publications")
        return None if row is None or row[0] is None else int(row[0])

    def latest_manifest(self) -> bytes | None:
        row = self._one("SELECT manifest FROM publications ORDER BY version DESC LIMIT 1")
        return bytes(row[0]) if row else None

    def manifest(self, version: int) -> bytes | None:
        row = self._one("SELECT manifest FROM publications WHERE version = ?", (version,))
        return bytes(row[0]) if row else None

    def get_filter(self, version: int, kind: str, tier: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM publication_filters WHERE version = ? AND kind = ? AND tier = ?",
            (version, kind, tier),
        )
        return bytes(row[0]) if row else None

    def get_bucket(self, version: int, kind: str, tier: int, bucket_id: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM publication_buckets "
            "WHERE version = ? AND kind = ? AND tier = ? AND bucket_id = ?",
            (version, kind, tier, bucket_id),
        )
        return bytes(row[0]) if row else None

    def prune_publications(self, keep_versions: int) -> int:
        if keep_versions < 1:
            raise InputError(f"keep_versions must be at least 1, got {keep_versions}")
        with self._tx() as conn:
            return conn.execute(
                "DELETE FROM publications WHERE version NOT IN "
                "(SELECT version FROM publications ORDER BY version DESC LIMIT ?)",
                (keep_versions,),
            ).rowcount

    # rate limiting ----------------------------------------------------------------------------------

    def consume_quota(
        self,
        subject: str,
        amount: int,
        *,
        now: float,
        rate_per_s: float,
        burst: float,
        daily_limit: int,
    ) -> QuotaDecision:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT tokens, updated_at, day, daily_used FROM quotas WHERE subject = ?", (subject,)
            ).fetchone()
            decision, new = quota_step(
                QuotaState(*row) if row else None,
                amount,
                now=now,
                rate_per_s=rate_per_s,
                burst=burst,
                daily_limit=daily_limit,
            )
            if new is not None:
                conn.execute(
                    "INSERT INTO quotas (subject, tokens, updated_at, day, daily_used) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (subject) DO UPDATE SET tokens = excluded.tokens, "
                    "updated_at = excluded.updated_at, day = excluded.day, daily_used = excluded.daily_used",
                    (subject, new.tokens, new.updated_at, new.day, new.daily_used),
                )
        return decision

    # audit log --------------------------------------------------------------------------------------

    def append_audit(self, events: Sequence[AuditEvent]) -> int:
        checked = check_events(events)
        with self._tx() as conn:
            return self._append(conn, checked)

    def audit_size(self) -> int:
        row = self._one("SELECT size FROM audit_state WHERE id = 1")
        if row is None:
            raise StoreError("audit_state row is missing: run integrity_check")
        return int(row[0])

    def _audit_column(self, column: str, start: int, end: int) -> list[bytes]:
        with self._tx(write=False) as conn:
            (size,) = conn.execute("SELECT size FROM audit_state WHERE id = 1").fetchone()
            check_range(start, end, size)
            rows = conn.execute(
                f"SELECT idx, {column} FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",  # noqa: S608
                (start, end),
            ).fetchall()
        if len(rows) != end - start:
            raise StoreError(f"audit log is missing entries in [{start}, {end}): run integrity_check")
        return [bytes(v) for _, v in rows]

    def audit_entries(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("entry", start, end)

    def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("leaf_hash", start, end)

    def save_tree_head(self, size: int, root: bytes, timestamp: int, signature: bytes) -> None:
        with self._tx() as conn:
            (log_size,) = conn.execute("SELECT size FROM audit_state WHERE id = 1").fetchone()
            if size > log_size:
                raise StoreError(f"tree head of size {size} exceeds the audit log size {log_size}")
            conn.execute(
                "INSERT INTO tree_heads (size, timestamp, root, signature) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (size, timestamp) DO NOTHING",
                (size, timestamp, root, signature),
            )

    def tree_heads(self) -> list[TreeHead]:
        rows = self._all_rows(
            "SELECT size, root, timestamp, signature FROM tree_heads ORDER BY size, timestamp"
        )
        return [TreeHead(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]

    def latest_tree_head(self) -> TreeHead | None:
        row = self._one(
            "SELECT size, root, timestamp, signature FROM tree_heads "
            "ORDER BY size DESC, timestamp DESC LIMIT 1"
        )
        return TreeHead(row[0], bytes(row[1]), row[2], bytes(row[3])) if row else None

    # peers ------------------------------------------------------------------------------------------

    def save_peer_state(
        self, peer_id: str, manifest: bytes, filters: Mapping[tuple[str, int], bytes]
    ) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM peer_filters WHERE peer_id = ?", (peer_id,))
            conn.execute(
                "INSERT INTO peer_manifests (peer_id, manifest) VALUES (?, ?) "
                "ON CONFLICT (peer_id) DO UPDATE SET manifest = excluded.manifest",
                (peer_id, manifest),
            )
            conn.executemany(
                "INSERT INTO peer_filters (peer_id, kind, tier, data) VALUES (?, ?, ?, ?)",
                [(peer_id, k, t, d) for (k, t), d in filters.items()],
            )

    def peer_manifest(self, peer_id: str) -> bytes | None:
        row = self._one("SELECT manifest FROM peer_manifests WHERE peer_id = ?", (peer_id,))
        return bytes(row[0]) if row else None

    def peer_filter(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM peer_filters WHERE peer_id = ? AND kind = ? AND tier = ?", (peer_id, kind, tier)
        )
        return bytes(row[0]) if row else None

    def save_peer_tree_head(
        self, peer_id: str, size: int, root: bytes, timestamp: int, signature: bytes
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO peer_tree_heads (peer_id, size, timestamp, root, signature) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (peer_id, size, timestamp, root, signature),
            )

    def peer_tree_heads(self, peer_id: str) -> list[TreeHead]:
        rows = self._all_rows(
            "SELECT size, root, timestamp, signature FROM peer_tree_heads WHERE peer_id = ? "
            "ORDER BY size, timestamp, root",
            (peer_id,),
        )
        return [TreeHead(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]

    def record_sighting(
        self, peer_id: str, kind: str, tier: int, tag: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> None:
        events = check_events(audit)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sightings (peer_id, kind, tier, tag, at) VALUES (?, ?, ?, ?, ?)",
                (peer_id, kind, tier, tag, now),
            )
            self._append(conn, events)

    def sightings(self, peer_id: str | None = None) -> list[Sighting]:
        if peer_id is None:
            rows = self._all_rows("SELECT peer_id, kind, tier, tag, at FROM sightings ORDER BY id")
        else:
            rows = self._all_rows(
                "SELECT peer_id, kind, tier, tag, at FROM sightings WHERE peer_id = ? ORDER BY id", (peer_id,)
            )
        return [Sighting(p, k, t, bytes(g), a) for p, k, t, g, a in rows]

    # meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str, *, audit: Sequence[AuditEvent] = ()) -> None:
        events = check_events(audit)
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            self._append(conn, events)

    # maintenance ------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self._one("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(row[0]) if row else 0

    def integrity_check(self) -> list[str]:
        with self._tx(write=False) as conn:
            problems = [
                f"SQLite integrity_check: {msg}"
                for (msg,) in conn.execute("PRAGMA integrity_check")
                if msg != "ok"
            ]
            problems += [
                f"foreign key violation: {table} row {rowid} references a missing {parent}"
                for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check")
            ]
            problems += invariant_problems(lambda sql, params: conn.execute(sql, params).fetchall(), "?")
        return problems

    def close(self) -> None:
        """Close every connection once the operations in progress have finished (up to 60 s)."""
        self._gate.close()
        with self._lock:
            holders = list(self._all)
            self._all.clear()
        for holder in holders:
            try:
                holder.conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into complete statements (triggers with inner ``;`` included)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            yield text
            buf = []
    if "".join(buf).strip():
        raise StoreError("a migration script ends with an incomplete statement")
