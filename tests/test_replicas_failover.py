"""A member's replicas behind one name: channels balance over them, and one that dies costs no check.

INTEGRATION TESTS. In process (tests/fednet.py): TH serves from two gRPC servers over one store (its
replicas); MY lists both addresses (`replicas`), so its channel to TH balances calls over them (gRPC
round_robin). With one replica stopped, every check that starts afterwards is answered. As processes
(tests/replicanet.py): TH's two `petanda-node serve` replicas over one real PostgreSQL, one of them
SIGKILLed while investigators' checks run concurrently through MY: no check that started after the kill
fails, and a check in flight at the kill fails at most as TH unavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client._proto.petanda.v1 import investigator_pb2
from node.server import RunningServer, start_server
from tests.fednet import Net, start_net
from tests.replicanet import Replicas, load

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
S = investigator_pb2


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Net, RunningServer]]:
    net = start_net(tmp_path / "net", ["MY", "TH"], now=NOW)
    csv = tmp_path / "th.csv"
    csv.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        "phone,+66812345670,investment,2026-01-01,2026-11-01,80,AMBER\n"
    )
    for node_id in ("MY", "TH"):
        net.node(node_id).ingest([csv], now=NOW)
    th = net.node("TH")
    config = th.config
    th.config = config.model_copy(update={"node": config.node.model_copy(update={"listen": "127.0.0.1:0"})})
    second = start_server(th, max_workers=4)  # TH's second replica: another server over the same store
    th.config = config
    my = net.node("MY")
    peers = [
        p.model_copy(update={"replicas": [f"127.0.0.1:{second.port}"]}) if p.id == "TH" else p
        for p in my.config.peers
    ]
    my.config = my.config.model_copy(update={"peers": peers})
    net.running["MY"].links.reset()
    net.sync_all()
    yield net, second
    second.server.stop(0).wait()
    second.investigator.checker.close()
    net.close()


def _status(net: Net) -> int:
    response = net.check("MY", [("phone", "+66812345670")], deadline_ms=3000)
    (peer,) = response.results[0].peers
    return peer.status


def test_checks_go_on_when_a_replica_dies(net: tuple[Net, RunningServer]) -> None:
    federation, _second = net
    assert [_status(federation) for _ in range(6)] == [S.PEER_STATUS_MATCH] * 6
    federation.stop("TH")  # the replica at TH's main address dies: only `replicas` can answer now
    statuses = [_status(federation) for _ in range(10)]
    # a call in flight on the dead replica at the moment it died may fail; none started afterwards
    assert statuses.count(S.PEER_STATUS_MATCH) >= 9, statuses
    assert statuses[-5:] == [S.PEER_STATUS_MATCH] * 5


@pytest.mark.postgres
@pytest.mark.slow
def test_a_replica_killed_under_concurrent_checks_costs_only_its_calls_in_flight(
    tmp_path: Path, pg_database_url: str
) -> None:
    world = Replicas(tmp_path, pg_database_url, indicators=100)
    try:
        world.spawn()
        run = load(world, seconds=6, investigators=4, kill="TH-a")  # TH-a: the replica at TH's `address`
    finally:
        world.close()
    assert world.processes["TH-a"].returncode == -9 and world.processes["TH-b"].returncode == 0
    assert [c.error for c in run.checks if c.wrong] == []  # every answer given is the right one
    before = [c for c in run.checks if c.end < run.kill_at]
    after = [c for c in run.checks if c.start > run.kill_at]
    assert before and after, (len(before), len(after))
    assert [c.error for c in before if c.error] == []
    assert [c.error for c in after if c.error] == []  # only TH-b, at `replicas`, could answer these
    in_flight = [c for c in run.checks if c.start <= run.kill_at <= c.end]
    assert all("UNAVAILABLE" in (c.error or "UNAVAILABLE") for c in in_flight), in_flight
