"""Channels to the peers: one long-lived mutual-TLS channel per member, that member's name verified,
every call labelled with the protocol version negotiated with that member (:meth:`Links.speaks`).

Also the one place a failed call to a peer becomes an exception (:func:`peer_error`, by the table of
:mod:`client.transport.status`) and peer-supplied text is made safe to log (:func:`printable`).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path
from typing import Final, Protocol

import grpc

from client._proto.petanda.v1 import (
    peer_pb2_grpc,
)
from client.protocol import errors
from client.transport.status import error_class, retry_after_of, unsupported_version
from client.transport.tls import channel_options, peer_server_name, read_private_file
from client.transport.versions import PeerVersions, VersionInterceptor
from node.config import NodeConfig, parse_address
from node.node import Node

log = logging.getLogger(__name__)

__all__ = ["DETAIL_MAX", "EVALUATE_RETRY", "Links", "PeerLink", "peer_error", "printable"]

#: Longest peer-supplied text (a gRPC status detail) we copy into an audit entry or a check result.
DETAIL_MAX: Final = 200


#: The channel's retry of ``EvaluateOprf`` (a gRPC retry policy, in the service config of every peer
#: channel): an attempt that ends UNAVAILABLE (the replica that took it died with the call in flight, the
#: connection it was written to had just been reset, or the replica's store is down) is sent again after
#: a random 0-20 ms, then 0-40 ms, three attempts at most, within the call's deadline; round_robin picks
#: the next ready replica for it. The call is idempotent: the same blinded elements under the same key
#: give the same answer, and a peer that feigns UNAVAILABLE only sees again what it already saw (counted
#: against the asker's quota again). Retry throttling (gRPC's token bucket: a failure costs a token, a
#: success gives back a tenth) stops retrying a peer once 50 more of its calls failed than a tenth of
#: those that succeeded: a dead peer is not called three times per check for long.
EVALUATE_RETRY: Final = {
    "methodConfig": [
        {
            "name": [{"service": "petanda.v1.PeerService", "method": "EvaluateOprf"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.02s",
                "maxBackoff": "0.1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
}


def printable(text: str) -> str:
    """Peer-supplied text made safe to log and audit: non-printable characters replaced by ``?``, at most
    :data:`DETAIL_MAX` characters (an ellipsis marks a cut)."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[: DETAIL_MAX + 1])
    return cleaned if len(cleaned) <= DETAIL_MAX else cleaned[: DETAIL_MAX - 1] + "\u2026"


class _Configured(Protocol):
    """What a link needs: a node's configuration (a :class:`Node`, or ``config check`` before one)."""

    @property
    def config(self) -> NodeConfig: ...


class PeerLink:
    """One long-lived mutual-TLS channel to a peer, with its stub.

    The peer's certificate must name it: ``<id>.peer.petanda`` (every peer certificate carries its own),
    unless the peer's config entry gives a ``server_name``. Any member's certificate is valid for the
    CA, so without this check one member could answer for another.
    """

    def __init__(self, node: _Configured, peer_id: str) -> None:
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
        options.append(("grpc.service_config", json.dumps(EVALUATE_RETRY)))
        # a batch up to the largest message can be sent again (gRPC keeps 256 KiB of a call by default)
        options.append(("grpc.per_rpc_retry_buffer_size", node.config.limits.max_message_bytes))
        target = entry.address
        if entry.replicas:
            target = balanced_target(entry.addresses)
            options.append(("grpc.lb_policy_name", "round_robin"))
        self.peer_id = peer_id
        raw = grpc.secure_channel(target, credentials, options=options)
        #: every call carries the protocol version negotiated with the peer (docs/PROTOCOL.md, "Versions")
        self.channel, self.interceptor = VersionInterceptor.wrap(raw, node.config.protocol.versions)
        self.stub = peer_pb2_grpc.PeerServiceStub(self.channel)

    @property
    def versions(self) -> PeerVersions:
        """What this node knows of the peer's protocol versions, and the one its calls use."""
        return self.interceptor.versions

    def speaks(self, version: int) -> bool:
        """Whether calls to the peer may use protocol ``version``: both speak it. Asks the peer first
        when its versions are not known yet (one ``Health/Check``); False if it cannot be reached."""
        self.interceptor.learn()
        return self.versions.speaks(version)

    def close(self) -> None:
        self.channel.close()


def balanced_target(addresses: list[str]) -> str:
    """One gRPC target over several ``host:port`` addresses of one node (its replicas): each host is
    resolved now (``Links.reset`` resolves again), and the target lists them all, for round_robin.

    Raises:
        ConfigError: a host does not resolve, or the addresses mix IPv4 and IPv6.
    """
    resolved: list[tuple[int, str]] = []
    for address in addresses:
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise errors.ConfigError(f"{address}: {error.strerror}", key="peers.replicas") from None
        family, *_rest, sockaddr = infos[0]
        resolved.append(
            (family, f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}")
        )
    families = {family for family, _ in resolved}
    if len(families) > 1:
        raise errors.ConfigError("replicas mix IPv4 and IPv6 addresses", key="peers.replicas")
    scheme = "ipv6" if families == {socket.AF_INET6} else "ipv4"
    return f"{scheme}:" + ",".join(a for _, a in resolved)


class Links:
    """The node's channels to its peers, opened on first use and reused."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._links: dict[str, PeerLink] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the node is shutting down)."""
        return self._closed

    def get(self, peer_id: str) -> PeerLink:
        with self._lock:
            if self._closed:
                raise errors.PeerUnavailable(f"{peer_id}: the node is shutting down")
            link = self._links.get(peer_id)
            if link is None:
                link = self._links[peer_id] = PeerLink(self._node, peer_id)
            return link

    def speaks(self, peer_id: str, version: int) -> bool:
        """Whether calls to ``peer_id`` may use protocol ``version`` (:meth:`PeerLink.speaks`): the test
        a sender of a message that exists only from ``version`` on makes first."""
        return self.get(peer_id).speaks(version)

    def versions(self) -> dict[str, PeerVersions]:
        """What is known of each peer's protocol versions, for the links opened so far."""
        with self._lock:
            return {peer_id: link.versions for peer_id, link in self._links.items()}

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


def peer_error(peer_id: str, error: grpc.RpcError) -> errors.PetandaError:
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
    if cls is errors.UnsupportedVersion:
        return unsupported_version(error, f"{peer_id}: {detail}")
    return errors.PeerUnavailable(f"{peer_id}: {code.name if code else 'error'}: {detail}")
