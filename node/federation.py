"""The federation: pulling peers' signed artefacts (sync) and checking indicators against every peer.

Sync pulls each peer's manifest incrementally (the cursor is the peer's manifest version), verifies it
(signature under the peer's pinned key, node id, version and chain, expiry), downloads and verifies
every filter it lists, and only then replaces the cached copy: a peer that serves something invalid
keeps its last good copy, and the refusal is audited. A peer's signing key is pinned on first contact
only once a manifest and its filters verified under it. Each filter may be at most as large as its
manifest entry's count allows (:func:`filter_size_limit`), and one manifest's filters together at most
:data:`MANIFEST_FILTERS_MAX` bytes, so a peer cannot exhaust our memory.

Tree heads are exchanged on the way, and a peer whose log is not consistent with what it showed before
is recorded as a fork. Witness gossip extends this across parties: the peer also hands over its latest
proven head of every other node, which we compare with our own heads of that node and, at our next
sync with it, prove consistent with the log it shows us; a node that shows two members two logs is
recorded as a fork.

A check canonicalises the indicators once and then, for every peer at once and within one deadline:
blinds them, has the peer evaluate them (VOPRF, proof verified), tests the peer's cached filter
locally, and only for a hit fetches the one metadata bucket its tag falls in and decrypts its record.
Kinds the peer publishes on the HMAC tier are tested offline. No raw indicator and no digest ever
leaves the node: only blinded elements, and for a hit a bucket number and, on request, a tag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import (
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.protocol import errors, oprf
from client.protocol.auditlog import LogFork, TreeHead, verify_tree_head
from client.protocol.bloom import BloomFilter, bloom_parameters
from client.protocol.canonical import normalize
from client.protocol.digest import derive_epoch_key, hmac_digest, oprf_input
from client.protocol.kinds import TIER_HMAC, TIER_OPRF, kind_code
from client.protocol.manifest import (
    FilterEntry,
    FilterIdentity,
    Manifest,
    SignedManifest,
    verify_bucket,
    verify_filter,
    verify_manifest,
)
from client.protocol.merkle import verify_consistency
from client.protocol.metadata import IndicatorMeta, bucket_id, decode_bucket, open_match, tag_of
from client.transport.convert import kind_to_proto, tier_to_proto, tree_head_from_proto, tree_head_to_proto
from client.transport.status import error_class, retry_after_of
from client.transport.tls import channel_options, peer_server_name, read_private_file
from node.audit import event
from node.node import Node
from node.rpc import caller

log = logging.getLogger(__name__)

__all__ = [
    "DETAIL_MAX",
    "FILTER_MAX",
    "MANIFEST_FILTERS_MAX",
    "Checker",
    "InvestigatorServicer",
    "PeerLink",
    "PeerOutcome",
    "Syncer",
    "filter_size_limit",
    "printable",
]

#: Longest peer-supplied text (a gRPC status detail) we copy into an audit entry or a check result.
DETAIL_MAX: Final = 200
#: Absolute ceiling of one downloaded filter, whatever its manifest entry says.
FILTER_MAX: Final = 64 * 2**20
#: Ceiling of all the filters of one manifest together.
MANIFEST_FILTERS_MAX: Final = 256 * 2**20
#: Room for the filter header on top of the bit array.
_FILTER_HEADER_SLACK: Final = 1024
#: No publisher uses a false-positive rate below this: it bounds the size a count can justify.
_FILTER_MIN_RATE: Final = 1e-9
#: Witnessed heads of one node kept until a sync with it settles them.
_WITNESS_PENDING_MAX: Final = 16
_WITNESS_LOCK = threading.Lock()

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


def printable(text: str) -> str:
    """Peer-supplied text made safe to log and audit: non-printable characters replaced by ``?``, at most
    :data:`DETAIL_MAX` characters (an ellipsis marks a cut)."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[: DETAIL_MAX + 1])
    return cleaned if len(cleaned) <= DETAIL_MAX else cleaned[: DETAIL_MAX - 1] + "\u2026"


def filter_size_limit(count: int) -> int:
    """The most bytes a filter of ``count`` indicators may take: the size at a 1e-9 false-positive rate
    plus 1 KiB of header, and never more than :data:`FILTER_MAX`."""
    bits, _k = bloom_parameters(max(count, 1), _FILTER_MIN_RATE)
    return min(bits // 8 + _FILTER_HEADER_SLACK, FILTER_MAX)


def _identify(data: bytes) -> FilterIdentity:
    bloom = BloomFilter.from_bytes(data)
    return FilterIdentity(bloom.node_id, bloom.epoch, bloom.kind, bloom.tier)


class PeerLink:
    """One long-lived mutual-TLS channel to a peer, with its stub.

    The peer's certificate must name it: ``<id>.peer.petanda`` (every peer certificate carries its own),
    unless the peer's config entry gives a ``server_name``. Any member's certificate is valid for the
    CA, so without this check one member could answer for another.
    """

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
        options.append(("grpc.ssl_target_name_override", entry.server_name or peer_server_name(peer_id)))
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
        self._closed = False

    def get(self, peer_id: str) -> PeerLink:
        with self._lock:
            if self._closed:
                raise errors.PeerUnavailable(f"{peer_id}: the node is shutting down")
            link = self._links.get(peer_id)
            if link is None:
                link = self._links[peer_id] = PeerLink(self._node, peer_id)
            return link

    def reset(self) -> None:
        """Close every channel; the next call opens new ones (after a change of the peers' addresses)."""
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()

    def close(self) -> None:
        """Close every channel (cancelling calls in flight); no channel opens afterwards."""
        with self._lock:
            self._closed = True
        self.reset()


def _grpc_error(peer_id: str, error: grpc.RpcError) -> errors.PetandaError:
    """A failed call to a peer as an exception of :data:`client.transport.status.ERROR_OF`, its detail
    made printable; what is neither a refusal nor a rate limit counts as the peer being unavailable."""
    code = error.code() if hasattr(error, "code") else None
    raw = error.details() if hasattr(error, "details") else str(error)
    detail = printable(raw or "no detail")
    cls = error_class(code)
    if cls is errors.RateLimited:
        return errors.RateLimited(f"{peer_id}: {detail}", retry_after_s=retry_after_of(error))
    if cls is errors.PermissionDenied:
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

    def _candidate_key(self, peer_id: str, served: bytes) -> tuple[bytes, bool]:
        """The key to verify the peer's artefacts with, and whether it is new (to pin once they verify)."""
        known = self.node.peer_signing_key(peer_id)
        if known is None:
            if len(served) != 32:
                raise errors.SignatureError(f"{peer_id} served no signing key")
            return served, True
        if served and served != known:
            raise errors.SignatureError(f"{peer_id} now serves another signing key than the one pinned")
        return known, False

    def _pin(self, peer_id: str, key: bytes) -> None:
        self.node.store.set_meta(
            f"peer.{peer_id}.signing_key",
            key.hex(),
            audit=[event("peer.key_pinned", actor=peer_id, role="peer", now=self.clock())],
        )

    def sync_peer(self, peer_id: str) -> SyncResult:
        now = self.clock()
        timeout = self.node.config.sync.timeout_s
        cached = self.node.store.peer_manifest(peer_id)
        previous = SignedManifest.from_bytes(cached).manifest if cached else None
        try:
            stub = self.links.get(peer_id).stub
            # Without a key to check it with, the cached copy is no cursor: ask for the whole manifest.
            pinned = self.node.peer_signing_key(peer_id) is not None
            response = stub.GetManifest(
                peer_pb2.GetManifestRequest(known_version=previous.version if previous and pinned else 0),
                timeout=timeout,
            )
            key, fresh = self._candidate_key(peer_id, response.signing_public_key)
            if not fresh:
                self._exchange_tree_heads(peer_id, stub, key, timeout=timeout, now=now)
            if response.not_modified:
                if fresh or previous is None:
                    raise errors.ManifestError(f"{peer_id} answered 'not modified' to a request for all")
                if now > previous.expires_at:
                    raise errors.ExpiredError(
                        f"{peer_id}: manifest {previous.version} expired and not renewed"
                    )
                return SyncResult(peer_id, True, previous.version, "not modified")
            signed = SignedManifest.from_bytes(response.signed_manifest)
            verify_manifest(signed, key, expected_node=peer_id, previous=previous, now=int(now))
            manifest = signed.manifest
            filters = {}
            budget = MANIFEST_FILTERS_MAX
            for entry in manifest.entries:
                data = self._download_filter(stub, manifest, entry, budget=budget, timeout=timeout)
                budget -= len(data)
                verify_filter(manifest, entry.kind, entry.tier, data, identify=_identify)
                filters[(entry.kind, entry.tier)] = data
            if fresh:  # pinned only now that a manifest and its filters verified under it
                self._pin(peer_id, key)
                self._exchange_tree_heads(peer_id, stub, key, timeout=timeout, now=now)
        except grpc.RpcError as error:
            failure = _grpc_error(peer_id, error)
            self._audit_sync(peer_id, "error", now, reason=str(failure))
            return SyncResult(peer_id, False, previous.version if previous else None, str(failure))
        except errors.PetandaError as error:
            reason = printable(str(error))
            self._audit_sync(peer_id, "refused", now, reason=reason, action="artefact.refused")
            log.warning("sync %s refused: %s", peer_id, reason)
            return SyncResult(peer_id, False, previous.version if previous else None, reason)
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
        self, stub: Any, manifest: Manifest, entry: FilterEntry, *, budget: int, timeout: float
    ) -> bytes:
        """Download one filter, refusing it as soon as it announces or sends more than its entry allows."""
        kind, tier = entry.kind, entry.tier
        limit = filter_size_limit(entry.count)
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
            if total > limit:
                raise errors.EncodingError(
                    f"filter {kind}/{tier}: {total} bytes is more than the {limit} that "
                    f"{entry.count} indicators allow"
                )
            if total > budget:
                raise errors.EncodingError(
                    f"filter {kind}/{tier}: the manifest's filters exceed {MANIFEST_FILTERS_MAX} bytes"
                )
            if received + len(chunk.data) > total:
                raise errors.EncodingError(f"filter {kind}/{tier}: more bytes than the {total} announced")
            parts.append(chunk.data)
            received += len(chunk.data)
        if total is None or received != total:
            raise errors.EncodingError(f"filter {kind}/{tier}: incomplete ({received} of {total} bytes)")
        return b"".join(parts)

    def _exchange_tree_heads(
        self, peer_id: str, stub: Any, key: bytes, *, timeout: float, now: float
    ) -> None:
        """Prove the peer's latest head consistent with the last we kept, settle what others witnessed of
        it, and take in what it witnessed of others.

        Raises:
            ChainError: the peer's log forked (recorded and alerted first).
        """
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
            raise errors.WrongNodeError(f"{peer_id} sent the tree head of {printable(theirs.node_id)}")
        public_key = Ed25519PublicKey.from_public_bytes(key)
        verify_tree_head(theirs, public_key)
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
        self._settle_witnessed(peer_id, stub, public_key, mine, theirs, timeout=timeout, now=now)
        self._take_witnessed(peer_id, list(response.witnessed), now=now)

    # witness gossip ----------------------------------------------------------------------------------

    def _take_witnessed(self, via: str, messages: list[Any], *, now: float) -> None:
        """Check the heads ``via`` proved of other nodes against ours; keep the undecided ones pending."""
        configured = {p.id for p in self.node.config.peers}
        seen: set[str] = set()
        for message in messages[: len(configured)]:
            head = tree_head_from_proto(message)
            node_id = head.node_id
            if node_id in seen or node_id in (self.node.id, via) or node_id not in configured:
                continue
            seen.add(node_id)
            pinned = self.node.peer_signing_key(node_id)
            if pinned is None:
                continue
            try:
                verify_tree_head(head, Ed25519PublicKey.from_public_bytes(pinned))
            except errors.SignatureError as error:
                log.warning("witnessed head of %s from %s ignored: %s", node_id, via, error)
                continue
            same_size = [h for h in self.node.store.peer_tree_heads(node_id) if h.size == head.tree_size]
            if any(h.root == head.root_hash for h in same_size):
                continue
            if same_size:
                self.node.record_fork(
                    node_id,
                    f"{via} witnessed a head of size {head.tree_size} with another root than the one "
                    f"{node_id} showed us",
                    now=now,
                )
                continue
            with _WITNESS_LOCK:
                pending = self._pending(node_id)
                if all((w.tree_size, w.root_hash) != (head.tree_size, head.root_hash) for w, _ in pending):
                    pending.append((head, via))
                    self._save_pending(node_id, pending[-_WITNESS_PENDING_MAX:])

    def _settle_witnessed(
        self,
        peer_id: str,
        stub: Any,
        key: Ed25519PublicKey,
        mine: TreeHead,
        theirs: TreeHead,
        *,
        timeout: float,
        now: float,
    ) -> None:
        """Prove every head others witnessed of ``peer_id`` consistent with ``theirs``, the head just proven.

        A witnessed head larger than ``theirs``, of its size with another root, or that the peer cannot
        prove to be a prefix of ``theirs`` is a fork. One the peer proves only to a newer head (it signed
        one meanwhile) stays pending for the next sync.

        Raises:
            ChainError: a witnessed head shows a fork (recorded and alerted first).
        """
        with _WITNESS_LOCK:
            pending = self._pending(peer_id)
        if not pending:
            return
        settled: list[TreeHead] = []
        forks: list[str] = []
        for head, via in pending:
            fork = ""
            if head.tree_size > theirs.tree_size:
                fork = f"its log shrank from size {head.tree_size}, witnessed by {via}, to {theirs.tree_size}"
            elif head.tree_size == theirs.tree_size:
                if head.root_hash != theirs.root_hash:
                    fork = f"{via} witnessed another root for size {head.tree_size}"
            else:
                response = stub.ExchangeTreeHead(
                    peer_pb2.ExchangeTreeHeadRequest(
                        head=tree_head_to_proto(mine), known_size=head.tree_size
                    ),
                    timeout=timeout,
                )
                latest = tree_head_from_proto(response.head)
                if latest.node_id != peer_id:
                    raise errors.WrongNodeError(
                        f"{peer_id} sent the tree head of {printable(latest.node_id)}"
                    )
                verify_tree_head(latest, key)
                if (latest.tree_size, latest.root_hash) != (theirs.tree_size, theirs.root_hash):
                    if latest.tree_size > theirs.tree_size:
                        continue  # a newer head: settled at the next sync
                    fork = f"two heads within one sync: size {theirs.tree_size}, then {latest.tree_size}"
                else:
                    try:
                        verify_consistency(
                            head.tree_size,
                            latest.tree_size,
                            head.root_hash,
                            latest.root_hash,
                            list(response.consistency_proof),
                        )
                    except errors.ConsistencyProofError as error:
                        fork = (
                            f"the head of size {head.tree_size} witnessed by {via} is not in its log: {error}"
                        )
            settled.append(head)
            if fork:
                forks.append(fork)
                self.node.record_fork(peer_id, fork, now=now)
        with _WITNESS_LOCK:
            done = {(h.tree_size, h.root_hash) for h in settled}
            left = [(h, v) for h, v in self._pending(peer_id) if (h.tree_size, h.root_hash) not in done]
            self._save_pending(peer_id, left)
        if forks:
            raise errors.ChainError(f"{peer_id} audit log fork: {forks[0]}")

    def _pending(self, node_id: str) -> list[tuple[TreeHead, str]]:
        raw = self.node.store.get_meta(f"peer.{node_id}.witnessed")
        return [
            (
                TreeHead(node_id, w["size"], bytes.fromhex(w["root"]), w["ts"], bytes.fromhex(w["sig"])),
                w["via"],
            )
            for w in (json.loads(raw) if raw else [])
        ]

    def _save_pending(self, node_id: str, pending: list[tuple[TreeHead, str]]) -> None:
        value = [
            {
                "size": h.tree_size,
                "root": h.root_hash.hex(),
                "ts": h.timestamp,
                "sig": h.signature.hex(),
                "via": via,
            }
            for h, via in pending
        ]
        self.node.store.set_meta(f"peer.{node_id}.witnessed", json.dumps(value, separators=(",", ":")))


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
            detail = printable(str(error))
            log.warning("check against %s failed: %s", peer_id, detail)
            return [
                o if o is not None else PeerOutcome(peer_id, UNAVAILABLE, detail=detail) for o in outcomes
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

    def _filter(
        self, peer_id: str, manifest: Manifest, kind: str, tier: int
    ) -> tuple[BloomFilter | None, str]:
        """The peer's cached filter for the manifest's version, parsed once and kept in memory; else
        ``None`` and why.

        The manifest and the filter are read in two transactions: a filter whose SHA-256 is not the one
        the manifest signs was replaced by a sync in between, and is neither used nor cached.
        """
        key = (peer_id, kind, tier)
        with self._lock:
            cached = self._filters.get(key)
        if cached is not None and cached[0] == manifest.version:
            return cached[1], ""
        data = self.node.store.peer_filter(peer_id, kind, tier)
        entry = manifest.entry(kind, tier)
        if data is None or entry is None:
            return None, "filter not cached"
        if hashlib.sha256(data).digest() != entry.filter_sha256:
            return None, "filter changed during the check"
        bloom = BloomFilter.from_bytes(data)
        with self._lock:
            self._filters[key] = (manifest.version, bloom)
        return bloom, ""

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
        bloom, why = self._filter(peer_id, manifest, kind, tier)
        if bloom is None:
            return [PeerOutcome(peer_id, STALE, detail=why) for _ in digests]
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
        self._take_quota(identity.id, len(request.queries))
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
        deadline = min(request.deadline_ms or limits.check_deadline_ms, limits.max_check_deadline_ms) / 1000
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

    def _take_quota(self, actor: str, count: int) -> None:
        """Take ``count`` checks (at least one) from the investigator's rate limit and daily quota.

        Raises:
            RateLimited: refused (audited); nothing was consumed.
        """
        limits = self.node.config.limits
        now = self.node.clock()
        decision = self.node.store.consume_quota(
            f"check:{actor}",
            max(1, count),
            now=now,
            rate_per_s=limits.check_rate_per_s,
            burst=limits.check_burst,
            daily_limit=limits.check_daily_quota,
        )
        if decision.allowed:
            return
        self.node.record(
            "investigator.check",
            actor=actor,
            role="investigator",
            result="rate_limited",
            count=count,
            daily_used=decision.daily_used,
        )
        wait = decision.retry_after_s
        raise errors.RateLimited(
            f"check quota of {actor} exhausted ({decision.daily_used} checked today); "
            + (f"retry in {wait:.1f} s" if math.isfinite(wait) else f"a batch of {count} can never pass"),
            retry_after_s=wait,
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
