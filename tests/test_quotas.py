"""The OPRF enumeration budget over real servers (``tests/fednet.py``): per-peer, per-kind daily quotas,
a per-peer override, a holder-wide quota that colluding peers share (refused by name, alerted), refusal
messages that name the limit and its reset, and invalid batches that consume nothing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import peer_pb2
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.kinds import kind_code
from node.config import LimitsSection, load_config, render_config_template
from node.quotas import HOLDER
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(120)

DAY = 86_400
#: 2024-06-01T01:00:00Z: one hour into a UTC day.
T0 = 19_875 * DAY + 3600
MIDNIGHT = 19_876 * DAY
#: Small quotas: 10 a batch, 10 tokens refilled at 1/s, 20 a peer and kind a day, 30 a kind a day in all.
LIMITS: dict[str, object] = {
    "max_batch": 10,
    "oprf_burst": 10,
    "oprf_rate_per_s": 1.0,
    "oprf_daily_quota": 20,
    "oprf_holder_daily_quota": 30,
    "peer_rpc_rate_per_s": 1000.0,
    "peer_rpc_burst": 1000,
}
#: TH's bilateral agreement with MY: its own quota, outside the holder-wide one.
TH_QUOTA = 50


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """MY (the holder) and three peers; MY's config gives TH its own daily quota."""
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG", "VN"], now=T0, limits=LIMITS)
    try:
        config = net.running["MY"].member.config
        text = config.read_text()
        assert text.count('id = "TH"\n') == 1
        config.write_text(text.replace('id = "TH"\n', f'id = "TH"\noprf_daily_quota = {TH_QUOTA}\n'))
        net.node("MY").config = load_config(config)
        yield net
    finally:
        net.close()


def _elements(n: int) -> list[bytes]:
    return oprf.blind([f"value {i}".encode() for i in range(n)], oprf.MODE_VOPRF)[1]


def _call(net: Net, peer: str, elements: list[bytes], kind: str = "phone") -> Any:
    stub = net.peer_stub("MY", as_member=peer)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=net.node("MY").epoch, kind=kind_code(kind), blinded_elements=elements, verifiable=True
    )
    return stub.EvaluateOprf(request, timeout=10)


def _evaluate(net: Net, peer: str, n: int, kind: str = "phone") -> None:
    """Evaluate ``n`` elements for ``peer``, with a full token bucket (the clock moves 10 s first)."""
    net.clock.now += 10
    assert len(_call(net, peer, _elements(n), kind).evaluated_elements) == n


def _refused(net: Net, peer: str, n: int, kind: str = "phone") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _call(net, peer, _elements(n), kind)
    return info.value


def _retry_s(error: grpc.RpcError) -> float | None:
    value = dict(error.trailing_metadata() or ()).get("retry-after-ms")
    return None if value is None else int(value) / 1000


def _entries(net: Net, action: str) -> list[dict[str, Any]]:
    store = net.node("MY").store
    decoded = [decode_entry(e) for e in store.audit_entries(0, store.audit_size())]
    return [e for e in decoded if e["action"] == action]


def _used(net: Net, peer: str, kind: str = "phone") -> int:
    return net.node("MY").quotas.used_today(peer, kind, now=net.clock.now)


def test_the_defaults_are_the_enumeration_budget_and_a_peer_entry_may_override() -> None:
    limits = LimitsSection()
    assert (limits.oprf_daily_quota, limits.oprf_holder_daily_quota) == (20_000, 100_000)
    assert (limits.enumeration_alert_share, limits.enumeration_alert_days) == (0.5, 3)
    assert limits.enumeration_alert_space_share == 0.01
    text = render_config_template("MY", peers=[("TH", "th.example:7443")])
    assert "oprf_daily_quota = 20000" in text and "oprf_holder_daily_quota = 100000" in text
    assert "aggregate_interval_s = 300" in text


def test_quotas_are_per_peer_and_per_kind_and_a_refusal_names_the_quota_and_its_reset(net: Net) -> None:
    _evaluate(net, "SG", 10)
    _evaluate(net, "SG", 10)  # 20: SG's phone quota for the day
    net.clock.now += 10
    error = _refused(net, "SG", 1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error.details() or ""
    assert "daily OPRF quota of SG for phone used up (20 of 20 today" in details
    assert "it resets at 2024-06-02T00:00:00Z" in details
    retry = _retry_s(error)
    assert retry is not None and abs(retry - (MIDNIGHT - net.clock.now)) < 2
    # Another kind has a quota of its own; so has another peer.
    _evaluate(net, "SG", 10, kind="email")
    _evaluate(net, "VN", 10)
    limited = [e for e in _entries(net, "peer.evaluate_oprf") if e["result"] == "rate_limited"]
    assert [(e["actor"], e["limit"], e["daily_used"], e["daily_quota"]) for e in limited] == [
        ("SG", "peer_daily", 20, 20)
    ]
    ok = [e for e in _entries(net, "peer.evaluate_oprf") if e["result"] == "ok"]
    assert [(e["actor"], e["kind"], e["daily_used"]) for e in ok][-2:] == [
        ("SG", "email", 10),
        ("VN", "phone", 10),
    ]
    # A new UTC day gives SG its phone quota back.
    net.clock.now = MIDNIGHT + 60
    _evaluate(net, "SG", 10)


def test_a_rate_refusal_names_the_burst_and_the_wait(net: Net) -> None:
    _evaluate(net, "SG", 10)  # the bucket is empty now
    error = _refused(net, "SG", 4)
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "OPRF rate limit of SG for phone reached (1/s, burst 10); retry in 4.0 s" in details
    assert _retry_s(error) == pytest.approx(4.0, abs=0.01)
    assert _entries(net, "peer.evaluate_oprf")[-1]["limit"] == "rate"
    assert _used(net, "SG") == 10


def test_colluding_peers_share_the_holder_wide_quota_which_is_refused_by_name_and_alerted(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    _evaluate(net, "SG", 10)
    _evaluate(net, "SG", 10)
    _evaluate(net, "VN", 10)  # 30: the holder-wide phone quota of the day, though VN has 10 of 20 left
    assert _used(net, HOLDER) == 30
    with caplog.at_level(logging.WARNING, logger="node.quotas"):
        net.clock.now += 10
        error, first = _refused(net, "VN", 5), net.clock.now
        net.clock.now += 10
        again, second = _refused(net, "VN", 1), net.clock.now
    for refusal, when in ((error, first), (again, second)):
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = refusal.details() or ""
        assert (
            "holder-wide daily OPRF quota of MY for phone used up (30 of 30 today across all peers" in details
        )
        assert "it resets at 2024-06-02T00:00:00Z" in details
        retry = _retry_s(refusal)
        assert retry is not None and abs(retry - (MIDNIGHT - when)) < 2
    # The refusals took nothing from VN's own quota: a refusal by the second limit costs nothing.
    assert _used(net, "VN") == 10 and _used(net, HOLDER) == 30
    # One alert a kind a day (audit entry and WARNING), however many refusals.
    alerts = _entries(net, "quota.alert")
    assert len(alerts) == 1
    assert {k: alerts[0][k] for k in ("kind", "limit", "quota", "used", "trigger", "result")} == {
        "kind": "phone",
        "limit": "holder_daily",
        "quota": 30,
        "used": 30,
        "trigger": "VN",
        "result": "alert",
    }
    warnings = [r for r in caplog.records if "holder-wide daily quota for phone" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    limited = [e for e in _entries(net, "peer.evaluate_oprf") if e["result"] == "rate_limited"]
    assert [(e["actor"], e["limit"], e["holder_used"]) for e in limited] == [
        ("VN", "holder_daily", 30),
        ("VN", "holder_daily", 30),
    ]
    # Other kinds are untouched; TH, with a quota agreed bilaterally, is outside the holder-wide one.
    _evaluate(net, "VN", 10, kind="email")
    for _ in range(TH_QUOTA // 10):
        _evaluate(net, "TH", 10)
    error = _refused(net, "TH", 1)
    assert f"daily OPRF quota of TH for phone used up ({TH_QUOTA} of {TH_QUOTA} today" in (
        error.details() or ""
    )
    assert _used(net, HOLDER) == 30
    # The next UTC day, the holder-wide quota is back.
    net.clock.now = MIDNIGHT + 60
    _evaluate(net, "VN", 10)
    assert _used(net, HOLDER) == 10


def _bit_255(element: bytes) -> bytes:
    return element[:31] + bytes([element[31] | 0x80])


@pytest.mark.parametrize(
    ("name", "spoil"),
    [
        ("bit 255 set (non-canonical)", _bit_255),
        ("the identity", lambda element: bytes(32)),
        ("31 bytes", lambda element: element[:31]),
        ("not a point", lambda element: b"\xff" * 31 + b"\x7f"),
    ],
)
def test_an_invalid_batch_consumes_no_quota(net: Net, name: str, spoil: Any) -> None:
    elements = _elements(10)
    elements[7] = spoil(elements[7])
    net.clock.now += 10
    with pytest.raises(grpc.RpcError) as info:
        _call(net, "SG", elements)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert "blinded_elements[7]" in (info.value.details() or "")
    assert _used(net, "SG") == 0 and _used(net, HOLDER) == 0
    invalid = _entries(net, "peer.evaluate_oprf")[-1]
    assert invalid["result"] == "invalid" and "daily_used" not in invalid
    # The whole quota is still there: twice a full batch (the bucket refills in between).
    _evaluate(net, "SG", 10)
    _evaluate(net, "SG", 10)
    assert _used(net, "SG") == 20


def test_a_batch_larger_than_the_daily_quota_can_never_pass(tmp_path: Path) -> None:
    limits = {**LIMITS, "oprf_daily_quota": 5}
    net = start_net(tmp_path / "fed", ["MY", "SG"], now=T0, limits=limits)
    try:
        error = _refused(net, "SG", 6)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _retry_s(error) is None
        assert "a batch of 6 can never pass" in (error.details() or "")
        assert _used(net, "SG") == 0
    finally:
        net.close()
