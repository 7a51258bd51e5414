"""Concurrent checks coalesce per peer: the peer's call limit bounds calls, not investigators.

INTEGRATION TEST on three real nodes (tests/fednet.py). The peers allow each caller 12 calls in a burst
and one every ten seconds after that; twenty investigators' single checks at once would be refused
without coalescing. With it, a check sent while a call to that peer is in flight waits for that call and
goes in the next one, merged with the others: every check is answered, each peer sees a handful of calls.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from node.scheduler import PeerScheduler
from node.servicers import PeerServicer
from tests.fednet import Net, start_net
from tests.limitednet import audit_actions

IDS = ["MY", "TH", "SG"]
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
LIMITS = {"peer_rpc_burst": 12, "peer_rpc_rate_per_s": 0.1, "check_burst": 5000, "check_rate_per_s": 5000.0}
S = investigator_pb2


@pytest.fixture
def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Net]:
    # Each evaluation takes at least 50 ms at the peers, as over a real WAN: the checks below surely
    # overlap (bound before the servers start: gRPC binds a servicer's methods then).
    original = PeerServicer.EvaluateOprf

    def slow(self: PeerServicer, request: Any, context: Any) -> Any:
        time.sleep(0.05)
        return original(self, request, context)

    monkeypatch.setattr(PeerServicer, "EvaluateOprf", slow)
    net = start_net(tmp_path / "net", IDS, now=NOW, limits=LIMITS)
    csv = tmp_path / "th.csv"
    csv.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        "phone,+66812345670,investment,2026-01-01,2026-11-01,80,AMBER\n"
    )
    for node_id in IDS:
        net.node(node_id).ingest([csv], now=NOW)
    net.sync_all()
    net.clock.now += 600  # the sync's own calls are forgotten: each caller has its burst of 12 again
    yield net
    net.close()


def test_twenty_concurrent_single_checks_are_all_answered_in_a_few_calls_per_peer(net: Net) -> None:
    checker = net.running["MY"].investigator.checker
    before = checker.scheduler.calls
    values = ["+66812345670"] + [f"+668100000{i:02d}" for i in range(19)]
    results: dict[str, list[int]] = {}
    start = threading.Barrier(len(values))

    cert, key = net.federation.members["MY"].investigator
    channels = [net._channel("MY", cert, key) for _ in values]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)  # connected before the race starts
    stubs = dict(
        zip(values, (investigator_pb2_grpc.InvestigatorServiceStub(c) for c in channels), strict=True)
    )

    def one(value: str) -> None:
        stub = stubs[value]
        start.wait()
        response = stub.Check(
            S.CheckRequest(queries=[S.IndicatorQuery(kind="phone", value=value)], deadline_ms=10_000),
            timeout=20,
        )
        results[value] = [p.status for p in response.results[0].peers]

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 20
    assert results["+66812345670"] == [S.PEER_STATUS_MATCH, S.PEER_STATUS_MATCH]
    for value in values[1:]:
        assert results[value] == [S.PEER_STATUS_NO_MATCH, S.PEER_STATUS_NO_MATCH], value
    calls = checker.scheduler.calls - before
    assert calls <= 2 * 12, calls  # within both peers' bursts: 20 checks x 2 peers
    assert calls < 40  # fewer calls than evaluations: they were merged


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Net]:
    """Three synced nodes, then each allowing a caller 3 peer calls, then one every 100 s."""
    net = start_net(tmp_path / "net", IDS, now=NOW, limits=LIMITS)
    csv = tmp_path / "th.csv"
    csv.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        "phone,+66812345670,investment,2026-01-01,2026-11-01,80,AMBER\n"
    )
    for node_id in IDS:
        net.node(node_id).ingest([csv], now=NOW)
    net.sync_all()
    for running in net.running.values():
        limits = running.node.config.limits.model_copy(
            update={"peer_rpc_burst": 3, "peer_rpc_rate_per_s": 0.01}
        )
        running.node.config = running.node.config.model_copy(update={"limits": limits})
    net.clock.now += 100_000  # the sync's own calls are forgotten: each caller has its burst of 3 again
    yield net
    net.close()


def test_checks_beyond_the_peers_call_limit_are_held_back_by_the_asker_not_refused_by_the_peer(
    tight: Net,
) -> None:
    stub = tight.investigator("MY")
    statuses = []
    for n in range(5):
        request = S.CheckRequest(queries=[S.IndicatorQuery(kind="phone", value=f"+6681000001{n}")])
        statuses.append([(p.status, p.retry_after_ms) for p in stub.Check(request).results[0].peers])
    # Three calls per peer go (the burst); the fourth and fifth checks are refused by MY's own sender,
    # RATE_LIMITED with when to retry (about 100 s), before the deadline, and never sent.
    for answer in statuses[:3]:
        assert [s for s, _ in answer] == [S.PEER_STATUS_NO_MATCH] * 2
    for answer in statuses[3:]:
        assert [s for s, _ in answer] == [S.PEER_STATUS_RATE_LIMITED] * 2
        assert all(90_000 <= ms <= 112_000 for _, ms in answer), answer
    assert tight.running["MY"].investigator.checker.scheduler.calls == 3 * 2
    for peer in ("TH", "SG"):  # no peer refused a call of MY's (it would have audited it)
        assert audit_actions(tight, peer, "rpc.denied") == [], peer


def test_while_checks_overlap_a_peer_gets_a_round_of_calls_once_per_merge_window(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent checks merge at the pace the peer allows: once a round went to a peer, the next goes a
    merge window later (node.scheduler.PeerScheduler.window), carrying what came meanwhile; every
    check is answered and audited once, its quota taken once."""
    checker = net.running["MY"].investigator.checker
    scheduler = checker.scheduler
    window = scheduler.window()
    assert window == pytest.approx(0.1)  # the peers allow 0.1 call/s: the longest window
    rounds: list[tuple[str, float, bool]] = []  # (peer, when, for a check running alone)
    original = PeerScheduler._round

    def recorded(self: PeerScheduler, peer_id: str, groups: list[Any]) -> None:
        rounds.append((peer_id, time.monotonic(), self._peers[peer_id].last_alone))
        original(self, peer_id, groups)

    monkeypatch.setattr(PeerScheduler, "_round", recorded)
    audited = len(audit_actions(net, "MY", "investigator.check"))
    cert, key = net.federation.members["MY"].investigator
    channels = [net._channel("MY", cert, key) for _ in range(10)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)
    stubs = [investigator_pb2_grpc.InvestigatorServiceStub(c) for c in channels]
    answered: list[list[int]] = []

    def investigator(n: int) -> None:
        for wave in range(3):  # three checks each, one after the other: the checks overlap in waves
            value = f"+6681000{n:02d}{wave:02d}"
            response = stubs[n].Check(
                S.CheckRequest(queries=[S.IndicatorQuery(kind="phone", value=value)], deadline_ms=10_000),
                timeout=20,
            )
            answered.append([p.status for p in response.results[0].peers])

    threads = [threading.Thread(target=investigator, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answered == [[S.PEER_STATUS_NO_MATCH] * 2] * 30
    for peer in ("TH", "SG"):
        times = [(when, alone) for p, when, alone in rounds if p == peer]
        assert len(times) < 30  # merged
        for (before, _), (after, alone) in itertools.pairwise(times):
            # A round goes sooner only for a check running alone (a lone check never waits).
            assert after - before >= window - 1e-3 or alone, (peer, after - before)
    entries = audit_actions(net, "MY", "investigator.check")[audited:]
    assert len(entries) == 30 and all(e["result"] == "ok" for e in entries)
