"""Pruning, over real servers (``tests/limitednet.py``): only ``keep_versions`` publications are kept and
served; maintenance drops digests of old epochs and purges old retractions.
"""

from __future__ import annotations

import grpc
import pytest

from client._proto.petanda.v1 import common_pb2, peer_pb2
from client.protocol.kinds import TIER_OPRF, kind_code
from tests.fednet import Net
from tests.limitednet import (
    DAY,
    audit_actions,
    limited_net,  # noqa: F401 - the fixture net
    published_tag,
    report_sighting,
    rpc_error,
)

pytestmark = pytest.mark.timeout(60)


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
    # Every manifest stays (peers chain-check across gaps); the pruned version's artefacts are gone.
    assert my.store.manifest(first) is not None
    assert my.store.manifest(first + 1) is not None and my.store.manifest(first + 2) is not None

    phone, oprf_tier = kind_code("phone"), common_pb2.TIER_OPRF
    old_filter = peer_pb2.GetFilterRequest(version=first, kind=phone, tier=oprf_tier)
    assert rpc_error(lambda: stub.GetFilter(old_filter, timeout=5)).code() == grpc.StatusCode.NOT_FOUND
    old_records = peer_pb2.GetRecordsRequest(version=first, kind=phone, tier=oprf_tier)
    error = rpc_error(lambda: list(stub.GetRecords(old_records, timeout=5)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no longer served" in (error.details() or "")
    kept = peer_pb2.GetFilterRequest(version=first + 1, kind=phone, tier=oprf_tier)
    assert b"".join(c.data for c in stub.GetFilter(kept, timeout=5))
    # A sighting through the pruned version is an unknown tag.
    tag_args = published_tag(net, "MY")
    assert report_sighting(stub, first, *tag_args[1:]).recorded is False


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
    purges = audit_actions(net, "MY", "purge")
    assert purges[-1]["before"] == int(net.clock.now) - 30 * DAY and purges[-1]["days"] == 30
    # At most one purge a UTC day, audited when there was something retracted or expired: 8 days after
    # the retraction (nothing old enough yet) and today (the day's first run was the ingest's, with none).
    assert len(purges) == 2
    my.maintain(now=net.clock.now + 60)
    assert len(audit_actions(net, "MY", "purge")) == 2
