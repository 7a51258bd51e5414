"""PostgreSQL backend of the store: a national deployment, several node replicas sharing one database.
Only what PostgreSQL does its own way is here; the SQL of every method is
:class:`node.store.sqlbase.SQLStore`.

Durability: a transaction is acknowledged after COMMIT returns, with ``synchronous_commit`` at least
``local`` (a session finding it ``off`` turns it back ``on``).

Threads: each thread gets its own connection (autocommit mode with explicit ``transaction()`` blocks);
no pool package is needed. A connection found broken is replaced on the next call. Streaming iterators
open a connection of their own with a server-side cursor. Bulk inserts send each column as one typed
array (``unnest``).

Concurrency across replicas (READ COMMITTED): audit appends take the row lock of ``audit_state`` with
``UPDATE ... RETURNING``, which serialises appenders and hands out contiguous indices; quota changes
take the subject's row lock with ``SELECT ... FOR UPDATE``; schema migrations run under a transaction
advisory lock; batches are written in ``(kind, canonical)`` order. A transaction aborted by a deadlock
or a serialisation failure is retried (at most three attempts) before ``StoreError`` is raised.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict

from client.protocol.errors import StoreError
from node.store._sql import DIGEST_COLUMNS, INDICATOR_COLUMNS, MERGE_SET, UPSERT_DIGEST, Columns
from node.store.base import DigestItem, IndicatorRow
from node.store.sqlbase import Mode, Tx
from node.store.sqlstore import SQLStore

__all__ = ["PostgresStore"]

Connection = psycopg.Connection[tuple[Any, ...]]

_MIGRATION_LOCK: Final = 0x50455441_4E444131  # "PETANDA1": advisory lock key of schema migrations
_TYPES: Final = {"int": "bigint", "small": "smallint", "text": "text", "blob": "bytea"}
_UPSERT: Final = (
    f"INSERT INTO indicators ({INDICATOR_COLUMNS}) "  # noqa: S608 - constant fragments only
    "SELECT k, c, cat, fs, ls, conf, tlp, rep, exp, src, NULL, ? FROM unnest("
    "?::text[], ?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::smallint[], ?::text[], "
    "?::integer[], ?::bigint[], ?::text[]) AS u(k, c, cat, fs, ls, conf, tlp, rep, exp, src) "
    f"ON CONFLICT (kind, canonical) DO UPDATE SET {MERGE_SET['postgres']} "
    "RETURNING id, kind, canonical, (xmax = 0)"
)
_UPSERT_FIELDS: Final = (
    "kind", "canonical", "category", "first_seen", "last_seen", "confidence", "tlp", "reports", "expires_at",
    "source",
)  # fmt: skip
_DIGESTS_BY_VALUE: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "  # noqa: S608 - constant fragments only
    "SELECT i.id, u.e, u.t, u.d "
    "FROM unnest(?::text[], ?::text[], ?::bigint[], ?::smallint[], ?::bytea[]) "
    f"AS u(k, c, e, t, d) JOIN indicators i ON i.kind = u.k AND i.canonical = u.c {UPSERT_DIGEST}"
)


@functools.lru_cache(maxsize=512)
def _pg_sql(text: str) -> str:
    """The shared SQL in psycopg's syntax: ``%s`` placeholders, a literal ``%`` doubled."""
    return text.replace("%", "%%").replace("?", "%s")


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column (the arrays ``unnest`` takes)."""
    return [list(column) for column in zip(*rows, strict=True)]


class _PgTx(Tx):
    """Statements on a psycopg cursor: placeholders translated, bulk rows sent as typed arrays."""

    __slots__ = ()

    def sql(self, text: str) -> str:
        return _pg_sql(text)

    def insert(
        self, table: str, columns: Columns, rows: Sequence[Sequence[Any]], *, on_conflict: str = ""
    ) -> None:
        if not rows:
            return
        names = ", ".join(name for name, _ in columns)
        arrays = ", ".join(f"?::{_TYPES[kind]}[]" for _, kind in columns)
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {on_conflict}"  # noqa: S608
        self.raw.execute(_pg_sql(sql), _columns(rows))


def _reason(e: Exception) -> str:
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


class PostgresStore(SQLStore):
    """The store in a PostgreSQL database given by a ``postgresql://`` URL."""

    DIALECT = "postgres"
    DRIVER_ERRORS = (psycopg.Error,)
    LOCK_ROW = " FOR UPDATE"
    SHARE_ROW = " FOR SHARE"

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        """Connect, and apply pending migrations under an advisory lock (safe with several replicas)."""
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        super().__init__(_describe(dsn))

    def _connect(self, *, stream: bool = False) -> Connection:
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=not stream,
                connect_timeout=self._connect_timeout_s,
                application_name="petanda-node",
            )
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row[0] == "off":
                conn.execute("SET synchronous_commit = on")
                if stream:
                    conn.commit()
        except psycopg.Error as e:
            raise StoreError(f"cannot connect to {self._where}: {_reason(e)}") from e
        return conn

    def _usable(self, conn: Connection) -> bool:
        return not (conn.closed or conn.broken)

    @contextmanager
    def _transaction(self, conn: Connection, mode: Mode) -> Iterator[Tx]:
        """READ COMMITTED for writes and lone statements; REPEATABLE READ READ ONLY for a snapshot."""
        with conn.transaction(), conn.cursor() as cur:
            if mode == "snapshot":
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _PgTx(cur)

    def _retryable(self, error: Exception) -> bool:
        return isinstance(error, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure)

    def _reason(self, error: Exception) -> str:
        return _reason(error)

    def _stream_rows(self, conn: Connection, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        with conn.cursor(name="petanda_stream") as cur:
            cur.itersize = 2000
            cur.execute(_pg_sql(sql), params)
            yield from cur
        conn.rollback()

    def _lock_log(self, tx: Tx) -> None:
        tx.run("LOCK TABLE publish_log IN SHARE MODE")

    def _lock_schema(self, tx: Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    def _run_script(self, tx: Tx, script: str) -> None:
        tx.raw.execute(script.encode("utf-8"))  # bytes: run as is, no placeholders

    def _upsert_batch(self, tx: Tx, batch: list[IndicatorRow], now: int) -> int:
        columns = [[getattr(r, name) for r in batch] for name in _UPSERT_FIELDS]
        ids: dict[tuple[str, str], int] = {}
        stored = 0
        for ident, kind, canonical, inserted in tx.all(_UPSERT, (now, *columns)):
            ids[(kind, canonical)] = ident
            stored += bool(inserted)
        digests = [(ids[(r.kind, r.canonical)], e, t, d) for r in batch for (e, t), d in r.digests.items()]
        tx.insert("digests", DIGEST_COLUMNS, digests, on_conflict=UPSERT_DIGEST)
        return stored

    def _put_digests(self, tx: Tx, items: list[DigestItem]) -> None:
        written = tx.run(_DIGESTS_BY_VALUE, _columns(items))
        if written != len(items):
            raise StoreError(f"set_digests: {len(items) - written} items name no stored indicator")
