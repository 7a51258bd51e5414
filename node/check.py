"""Checking indicators against every peer: the I/O around :class:`client.protocol.check.Check`.

The protocol decides (blinding once per value, one evaluation per peer and kind, proof verification,
filter tests, opening records locally); this module only moves bytes: it builds each peer's
:class:`~client.protocol.check.PeerView` from the store (filters and record sets parsed once per
manifest version), sends the machine's evaluations to the peers concurrently within one deadline, and
feeds the replies and failures back. What a peer receives during a check is one ``EvaluateOprf`` per
kind (and per ``max_batch`` values), whatever the answers: no raw indicator, no digest, no bucket
number, no follow-up call on a hit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from client.protocol import errors
from client.protocol.bloom import BloomFilter
from client.protocol.check import Check, PeerView
from client.protocol.manifest import Manifest, SignedManifest, verify_filter, verify_records
from client.protocol.metadata import RecordSet
from client.protocol.model import PeerOutcome, PeerStatus
from client.transport.status import MAX_RETRY_AFTER_MS
from node.groupcommit import GroupCommit
from node.node import Node
from node.peers import Links, printable
from node.scheduler import PeerScheduler
from node.store.base import AuditEvent, QuotaDecision, QuotaRequest

log = logging.getLogger(__name__)

__all__ = ["CheckReport", "Checker", "retry_after_ms"]


def retry_after_ms(seconds: float | None) -> int:
    """A peer's retry-after (:attr:`RateLimited.retry_after_s`) in whole milliseconds for the outcome:
    0 when it did not say or can never pass, at most :data:`MAX_RETRY_AFTER_MS`."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return 0
    return max(1, min(MAX_RETRY_AFTER_MS, math.ceil(seconds * 1000)))


class _Unread:
    """No manifest given to :meth:`Checker.view`: it reads the peer's."""


_UNREAD = _Unread()


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What one check found: per item, one outcome per peer in config order; and per peer and kind the
    values tested against its filter and the hits that opened no record (for the plausibility alert)."""

    outcomes: list[tuple[PeerOutcome, ...]]
    tested: dict[tuple[str, str], int]
    unopened: dict[tuple[str, str], int]


class Checker:
    """Runs checks of canonical indicators against every configured peer within one deadline."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock
        self._lock = threading.Lock()
        #: peer → (its manifest bytes, the manifest, its parsed filters and record sets by (kind, tier))
        self._views: dict[
            str, tuple[bytes, Manifest, dict[tuple[str, int], tuple[BloomFilter, RecordSet]]]
        ] = {}
        #: One sender per peer: concurrent checks' evaluations coalesce while a call is in flight.
        self.scheduler = PeerScheduler(
            links,
            max_batch=lambda: self.node.config.limits.max_batch,
            workers=self.node.workers,
            senders=max(4, 2 * len(node.config.peers)),
            call_rate=lambda: (
                self.node.config.limits.peer_rpc_rate_per_s,
                self.node.config.limits.peer_rpc_burst,
            ),
        )

        #: The checks' quota takes and audit entries: those of checks starting (finishing) together
        #: are committed in one transaction each (:mod:`node.groupcommit`).
        self.quotas: GroupCommit[QuotaRequest, QuotaDecision] = GroupCommit(
            lambda requests: node.store.consume_quota_each(requests, now=node.clock())
        )
        self.audit: GroupCommit[AuditEvent, None] = GroupCommit(self._append_audit)

    def _append_audit(self, events: list[AuditEvent]) -> list[None]:
        self.node.store.append_audit(events)
        return [None] * len(events)

    def close(self) -> None:
        self.scheduler.close()

    # --- views ------------------------------------------------------------------------------------

    def view(
        self, peer_id: str, kinds: Iterable[str] | None = None, *, cached: bytes | _Unread | None = _UNREAD
    ) -> PeerView:
        """The peer's view from its last verified sync, for ``kinds`` (all when None): each filter and
        record set is read, verified against the manifest (hash; size, count and Merkle root) and parsed
        once per manifest, and kept in memory until the peer's next manifest.

        The manifest and each artefact are read in separate transactions: an artefact that does not
        verify against the manifest was replaced by a sync in between, and the view says so (STALE);
        nothing of it is cached. ``cached``: the peer's manifest bytes as the caller read them (None: it
        has none), read from the store when omitted.
        """
        if isinstance(cached, _Unread):
            cached = self.node.store.peer_manifest(peer_id)
        if cached is None:
            return PeerView(peer_id, None)
        with self._lock:
            known = self._views.get(peer_id)
            if known is None or known[0] != cached:
                try:
                    manifest = SignedManifest.from_bytes(cached).manifest
                except errors.EncodingError:  # a manifest of an older format, until the next sync
                    return PeerView(peer_id, None, problem="cached manifest of an older protocol version")
                known = self._views[peer_id] = (cached, manifest, {})
        _, manifest, parsed = known
        wanted = None if kinds is None else set(kinds)
        filters: dict[tuple[str, int], BloomFilter] = {}
        records: dict[tuple[str, int], RecordSet] = {}
        for entry in manifest.entries:
            if wanted is not None and entry.kind not in wanted:
                continue
            key = (entry.kind, entry.tier)
            artefacts = parsed.get(key)
            if artefacts is None:
                data = self.node.store.peer_filter(peer_id, *key)
                blob = self.node.store.peer_records(peer_id, *key)
                if data is None or blob is None:
                    return PeerView(peer_id, manifest, problem="filter or records not cached")
                try:
                    verify_filter(manifest, entry.kind, entry.tier, data)
                    artefacts = (BloomFilter.from_bytes(data), verify_records(manifest, *key, blob))
                except errors.ProtocolError:
                    return PeerView(peer_id, manifest, problem="artefacts changed during the check")
                with self._lock:
                    parsed[key] = artefacts
            filters[key], records[key] = artefacts
        return PeerView(peer_id, manifest, filters, records)

    # --- the check --------------------------------------------------------------------------------

    def check(
        self, items: Sequence[tuple[str, str]], *, deadline_s: float, peers: Collection[str] = ()
    ) -> CheckReport:
        """Check ``(kind, canonical)`` items against every configured peer (or only ``peers``, if given)
        within ``deadline_s``; a peer's refusal carries its retry-after to the outcome."""
        with self.scheduler.checking():
            return self._check(items, deadline_s=deadline_s, peers=peers)

    def _check(
        self, items: Sequence[tuple[str, str]], *, deadline_s: float, peers: Collection[str]
    ) -> CheckReport:
        started = time.monotonic()
        deadline = started + deadline_s
        asked = [p.id for p in self.node.config.peers if not peers or p.id in peers]
        keys: dict[int, bytes | None] = {}

        def hmac_key(epoch: int) -> bytes | None:  # read and derived once per check, not once per peer
            if epoch not in keys:
                keys[epoch] = self.node.hmac_key(epoch)
            return keys[epoch]

        kinds = {kind for kind, _ in items}
        manifests = self.node.store.peer_manifests(asked)  # one read for all peers
        machine = Check(
            items,
            [self.view(p, kinds, cached=manifests.get(p)) for p in asked],
            now=int(self.clock()),
            hmac_key=hmac_key,
            max_batch=self.node.config.limits.max_batch,
        )
        tickets = [self.scheduler.submit(e, deadline=deadline) for e in machine.pending]
        for ticket in tickets:
            evaluation = ticket.evaluation
            try:
                evaluated = ticket.wait()
            except errors.RateLimited as error:
                machine.fail(
                    evaluation,
                    PeerStatus.RATE_LIMITED,
                    printable(str(error)),
                    retry_after_ms=retry_after_ms(error.retry_after_s),
                )
                continue
            except errors.PetandaError as error:
                machine.fail(evaluation, PeerStatus.UNAVAILABLE, printable(str(error)))
                continue
            try:
                machine.receive_verified(evaluation, evaluated)
            except errors.PetandaError as error:
                log.warning("check against %s failed: %s", evaluation.peer_id, printable(str(error)))
        machine.fail_all(PeerStatus.UNAVAILABLE, "deadline exceeded")
        outcomes = machine.outcomes()
        self.node.metrics.checked([kind for kind, _ in items], outcomes, time.monotonic() - started)
        return CheckReport(outcomes, dict(machine.tested), dict(machine.unopened))
