"""The node's gRPC server: thin servicers over :class:`node.node.Node`, mutual TLS, limits, health, drain.

Each servicer method decodes the request, calls one :class:`Node` method, encodes the answer. Who may
call what, and how often a peer may call, is checked before any method runs
(:class:`node.rpc.AuthorizationInterceptor`, :class:`CallGate`); errors become status codes through
:data:`node.rpc.STATUS_OF`.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client._proto.petanda.v1 import (
    auditor_pb2,
    auditor_pb2_grpc,
    common_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.protocol import errors
from client.protocol.auditlog import TreeHead
from client.transport.convert import (
    kind_from_proto,
    tier_from_proto,
    tree_head_from_proto,
    tree_head_to_proto,
)
from client.transport.tls import read_private_file
from node.config import parse_address
from node.node import Node
from node.pki import identity_from_context, server_credentials
from node.rpc import AuthorizationInterceptor, RateLimiter, caller

log = logging.getLogger(__name__)

__all__ = [
    "CallGate",
    "RunningServer",
    "start_server",
    "uint63",
]

SERVICES = (
    "petanda.v1.PeerService",
    "petanda.v1.InvestigatorService",
    "petanda.v1.AuditorService",
)


#: The largest value a uint64 request field may carry to the store (SQL integers are signed 64-bit).
MAX_STORED_INT = (1 << 63) - 1

#: Refused calls audited per identity: one a second, in bursts of ten; the rest are counted.
_DENIED_RATE_PER_S = 1.0
_DENIED_BURST = 10
#: Seconds between two warnings about one identity's refused calls that were not audited.
_DENIED_WARN_EVERY_S = 60.0


def uint63(value: int, name: str) -> int:
    """Return a uint64 request field, refusing a value the store cannot hold (naming the field)."""
    if value > MAX_STORED_INT:
        raise errors.InputError(f"{name}: {value} is larger than 2^63 - 1")
    return value


class PeerServicer(peer_pb2_grpc.PeerServiceServicer):
    """What a node serves to the other member nodes."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _peer(self, context: grpc.ServicerContext) -> str:
        identity = caller(context)
        if self.node.config.peer(identity.state) is None:
            raise errors.PermissionDenied(f"{identity.state} is not a configured peer of {self.node.id}")
        return identity.state

    def GetManifest(self, request: Any, context: grpc.ServicerContext) -> Any:
        peer = self._peer(context)
        known = uint63(request.known_version, "known_version")
        signed = self.node.latest_manifest()
        version = signed.manifest.version
        self.node.record("peer.get_manifest", actor=peer, role="peer", version=version, known=known)
        if known == version:
            return peer_pb2.GetManifestResponse(
                not_modified=True, signing_public_key=self.node.audit.public_key
            )
        return peer_pb2.GetManifestResponse(
            signed_manifest=signed.to_bytes(), signing_public_key=self.node.audit.public_key
        )

    def GetFilter(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        data = self.node.filter_bytes(uint63(request.version, "version"), kind, tier)
        self.node.record(
            "peer.get_filter",
            actor=peer,
            role="peer",
            kind=kind,
            tier=tier,
            version=request.version,
            count=len(data),
        )
        size = self.node.config.limits.chunk_bytes
        for offset in range(0, len(data), size):
            yield common_pb2.Chunk(offset=offset, total_size=len(data), data=data[offset : offset + size])

    def GetMetadataBucket(self, request: Any, context: grpc.ServicerContext) -> Any:
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        data, proof = self.node.bucket(uint63(request.version, "version"), kind, tier, request.bucket_id)
        self.node.record(
            "peer.get_bucket", actor=peer, role="peer", kind=kind, tier=tier, version=request.version
        )
        return peer_pb2.GetMetadataBucketResponse(bucket=data, proof=proof)

    def EvaluateOprf(self, request: Any, context: grpc.ServicerContext) -> Any:
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

    def ReportSighting(self, request: Any, context: grpc.ServicerContext) -> Any:
        peer = self._peer(context)
        kind, tier = kind_from_proto(request.kind), tier_from_proto(request.tier)
        version = uint63(request.version, "version")
        if len(request.tag) != 16:
            raise errors.InputError("tag: must be 16 bytes")
        recorded = self.node.report_sighting(peer, kind, tier, version, request.tag, now=self.node.clock())
        return peer_pb2.ReportSightingResponse(recorded=recorded)

    def ExchangeTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        peer = self._peer(context)
        theirs = tree_head_from_proto(request.head)
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
        return peer_pb2.ExchangeTreeHeadResponse(
            head=tree_head_to_proto(mine), consistency_proof=proof, witnessed=witnessed
        )


class AuditorServicer(auditor_pb2_grpc.AuditorServiceServicer):
    """What a node serves to its own state's auditors."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _who(self, context: grpc.ServicerContext, action: str, **fields: Any) -> None:
        identity = caller(context)
        self.node.record(action, actor=identity.id, role="auditor", **fields)

    def GetTreeHead(self, request: Any, context: grpc.ServicerContext) -> Any:
        head = self.node.audit.latest()
        self._who(context, "auditor.get_tree_head", size=head.tree_size)
        return tree_head_to_proto(head)

    def ListTreeHeads(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
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

    def GetEntries(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
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

    def GetInclusionProof(self, request: Any, context: grpc.ServicerContext) -> Any:
        index, size = uint63(request.index, "index"), uint63(request.tree_size, "tree_size")
        if not index < size:
            raise errors.InputError(f"index: {index} is not below tree_size {size}")
        tree = self.node.audit_tree(size)
        self._who(context, "auditor.get_inclusion_proof", index=index, size=size)
        return auditor_pb2.ProofResponse(hashes=tree.inclusion_proof(index, size))

    def GetConsistencyProof(self, request: Any, context: grpc.ServicerContext) -> Any:
        first, second = uint63(request.first, "first"), uint63(request.second, "second")
        proof = self.node.consistency_proof(first, second)
        self._who(context, "auditor.get_consistency_proof", first=first, second=second)
        return auditor_pb2.ProofResponse(hashes=proof)

    def GetPublicKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._who(context, "auditor.get_public_key")
        return auditor_pb2.GetPublicKeyResponse(node_id=self.node.id, public_key=self.node.audit.public_key)


@dataclass
class RunningServer:
    """A started node server: its bound port, and how to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    node: Node
    grace_s: float
    _stopped: threading.Event

    def drain(self) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_s).wait()
        self.node.audit.sign_head()

    def wait(self) -> None:
        self.server.wait_for_termination()


class CallGate:
    """Per-caller rate limit of the peer service, and a throttled audit of refused calls.

    Every call to a service in :data:`node.rpc.RATE_LIMITED` takes a token from its caller's in-memory
    bucket (``limits.peer_rpc_rate_per_s``, ``limits.peer_rpc_burst``, the node's clock). Each refused
    call (role or state not allowed, result ``denied``; rate limit, result ``rate_limited``) is an
    ``rpc.denied`` audit entry, at most one a second in bursts of ten per identity: refusals beyond that
    are counted, not recorded, logged at WARNING at most once a minute per identity, and the next
    recorded entry of that identity carries their number as ``suppressed``. A caller with a valid
    certificate thus cannot grow the audit log faster than that.
    """

    def __init__(self, node: Node, *, max_identities: int = 4096) -> None:
        self.node = node
        self._calls = RateLimiter(node.clock, max_keys=max_identities)
        self._records = RateLimiter(node.clock, max_keys=max_identities)
        self._lock = threading.Lock()
        self._max = max_identities
        #: identity → (refusals not recorded since its last entry, when they were last logged)
        self._suppressed: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def rate_limit(self, identity: Any, method: str) -> float:
        """0.0 if the caller may go on, else the seconds to wait (the refusal is recorded)."""
        limits = self.node.config.limits
        wait = self._calls.take(
            f"{identity.role}:{identity.id}",
            rate_per_s=limits.peer_rpc_rate_per_s,
            burst=limits.peer_rpc_burst,
        )
        if wait > 0:
            self.refused(identity, method, "rate_limited")
        return wait

    def denied(self, identity: Any, method: str, reason: str) -> None:
        """Record a call refused for its caller's role or state (the caller's certificate was valid)."""
        self.refused(identity, method, "denied")

    def refused(self, identity: Any, method: str, result: str) -> None:
        """Audit one refused call, or count it when the identity's audit budget is spent."""
        key = f"{identity.role}:{identity.id}"
        if self._records.take(key, rate_per_s=_DENIED_RATE_PER_S, burst=_DENIED_BURST) > 0:
            now = self.node.clock()
            with self._lock:
                count, warned = self._suppressed.pop(key, (0, -math.inf))
                count += 1
                warn = now - warned >= _DENIED_WARN_EVERY_S
                self._suppressed[key] = (count, now if warn else warned)
                while len(self._suppressed) > self._max:
                    self._suppressed.popitem(last=False)
            if warn:
                log.warning(
                    "refused calls of %s %s are not all audited: %d since its last rpc.denied entry",
                    identity.role,
                    identity.id,
                    count,
                )
            return
        with self._lock:
            count, warned = self._suppressed.get(key, (0, -math.inf))
            if count:
                self._suppressed[key] = (0, warned)
        extra = {"suppressed": count} if count else {}
        self.node.record(
            "rpc.denied", actor=identity.id, role=identity.role, result=result, method=method, **extra
        )


def server_options(node: Node) -> list[tuple[str, Any]]:
    limits = node.config.limits
    return [
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", limits.keepalive_s * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Never share a port with another process: a second node on the same port must fail to start.
        ("grpc.so_reuseport", 0),
    ]


def _check_can_bind(address: str) -> None:
    """Refuse an address already in use with a one-line reason (gRPC would log its own error first)."""
    host, port = parse_address(address, allow_port_zero=True)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise errors.ConfigError(f"cannot listen on {address}: {error.strerror}", key="node.listen") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(sockaddr)
            except OSError as error:
                reason = error.strerror or str(error)
                raise errors.ConfigError(f"cannot listen on {address}: {reason}", key="node.listen") from None


def start_server(node: Node, *, investigator: Any = None, max_workers: int = 16) -> RunningServer:
    """Start the node's server on its configured address with mutual TLS; return once it listens.

    Raises:
        ConfigError: the address is in use or cannot be bound.
    """
    config = node.config
    credentials = server_credentials(
        Path(config.tls.ca).read_bytes(),
        Path(config.tls.cert).read_bytes(),
        read_private_file(Path(config.tls.key)),
    )
    gate = CallGate(node)
    interceptor = AuthorizationInterceptor(
        node.id, identity_from_context, on_denied=gate.denied, rate_limit=gate.rate_limit
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"node-{node.id}"),
        interceptors=[interceptor],
        options=server_options(node),
        maximum_concurrent_rpcs=max_workers * 8,
    )
    peer_pb2_grpc.add_PeerServiceServicer_to_server(PeerServicer(node), server)
    auditor_pb2_grpc.add_AuditorServiceServicer_to_server(AuditorServicer(node), server)
    if investigator is not None:
        investigator_pb2_grpc.add_InvestigatorServiceServicer_to_server(investigator, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.node.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection((*SERVICES, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    address = config.node.listen
    _check_can_bind(address)
    try:
        port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise errors.ConfigError(f"cannot listen on {address}: {error}", key="node.listen") from None
    if port == 0:
        raise errors.ConfigError(f"cannot listen on {address} (in use?)", key="node.listen")
    server.start()
    for service in ("", *SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, node, config.node.shutdown_grace_s, threading.Event())


def serve_forever(running: RunningServer, *, ready: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM or SIGINT, then drain: NOT_SERVING, in-flight calls finish, stop.

    ``ready`` is called once the signal handlers are in place (a readiness line printed earlier would
    let a supervisor's SIGTERM kill the process undrained).
    """
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %s: draining", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready is not None:
        ready()
    interval = running.node.config.audit.tree_head_interval_s
    while not done.wait(timeout=interval):
        running.node.maintain(now=time.time())
    running.drain()
