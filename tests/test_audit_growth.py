"""Audit growth a peer cannot drive: repeated read-only calls (``GetManifest`` answered ``not_modified``,
a filter already served) are counted and written as one ``peer.reads`` entry per peer and method on the
maintenance schedule (``audit.aggregate_interval_s``) and at a drain, never one per call. Real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import common_pb2, peer_pb2
from client.protocol.auditlog import decode_entry, verify_log
from client.protocol.kinds import kind_code
from client.protocol.manifest import SignedManifest
from node.readlog import ReadLog
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(180)

DAY = 86_400
T0 = 19_875 * DAY + 3600
DATA = Path(__file__).parent / "data"
#: Peer calls limited far above what the test makes (the aggregation, not the rate limit, is tested).
LIMITS: dict[str, object] = {"peer_rpc_rate_per_s": 1e6, "peer_rpc_burst": 1_000_000}
POLLS = 10_000


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG"], now=T0, limits=LIMITS)
    try:
        net.node("MY").ingest([DATA / "indicators.csv"], now=T0)
        yield net
    finally:
        net.close()


def _entries(net: Net, start: int = 0) -> list[dict[str, Any]]:
    store = net.node("MY").store
    return [decode_entry(e) for e in store.audit_entries(start, store.audit_size())]


def _version(stub: Any) -> int:
    response = stub.GetManifest(peer_pb2.GetManifestRequest(), timeout=5)
    return SignedManifest.from_bytes(response.signed_manifest).manifest.version


def test_ten_thousand_not_modified_manifests_add_one_entry(net: Net) -> None:
    my = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    version = _version(stub)  # a full answer: audited on its own
    size = my.store.audit_size()
    request = peer_pb2.GetManifestRequest(known_version=version)
    first = net.clock.now
    for i in range(POLLS):
        if i == POLLS // 2:
            net.clock.now += 30
        assert stub.GetManifest(request, timeout=5).not_modified
    assert my.store.audit_size() - size <= 2  # nothing per call (a handful at most, of other causes)
    assert my.reads.pending() == POLLS

    # Maintenance before the interval writes nothing; after it, one entry per peer and method.
    my.maintain(now=net.clock.now)
    assert not [e for e in _entries(net, size) if e["action"] == "peer.reads"]
    net.clock.now = T0 + my.config.audit.aggregate_interval_s
    my.maintain(now=net.clock.now)
    added = _entries(net, size)
    reads = [e for e in added if e["action"] == "peer.reads"]
    assert len(reads) == 1 and len(added) <= 4
    assert {k: reads[0][k] for k in ("actor", "role", "peer", "method", "count", "first", "last")} == {
        "actor": "TH",
        "role": "peer",
        "peer": "TH",
        "method": "GetManifest",
        "count": POLLS,
        "first": first,
        "last": first + 30,
    }
    assert my.reads.pending() == 0
    # The aggregated entries are ordinary entries of the verifiable log.
    head = my.audit.latest()
    key = Ed25519PublicKey.from_public_bytes(my.audit.public_key)
    verify_log(my.store.audit_entries(0, head.tree_size), [head], key, node_id="MY")


def test_a_filter_served_again_is_aggregated_and_a_new_one_is_audited(net: Net) -> None:
    my = net.node("MY")
    th, sg = net.peer_stub("MY", as_member="TH"), net.peer_stub("MY", as_member="SG")
    version = _version(th)
    phone = peer_pb2.GetFilterRequest(version=version, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF)
    email = peer_pb2.GetFilterRequest(version=version, kind=kind_code("email"), tier=common_pb2.TIER_OPRF)
    size = my.store.audit_size()
    for _ in range(5):
        assert b"".join(c.data for c in th.GetFilter(phone, timeout=5))
    list(th.GetFilter(email, timeout=5))
    list(sg.GetFilter(phone, timeout=5))  # another peer's first read of it
    served = [(e["actor"], e["kind"]) for e in _entries(net, size) if e["action"] == "peer.get_filter"]
    assert served == [("TH", "phone"), ("TH", "email"), ("SG", "phone")]
    # A new version is a new artefact: its first read is audited in full.
    net.clock.now += 10
    my.publish(now=net.clock.now)
    newer = _version(th)
    assert newer == version + 1
    list(th.GetFilter(peer_pb2.GetFilterRequest(version=newer, kind=phone.kind, tier=phone.tier), timeout=5))
    assert [e["version"] for e in _entries(net, size) if e["action"] == "peer.get_filter"][-1] == newer
    assert my.reads.pending() == 4
    # A drain writes what was counted.
    net.running["MY"].server.drain()
    reads = [e for e in _entries(net, size) if e["action"] == "peer.reads"]
    assert [(e["peer"], e["method"], e["count"]) for e in reads] == [("TH", "GetFilter", 4)]


def test_the_read_log_reports_first_reads_and_restores_counts_it_could_not_write() -> None:
    written: list[Any] = []
    now = [100.0]

    def append(events: Any) -> None:
        if now[0] < 0:
            raise OSError("store unavailable")
        written.extend(events)

    reads = ReadLog(append, clock=lambda: now[0])
    key = (3, "phone", 1)
    assert reads.note("TH", "GetFilter", key) is True
    assert reads.note("TH", "GetFilter", key) is False
    assert reads.note("SG", "GetFilter", key) is True
    assert reads.note("TH", "GetRecords", key) is True  # another method, another artefact
    assert reads.note("TH", "GetManifest", None) is False
    assert reads.note("TH", "GetCrl", None) is False
    assert reads.pending() == 3
    assert not reads.due(100.0 + 299, 300) and reads.due(100.0 + 300, 300)
    now[0] = -1.0
    with pytest.raises(OSError):
        reads.flush(now=400.0)
    assert reads.pending() == 3 and not written
    now[0] = 500.0
    assert reads.flush(now=500.0) == 3
    assert sorted((e["peer"], e["method"], e["count"]) for e in written) == [
        ("TH", "GetCrl", 1),
        ("TH", "GetFilter", 1),
        ("TH", "GetManifest", 1),
    ]
    assert reads.flush(now=600.0) == 0
