"""SQLite backend of the store: the embedded default. Only what SQLite does its own way is here; the
SQL of every method is :class:`node.store.sqlbase.SQLStore`.

Durability: WAL journal with ``synchronous=FULL``, so a transaction that returned is on disk, and a
crash at any point leaves the last committed state. ``foreign_keys=ON``, ``trusted_schema=OFF``.

Privacy: the store file and its ``-wal`` and ``-shm`` companions hold raw indicators, so they are
private to the node's user: a new store file is created with mode 0600 (SQLite gives its companions
the mode of the database file, and the store tightens them after opening). An existing file or
companion that group or others may read or write is refused (ConfigError naming the file, its mode and
``chmod 600 FILE``) before anything is opened.

Threads: each thread gets its own connection; every write transaction starts with ``BEGIN
IMMEDIATE``, which takes SQLite's single write lock at once: writers (threads or processes) are
serialised — that is what keeps audit indices contiguous, so no row locks are needed — and wait up to
``busy_timeout_s`` for one another; readers never wait (WAL). Streaming iterators open a connection of
their own, so a long iteration never holds a transaction of the thread's other calls.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Final

from client.protocol.errors import ConfigError, InputError, StoreError
from node.store._sql import INDICATOR_COLUMNS, MERGE_SET, UPSERT_DIGEST
from node.store.base import DigestItem, IndicatorRow
from node.store.sqlbase import Mode, Tx
from node.store.sqlstore import SQLStore

__all__ = ["SQLiteStore"]

#: The store file's companions: the file itself, its write-ahead log and its shared-memory index.
_COMPANIONS: Final = ("", "-wal", "-shm")
_PRIVATE: Final = 0o600
_UPSERT: Final = (
    f"INSERT INTO indicators ({INDICATOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?) "  # noqa: S608
    f"ON CONFLICT (kind, canonical) DO UPDATE SET {MERGE_SET['sqlite']}"
)
_SET_DIGEST: Final = (
    "INSERT INTO digests (indicator_id, epoch, tier, digest) "  # noqa: S608 - constant fragments only
    "VALUES ((SELECT id FROM indicators WHERE kind = ? AND canonical = ?), ?, ?, ?) " + UPSERT_DIGEST
)


def _reason(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class SQLiteStore(SQLStore):
    """The store in one SQLite file (plus its ``-wal`` and ``-shm`` companions), all mode 0600."""

    DIALECT = "sqlite"
    DRIVER_ERRORS = (sqlite3.Error,)
    INT8 = "INTEGER"

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating if needed) the store at ``path`` and apply pending migrations.

        Raises:
            ConfigError: the file, or its ``-wal`` or ``-shm``, may be read or written by group or others.
        """
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise InputError(f"SQLite store needs a file path, got {self._path!r}")
        self._busy_timeout_s = busy_timeout_s
        self._refuse_open_files()
        self._create_private()
        super().__init__(f"SQLite store {self._path}")
        self._tighten()  # the first write created the -wal and -shm files

    # file modes -------------------------------------------------------------------------------------

    def _refuse_open_files(self) -> None:
        for name in (self._path + suffix for suffix in _COMPANIONS):
            try:
                mode = stat.S_IMODE(os.stat(name).st_mode)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StoreError(f"cannot open SQLite store {self._path}: {e.strerror or e}") from e
            if mode & 0o077:
                raise ConfigError(
                    f"store file mode {mode:04o} lets group or others read or write raw indicators: "
                    f"run chmod 600 {name}",
                    path=name,
                )

    def _create_private(self) -> None:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE)
        except FileExistsError:
            return
        except OSError as e:
            raise StoreError(f"cannot open SQLite store {self._path}: {e.strerror or e}") from e
        try:
            os.fchmod(fd, _PRIVATE)  # the umask may only have narrowed it; make it exact
        finally:
            os.close(fd)

    def _tighten(self) -> None:
        """Make the companions SQLite created private (it copies the database file's mode already)."""
        for name in (self._path + suffix for suffix in _COMPANIONS[1:]):
            with suppress(FileNotFoundError):
                if os.stat(name).st_mode & 0o077:
                    os.chmod(name, _PRIVATE)

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
