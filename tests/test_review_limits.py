"""Limits found missing by the security review, over real servers (``tests/fednet.py``):

per-peer rate limit of every peer RPC and a throttled audit of refusals (H1), sightings only of
published tags and at most ``sightings_daily`` a day (H1), pruning of publications, old-epoch digests
and purged indicators (M2), the investigators' check quota and deadline cap (M6), an infinite wait
without a ``retry-after-ms`` header (L1), INTERNAL for unexpected exceptions and uint64 fields the store
cannot hold (L2), no server path in a NOT_FOUND for an epoch whose key cannot be loaded (L5), and the
auditor reads that are audited (L7).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import (
    auditor_pb2,
    common_pb2,
    investigator_pb2,
    peer_pb2,
)
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.digest import oprf_input
from client.protocol.kinds import TIER_OPRF, kind_code
from client.protocol.manifest import SignedManifest
from client.protocol.metadata import decode_bucket
from node import keys
from node.config import LimitsSection, load_config, render_config_template
from node.rpc import RateLimiter
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(60)

DAY = 86_400
#: 2024-06-01T01:00:00Z: one hour into a UTC day.
T0 = 19_875 * DAY + 3600
DATA = Path(__file__).parent / "data"

LIMITS: dict[str, object] = {
    "max_batch": 10,
    "oprf_burst": 10,
    "oprf_rate_per_s": 1.0,
    "oprf_daily_quota": 8,
    "peer_rpc_rate_per_s": 1.0,
    "peer_rpc_burst": 5,
    "sightings_daily": 2,
    "check_rate_per_s": 1.0,
    "check_burst": 10,
    "check_daily_quota": 25,
    "check_deadline_ms": 1000,
    "max_check_deadline_ms": 2000,
}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """MY, TH and SG, every one a peer of the others; MY holds the sample CSV, published."""
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG"], now=T0, limits=LIMITS)
    try:
        net.node("MY").ingest([DATA / "indicators.csv"], now=T0)
        yield net
    finally:
        net.close()


def _error(call: Any) -> grpc.RpcError:
    """Run ``call`` (which must fail, a stream included) and return its error."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return info.value


def _retry_ms(error: grpc.RpcError) -> int | None:
    value = dict(error.trailing_metadata() or ()).get("retry-after-ms")
    return None if value is None else int(value)


def _entries(net: Net, node_id: str) -> list[dict[str, Any]]:
    store = net.node(node_id).store
    return [decode_entry(e) for e in store.audit_entries(0, store.audit_size())]


def _actions(net: Net, node_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in _entries(net, node_id) if e.get("action") == action]


def _manifest_request(known: int = 0) -> Any:
    return peer_pb2.GetManifestRequest(known_version=known)


def _published_tag(net: Net, node_id: str) -> tuple[int, str, int, bytes]:
    """``(version, kind, tier, tag)`` of one record in ``node_id``'s latest publication."""
    node = net.node(node_id)
    manifest = SignedManifest.from_bytes(node.store.latest_manifest() or b"").manifest
    for entry in manifest.entries:
        for bucket in range(1 << entry.prefix_bits):
            data = node.store.get_bucket(manifest.version, entry.kind, entry.tier, bucket)
            records = decode_bucket(data) if data else []
            if records:
                return manifest.version, entry.kind, entry.tier, records[0].tag
    raise AssertionError("nothing published")


def _sighting(stub: Any, version: int, kind: str, tier: int, tag: bytes, net: Net | None = None) -> Any:
    if net is not None:
        net.clock.now += 1  # keep the per-peer call rate limit out of the way
    request = peer_pb2.ReportSightingRequest(
        kind=kind_code(kind), tier=tier, version=version, tag=tag, seen_at=T0
    )
    return stub.ReportSighting(request, timeout=5)


# --- the in-memory token bucket ---------------------------------------------------------------------


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


# --- H1: every peer RPC is rate limited per caller; refusals are audited within a budget ------------


def test_every_peer_rpc_takes_a_token_from_its_callers_bucket(net: Net) -> None:
    th, sg = net.peer_stub("MY", as_member="TH"), net.peer_stub("MY", as_member="SG")
    version = SignedManifest.from_bytes(th.GetManifest(_manifest_request(), timeout=5).signed_manifest)
    v = version.manifest.version
    for _ in range(4):  # 5 tokens: one taken above
        th.GetManifest(_manifest_request(v), timeout=5)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = [
        lambda: th.GetManifest(_manifest_request(), timeout=5),
        lambda: th.GetFilter(
            peer_pb2.GetFilterRequest(version=v, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF),
            timeout=5,
        ),
        lambda: th.GetMetadataBucket(
            peer_pb2.GetMetadataBucketRequest(
                version=v, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF, bucket_id=0
            ),
            timeout=5,
        ),
        lambda: th.ReportSighting(peer_pb2.ReportSightingRequest(), timeout=5),
        lambda: th.ExchangeTreeHead(peer_pb2.ExchangeTreeHeadRequest(), timeout=5),
        lambda: th.EvaluateOprf(peer_pb2.EvaluateOprfRequest(), timeout=5),
    ]
    for call in refused:
        error = _error(call)
        assert error.code() == exhausted, error
        assert _retry_ms(error) == 1000
    # Another peer has its own bucket; a second later TH has one token again.
    assert sg.GetManifest(_manifest_request(), timeout=5).signed_manifest
    net.clock.now += 1
    th.GetManifest(_manifest_request(), timeout=5)
    assert _error(lambda: th.GetManifest(_manifest_request(), timeout=5)).code() == exhausted

    # Only the calls let through reached a handler (and its audit entry); the refusals are rpc.denied.
    served = [e for e in _actions(net, "MY", "peer.get_manifest") if e["actor"] == "TH"]
    assert len(served) == 6
    assert not _actions(net, "MY", "peer.get_filter") and not _actions(net, "MY", "peer.report_sighting")
    denied = _actions(net, "MY", "rpc.denied")
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
            error = _error(lambda: stub.GetManifest(_manifest_request(), timeout=5))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    denied = _actions(net, "MY", "rpc.denied")
    assert len(denied) == 10 and all(e["actor"] == "MY/investigator" for e in denied)
    warnings = [r for r in caplog.records if "not all audited" in r.getMessage()]
    assert len(warnings) == 1  # once in a while, not once per refusal

    net.clock.now += 1  # one more entry allowed: it says how many were not recorded
    _error(lambda: stub.GetManifest(_manifest_request(), timeout=5))
    last = _actions(net, "MY", "rpc.denied")[-1]
    assert (last["result"], last["suppressed"]) == ("denied", 15)


# --- H1: sightings of published tags only, capped per peer and UTC day -------------------------------


def test_a_sighting_is_recorded_only_for_a_published_tag_and_within_the_daily_cap(net: Net) -> None:
    my = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    version, kind, tier, tag = _published_tag(net, "MY")

    other_kind = "email" if kind != "email" else "phone"
    for args in (
        (version, kind, tier, bytes(16)),  # a tag nobody published
        (version, other_kind, tier, tag),  # the tag, but under another kind
        (version + 7, kind, tier, tag),  # a version that does not exist
    ):
        assert _sighting(stub, *args, net).recorded is False
    assert my.store.sightings() == []
    unknown = [e for e in _actions(net, "MY", "peer.report_sighting") if e["result"] == "unknown_tag"]
    assert len(unknown) == 3

    assert _sighting(stub, version, kind, tier, tag, net).recorded is True
    assert _sighting(stub, version, kind, tier, tag, net).recorded is True
    error = _error(lambda: _sighting(stub, version, kind, tier, tag, net))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    midnight = (T0 // DAY + 1) * DAY
    retry = _retry_ms(error)
    assert retry is not None and abs(retry / 1000 - (midnight - net.clock.now)) < 2
    assert [s.tag for s in my.store.sightings("TH")] == [tag, tag]

    net.clock.now = midnight + 1  # a new UTC day
    assert _sighting(stub, version, kind, tier, tag).recorded is True
    assert len(my.store.sightings("TH")) == 3


# --- M2: pruning --------------------------------------------------------------------------------------


def test_only_keep_versions_publications_are_kept_and_served(net: Net) -> None:
    my = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    first = my.store.latest_version()
    assert first is not None
    held = my.store.get_indicator("phone", "+60123456789")
    assert held is not None
    my.retract("phone", "+60 12-345 6789", now=net.clock.now)  # publishes first + 1
    net.clock.now += 1
    my.publish(now=net.clock.now)  # first + 2: the version that held the retracted phone is gone
    assert my.store.manifest(first) is None
    assert my.store.manifest(first + 1) is not None and my.store.manifest(first + 2) is not None

    phone, oprf_tier = kind_code("phone"), common_pb2.TIER_OPRF
    old_filter = peer_pb2.GetFilterRequest(version=first, kind=phone, tier=oprf_tier)
    assert _error(lambda: stub.GetFilter(old_filter, timeout=5)).code() == grpc.StatusCode.NOT_FOUND
    old_bucket = peer_pb2.GetMetadataBucketRequest(version=first, kind=phone, tier=oprf_tier, bucket_id=0)
    error = _error(lambda: stub.GetMetadataBucket(old_bucket, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no longer served" in (error.details() or "")
    kept = peer_pb2.GetFilterRequest(version=first + 1, kind=phone, tier=oprf_tier)
    assert b"".join(c.data for c in stub.GetFilter(kept, timeout=5))
    # A sighting through the pruned version is an unknown tag.
    tag_args = _published_tag(net, "MY")
    assert _sighting(stub, first, *tag_args[1:]).recorded is False


def test_maintenance_drops_old_epoch_digests_and_purges_old_retractions(net: Net) -> None:
    my = net.node("MY")
    assert my.retract("phone", "+60 12-345 6789", now=net.clock.now)
    assert my.rotate(now=net.clock.now) == 2
    live = my.store.get_indicator("phone", "+6632123456") or my.store.get_indicator("phone", "+66812345678")
    assert live is not None and (1, TIER_OPRF) in live.digests  # epoch 1 still answers (grace)

    net.clock.now += 8 * DAY  # past the 7-day grace period
    my.maintain(now=net.clock.now)
    live = my.store.get_indicator(live.kind, live.canonical)
    assert live is not None and (1, TIER_OPRF) not in live.digests and (2, TIER_OPRF) in live.digests
    assert my.store.get_indicator("phone", "+60123456789") is not None  # retracted 8 days ago: kept

    net.clock.now += 23 * DAY  # retracted 31 days ago, past publish.purge_after_days (30)
    my.maintain(now=net.clock.now)
    assert my.store.get_indicator("phone", "+60123456789") is None
    purges = _actions(net, "MY", "purge")
    assert purges[-1]["before"] == int(net.clock.now) - 30 * DAY and purges[-1]["days"] == 30
    # At most one purge a UTC day, audited when there was something retracted or expired: 8 days after
    # the retraction (nothing old enough yet) and today (the day's first run was the ingest's, with none).
    assert len(purges) == 2
    my.maintain(now=net.clock.now + 60)
    assert len(_actions(net, "MY", "purge")) == 2


# --- M6: investigators' quota and deadline cap --------------------------------------------------------


def _check_request(n: int, deadline_ms: int = 0) -> Any:
    queries = [investigator_pb2.IndicatorQuery(kind="domain", value=f"q{i}.example") for i in range(n)]
    return investigator_pb2.CheckRequest(queries=queries, deadline_ms=deadline_ms)


def test_checks_take_from_the_investigators_quota(net: Net) -> None:
    stub = net.investigator("MY")
    assert len(stub.Check(_check_request(10), timeout=10).results) == 10  # the burst
    error = _error(lambda: stub.Check(_check_request(1), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _retry_ms(error) == 1000
    net.clock.now += 10
    stub.Check(_check_request(10), timeout=10)
    net.clock.now += 10
    error = _error(lambda: stub.Check(_check_request(10), timeout=10))  # 20 + 10 > 25 a day
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    limited = [e for e in _actions(net, "MY", "investigator.check") if e.get("result") == "rate_limited"]
    assert len(limited) == 2 and limited[-1]["daily_used"] == 20


def test_the_check_deadline_is_capped(net: Net) -> None:
    checker = net.running["MY"].investigator.checker
    seen: list[float] = []

    def record(items: Any, *, deadline_s: float) -> list[Any]:
        seen.append(deadline_s)
        return [[] for _ in items]

    checker.check = record  # type: ignore[method-assign]
    stub = net.investigator("MY")
    for deadline_ms in (4_000_000_000, 0, 1500):
        stub.Check(_check_request(1, deadline_ms), timeout=10)
        net.clock.now += 1
    assert seen == [2.0, 1.0, 1.5]  # max_check_deadline_ms, check_deadline_ms, as asked


# --- L1, L2, L5: status codes -------------------------------------------------------------------------


def test_a_batch_that_can_never_pass_is_resource_exhausted_without_retry_header(net: Net) -> None:
    stub = net.peer_stub("MY", as_member="TH")
    _, elements = oprf.blind([oprf_input("phone", f"+6591000{i:03d}") for i in range(9)], oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=net.node("MY").epoch, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
    )
    error = _error(lambda: stub.EvaluateOprf(request, timeout=5))  # 9 > oprf_daily_quota (8)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _retry_ms(error) is None and "can never pass" in (error.details() or "")


def test_values_the_store_cannot_hold_are_invalid_arguments_naming_the_field(net: Net) -> None:
    stub = net.peer_stub("MY", as_member="TH")
    phone, oprf_tier = kind_code("phone"), common_pb2.TIER_OPRF
    huge = 1 << 63
    calls = {
        "version": lambda: stub.GetFilter(
            peer_pb2.GetFilterRequest(version=huge, kind=phone, tier=oprf_tier), timeout=5
        ),
        "known_version": lambda: stub.GetManifest(_manifest_request(huge), timeout=5),
    }
    auditor = net.auditor("MY")
    calls["tree_size"] = lambda: auditor.GetInclusionProof(
        auditor_pb2.GetInclusionProofRequest(index=0, tree_size=(1 << 64) - 1), timeout=5
    )
    calls["second"] = lambda: auditor.GetConsistencyProof(
        auditor_pb2.GetConsistencyProofRequest(first=1, second=huge), timeout=5
    )
    for field, call in calls.items():
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error)
        assert (error.details() or "").startswith(f"{field}: "), error.details()


def test_an_unexpected_exception_is_internal_with_no_detail(
    net: Net, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    my = net.node("MY")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("/srv/petanda/secret.db is on fire")

    monkeypatch.setattr(my, "latest_manifest", boom)
    monkeypatch.setattr(my, "filter_bytes", boom)
    stub = net.peer_stub("MY", as_member="TH")
    request = peer_pb2.GetFilterRequest(version=1, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF)
    with caplog.at_level(logging.ERROR, logger="node.rpc"):
        for call in (
            lambda: stub.GetManifest(_manifest_request(), timeout=5),
            lambda: stub.GetFilter(request, timeout=5),
        ):
            error = _error(call)
            assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert sum("on fire" in r.getMessage() or "on fire" in (r.exc_text or "") for r in caplog.records) >= 2


def test_an_epoch_whose_key_cannot_be_loaded_is_not_found_without_a_path(net: Net) -> None:
    my = net.node("MY")
    my.rotate(now=net.clock.now)
    os.remove(keys.oprf_seed_path(my.dir, 1))
    my._oprf_keys.clear()
    stub = net.peer_stub("MY", as_member="TH")
    _, elements = oprf.blind([oprf_input("phone", "+6591000000")], oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=1, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
    )
    error = _error(lambda: stub.EvaluateOprf(request, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert str(my.dir) not in (error.details() or "") and "epoch-" not in (error.details() or "")


# --- L7: every auditor read is audited ----------------------------------------------------------------


def test_every_auditor_read_is_audited(net: Net) -> None:
    auditor = net.auditor("MY")
    size = net.node("MY").store.audit_size()
    list(auditor.ListTreeHeads(auditor_pb2.ListTreeHeadsRequest(), timeout=5))
    auditor.GetInclusionProof(auditor_pb2.GetInclusionProofRequest(index=0, tree_size=size), timeout=5)
    auditor.GetConsistencyProof(auditor_pb2.GetConsistencyProofRequest(first=1, second=size), timeout=5)
    auditor.GetPublicKey(auditor_pb2.GetPublicKeyRequest(), timeout=5)
    actions = [e["action"] for e in _entries(net, "MY")[size:]]
    assert actions == [
        "auditor.list_tree_heads",
        "auditor.get_inclusion_proof",
        "auditor.get_consistency_proof",
        "auditor.get_public_key",
    ]
    assert all(e["actor"] == "MY/auditor" for e in _entries(net, "MY")[size:])


# --- configuration ------------------------------------------------------------------------------------


def test_the_template_lists_the_new_keys_and_limits_stay_coherent(tmp_path: Path) -> None:
    text = render_config_template("MY")
    for key in (
        "keep_versions = 2",
        "purge_after_days = 30",
        "peer_rpc_rate_per_s = 20.0",
        "peer_rpc_burst = 200",
        "sightings_daily = 1000",
        "check_rate_per_s = 200.0",
        "check_burst = 5000",
        "check_daily_quota = 200000",
        "max_check_deadline_ms = 60000",
    ):
        assert f"\n{key}\n" in text, key
    path = tmp_path / "node.toml"
    path.write_text(text)
    config = load_config(path)
    assert (config.publish.keep_versions, config.limits.peer_rpc_burst) == (2, 200)
    with pytest.raises(ValueError, match="check_burst"):
        LimitsSection(max_batch=100, check_burst=50)
    with pytest.raises(ValueError, match="max_check_deadline_ms"):
        LimitsSection(check_deadline_ms=5000, max_check_deadline_ms=1000)
