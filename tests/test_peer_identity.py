"""The server's identity on every outgoing channel, on real nodes over real mutual TLS: every peer
certificate names its node (``<id>.peer.petanda``) and no other, and a channel to a peer or to one's own
node accepts only that name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from client.protocol.errors import ConfigError
from client.tools.connection import Connection, open_channel
from client.transport.tls import peer_server_name
from node.pki import init_ca, issue
from tests.fednet import Net
from tests.threestates import audit_actions, point, start_three, sync_results


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = start_three(tmp_path, sync=False)
    yield net
    net.close()


def test_a_peer_certificate_names_its_node_and_no_other(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    paths = issue(tmp_path / "ca", role="peer", id="TH", out_dir=tmp_path / "th", hostnames=["node.th"])
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["th.peer.petanda", "node.th"]
    assert peer_server_name("TH") == "th.peer.petanda"
    for reserved in ("my.peer.petanda", "*.peer.petanda", "petanda"):
        with pytest.raises(ConfigError, match="reserved"):
            issue(tmp_path / "ca", role="peer", id="SG", out_dir=tmp_path / "sg", hostnames=[reserved])


def test_a_peer_address_served_by_another_member_fails_the_handshake(net: Net) -> None:
    my = net.node("MY")
    th = net.federation.members["TH"]
    point(net, "MY", {"SG": th.address})  # TH's server holds a valid CA certificate, but not SG's
    results = sync_results(net, "MY")
    assert results["TH"].ok, results["TH"]
    assert not results["SG"].ok and "UNAVAILABLE" in results["SG"].detail, results["SG"]
    assert my.store.get_meta("peer.SG.signing_key") is None
    assert my.store.peer_manifest("SG") is None and my.store.peer_tree_heads("SG") == []

    point(net, "MY", {})
    results = sync_results(net, "MY")
    assert results["SG"].ok, results["SG"]
    assert my.store.get_meta("peer.SG.signing_key") == net.node("SG").audit.public_key.hex()


def test_an_investigator_reaches_only_their_own_states_node(net: Net) -> None:
    members = net.federation.members
    cert, key = members["MY"].investigator

    def check(target: str, server_name: str | None = None) -> Any:
        conn = Connection(target=target, ca=net.federation.ca, cert=cert, key=key, server_name=server_name)
        with open_channel(conn) as channel:
            stub = investigator_pb2_grpc.InvestigatorServiceStub(channel)
            return stub.Check(investigator_pb2.CheckRequest(queries=[]), timeout=5)

    assert list(check(members["MY"].address).results) == []
    with pytest.raises(grpc.RpcError) as error:
        check(members["TH"].address)  # TH's certificate is valid, but it is not my.peer.petanda
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert audit_actions(net.node("TH"), "rpc.denied") == []  # refused by us, before any call reached TH
    # An explicit server name replaces the rule: the handshake passes, and TH refuses an MY person.
    with pytest.raises(grpc.RpcError) as error:
        check(members["TH"].address, server_name="th.peer.petanda")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
