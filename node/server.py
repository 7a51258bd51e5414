"""The node's gRPC server: the servicers of :mod:`node.servicers` behind mutual TLS, limits, health, drain.

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
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client._proto.petanda.v1 import (
    auditor_pb2_grpc,
    investigator_pb2_grpc,
    peer_pb2_grpc,
)
from client.protocol import errors
from client.transport.tls import read_private_file
from node.config import parse_address
from node.issuers import Issuers, Refusal
from node.node import Node
from node.peers import Links
from node.pki import certificate_from_context, identity_from_context, serial_from_context, server_credentials
from node.rpc import AuthorizationInterceptor, RateLimiter
from node.servicers import AuditorServicer, InvestigatorServicer, PeerServicer

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SERVER_THREADS",
    "CallGate",
    "RunningServer",
    "start_server",
]

SERVICES = (
    "petanda.v1.PeerService",
    "petanda.v1.InvestigatorService",
    "petanda.v1.AuditorService",
)


#: Refused calls audited per identity: one a second, in bursts of ten; the rest are counted.
_DENIED_RATE_PER_S = 1.0
_DENIED_BURST = 10
#: Seconds between two warnings about one identity's refused calls that were not audited.
_DENIED_WARN_EVERY_S = 60.0


@dataclass
class RunningServer:
    """A started node server: its bound port, and how to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    node: Node
    investigator: InvestigatorServicer
    grace_s: float
    _stopped: threading.Event

    def drain(self) -> None:
        """Report NOT_SERVING, let in-flight calls finish within the grace period, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.grace_s).wait()
        self.node.reads.flush(now=self.node.clock())  # the aggregated reads counted so far
        self.node.audit.sign_head()

    def wait(self) -> None:
        self.server.wait_for_termination()


class CallGate:
    """Per-caller rate limit of the peer service, and a throttled audit of refused calls.

    Every call to a service in :data:`node.rpc.RATE_LIMITED` takes a token from its caller's in-memory
    bucket (``limits.peer_rpc_rate_per_s``, ``limits.peer_rpc_burst``, the node's clock). Each refused
    call (certificate or its people-CA revoked, result ``revoked``; certificate from a CA its role may
    not come from, result ``wrong_issuer`` with the certificate's ``issuer``; role, state or peer not
    allowed, result ``denied``; a protocol version the node does not serve, result
    ``unsupported_version``; rate limit, result ``rate_limited``) is an
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
        """Record a call refused for its caller's role, state or peer (the caller's certificate was valid)."""
        self.refused(identity, method, "denied")

    def revoked(self, identity: Any, method: str, reason: str) -> None:
        """Record a call refused because the caller's certificate is revoked (result ``revoked``)."""
        self.refused(identity, method, "revoked")

    def wrong_issuer(self, identity: Any, method: str, refusal: Refusal) -> None:
        """Record a call refused for its certificate's issuer (or a revoked people-CA or person)."""
        self.refused(identity, method, refusal.result, issuer=refusal.issuer)

    def unsupported(self, identity: Any, method: str, version: int) -> None:
        """Record a call refused for its protocol version (result ``unsupported_version``, ``protocol``
        the caller's version)."""
        self.refused(identity, method, "unsupported_version", protocol=version)

    def refused(self, identity: Any, method: str, result: str, **fields: Any) -> None:
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
        extra: dict[str, Any] = {"suppressed": count} if count else {}
        self.node.record(
            "rpc.denied",
            actor=identity.id,
            role=identity.role,
            result=result,
            method=method,
            **fields,
            **extra,
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


#: Threads of a node's server: twenty investigators' checks at once (each holds a thread while its peers
#: answer, so that their evaluations merge: node.scheduler) beside its peers' and auditors' calls.
DEFAULT_SERVER_THREADS = 32


def start_server(
    node: Node, *, links: Links | None = None, max_workers: int = DEFAULT_SERVER_THREADS
) -> RunningServer:
    """Start the node's server on its configured address with mutual TLS; return once it listens.

    ``max_workers`` threads serve the calls: a check holds one while it waits for its peers, so it is
    sized for a few dozen investigators checking at once beside the peers' calls
    (:data:`DEFAULT_SERVER_THREADS`); calls beyond it queue, never refused.

    ``links`` are the channels to the peers that the investigator service checks through (shared with
    the node's :class:`~node.sync.Syncer`); new ones when omitted.

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
        node.id,
        identity_from_context,
        on_denied=gate.denied,
        rate_limit=gate.rate_limit,
        revoked=lambda context: node.crl.check(serial_from_context(context)),
        on_revoked=gate.revoked,
        is_peer=lambda state: node.config.peer(state) is not None,
        issuer=lambda context, identity: node.issuers.refusal(identity, certificate_from_context(context)),
        on_issuer=gate.wrong_issuer,
        served=lambda: node.config.protocol.versions,
        on_unsupported=gate.unsupported,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"node-{node.id}"),
        interceptors=[interceptor],
        options=server_options(node),
        maximum_concurrent_rpcs=max_workers * 8,
    )
    peer_pb2_grpc.add_PeerServiceServicer_to_server(PeerServicer(node), server)
    auditor_pb2_grpc.add_AuditorServiceServicer_to_server(AuditorServicer(node), server)
    investigator = InvestigatorServicer(node, links or Links(node))
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
    Issuers.warn_at_start(node)
    for service in ("", *SERVICES):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server, port, health_servicer, node, investigator, config.node.shutdown_grace_s, threading.Event()
    )


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
    audit = running.node.config.audit
    interval = min(audit.tree_head_interval_s, audit.aggregate_interval_s)
    while not done.wait(timeout=interval):
        try:
            running.node.maintain(now=running.node.clock())
        except Exception:  # a failed run (e.g. the store briefly unavailable) is retried next time
            log.exception("maintenance failed; retrying in %d s", interval)
    running.drain()
