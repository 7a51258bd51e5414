"""A holder learns nothing from a check: real nodes, the real sync and check code, a hostile holder.

INTEGRATION TESTS on real gRPC servers with mutual TLS (tests/fednet.py). Every PeerService call a
node serves is recorded as (serving node, method, request size) by wrapping the servicer before the
servers start, so a test sees exactly what the holder receives.

- An honest holder receives, for a value it holds, one it does not hold and one that hits its filter
  without a record (what a filter false positive looks like), the same calls of the same sizes — during
  the check, and during the asker's next sync and tree-head exchange with it.
- A hostile holder that stuffs its filter with candidate values and signs more buckets than records has
  its manifest refused; one that stuffs its filter plausibly sees only the same single evaluation, and
  its rate of hits without a record raises an alert at the asker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from client._proto.petanda.v1 import investigator_pb2
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.bloom import BloomFilter
from client.protocol.digest import oprf_input
from client.protocol.kinds import TIER_OPRF
from client.protocol.manifest import (
    FilterEntry,
    Manifest,
    SignedManifest,
    manifest_hash,
    sign_manifest,
)
from client.protocol.metadata import (
    NONCE_SIZE,
    IndicatorMeta,
    SealedRecord,
    buckets_root,
    build_buckets,
    choose_prefix_bits,
    seal,
)
from client.tools.report import alert_detail, alert_party, summarise
from node.servicers import PeerServicer
from tests.fednet import Net, start_net

IDS = ["MY", "TH"]
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
HELD = ["+66812345670", "+66812345671", "+66812345672"]
UNRELATED = "+66899999999"
CANDIDATES = [f"+6681{n:07d}" for n in range(200)]  # what a hostile TH wants to see checked
S = investigator_pb2
METHODS = ("GetManifest", "GetFilter", "GetRecords", "EvaluateOprf", "ReportSighting", "ExchangeTreeHead")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """Every PeerService call served by any node: (serving node, method, request bytes)."""
    calls: list[tuple[str, str, int]] = []
    for name in METHODS:
        original = getattr(PeerServicer, name)

        def wrapper(
            self: PeerServicer, request: Any, context: Any, *, _name: str = name, _fn: Any = original
        ) -> Any:
            calls.append((self.node.id, _name, request.ByteSize()))
            return _fn(self, request, context)

        monkeypatch.setattr(PeerServicer, name, wrapper)
    return calls


@pytest.fixture
def net(tmp_path: Path, served: list[tuple[str, str, int]]) -> Iterator[Net]:
    net = start_net(tmp_path / "net", IDS, now=NOW)
    csv = tmp_path / "th.csv"
    csv.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        + "".join(f"phone,{v},investment,2026-01-01,2026-11-01,80,AMBER\n" for v in HELD)
    )
    assert net.node("TH").ingest([csv], now=NOW).stored == len(HELD)
    my_csv = tmp_path / "my.csv"
    my_csv.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\nphone,+60123456789,loan,2026-01-01,2026-11-01,50,GREEN\n"
    )
    net.node("MY").ingest([my_csv], now=NOW)
    net.sync_all()
    yield net
    net.close()


def _at(calls: list[tuple[str, str, int]], node_id: str) -> list[tuple[str, int]]:
    return [(method, size) for who, method, size in calls if who == node_id]


def _check_then_sync(net: Net, served: list[tuple[str, str, int]], value: str) -> tuple[Any, list, list]:
    """Check ``value`` at MY, then let MY sync with TH: what TH received in each step, and the result."""
    del served[:]
    response = net.check("MY", [("phone", value)])
    during = _at(served, "TH")
    del served[:]
    for result in net.sync("MY"):
        assert result.ok, result
    after = _at(served, "TH")
    return response.results[0].peers[0], during, after


def _stuff(net: Net, candidates: list[str], *, prefix_bits: int | None = None) -> None:
    """Make TH publish a filter with ``candidates`` in it besides what it holds, with a record for what
    it holds and random records for the rest (so the count is right), chained to its last manifest."""
    th = net.node("TH")
    epoch = th.epoch
    key = th.oprf_key(epoch)
    digests = oprf.evaluate(key.sk, [oprf_input("phone", v) for v in HELD + candidates], oprf.MODE_VOPRF)
    meta = IndicatorMeta("investment", date(2026, 1, 1), date(2026, 11, 1), 80, "AMBER", 1)
    records = [
        seal(d, meta, node_id="TH", epoch=epoch, kind="phone", tier=TIER_OPRF) for d in digests[: len(HELD)]
    ]
    records += [SealedRecord(os.urandom(16), os.urandom(NONCE_SIZE), os.urandom(32)) for _ in candidates]
    bits = choose_prefix_bits(len(records)) if prefix_bits is None else prefix_bits
    buckets = build_buckets(records, bits)
    bloom = BloomFilter.build(digests, p=1e-6, kind="phone", tier=TIER_OPRF, epoch=epoch, node_id="TH")
    previous = th.latest_manifest().manifest
    manifest = Manifest(
        node_id="TH",
        epoch=epoch,
        version=previous.version + 1,
        issued_at=int(NOW),
        expires_at=int(NOW) + 86_400,
        previous_hash=manifest_hash(previous),
        oprf_public_key=key.pk,
        entries=(
            FilterEntry(
                "phone",
                TIER_OPRF,
                bloom.sha256(),
                len(records),
                bits,
                buckets_root(buckets),
                sum(map(len, buckets)),
            ),
        ),
    )
    signed = sign_manifest(manifest, th.signing_key)
    th.store.save_publication(
        manifest.version,
        signed.to_bytes(),
        {("phone", TIER_OPRF): bloom.to_bytes()},
        {("phone", TIER_OPRF, b): data for b, data in enumerate(buckets)},
    )


def test_what_an_honest_holder_receives_does_not_depend_on_the_answer(
    net: Net, served: list[tuple[str, str, int]]
) -> None:
    _stuff(net, CANDIDATES[:1])  # one value in its filter without a record: a false positive, made to order
    for result in net.sync("MY"):
        assert result.ok, result
    my_log = net.node("MY").store.audit_size
    seen = {}
    for label, value in (("held", HELD[0]), ("not held", UNRELATED), ("false positive", CANDIDATES[0])):
        before = my_log()
        peer, during, after = _check_then_sync(net, served, value)
        seen[label] = (during, after, my_log() - before)
        expected = S.PEER_STATUS_MATCH if label == "held" else S.PEER_STATUS_NO_MATCH
        assert peer.peer_id == "TH" and peer.status == expected, (label, peer)
    assert seen["held"] == seen["not held"] == seen["false positive"], seen
    during, after, _ = seen["held"]
    assert during == [("EvaluateOprf", during[0][1])]  # one blinded evaluation, nothing else
    assert [m for m, _ in after] == ["GetManifest", "ExchangeTreeHead"]


def test_a_manifest_with_more_buckets_than_records_is_refused_and_the_last_good_copy_kept(
    net: Net, served: list[tuple[str, str, int]]
) -> None:
    good = SignedManifest.from_bytes(net.node("MY").store.peer_manifest("TH") or b"").manifest.version
    _stuff(net, CANDIDATES, prefix_bits=16)
    (result,) = net.sync("MY")
    assert not result.ok and "more buckets than records" in result.detail
    assert SignedManifest.from_bytes(net.node("MY").store.peer_manifest("TH") or b"").manifest.version == good
    assert "artefact.refused" in audit_actions(net.node("MY"))
    response = net.check("MY", [("phone", HELD[0])])
    assert response.results[0].peers[0].status == S.PEER_STATUS_MATCH  # still answered from the good copy


def test_a_plausibly_stuffed_filter_learns_nothing_and_is_caught_by_its_unopened_hits(
    net: Net, served: list[tuple[str, str, int]]
) -> None:
    _stuff(net, CANDIDATES)
    for result in net.sync("MY"):
        assert result.ok, result
    calls = []
    for value in (CANDIDATES[7], UNRELATED, CANDIDATES[8], CANDIDATES[9], HELD[1]):
        del served[:]
        response = net.check("MY", [("phone", value)])
        calls.append(_at(served, "TH"))
        status = response.results[0].peers[0].status
        assert status == (S.PEER_STATUS_MATCH if value == HELD[1] else S.PEER_STATUS_NO_MATCH)
    assert all(c == calls[0] for c in calls) and [m for m, _ in calls[0]] == ["EvaluateOprf"]
    my = net.node("MY")
    assert "peer.fp_alert" not in audit_actions(my)  # nothing is written within a check
    my.maintain(now=NOW)
    alerts = [e for e in my_entries(my) if e["action"] == "peer.fp_alert"]
    assert len(alerts) == 1 and alerts[0]["actor"] == "TH" and alerts[0]["unopened"] == 3
    assert alerts[0]["tested"] == 5 and my.status(now=NOW)["plausibility"]["TH"]["phone"]["alerted"]
    my.maintain(now=NOW)  # alerted once per peer, kind and epoch
    assert sum(e["action"] == "peer.fp_alert" for e in my_entries(my)) == 1
    checks = [e for e in my_entries(my) if e["action"] == "investigator.check"]
    assert [c.get("unopened", {}) for c in checks[-5:]] == [
        {"TH": {"phone": 1}},
        {},
        {"TH": {"phone": 1}},
        {"TH": {"phone": 1}},
        {},
    ]


def my_entries(node: Any) -> list[dict[str, Any]]:
    """Every entry of a node's audit log, decoded."""
    return [decode_entry(raw) for raw in node.store.audit_entries(0, node.store.audit_size())]


def audit_actions(node: Any) -> set[str]:
    return {e["action"] for e in my_entries(node)}


def test_the_audit_report_lists_the_plausibility_alert(net: Net, served: list[tuple[str, str, int]]) -> None:
    _stuff(net, CANDIDATES)
    net.sync("MY")
    for value in CANDIDATES[:4]:
        net.check("MY", [("phone", value)])
    my = net.node("MY")
    my.maintain(now=NOW)
    summary = summarise(my_entries(my))
    (alert,) = [a for a in summary.alerts if a["action"] == "peer.fp_alert"]
    assert alert_party(alert) == "TH" and "4 of 4 values hit its filter without a record" in alert_detail(
        alert
    )


def test_republishing_between_planted_hits_does_not_reset_the_count(
    net: Net, served: list[tuple[str, str, int]]
) -> None:
    my = net.node("MY")
    for n in range(3):  # a new stuffed version before each check: the counts add up within the epoch
        net.clock.now += 60
        _stuff(net, CANDIDATES)
        for result in net.sync("MY"):
            assert result.ok, result
        net.check("MY", [("phone", CANDIDATES[20 + n])])
        my.maintain(now=net.clock.now)
    alerts = [e for e in my_entries(my) if e["action"] == "peer.fp_alert"]
    # two planted hits in two versions are enough (P = 1e-12); counted per version, each would be 1 of 1
    assert len(alerts) == 1 and alerts[0]["unopened"] == 2 and alerts[0]["tested"] == 2
