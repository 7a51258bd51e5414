"""The federation: pulling peers' signed artefacts (sync) and checking indicators against every peer.

Sync pulls each peer's manifest incrementally (the cursor is the peer's manifest version), verifies it
(signature under the peer's pinned key, node id, version and chain, expiry), downloads and verifies
every filter it lists, and only then replaces the cached copy: a peer that serves something invalid
keeps its last good copy, and the refusal is audited. Tree heads are exchanged on the way, and a peer
whose log is not consistent with what it showed before is recorded as a fork.

A check canonicalises the indicators once and then, for every peer at once and within one deadline:
blinds them, has the peer evaluate them (VOPRF, proof verified), tests the peer's cached filter
locally, and only for a hit fetches the one metadata bucket its tag falls in and decrypts its record.
Kinds the peer publishes on the HMAC tier are tested offline. No raw indicator and no digest ever
leaves the node: only blinded elements, and for a hit a bucket number and, on request, a tag.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client import errors, oprf
from client._proto.petanda.v1 import (
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.auditlog import LogFork, verify_tree_head
from client.bloom import BloomFilter
from client.canonical import normalize
from client.digest import derive_epoch_key, hmac_digest, oprf_input
from client.kinds import TIER_HMAC, TIER_OPRF, kind_code
from client.manifest import (
    FilterIdentity,
    Manifest,
    SignedManifest,
    verify_bucket,
    verify_filter,
    verify_manifest,
)
from client.merkle import verify_consistency
from client.metadata import IndicatorMeta, bucket_id, decode_bucket, open_match, tag_of
from client.tls import channel_options, read_private_file
from node.audit import event
from node.node import Node
from node.rpc import caller
from node.server import kind_to_proto, tier_to_proto, tree_head_from_proto, tree_head_to_proto

log = logging.getLogger(__name__)

__all__ = ["Checker", "InvestigatorServicer", "PeerLink", "PeerOutcome", "Syncer"]

MATCH, NO_MATCH, UNAVAILABLE, RATE_LIMITED, STALE = (
    "MATCH",
    "NO_MATCH",
    "UNAVAILABLE",
    "RATE_LIMITED",
    "STALE",
)
_STATUS_PROTO = {
    MATCH: investigator_pb2.PEER_STATUS_MATCH,
    NO_MATCH: investigator_pb2.PEER_STATUS_NO_MATCH,
    UNAVAILABLE: investigator_pb2.PEER_STATUS_UNAVAILABLE,
    RATE_LIMITED: investigator_pb2.PEER_STATUS_RATE_LIMITED,
    STALE: investigator_pb2.PEER_STATUS_STALE,
}


def _identify(data: bytes) -> FilterIdentity:
    bloom = BloomFilter.from_bytes(data)
    return FilterIdentity(bloom.node_id, bloom.epoch, bloom.kind, bloom.tier)


class PeerLink:
    """One long-lived mutual-TLS channel to a peer, with its stub."""

    def __init__(self, node: Node, peer_id: str) -> None:
        entry = node.config.peer(peer_id)
        if entry is None:
            raise errors.ConfigError(f"{peer_id} is not a configured peer", key="peers")
        tls = node.config.tls
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.ca).read_bytes(),
            private_key=read_private_file(Path(tls.key)),
            certificate_chain=Path(tls.cert).read_bytes(),
        )
        options = list(
            channel_options(
                max_message_bytes=node.config.limits.max_message_bytes,
                keepalive_ms=node.config.limits.keepalive_s * 1000,
            )
        )
        if entry.server_name:
            options.append(("grpc.ssl_target_name_override", entry.server_name))
        self.peer_id = peer_id
        self.channel = grpc.secure_channel(entry.address, credentials, options=options)
        self.stub = peer_pb2_grpc.PeerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


class Links:
    """The node's channels to its peers, opened on first use and reused."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._links: dict[str, PeerLink] = {}
        self._lock = threading.Lock()

    def get(self, peer_id: str) -> PeerLink:
        with self._lock:
            link = self._links.get(peer_id)
            if link is None:
                link = self._links[peer_id] = PeerLink(self._node, peer_id)
            return link

    def close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()


def _grpc_error(peer_id: str, error: grpc.RpcError) -> errors.PetandaError:
    code = error.code() if hasattr(error, "code") else None
    detail = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.RateLimited(f"{peer_id}: {detail}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(f"{peer_id}: {detail}")
    return errors.PeerUnavailable(f"{peer_id}: {code.name if code else 'error'}: {detail}")


# --- sync ---------------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    peer_id: str
    ok: bool
    version: int | None = None
    detail: str = ""


class Syncer:
    """Pulls and verifies every peer's artefacts; keeps the last good copy on any failure."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock

    def sync_all(self) -> list[SyncResult]:
        peers = [p.id for p in self.node.config.peers]
        with futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(peers)))) as pool:
            return list(pool.map(self.sync_peer, peers))

    def _pin(self, peer_id: str, served: bytes) -> bytes:
        known = self.node.peer_signing_key(peer_id)
        if known is None:
            if len(served) != 32:
                raise errors.SignatureError(f"{peer_id} served no signing key")
            self.node.store.set_meta(
                f"peer.{peer_id}.signing_key",
                served.hex(),
                audit=[event("peer.key_pinned", actor=peer_id, role="peer", now=self.clock())],
            )
            return served
        if served and served != known:
            raise errors.SignatureError(f"{peer_id} now serves another signing key than the one pinned")
        return known

    def sync_peer(self, peer_id: str) -> SyncResult:
        now = self.clock()
        timeout = self.node.config.sync.timeout_s
        cached = self.node.store.peer_manifest(peer_id)
        previous = SignedManifest.from_bytes(cached).manifest if cached else None
        try:
            stub = self.links.get(peer_id).stub
            response = stub.GetManifest(
                peer_pb2.GetManifestRequest(known_version=previous.version if previous else 0),
                timeout=timeout,
            )
            key = self._pin(peer_id, response.signing_public_key)
            self._exchange_tree_heads(peer_id, stub, key, timeout=timeout, now=now)
            if response.not_modified:
                if previous is not None and now > previous.expires_at:
                    raise errors.ExpiredError(
                        f"{peer_id}: manifest {previous.version} expired and not renewed"
                    )
                return SyncResult(peer_id, True, previous.version if previous else None, "not modified")
            signed = SignedManifest.from_bytes(response.signed_manifest)
            verify_manifest(signed, key, expected_node=peer_id, previous=previous, now=int(now))
            manifest = signed.manifest
            filters = {}
            for entry in manifest.entries:
                data = self._download_filter(stub, manifest, entry.kind, entry.tier, timeout=timeout)
                verify_filter(manifest, entry.kind, entry.tier, data, identify=_identify)
                filters[(entry.kind, entry.tier)] = data
        except grpc.RpcError as error:
            failure = _grpc_error(peer_id, error)
            self._audit_sync(peer_id, "error", now, reason=str(failure))
            return SyncResult(peer_id, False, previous.version if previous else None, str(failure))
        except errors.PetandaError as error:
            self._audit_sync(peer_id, "refused", now, reason=str(error), action="artefact.refused")
            log.warning("sync %s refused: %s", peer_id, error)
            return SyncResult(peer_id, False, previous.version if previous else None, str(error))
        self.node.store.save_peer_state(peer_id, signed.to_bytes(), filters)
        self._audit_sync(peer_id, "ok", now, version=manifest.version, count=manifest.total_count)
        return SyncResult(peer_id, True, manifest.version)

    def _audit_sync(
        self, peer_id: str, result: str, now: float, *, action: str = "sync.pull", **fields: Any
    ) -> None:
        self.node.store.append_audit(
            [event(action, actor="node", role="node", now=now, result=result, peer=peer_id, **fields)]
        )

    def _download_filter(
        self, stub: Any, manifest: Manifest, kind: str, tier: int, *, timeout: float
    ) -> bytes:
        request = peer_pb2.GetFilterRequest(
            version=manifest.version, kind=kind_to_proto(kind), tier=tier_to_proto(tier)
        )
        parts: list[bytes] = []
        received = 0
        total = None
        for chunk in stub.GetFilter(request, timeout=timeout):
            if chunk.offset != received or (total is not None and chunk.total_size != total):
                raise errors.EncodingError(
                    f"filter {kind}/{tier}: chunk at {chunk.offset}, expected {received}"
                )
            total = chunk.total_size
            if received + len(chunk.data) > total or total > self.node.config.limits.max_message_bytes * 64:
                raise errors.EncodingError(f"filter {kind}/{tier}: larger than announced or allowed")
            parts.append(chunk.data)
            received += len(chunk.data)
        if total is None or received != total:
            raise errors.EncodingError(f"filter {kind}/{tier}: incomplete ({received} of {total} bytes)")
        return b"".join(parts)

    def _exchange_tree_heads(
        self, peer_id: str, stub: Any, key: bytes, *, timeout: float, now: float
    ) -> None:
        known = self.node.store.peer_tree_heads(peer_id)
        last = max(known, key=lambda h: (h.size, h.timestamp)) if known else None
        mine = self.node.audit.latest()
        response = stub.ExchangeTreeHead(
            peer_pb2.ExchangeTreeHeadRequest(
                head=tree_head_to_proto(mine), known_size=last.size if last else 0
            ),
            timeout=timeout,
        )
        theirs = tree_head_from_proto(response.head)
        if theirs.node_id != peer_id:
            raise errors.WrongNodeError(f"{peer_id} sent the tree head of {theirs.node_id}")
        verify_tree_head(theirs, Ed25519PublicKey.from_public_bytes(key))
        try:
            if last is not None:
                if theirs.tree_size < last.size:
                    raise LogFork(f"log shrank from {last.size} to {theirs.tree_size}")
                verify_consistency(
                    last.size, theirs.tree_size, last.root, theirs.root_hash, list(response.consistency_proof)
                )
        except (LogFork, errors.ConsistencyProofError) as fork:
            self.node.record_fork(peer_id, str(fork), now=now)
            raise errors.ChainError(f"{peer_id} audit log fork: {fork}") from None
        self.node.accept_peer_tree_head(peer_id, theirs, now=now)


def start_sync_loop(syncer: Syncer, stop: threading.Event, *, interval_s: float) -> threading.Thread:
    """Sync every peer now and then every ``interval_s`` until ``stop`` is set (a daemon thread)."""

    def loop() -> None:
        while not stop.is_set():
            try:
                for result in syncer.sync_all():
                    if not result.ok:
                        log.warning("sync %s: %s", result.peer_id, result.detail)
            except Exception:  # a sync bug must not kill the server; it is logged and retried
                log.exception("sync loop")
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, name="sync", daemon=True)
    thread.start()
    return thread


# --- check --------------------------------------------------------------------------------------------


@dataclass
class PeerOutcome:
    """One peer's answer for one indicator."""

    peer_id: str
    status: str
    meta: IndicatorMeta | None = None
    tag: bytes = b""
    tier: int = 0
    version: int = 0
    detail: str = ""


@dataclass
class CheckedIndicator:
    index: int
    kind: str
    canonical: str = ""
    error: str = ""
    peers: list[PeerOutcome] = field(default_factory=list)


class Checker:
    """Fans a batch of canonical indicators out to every peer within one deadline."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock
        self._lock = threading.Lock()
        self._filters: dict[tuple[str, str, int], tuple[int, BloomFilter]] = {}
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max(4, 2 * len(node.config.peers)), thread_name_prefix="check"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def check(self, items: Sequence[tuple[str, str]], *, deadline_s: float) -> list[list[PeerOutcome]]:
        """Per ``(kind, canonical)`` item, one :class:`PeerOutcome` per configured peer, in config order."""
        start = time.monotonic()
        peers = [p.id for p in self.node.config.peers]
        jobs = {peer: self._pool.submit(self._check_peer, peer, items, start + deadline_s) for peer in peers}
        futures.wait(jobs.values(), timeout=deadline_s)
        per_peer: dict[str, list[PeerOutcome]] = {}
        for peer, job in jobs.items():
            if job.done() and job.exception() is None:
                per_peer[peer] = job.result()
            else:
                detail = "deadline exceeded" if not job.done() else f"error: {job.exception()}"
                if not job.done():
                    job.cancel()
                per_peer[peer] = [PeerOutcome(peer, UNAVAILABLE, detail=detail) for _ in items]
        return [[per_peer[peer][i] for peer in peers] for i in range(len(items))]

    def _check_peer(
        self, peer_id: str, items: Sequence[tuple[str, str]], deadline: float
    ) -> list[PeerOutcome]:
        now = self.clock()
        cached = self.node.store.peer_manifest(peer_id)
        if cached is None:
            return [PeerOutcome(peer_id, STALE, detail="never synced") for _ in items]
        manifest = SignedManifest.from_bytes(cached).manifest
        if now > manifest.expires_at:
            return [PeerOutcome(peer_id, STALE, detail=f"manifest {manifest.version} expired") for _ in items]
        outcomes: list[PeerOutcome | None] = [None] * len(items)
        hmac_kinds = {e.kind for e in manifest.entries if e.tier == TIER_HMAC}
        by_kind: dict[str, list[int]] = {}
        for index, (kind, _canonical) in enumerate(items):
            if manifest.entry(kind, TIER_HMAC if kind in hmac_kinds else TIER_OPRF) is None:
                outcomes[index] = PeerOutcome(
                    peer_id, NO_MATCH, version=manifest.version, detail="kind not published"
                )
            else:
                by_kind.setdefault(kind, []).append(index)
        stub = self.links.get(peer_id).stub
        try:
            for kind, indices in by_kind.items():
                tier = TIER_HMAC if kind in hmac_kinds else TIER_OPRF
                inputs = [items[i][1] for i in indices]
                if tier == TIER_HMAC:
                    key = derive_epoch_key(self.node.federation_secret(), manifest.epoch)
                    digests = [hmac_digest(key, manifest.epoch, kind, c) for c in inputs]
                else:
                    digests = self._oprf(stub, manifest, kind, inputs, deadline)
                found = self._lookup(stub, peer_id, manifest, kind, tier, digests, deadline)
                for index, outcome in zip(indices, found, strict=True):
                    outcomes[index] = outcome
        except grpc.RpcError as error:
            failure = _grpc_error(peer_id, error)
            status = RATE_LIMITED if isinstance(failure, errors.RateLimited) else UNAVAILABLE
            return [
                o if o is not None else PeerOutcome(peer_id, status, detail=str(failure)) for o in outcomes
            ]
        except errors.PetandaError as error:
            log.warning("check against %s failed: %s", peer_id, error)
            return [
                o if o is not None else PeerOutcome(peer_id, UNAVAILABLE, detail=str(error)) for o in outcomes
            ]
        return [o for o in outcomes if o is not None]

    def _oprf(
        self, stub: Any, manifest: Manifest, kind: str, canonicals: list[str], deadline: float
    ) -> list[bytes]:
        inputs = [oprf_input(kind, c) for c in canonicals]
        outputs: list[bytes] = []
        batch = self.node.config.limits.max_batch
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            blinds, blinded = oprf.blind(chunk, oprf.MODE_VOPRF)
            response = stub.EvaluateOprf(
                peer_pb2.EvaluateOprfRequest(
                    epoch=manifest.epoch, kind=kind_to_proto(kind), blinded_elements=blinded, verifiable=True
                ),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            outputs += oprf.finalize(
                chunk,
                blinds,
                list(response.evaluated_elements),
                oprf.MODE_VOPRF,
                blinded=blinded,
                pk=manifest.oprf_public_key,
                proof=response.proof,
            )
        return outputs

    def _filter(self, peer_id: str, manifest: Manifest, kind: str, tier: int) -> BloomFilter | None:
        """The peer's cached filter for the manifest's version, parsed once and kept in memory."""
        key = (peer_id, kind, tier)
        with self._lock:
            cached = self._filters.get(key)
        if cached is not None and cached[0] == manifest.version:
            return cached[1]
        data = self.node.store.peer_filter(peer_id, kind, tier)
        if data is None:
            return None
        bloom = BloomFilter.from_bytes(data)
        with self._lock:
            self._filters[key] = (manifest.version, bloom)
        return bloom

    def _lookup(
        self,
        stub: Any,
        peer_id: str,
        manifest: Manifest,
        kind: str,
        tier: int,
        digests: list[bytes],
        deadline: float,
    ) -> list[PeerOutcome]:
        """Test ``digests`` against the peer's filter; open the records of the hits, one bucket fetch each."""
        bloom = self._filter(peer_id, manifest, kind, tier)
        if bloom is None:
            return [PeerOutcome(peer_id, STALE, detail="filter not cached") for _ in digests]
        outcomes = [PeerOutcome(peer_id, NO_MATCH, tier=tier, version=manifest.version) for _ in digests]
        entry = manifest.entry(kind, tier)
        assert entry is not None
        hits: dict[int, list[int]] = {}
        for index, hit in enumerate(bloom.contains_many(digests)):
            if hit:
                hits.setdefault(bucket_id(tag_of(digests[index]), entry.prefix_bits), []).append(index)
        for bucket, indices in hits.items():
            response = stub.GetMetadataBucket(
                peer_pb2.GetMetadataBucketRequest(
                    version=manifest.version,
                    kind=kind_to_proto(kind),
                    tier=tier_to_proto(tier),
                    bucket_id=bucket,
                ),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            verify_bucket(manifest, kind, tier, bucket, response.bucket, list(response.proof))
            records = decode_bucket(response.bucket, bucket=bucket, prefix_bits=entry.prefix_bits)
            for index in indices:
                digest = digests[index]
                meta = open_match(
                    digest, records, node_id=peer_id, epoch=manifest.epoch, kind=kind, tier=tier
                )
                if meta is not None:  # None: a Bloom false positive
                    outcomes[index] = PeerOutcome(
                        peer_id, MATCH, meta=meta, tag=tag_of(digest), tier=tier, version=manifest.version
                    )
        return outcomes


# --- the investigator service -------------------------------------------------------------------------


def _meta_to_proto(outcome: PeerOutcome) -> investigator_pb2.MatchMetadata:
    meta = outcome.meta
    assert meta is not None
    return investigator_pb2.MatchMetadata(
        category=meta.category,
        first_seen=meta.first_seen.isoformat(),
        last_seen=meta.last_seen.isoformat(),
        confidence=meta.confidence,
        tlp=meta.tlp,
        reports=meta.reports,
        tag=outcome.tag.hex(),
        tier=tier_to_proto(outcome.tier),
        version=outcome.version,
    )


class InvestigatorServicer(investigator_pb2_grpc.InvestigatorServiceServicer):
    """What a node serves to its own state's investigators: checks and sightings."""

    def __init__(self, node: Node, links: Links | None = None) -> None:
        self.node = node
        self.links = links or Links(node)
        self.checker = Checker(node, self.links, clock=node.clock)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        identity = caller(context)
        limits = self.node.config.limits
        if len(request.queries) > limits.max_batch:
            raise errors.InputError(
                f"queries: {len(request.queries)} is more than the limit {limits.max_batch}"
            )
        results = [CheckedIndicator(i, q.kind) for i, q in enumerate(request.queries)]
        valid: list[CheckedIndicator] = []
        for result, query in zip(results, request.queries, strict=True):
            try:
                result.canonical = normalize(
                    query.kind, query.value, query.region or self.node.config.node.country_region
                )
                valid.append(result)
            except errors.InputError as error:
                result.error = str(error)
        deadline = (request.deadline_ms or limits.check_deadline_ms) / 1000
        outcomes = self.checker.check([(r.kind, r.canonical) for r in valid], deadline_s=deadline)
        for result, peers in zip(valid, outcomes, strict=True):
            result.peers = peers
        self._audit(identity.id, results)
        return investigator_pb2.CheckResponse(
            results=[
                investigator_pb2.IndicatorResult(
                    index=r.index,
                    canonical=r.canonical,
                    error=r.error,
                    peers=[
                        investigator_pb2.PeerResult(
                            peer_id=o.peer_id,
                            status=_STATUS_PROTO[o.status],
                            metadata=_meta_to_proto(o) if o.status == MATCH else None,
                            detail=o.detail,
                        )
                        for o in r.peers
                    ],
                )
                for r in results
            ]
        )

    def _audit(self, actor: str, results: list[CheckedIndicator]) -> None:
        outcomes: dict[str, dict[str, int]] = {}
        kinds: dict[str, int] = {}
        for result in results:
            kinds[result.kind] = kinds.get(result.kind, 0) + 1
            for outcome in result.peers:
                counts = outcomes.setdefault(outcome.peer_id, {})
                counts[outcome.status.lower()] = counts.get(outcome.status.lower(), 0) + 1
        matches = sum(c.get("match", 0) for c in outcomes.values())
        invalid = sum(1 for r in results if r.error)
        self.node.record(
            "investigator.check",
            actor=actor,
            role="investigator",
            kinds=kinds,
            count=len(results),
            invalid=invalid,
            matches=matches,
            outcomes=outcomes,
        )

    def ReportSighting(self, request: Any, context: grpc.ServicerContext) -> Any:
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
            raise _grpc_error(request.peer_id, error) from None
        self.node.record(
            "investigator.sighting",
            actor=identity.id,
            role="investigator",
            peer=request.peer_id,
            kind=request.kind,
            result="ok" if response.recorded else "not_recorded",
        )
        return investigator_pb2.SightingResponse(recorded=response.recorded)
