"""SQL fragments both backends share, so that the merge rule and the publishing rule are written once.

Placeholders are ``?`` (:class:`node.store.sqlbase.Tx` translates them for a dialect that differs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from node.store.base import leaf_hash

__all__ = [
    "BLOB_COLUMNS",
    "DIGEST_COLUMNS",
    "INDICATOR_COLUMNS",
    "MERGE_SET",
    "PUBLISHABLE_WHERE",
    "PUBLISH_COLUMNS",
    "SEALED_KEY",
    "UPSERT_DIGEST",
    "Columns",
    "invariant_problems",
    "tlp_rank_sql",
]

#: Columns of a bulk insert: (name, type), the type one of ``int`` (64-bit), ``small``, ``text``, ``blob``.
Columns = tuple[tuple[str, str], ...]

#: The 12 columns of an indicator, in schema order (as base.record_from_row takes them).
INDICATOR_COLUMNS: Final = (
    "kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, source, "
    "retracted_at, updated_at"
)
#: A blob keyed by (kind, tier), after the owner's key column(s): filters, record sets.
BLOB_COLUMNS: Final[Columns] = (("kind", "text"), ("tier", "small"), ("data", "blob"))
DIGEST_COLUMNS: Final[Columns] = (
    ("indicator_id", "int"),
    ("epoch", "int"),
    ("tier", "small"),
    ("digest", "blob"),
)
#: ``ON CONFLICT`` clause of a digest insert: a new digest of the same (epoch, tier) replaces the old.
#: A digest written again replaces the old one and drops the record sealed for it (a new digest means a
#: new record: its tag and key derive from the digest).
UPSERT_DIGEST: Final = (
    "ON CONFLICT (indicator_id, epoch, tier) DO UPDATE SET digest = excluded.digest, "
    "sealed = CASE WHEN digests.digest = excluded.digest THEN digests.sealed END, "
    "sealed_key = CASE WHEN digests.digest = excluded.digest THEN digests.sealed_key END"
)


def tlp_rank_sql(column: str) -> str:
    """SQL expression for the restrictiveness of a TLP column (0 CLEAR .. 4 RED), as base.tlp_rank."""
    return (
        f"CASE {column} WHEN 'CLEAR' THEN 0 WHEN 'GREEN' THEN 1 WHEN 'AMBER' THEN 2 "
        f"WHEN 'AMBER+STRICT' THEN 3 WHEN 'RED' THEN 4 END"
    )


_NEWER: Final = "excluded.last_seen >= indicators.last_seen"


def _merge_set(least: str, greatest: str) -> str:
    return f"""
        category     = CASE WHEN {_NEWER} THEN excluded.category ELSE indicators.category END,
        first_seen   = {least}(indicators.first_seen, excluded.first_seen),
        last_seen    = {greatest}(indicators.last_seen, excluded.last_seen),
        confidence   = {greatest}(indicators.confidence, excluded.confidence),
        tlp          = CASE WHEN {tlp_rank_sql("excluded.tlp")} >= {tlp_rank_sql("indicators.tlp")}
                            THEN excluded.tlp ELSE indicators.tlp END,
        reports      = {greatest}(indicators.reports, excluded.reports),
        expires_at   = CASE WHEN {_NEWER} THEN excluded.expires_at ELSE indicators.expires_at END,
        source       = CASE WHEN {_NEWER} THEN excluded.source ELSE indicators.source END,
        retracted_at = NULL,
        updated_at   = excluded.updated_at"""


#: ``ON CONFLICT (kind, canonical) DO UPDATE SET`` body implementing base.merge_rows, per dialect.
MERGE_SET: Final = {"sqlite": _merge_set("min", "max"), "postgres": _merge_set("LEAST", "GREATEST")}

#: Columns of a PublishRow, selected from ``digests d JOIN indicators i``.
PUBLISH_COLUMNS: Final = (
    "i.kind, d.tier, d.digest, i.category, i.first_seen, i.last_seen, i.confidence, i.tlp, i.reports, "
    "i.expires_at"
)

#: The metadata a record was sealed with, as text: the cached sealed bytes of a digest row are reused
#: only while this still equals the row's ``sealed_key`` (both dialects render integers the same way).
SEALED_KEY: Final = (
    "i.category || '|' || i.first_seen || '|' || i.last_seen || '|' || i.confidence || '|' || i.tlp "
    "|| '|' || i.reports"
)

#: The publishing rule: not retracted, not expired at ``now``, not TLP:RED. One ``now`` parameter.
PUBLISHABLE_WHERE: Final = (
    "i.retracted_at IS NULL AND (i.expires_at IS NULL OR i.expires_at > ?) AND i.tlp <> 'RED'"
)


def invariant_problems(fetchall: Callable[[str, tuple[object, ...]], list[tuple[Any, ...]]]) -> list[str]:
    """Check the store's application invariants; return one line per problem.

    ``fetchall(sql, params)`` runs a query (``?`` placeholders) inside the caller's (read) transaction.
    """
    problems: list[str] = []
    state = fetchall("SELECT size FROM audit_state WHERE id = 1", ())
    if not state:
        return ["audit_state row is missing: the audit log size is unknown"]
    size = int(state[0][0])
    count, low, high = fetchall("SELECT count(*), min(idx), max(idx) FROM audit_log", ())[0]
    if count != size:
        problems.append(f"audit log holds {count} entries but its size counter says {size}")
    if count:
        (first_missing,) = fetchall(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM audit_log WHERE idx = 0) THEN 0 ELSE "
            "(SELECT min(a.idx) + 1 FROM audit_log a "
            " WHERE NOT EXISTS (SELECT 1 FROM audit_log b WHERE b.idx = a.idx + 1)) END",
            (),
        )[0]
        if first_missing <= high:
            problems.append(
                f"audit log break at index {first_missing}: entry missing (indices {low}..{high})"
            )
        if high >= size:
            problems.append(f"audit entry at index {high} lies beyond the log size {size}")
    bad_hashes: list[int] = []
    cursor = -1
    while True:
        chunk = fetchall(
            "SELECT idx, entry, leaf_hash FROM audit_log WHERE idx > ? ORDER BY idx LIMIT 2000",
            (cursor,),
        )
        if not chunk:
            break
        bad_hashes.extend(int(i) for i, e, h in chunk if leaf_hash(bytes(e)) != bytes(h))
        cursor = chunk[-1][0]
    if bad_hashes:
        shown = ", ".join(map(str, bad_hashes[:10])) + (", ..." if len(bad_hashes) > 10 else "")
        problems.append(f"audit leaf hash does not match its entry at index {shown}")
    heads = fetchall("SELECT size, timestamp FROM tree_heads WHERE size > ?", (size,))
    for head_size, ts in heads:
        problems.append(f"tree head of size {head_size} (timestamp {ts}) exceeds the audit log size {size}")
    orphans = [
        ("digests", "digests c LEFT JOIN indicators p ON p.id = c.indicator_id", "p.id"),
        (
            "publication filters",
            "publication_filters c LEFT JOIN publications p ON p.version = c.version",
            "p.version",
        ),
        (
            "publication buckets",
            "(SELECT first_version FROM bucket_spans WHERE until_version IS NULL "
            "OR until_version > first_version) c LEFT JOIN publications p ON p.version = c.first_version",
            "p.version",
        ),
        (
            "bucket bytes",
            "bucket_data c LEFT JOIN bucket_spans p ON p.kind = c.kind AND p.tier = c.tier "
            "AND p.bucket_id = c.bucket_id AND p.first_version = c.version",
            "p.first_version",
        ),
        ("peer filters", "peer_filters c LEFT JOIN peer_manifests p ON p.peer_id = c.peer_id", "p.peer_id"),
        (
            "peer record sets",
            "peer_records c LEFT JOIN peer_manifests p ON p.peer_id = c.peer_id",
            "p.peer_id",
        ),
    ]
    for what, join, key in orphans:
        (n,) = fetchall(f"SELECT count(*) FROM {join} WHERE {key} IS NULL", ())[0]  # noqa: S608 - constants
        if n:
            problems.append(f"{n} {what} belong to no parent row")
    pruned = {
        "publication_filters": "SELECT count(*) FROM publication_filters c "
        "JOIN publications p ON p.version = c.version WHERE p.pruned",
        # a bucket span is pruned when it ends at or before the oldest kept version (staged spans,
        # empty ones, belong to a publication not saved yet)
        "publication buckets": "SELECT count(*) FROM bucket_spans WHERE until_version > first_version "
        "AND until_version <= (SELECT coalesce(min(version), 0) FROM publications WHERE NOT pruned)",
    }
    for table, sql in pruned.items():
        (n,) = fetchall(sql, ())[0]
        if n:
            problems.append(f"{n} rows of {table} belong to a pruned publication")
    return problems
