"""Every method of the store's contract, written once in SQL for both backends.

:class:`SQLStore` runs on the machinery of :class:`node.store.sqlbase.SQLBase` (transactions, ``?``
placeholders, bulk inserts, audit appends); a backend subclasses it and supplies the dialect hooks
listed there. The contract (what each method MUST do) is :class:`node.store.base.Store`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from client.protocol.errors import InputError, StoreError
from client.protocol.kinds import TIER_HMAC, TIER_OPRF, TLP_LEVELS
from node.store._sql import (
    BLOB_COLUMNS,
    INDICATOR_COLUMNS,
    PUBLISH_COLUMNS,
    PUBLISHABLE_WHERE,
    SEALED_KEY,
    invariant_problems,
)
from node.store.base import (
    PEER_TREE_HEADS_KEPT,
    AuditEvent,
    ChangedRow,
    DigestItem,
    HeadRow,
    IndicatorRecord,
    IndicatorRow,
    PublishRow,
    QuotaDecision,
    QuotaRequest,
    QuotaState,
    RecordBatch,
    SealedItem,
    SealingRow,
    Sighting,
    StateCounts,
    UpsertResult,
    WrappedKey,
    dedupe_digests,
    dedupe_rows,
    quota_step,
    record_from_row,
    tlp_rank,
)
from node.store.sqlbase import SQLBase, Tx, check_events, check_range

__all__ = ["SQLStore"]

_PUBLISHABLE: Final = (
    f"SELECT {PUBLISH_COLUMNS} FROM digests d JOIN indicators i ON i.id = d.indicator_id "  # noqa: S608
    f"WHERE d.epoch = ? AND {PUBLISHABLE_WHERE}"
)
_RETRACT: Final = (
    "UPDATE indicators SET retracted_at = ?, updated_at = ? "
    "WHERE kind = ? AND canonical = ? AND retracted_at IS NULL"
)
_SPAN_COLUMNS: Final = (
    ("kind", "text"), ("tier", "small"), ("bucket_id", "int"), ("first_version", "int"),
    ("until_version", "int"), ("sha256", "blob"),
)  # fmt: skip
_HEAD: Final = "size, root, timestamp, signature"
_SIGHTING: Final = "peer_id, kind, tier, tag, at"
_QUOTA: Final = "tokens, updated_at, day, daily_used"
_SET_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
#: Purposes of wrapped keys the schema accepts.
_KEY_PURPOSES: Final = ("oprf", "hmac")


PEER_VERSION_META: Final = "peer_version."
"""Meta key prefix of the manifest version each peer's cached state was saved with (compare-and-swap)."""


class SQLStore(SQLBase):
    """The contract in SQL shared by SQLite and PostgreSQL; a backend subclass supplies the dialect hooks."""

    # indicators and digests -------------------------------------------------------------------------

    def upsert_indicators(
        self, rows: Iterable[IndicatorRow], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> UpsertResult:
        batch = dedupe_rows(rows)
        stored = self._write(audit, lambda tx: self._upsert_batch(tx, batch, now) if batch else 0)
        return UpsertResult(stored=stored, updated=len(batch) - stored)

    def save_feed_batch(
        self,
        rows: Iterable[IndicatorRow],
        retractions: Sequence[tuple[str, str]],
        *,
        now: int,
        key: str,
        expect: str | None,
        value: str,
        audit: Sequence[AuditEvent] = (),
    ) -> tuple[UpsertResult, int] | None:
        batch = dedupe_rows(rows)
        unique = sorted(set(retractions))
        events = check_events(audit)

        def fn(tx: Tx) -> tuple[UpsertResult, int] | None:
            # The cursor first: a concurrent saver of the same feed waits on its row (or its key in the
            # index) and then finds it moved; nothing else is written by the loser.
            if expect is None:
                moved = tx.run(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value)
                )
            else:
                moved = tx.run("UPDATE meta SET value = ? WHERE key = ? AND value = ?", (value, key, expect))
            if moved != 1:
                return None
            stored = self._upsert_batch(tx, batch, now) if batch else 0
            retracted = sum(tx.run(_RETRACT, (now, now, kind, canonical)) for kind, canonical in unique)
            if events:
                self._append(tx, events)
            return UpsertResult(stored=stored, updated=len(batch) - stored), retracted

        return self._run(fn)

    def get_indicator(self, kind: str, canonical: str) -> IndicatorRecord | None:
        def fn(tx: Tx) -> IndicatorRecord | None:
            row = tx.one(
                f"SELECT id, {INDICATOR_COLUMNS} FROM indicators WHERE kind = ? AND canonical = ?",  # noqa: S608
                (kind, canonical),
            )
            if row is None:
                return None
            digests = tx.all("SELECT epoch, tier, digest FROM digests WHERE indicator_id = ?", (row[0],))
            return record_from_row(row[1:], {(e, t): bytes(d) for e, t, d in digests})

        return self._run(fn, mode="snapshot")

    def _change(self, sql: str, params: Sequence[Any], audit: Sequence[AuditEvent]) -> int:
        return self._write(audit, lambda tx: tx.run(sql, params))

    def set_tlp(
        self, kind: str, canonical: str, tlp: str, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        tlp_rank(tlp)
        sql = "UPDATE indicators SET tlp = ?, updated_at = ? WHERE kind = ? AND canonical = ?"
        return self._change(sql, (tlp, now, kind, canonical), audit) > 0

    def retract(self, kind: str, canonical: str, *, now: int, audit: Sequence[AuditEvent] = ()) -> bool:
        return self._change(_RETRACT, (now, now, kind, canonical), audit) > 0

    def retract_many(
        self, items: Sequence[tuple[str, str]], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> int:
        sql = _RETRACT
        unique = sorted(set(items))  # (kind, canonical) order: the lock order of upserts

        def fn(tx: Tx) -> int:
            return sum(tx.run(sql, (now, now, kind, canonical)) for kind, canonical in unique)

        return self._write(audit, fn)

    def expired(self, *, now: int) -> int:
        row = self._first(
            "SELECT count(*) FROM indicators WHERE retracted_at IS NULL AND expires_at <= ?", (now,)
        )
        return int(row[0]) if row else 0

    def purge(self, *, before: int, audit: Sequence[AuditEvent] = ()) -> int:
        sql = "DELETE FROM indicators WHERE retracted_at < ? OR expires_at < ?"
        return self._change(sql, (before, before), audit)

    def set_digests(self, items: Iterable[DigestItem]) -> int:
        batch = dedupe_digests(items)
        if batch:
            self._run(lambda tx: self._put_digests(tx, batch))
        return len(batch)

    def iter_needing_digest(self, epoch: int, tier: int, *, now: int) -> Iterator[tuple[str, str]]:
        sql = (
            "SELECT i.kind, i.canonical FROM indicators i WHERE i.retracted_at IS NULL "
            "AND (i.expires_at IS NULL OR i.expires_at > ?) AND NOT EXISTS "
            "(SELECT 1 FROM digests d WHERE d.indicator_id = i.id AND d.epoch = ? AND d.tier = ?) "
            "ORDER BY i.id"
        )
        for kind, canonical in self._stream(sql, (now, epoch, tier)):
            yield str(kind), str(canonical)

    def delete_digests(self, *, epoch_below: int) -> int:
        return self._change("DELETE FROM digests WHERE epoch < ?", (epoch_below,), ())

    def delete_tier_digests(self, tier: int) -> int:
        return self._change("DELETE FROM digests WHERE tier = ?", (tier,), ())

    def iter_publishable(self, epoch: int, *, now: int) -> Iterator[PublishRow]:
        for row in self._stream(_PUBLISHABLE + " ORDER BY i.kind, d.tier, d.digest", (epoch, now)):
            yield PublishRow(*row)

    def iter_sealing(self, epoch: int, *, now: int, stale_only: bool = False) -> Iterator[SealingRow]:
        # In the digests' key order, which is the indicators' too: both tables are read front to back.
        # ``+d.epoch`` keeps SQLite off the digests_by_value index, whose rows would each cost a lookup
        # of the table row (for the sealed record) and then a sort of them all: 3x slower at 200k rows.
        stale = f" AND (d.sealed_key IS NULL OR d.sealed_key <> {SEALED_KEY})" if stale_only else ""
        sql = (
            f"SELECT {PUBLISH_COLUMNS}, d.indicator_id, {SEALED_KEY}, "  # noqa: S608 - constant fragments
            f"CASE WHEN d.sealed_key = {SEALED_KEY} THEN d.sealed END "
            "FROM digests d JOIN indicators i ON i.id = d.indicator_id "
            f"WHERE +d.epoch = ? AND {PUBLISHABLE_WHERE}{stale} ORDER BY d.indicator_id, d.epoch, d.tier"
        )
        for row in self._stream(sql, (epoch, now)):
            sealed = row[-1]
            yield SealingRow(
                PublishRow(*row[:-3]), int(row[-3]), str(row[-2]), None if sealed is None else bytes(sealed)
            )

    def publish_counts(self, epoch: int, *, now: int) -> dict[tuple[str, int, str], int]:
        # Per kind (the indicators' (kind, canonical) index finds them) and with one filtered count per
        # (tier, TLP): a GROUP BY would sort every row first (2.1 s against 0.6 s at 1M rows on SQLite).
        groups = [(tier, tlp) for tier in (TIER_OPRF, TIER_HMAC) for tlp in TLP_LEVELS]
        counts = ", ".join("count(*) FILTER (WHERE d.tier = ? AND i.tlp = ?)" for _ in groups)
        sql = (
            f"SELECT {counts} FROM indicators i JOIN digests d ON d.indicator_id = i.id "  # noqa: S608
            f"WHERE i.kind = ? AND +d.epoch = ? AND {PUBLISHABLE_WHERE}"
        )
        flat = [x for group in groups for x in group]
        out: dict[tuple[str, int, str], int] = {}
        for (kind,) in self._query("SELECT DISTINCT kind FROM indicators ORDER BY kind"):
            row = self._first(sql, (*flat, str(kind), epoch, now))
            for (tier, tlp), n in zip(groups, row or (), strict=False):
                if n:
                    out[(str(kind), tier, tlp)] = int(n)
        return out

    def iter_records(
        self, epoch: int, kind: str, tier: int, *, now: int, withheld: Collection[str], batch: int
    ) -> Iterator[RecordBatch]:
        if batch < 1:
            raise InputError(f"batch must be at least 1, got {batch}")
        tlps = sorted(withheld)
        not_withheld = "".join(" AND i.tlp <> ?" for _ in tlps)
        # One statement: the count comes from the same snapshot as the rows (a window over the sorted
        # rows, which the sort holds anyway), so a publication's filter is sized for what it streams.
        sql = (
            "SELECT d.digest, d.sealed, count(*) OVER () FROM digests d "  # noqa: S608 - constant fragments
            "JOIN indicators i ON i.id = d.indicator_id "
            f"WHERE d.epoch = ? AND d.tier = ? AND i.kind = ? AND {PUBLISHABLE_WHERE}{not_withheld} "
            f"AND d.sealed_key = {SEALED_KEY} ORDER BY d.sealed"
        )
        digests: list[bytes] = []
        records: list[bytes] = []
        total = 0
        for digest, sealed, total in self._stream(sql, (epoch, tier, kind, now, *tlps)):
            digests.append(bytes(digest))
            records.append(bytes(sealed))
            if len(records) >= batch:
                yield RecordBatch(int(total), b"".join(digests), b"".join(records))
                digests.clear()
                records.clear()
        if records:
            yield RecordBatch(int(total), b"".join(digests), b"".join(records))

    def change_mark(self) -> int:
        def fn(tx: Tx) -> int:
            self._lock_log(tx)
            (mark,) = tx.one("SELECT coalesce(max(seq), 0) FROM publish_log") or (0,)
            return int(mark)

        return self._run(fn)

    def _lock_log(self, tx: Tx) -> None:
        """Wait for the writers of the change log in flight (dialect hook; SQLite has one writer)."""

    def iter_changed(
        self, epoch: int, *, upto: int, now: int, expired_after: int | None
    ) -> Iterator[ChangedRow]:
        expiring = ""
        params: list[Any] = [upto]
        if expired_after is not None:
            expiring = " UNION SELECT id FROM indicators WHERE expires_at > ? AND expires_at <= ?"
            params += [min(expired_after, now), max(expired_after, now)]
        sql = (
            f"SELECT {PUBLISH_COLUMNS}, d.indicator_id, {SEALED_KEY}, "  # noqa: S608 - constant fragments
            f"CASE WHEN d.sealed_key = {SEALED_KEY} THEN d.sealed END, "
            f"CASE WHEN {PUBLISHABLE_WHERE} THEN 1 ELSE 0 END "
            "FROM digests d JOIN indicators i ON i.id = d.indicator_id "
            "WHERE d.epoch = ? AND d.indicator_id IN "
            f"(SELECT indicator_id FROM publish_log WHERE seq <= ? AND indicator_id IS NOT NULL{expiring})"
        )
        for row in self._stream(sql, (now, epoch, *params)):
            sealed = row[-2]
            yield ChangedRow(
                PublishRow(*row[:-4]),
                int(row[-4]),
                str(row[-3]),
                None if sealed is None else bytes(sealed),
                bool(row[-1]),
            )

    def gone_digests(self, epoch: int, *, upto: int) -> list[tuple[str, int, bytes]]:
        rows = self._query(
            "SELECT DISTINCT kind, tier, digest FROM publish_log "
            "WHERE seq <= ? AND digest IS NOT NULL AND epoch = ?",
            (upto, epoch),
        )
        return [(str(k), int(t), bytes(d)) for k, t, d in rows]

    def current_buckets(self, kind: str, tier: int, ids: Collection[int]) -> dict[int, bytes]:
        wanted = sorted(set(ids))
        out: dict[int, bytes] = {}
        sql = (
            "SELECT s.bucket_id, d.data FROM bucket_spans s JOIN bucket_data d ON d.kind = s.kind "
            "AND d.tier = s.tier AND d.bucket_id = s.bucket_id AND d.version = s.first_version "
            "WHERE s.kind = ? AND s.tier = ? AND s.until_version IS NULL AND s.bucket_id IN "
        )
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for bucket, data in self._query(f"{sql}({marks})", (kind, tier, *chunk)):
                out[int(bucket)] = bytes(data)
        return out

    def withheld_count(self, epoch: int, *, now: int, tlp: str) -> dict[tuple[str, int], int]:
        tlp_rank(tlp)  # one of TLP_LEVELS: written as a literal, so that a partial index on it is used
        # Driven by the indicators of that TLP (``+d.epoch`` keeps SQLite off the epoch's whole index).
        sql = (
            "SELECT i.kind, d.tier, count(*) FROM digests d "  # noqa: S608 - constant fragments
            "JOIN indicators i ON i.id = d.indicator_id "
            f"WHERE d.indicator_id IN (SELECT id FROM indicators WHERE tlp = '{tlp}') AND i.tlp = '{tlp}' "
            f"AND +d.epoch = ? AND {PUBLISHABLE_WHERE} GROUP BY i.kind, d.tier"
        )
        rows = self._query(sql, (epoch, now))
        return {(str(k), int(t)): int(n) for k, t, n in rows if n}

    def cache_sealed(self, epoch: int, items: Iterable[SealedItem]) -> int:
        batch = [(it.sealed, it.sealed_key, it.indicator_id, epoch, it.tier) for it in items]
        if not batch:
            return 0
        sql = (
            "UPDATE digests SET sealed = ?, sealed_key = ? WHERE indicator_id = ? AND epoch = ? AND tier = ?"
        )
        return self._run(lambda tx: tx.many(sql, batch))

    def lookup_digest(
        self, epoch: int, tier: int, kind: str, digest: bytes, *, now: int
    ) -> PublishRow | None:
        sql = _PUBLISHABLE + " AND d.tier = ? AND d.digest = ? AND i.kind = ?"
        row = self._first(sql, (epoch, now, tier, digest, kind))
        return PublishRow(*row) if row else None

    def counts(self, *, now: int) -> dict[str, StateCounts]:
        rows = self._query(
            "SELECT kind, "
            "count(*) FILTER (WHERE retracted_at IS NULL AND (expires_at IS NULL OR expires_at > ?)), "
            "count(*) FILTER (WHERE retracted_at IS NULL AND expires_at <= ?), "
            "count(*) FILTER (WHERE retracted_at IS NOT NULL) "
            "FROM indicators GROUP BY kind ORDER BY kind",
            (now, now),
        )
        return {k: StateCounts(int(a), int(e), int(r)) for k, a, e, r in rows}

    def withheld_counts(self, *, now: int) -> dict[str, dict[str, int]]:
        # One count per marking, each by its partial index (schema 6), never a scan of every indicator.
        out: dict[str, dict[str, int]] = {}
        for tlp in ("RED", "AMBER+STRICT"):
            rows = self._query(
                f"SELECT kind, count(*) FROM indicators WHERE tlp = '{tlp}' AND retracted_at IS NULL "  # noqa: S608
                "AND (expires_at IS NULL OR expires_at > ?) GROUP BY kind",
                (now,),
            )
            for kind, n in rows:
                out.setdefault(str(kind), {"RED": 0, "AMBER+STRICT": 0})[tlp] = int(n)
        return dict(sorted(out.items()))

    # publications -----------------------------------------------------------------------------------

    def save_publication(
        self,
        version: int,
        manifest: bytes,
        filters: Mapping[tuple[str, int], bytes],
        buckets: Mapping[tuple[str, int, int], bytes],
        *,
        audit: Sequence[AuditEvent] = (),
        carry: Mapping[tuple[str, int], int] | None = None,
        staged: int = 0,
        changes_upto: int | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        def fn(tx: Tx) -> None:
            self._check_newer(tx, version, "publication")
            (found,) = tx.one(
                "SELECT count(*) FROM bucket_spans WHERE first_version = ? AND until_version = ?",
                (version, version),
            ) or (0,)
            if found != staged:
                raise StoreError(
                    f"publication {version}: {found} buckets staged, not the {staged} expected: "
                    "another publication ran at the same time; publish again"
                )
            tx.run("INSERT INTO publications (version, manifest) VALUES (?, ?)", (version, manifest))
            tx.insert(
                "publication_filters",
                (("version", "int"), *BLOB_COLUMNS),
                [(version, k, t, d) for (k, t), d in filters.items()],
            )
            self._stage(tx, version, [(k, t, b, d) for (k, t, b), d in buckets.items()])
            # The current span of every bucket the new version replaces ends here ...
            tx.run(
                "UPDATE bucket_spans SET until_version = ? WHERE until_version IS NULL AND EXISTS "
                "(SELECT 1 FROM bucket_spans s WHERE s.first_version = ? AND s.until_version = ? "
                "AND s.kind = bucket_spans.kind AND s.tier = bucket_spans.tier "
                "AND s.bucket_id = bucket_spans.bucket_id)",
                (version, version, version),
            )
            # ... and so does that of every bucket it does not carry ...
            kept = [(k, t, n) for (k, t), n in (carry or {}).items()]
            carried = " OR ".join("(kind = ? AND tier = ? AND bucket_id < ?)" for _ in kept) or "FALSE"
            tx.run(
                f"UPDATE bucket_spans SET until_version = ? WHERE until_version IS NULL AND NOT ({carried})",  # noqa: S608
                (version, *(x for triple in kept for x in triple)),
            )
            # ... and its staged buckets become current.
            tx.run(
                "UPDATE bucket_spans SET until_version = NULL WHERE first_version = ? AND until_version = ?",
                (version, version),
            )
            if changes_upto is not None:
                tx.run("DELETE FROM publish_log WHERE seq <= ?", (changes_upto,))
            tx.many(_SET_META, sorted((meta or {}).items()))

        self._write(audit, fn)

    @staticmethod
    def _check_newer(tx: Tx, version: int, what: str) -> None:
        row = tx.one("SELECT max(version) FROM publications")
        latest = row[0] if row else None
        if latest is not None and version <= latest:
            raise StoreError(f"{what} version {version} is not newer than the stored {latest}")

    @staticmethod
    def _stage(tx: Tx, version: int, buckets: Sequence[tuple[str, int, int, bytes]]) -> None:
        tx.insert(
            "bucket_data",
            (("kind", "text"), ("tier", "small"), ("bucket_id", "int"), ("version", "int"), ("data", "blob")),
            [(k, t, b, version, d) for k, t, b, d in buckets],
        )
        tx.insert(
            "bucket_spans",
            _SPAN_COLUMNS,
            [(k, t, b, version, version, hashlib.sha256(d).digest()) for k, t, b, d in buckets],
        )

    def stage_buckets(self, version: int, buckets: Iterable[tuple[str, int, int, bytes]]) -> int:
        batch = list(buckets)

        def fn(tx: Tx) -> int:
            self._check_newer(tx, version, "publication")
            self._stage(tx, version, batch)
            return len(batch)

        return self._run(fn)

    def drop_staged_buckets(self) -> int:
        def fn(tx: Tx) -> int:
            tx.run(
                "DELETE FROM bucket_data WHERE EXISTS (SELECT 1 FROM bucket_spans s "
                "WHERE s.until_version = s.first_version AND s.first_version = bucket_data.version "
                "AND s.kind = bucket_data.kind AND s.tier = bucket_data.tier "
                "AND s.bucket_id = bucket_data.bucket_id)"
            )
            return tx.run("DELETE FROM bucket_spans WHERE until_version = first_version")

        return self._run(fn)

    def current_bucket_hashes(self, kind: str, tier: int, count: int) -> bytes:
        out = bytearray(32 * max(count, 0))
        rows = self._query(
            "SELECT bucket_id, sha256 FROM bucket_spans WHERE kind = ? AND tier = ? AND bucket_id < ? "
            "AND until_version IS NULL AND sha256 IS NOT NULL",
            (kind, tier, count),
        )
        for bucket, digest in rows:
            out[32 * int(bucket) : 32 * int(bucket) + 32] = bytes(digest)
        return bytes(out)

    def latest_version(self) -> int | None:
        row = self._first("SELECT max(version) FROM publications")
        return None if row is None or row[0] is None else int(row[0])

    def latest_manifest(self) -> bytes | None:
        return self._blob("SELECT manifest FROM publications ORDER BY version DESC LIMIT 1")

    def manifest(self, version: int) -> bytes | None:
        return self._blob("SELECT manifest FROM publications WHERE version = ?", (version,))

    def manifests_after(self, version: int, *, limit: int) -> list[tuple[int, bytes]]:
        if limit < 0:
            raise InputError(f"limit must not be negative, got {limit}")
        rows = self._query(
            "SELECT version, manifest FROM publications WHERE version > ? ORDER BY version LIMIT ?",
            (version, limit),
        )
        return [(int(v), bytes(m)) for v, m in rows]

    def adopt_manifest(self, version: int, manifest: bytes, *, audit: Sequence[AuditEvent] = ()) -> None:
        def fn(tx: Tx) -> None:
            self._check_newer(tx, version, "manifest")
            tx.run(
                "INSERT INTO publications (version, manifest, pruned) VALUES (?, ?, TRUE)",
                (version, manifest),
            )

        self._write(audit, fn)

    def get_filter(self, version: int, kind: str, tier: int) -> bytes | None:
        return self._blob(
            "SELECT data FROM publication_filters WHERE version = ? AND kind = ? AND tier = ?",
            (version, kind, tier),
        )

    def get_bucket(self, version: int, kind: str, tier: int, bucket_id: int) -> bytes | None:
        return self._blob(
            "SELECT d.data FROM publications p JOIN bucket_spans s ON s.first_version <= p.version "
            "AND (s.until_version IS NULL OR s.until_version > p.version) "
            "JOIN bucket_data d ON d.kind = s.kind AND d.tier = s.tier AND d.bucket_id = s.bucket_id "
            "AND d.version = s.first_version "
            "WHERE p.version = ? AND NOT p.pruned AND s.kind = ? AND s.tier = ? AND s.bucket_id = ?",
            (version, kind, tier, bucket_id),
        )

    def oldest_kept_version(self) -> int | None:
        row = self._first("SELECT min(version) FROM publications WHERE NOT pruned")
        return None if row is None or row[0] is None else int(row[0])

    def prune_publications(self, keep_versions: int) -> int:
        if keep_versions < 1:
            raise InputError(f"keep_versions must be at least 1, got {keep_versions}")

        def fn(tx: Tx) -> int:
            row = tx.one(
                "SELECT min(version) FROM "
                "(SELECT version FROM publications ORDER BY version DESC LIMIT ?) AS kept",
                (keep_versions,),
            )
            oldest_kept = row[0] if row else None
            if oldest_kept is None:
                return 0
            pruned = tx.run(
                "UPDATE publications SET pruned = TRUE WHERE version < ? AND NOT pruned", (oldest_kept,)
            )
            tx.run("DELETE FROM publication_filters WHERE version < ?", (oldest_kept,))
            # A span that ends at or before the oldest kept version covers no kept version.
            tx.run(
                "DELETE FROM bucket_data WHERE EXISTS (SELECT 1 FROM bucket_spans s "
                "WHERE s.until_version <= ? AND s.until_version > s.first_version "
                "AND s.first_version = bucket_data.version AND s.kind = bucket_data.kind "
                "AND s.tier = bucket_data.tier AND s.bucket_id = bucket_data.bucket_id)",
                (oldest_kept,),
            )
            tx.run(
                "DELETE FROM bucket_spans WHERE until_version <= ? AND until_version > first_version",
                (oldest_kept,),
            )
            return pruned

        return self._run(fn)

    # rate limiting ----------------------------------------------------------------------------------

    def consume_quota(
        self,
        subject: str,
        amount: int,
        *,
        now: float,
        rate_per_s: float,
        burst: float,
        daily_limit: int,
    ) -> QuotaDecision:
        request = QuotaRequest(subject, amount, rate_per_s, burst, daily_limit)

        def fn(tx: Tx) -> QuotaDecision:
            decision, new = self._quota_step(tx, request, now)
            if new is not None:
                self._quota_put(tx, subject, new)
            return decision

        return self._run(fn)

    def consume_quotas(
        self,
        requests: Sequence[QuotaRequest],
        *,
        now: float,
        audit: Callable[[Sequence[QuotaDecision]], Sequence[AuditEvent]],
    ) -> list[QuotaDecision]:
        wanted = list(requests)
        if len({r.subject for r in wanted}) != len(wanted):
            raise InputError("consume_quotas: a subject appears twice")

        def fn(tx: Tx) -> list[QuotaDecision]:
            # Lock (and read) every row in sorted order first: a stable lock order across writers.
            steps = {r.subject: self._quota_step(tx, r, now) for r in sorted(wanted, key=lambda r: r.subject)}
            decisions: list[QuotaDecision] = []
            for request in wanted:
                decision, _ = steps[request.subject]
                decisions.append(decision)
                if not decision.allowed:
                    return decisions
            for request in wanted:
                new = steps[request.subject][1]
                assert new is not None
                self._quota_put(tx, request.subject, new)
            events = check_events(audit(decisions))
            if events:
                self._append(tx, events)
            return decisions

        return self._run(fn)

    def consume_quota_each(self, requests: Sequence[QuotaRequest], *, now: float) -> list[QuotaDecision]:
        wanted = list(requests)

        def fn(tx: Tx) -> list[QuotaDecision]:
            if self.LOCK_ROW:  # lock every subject's row in sorted order first: no deadlock across writers
                for subject in sorted({r.subject for r in wanted}):
                    self._quota_step(tx, next(r for r in wanted if r.subject == subject), now)
            decisions: list[QuotaDecision] = []
            for request in wanted:  # in order; a repeated subject reads what the earlier one wrote
                decision, new = self._quota_step(tx, request, now)
                if new is not None:
                    self._quota_put(tx, request.subject, new)
                decisions.append(decision)
            return decisions

        return self._run(fn) if wanted else []

    def _quota_step(
        self, tx: Tx, request: QuotaRequest, now: float
    ) -> tuple[QuotaDecision, QuotaState | None]:
        """Read (and on PostgreSQL lock) ``request``'s subject and decide it; nothing written yet."""
        select = f"SELECT {_QUOTA} FROM quotas WHERE subject = ?{self.LOCK_ROW}"  # noqa: S608 - constants
        row = tx.one(select, (request.subject,))
        if row is None and self.LOCK_ROW:  # create the row first, so that concurrent writers lock one row
            tx.run(
                f"INSERT INTO quotas (subject, {_QUOTA}) VALUES (?, ?, ?, ?, 0) "  # noqa: S608
                "ON CONFLICT (subject) DO NOTHING",
                (request.subject, float(request.burst), now, math.floor(now / 86_400)),
            )
            row = tx.one(select, (request.subject,))
        state = QuotaState(*row) if row else None
        return quota_step(
            state,
            request.amount,
            now=now,
            rate_per_s=request.rate_per_s,
            burst=request.burst,
            daily_limit=request.daily_limit,
        )

    @staticmethod
    def _quota_put(tx: Tx, subject: str, new: QuotaState) -> None:
        tx.run(
            f"INSERT INTO quotas (subject, {_QUOTA}) VALUES (?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (subject) DO UPDATE SET tokens = excluded.tokens, "
            "updated_at = excluded.updated_at, day = excluded.day, daily_used = excluded.daily_used",
            (subject, new.tokens, new.updated_at, new.day, new.daily_used),
        )

    # audit log --------------------------------------------------------------------------------------

    def append_audit(self, events: Sequence[AuditEvent]) -> int:
        checked = check_events(events)
        return self._run(lambda tx: self._append(tx, checked))

    def audit_size(self) -> int:
        return self._run(self._log_size, mode="statement")

    def _audit_column(self, column: str, start: int, end: int) -> list[bytes]:
        def fn(tx: Tx) -> list[tuple[Any, ...]]:
            check_range(start, end, self._log_size(tx))
            return tx.all(
                f"SELECT idx, {column} FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",  # noqa: S608
                (start, end),
            )

        rows = self._run(fn, mode="snapshot")
        if len(rows) != end - start:
            raise StoreError(f"audit log is missing entries in [{start}, {end}): run integrity_check")
        return [bytes(v) for _, v in rows]

    def audit_entries(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("entry", start, end)

    def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self._audit_column("leaf_hash", start, end)

    def save_tree_head(self, size: int, root: bytes, timestamp: int, signature: bytes) -> None:
        def fn(tx: Tx) -> None:
            # SHARE_ROW: the size cannot be read stale while we check it against the new head.
            log_size = self._log_size(tx, self.SHARE_ROW)
            if size > log_size:
                raise StoreError(f"tree head of size {size} exceeds the audit log size {log_size}")
            tx.run(
                "INSERT INTO tree_heads (size, timestamp, root, signature) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (size, timestamp) DO NOTHING",
                (size, timestamp, root, signature),
            )

        self._run(fn)

    def tree_heads(self) -> list[HeadRow]:
        rows = self._query(f"SELECT {_HEAD} FROM tree_heads ORDER BY size, timestamp")  # noqa: S608
        return [HeadRow(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]

    def latest_tree_head(self) -> HeadRow | None:
        row = self._first(f"SELECT {_HEAD} FROM tree_heads ORDER BY size DESC, timestamp DESC LIMIT 1")  # noqa: S608
        return HeadRow(row[0], bytes(row[1]), row[2], bytes(row[3])) if row else None

    # peers ------------------------------------------------------------------------------------------

    def save_peer_state(
        self,
        peer_id: str,
        signed_manifest: bytes,
        filters: Mapping[tuple[str, int], bytes],
        records: Mapping[tuple[str, int], bytes] | None = None,
        *,
        audit: Sequence[AuditEvent] = (),
        version: int | None = None,
    ) -> bool:
        version_key = f"{PEER_VERSION_META}{peer_id}"

        def fn(tx: Tx) -> bool:
            # The manifest row first, unchanged if it exists: concurrent savers of one peer queue on its
            # row lock (PostgreSQL; SQLite writes one transaction at a time), so the version read next
            # is the latest committed one (READ COMMITTED takes a snapshot per statement).
            tx.run(
                "INSERT INTO peer_manifests (peer_id, manifest) VALUES (?, ?) "
                "ON CONFLICT (peer_id) DO UPDATE SET manifest = peer_manifests.manifest",
                (peer_id, signed_manifest),
            )
            if version is not None:
                row = tx.one("SELECT value FROM meta WHERE key = ?", (version_key,))
                if row is not None and int(row[0]) > version:
                    return False
                tx.run(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (version_key, str(version)),
                )
            tx.run("UPDATE peer_manifests SET manifest = ? WHERE peer_id = ?", (signed_manifest, peer_id))
            for table, blobs in (("peer_filters", filters), ("peer_records", records or {})):
                tx.run(f"DELETE FROM {table} WHERE peer_id = ?", (peer_id,))  # noqa: S608 - constant
                rows = [(peer_id, k, t, d) for (k, t), d in blobs.items()]
                tx.insert(table, (("peer_id", "text"), *BLOB_COLUMNS), rows)
            return True

        return self._write(audit, fn)

    def peer_manifest(self, peer_id: str) -> bytes | None:
        return self._blob("SELECT manifest FROM peer_manifests WHERE peer_id = ?", (peer_id,))

    def peer_manifests(self, peer_ids: Sequence[str]) -> dict[str, bytes]:
        wanted = set(peer_ids)
        rows = self._query("SELECT peer_id, manifest FROM peer_manifests")
        return {str(peer_id): bytes(data) for peer_id, data in rows if peer_id in wanted}

    def peer_filter(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        sql = "SELECT data FROM peer_filters WHERE peer_id = ? AND kind = ? AND tier = ?"
        return self._blob(sql, (peer_id, kind, tier))

    def peer_records(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        sql = "SELECT data FROM peer_records WHERE peer_id = ? AND kind = ? AND tier = ?"
        return self._blob(sql, (peer_id, kind, tier))

    def save_peer_tree_head(
        self, peer_id: str, size: int, root: bytes, timestamp: int, signature: bytes
    ) -> None:
        def fn(tx: Tx) -> None:
            tx.run(
                "INSERT INTO peer_tree_heads (peer_id, size, timestamp, root, signature) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (peer_id, size, timestamp, root, signature),
            )
            tx.run(
                "DELETE FROM peer_tree_heads WHERE peer_id = ? AND (size, timestamp, root) NOT IN "
                "(SELECT size, timestamp, root FROM peer_tree_heads WHERE peer_id = ? "
                " ORDER BY size DESC, timestamp DESC, root DESC LIMIT ?)",
                (peer_id, peer_id, PEER_TREE_HEADS_KEPT),
            )

        self._run(fn)

    def peer_tree_heads(self, peer_id: str) -> list[HeadRow]:
        rows = self._query(
            f"SELECT {_HEAD} FROM peer_tree_heads WHERE peer_id = ? ORDER BY size, timestamp, root",  # noqa: S608
            (peer_id,),
        )
        return [HeadRow(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]

    def reset_peer_tree_heads(
        self,
        peer_id: str,
        head: HeadRow,
        *,
        meta_key: str,
        meta_value: Callable[[str | None, list[HeadRow]], str],
        audit: Sequence[AuditEvent] = (),
    ) -> None:
        def fn(tx: Tx) -> None:
            rows = tx.all(
                f"SELECT {_HEAD} FROM peer_tree_heads WHERE peer_id = ? "  # noqa: S608 - constants
                f"ORDER BY size, timestamp, root{self.LOCK_ROW}",
                (peer_id,),
            )
            dropped = [HeadRow(s, bytes(r), t, bytes(g)) for s, r, t, g in rows]
            before = tx.one("SELECT value FROM meta WHERE key = ?", (meta_key,))
            tx.run(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (meta_key, meta_value(None if before is None else str(before[0]), dropped)),
            )
            tx.run("DELETE FROM peer_tree_heads WHERE peer_id = ?", (peer_id,))
            tx.run(
                "INSERT INTO peer_tree_heads (peer_id, size, timestamp, root, signature) "
                "VALUES (?, ?, ?, ?, ?)",
                (peer_id, head.size, head.timestamp, head.root, head.signature),
            )

        self._write(audit, fn)

    def record_sighting(
        self, peer_id: str, kind: str, tier: int, tag: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> None:
        sql = f"INSERT INTO sightings ({_SIGHTING}) VALUES (?, ?, ?, ?, ?)"  # noqa: S608
        self._change(sql, (peer_id, kind, tier, tag, now), audit)

    def sightings(self, peer_id: str | None = None) -> list[Sighting]:
        where, params = ("", ()) if peer_id is None else (" WHERE peer_id = ?", (peer_id,))
        rows = self._query(f"SELECT {_SIGHTING} FROM sightings{where} ORDER BY id", params)  # noqa: S608
        return [Sighting(p, k, t, bytes(g), a) for p, k, t, g, a in rows]

    # meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._first("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str, *, audit: Sequence[AuditEvent] = ()) -> None:
        self._change(_SET_META, (key, value), audit)

    def swap_meta(
        self,
        key: str,
        expected: str | None,
        value: str,
        *,
        also: Mapping[str, str] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> bool:
        events = check_events(audit)

        def fn(tx: Tx) -> bool:
            # One statement decides: an INSERT that conflicts, or an UPDATE whose WHERE a concurrent
            # writer's committed value fails (PostgreSQL re-checks it after waiting on the row lock).
            if expected is None:
                sql = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
                won = tx.run(sql, (key, value)) == 1
            else:
                won = (
                    tx.run("UPDATE meta SET value = ? WHERE key = ? AND value = ?", (value, key, expected))
                    == 1
                )
            if won:
                tx.many(_SET_META, sorted((also or {}).items()))
                if events:
                    self._append(tx, events)
            return won

        return self._run(fn)

    # wrapped keys -----------------------------------------------------------------------------------

    def add_wrapped_key(
        self, purpose: str, epoch: int, kek: str, blob: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        if purpose not in _KEY_PURPOSES:
            raise InputError(f"purpose: {purpose!r} is not one of {', '.join(_KEY_PURPOSES)}")
        if epoch < 1:
            raise InputError(f"epoch: {epoch} is not >= 1")
        if len(kek) != 64 or any(c not in "0123456789abcdef" for c in kek):
            raise InputError("kek: not 64 lower-case hex digits (the KEK's fingerprint)")
        events = check_events(audit)

        def fn(tx: Tx) -> bool:
            added = (
                tx.run(
                    "INSERT INTO wrapped_keys (purpose, epoch, kek, blob, created_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (purpose, epoch) DO NOTHING",
                    (purpose, epoch, kek, blob, now),
                )
                == 1
            )
            if added and events:
                self._append(tx, events)
            return added

        return self._run(fn)

    def wrapped_key(self, purpose: str, epoch: int) -> WrappedKey | None:
        row = self._first(
            "SELECT kek, blob, created_at FROM wrapped_keys WHERE purpose = ? AND epoch = ?", (purpose, epoch)
        )
        return None if row is None else WrappedKey(purpose, epoch, str(row[0]), bytes(row[1]), int(row[2]))

    def wrapped_key_epochs(self, purpose: str) -> list[int]:
        rows = self._query("SELECT epoch FROM wrapped_keys WHERE purpose = ? ORDER BY epoch", (purpose,))
        return [int(epoch) for (epoch,) in rows]

    # maintenance ------------------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        return self._run(lambda tx: self._engine_problems(tx) + invariant_problems(tx.all), mode="snapshot")
