"""Backing up a node's store while it serves, and putting a backup back (``petanda-node backup``/``restore``).

SQLite: the online backup API (``sqlite3.Connection.backup``) copies a consistent snapshot of the live
database page by page, whatever the node writes meanwhile, into a new file of mode 0600; a restore
copies the backup into the store the same way (WAL and all), after checking it is a Petanda store.
PostgreSQL: ``pg_dump --format=custom`` (one repeatable-read snapshot, so consistent while the node
serves) into a new 0600 file; a restore runs ``pg_restore --clean --if-exists --single-transaction``.
Point-in-time recovery of a PostgreSQL cluster is the database administrator's (docs/operators.md).

The OPRF keys and the federation secret are in the store, wrapped under the key-encryption key (ADR 0011);
the KEK, signing key and TLS key are files of the node directory, backed up separately and apart from the
store's backups (docs/operators.md, "Backup and restore").

After a restore the node is behind what its peers saw: :func:`node.recovery.recover` reconciles it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from client.protocol.errors import ConfigError, StoreError

__all__ = ["BackupResult", "backup", "check_not_serving", "find_pg_tool", "restore"]

_PRIVATE: Final = 0o600
#: Pages copied per step of the SQLite online backup: the node's writers get the lock between steps.
_PAGES_PER_STEP: Final = 1024


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What a backup wrote: the file, its size, and the backend (``sqlite`` or ``postgresql``)."""

    path: Path
    size: int
    backend: str


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def find_pg_tool(name: str) -> str:
    """``pg_dump`` or ``pg_restore`` on PATH, else the newest in ``/usr/lib/postgresql/*/bin``.

    Raises:
        ConfigError: not installed.
    """
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(p) for p in Path(path).parent.parent.name.split(".") if p.isdigit())

    for path in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True):
        return path
    raise ConfigError(f"{name} not found on PATH nor in /usr/lib/postgresql/*/bin: install postgresql-client")


def _new_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600; refuse an existing file (a backup is never overwritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE)
    except FileExistsError:
        raise ConfigError("exists already; a backup never overwrites a file", path=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot create the backup: {e.strerror or e}", path=str(path)) from None
    try:
        os.fchmod(fd, _PRIVATE)
    finally:
        os.close(fd)


def _check_private(path: Path) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"cannot read the backup: {e.strerror or e}", path=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("not a regular file", path=str(path))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"backup file mode {mode:04o} lets group or others read raw indicators: run chmod 600 {path}",
            path=str(path),
        )


def backup(url: str, out: Path) -> BackupResult:
    """Write a consistent backup of the store at ``url`` to the new file ``out`` (mode 0600), while
    the node may serve and write.

    Raises:
        ConfigError: ``out`` exists or cannot be created; a PostgreSQL tool is missing.
        StoreError: the database could not be read (``out`` is removed).
    """
    _new_private(out)
    try:
        if _is_postgres(url):
            _run([find_pg_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={out}", url], "pg_dump")
            backend = "postgresql"
        else:
            _sqlite_copy(_sqlite_path(url), out, source_must_exist=True)
            backend = "sqlite"
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return BackupResult(out, out.stat().st_size, backend)


def check_not_serving(host: str, port: int, *, listen: str) -> None:
    """Refuse to go on while something accepts connections on the node's own listen address (the node
    serving, most likely: a store put back under a running node loses what it writes). A wildcard
    address is tried on loopback; port 0 (tests) is not tried. Replicas on other hosts are not seen.

    Raises:
        ConfigError: a connection to ``host``:``port`` succeeded (names ``node.listen``).
    """
    if port == 0:
        return
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - a wildcard, tried on loopback
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError:
        return
    raise ConfigError(
        f"something accepts connections on {listen}: stop the node (every replica) before `restore`",
        key="node.listen",
    )


def restore(url: str, source: Path) -> None:
    """Replace the store at ``url`` by the backup ``source``. The node must not be serving.

    Raises:
        ConfigError: ``source`` is missing, group- or world-accessible, or not a backup of this kind.
        StoreError: the copy failed (SQLite: the store is unchanged; PostgreSQL: the single
            transaction was rolled back).
    """
    _check_private(source)
    if _is_postgres(url):
        _run(
            [
                find_pg_tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--exit-on-error",
                "--no-owner",
                f"--dbname={url}",
                str(source),
            ],
            "pg_restore",
        )
        return
    _check_sqlite_backup(source)
    target = _sqlite_path(url)
    if not target.exists():
        _new_private(target)
    _sqlite_copy(source, target, source_must_exist=True)


def _check_sqlite_backup(source: Path) -> None:
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise ConfigError(f"not a SQLite database: {e}", path=str(source)) from None
    if not ok or ok[0] != "ok":
        raise ConfigError(f"the backup is damaged: {ok[0] if ok else 'no answer'}", path=str(source))
    if not {"schema_version", "audit_log", "publications"} <= tables:
        raise ConfigError(
            "not a backup of a Petanda store (no schema_version, audit_log, publications)", path=str(source)
        )


def _sqlite_copy(source: Path, target: Path, *, source_must_exist: bool) -> None:
    if source_must_exist and not source.is_file():
        raise ConfigError("no such SQLite database", path=str(source))
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        try:
            dst = sqlite3.connect(target, timeout=30)
            try:
                src.backup(dst, pages=_PAGES_PER_STEP)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as e:
        raise StoreError(f"SQLite backup from {source} to {target} failed: {e}") from e
    for companion in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        if companion.exists() and stat.S_IMODE(companion.stat().st_mode) & 0o077:
            os.chmod(companion, _PRIVATE)


def _run(command: list[str], name: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as e:
        raise StoreError(f"{name} could not run: {e.strerror or e}") from e
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise StoreError(f"{name} failed (exit {done.returncode}): {detail[-1] if detail else 'no output'}")
