"""SQLite backend of the store: the embedded default. Only what SQLite does its own way is here; the
SQL of every method is :class:`node.store.sqlbase.SQLStore`.

Durability: WAL journal with ``synchronous=FULL``, so a transaction that returned is on disk, and a
crash at any point leaves the last committed state. ``foreign_keys=ON``, ``trusted_schema=OFF``.

Threads: each thread gets its own connection; every write transaction starts with ``BEGIN
IMMEDIATE``, which takes SQLite's single write lock at once: writers (threads or processes) are
serialised — that is what keeps audit indices contiguous, so no row locks are needed — and wait up to
``busy_timeout_s`` for one another; readers never wait (WAL). Streaming iterators open a connection of
their own, so a long iteration never holds a transaction of the thread's other calls.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final

from client.protocol.errors import InputError, StoreError
from node.store._sql import INDICATOR_COLUMNS, MERGE_SET
from node.store.base import DigestItem, IndicatorRow
from node.store.sqlbase import Mode, Tx
from node.store.sqlstore import SQLStore

__all__ = ["SQLiteStore"]

_UPSERT: Final = (
    f"INSERT INTO indicators ({INDICATOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "  # noqa: S608
    f"ON CONFLICT (kind, canonical) DO UPDATE SET {MERGE_SET['sqlite']}"
)
_SET_DIGEST: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "
    "VALUES ((SELECT id FROM indicators WHERE kind = ? AND canonical = ?), ?, ?, ?) "
    "ON CONFLICT (indicator_id, epoch, tier) DO UPDATE SET digest = excluded.digest"
)


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class SQLiteStore(SQLStore):
    """The store in one SQLite file (plus its ``-wal`` and ``-shm`` companions)."""

    DIALECT = "sqlite"
    DRIVER_ERRORS = (sqlite3.Error,)
    INT8 = "INTEGER"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating if needed) the store at ``path`` and apply pending migrations."""
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise InputError(f"SQLite store needs a file path, got {self._path!r}")
        self._busy_timeout_s = busy_timeout_s
        super().__init__(f"SQLite store {self._path}")

    # dialect hooks ----------------------------------------------------------------------------------

    def _connect(self, *, stream: bool = False) -> sqlite3.Connection:
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

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, mode: Mode) -> Iterator[Tx]:
        """``BEGIN IMMEDIATE`` for writes, a deferred snapshot for reads, none for a lone statement."""
        if mode == "statement":
            yield Tx(conn)
            return
        try:
            conn.execute("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
        except sqlite3.Error as e:
            raise StoreError(f"SQLite store {self._path}: cannot begin a transaction: {_reason(e)}") from e
        try:
            yield Tx(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _reason(self, error: Exception) -> str:
        return _reason(error)

    def _stream_rows(self, conn: Any, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        conn.execute("BEGIN")
        cur = conn.execute(sql, params)
        while rows := cur.fetchmany(2000):
            yield from rows

    def _run_script(self, tx: Tx, script: str) -> None:
        for statement in _statements(script):
            tx.raw.execute(statement)

    def _upsert_batch(self, tx: Tx, batch: list[IndicatorRow], now: int) -> int:
        (before,) = tx.one("SELECT coalesce(max(id), 0) FROM indicators") or (0,)
        tx.many(
            _UPSERT,
            [
                (r.kind, r.canonical, r.category, r.first_seen, r.last_seen, r.confidence, r.tlp, r.reports,
                 r.expires_at, r.source, now)
                for r in batch
            ],
        )  # fmt: skip
        (stored,) = tx.one("SELECT count(*) FROM indicators WHERE id > ?", (before,)) or (0,)
        digests = [DigestItem(r.kind, r.canonical, e, t, d) for r in batch for (e, t), d in r.digests.items()]
        self._put_digests(tx, digests)
        return int(stored)

    def _put_digests(self, tx: Tx, items: list[DigestItem]) -> None:
        tx.many(_SET_DIGEST, items)  # an item naming no indicator violates digests.indicator_id NOT NULL

    def _engine_problems(self, tx: Tx) -> list[str]:
        problems = [
            f"SQLite integrity_check: {msg}" for (msg,) in tx.all("PRAGMA integrity_check") if msg != "ok"
        ]
        problems += [
            f"foreign key violation: {table} row {rowid} references a missing {parent}"
            for table, rowid, parent, _ in tx.all("PRAGMA foreign_key_check")
        ]
        return problems


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
