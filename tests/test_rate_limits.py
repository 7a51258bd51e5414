"""Rate limits and quotas, over real servers (``tests/limitednet.py``): the in-memory token bucket, a
per-caller rate limit on every peer RPC, refusals audited within a budget, the investigators' check
quota and deadline cap, and a batch that can never pass (no ``retry-after-ms`` to wait on forever).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import common_pb2, investigator_pb2, peer_pb2
from client.protocol import oprf
from client.protocol.digest import oprf_input
from client.protocol.kinds import kind_code
from client.protocol.manifest import SignedManifest
from node.check import CheckReport
from node.rpc import RateLimiter
from tests.fednet import Net
from tests.limitednet import (
    audit_actions,
    limited_net,  # noqa: F401 - the fixture net
    manifest_request,
    retry_ms,
    rpc_error,
)

pytestmark = pytest.mark.timeout(60)


def test_rate_limiter_refills_refuses_without_consuming_and_bounds_its_keys() -> None:
    now = [100.0]
    limiter = RateLimiter(lambda: now[0], max_keys=2)
    take = lambda key, amount=1.0: limiter.take(key, rate_per_s=2.0, burst=3, amount=amount)  # noqa: E731
    assert [take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take("a") == pytest.approx(0.5)
    assert take("a") == pytest.approx(0.5)  # the refusal consumed nothing
    now[0] += 0.5
    assert take("a") == 0.0
    now[0] -= 50  # a clock going back refills nothing
    assert take("a") > 0
    assert take("b", amount=4) == math.inf  # more than the bucket holds: never
    assert take("b") == 0.0  # ...and that refusal took nothing either
    take("c")  # a third key drops the least recently used one ("a"), which comes back full
    assert [take("a") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_every_peer_rpc_takes_a_token_from_its_callers_bucket(net: Net) -> None:
    th, sg = net.peer_stub("MY", as_member="TH"), net.peer_stub("MY", as_member="SG")
    version = SignedManifest.from_bytes(th.GetManifest(manifest_request(), timeout=5).signed_manifest)
    v = version.manifest.version
    for _ in range(4):  # 5 tokens: one taken above
        th.GetManifest(manifest_request(v), timeout=5)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = [
        lambda: th.GetManifest(manifest_request(), timeout=5),
        lambda: th.GetFilter(
            peer_pb2.GetFilterRequest(version=v, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF),
            timeout=5,
        ),
        lambda: th.GetRecords(
            peer_pb2.GetRecordsRequest(version=v, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF),
            timeout=5,
        ),
        lambda: th.ReportSighting(peer_pb2.ReportSightingRequest(), timeout=5),
        lambda: th.ExchangeTreeHead(peer_pb2.ExchangeTreeHeadRequest(), timeout=5),
        lambda: th.EvaluateOprf(peer_pb2.EvaluateOprfRequest(), timeout=5),
    ]
    for call in refused:
        error = rpc_error(call)
        assert error.code() == exhausted, error
        assert retry_ms(error) == 1000
    # Another peer has its own bucket; a second later TH has one token again.
    assert sg.GetManifest(manifest_request(), timeout=5).signed_manifest
    net.clock.now += 1
    th.GetManifest(manifest_request(), timeout=5)
    assert rpc_error(lambda: th.GetManifest(manifest_request(), timeout=5)).code() == exhausted

    # Only the calls let through reached a handler (and its audit entry); the refusals are rpc.denied.
    # The two full answers are audited one by one; the four not_modified ones are counted, and written
    # as one aggregated peer.reads entry on the maintenance schedule (node/readlog.py).
    served = [e for e in audit_actions(net, "MY", "peer.get_manifest") if e["actor"] == "TH"]
    assert len(served) == 2
    net.node("MY").reads.flush(now=net.clock.now)
    reads = [e for e in audit_actions(net, "MY", "peer.reads") if e["peer"] == "TH"]
    assert [(e["method"], e["count"]) for e in reads] == [("GetManifest", 4)]
    assert not audit_actions(net, "MY", "peer.get_filter")
    assert not audit_actions(net, "MY", "peer.report_sighting")
    denied = audit_actions(net, "MY", "rpc.denied")
    assert len(denied) == 7 and {(e["actor"], e["result"]) for e in denied} == {("TH", "rate_limited")}


def test_refused_calls_are_audited_within_a_budget_then_counted(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    # MY's investigator may not call the peer service: each call is refused before any handler.
    member = net.federation.members["MY"]
    cert, key = member.investigator
    from client._proto.petanda.v1 import peer_pb2_grpc

    stub = peer_pb2_grpc.PeerServiceStub(net._channel("MY", cert, key))
    with caplog.at_level(logging.WARNING, logger="node.server"):
        for _ in range(25):
            error = rpc_error(lambda: stub.GetManifest(manifest_request(), timeout=5))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = audit_actions(net, "MY", "rpc.denied")
    assert len(denied) == 10 and all(e["actor"] == "MY/investigator" for e in denied)
    warnings = [r for r in caplog.records if "not all audited" in r.getMessage()]
    assert len(warnings) == 1  # once in a while, not once per refusal

    net.clock.now += 1  # one more entry allowed: it says how many were not recorded
    rpc_error(lambda: stub.GetManifest(manifest_request(), timeout=5))
    last = audit_actions(net, "MY", "rpc.denied")[-1]
    assert (last["result"], last["suppressed"]) == ("denied", 15)


def _check_request(n: int, deadline_ms: int = 0) -> Any:
    queries = [investigator_pb2.IndicatorQuery(kind="domain", value=f"q{i}.example") for i in range(n)]
    return investigator_pb2.CheckRequest(queries=queries, deadline_ms=deadline_ms)


def test_checks_take_from_the_investigators_quota(net: Net) -> None:
    stub = net.investigator("MY")
    assert len(stub.Check(_check_request(10), timeout=10).results) == 10  # the burst
    error = rpc_error(lambda: stub.Check(_check_request(1), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_ms(error) == 1000
    net.clock.now += 10
    stub.Check(_check_request(10), timeout=10)
    net.clock.now += 10
    error = rpc_error(lambda: stub.Check(_check_request(10), timeout=10))  # 20 + 10 > 25 a day
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    limited = [e for e in audit_actions(net, "MY", "investigator.check") if e.get("result") == "rate_limited"]
    assert len(limited) == 2 and limited[-1]["daily_used"] == 20


def test_the_check_deadline_is_capped(net: Net) -> None:
    checker = net.running["MY"].investigator.checker
    seen: list[float] = []

    def record(items: Any, *, deadline_s: float) -> CheckReport:
        seen.append(deadline_s)
        return CheckReport([() for _ in items], {}, {})

    checker.check = record  # type: ignore[method-assign]
    stub = net.investigator("MY")
    for deadline_ms in (4_000_000_000, 0, 1500):
        stub.Check(_check_request(1, deadline_ms), timeout=10)
        net.clock.now += 1
    assert seen == [2.0, 1.0, 1.5]  # max_check_deadline_ms, check_deadline_ms, as asked


def test_a_batch_that_can_never_pass_is_resource_exhausted_without_retry_header(net: Net) -> None:
    stub = net.peer_stub("MY", as_member="TH")
    _, elements = oprf.blind([oprf_input("phone", f"+6591000{i:03d}") for i in range(9)], oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=net.node("MY").epoch, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
    )
    error = rpc_error(lambda: stub.EvaluateOprf(request, timeout=5))  # 9 > oprf_daily_quota (8)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_ms(error) is None and "can never pass" in (error.details() or "")
