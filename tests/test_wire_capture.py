"""No raw indicator crosses the wire: a loopback packet capture, and a look at every decrypted message.

Two views of the same sync and checks between real nodes:

* **Packets.** An ``AF_PACKET`` socket on ``lo`` captures every TCP segment to or from the nodes' ports.
  No planted indicator may appear in any common spelling. A marker string sent in clear to a node's
  port must appear, so the capture is known to work. (TLS would hide a leak from the capture, which is
  why the second view exists.)
* **Messages.** gRPC interceptors on the nodes' own peer channels record every serialised request and
  response *before encryption*. No planted indicator may appear in them either; the investigator's own
  request to its node, recorded the same way, does contain the value, so the recorder is known to see
  plaintext.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2
from node.demodata import Planted, generate, write_csv
from node.peers import Links, PeerLink
from tests.fednet import Net, start_net

IDS = ["MY", "TH", "SG"]
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
ETH_P_ALL = 0x0003


class Capture:
    """Raw frames on the loopback interface whose TCP ports are ``ports`` (IPv4 only; loopback is)."""

    def __init__(self, ports: set[int]) -> None:
        self.ports = ports
        self.payload = bytearray()
        self.segments = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every frame twice: keep the incoming copy
            if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            header = (ip[0] & 0x0F) * 4
            if ip[9] != socket.IPPROTO_TCP:
                continue
            tcp = ip[header:]
            source, dest = struct.unpack("!HH", tcp[:4])
            if source in self.ports or dest in self.ports:
                self.segments += 1
                self.payload += tcp[(tcp[12] >> 4) * 4 :]


class Recorder(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    """Records the serialised bytes of every request and response on a channel."""

    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.sink.append(request.SerializeToString())
        response = continuation(details, request)
        self.sink.append(response.result().SerializeToString())
        return response

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        self.sink.append(request.SerializeToString())
        for message in continuation(details, request):
            self.sink.append(message.SerializeToString())
            yield message


def _record_peer_traffic(net: Net, sink: list[bytes]) -> None:
    """Wrap every node's peer channels with a :class:`Recorder` (they are opened lazily by Links)."""
    for running in net.running.values():
        links: Links = running.links

        def get(peer_id: str, links: Links = links) -> PeerLink:
            link = Links.get(links, peer_id)
            if not getattr(link, "recorded", False):
                link.stub = type(link.stub)(grpc.intercept_channel(link.channel, Recorder(sink)))
                link.recorded = True  # type: ignore[attr-defined]
            return link

        links.get = get  # type: ignore[method-assign]


def spellings(plant: Planted) -> set[bytes]:
    """Every common spelling of a planted indicator, as bytes in UTF-8 and UTF-16."""
    texts = {plant.canonical, *(h.value for h in plant.holders.values())}
    for text in list(texts):
        texts |= {text.lower(), text.upper()}
        if plant.kind == "phone":
            digits = text.lstrip("+")
            texts |= {digits, digits[2:], "0" + digits[2:]}  # international and national digits
        if ":" in text and plant.kind in ("crypto_wallet", "handle", "bank_account"):
            texts.add(text.split(":")[-1])
    texts = {t for t in texts if len(t) >= 6}
    return {t.encode() for t in texts} | {t.encode("utf-16-le") for t in texts}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Net, list[Planted]]]:
    rows, planted = generate(
        IDS, per_node=15, planted=14, today=datetime.fromtimestamp(NOW, UTC).date(), seed=3
    )
    net = start_net(tmp_path / "net", IDS, now=NOW)
    for node_id, node_rows in rows.items():
        path = tmp_path / f"{node_id}.csv"
        write_csv(path, node_rows)
        net.node(node_id).ingest([path], now=NOW)
    yield net, planted
    net.close()


def _exercise(net: Net, planted: list[Planted]) -> None:
    net.sync_all()
    for asker in IDS:
        response = net.check(asker, [(p.kind, p.canonical) for p in planted])
        assert any(
            peer.status == investigator_pb2.PEER_STATUS_MATCH for r in response.results for peer in r.peers
        )


def test_peer_messages_before_encryption_hold_no_raw_indicator(world: tuple[Net, list[Planted]]) -> None:
    net, planted = world
    peer_traffic: list[bytes] = []
    _record_peer_traffic(net, peer_traffic)
    _exercise(net, planted)
    assert len(peer_traffic) > 50  # manifests, filters, evaluations, buckets, tree heads
    blob = b"\x00".join(peer_traffic)
    for plant in planted:
        leaked = [s for s in spellings(plant) if s in blob]
        assert leaked == [], (plant.kind, plant.canonical, leaked)

    # The same recorder on the investigator's channel to its own node does see the raw value.
    own: list[bytes] = []
    member = net.federation.members["MY"]
    from client._proto.petanda.v1 import investigator_pb2_grpc
    from client.transport.tls import secure_channel

    channel = grpc.intercept_channel(
        secure_channel(
            member.address, ca=net.federation.ca, cert=member.investigator[0], key=member.investigator[1]
        ),
        Recorder(own),
    )
    plant = planted[0]
    investigator_pb2_grpc.InvestigatorServiceStub(channel).Check(
        investigator_pb2.CheckRequest(
            queries=[investigator_pb2.IndicatorQuery(kind=plant.kind, value=plant.canonical)]
        )
    )
    channel.close()
    assert any(plant.canonical.encode() in message for message in own)


@pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="a raw socket needs root")
def test_loopback_capture_sees_the_marker_and_no_raw_indicator(world: tuple[Net, list[Planted]]) -> None:
    net, planted = world
    ports = {m.port for m in net.federation.members.values()}
    marker = b"PETANDA-CAPTURE-MARKER-" + secrets.token_hex(8).encode()
    with Capture(ports) as capture:
        _exercise(net, planted)
        with socket.create_connection(("127.0.0.1", net.federation.members["TH"].port)) as clear:
            clear.sendall(marker + b"\r\n")  # not TLS: the node drops it, the capture sees it
            time.sleep(0.2)
    assert capture.segments > 100
    assert marker in capture.payload
    for plant in planted:
        leaked = [s for s in spellings(plant) if s in capture.payload]
        assert leaked == [], (plant.kind, plant.canonical, leaked)
