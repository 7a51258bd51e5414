"""Shared pytest fixtures.

Store fixtures: ``store_url`` is parametrised over both backends (a SQLite file in ``tmp_path``, and a
fresh database on the session's PostgreSQL server), ``store`` opens it. The PostgreSQL server is started
once per session (``tests/pgserver.py``) the first time a test needs it. Without server binaries, and
with no ``PETANDA_TEST_PG_DSN``, PostgreSQL tests are skipped — except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from node.store import Store, open_store
from tests.pgserver import ENV_DSN, PostgresUnavailable, find_bindir, postgres_server


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL server for the whole session (started here unless PETANDA_TEST_PG_DSN is set)."""
    if not os.environ.get(ENV_DSN):
        try:
            find_bindir()
        except PostgresUnavailable as e:
            if _in_ci():
                pytest.fail(f"CI=true and PostgreSQL is required: {e}")
            pytest.skip(f"PostgreSQL tests skipped: {e}")
    with postgres_server() as url:
        yield url


@pytest.fixture
def pg_database_url(pg_url: str) -> Iterator[str]:
    """URL of a new, empty database on the session's server, dropped after the test."""
    name = f"petanda_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlunsplit(urlsplit(pg_url)._replace(path="/" + name))
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """Where a store lives, once per backend: a SQLite path or a ``postgresql://`` URL."""
    if request.param == "sqlite":
        return os.path.join(tmp_path, "store.db")
    url: str = request.getfixturevalue("pg_database_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, migrated, empty store of each backend; closed after the test."""
    s = open_store(store_url)
    yield s
    s.close()
