"""A national deployment: two stateless replicas of one node sharing a real PostgreSQL store.

Both replicas serve over mutual TLS with the node's keys; a peer's OPRF quota is one quota whichever
replica it calls, a manifest published by one is served by the other, and the audit log that both write
is one contiguous, verifiable log.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import peer_pb2, peer_pb2_grpc
from client.protocol import oprf
from client.protocol.auditlog import TreeHead, verify_log
from client.protocol.digest import oprf_input
from client.protocol.kinds import kind_code
from client.protocol.manifest import SignedManifest
from client.transport.tls import secure_channel
from node.config import load_config
from node.node import Node
from node.server import RunningServer, start_server
from node.testbed import build_federation, free_ports, write_config

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
LIMITS = {"max_batch": 10, "oprf_burst": 100, "oprf_rate_per_s": 1000.0, "oprf_daily_quota": 50}

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(tmp_path: Path, pg_database_url: str) -> Iterator[tuple[list[Node], list[RunningServer], Path]]:
    federation = build_federation(tmp_path, ["MY", "TH"], limits=LIMITS)
    my, th = federation.members["MY"], federation.members["TH"]
    th.port = free_ports(1)[0]  # TH is only a caller here: MY needs it configured as a peer, not reachable
    write_config(my, [my, th], limits=LIMITS, store_url=pg_database_url)
    config = load_config(my.config)
    nodes = [Node.open(config, clock=lambda: NOW) for _ in range(2)]
    servers = [start_server(node, max_workers=4) for node in nodes]
    yield nodes, servers, tmp_path
    for server in servers:
        server.server.stop(0).wait()
    for node in nodes:
        node.close()


def _peer_stub(root: Path, port: int) -> peer_pb2_grpc.PeerServiceStub:
    tls = root / "TH" / "tls"
    channel = secure_channel(
        f"127.0.0.1:{port}", ca=root / "ca" / "ca.crt", cert=tls / "TH.crt", key=tls / "TH.key",
        server_name="my.peer.petanda",
    )  # fmt: skip
    return peer_pb2_grpc.PeerServiceStub(channel)


def test_replicas_share_publications_quota_and_one_audit_log(
    replicas: tuple[list[Node], list[RunningServer], Path],
) -> None:
    nodes, servers, root = replicas
    csv = root / "my.csv"
    csv.write_text("kind,value,tlp\nphone,+60123456789,GREEN\ndomain,scam-shop.example,GREEN\n")
    assert nodes[0].ingest([csv], now=NOW).stored == 2

    stubs = [_peer_stub(root, server.port) for server in servers]
    manifests = [stub.GetManifest(peer_pb2.GetManifestRequest(), timeout=5) for stub in stubs]
    assert manifests[0].signed_manifest == manifests[1].signed_manifest  # published by A, served by B
    manifest = SignedManifest.from_bytes(manifests[1].signed_manifest).manifest

    # One quota of 50 evaluations a day for TH, across both replicas.
    inputs = [oprf_input("phone", "+60123456789")] * 10
    blinds, blinded = oprf.blind(inputs, oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=manifest.epoch, kind=kind_code("phone"), blinded_elements=blinded, verifiable=True
    )
    served = 0
    for call in range(8):
        try:
            response = stubs[call % 2].EvaluateOprf(request, timeout=5)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            continue
        outputs = oprf.finalize(
            inputs, blinds, list(response.evaluated_elements), oprf.MODE_VOPRF,
            blinded=blinded, pk=manifest.oprf_public_key, proof=response.proof,
        )  # fmt: skip
        assert len(outputs) == 10
        served += 1
    assert served == 5  # 50 / 10, whichever replica answered

    # Both replicas wrote to one log: contiguous, chained, and every head either signs verifies.
    for node in nodes:
        node.audit.sign_head(force=True)
    store = nodes[0].store
    assert store.integrity_check() == []
    heads = [TreeHead("MY", h.size, h.root, h.timestamp, h.signature) for h in store.tree_heads()]
    size = max(h.tree_size for h in heads)
    key = Ed25519PublicKey.from_public_bytes(nodes[1].audit.public_key)
    verify_log(store.audit_entries(0, size), heads, key, node_id="MY")
    actions = [e for e in store.audit_entries(0, size) if b'"peer.evaluate_oprf"' in e]
    assert sum(b'"result":"ok"' in e for e in actions) == 5
    assert sum(b'"result":"rate_limited"' in e for e in actions) == 3
