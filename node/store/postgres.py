"""PostgreSQL backend of the store: a national deployment, several node replicas sharing one database.

Durability: a transaction is acknowledged after COMMIT returns, with ``synchronous_commit`` at least
``local`` (a session finding it ``off`` turns it back ``on``).

Threads: each thread gets its own connection (``threading.local``, autocommit mode with explicit
``transaction()`` blocks); no pool package is needed. A connection found broken is replaced on the next
call. Streaming iterators open a connection of their own with a server-side cursor.

Concurrency across replicas (READ COMMITTED): audit appends take the row lock of ``audit_state`` with
``UPDATE ... RETURNING``, which serialises appenders and hands out contiguous indices; quota changes
take the subject's row lock with ``SELECT ... FOR UPDATE``; schema migrations run under a transaction
advisory lock; batches are written in ``(kind, canonical)`` order. A transaction aborted by a deadlock
or a serialisation failure is retried (at most three attempts) before ``StoreError`` is raised.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

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

__all__ = ["PostgresStore"]

T = TypeVar("T")
Cursor = psycopg.Cursor[tuple[Any, ...]]

_MIGRATION_LOCK: Final = 0x50455441_4E444131  # "PETANDA1": advisory lock key of schema migrations
_ATTEMPTS: Final = 3
_COLUMNS: Final = (
    "kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, source, "
    "retracted_at, updated_at"
)
_UPSERT: Final = (
    f"INSERT INTO indicators ({_COLUMNS}) "  # noqa: S608 - constant fragments only
    "SELECT k, c, cat, fs, ls, conf, tlp, rep, exp, src, NULL, %s FROM unnest("
    "%s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::smallint[], %s::text[], "
    "%s::integer[], %s::bigint[], %s::text[]) AS u(k, c, cat, fs, ls, conf, tlp, rep, exp, src) "
    f"ON CONFLICT (kind, canonical) DO UPDATE SET {MERGE_SET['postgres']} "
    "RETURNING id, kind, canonical, (xmax = 0)"
)
_DIGESTS_BY_ID: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "
    "SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::bytea[]) "
    "ON CONFLICT (indicator_id, epoch, tier) DO UPDATE SET digest = excluded.digest"
)
_DIGESTS_BY_VALUE: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "
    "SELECT i.id, u.e, u.t, u.d "
    "FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::smallint[], %s::bytea[]) "
    "AS u(k, c, e, t, d) JOIN indicators i ON i.kind = u.k AND i.canonical = u.c "
    "ON CONFLICT (indicator_id, epoch, tier) DO UPDATE SET digest = excluded.digest"
)
_PUBLISHABLE: Final = (
    f"SELECT {PUBLISH_COLUMNS} FROM digests d JOIN indicators i ON i.id = d.indicator_id "  # noqa: S608
    f"WHERE d.epoch = %s AND {PUBLISHABLE_WHERE.format(now='%s')}"
)


def _reason(e: psycopg.Error) -> str:
    diag = getattr(e, "diag", None)
    msg = (diag.message_primary if diag is not None else None) or str(e) or type(e).__name__
    return msg.splitlines()[0]


def _describe(dsn: str) -> str:
    """The DSN without credentials, for error messages."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "PostgreSQL"
    return f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class _Conn:
    """A thread's connection; closed when the thread's local storage drops it (the thread ended)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        self.conn = conn

    def __del__(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: S110 - closing during interpreter shutdown may fail; nothing to do
            pass


class PostgresStore(Store):
    """The store in a PostgreSQL database given by a ``postgresql://`` URL."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        """Connect, and apply pending migrations under an advisory lock (safe with several replicas)."""
        self._dsn = dsn
        self._where = _describe(dsn)
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._all: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._gate = OperationGate()
        self._migrate()

    # connections and transactions -------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=autocommit,
                connect_timeout=self._connect_timeout_s,
                application_name="petanda-node",
            )
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
                if not autocommit:
                    conn.commit()
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self._where}: {_reason(e)}") from e
        return conn

    def _conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        holder: _Conn | None = getattr(self._local, "holder", None)
        if holder is not None and (holder.conn.closed or holder.conn.broken):
            holder = None
        if holder is None:
            if self._gate.closed:
                raise StoreError("the store is closed")
            holder = _Conn(self._connect())
            self._local.holder = holder
            with self._lock:
                self._all.add(holder)
        return holder.conn

    def _run(self, fn: Callable[[Cursor], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` in one transaction, retrying deadlocks and serialisation failures."""
        with self._gate.operation():
            return self._run_once(fn, snapshot=snapshot)

    def _run_once(self, fn: Callable[[Cursor], T], *, snapshot: bool) -> T:
        for attempt in range(1, _ATTEMPTS + 1):
            conn = self._conn()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if snapshot:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return fn(cur)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as e:
                if attempt == _ATTEMPTS:
                    raise StoreError(f"{self._where}: {_reason(e)} ({_ATTEMPTS} attempts)") from e
                time.sleep(0.01 * attempt)
            except psycopg.Error as e:
                raise StoreError(f"{self._where}: {_reason(e)}") from e
        raise AssertionError("unreachable")

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        def fn(cur: Cursor) -> tuple[Any, ...] | None:
            return cur.execute(sql, params).fetchone()

        return self._run(fn)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def fn(cur: Cursor) -> list[tuple[Any, ...]]:
            return cur.execute(sql, params).fetchall()

        return self._run(fn)

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Yield rows of one query through a server-side cursor on a connection of its own."""
        conn = self._connect(autocommit=False)
        try:
            with conn.cursor(name="petanda_stream") as cur:
                cur.itersize = 2000
                cur.execute(sql, params)
                yield from cur
            conn.rollback()
        except psycopg.Error as e:
            raise StoreError(f"{self._where}: {_reason(e)}") from e
        finally:
            conn.close()

    def _migrate(self) -> None:
        migrations = load_migrations("postgres")

        def fn(cur: Cursor) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            (current,) = cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone() or (
                0,
            )
            if current > len(migrations):
                raise StoreError(
                    f"{self._where} has schema version {current}, newer than this software's "
                    f"{len(migrations)}: upgrade Petanda"
                )
            for mig in migrations[current:]:
                cur.execute(mig.sql.encode("utf-8"))
                cur.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, int(time.time())),
                )

        self._run(fn)

    @staticmethod
    def _append(cur: Cursor, events: list[AuditEvent]) -> int:
        if not events:
            row = cur.execute("SELECT size FROM audit_state WHERE id = 1").fetchone()
            return int(row[0]) if row else 0
        row = cur.execute(
            "UPDATE audit_state SET size = size + %s WHERE id = 1 RETURNING size", (len(events),)
        ).fetchone()
        if row is None:
            raise StoreError("audit_state row is missing: run integrity_check")
        start = int(row[0]) - len(events)
        previous = None
        if start > 0:
            prev_row = cur.execute("SELECT entry FROM audit_log WHERE idx = %s", (start - 1,)).fetchone()
            if prev_row is None:
                raise StoreError(f"audit entry {start - 1} is missing: run integrity_check")
            previous = bytes(prev_row[0])
        entries = chain_entries(start, previous, events)
        cur.execute(
            "INSERT INTO audit_log (idx, entry, leaf_hash) "
            "SELECT * FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[])",
            (list(range(start, start + len(entries))), entries, [leaf_hash(e) for e in entries]),
        )
        return start

    # indicators and digests -------------------------------------------------------------------------

    def upsert_indicators(
        self, rows: Iterable[IndicatorRow], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> UpsertResult:
        events = check_events(audit)
        batch = dedupe_rows(rows)
        columns = (
            [r.kind for r in batch],
            [r.canonical for r in batch],
            [r.category for r in batch],
            [r.first_seen for r in batch],
            [r.last_seen for r in batch],
            [r.confidence for r in batch],
            [r.tlp for r in batch],
            [r.reports for r in batch],
            [r.expires_at for r in batch],
            [r.source for r in batch],
        )

        def fn(cur: Cursor) -> int:
            stored = 0
            if batch:
                cur.execute(_UPSERT, (now, *columns))
                ids: dict[tuple[str, str], int] = {}
                for ident, kind, canonical, inserted in cur.fetchall():
                    ids[(kind, canonical)] = ident
                    stored += bool(inserted)
                digests = [
                    (ids[(r.kind, r.canonical)], e, t, d) for r in batch for (e, t), d in r.digests.items()
                ]
                if digests:
                    cur.execute(_DIGESTS_BY_ID, [list(col) for col in zip(*digests, strict=True)])
            self._append(cur, events)
            return stored

        stored = self._run(fn)
        return UpsertResult(stored=stored, updated=len(batch) - stored)

    def get_indicator(self, kind: str, canonical: str) -> IndicatorRecord | None:
        def fn(cur: Cursor) -> IndicatorRecord | None:
            row = cur.execute(
                f"SELECT id, {_COLUMNS} FROM indicators WHERE kind = %s AND canonical = %s",  # noqa: S608
                (kind, canonical),
            ).fetchone()
            if row is None:
                return None
            digests = cur.execute(
                "SELECT epoch, tier, digest FROM digests WHERE indicator_id = %s", (row[0],)
            ).fetchall()
            return record_from_row(row[1:], {(e, t): bytes(d) for e, t, d in digests})

        return self._run(fn, snapshot=True)

    def _update_one(self, sql: str, params: Sequence[Any], audit: Sequence[AuditEvent]) -> bool:
        events = check_events(audit)

        def fn(cur: Cursor) -> bool:
            cur.execute(sql, params)
            changed = cur.rowcount > 0
            self._append(cur, events)
            return changed

        return self._run(fn)

    def set_tlp(
        self, kind: str, canonical: str, tlp: str, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        tlp_rank(tlp)
        return self._update_one(
            "UPDATE indicators SET tlp = %s, updated_at = %s WHERE kind = %s AND canonical = %s",
            (tlp, now, kind, canonical),
            audit,
        )

    def retract(self, kind: str, canonical: str, *, now: int, audit: Sequence[AuditEvent] = ()) -> bool:
        return self._update_one(
            "UPDATE indicators SET retracted_at = %s, updated_at = %s "
            "WHERE kind = %s AND canonical = %s AND retracted_at IS NULL",
            (now, now, kind, canonical),
            audit,
        )

    def expired(self, *, now: int) -> int:
        row = self._one(
            "SELECT count(*) FROM indicators WHERE retracted_at IS NULL AND expires_at <= %s", (now,)
        )
        return int(row[0]) if row else 0

    def purge(self, *, before: int, audit: Sequence[AuditEvent] = ()) -> int:
        events = check_events(audit)

        def fn(cur: Cursor) -> int:
            cur.execute("DELETE FROM indicators WHERE retracted_at < %s OR expires_at < %s", (before, before))
            n = cur.rowcount
            self._append(cur, events)
            return n

        return self._run(fn)

    def set_digests(self, items: Iterable[DigestItem]) -> int:
        batch = dedupe_digests(items)
        if not batch:
            return 0
        columns = [list(col) for col in zip(*batch, strict=True)]

        def fn(cur: Cursor) -> int:
            cur.execute(_DIGESTS_BY_VALUE, columns)
            if cur.rowcount != len(batch):
                raise StoreError(f"set_digests: {len(batch) - cur.rowcount} items name no stored indicator")
            return len(batch)

        return self._run(fn)

    def iter_needing_digest(self, epoch: int, tier: int, *, now: int) -> Iterator[tuple[str, str]]:
        sql = (
            "SELECT i.kind, i.canonical FROM indicators i WHERE i.retracted_at IS NULL "
            "AND (i.expires_at IS NULL OR i.expires_at > %s) AND NOT EXISTS "
            "(SELECT 1 FROM digests d WHERE d.indicator_id = i.id AND d.epoch = %s AND d.tier = %s) "
            "ORDER BY i.id"
        )
        for kind, canonical in self._stream(sql, (now, epoch, tier)):
            yield str(kind), str(canonical)

    def delete_digests(self, *, epoch_below: int) -> int:
        def fn(cur: Cursor) -> int:
            return cur.execute("DELETE FROM digests WHERE epoch < %s", (epoch_below,)).rowcount

        return self._run(fn)

    def iter_publishable(self, epoch: int, *, now: int) -> Iterator[PublishRow]:
        for row in self._stream(_PUBLISHABLE + " ORDER BY i.kind, d.tier, d.digest", (epoch, now)):
            yield PublishRow(*row)

    def lookup_digest(
        self, epoch: int, tier: int, kind: str, digest: bytes, *, now: int
    ) -> PublishRow | None:
        row = self._one(
            _PUBLISHABLE + " AND d.tier = %s AND d.digest = %s AND i.kind = %s",
            (epoch, now, tier, digest, kind),
        )
        return PublishRow(*row) if row else None

    def counts(self, *, now: int) -> dict[str, StateCounts]:
        rows = self._rows(
            "SELECT kind, "
            "count(*) FILTER (WHERE retracted_at IS NULL AND (expires_at IS NULL OR expires_at > %s)), "
            "count(*) FILTER (WHERE retracted_at IS NULL AND expires_at <= %s), "
            "count(*) FILTER (WHERE retracted_at IS NOT NULL) "
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

        def fn(cur: Cursor) -> None:
            row = cur.execute("SELECT max(version) FROM publications").fetchone()
            latest = row[0] if row else None
            if latest is not None and version <= latest:
                raise StoreError(f"publication version {version} is not newer than the stored {latest}")
            cur.execute("INSERT INTO publications (version, manifest) VALUES (%s, %s)", (version, manifest))
            if filters:
                cur.executemany(
                    "INSERT INTO publication_filters (version, kind, tier, data) VALUES (%s, %s, %s, %s)",
                    [(version, k, t, d) for (k, t), d in filters.items()],
                )
            if buckets:
                cur.executemany(
                    "INSERT INTO publication_buckets (version, kind, tier, bucket_id, data) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [(version, k, t, b, d) for (k, t, b), d in buckets.items()],
                )
            self._append(cur, events)

        self._run(fn)

    def latest_version(self) -> int | None:
        row = self._one("SELECT max(version) FROM publications")
        return None if row is None or row[0] is None else int(row[0])

    def latest_manifest(self) -> bytes | None:
        row = self._one("SELECT manifest FROM publications ORDER BY version DESC LIMIT 1")
        return bytes(row[0]) if row else None

    def manifest(self, version: int) -> bytes | None:
        row = self._one("SELECT manifest FROM publications WHERE version = %s", (version,))
        return bytes(row[0]) if row else None

    def get_filter(self, version: int, kind: str, tier: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM publication_filters WHERE version = %s AND kind = %s AND tier = %s",
            (version, kind, tier),
        )
        return bytes(row[0]) if row else None

    def get_bucket(self, version: int, kind: str, tier: int, bucket_id: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM publication_buckets "
            "WHERE version = %s AND kind = %s AND tier = %s AND bucket_id = %s",
            (version, kind, tier, bucket_id),
        )
        return bytes(row[0]) if row else None

    def prune_publications(self, keep_versions: int) -> int:
        if keep_versions < 1:
            raise InputError(f"keep_versions must be at least 1, got {keep_versions}")

        def fn(cur: Cursor) -> int:
            return cur.execute(
                "DELETE FROM publications WHERE version NOT IN "
                "(SELECT version FROM publications ORDER BY version DESC LIMIT %s)",
                (keep_versions,),
            ).rowcount

        return self._run(fn)

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
        def fn(cur: Cursor) -> QuotaDecision:
            select = "SELECT tokens, updated_at, day, daily_used FROM quotas WHERE subject = %s FOR UPDATE"
            row = cur.execute(select, (subject,)).fetchone()
            if row is None:  # create the row first so that concurrent replicas all lock the same one
                cur.execute(
                    "INSERT INTO quotas (subject, tokens, updated_at, day, daily_used) "
                    "VALUES (%s, %s, %s, %s, 0) ON CONFLICT (subject) DO NOTHING",
                    (subject, float(burst), now, math.floor(now / 86_400)),
                )
                row = cur.execute(select, (subject,)).fetchone()
            decision, new = quota_step(
                QuotaState(*row) if row else None,
                amount,
                now=now,
                rate_per_s=rate_per_s,
                burst=burst,
                daily_limit=daily_limit,
            )
            if new is not None:
                cur.execute(
                    "UPDATE quotas SET tokens = %s, updated_at = %s, day = %s, daily_used = %s "
                    "WHERE subject = %s",
                    (new.tokens, new.updated_at, new.day, new.daily_used, subject),
                )
            return decision

        return self._run(fn)

    # audit log --------------------------------------------------------------------------------------

    def append_audit(self, events: Sequence[AuditEvent]) -> int:
        checked = check_events(events)
        return self._run(lambda cur: self._append(cur, checked))

    def audit_size(self) -> int:
        row = self._one("SELECT size FROM audit_state WHERE id = 1")
        if row is None:
            raise StoreError("audit_state row is missing: run integrity_check")
        return int(row[0])

    def _audit_column(self, column: str, start: int, end: int) -> list[bytes]:
        def fn(cur: Cursor) -> list[tuple[Any, ...]]:
            row = cur.execute("SELECT size FROM audit_state WHERE id = 1").fetchone()
            check_range(start, end, int(row[0]) if row else 0)
            return cur.execute(
                f"SELECT idx, {column} FROM audit_log WHERE idx >= %s AND idx < %s ORDER BY idx",  # noqa: S608
                (start, end),
            ).fetchall()

        rows = self._run(fn, snapshot=True)
        if len(rows) != end - start:
            raise StoreError(f"audit log is missing entries in [{start}, {end}): run integrity_check")
        return [bytes(v) for _, v in rows]

    def audit_entries(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("entry", start, end)

    def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("leaf_hash", start, end)

    def save_tree_head(self, size: int, root: bytes, timestamp: int, signature: bytes) -> None:
        def fn(cur: Cursor) -> None:
            # FOR SHARE: the size cannot shrink (it never does) nor be read stale while we check it.
            row = cur.execute("SELECT size FROM audit_state WHERE id = 1 FOR SHARE").fetchone()
            log_size = int(row[0]) if row else 0
            if size > log_size:
                raise StoreError(f"tree head of size {size} exceeds the audit log size {log_size}")
            cur.execute(
                "INSERT INTO tree_heads (size, timestamp, root, signature) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (size, timestamp) DO NOTHING",
                (size, timestamp, root, signature),
            )

        self._run(fn)

    def tree_heads(self) -> list[TreeHead]:
        rows = self._rows("SELECT size, root, timestamp, signature FROM tree_heads ORDER BY size, timestamp")
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
        def fn(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO peer_manifests (peer_id, manifest) VALUES (%s, %s) "
                "ON CONFLICT (peer_id) DO UPDATE SET manifest = excluded.manifest",
                (peer_id, manifest),
            )
            cur.execute("DELETE FROM peer_filters WHERE peer_id = %s", (peer_id,))
            if filters:
                cur.executemany(
                    "INSERT INTO peer_filters (peer_id, kind, tier, data) VALUES (%s, %s, %s, %s)",
                    [(peer_id, k, t, d) for (k, t), d in filters.items()],
                )

        self._run(fn)

    def peer_manifest(self, peer_id: str) -> bytes | None:
        row = self._one("SELECT manifest FROM peer_manifests WHERE peer_id = %s", (peer_id,))
        return bytes(row[0]) if row else None

    def peer_filter(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        row = self._one(
            "SELECT data FROM peer_filters WHERE peer_id = %s AND kind = %s AND tier = %s",
            (peer_id, kind, tier),
        )
        return bytes(row[0]) if row else None

    def save_peer_tree_head(
        self, peer_id: str, size: int, root: bytes, timestamp: int, signature: bytes
    ) -> None:
        def fn(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO peer_tree_heads (peer_id, size, timestamp, root, signature) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (peer_id, size, timestamp, root, signature),
            )

        self._run(fn)

    def peer_tree_heads(self, peer_id: str) -> list[TreeHead]:
        rows = self._rows(
            "SELECT size, root, timestamp, signature FROM peer_tree_heads WHERE peer_id = %s "
            "ORDER BY size, timestamp, root",
            (peer_id,),
        )
        return [TreeHead(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]

    def record_sighting(
        self, peer_id: str, kind: str, tier: int, tag: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> None:
        events = check_events(audit)

        def fn(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO sightings (peer_id, kind, tier, tag, at) VALUES (%s, %s, %s, %s, %s)",
                (peer_id, kind, tier, tag, now),
            )
            self._append(cur, events)

        self._run(fn)

    def sightings(self, peer_id: str | None = None) -> list[Sighting]:
        if peer_id is None:
            rows = self._rows("SELECT peer_id, kind, tier, tag, at FROM sightings ORDER BY id")
        else:
            rows = self._rows(
                "SELECT peer_id, kind, tier, tag, at FROM sightings WHERE peer_id = %s ORDER BY id",
                (peer_id,),
            )
        return [Sighting(p, k, t, bytes(g), a) for p, k, t, g, a in rows]

    # meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str, *, audit: Sequence[AuditEvent] = ()) -> None:
        events = check_events(audit)

        def fn(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO meta (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
            self._append(cur, events)

        self._run(fn)

    # maintenance ------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self._one("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(row[0]) if row else 0

    def integrity_check(self) -> list[str]:
        def fn(cur: Cursor) -> list[str]:
            return invariant_problems(lambda sql, params: cur.execute(sql, params).fetchall(), "%s")

        return self._run(fn, snapshot=True)

    def close(self) -> None:
        self._gate.close()
        with self._lock:
            holders = list(self._all)
            self._all.clear()
        for holder in holders:
            try:
                holder.conn.close()
            except psycopg.Error:
                pass
        self._local = threading.local()
