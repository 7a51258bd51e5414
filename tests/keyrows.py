"""Raw access to the wrapped keys of a store (``node.keystore``), bypassing the store as an attacker or a
careless operator with database access would: change a row's bytes, or move a row to another epoch.

A wrapped key is never updated (the schema refuses an UPDATE), so a row is changed by deleting it and
inserting another, which the schema allows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

__all__ = ["move_wrapped_key", "raw_sql", "rewrite_wrapped_key", "tamper_wrapped_key"]


@contextmanager
def raw_sql(url: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Run raw SQL (``?`` placeholders) on the store at ``url`` (SQLite path or PostgreSQL URL)."""
    if url.startswith(("postgresql://", "postgres://")):
        with psycopg.connect(url, autocommit=True) as pg:

            def run_pg(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
                cursor = pg.execute(query.replace("?", "%s"), params)
                return list(cursor.fetchall()) if cursor.description else []

            yield run_pg
    else:
        lite = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:

            def run_lite(query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
                return list(lite.execute(query, params).fetchall())

            yield run_lite
        finally:
            lite.close()


def rewrite_wrapped_key(
    url: str,
    epoch: int,
    change: Callable[[bytes], bytes],
    *,
    to_epoch: int | None = None,
    purpose: str = "oprf",
) -> None:
    """Replace the row of ``(purpose, epoch)`` by one holding ``change(blob)``, at ``to_epoch`` if given."""
    with raw_sql(url) as sql:
        [(kek, blob, created_at)] = sql(
            "SELECT kek, blob, created_at FROM wrapped_keys WHERE purpose = ? AND epoch = ?", (purpose, epoch)
        )
        target = epoch if to_epoch is None else to_epoch
        sql("DELETE FROM wrapped_keys WHERE purpose = ? AND epoch IN (?, ?)", (purpose, epoch, target))
        sql(
            "INSERT INTO wrapped_keys (purpose, epoch, kek, blob, created_at) VALUES (?, ?, ?, ?, ?)",
            (purpose, target, kek, change(bytes(blob)), created_at),
        )


def tamper_wrapped_key(url: str, epoch: int, purpose: str = "oprf") -> None:
    """Flip one bit of the last byte of the row of ``(purpose, epoch)`` (its authentication tag)."""
    rewrite_wrapped_key(url, epoch, lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]), purpose=purpose)


def move_wrapped_key(url: str, epoch: int, to_epoch: int) -> None:
    """Put the OPRF row of ``epoch`` in place of the row of ``to_epoch``, bytes unchanged."""
    rewrite_wrapped_key(url, epoch, lambda blob: blob, to_epoch=to_epoch)
