"""The node's durable store: SQLite (embedded default) or PostgreSQL (national deployment).

``open_store`` picks the backend from its argument; both implement :class:`Store` and pass the same
contract tests (``tests/test_store_contract.py``). Raw indicators live only here.

Layout: ``base`` (the contract and its pure rules), ``rows`` (row types), ``sqlbase`` (connections,
transactions, migrations and the dialect hooks), ``sqlstore`` (every method's SQL, written once),
``_sql`` (shared SQL fragments), and the two dialects ``sqlite`` and ``postgres``.
"""

from __future__ import annotations

import os

from client.protocol.errors import InputError
from node.store.base import (
    DigestItem,
    HeadRow,
    IndicatorRecord,
    IndicatorRow,
    PublishRow,
    QuotaDecision,
    RecordBatch,
    SealedItem,
    SealingRow,
    Sighting,
    StateCounts,
    Store,
    UpsertResult,
    leaf_hash,
    merge_rows,
)

__all__ = [
    "DigestItem",
    "HeadRow",
    "IndicatorRecord",
    "IndicatorRow",
    "PublishRow",
    "QuotaDecision",
    "RecordBatch",
    "SealedItem",
    "SealingRow",
    "Sighting",
    "StateCounts",
    "Store",
    "UpsertResult",
    "leaf_hash",
    "merge_rows",
    "open_store",
]


def open_store(url_or_path: str | os.PathLike[str]) -> Store:
    """Open the store: a ``postgresql://`` (or ``postgres://``) URL, else SQLite: a ``sqlite:///path``
    URL (``sqlite:////abs/path`` for an absolute one, as in the node's config) or a plain file path.

    Pending schema migrations are applied before it returns.
    """
    if isinstance(url_or_path, str) and url_or_path.startswith(("postgresql://", "postgres://")):
        from node.store.postgres import PostgresStore

        return PostgresStore(url_or_path)
    from node.store.sqlite import SQLiteStore

    if isinstance(url_or_path, str) and url_or_path.startswith("sqlite:"):
        if not url_or_path.startswith("sqlite:///"):
            raise InputError(
                f"store URL {url_or_path!r}: write sqlite:///relative.db or sqlite:////absolute.db"
            )
        url_or_path = url_or_path.removeprefix("sqlite:///")
    return SQLiteStore(url_or_path)
