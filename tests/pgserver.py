"""Start a throw-away PostgreSQL server for tests and benchmarks.

``postgres_server()`` yields a ``postgresql://`` URL. If ``PETANDA_TEST_PG_DSN`` is set (a
``postgresql://`` URL of a role allowed to CREATE DATABASE) that server is used and nothing is started.
Otherwise ``initdb`` and ``pg_ctl`` (found on ``PATH`` or in ``/usr/lib/postgresql/*/bin``) create a
cluster in a temporary directory, listening on a free 127.0.0.1 port and on a unix socket in that
directory, trust authentication, stopped and deleted at the end. initdb refuses to run as root: as root
the cluster is run by the ``postgres`` system user (created if missing) through ``runuser`` (or ``su``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ENV_DSN", "PostgresUnavailable", "find_bindir", "postgres_server"]

#: Environment variable naming an existing server to use instead of starting one.
ENV_DSN = "PETANDA_TEST_PG_DSN"
_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found on this machine."""


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (the newest version wins)."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(os.path.realpath(found)).parent)

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH nor in "
        "/usr/lib/postgresql/*/bin; install postgresql or set PETANDA_TEST_PG_DSN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    """Wrap ``cmd`` to run as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", _USER, "--", *cmd]
    return ["su", _USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _ensure_server_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(_USER)
    return entry.pw_uid, entry.pw_gid


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        if log is not None:
            detail += f"\n--- server log ---\n{_tail(log)}"
        raise RuntimeError(f"{what} failed ({proc.returncode}): {detail}")


@contextmanager
def postgres_server(*, durable: bool = False, timeout_s: float = 30.0) -> Iterator[str]:
    """Yield the URL of a PostgreSQL server (an existing one from ``PETANDA_TEST_PG_DSN``, or a new one).

    Args:
        durable: keep ``fsync`` on (benchmarks); tests turn it off since the cluster is thrown away.
        timeout_s: how long to wait for the server to accept connections.

    Raises:
        PostgresUnavailable: no server binaries and no ``PETANDA_TEST_PG_DSN``.
    """
    existing = os.environ.get(ENV_DSN)
    if existing:
        if not existing.startswith(("postgresql://", "postgres://")):
            raise RuntimeError(f"{ENV_DSN} must be a postgresql:// URL")
        yield existing
        return
    bindir = find_bindir()
    tmp = Path(tempfile.mkdtemp(prefix="petanda-pg-"))
    data, log = tmp / "data", tmp / "server.log"
    port = _free_port()
    started = False
    try:
        if os.geteuid() == 0:
            uid, gid = _ensure_server_user()
            os.chown(tmp, uid, gid)
        os.chmod(tmp, 0o700)
        _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", _USER, "--auth=trust", "-E", "UTF8",
             "--no-locale", "--no-sync"],
            "initdb",
        )  # fmt: skip
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(tmp),
            "max_connections": "100",
            "fsync": "on" if durable else "off",
            "synchronous_commit": "on" if durable else "off",
            "full_page_writes": "on" if durable else "off",
        }
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        _run(
            [str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout_s)), "-D", str(data),
             "-l", str(log), "-o", options],
            "pg_ctl start",
            log,
        )  # fmt: skip
        started = True
        url = f"postgresql://{_USER}@127.0.0.1:{port}/postgres"
        try:
            _wait_ready(url, timeout_s)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n--- server log ---\n{_tail(log)}") from None
        yield url
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data)]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(url: str, timeout_s: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {timeout_s} s: {e}") from e
            time.sleep(0.1)


def main(argv: list[str]) -> int:
    """``python -m tests.pgserver -- COMMAND...``: run COMMAND with a fresh server in PETANDA_TEST_PG_DSN.

    ``.ci/run`` starts the tests this way, so the server is up (and its start-up errors are reported)
    before the first test, and is stopped however the command ends.
    """
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m tests.pgserver -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    with postgres_server() as url:
        print(f"PostgreSQL ready at {url}", flush=True)
        return subprocess.run(argv, env={**os.environ, ENV_DSN: url}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
