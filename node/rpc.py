"""gRPC plumbing shared by every servicer: who may call what, and how errors become status codes.

Servicers stay thin: a method decodes the request, calls one handler, encodes the answer. The caller's
identity comes from its mutual-TLS certificate (never from a request field) and is checked here, before
the method runs: the certificate must not be revoked (the node's CRL), it must be issued by the CA its
role allows (the federation CA for a peer, the state's people-CA for a person: :mod:`node.issuers`),
the role must be allowed by :data:`ROLES`, a person must belong to the node's state and a peer must be
one of its configured peers; a call to a service in :data:`VERSIONED` must be in a protocol version the
node serves, and a method of :data:`SINCE` in one it exists in; calls to the services in
:data:`RATE_LIMITED` then take a token from the caller's bucket (:class:`RateLimiter`). Errors map to
gRPC status codes in one table, :data:`STATUS_OF`; anything else, the project's or not, is a bug and
becomes INTERNAL with no detail leaked (the traceback goes to the log).
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from client.protocol import errors
from client.protocol.versions import SUPPORTED, check_served
from client.transport.status import STATUS_OF, retry_trailer, status_for
from client.transport.tls import Identity
from client.transport.versions import served_header, version_of
from node.issuers import Refusal

log = logging.getLogger(__name__)

__all__ = [
    "RATE_LIMITED",
    "ROLES",
    "SINCE",
    "STATUS_OF",
    "VERSIONED",
    "AuthorizationInterceptor",
    "RateLimiter",
    "abort_internal",
    "abort_with",
    "caller",
]

#: Service name → roles allowed to call it. People (investigators, auditors) must also belong to the
#: node's own state. A service missing here is refused to everyone.
ROLES: dict[str, frozenset[str]] = {
    "petanda.v1.PeerService": frozenset({"peer"}),
    "petanda.v1.InvestigatorService": frozenset({"investigator"}),
    "petanda.v1.AuditorService": frozenset({"auditor"}),
    "grpc.health.v1.Health": frozenset({"peer", "investigator", "auditor"}),
    "grpc.reflection.v1alpha.ServerReflection": frozenset({"peer", "investigator", "auditor"}),
    "grpc.reflection.v1.ServerReflection": frozenset({"peer", "investigator", "auditor"}),
}
_PEOPLE = frozenset({"investigator", "auditor"})

#: Services whose calls are refused in a protocol version the node does not serve. Health and reflection
#: are not: monitoring labels nothing, and a caller learns the versions served from a health check.
VERSIONED: frozenset[str] = frozenset(
    {"petanda.v1.PeerService", "petanda.v1.InvestigatorService", "petanda.v1.AuditorService"}
)

#: Methods that exist only from a protocol version on: a call of an earlier version (that the node
#: serves) is refused as one in a version not served, FAILED_PRECONDITION naming both.
SINCE: dict[str, int] = {"/petanda.v1.PeerService/GetHeld": 3}

#: Services whose every call takes a token from the caller's in-memory bucket before its handler runs.
RATE_LIMITED: frozenset[str] = frozenset({"petanda.v1.PeerService"})


def abort_with(context: grpc.ServicerContext, error: BaseException) -> None:
    """Abort the call with the status that :data:`STATUS_OF` gives ``error`` (never returns)."""
    code = status_for(error)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error in RPC", exc_info=error)
        context.abort(code, "internal error")
    trailer = retry_trailer(error)
    if trailer:  # added to what is set already (the versions served)
        context.set_trailing_metadata((*(context.trailing_metadata() or ()), *trailer))
    context.abort(code, str(error))


def abort_internal(context: grpc.ServicerContext, error: BaseException) -> None:
    """Abort with INTERNAL for an exception that is not the project's (a bug): log it, leak nothing.

    An exception raised by ``context.abort`` itself (the handler aborted on purpose) is re-raised.
    """
    if context.code() is not None:
        raise error
    log.error("internal error in RPC", exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


class RateLimiter:
    """In-memory token buckets, one per key, refilled from an injected clock. Thread-safe.

    Rate and size are given on every :meth:`take`, so a reloaded configuration applies at once. At most
    ``max_keys`` buckets are kept (least recently used dropped first): keys are certificate identities,
    which only the federation CA can mint, so the bound is a safety net, not the limit itself.
    """

    def __init__(self, clock: Callable[[], float], *, max_keys: int = 4096) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, *, rate_per_s: float, burst: float, amount: float = 1.0) -> float:
        """Take ``amount`` tokens from ``key``'s bucket.

        Returns:
            0.0 when taken; otherwise the seconds until they would be there (``math.inf`` if never:
            ``amount`` above ``burst`` or no refill). A refused take consumes nothing; a clock that goes
            backwards refills nothing.
        """
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.pop(key, (float(burst), now))
            tokens = min(float(burst), tokens + max(0.0, now - updated) * rate_per_s)
            updated = max(now, updated)
            wait = 0.0
            if tokens >= amount:
                tokens -= amount
            elif amount > burst or rate_per_s <= 0:
                wait = math.inf
            else:
                wait = (amount - tokens) / rate_per_s
            self._buckets[key] = (tokens, updated)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        return wait


_identities: weakref.WeakKeyDictionary[Any, Identity] = weakref.WeakKeyDictionary()
_identities_lock = threading.Lock()


def caller(context: grpc.ServicerContext) -> Identity:
    """Return the authenticated identity of the caller (set by :class:`AuthorizationInterceptor`)."""
    with _identities_lock:
        identity = _identities.get(context)
    if identity is None:  # the interceptor always sets it; this is a wiring bug
        raise errors.PermissionDenied("no authenticated identity for this call")
    return identity


_T = TypeVar("_T")


class AuthorizationInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Checks the caller's certificate (revocation, role, state, peer) for every call and maps errors
    to status codes."""

    def __init__(
        self,
        node_id: str,
        identify: Callable[[grpc.ServicerContext], Identity],
        on_denied: Callable[[Identity, str, str], None] = lambda identity, method, reason: None,
        rate_limit: Callable[[Identity, str], float] | None = None,
        *,
        revoked: Callable[[grpc.ServicerContext], str | None] | None = None,
        on_revoked: Callable[[Identity, str, str], None] | None = None,
        is_peer: Callable[[str], bool] | None = None,
        issuer: Callable[[grpc.ServicerContext, Identity], Refusal | None] | None = None,
        on_issuer: Callable[[Identity, str, Refusal], None] | None = None,
        served: Callable[[], Iterable[int]] = lambda: SUPPORTED,
        on_unsupported: Callable[[Identity, str, int], None] | None = None,
    ) -> None:
        """Build the interceptor.

        Args:
            node_id: the node's own state (people must belong to it).
            identify: the caller's identity from its verified certificate.
            on_denied: told of every call refused for its caller's role, state or peer (before it fails).
            rate_limit: for a call to a service in :data:`RATE_LIMITED`, returns 0.0 to let it through,
                or the seconds to wait (the call then fails with RESOURCE_EXHAUSTED, ``retry-after-ms``).
            revoked: the reason the caller's certificate is revoked (``keyCompromise``…), or None; asked
                first, for every call of every role.
            on_revoked: told of every call refused for a revoked certificate (default ``on_denied``).
            is_peer: whether a peer's node id is one of the node's configured peers (asked on each call,
                so a peer removed from the configuration is refused at once); None lets every peer in.
            issuer: why the caller's certificate comes from a CA its role may not come from, or from a
                revoked people-CA (:meth:`node.issuers.Issuers.refusal`), or None; asked after
                ``revoked``. None checks no issuer.
            on_issuer: told of every call refused by ``issuer`` (default ``on_denied`` or
                ``on_revoked``, by the refusal's result).
            served: the protocol versions the node serves (asked on each call). A call to a service in
                :data:`VERSIONED` in another version, or to a method of :data:`SINCE` in an earlier one,
                fails with FAILED_PRECONDITION; every answer
                carries them (``petanda-protocol-versions``, :mod:`client.transport.versions`).
            on_unsupported: told of every call refused for its protocol version (with that version).
        """
        self._node_id = node_id
        self._identify = identify
        self._on_denied = on_denied
        self._rate_limit = rate_limit
        self._revoked = revoked
        self._on_revoked = on_revoked or on_denied
        self._is_peer = is_peer
        self._issuer = issuer
        self._on_issuer = on_issuer
        self._served = served
        self._on_unsupported = on_unsupported

    def _authorize(self, method: str, context: grpc.ServicerContext) -> Identity:
        service = method.lstrip("/").split("/", 1)[0]
        identity = self._identify(context)
        if self._revoked is not None:
            why = self._revoked(context)
            if why is not None:
                reason = f"the certificate of {identity} is revoked ({why})"
                self._on_revoked(identity, method, reason)
                raise errors.PermissionDenied(reason)
        if self._issuer is not None:
            refusal = self._issuer(context, identity)
            if refusal is not None:
                if self._on_issuer is not None:
                    self._on_issuer(identity, method, refusal)
                elif refusal.result == "revoked":
                    self._on_revoked(identity, method, refusal.reason)
                else:
                    self._on_denied(identity, method, refusal.reason)
                raise errors.PermissionDenied(refusal.reason)
        allowed = ROLES.get(service, frozenset())
        reason = ""
        if identity.role not in allowed:
            reason = f"role {identity.role!r} may not call {service}"
        elif identity.role in _PEOPLE and identity.state != self._node_id:
            reason = f"{identity.role} of {identity.state} may not use the node of {self._node_id}"
        elif identity.role == "peer" and self._is_peer is not None and not self._is_peer(identity.state):
            reason = f"{identity.state} is not a configured peer of {self._node_id}"
        if reason:
            self._on_denied(identity, method, reason)
            raise errors.PermissionDenied(reason)
        served = frozenset(self._served())
        if service in VERSIONED:
            try:
                version = version_of(context.invocation_metadata())
                check_served(version, served, node_id=self._node_id)
                if version < SINCE.get(method, 0):
                    name = method.rsplit("/", 1)[-1]
                    raise errors.UnsupportedVersion(
                        f"{name} is a message of protocol version {SINCE[method]}; this call is in version "
                        f"{version}",
                        version=version,
                        served=served,
                    )
            except errors.UnsupportedVersion as refusal:
                assert refusal.version is not None
                if self._on_unsupported is not None:
                    self._on_unsupported(identity, method, refusal.version)
                context.set_trailing_metadata(served_header(served, always=True))
                raise
        context.set_trailing_metadata(served_header(served))
        if self._rate_limit is not None and service in RATE_LIMITED:
            wait = self._rate_limit(identity, method)
            if wait > 0:
                raise errors.RateLimited(
                    f"too many calls from {identity.id}; retry in {wait:.1f} s"
                    if math.isfinite(wait)
                    else f"calls from {identity.id} are not allowed by the rate limit",
                    retry_after_s=wait,
                )
        with _identities_lock:
            _identities[context] = identity
        return identity

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def guard_unary(fn: Callable[[Any, grpc.ServicerContext], _T]) -> Callable[..., _T]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> _T:
                try:
                    self._authorize(method, context)
                    return fn(request, context)
                except errors.PetandaError as error:
                    abort_with(context, error)
                    raise  # unreachable: abort raises
                except Exception as error:
                    abort_internal(context, error)
                    raise  # unreachable: abort raises

            return wrapped

        def guard_stream(
            fn: Callable[[Any, grpc.ServicerContext], Iterator[_T]],
        ) -> Callable[..., Iterator[_T]]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[_T]:
                try:
                    self._authorize(method, context)
                    yield from fn(request, context)
                except errors.PetandaError as error:
                    abort_with(context, error)
                except Exception as error:
                    abort_internal(context, error)

            return wrapped

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                guard_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            guard_stream(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
