"""A real federation inside the test process: real gRPC servers on 127.0.0.1:0, real mTLS, real stores.

Every member is a :class:`node.node.Node` with its own SQLite file, its own keys and its own server,
set up by :func:`node.testbed.build_federation` exactly as an operator would. Servers bind port 0; once
every port is known, the configs are rewritten to name the peers and reloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from client._proto.petanda.v1 import (
    auditor_pb2_grpc,
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2_grpc,
)
from client.transport.tls import secure_channel
from node.config import load_config
from node.keys import FEDERATION_SECRET_FILE
from node.node import Node
from node.peers import Links
from node.server import RunningServer, start_server
from node.servicers import InvestigatorServicer
from node.sync import Syncer
from node.testbed import Federation, Member, build_federation, write_config


class Clock:
    """A settable clock shared by a test and its nodes."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Running:
    member: Member
    node: Node
    server: RunningServer
    links: Links
    investigator: InvestigatorServicer


@dataclass
class Net:
    federation: Federation
    clock: Clock
    running: dict[str, Running] = field(default_factory=dict)
    channels: list[grpc.Channel] = field(default_factory=list)

    def node(self, node_id: str) -> Node:
        return self.running[node_id].node

    def sync(self, node_id: str) -> list[Any]:
        r = self.running[node_id]
        return Syncer(r.node, r.links, clock=self.clock).sync_all()

    def sync_all(self) -> None:
        for node_id in self.running:
            for result in self.sync(node_id):
                assert result.ok, (node_id, result)

    def pin(self, node_id: str, versions: list[int]) -> None:
        """Give ``node_id`` a ``[protocol] versions`` setting, as an operator would in its file."""
        member = self.federation.members[node_id]
        text = member.config.read_text()
        member.config.write_text(text.replace("[tls]", f"[protocol]\nversions = {versions}\n[tls]", 1))
        self.node(node_id).config = load_config(member.config)

    def _channel(self, node_id: str, cert: Path, key: Path) -> grpc.Channel:
        member = self.federation.members[node_id]
        channel = secure_channel(member.address, ca=self.federation.ca, cert=cert, key=key)
        self.channels.append(channel)
        return channel

    def investigator(self, node_id: str, *, as_member: str | None = None) -> Any:
        """An InvestigatorService stub of ``node_id`` with the investigator certificate of ``as_member``."""
        cert, key = self.federation.members[as_member or node_id].investigator
        return investigator_pb2_grpc.InvestigatorServiceStub(self._channel(node_id, cert, key))

    def auditor(self, node_id: str) -> Any:
        cert, key = self.federation.members[node_id].auditor
        return auditor_pb2_grpc.AuditorServiceStub(self._channel(node_id, cert, key))

    def peer_stub(self, node_id: str, *, as_member: str) -> Any:
        """A PeerService stub of ``node_id`` authenticated as member ``as_member``'s node."""
        member = self.federation.members[as_member]
        tls = member.dir / "tls"
        return peer_pb2_grpc.PeerServiceStub(
            self._channel(node_id, tls / f"{as_member}.crt", tls / f"{as_member}.key")
        )

    def raw_peer_stub(self, node_id: str, *, as_member: str) -> Any:
        """A PeerService stub of ``node_id`` as ``as_member``'s node whose channel labels no call with a
        protocol version: each call says its own (``metadata``), or none, which is version 2."""
        tls = self.federation.members[as_member].dir / "tls"
        channel = secure_channel(
            self.federation.members[node_id].address,
            ca=self.federation.ca,
            cert=tls / f"{as_member}.crt",
            key=tls / f"{as_member}.key",
            versions=None,
        )
        self.channels.append(channel)
        return peer_pb2_grpc.PeerServiceStub(channel)

    def check(self, node_id: str, queries: Sequence[tuple[str, str]], *, deadline_ms: int = 5000) -> Any:
        stub = self.investigator(node_id)
        request = investigator_pb2.CheckRequest(
            queries=[investigator_pb2.IndicatorQuery(kind=k, value=v) for k, v in queries],
            deadline_ms=deadline_ms,
        )
        return stub.Check(request, timeout=deadline_ms / 1000 + 5)

    def stop(self, node_id: str) -> None:
        r = self.running[node_id]
        r.server.server.stop(0).wait()

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for r in self.running.values():
            r.server.server.stop(0).wait()
            r.investigator.checker.close()
            r.links.close()
            r.node.close()


def start_net(
    root: Path,
    ids: Sequence[str],
    *,
    now: float,
    limits: Mapping[str, object] | None = None,
    hmac_kinds: Sequence[str] = (),
    without_secret: Sequence[str] = (),
    max_workers: int = 8,
) -> Net:
    """Build and start a federation of ``ids``, every member a peer of every other; the members of
    ``without_secret`` start with no federation secret (their file is removed before their first start,
    which would wrap it into the store). Each server has ``max_workers`` threads (a benchmark passes a
    deployment's, :func:`node.server.start_server`'s default)."""
    federation = build_federation(root, ids, hmac_kinds=hmac_kinds, limits=limits)
    for node_id in without_secret:
        federation.members[node_id].dir.joinpath(FEDERATION_SECRET_FILE).unlink()
    clock = Clock(now)
    net = Net(federation, clock)
    for node_id, member in federation.members.items():
        node = Node.open(load_config(member.config), clock=clock)
        links = Links(node)
        server = start_server(node, links=links, max_workers=max_workers)
        member.port = server.port
        net.running[node_id] = Running(member, node, server, links, server.investigator)
    for node_id, member in federation.members.items():
        write_config(member, federation.members.values(), hmac_kinds=hmac_kinds, limits=limits)
        net.running[node_id].node.config = load_config(member.config)
    return net
