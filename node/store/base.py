"""The node's durable store: the contract every backend MUST meet, and the pure rules behind it.

Raw indicators live only in the store. Every backend (:mod:`node.store.sqlite`,
:mod:`node.store.postgres`, both built on the shared SQL implementation :mod:`node.store.sqlbase`)
implements :class:`Store`; ``tests/test_store_contract.py`` runs one suite against each.
``docs/operators.md`` (section The store) is the operator-facing description. The row types live in
:mod:`node.store.rows` and are re-exported here.

Conventions that hold for every method:

* Times of indicators, sightings and tree heads are integer seconds since the Unix epoch (UTC), taken
  from the ``now`` argument, never from the clock; quota times are float seconds.
* A mutating method runs in ONE transaction. When it returns, its effect is durable (committed with a
  synchronous flush); when it raises, nothing of it is stored.
* ``audit=`` events become entries of the audit log (``sqlbase.chain_entries``: canonical JSON carrying
  their index and the previous entry's leaf hash) in that same transaction, after the event's own
  writes, and are stored iff the method returns normally.
* Driver errors are re-raised as :class:`~client.protocol.errors.StoreError` with a one-line reason; a bad
  argument raises :class:`~client.protocol.errors.InputError` before anything is written.
* Every backend is safe to share between threads (see each backend's docstring for how).
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Final

from client.protocol.errors import InputError
from client.protocol.kinds import TLP_LEVELS
from node.store.rows import (
    DIGEST_LENGTHS,
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
    record_from_row,
)

__all__ = [
    "DIGEST_LENGTHS",
    "PEER_TREE_HEADS_KEPT",
    "AuditEvent",
    "ChangedRow",
    "DigestItem",
    "HeadRow",
    "IndicatorRecord",
    "IndicatorRow",
    "PublishRow",
    "QuotaDecision",
    "QuotaRequest",
    "QuotaState",
    "RecordBatch",
    "SealedItem",
    "SealingRow",
    "Sighting",
    "StateCounts",
    "Store",
    "UpsertResult",
    "WrappedKey",
    "dedupe_digests",
    "dedupe_rows",
    "leaf_hash",
    "merge_rows",
    "quota_step",
    "record_from_row",
    "tlp_rank",
]

_SECONDS_PER_DAY: Final = 86_400

#: How many signed tree heads of one peer the store keeps (the latest by size, then timestamp).
PEER_TREE_HEADS_KEPT: Final = 64


def leaf_hash(entry: bytes) -> bytes:
    """Return the RFC 9162 leaf hash of an audit entry: ``SHA-256(0x00 || entry)``."""
    return hashlib.sha256(b"\x00" + entry).digest()


def tlp_rank(tlp: str) -> int:
    """Return the restrictiveness of a TLP 2.0 marking, 0 (CLEAR) to 4 (RED)."""
    try:
        return TLP_LEVELS.index(tlp)
    except ValueError:
        raise InputError(f"unknown TLP marking {tlp!r}; expected one of: {', '.join(TLP_LEVELS)}") from None


# --- pure rules shared by the backends ----------------------------------------------------------------


def merge_rows(old: IndicatorRow, new: IndicatorRow) -> IndicatorRow:
    """Merge two rows of the same indicator by the store's merge rule (``new`` arrived later).

    ``first_seen`` = min, ``last_seen`` = max, ``reports`` = max, ``confidence`` = max, ``tlp`` = the
    more restrictive; ``category``, ``expires_at`` and ``source`` come from the row with the greater
    ``last_seen`` (``new`` on a tie). Digests are united, ``new`` winning per ``(epoch, tier)``. The SQL
    of every backend implements exactly this rule; the contract tests compare the two.
    """
    newer = new if new.last_seen >= old.last_seen else old
    return IndicatorRow(
        kind=new.kind,
        canonical=new.canonical,
        category=newer.category,
        first_seen=min(old.first_seen, new.first_seen),
        last_seen=max(old.last_seen, new.last_seen),
        confidence=max(old.confidence, new.confidence),
        tlp=new.tlp if tlp_rank(new.tlp) >= tlp_rank(old.tlp) else old.tlp,
        reports=max(old.reports, new.reports),
        expires_at=newer.expires_at,
        source=newer.source,
        digests={**old.digests, **new.digests} if old.digests else new.digests,
    )


def dedupe_rows(rows: Iterable[IndicatorRow]) -> list[IndicatorRow]:
    """Merge rows of a batch that name the same indicator, sorted by ``(kind, canonical)``.

    Sorting gives every writer the same lock order, so two concurrent batches cannot deadlock.
    """
    merged: dict[tuple[str, str], IndicatorRow] = {}
    for row in rows:
        key = (row.kind, row.canonical)
        prev = merged.get(key)
        merged[key] = row if prev is None else merge_rows(prev, row)
    return [merged[k] for k in sorted(merged)]


def dedupe_digests(items: Iterable[DigestItem]) -> list[DigestItem]:
    """Keep the last item per ``(kind, canonical, epoch, tier)``, sorted (a stable lock order)."""
    last = {(i.kind, i.canonical, i.epoch, i.tier): i for i in (DigestItem(*item) for item in items)}
    return [last[k] for k in sorted(last)]


def quota_step(
    state: QuotaState | None,
    amount: int,
    *,
    now: float,
    rate_per_s: float,
    burst: float,
    daily_limit: int,
) -> tuple[QuotaDecision, QuotaState | None]:
    """Decide one quota request; return the decision and the state to store (None: store nothing).

    A token bucket (capacity ``burst``, refilled at ``rate_per_s``) and a counter per UTC day. A refused
    request changes nothing. A clock that goes backwards refills nothing and never rewinds the bucket.
    """
    if amount <= 0:
        raise InputError(f"quota amount must be positive, got {amount}")
    if rate_per_s < 0 or burst <= 0 or daily_limit < 0:
        raise InputError("quota limits must be rate_per_s >= 0, burst > 0, daily_limit >= 0")
    day = math.floor(now / _SECONDS_PER_DAY)
    if state is None:
        state = QuotaState(tokens=float(burst), updated_at=now, day=day, daily_used=0)
    elapsed = max(0.0, now - state.updated_at)
    tokens = min(float(burst), state.tokens + elapsed * rate_per_s)
    used = state.daily_used if state.day == day else 0
    if state.day > day:  # the clock went back across midnight: keep the later day's count
        day, used = state.day, state.daily_used

    waits: list[float] = []
    if used + amount > daily_limit:
        waits.append(math.inf if amount > daily_limit else (day + 1) * _SECONDS_PER_DAY - now)
    if tokens < amount:
        if amount > burst or rate_per_s == 0:
            waits.append(math.inf)
        else:
            waits.append((amount - tokens) / rate_per_s)
    if waits:
        return QuotaDecision(False, max(waits), used, tokens), None
    tokens -= amount
    used += amount
    new = QuotaState(tokens=tokens, updated_at=max(now, state.updated_at), day=day, daily_used=used)
    return QuotaDecision(True, 0.0, used, tokens), new


# --- the contract -------------------------------------------------------------------------------------


class Store(abc.ABC):
    """The node's durable store. Every method here is part of the contract all backends MUST meet."""

    # indicators and digests -------------------------------------------------------------------------

    @abc.abstractmethod
    def upsert_indicators(
        self, rows: Iterable[IndicatorRow], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> UpsertResult:
        """Insert or merge a batch of indicators and their digests in ONE transaction.

        MUST merge an existing ``(kind, canonical)`` by :func:`merge_rows` (retraction cleared,
        ``updated_at`` = ``now``), store each row's ``digests`` (replacing a digest of the same
        ``(epoch, tier)``), and be durable when it returns. A row that violates a constraint (unknown
        kind, category or TLP, confidence outside 0..100, reports < 1, first_seen > last_seen, a digest
        not 32 or 64 bytes, tier not 1 or 2) MUST make the whole batch fail with ``StoreError``,
        leaving nothing of it.
        """

    @abc.abstractmethod
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
        """Store one batch of a live feed and move its cursor, all in ONE transaction.

        Compare-and-swap on the meta ``key`` (the feed's cursor): when its value is ``expect`` (None:
        absent), MUST upsert ``rows`` as :meth:`upsert_indicators` does, retract every ``(kind,
        canonical)`` of ``retractions`` as :meth:`retract_many` does, set ``key`` to ``value`` and append
        ``audit``, then return the upsert's result and how many were retracted. When the value is another
        (another replica moved the cursor first), MUST write nothing and return None. So a batch is
        stored exactly once, and a cursor is never ahead of what is durably stored.
        """

    @abc.abstractmethod
    def get_indicator(self, kind: str, canonical: str) -> IndicatorRecord | None:
        """Return the stored indicator with its digests, or None."""

    @abc.abstractmethod
    def set_tlp(
        self, kind: str, canonical: str, tlp: str, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        """Set an indicator's TLP marking outright (the only way to relax it); False if not stored."""

    @abc.abstractmethod
    def retract(self, kind: str, canonical: str, *, now: int, audit: Sequence[AuditEvent] = ()) -> bool:
        """Mark an indicator retracted at ``now``; True iff it was stored and not already retracted.

        A retracted indicator MUST NOT be published; a later upsert of it clears the retraction.
        """

    @abc.abstractmethod
    def retract_many(
        self, items: Sequence[tuple[str, str]], *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> int:
        """Retract every ``(kind, canonical)`` of ``items`` as :meth:`retract` does, all in one transaction
        with ``audit``; return how many were stored and not already retracted (a repeat counts once)."""

    @abc.abstractmethod
    def expired(self, *, now: int) -> int:
        """Return how many indicators are expired at ``now`` (``expires_at <= now``, not retracted)."""

    @abc.abstractmethod
    def purge(self, *, before: int, audit: Sequence[AuditEvent] = ()) -> int:
        """Delete indicators (and their digests) retracted or expired before ``before``; return how many."""

    @abc.abstractmethod
    def set_digests(self, items: Iterable[DigestItem]) -> int:
        """Store or replace digests of stored indicators (recomputation after a key rotation).

        All or nothing: an item naming no stored indicator, or an invalid digest, MUST fail the whole
        call with ``StoreError``. Returns the number of items written.
        """

    @abc.abstractmethod
    def iter_needing_digest(self, epoch: int, tier: int, *, now: int) -> Iterator[tuple[str, str]]:
        """Yield ``(kind, canonical)`` of live indicators with no digest for ``(epoch, tier)``."""

    @abc.abstractmethod
    def delete_digests(self, *, epoch_below: int) -> int:
        """Delete digests of epochs below ``epoch_below``; return how many."""

    @abc.abstractmethod
    def delete_tier_digests(self, tier: int) -> int:
        """Delete every digest of ``tier``, of every epoch and kind; return how many (the HMAC tier's,
        computed under a federation secret that was replaced)."""

    @abc.abstractmethod
    def iter_publishable(self, epoch: int, *, now: int) -> Iterator[PublishRow]:
        """Stream the digests of ``epoch`` to publish, ordered by ``(kind, tier, digest)``.

        MUST exclude retracted indicators, expired ones (``expires_at <= now``) and TLP:RED ones. MUST
        stream from one consistent snapshot without loading all rows into memory, and MUST NOT hold a
        transaction of the calling thread's other store calls open (it uses its own connection).
        """

    @abc.abstractmethod
    def iter_sealing(self, epoch: int, *, now: int, stale_only: bool = False) -> Iterator[SealingRow]:
        """Stream the rows of :meth:`iter_publishable` (same rules and guarantees) in the order the
        store reads fastest, not by digest, each with its indicator id, the key of its metadata now, and
        the sealed record cached by :meth:`cache_sealed` if it was cached under that same key and digest
        (else None: the row is new, or its metadata or digest changed since). With ``stale_only`` only
        the rows whose record is None are streamed: those a publication must seal."""

    @abc.abstractmethod
    def publish_counts(self, epoch: int, *, now: int) -> dict[tuple[str, int, str], int]:
        """Count the rows of :meth:`iter_publishable` per ``(kind, tier, tlp)`` (only non-zero counts)."""

    @abc.abstractmethod
    def iter_records(
        self, epoch: int, kind: str, tier: int, *, now: int, withheld: Collection[str], batch: int
    ) -> Iterator[RecordBatch]:
        """Stream the rows of :meth:`iter_publishable` of ``(kind, tier)`` whose TLP is not in
        ``withheld`` and whose sealed record is cached under the key of their metadata now (rows that
        still need sealing are left out), ordered by sealed record, which is tag order, in batches of at
        most ``batch`` rows (>= 1; InputError otherwise). Same snapshot and connection guarantees as
        :meth:`iter_publishable`; every batch carries the number of rows of the whole stream."""

    @abc.abstractmethod
    def change_mark(self) -> int:
        """The sequence number of the latest entry of the change log (0 when it is empty).

        Every change to indicators and digests (inserted, updated, retracted, deleted, a digest replaced)
        MUST be logged in its own transaction, whatever method made it. When this returns, every entry
        up to the mark MUST be committed and visible to reads that start afterwards, and every later
        change MUST get a greater number (PostgreSQL waits for the writers in flight)."""

    @abc.abstractmethod
    def iter_changed(
        self, epoch: int, *, upto: int, now: int, expired_after: int | None
    ) -> Iterator[ChangedRow]:
        """Stream the digest rows of ``epoch`` of every indicator the change log names up to ``upto``,
        and (when ``expired_after`` is not None) of every indicator whose expiry lies between
        ``expired_after`` and ``now`` (either order, the later end included): what may have entered,
        left or changed in a publication since the one at ``expired_after``. Each row says whether it is
        publishable at ``now`` and carries its cached record as :meth:`iter_sealing` does. Same snapshot
        and connection guarantees as :meth:`iter_publishable`; a row may come more than once."""

    @abc.abstractmethod
    def gone_digests(self, epoch: int, *, upto: int) -> list[tuple[str, int, bytes]]:
        """The ``(kind, tier, digest)`` of ``epoch`` the change log names up to ``upto`` as having left
        their row after a record was sealed for them (deleted, or replaced by another digest), each once."""

    @abc.abstractmethod
    def current_buckets(self, kind: str, tier: int, ids: Collection[int]) -> dict[int, bytes]:
        """The current bytes (those of the last saved publication) of the buckets ``ids`` of ``(kind,
        tier)``; a bucket it lacks is left out."""

    @abc.abstractmethod
    def withheld_count(self, epoch: int, *, now: int, tlp: str) -> dict[tuple[str, int], int]:
        """Count the rows of :meth:`iter_publishable` whose TLP is ``tlp``, per ``(kind, tier)`` (only
        non-zero counts), without reading the others (AMBER+STRICT is indexed)."""

    @abc.abstractmethod
    def cache_sealed(self, epoch: int, items: Iterable[SealedItem]) -> int:
        """Keep each sealed record with its digest row of ``epoch`` under the key given; return how many
        rows took one. A row gone meanwhile is skipped. The records are a cache: a wrong one is never
        returned once the row's metadata or digest changes, since :meth:`iter_sealing` compares keys.
        """

    @abc.abstractmethod
    def lookup_digest(
        self, epoch: int, tier: int, kind: str, digest: bytes, *, now: int
    ) -> PublishRow | None:
        """Return the publishable row with this digest, or None (same exclusions as publishing)."""

    @abc.abstractmethod
    def counts(self, *, now: int) -> dict[str, StateCounts]:
        """Return, per kind that has stored indicators, how many are active, expired and retracted."""

    @abc.abstractmethod
    def withheld_counts(self, *, now: int) -> dict[str, dict[str, int]]:
        """Return, per kind, how many active indicators (neither retracted nor expired) are withheld
        from publication by their TLP: ``{kind: {"RED": n, "AMBER+STRICT": m}}``, only kinds with one."""

    # publications -----------------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Store a publication atomically. ``version`` MUST be greater than every stored one, and
        exactly ``staged`` buckets MUST be staged for it (StoreError otherwise: another publication
        staged or dropped buckets meanwhile). In the same transaction, the change log entries up to
        ``changes_upto`` (a :meth:`change_mark` taken before the publication read the rows) are deleted
        and every key of ``meta`` is set.

        The buckets of the new version are ``buckets``, those :meth:`stage_buckets` staged for
        ``version``, and, for each ``(kind, tier)`` of ``carry``, the current buckets (those of the last
        saved publication) numbered below ``carry[(kind, tier)]`` that neither replaces: a bucket that
        did not change is not written again. Every other bucket of earlier versions is not part of the
        new one. Earlier versions keep their buckets until :meth:`prune_publications`.
        """

    @abc.abstractmethod
    def stage_buckets(self, version: int, buckets: Iterable[tuple[str, int, int, bytes]]) -> int:
        """Write ``(kind, tier, bucket_id, data)`` buckets of the publication ``version`` that
        :meth:`save_publication` will save, before it is saved (a publication streams its changed
        buckets in batches, one transaction each); return how many. They are part of no version until
        then. ``version`` MUST be greater than every stored one (StoreError)."""

    @abc.abstractmethod
    def drop_staged_buckets(self) -> int:
        """Delete every staged bucket no saved publication took (a publication that failed half way
        left them); return how many."""

    @abc.abstractmethod
    def current_bucket_hashes(self, kind: str, tier: int, count: int) -> bytes:
        """The SHA-256 of each of the current buckets ``0 .. count-1`` of ``(kind, tier)`` (those of the
        last saved publication), concatenated (``32 * count`` bytes); 32 zero bytes for a bucket it
        lacks or whose hash is not known."""

    @abc.abstractmethod
    def latest_version(self) -> int | None:
        """Return the highest stored publication version, or None."""

    @abc.abstractmethod
    def latest_manifest(self) -> bytes | None:
        """Return the manifest of the highest stored version, or None."""

    @abc.abstractmethod
    def manifest(self, version: int) -> bytes | None:
        """Return the manifest the node published as ``version``, or None.

        Every published manifest MUST stay readable forever, pruned or not (:meth:`prune_publications`).
        """

    @abc.abstractmethod
    def manifests_after(self, version: int, *, limit: int) -> list[tuple[int, bytes]]:
        """Return ``(version, manifest)`` of the node's own manifests newer than ``version``, oldest
        first, at most ``limit`` of them (pruned versions included); InputError if ``limit`` < 0."""

    @abc.abstractmethod
    def adopt_manifest(self, version: int, manifest: bytes, *, audit: Sequence[AuditEvent] = ()) -> None:
        """Keep a manifest the node signed but whose publication it lost (a restore learnt it back from
        a peer): stored like a pruned publication, readable by :meth:`manifest` and
        :meth:`manifests_after` and counted by :meth:`latest_version`, with no filter or bucket.
        ``version`` MUST be greater than every stored one (StoreError)."""

    @abc.abstractmethod
    def get_filter(self, version: int, kind: str, tier: int) -> bytes | None:
        """Return a published filter, or None (also for a pruned version)."""

    @abc.abstractmethod
    def get_bucket(self, version: int, kind: str, tier: int, bucket_id: int) -> bytes | None:
        """Return the bucket of version ``version``, or None (also for a pruned version). A bucket a
        publication carried unchanged is the same bytes as in the version that wrote it."""

    @abc.abstractmethod
    def oldest_kept_version(self) -> int | None:
        """Return the oldest version whose filters and buckets are kept (not pruned), or None if none.

        Versions from this one to :meth:`latest_version` are served; older ones only by their manifest.
        """

    @abc.abstractmethod
    def prune_publications(self, keep_versions: int) -> int:
        """Drop the filters and buckets of all but the newest ``keep_versions`` (>= 1) publications.

        The manifests of pruned versions MUST be kept (:meth:`manifest`, :meth:`manifests_after`, and
        :meth:`latest_version` still count them). Returns how many versions this call pruned (a version
        already pruned counts once, the first time).
        """

    # rate limiting ----------------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Atomically take ``amount`` from ``subject``'s token bucket and daily quota (UTC day).

        MUST follow :func:`quota_step`, persist across reopening, and be atomic across threads,
        processes and node replicas sharing the database. A refused request consumes nothing.
        """

    @abc.abstractmethod
    def consume_quotas(
        self,
        requests: Sequence[QuotaRequest],
        *,
        now: float,
        audit: Callable[[Sequence[QuotaDecision]], Sequence[AuditEvent]],
    ) -> list[QuotaDecision]:
        """Take every request or none, in one write transaction, and log what was taken with it.

        The requests (distinct subjects) are decided in order by :func:`quota_step`. If one is refused,
        the decisions up to and including it are returned and nothing is consumed or appended. If all
        are allowed, every subject is updated and ``audit(decisions)`` is appended to the audit log in
        the same transaction: one durable commit for a holder's quotas and the audit entry of the call
        they pay for (group commit of a call's writes). MUST be atomic like :meth:`consume_quota`, and
        lock subjects in a stable order (sorted), so concurrent callers cannot deadlock.
        """

    def consume_quota_each(self, requests: Sequence[QuotaRequest], *, now: float) -> list[QuotaDecision]:
        """Decide each request on its own, in order, as :meth:`consume_quota` would one after the other
        (a subject may come more than once: each sees what the ones before it took); one decision per
        request. A backend SHOULD do it in one write transaction (one durable commit for the quota takes
        of concurrent checks: :mod:`node.groupcommit`), locking subjects in a stable order; this default
        runs one :meth:`consume_quota` each.
        """
        return [
            self.consume_quota(
                r.subject,
                r.amount,
                now=now,
                rate_per_s=r.rate_per_s,
                burst=r.burst,
                daily_limit=r.daily_limit,
            )
            for r in requests
        ]

    # audit log --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def append_audit(self, events: Sequence[AuditEvent]) -> int:
        """Append events on their own; return the index of the first entry (the log size if empty).

        Indices MUST be consecutive from 0 with no gap or duplicate, even with concurrent writers.
        """

    @abc.abstractmethod
    def audit_size(self) -> int:
        """Return the number of audit entries."""

    @abc.abstractmethod
    def audit_entries(self, start: int, end: int) -> list[bytes]:
        """Return entries ``start`` (inclusive) to ``end`` (exclusive); InputError if out of range."""

    @abc.abstractmethod
    def audit_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Return the RFC 9162 leaf hashes of entries ``start`` to ``end`` (exclusive)."""

    @abc.abstractmethod
    def save_tree_head(self, size: int, root: bytes, timestamp: int, signature: bytes) -> None:
        """Store a signed tree head of our log; ``size`` MUST NOT exceed the log size (StoreError).

        Storing the same ``(size, timestamp)`` twice MUST be a no-op: two replicas of a node may sign the
        same head in the same second (Ed25519 is deterministic, so it is the same head).
        """

    @abc.abstractmethod
    def tree_heads(self) -> list[HeadRow]:
        """Return our signed tree heads by ``(size, timestamp)``."""

    @abc.abstractmethod
    def latest_tree_head(self) -> HeadRow | None:
        """Return our tree head with the greatest ``(size, timestamp)``, or None."""

    # peers ------------------------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Replace a peer's cached manifest, filters and record sets in ONE transaction.

        ``filters`` and ``records`` map ``(kind, tier)`` to opaque bytes (a filter; the peer's sealed
        record set of that filter). Every filter and record set of the peer not given here MUST be
        dropped; ``records=None`` stores no record set at all.

        With ``version`` (the manifest's version) the save is a compare-and-swap: it MUST NOT replace a
        state saved with a higher version (replicas sharing one store may finish syncs of one peer out
        of order), and it MUST decide under a lock that concurrent savers of the peer queue on. Returns
        whether the state was saved (``audit`` is appended either way).
        """

    @abc.abstractmethod
    def peer_manifest(self, peer_id: str) -> bytes | None:
        """Return the peer's cached manifest, or None."""

    def peer_manifests(self, peer_ids: Sequence[str]) -> dict[str, bytes]:
        """The cached manifests of ``peer_ids`` (those that have one), read in one statement where the
        backend can: a check reads its peers' manifests once, not one transaction each. This default
        calls :meth:`peer_manifest` per peer."""
        found = {peer_id: self.peer_manifest(peer_id) for peer_id in peer_ids}
        return {peer_id: manifest for peer_id, manifest in found.items() if manifest is not None}

    @abc.abstractmethod
    def peer_filter(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        """Return the peer's cached filter, or None."""

    @abc.abstractmethod
    def peer_records(self, peer_id: str, kind: str, tier: int) -> bytes | None:
        """Return the peer's cached record set of ``(kind, tier)``, or None."""

    @abc.abstractmethod
    def save_peer_tree_head(
        self, peer_id: str, size: int, root: bytes, timestamp: int, signature: bytes
    ) -> None:
        """Keep a peer's signed tree head; identical ones are stored once, conflicting ones all kept.

        MUST keep at most the latest :data:`PEER_TREE_HEADS_KEPT` heads of the peer, by ``(size,
        timestamp)`` (then root): older ones, the new one included if it is older, are dropped in the
        same transaction. (Replicas of a node saving heads of one peer at the same instant may leave
        one head too many until the next save.)
        """

    @abc.abstractmethod
    def peer_tree_heads(self, peer_id: str) -> list[HeadRow]:
        """Return the peer's tree heads by ``(size, timestamp, root)``."""

    @abc.abstractmethod
    def reset_peer_tree_heads(
        self,
        peer_id: str,
        head: HeadRow,
        *,
        meta_key: str,
        meta_value: Callable[[str | None, list[HeadRow]], str],
        audit: Sequence[AuditEvent] = (),
    ) -> None:
        """Replace every kept tree head of the peer by ``head`` alone (the peer rolled its log back
        under a recovery statement), in ONE transaction that also sets ``meta_key`` to
        ``meta_value(its value before, the heads dropped)`` (the evidence) and appends ``audit``.

        ``meta_value`` MUST be called with what the transaction read (it may be called again if the
        transaction is retried), so no head saved meanwhile is dropped without being in the evidence.
        """

    @abc.abstractmethod
    def record_sighting(
        self, peer_id: str, kind: str, tier: int, tag: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> None:
        """Record a sighting a peer reported."""

    @abc.abstractmethod
    def sightings(self, peer_id: str | None = None) -> list[Sighting]:
        """Return recorded sightings (of one peer if given), oldest first."""

    # meta -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Return a meta value, or None."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str, *, audit: Sequence[AuditEvent] = ()) -> None:
        """Set a meta value."""

    @abc.abstractmethod
    def swap_meta(
        self,
        key: str,
        expected: str | None,
        value: str,
        *,
        also: Mapping[str, str] | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> bool:
        """Set ``key`` to ``value`` only if it holds ``expected`` now (``None``: only if absent), and then
        also set every key of ``also``; return whether it did.

        MUST be one atomic compare-and-swap across threads, processes and replicas: of several callers
        swapping the same ``expected`` away, exactly one gets True. When it returns False nothing is
        written, ``audit`` included.
        """

    # wrapped keys -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_wrapped_key(
        self, purpose: str, epoch: int, kek: str, blob: bytes, *, now: int, audit: Sequence[AuditEvent] = ()
    ) -> bool:
        """Store the key of ``(purpose, epoch)`` wrapped under the KEK of fingerprint ``kek`` (64 hex
        digits), unless that key exists already; return whether it was stored.

        A wrapped key is never replaced or changed (the schema refuses an UPDATE): of several callers
        adding one ``(purpose, epoch)`` exactly one stores its row, and the others find it with
        :meth:`wrapped_key`. ``audit`` is appended only when the row is stored. ``purpose`` is ``oprf``
        (an OPRF seed per epoch) or ``hmac`` (the federation secret, per generation; the schema refuses
        another); ``epoch`` >= 1.
        """

    @abc.abstractmethod
    def wrapped_key(self, purpose: str, epoch: int) -> WrappedKey | None:
        """The wrapped key of ``(purpose, epoch)``, or None."""

    @abc.abstractmethod
    def wrapped_key_epochs(self, purpose: str) -> list[int]:
        """The epochs of the wrapped keys of ``purpose``, ascending."""

    # maintenance ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def schema_version(self) -> int:
        """Return the applied schema version."""

    @abc.abstractmethod
    def integrity_check(self) -> list[str]:
        """Return one line per problem found (empty when fine).

        MUST check the database's own integrity where the backend can (SQLite: ``PRAGMA
        integrity_check`` and ``foreign_key_check``) and the invariants: audit indices contiguous from 0
        and matching the size counter, leaf hashes matching entries, no tree head larger than the log,
        no digest of a missing indicator.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection; the store is unusable afterwards. Idempotent."""

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
