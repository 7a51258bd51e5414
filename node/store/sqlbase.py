"""The machinery of the SQL store that both backends share: connections, transactions, migrations,
audit appends, and the dialect hooks a backend fills in.

:class:`SQLBase` runs statements written once, with ``?`` placeholders and the syntax SQLite and
PostgreSQL share (``ON CONFLICT``, ``RETURNING``, row values, ``FILTER``);
:class:`node.store.sqlstore.SQLStore` builds every method of the contract on it. A backend
(:mod:`node.store.sqlite`, :mod:`node.store.postgres`) subclasses ``SQLStore`` and supplies only what
really differs (the methods marked "dialect hook"):

* connections: ``_connect`` (a new driver connection) and ``_usable``;
* transactions: ``_transaction`` (begin, commit, roll back; how a snapshot read is isolated; a lone
  statement), ``_retryable`` errors, ``_reason``, and the row-lock suffixes ``LOCK_ROW``/``SHARE_ROW``;
* SQL plumbing: the :class:`Tx` it yields (placeholders, bulk inserts and their column types) and
  ``_stream_rows`` (a long read on a connection of its own);
* schema: ``_lock_schema`` and ``_run_script`` (how a migration file runs);
* the hot path of ingest, written per dialect for speed: ``_upsert_batch`` and ``_put_digests``;
* ``_engine_problems``: the database's own integrity check.

Threads: each thread gets its own connection (``threading.local``), used only by that thread and
closed when the thread ends or on :meth:`SQLBase.close`. Every operation runs inside the store's
:class:`OperationGate`, so closing waits for the operations in progress and refuses new ones.
"""

from __future__ import annotations

import abc
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Final, Literal, TypeVar

from client.protocol.auditlog import make_entry
from client.protocol.errors import EncodingError, InputError, StoreError
from node.store._sql import Columns
from node.store.base import AuditEvent, DigestItem, IndicatorRow, Store, leaf_hash
from node.store.migrations import load_migrations

__all__ = ["Mode", "OperationGate", "SQLBase", "Tx", "chain_entries", "check_events", "check_range"]

T = TypeVar("T")

#: How a transaction runs: ``write`` (takes the write lock where the dialect has one), ``snapshot`` (a
#: consistent read of several statements), ``statement`` (one read statement on its own).
Mode = Literal["write", "snapshot", "statement"]

_ATTEMPTS: Final = 3
_AUDIT_COLUMNS: Final[Columns] = (("idx", "int"), ("entry", "blob"), ("leaf_hash", "blob"))

# --- shared plumbing --------------------------------------------------------------------------------------


class OperationGate:
    """Counts a store's operations in progress, so that closing waits for them and refuses new ones.

    Closing a database connection that another thread is using is undefined behaviour for SQLite's C
    library (a node crashed with SIGSEGV at shutdown that way); every backend runs each operation
    inside :meth:`operation` and closes its connections only after :meth:`close` returned.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self.closed = False

    @contextmanager
    def operation(self) -> Iterator[None]:
        """Count one operation; raise :class:`StoreError` once the store is closed."""
        with self._lock:
            if self.closed:
                raise StoreError("the store is closed")
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.notify_all()

    def close(self, timeout_s: float = 60.0) -> None:
        """Refuse new operations and wait for those in progress; StoreError if they outlast the timeout."""
        with self._lock:
            self.closed = True
            if not self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s):
                raise StoreError(f"store operations still running after {timeout_s:.0f} s")


def check_range(start: int, end: int, size: int) -> None:
    """Raise InputError unless ``0 <= start <= end <= size``."""
    if not 0 <= start <= end <= size:
        raise InputError(f"audit range [{start}, {end}) is outside the log of size {size}")


def check_events(events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Return audit events as a list, raising InputError for one that cannot become an entry.

    Checked before the transaction starts, so that a bad event fails the call before anything is written.
    """
    out = list(events)
    for i, fields in enumerate(out):
        if not isinstance(fields, Mapping):
            raise InputError(f"audit event {i} is {type(fields).__name__}, not a mapping")
        try:
            make_entry(1, b"", fields)
        except EncodingError as error:
            raise InputError(f"audit event {i}: {error}") from None
    return out


def chain_entries(start: int, previous: bytes | None, events: Sequence[AuditEvent]) -> list[bytes]:
    """Turn events into the log's entries ``start``, ``start + 1``, ...: each names its index and the
    leaf hash of the entry before it (``previous`` is entry ``start - 1``, None when ``start`` is 0)."""
    entries = []
    for offset, fields in enumerate(events):
        entry = make_entry(start + offset, previous, fields)
        entries.append(entry)
        previous = entry
    return entries


class Tx:
    """The statements of one transaction in the shared SQL: ``?`` placeholders, rows as tuples.

    ``raw`` is the driver object statements run on (it has ``execute(sql, params)`` returning a cursor,
    and ``executemany``). This class runs the SQL as written (SQLite); a dialect subclasses it to
    translate placeholders (:meth:`sql`) or send bulk rows another way (:meth:`insert`).
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def sql(self, text: str) -> str:
        """The statement in the driver's syntax (dialect hook)."""
        return text

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query; return all its rows."""
        return list(self.raw.execute(self.sql(sql), params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """Run a query; return its first row, or None."""
        row: tuple[Any, ...] | None = self.raw.execute(self.sql(sql), params).fetchone()
        return row

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return how many rows it changed."""
        return int(self.raw.execute(self.sql(sql), params).rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement once per row of parameters; return how many rows it changed in all."""
        if not rows:
            return 0
        cursor = self.raw.executemany(self.sql(sql), rows)  # SQLite returns a cursor, psycopg None
        return int((self.raw if cursor is None else cursor).rowcount)

    def insert(
        self, table: str, columns: Columns, rows: Sequence[Sequence[Any]], *, on_conflict: str = ""
    ) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) into ``table`` (dialect hook).

        ``columns`` pairs each name with its type (``int``, ``small``, ``text``, ``blob``), which a
        dialect sending columns as typed arrays needs; ``on_conflict`` is an optional ``ON CONFLICT``
        clause.
        """
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join("?" for _ in columns)
        self.many(f"INSERT INTO {table} ({names}) VALUES ({marks}) {on_conflict}", rows)  # noqa: S608


class _Holder:
    """A thread's connection; closed when the thread's local storage drops it (the thread ended)."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __del__(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: S110 - closing during interpreter shutdown may fail; nothing to do
            pass


# --- the base ---------------------------------------------------------------------------------------------


class SQLBase(Store):
    """Connections, transactions and migrations of a SQL store; a backend supplies the dialect hooks."""

    #: The backend's name: its migrations folder (``migrations/<DIALECT>``).
    DIALECT: ClassVar[str]
    #: The driver's error classes: re-raised as StoreError with ``_where`` and ``_reason``.
    DRIVER_ERRORS: ClassVar[tuple[type[Exception], ...]]
    #: Suffix of a SELECT in a write transaction that locks the rows it reads, to change them (or to
    #: rely on them, ``SHARE_ROW``); empty where a write transaction already excludes every other writer.
    LOCK_ROW: ClassVar[str] = ""
    SHARE_ROW: ClassVar[str] = ""
    #: The 64-bit integer column type (``schema_version.applied_at``).
    INT8: ClassVar[str] = "BIGINT"

    def __init__(self, where: str) -> None:
        """Set up the connections and apply pending migrations; ``where`` names the store in messages."""
        self._where = where
        self._local = threading.local()
        self._all: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._gate = OperationGate()
        self._migrate()

    # dialect hooks ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def _connect(self, *, stream: bool = False) -> Any:
        """Open a new driver connection (``stream``: for :meth:`_stream_rows`); StoreError if it fails."""

    def _usable(self, conn: Any) -> bool:
        """Whether a thread's connection can still be used (else a new one replaces it)."""
        return True

    @abc.abstractmethod
    def _transaction(self, conn: Any, mode: Mode) -> AbstractContextManager[Tx]:
        """Run one transaction of ``mode`` on ``conn``: commit when the block ends, roll back if it raises."""

    def _retryable(self, error: Exception) -> bool:
        """Whether a driver error aborted the transaction in a way worth retrying (deadlock...)."""
        return False

    @abc.abstractmethod
    def _reason(self, error: Exception) -> str:
        """One line saying why a driver error happened."""

    @abc.abstractmethod
    def _stream_rows(self, conn: Any, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Yield the rows of one query from a snapshot on ``conn`` (a connection of its own)."""

    def _lock_schema(self, tx: Tx) -> None:
        """Serialise schema migrations with other processes sharing the database, if ``write`` doesn't."""

    @abc.abstractmethod
    def _run_script(self, tx: Tx, script: str) -> None:
        """Run a migration script (several statements)."""

    @abc.abstractmethod
    def _upsert_batch(self, tx: Tx, batch: list[IndicatorRow], now: int) -> int:
        """Insert or merge a non-empty, deduplicated batch and its digests; return how many were new."""

    @abc.abstractmethod
    def _put_digests(self, tx: Tx, items: list[DigestItem]) -> None:
        """Store or replace digests; StoreError if one names no stored indicator."""

    def _engine_problems(self, tx: Tx) -> list[str]:
        """Problems the database's own integrity check finds."""
        return []

    # connections and transactions -------------------------------------------------------------------

    def _conn(self) -> Any:
        holder: _Holder | None = getattr(self._local, "holder", None)
        if holder is not None and not self._usable(holder.conn):
            holder = None
        if holder is None:
            if self._gate.closed:
                raise StoreError("the store is closed")
            holder = _Holder(self._connect())
            self._local.holder = holder
            with self._lock:
                self._all.add(holder)
        return holder.conn

    def _run(self, fn: Callable[[Tx], T], *, mode: Mode = "write") -> T:
        """Run ``fn`` in one transaction, retrying what :meth:`_retryable` allows (3 attempts)."""
        with self._gate.operation():
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    with self._transaction(self._conn(), mode) as tx:
                        return fn(tx)
                except self.DRIVER_ERRORS as e:
                    if not self._retryable(e):
                        raise StoreError(f"{self._where}: {self._reason(e)}") from e
                    if attempt == _ATTEMPTS:
                        raise StoreError(f"{self._where}: {self._reason(e)} ({_ATTEMPTS} attempts)") from e
                    time.sleep(0.01 * attempt)
        raise AssertionError("unreachable")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(lambda tx: tx.all(sql, params), mode="statement")

    def _first(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._query(sql, params)
        return rows[0] if rows else None

    def _blob(self, sql: str, params: Sequence[Any] = ()) -> bytes | None:
        row = self._first(sql, params)
        return None if row is None else bytes(row[0])

    def _stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """Yield rows of one query from a snapshot on a connection of its own."""
        conn = self._connect(stream=True)
        try:
            yield from self._stream_rows(conn, sql, params)
        except self.DRIVER_ERRORS as e:
            raise StoreError(f"{self._where}: {self._reason(e)}") from e
        finally:
            conn.close()

    def _migrate(self) -> None:
        migrations = load_migrations(self.DIALECT)

        def fn(tx: Tx) -> None:
            self._lock_schema(tx)
            tx.run(
                "CREATE TABLE IF NOT EXISTS schema_version "
                f"(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {self.INT8} NOT NULL)"
            )
            (current,) = tx.one("SELECT coalesce(max(version), 0) FROM schema_version") or (0,)
            if current > len(migrations):
                raise StoreError(
                    f"{self._where} has schema version {current}, newer than this software's "
                    f"{len(migrations)}: upgrade Petanda"
                )
            for mig in migrations[current:]:
                self._run_script(tx, mig.sql)
                tx.run(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (mig.version, mig.name, int(time.time())),
                )

        self._run(fn)

    @staticmethod
    def _log_size(tx: Tx, lock: str = "") -> int:
        row = tx.one("SELECT size FROM audit_state WHERE id = 1" + lock)  # noqa: S608 - a constant suffix
        if row is None:
            raise StoreError("audit_state row is missing: run integrity_check")
        return int(row[0])

    def _append(self, tx: Tx, events: list[AuditEvent]) -> int:
        if not events:
            return self._log_size(tx)
        rows = tx.all("UPDATE audit_state SET size = size + ? WHERE id = 1 RETURNING size", (len(events),))
        if not rows:
            raise StoreError("audit_state row is missing: run integrity_check")
        start = int(rows[0][0]) - len(events)
        previous = None
        if start > 0:
            row = tx.one("SELECT entry FROM audit_log WHERE idx = ?", (start - 1,))
            if row is None:
                raise StoreError(f"audit entry {start - 1} is missing: run integrity_check")
            previous = bytes(row[0])
        entries = chain_entries(start, previous, events)
        tx.insert("audit_log", _AUDIT_COLUMNS, [(start + i, e, leaf_hash(e)) for i, e in enumerate(entries)])
        return start

    def _write(self, audit: Sequence[AuditEvent], fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` and append ``audit`` after it, in one write transaction (events checked first)."""
        events = check_events(audit)

        def both(tx: Tx) -> T:
            result = fn(tx)
            if events:
                self._append(tx, events)
            return result

        return self._run(both)

    # maintenance ------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        row = self._first("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close every connection once the operations in progress have finished (up to 60 s)."""
        self._gate.close()
        with self._lock:
            holders = list(self._all)
            self._all.clear()
        for holder in holders:
            try:
                holder.conn.close()
            except self.DRIVER_ERRORS:
                pass
        self._local = threading.local()
