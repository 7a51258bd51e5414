"""Where the protocol version travels: gRPC metadata, set on every call and read from every answer.

A caller sends ``petanda-protocol-version: N`` (:data:`VERSION_KEY`) as request metadata: the version
it speaks on that call. Version 2 is sent as no header at all (:data:`~client.protocol.versions.UNLABELLED`:
what version-2 nodes send), so a node speaking version 2 is, on the wire, a version-2 node. A node
ends every call with ``petanda-protocol-versions: 2,3`` (:data:`SERVED_KEY`) in its trailing metadata:
the versions it serves (a node that serves only version 2 sends nothing, as version-2 nodes do; a
refusal always carries it). Trailers, not headers: a finished call always has them, a refusal too.

:class:`VersionInterceptor` does the caller's part on one channel: before its first call it asks the
other side which versions it serves (a ``grpc.health.v1.Health/Check``, which every node answers to
every member and person and which no version gates), then labels every call with the highest version
both speak, and keeps what it learnt up to date from every answer (:class:`PeerVersions`).
``docs/PROTOCOL.md`` ("Versions") specifies it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.protocol.errors import InputError
from client.protocol.versions import (
    SUPPORTED,
    UNLABELLED,
    format_versions,
    negotiate,
    parse_version,
    parse_versions,
)

__all__ = [
    "PROBE_RETRY_S",
    "SERVED_KEY",
    "VERSION_KEY",
    "PeerVersions",
    "VersionInterceptor",
    "served_header",
    "version_header",
    "version_of",
]

#: Request metadata: the protocol version the caller speaks on this call (absent: version 2).
VERSION_KEY: Final = "petanda-protocol-version"
#: Trailing metadata: the protocol versions the answering node serves, e.g. ``2,3`` (absent: only 2).
SERVED_KEY: Final = "petanda-protocol-versions"
#: Seconds before a probe that got no answer (the other side unreachable) is tried again.
PROBE_RETRY_S: Final = 30.0
#: Deadline of a probe when the call it precedes has none.
_PROBE_TIMEOUT_S: Final = 5.0


def _value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return None


def version_of(metadata: Iterable[tuple[str, Any]] | None) -> int:
    """The version a call's request metadata names (none: version 2).

    Raises:
        InputError: the header is not a positive whole number (names the header).
    """
    try:
        return parse_version(_value(metadata, VERSION_KEY))
    except InputError as error:
        raise InputError(f"{VERSION_KEY}: {error}") from None


def version_header(version: int) -> tuple[tuple[str, str], ...]:
    """The request metadata of a call in ``version`` (none for version 2)."""
    return () if version == UNLABELLED else ((VERSION_KEY, str(version)),)


def served_header(served: Iterable[int], *, always: bool = False) -> tuple[tuple[str, str], ...]:
    """The trailing metadata naming the versions served (none for version 2 alone unless ``always``)."""
    versions = frozenset(served)
    if versions == {UNLABELLED} and not always:
        return ()
    return ((SERVED_KEY, format_versions(versions)),)


class PeerVersions:
    """What one caller knows of one other node's versions, and the version its calls use. Thread-safe.

    ``ours`` are the versions the caller speaks. ``served`` is None until the other node answered once;
    then the versions it said it serves (:data:`SERVED_KEY`; an answer without it: version 2 only).
    """

    def __init__(self, ours: Iterable[int] = SUPPORTED) -> None:
        self.ours = frozenset(ours)
        if not self.ours:
            raise ValueError("a caller speaks at least one protocol version")
        self._served: frozenset[int] | None = None
        self._lock = threading.Lock()

    @property
    def served(self) -> frozenset[int] | None:
        """The versions the other node serves, as last seen; None before any answer."""
        with self._lock:
            return self._served

    @property
    def known(self) -> bool:
        return self.served is not None

    @property
    def negotiated(self) -> int | None:
        """The highest version both speak; None when unknown yet or when they share none."""
        served = self.served
        return None if served is None else negotiate(self.ours, served)

    def speaks(self, version: int) -> bool:
        """Whether calls to the other node may use ``version``: both speak it (False while unknown)."""
        served = self.served
        return served is not None and version in self.ours and version in served

    def version(self) -> int:
        """The version to label the next call with: the negotiated one, else the highest we speak."""
        negotiated = self.negotiated
        return negotiated if negotiated is not None else max(self.ours)

    def observe(self, metadata: Iterable[tuple[str, Any]] | None, *, answered: bool) -> None:
        """Learn from a finished call's trailing metadata. ``answered``: the call succeeded, so an answer
        without :data:`SERVED_KEY` comes from a node serving version 2 only. A failed call without
        it (no answer, or a refusal by a version-2 node) teaches nothing; an unreadable header neither.
        """
        text = _value(metadata, SERVED_KEY)
        if text is None and not answered:
            return
        try:
            served = parse_versions(text)
        except InputError:
            return
        with self._lock:
            self._served = served


class _Details(
    collections.namedtuple(
        "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """A call's details with our metadata added."""


class VersionInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Labels every call on a channel with the negotiated protocol version, learning it first.

    ``channel`` is the raw channel the probe goes through (not the intercepted one). A caller that
    speaks one version only sends it and never probes: there is nothing to choose.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        versions: PeerVersions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self.versions = versions
        self._clock = clock
        self._probe_lock = threading.Lock()
        self._probed_at: float | None = None

    def probe(self, timeout: float | None = None) -> None:
        """Ask the other node which versions it serves (``Health/Check``, labelled with our highest)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            _, call = stub.Check.with_call(
                health_pb2.HealthCheckRequest(),
                metadata=version_header(max(self.versions.ours)),
                timeout=timeout or _PROBE_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
            self.versions.observe(trailers, answered=False)
        else:
            self.versions.observe(call.trailing_metadata(), answered=True)

    def learn(self, timeout: float | None = None) -> None:
        """Probe unless the other node's versions are known or a probe got no answer less than
        :data:`PROBE_RETRY_S` ago. Before a call this runs only for a caller that speaks several
        versions (one alone leaves nothing to choose); the node's ``Links.speaks`` runs it always."""
        if self.versions.known:
            return
        with self._probe_lock:
            now = self._clock()
            if self.versions.known or (self._probed_at is not None and now - self._probed_at < PROBE_RETRY_S):
                return
            self._probed_at = now
            self.probe(timeout)

    def _details(self, details: Any) -> _Details:
        if len(self.versions.ours) > 1:
            self.learn(details.timeout)
        metadata = [(k, v) for k, v in details.metadata or () if k != VERSION_KEY]
        metadata += version_header(self.versions.version())
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def _watch(self, call: Any) -> Any:
        def done(finished: Any) -> None:
            try:  # the call is finished: neither waits
                code = finished.code()
                trailers = finished.trailing_metadata()
            except Exception:  # a call that never started has no metadata to learn from
                return
            self.versions.observe(trailers, answered=code == grpc.StatusCode.OK)

        if hasattr(call, "add_done_callback"):
            call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._watch(continuation(self._details(details), request))

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return self._watch(continuation(self._details(details), request))

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return self._watch(continuation(self._details(details), requests))

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Iterator[Any]
    ) -> Any:
        return self._watch(continuation(self._details(details), requests))

    @classmethod
    def wrap(
        cls, channel: grpc.Channel, versions: Iterable[int] = SUPPORTED
    ) -> tuple[grpc.Channel, VersionInterceptor]:
        """``channel`` with every call labelled, and the interceptor (its :attr:`versions` state)."""
        interceptor = cls(channel, PeerVersions(versions))
        return grpc.intercept_channel(channel, interceptor), interceptor
