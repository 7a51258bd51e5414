"""``oprf.epoch_days`` enforced by the serving node: :meth:`Node.maintain` rotates the OPRF key when the
epoch is that old (audited ``rotate`` with ``scheduled: true``, then published), the previous epoch
answers during ``grace_days`` only, and replicas sharing a store rotate once. Real servers, fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import peer_pb2
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.digest import oprf_input
from client.protocol.kinds import TIER_OPRF, kind_code
from client.protocol.manifest import SignedManifest
from node import keys
from node.config import load_config
from node.node import Node
from tests.fednet import Net, start_net
from tests.together import at_once

pytestmark = pytest.mark.timeout(120)

DAY = 86_400
T0 = 19_875 * DAY + 3600
DATA = Path(__file__).parent / "data"
HELD = "+60123456789"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = start_net(tmp_path / "fed", ["MY", "TH"], now=T0)
    try:
        net.node("MY").ingest([DATA / "indicators.csv"], now=T0)
        yield net
    finally:
        net.close()


def _rotations(node: Node) -> list[dict[str, Any]]:
    entries = [decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size())]
    return [e for e in entries if e["action"] == "rotate"]


def _evaluate(net: Net, epoch: int, value: str = HELD) -> tuple[bytes, bytes]:
    """TH's evaluation of one phone number under MY's key of ``epoch``: (output, MY's public key)."""
    stub = net.peer_stub("MY", as_member="TH")
    manifest = SignedManifest.from_bytes(
        stub.GetManifest(peer_pb2.GetManifestRequest(), timeout=5).signed_manifest
    ).manifest
    inputs = [oprf_input("phone", value)]
    blinds, elements = oprf.blind(inputs, oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=epoch, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
    )
    response = stub.EvaluateOprf(request, timeout=5)
    key = net.node("MY").oprf_key(epoch).pk
    outputs = oprf.finalize(
        inputs,
        blinds,
        list(response.evaluated_elements),
        oprf.MODE_VOPRF,
        blinded=elements,
        pk=key,
        proof=response.proof,
    )
    return outputs[0], manifest.oprf_public_key


def test_maintenance_rotates_the_epoch_when_it_is_epoch_days_old(net: Net) -> None:
    my = net.node("MY")
    days = my.config.oprf.epoch_days
    assert (my.epoch, days, my.config.oprf.grace_days) == (1, 30, 7)
    rotation = my.status(now=T0)["rotation"]
    assert rotation == {"epoch_days": 30, "epoch_started_at": T0, "next_rotation_at": T0 + 30 * DAY}

    net.clock.now = T0 + days * DAY - 1  # a second short of 30 days: nothing
    my.maintain(now=net.clock.now)
    assert my.epoch == 1 and not _rotations(my)

    net.clock.now = T0 + days * DAY
    publication = my.maintain(now=net.clock.now)
    assert my.epoch == 2
    assert publication is not None and publication.signed.manifest.epoch == 2
    [rotated] = _rotations(my)
    assert {k: rotated[k] for k in ("actor", "epoch", "previous", "scheduled", "ts")} == {
        "actor": "node",
        "epoch": 2,
        "previous": 1,
        "scheduled": True,
        "ts": net.clock.now,
    }
    # TH is served the new epoch's manifest, and the new key gives the published digest.
    output, served_key = _evaluate(net, 2)
    assert served_key == my.oprf_key(2).pk
    held = my.store.get_indicator("phone", HELD)
    assert held is not None and held.digests[(2, TIER_OPRF)] == output
    # The next run does not rotate again; the schedule restarts from the rotation.
    my.maintain(now=net.clock.now + 300)
    assert my.epoch == 2 and len(_rotations(my)) == 1
    assert my.status(now=net.clock.now)["rotation"]["next_rotation_at"] == net.clock.now + days * DAY

    # The retired epoch answers during the grace period, not after it.
    net.clock.now += 7 * DAY - 60
    _evaluate(net, 1)
    net.clock.now += 120
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(net, 1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    net.clock.now = T0 + 2 * days * DAY
    my.maintain(now=net.clock.now)
    assert my.epoch == 3 and [e["scheduled"] for e in _rotations(my)] == [True, True]


def test_an_operator_rotation_is_audited_as_not_scheduled_and_restarts_the_schedule(net: Net) -> None:
    my = net.node("MY")
    net.clock.now = T0 + 10 * DAY
    assert my.rotate(now=net.clock.now) == 2
    assert [e["scheduled"] for e in _rotations(my)] == [False]
    net.clock.now = T0 + 30 * DAY  # 30 days after the node started, 20 after the rotation: nothing
    my.maintain(now=net.clock.now)
    assert my.epoch == 2
    net.clock.now = T0 + 40 * DAY
    my.maintain(now=net.clock.now)
    assert my.epoch == 3


def test_replicas_sharing_a_store_rotate_once(net: Net) -> None:
    member = net.running["MY"].member
    replicas = [net.node("MY"), Node.open(load_config(member.config), clock=net.clock)]
    try:
        # A fresh manifest a second before: the replicas have nothing to publish but the rotation (two
        # replicas publishing at once for another reason is refused by the store, and retried).
        replicas[0].maintain(now=T0 + 30 * DAY - 1)
        net.clock.now = T0 + 30 * DAY
        at_once([lambda node=node: node.maintain(now=net.clock.now) for node in replicas])
        assert [node.epoch for node in replicas] == [2, 2]
        assert len(_rotations(replicas[0])) == 1 and replicas[0].keystore.epochs() == [1, 2]
        assert keys.list_epochs(member.dir) == []  # the keys are in the store, none in files
    finally:
        replicas[1].close()
