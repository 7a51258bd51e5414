"""The node's three services, each method thin: decode the request, call one handler, encode the answer.

- :class:`PeerServicer`: what a node serves to the other member nodes (manifests, filters, records,
  OPRF evaluations, sightings, tree heads);
- :class:`InvestigatorServicer`: checks and sightings for the node's own investigators;
- :class:`AuditorServicer`: the audit log for the node's own auditors.

Who may call what is decided before any method runs (:class:`node.rpc.AuthorizationInterceptor`);
errors become status codes through :mod:`client.transport.status`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc

from client._proto.petanda.v1 import (
    auditor_pb2,
    auditor_pb2_grpc,
    common_pb2,
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.protocol import errors
from client.protocol.auditlog import TreeHead
from client.protocol.canonical import normalize
from client.protocol.kinds import kind_code
from client.protocol.manifest import manifest_hash
from client.protocol.model import Outcome, PeerOutcome, Query
from client.protocol.recovery import RECOVERY_VERSION
from client.transport.convert import (
    check_peers_from_proto,
    kind_from_proto,
    kind_to_proto,
    queries_from_proto,
    results_to_proto,
    tier_from_proto,
    tier_to_proto,
    tree_head_from_proto,
    tree_head_to_proto,
)
from client.transport.versions import version_of
from node import recovery
from node.audit import check_fields, event
from node.check import Checker, CheckReport
from node.node import Node
from node.peers import Links, peer_error, printable
from node.rpc import caller
from node.store.base import QuotaRequest

log = logging.getLogger(__name__)

__all__ = ["AuditorServicer", "InvestigatorServicer", "PeerServicer", "uint63"]

#: The largest value a uint64 request field may carry to the store (SQL integers are signed 64-bit).
MAX_STORED_INT = (1 << 63) - 1


def uint63(value: int, name: str) -> int:
    """Return a uint64 request field, refusing a value the store cannot hold (naming the field)."""
    if value > MAX_STORED_INT:
        raise errors.InputError(f"{name}: {value} is larger than 2^63 - 1")
    return value


def _call_version(context: grpc.ServicerContext) -> int:
    """The protocol version the caller speaks on this call (the gate has refused one not served)."""
    return version_of(context.invocation_metadata())


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """What a node serves to the other member nodes."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _peer(self, context: grpc.ServicerContext) -> str:
        identity = caller(context)
        if self.node.config.peer(identity.state) is None:
            raise errors.PermissionDenied(f"{identity.state} is not a configured peer of {self.node.id}")
        return identity.state

    def GetManifest(
        self, request: peer_pb2.GetManifestRequest, context: grpc.ServicerContext
    ) -> peer_pb2.GetManifestResponse:
        peer = self._peer(context)
        known = uint63(request.known_version, "known_version")
        signed = self.node.latest_manifest()
        version = signed.manifest.version
        if known == version:  # counted, written as one aggregated peer.reads entry (node.readlog)
            self.node.reads.note(peer, "GetManifest", None)
            return peer_pb2.GetManifestResponse(
                not_modified=True, signing_public_key=self.node.audit.public_key
            )
        # Every manifest between the caller's and the latest, so that it chain-checks across the gap.
        chain = self.node.manifest_chain(known, version) if 0 < known < version else []
        self.node.record(
            "peer.get_manifest",
            actor=peer,
            role="peer",
            version=version,
            known=known,
            manifest_hash=manifest_hash(signed.manifest).hex(),
            chain=len(chain),
        )
        return peer_pb2.GetManifestResponse(
            signed_manifest=signed.to_bytes(), signing_public_key=self.node.audit.public_key, chain=chain
        )

    def GetFilter(
        self, request: peer_pb2.GetFilterRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        return self._artefact(request, context, "GetFilter", "peer.get_filter", self.node.filter_bytes)

    def GetRecords(
        self, request: peer_pb2.GetRecordsRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        return self._artefact(request, context, "GetRecords", "peer.get_records", self.node.records_bytes)

    def GetDelta(
        self, request: peer_pb2.GetDeltaRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        first, last = uint63(request.from_version, "from_version"), uint63(request.to_version, "to_version")
        data = self.node.delta_bytes(first, last, kind, tier)
        if self.node.reads.note(peer, "GetDelta", (first, last, kind, tier)):
            fields = {"kind": kind, "tier": tier, "version": last, "known": first, "count": len(data)}
            self.node.record("peer.get_delta", actor=peer, role="peer", **fields)
        return self._chunks(data)

    def _artefact(
        self,
        request: peer_pb2.GetFilterRequest | peer_pb2.GetRecordsRequest,
        context: grpc.ServicerContext,
        method: str,
        action: str,
        read: Callable[[int, str, int], bytes],
    ) -> Iterator[common_pb2.Chunk]:
        """Stream one published artefact of (version, kind, tier); a peer's first read of it is audited,
        repeats are counted into one aggregated ``peer.reads`` entry (:mod:`node.readlog`)."""
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        data = read(uint63(request.version, "version"), kind, tier)
        if self.node.reads.note(peer, method, (request.version, kind, tier)):
            self.node.record(
                action,
                actor=peer,
                role="peer",
                kind=kind,
                tier=tier,
                version=request.version,
                count=len(data),
            )
        return self._chunks(data)

    def _chunks(self, data: bytes) -> Iterator[common_pb2.Chunk]:
        """An artefact as a stream of chunks of at most ``limits.chunk_bytes`` (one empty chunk if empty)."""
        size = self.node.config.limits.chunk_bytes
        for offset in range(0, max(len(data), 1), size):
            yield common_pb2.Chunk(offset=offset, total_size=len(data), data=data[offset : offset + size])

    def EvaluateOprf(
        self, request: peer_pb2.EvaluateOprfRequest, context: grpc.ServicerContext
    ) -> peer_pb2.EvaluateOprfResponse:
        peer = self._peer(context)
        kind = kind_from_proto(request.kind)
        evaluated, proof = self.node.evaluate(
            peer,
            request.epoch,
            kind,
            list(request.blinded_elements),
            verifiable=request.verifiable,
            now=self.node.clock(),
        )
        return peer_pb2.EvaluateOprfResponse(epoch=request.epoch, evaluated_elements=evaluated, proof=proof)

    def ReportSighting(
        self, request: peer_pb2.ReportSightingRequest, context: grpc.ServicerContext
    ) -> peer_pb2.ReportSightingResponse:
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        version = uint63(request.version, "version")
        if len(request.tag) != 16:
            raise errors.InputError("tag: must be 16 bytes")
        recorded = self.node.report_sighting(peer, kind, tier, version, request.tag, now=self.node.clock())
        return peer_pb2.ReportSightingResponse(recorded=recorded)

    def ExchangeTreeHead(
        self, request: peer_pb2.ExchangeTreeHeadRequest, context: grpc.ServicerContext
    ) -> peer_pb2.ExchangeTreeHeadResponse:
        peer = self._peer(context)
        theirs = tree_head_from_proto(request.head)
        # Recovery statements travel only in calls of version 3 (a caller of version 2 gets the answer a
        # version-2 node gives, and what it sent in the field is not read).
        v3 = _call_version(context) >= RECOVERY_VERSION
        # A restored caller's own recovery statement first: its shorter log is then no fork.
        if v3:
            recovery.take_statements(
                self.node, list(request.recoveries), via=peer, now=self.node.clock(), only=peer
            )
        self.node.accept_peer_tree_head(peer, theirs, now=self.node.clock(), proven=False)
        mine = self.node.audit.latest()
        known = request.known_size
        self.node.record(
            "peer.exchange_tree_head",
            actor=peer,
            role="peer",
            size=mine.tree_size,
            peer_size=theirs.tree_size,
            known=known,
        )
        # A caller that knows a larger log than this one gets the signed head without a proof: the head
        # itself is the evidence that the log shrank, which the caller records as a fork.
        proof = self.node.consistency_proof(known, mine.tree_size) if 0 < known <= mine.tree_size else []
        # Witness gossip: our latest proven head of every other peer, so that the caller can tell whether
        # that peer shows it the same log as it shows us.
        witnessed = []
        for entry in self.node.config.peers:
            heads = self.node.store.peer_tree_heads(entry.id) if entry.id != peer else []
            if heads:
                h = max(heads, key=lambda h: (h.size, h.timestamp))
                witnessed.append(
                    tree_head_to_proto(TreeHead(entry.id, h.size, h.root, h.timestamp, h.signature))
                )
        # Manifest gossip: the latest manifest we verified of every other peer, as that peer signed it.
        manifests = [
            data
            for entry in self.node.config.peers
            if entry.id != peer and (data := self.node.store.peer_manifest(entry.id)) is not None
        ]
        return peer_pb2.ExchangeTreeHeadResponse(
            head=tree_head_to_proto(mine),
            consistency_proof=proof,
            witnessed=witnessed,
            witnessed_manifests=manifests,
            recoveries=recovery.gossip(self.node, exclude=peer) if v3 else [],
        )

    def GetHeld(
        self, request: peer_pb2.GetHeldRequest, context: grpc.ServicerContext
    ) -> peer_pb2.GetHeldResponse:
        peer = self._peer(context)  # a call of version 2 was refused by the gate (node.rpc.SINCE)
        response = recovery.held_of(self.node, peer)
        self.node.record(
            "peer.get_held",
            actor=peer,
            role="peer",
            size=response.head.tree_size,
            recoveries=len(response.recoveries),
        )
        return response

    def GetCrl(
        self, request: peer_pb2.GetCrlRequest, context: grpc.ServicerContext
    ) -> peer_pb2.GetCrlResponse:
        peer = self._peer(context)
        known = uint63(request.known_number, "known_number")
        holder = self.node.crl
        holder.reload_if_changed()
        number, der = holder.snapshot()
        self.node.record("peer.get_crl", actor=peer, role="peer", number=str(number), known=str(known))
        if der is None or number <= known:
            return peer_pb2.GetCrlResponse(not_modified=True)
        return peer_pb2.GetCrlResponse(crl=der)


class AuditorServicer(auditor_pb2_grpc.AuditorServiceServicer):
    """What a node serves to its own state's auditors."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _who(self, context: grpc.ServicerContext, action: str, **fields: Any) -> None:
        identity = caller(context)
        self.node.record(action, actor=identity.id, role="auditor", **fields)

    def GetTreeHead(
        self, request: auditor_pb2.GetTreeHeadRequest, context: grpc.ServicerContext
    ) -> common_pb2.SignedTreeHead:
        head = self.node.audit.latest()
        self._who(context, "auditor.get_tree_head", size=head.tree_size)
        return tree_head_to_proto(head)

    def GetFreshTreeHead(
        self, request: auditor_pb2.GetFreshTreeHeadRequest, context: grpc.ServicerContext
    ) -> auditor_pb2.FreshTreeHead:
        identity = caller(context)
        fresh = self.node.audit.fresh_head(
            identity.id, interval_s=self.node.config.audit.fresh_head_interval_s
        )
        retry_ms = math.ceil(fresh.retry_after_s * 1000)
        # Written after the head is chosen, so this entry is the first one the next head covers.
        self.node.record(
            "auditor.fresh_tree_head",
            actor=identity.id,
            role="auditor",
            result="rate_limited" if retry_ms else "ok",
            size=fresh.head.tree_size,
            log_size=fresh.log_size,
            signed=int(fresh.signed_now),
        )
        return auditor_pb2.FreshTreeHead(
            head=tree_head_to_proto(fresh.head),
            log_size=fresh.log_size,
            signed_now=fresh.signed_now,
            retry_after_ms=retry_ms,
        )

    def ListTreeHeads(
        self, request: auditor_pb2.ListTreeHeadsRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.SignedTreeHead]:
        heads = self.node.store.tree_heads()
        self._who(context, "auditor.list_tree_heads", count=len(heads))
        for stored in heads:
            yield common_pb2.SignedTreeHead(
                node_id=self.node.id,
                tree_size=stored.size,
                root_hash=stored.root,
                timestamp=stored.timestamp,
                signature=stored.signature,
            )

    def GetEntries(
        self, request: auditor_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[auditor_pb2.AuditEntry]:
        size = self.node.store.audit_size()
        start = uint63(request.start, "start")
        end = min(uint63(request.end, "end"), size)
        if start > end:
            raise errors.InputError(f"start: {start} is past the end ({end}) of the log")
        if end - start > 100_000:
            raise errors.InputError("end: at most 100,000 entries per call")
        self._who(context, "auditor.get_entries", start=start, count=end - start)
        for index, entry in self.node.iter_entries(start, end):
            yield auditor_pb2.AuditEntry(index=index, entry=entry)

    def GetInclusionProof(
        self, request: auditor_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> auditor_pb2.ProofResponse:
        index, size = uint63(request.index, "index"), uint63(request.tree_size, "tree_size")
        if not index < size:
            raise errors.InputError(f"index: {index} is not below tree_size {size}")
        tree = self.node.audit_tree(size)
        self._who(context, "auditor.get_inclusion_proof", index=index, size=size)
        return auditor_pb2.ProofResponse(hashes=tree.inclusion_proof(index, size))

    def GetConsistencyProof(
        self, request: auditor_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> auditor_pb2.ProofResponse:
        first, second = uint63(request.first, "first"), uint63(request.second, "second")
        proof = self.node.consistency_proof(first, second)
        self._who(context, "auditor.get_consistency_proof", first=first, second=second)
        return auditor_pb2.ProofResponse(hashes=proof)

    def GetPublicKey(
        self, request: auditor_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> auditor_pb2.GetPublicKeyResponse:
        self._who(context, "auditor.get_public_key")
        return auditor_pb2.GetPublicKeyResponse(node_id=self.node.id, public_key=self.node.audit.public_key)

    def ListRecoveries(
        self, request: auditor_pb2.ListRecoveriesRequest, context: grpc.ServicerContext
    ) -> auditor_pb2.ListRecoveriesResponse:
        statements = recovery.own_statements(self.node, newest=None)
        self._who(context, "auditor.list_recoveries", count=len(statements))
        return auditor_pb2.ListRecoveriesResponse(statements=statements)


class InvestigatorServicer(investigator_pb2_grpc.InvestigatorServiceServicer):
    """What a node serves to its own state's investigators: checks and sightings."""

    def __init__(self, node: Node, links: Links | None = None) -> None:
        self.node = node
        self.links = links or Links(node)
        self.checker = Checker(node, self.links, clock=node.clock)

    def Check(
        self, request: investigator_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> investigator_pb2.CheckResponse:
        identity = caller(context)
        limits = self.node.config.limits
        queries, deadline_ms = queries_from_proto(request)
        if len(queries) > limits.max_batch:
            raise errors.InputError(f"queries: {len(queries)} is more than the limit {limits.max_batch}")
        only = check_peers_from_proto(request)
        for peer_id in only:
            if self.node.config.peer(peer_id) is None:
                raise errors.InputError(f"peers: {printable(peer_id)!r} is not a peer of this node")
        self._take_quota(identity.id, len(queries))
        canonical: list[str] = []
        refused: list[str] = []
        for query in queries:
            try:
                canonical.append(
                    normalize(query.kind, query.value, query.region or self.node.config.node.country_region)
                )
                refused.append("")
            except errors.InputError as error:
                canonical.append("")
                refused.append(str(error))
        valid = [i for i, why in enumerate(refused) if not why]
        deadline = min(deadline_ms or limits.check_deadline_ms, limits.max_check_deadline_ms) / 1000
        items = [(queries[i].kind, canonical[i]) for i in valid]
        report = (
            self.checker.check(items, deadline_s=deadline, peers=only)
            if only
            else self.checker.check(items, deadline_s=deadline)
        )
        peers: dict[int, tuple[PeerOutcome, ...]] = dict(zip(valid, report.outcomes, strict=True))
        outcomes = [
            Outcome(canonical=canonical[i], error=refused[i], peers=peers.get(i, ()))
            for i in range(len(queries))
        ]
        self._audit(identity.id, queries, outcomes, report)
        return results_to_proto(outcomes)

    def _take_quota(self, actor: str, count: int) -> None:
        """Take ``count`` checks (at least one) from the investigator's rate limit and daily quota.

        Raises:
            RateLimited: refused (audited, with the ``limit``: ``rate`` or ``daily``), naming the limit
                and when to retry (the rate limit: in seconds; the daily quota: at 00:00 UTC); nothing
                was consumed.
        """
        limits = self.node.config.limits
        now = self.node.clock()
        # Taken in one transaction with the takes of the checks starting at the same time.
        decision = self.checker.quotas.submit(
            QuotaRequest(
                f"check:{actor}",
                max(1, count),
                limits.check_rate_per_s,
                limits.check_burst,
                limits.check_daily_quota,
            )
        )
        if decision.allowed:
            return
        wait, used = decision.retry_after_s, decision.daily_used
        daily = used + max(1, count) > limits.check_daily_quota
        self.node.record(
            "investigator.check",
            actor=actor,
            role="investigator",
            result="rate_limited",
            limit="daily" if daily else "rate",
            count=count,
            daily_used=used,
        )
        if daily:
            if not math.isfinite(wait):
                when = f"a batch of {count} can never pass"
            else:
                midnight = datetime.fromtimestamp(now + wait, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                when = f"it resets at 00:00 UTC ({midnight}, in {wait:.0f} s)"
            message = (
                f"daily check quota of {actor} used up ({used} of {limits.check_daily_quota} today, "
                f"{count} asked); {when}"
            )
        else:
            when = (
                f"retry in {wait:.1f} s"
                if math.isfinite(wait)
                else f"a batch of {count} can never pass (burst {limits.check_burst})"
            )
            message = (
                f"check rate limit of {actor} reached ({limits.check_rate_per_s:g}/s, "
                f"burst {limits.check_burst}); {when}"
            )
        raise errors.RateLimited(message, retry_after_s=wait)

    def _audit(
        self, actor: str, queries: Sequence[Query], outcomes: Sequence[Outcome], report: CheckReport
    ) -> None:
        """One ``investigator.check`` entry per call, whatever the answers (its existence and its place
        in the log never depend on them); filter hits that opened no record are counted inside it
        (fields: :func:`node.audit.check_fields`)."""
        self.node.hits.add(report.tested, report.unopened)
        fields = check_fields(queries, outcomes, report.unopened)
        # Committed with the entries of the checks finishing at the same time (node.groupcommit);
        # durable before the answer is returned.
        self.checker.audit.submit(
            event("investigator.check", now=self.node.clock(), actor=actor, role="investigator", **fields)
        )

    def ReportSighting(
        self, request: investigator_pb2.SightingRequest, context: grpc.ServicerContext
    ) -> investigator_pb2.SightingResponse:
        identity = caller(context)
        if self.node.config.peer(request.peer_id) is None:
            raise errors.InputError(f"peer_id: {request.peer_id!r} is not a peer of this node")
        try:
            tag = bytes.fromhex(request.tag)
        except ValueError:
            tag = b""
        if len(tag) != 16:
            raise errors.InputError("tag: must be 32 hex digits (from the check's match metadata)")
        kind_code(request.kind)
        stub = self.links.get(request.peer_id).stub
        try:
            response = stub.ReportSighting(
                peer_pb2.ReportSightingRequest(
                    kind=kind_to_proto(request.kind),
                    tier=tier_to_proto(request.tier),
                    version=request.version,
                    tag=tag,
                    seen_at=int(self.node.clock()),
                ),
                timeout=self.node.config.sync.timeout_s,
            )
        except grpc.RpcError as error:
            raise peer_error(request.peer_id, error) from None
        self.node.record(
            "investigator.sighting",
            actor=identity.id,
            role="investigator",
            peer=request.peer_id,
            kind=request.kind,
            result="ok" if response.recorded else "not_recorded",
        )
        return investigator_pb2.SightingResponse(recorded=response.recorded)
