"""Sightings, over real servers (``tests/limitednet.py``): recorded only for a tag the holder published,
and at most ``sightings_daily`` per peer and UTC day.
"""

from __future__ import annotations

import grpc
import pytest

from tests.fednet import Net
from tests.limitednet import (
    DAY,
    T0,
    audit_actions,
    limited_net,  # noqa: F401 - the fixture net
    published_tag,
    report_sighting,
    retry_ms,
    rpc_error,
)

pytestmark = pytest.mark.timeout(60)


def test_a_sighting_is_recorded_only_for_a_published_tag_and_within_the_daily_cap(net: Net) -> None:
    my = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    version, kind, tier, tag = published_tag(net, "MY")

    other_kind = "email" if kind != "email" else "phone"
    for args in (
        (version, kind, tier, bytes(16)),  # a tag nobody published
        (version, other_kind, tier, tag),  # the tag, but under another kind
        (version + 7, kind, tier, tag),  # a version that does not exist
    ):
        assert report_sighting(stub, *args, net).recorded is False
    assert my.store.sightings() == []
    unknown = [e for e in audit_actions(net, "MY", "peer.report_sighting") if e["result"] == "unknown_tag"]
    assert len(unknown) == 3

    assert report_sighting(stub, version, kind, tier, tag, net).recorded is True
    assert report_sighting(stub, version, kind, tier, tag, net).recorded is True
    error = rpc_error(lambda: report_sighting(stub, version, kind, tier, tag, net))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    midnight = (T0 // DAY + 1) * DAY
    retry = retry_ms(error)
    assert retry is not None and abs(retry / 1000 - (midnight - net.clock.now)) < 2
    assert [s.tag for s in my.store.sightings("TH")] == [tag, tag]

    net.clock.now = midnight + 1  # a new UTC day
    assert report_sighting(stub, version, kind, tier, tag).recorded is True
    assert len(my.store.sightings("TH")) == 3
