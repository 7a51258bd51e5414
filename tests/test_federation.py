"""The federation end to end: four real nodes over mutual TLS find exactly the planted overlaps.

Each node has its own SQLite store, keys and gRPC server on 127.0.0.1:0; it ingests its own synthetic
indicators (``node.demodata``) through the real CSV path, publishes, and syncs every peer. Checks go through
an investigator certificate to the investigator's own node, which fans out to the peers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2
from client.protocol.kinds import TIER_HMAC
from client.protocol.manifest import SignedManifest, sign_manifest
from node.config import load_config
from node.demodata import Planted, generate, write_csv
from node.testbed import write_config
from tests.fednet import Net, start_net

IDS = ["MY", "TH", "SG", "PH"]
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
S = investigator_pb2
STATUS = {S.PEER_STATUS_MATCH: "MATCH", S.PEER_STATUS_NO_MATCH: "NO_MATCH",
          S.PEER_STATUS_UNAVAILABLE: "UNAVAILABLE", S.PEER_STATUS_RATE_LIMITED: "RATE_LIMITED",
          S.PEER_STATUS_STALE: "STALE"}  # fmt: skip


def _ingest(net: Net, rows: dict[str, list[dict[str, str]]], root: Path) -> None:
    for node_id, node_rows in rows.items():
        path = root / f"{node_id}-indicators.csv"
        write_csv(path, node_rows)
        report = net.node(node_id).ingest([path], now=NOW)
        assert report.rejections == [], report.rejections[:3]
        assert report.stored == len(node_rows)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Net, dict[str, list[dict[str, str]]], list[Planted]]]:
    root = tmp_path_factory.mktemp("federation")
    rows, planted = generate(IDS, per_node=40, planted=27, today=datetime.fromtimestamp(NOW, UTC).date())
    net = start_net(root / "net", IDS, now=NOW)
    _ingest(net, rows, root)
    net.sync_all()
    yield net, rows, planted
    net.close()


def _statuses(result: investigator_pb2.IndicatorResult) -> dict[str, str]:
    return {p.peer_id: STATUS[p.status] for p in result.peers}


def test_every_planted_overlap_is_found_with_its_holders_metadata(
    world: tuple[Net, dict, list[Planted]],
) -> None:
    net, _rows, planted = world
    for asker in IDS:
        queries = [(p.kind, p.canonical) for p in planted]
        response = net.check(asker, queries)
        assert len(response.results) == len(planted)
        for plant, result in zip(planted, response.results, strict=True):
            assert result.error == "" and result.canonical == plant.canonical
            visible = plant.visible()
            expected = {peer: ("MATCH" if peer in visible else "NO_MATCH") for peer in IDS if peer != asker}
            assert _statuses(result) == expected, (asker, plant.kind, plant.canonical)
            for peer in result.peers:
                if peer.status != S.PEER_STATUS_MATCH:
                    continue
                holding = visible[peer.peer_id]
                meta = peer.metadata
                assert (meta.category, meta.confidence, meta.tlp, meta.reports) == (
                    holding.category,
                    holding.confidence,
                    holding.tlp,
                    holding.reports,
                )
                assert (meta.first_seen, meta.last_seen) == (
                    holding.first_seen.isoformat(),
                    holding.last_seen.isoformat(),
                )
                assert len(bytes.fromhex(meta.tag)) == 16 and meta.version >= 1


def test_own_indicators_of_one_member_match_only_there(world: tuple[Net, dict, list[Planted]]) -> None:
    net, rows, planted = world
    planted_keys = {(p.kind, p.canonical) for p in planted}
    th_own = [r for r in rows["TH"] if r["tlp"] not in ("RED", "AMBER+STRICT")]
    queries = [(r["kind"], r["value"]) for r in th_own]
    response = net.investigator("MY").Check(
        S.CheckRequest(queries=[S.IndicatorQuery(kind=k, value=v, region="TH") for k, v in queries])
    )
    for row, result in zip(th_own, response.results, strict=True):
        if (row["kind"], result.canonical) in planted_keys:
            continue
        assert _statuses(result) == {"TH": "MATCH", "SG": "NO_MATCH", "PH": "NO_MATCH"}, row


def test_unheld_indicators_match_nowhere(world: tuple[Net, dict, list[Planted]]) -> None:
    net, _rows, _planted = world
    queries = [("phone", f"+6012{n:07d}") for n in range(3000000, 3000050)] + [
        ("domain", "never-seen.example")
    ]
    response = net.check("MY", queries)
    for result in response.results:
        assert set(_statuses(result).values()) == {"NO_MATCH"}, result


def test_bad_input_is_refused_per_row_without_asking_peers(world: tuple[Net, dict, list[Planted]]) -> None:
    net, _rows, planted = world
    response = net.check("MY", [("phone", "12"), ("fax", "1"), (planted[0].kind, planted[0].canonical)])
    assert "phone" in response.results[0].error and not response.results[0].peers
    assert "unknown kind" in response.results[1].error and not response.results[1].peers
    assert response.results[2].error == "" and len(response.results[2].peers) == 3


def test_no_audit_entry_anywhere_holds_a_raw_indicator(world: tuple[Net, dict, list[Planted]]) -> None:
    net, rows, planted = world
    net.check("SG", [(p.kind, p.canonical) for p in planted])
    secrets = {p.canonical for p in planted} | {r["value"] for node_rows in rows.values() for r in node_rows}
    secrets |= {s.lstrip("+") for s in secrets if s.startswith("+")}
    for node_id in IDS:
        store = net.node(node_id).store
        entries = store.audit_entries(0, store.audit_size())
        assert any(b'"investigator.check"' in e for e in entries) or node_id != "SG"
        blob = b"\n".join(entries).decode()
        leaked = [s for s in secrets if s in blob]
        assert leaked == [], (node_id, leaked[:3])


def test_check_entry_records_outcome_counts(world: tuple[Net, dict, list[Planted]]) -> None:
    import json

    net, _rows, planted = world
    store = net.node("PH").store
    before = store.audit_size()
    net.check("PH", [(p.kind, p.canonical) for p in planted[:5]])
    entries = [json.loads(e) for e in store.audit_entries(before, store.audit_size())]
    checks = [e for e in entries if e["action"] == "investigator.check"]
    assert len(checks) == 1
    entry = checks[0]
    assert entry["actor"] == "PH/investigator" and entry["count"] == 5
    expected = sum(1 for p in planted[:5] for peer in p.visible() if peer != "PH")
    assert entry["matches"] == expected
    assert set(entry["outcomes"]) == {"MY", "TH", "SG"}


def test_a_sighting_reaches_the_holder_only_on_request(world: tuple[Net, dict, list[Planted]]) -> None:
    net, _rows, planted = world
    plant = next(p for p in planted if "TH" in p.visible() and "MY" not in p.holders)
    assert net.node("TH").store.sightings() == []
    result = net.check("MY", [(plant.kind, plant.canonical)]).results[0]
    th = next(p for p in result.peers if p.peer_id == "TH")
    assert net.node("TH").store.sightings() == []
    reply = net.investigator("MY").ReportSighting(
        S.SightingRequest(
            peer_id="TH",
            kind=plant.kind,
            tier=th.metadata.tier,
            version=th.metadata.version,
            tag=th.metadata.tag,
        )
    )
    assert reply.recorded
    sightings = net.node("TH").store.sightings()
    assert [(s.peer_id, s.kind, s.tag.hex()) for s in sightings] == [("MY", plant.kind, th.metadata.tag)]


# --- faults: each test builds its own small federation -------------------------------------------------


def _small(tmp_path: Path, *, limits: dict[str, object] | None = None, hmac_kinds: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    rows, planted = generate(
        IDS, per_node=10, planted=14, today=datetime.fromtimestamp(NOW, UTC).date(), seed=7
    )
    net = start_net(tmp_path / "net", IDS, now=NOW, limits=limits, hmac_kinds=hmac_kinds)
    _ingest(net, rows, tmp_path)
    net.sync_all()
    return net, planted


def _published(net: Net, asker: str, peer: str) -> set[str]:
    """Kinds ``peer`` publishes, per ``asker``'s cached manifest: for the others, its signed manifest
    already answers NO_MATCH without a call, so only these can be UNAVAILABLE."""
    manifest = SignedManifest.from_bytes(net.node(asker).store.peer_manifest(peer) or b"").manifest
    return {entry.kind for entry in manifest.entries}


def test_a_dead_peer_is_unavailable_while_the_others_answer(tmp_path: Path) -> None:
    net, planted = _small(tmp_path)
    try:
        net.stop("SG")
        published = _published(net, "MY", "SG")
        started = time.monotonic()
        response = net.check("MY", [(p.kind, p.canonical) for p in planted], deadline_ms=3000)
        assert time.monotonic() - started < 6
        for plant, result in zip(planted, response.results, strict=True):
            statuses = _statuses(result)
            assert statuses["SG"] == ("UNAVAILABLE" if plant.kind in published else "NO_MATCH")
            for peer in ("TH", "PH"):
                assert statuses[peer] == ("MATCH" if peer in plant.visible() else "NO_MATCH")
    finally:
        net.close()


def test_a_peer_killed_mid_batch_costs_only_its_own_rows(tmp_path: Path) -> None:
    net, planted = _small(tmp_path)
    try:
        queries = [(p.kind, p.canonical) for p in planted] * 70  # ~1000 lookups
        published = _published(net, "MY", "TH")
        killer = threading.Timer(0.05, net.stop, args=("TH",))
        killer.start()
        response = net.check("MY", queries[:1000], deadline_ms=8000)
        killer.join()
        assert len(response.results) == min(1000, len(queries))
        th_statuses = set()
        for (kind, canonical), result in zip(queries, response.results, strict=False):
            statuses = _statuses(result)
            plant = next(p for p in planted if (p.kind, p.canonical) == (kind, canonical))
            for peer in ("SG", "PH"):
                assert statuses[peer] == ("MATCH" if peer in plant.visible() else "NO_MATCH")
            expected_th = "MATCH" if "TH" in plant.visible() else "NO_MATCH"
            assert statuses["TH"] in ((expected_th, "UNAVAILABLE") if kind in published else (expected_th,))
            th_statuses.add(statuses["TH"])
        assert "UNAVAILABLE" in th_statuses
    finally:
        net.close()


def test_a_hung_peer_is_unavailable_within_the_deadline(tmp_path: Path) -> None:
    net, planted = _small(tmp_path)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)  # accepts TCP at the kernel, never speaks TLS
    try:
        my = net.running["MY"]
        members = dict(net.federation.members)
        members["PH"] = type(members["PH"])(**{**members["PH"].__dict__, "port": hung.getsockname()[1]})
        write_config(members["MY"], members.values())
        my.node.config = load_config(members["MY"].config)
        my.links.reset()
        started = time.monotonic()
        response = net.check("MY", [(p.kind, p.canonical) for p in planted], deadline_ms=1500)
        assert time.monotonic() - started < 4
        published = _published(net, "MY", "PH")
        for plant, result in zip(planted, response.results, strict=True):
            statuses = _statuses(result)
            assert statuses["PH"] == ("UNAVAILABLE" if plant.kind in published else "NO_MATCH")
            assert statuses["TH"] == ("MATCH" if "TH" in plant.visible() else "NO_MATCH")
    finally:
        hung.close()
        net.close()


def test_a_peer_over_its_quota_is_rate_limited(tmp_path: Path) -> None:
    limits = {"max_batch": 10, "oprf_burst": 10, "oprf_rate_per_s": 0.01, "oprf_daily_quota": 1000}
    net, planted = _small(tmp_path, limits=limits)
    try:
        phones = [(p.kind, p.canonical) for p in planted if p.kind == "phone"] or [("phone", "+60123456789")]
        queries = (phones * 12)[:10]
        first = net.check("MY", queries)
        assert all(STATUS[p.status] != "RATE_LIMITED" for r in first.results for p in r.peers)
        second = net.check("MY", queries)
        asked = {peer for peer in ("TH", "SG", "PH") if "phone" in _published(net, "MY", peer)}
        assert asked
        for result in second.results:
            statuses = _statuses(result)
            assert {statuses[peer] for peer in asked} == {"RATE_LIMITED"}
        net.clock.now += 2000  # the token bucket refills
        third = net.check("MY", queries)
        assert all(STATUS[p.status] != "RATE_LIMITED" for r in third.results for p in r.peers)
    finally:
        net.close()


def test_hmac_tier_kinds_are_checked_offline(tmp_path: Path) -> None:
    net, planted = _small(tmp_path, hmac_kinds=("crypto_wallet",))
    try:
        wallets = [p for p in planted if p.kind == "crypto_wallet"]
        assert wallets
        th_store = net.node("TH").store
        before = th_store.audit_size()
        response = net.check("MY", [(p.kind, p.canonical) for p in wallets])
        for plant, result in zip(wallets, response.results, strict=True):
            for peer in result.peers:
                expected = "MATCH" if peer.peer_id in plant.visible() else "NO_MATCH"
                assert STATUS[peer.status] == expected
                if expected == "MATCH":
                    assert peer.metadata.tier == TIER_HMAC
        new = th_store.audit_entries(before, th_store.audit_size())
        assert not any(b"peer.evaluate_oprf" in e for e in new)
    finally:
        net.close()


def test_a_retraction_propagates(tmp_path: Path) -> None:
    net, planted = _small(tmp_path)
    try:
        plant = next(p for p in planted if "TH" in p.visible() and "MY" not in p.holders)
        holding = plant.holders["TH"]
        assert net.node("TH").retract(plant.kind, holding.value, region="TH", now=NOW + 10)
        net.clock.now = NOW + 20
        statuses = _statuses(net.check("MY", [(plant.kind, plant.canonical)]).results[0])
        assert statuses["TH"] == "MATCH"  # MY still holds the old filter until it syncs
        assert all(r.ok for r in net.sync("MY"))
        statuses = _statuses(net.check("MY", [(plant.kind, plant.canonical)]).results[0])
        assert statuses["TH"] == "NO_MATCH"
    finally:
        net.close()


def _refused_and_kept(net: Net, peer: str, reason: str) -> None:
    my = net.node("MY")
    kept = my.store.peer_manifest(peer)
    results = {r.peer_id: r for r in net.sync("MY")}
    assert not results[peer].ok and reason in results[peer].detail.lower(), results[peer]
    assert my.store.peer_manifest(peer) == kept
    entries = my.store.audit_entries(0, my.store.audit_size())
    assert any(b'"artefact.refused"' in e and peer.encode() in e for e in entries)


def test_tampered_rolled_back_and_swapped_manifests_are_refused(tmp_path: Path) -> None:
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    net, planted = _small(tmp_path)
    try:
        th = net.node("TH")
        first = th.store.manifest(1) or b""  # publications beyond publish.keep_versions are pruned
        # The forged versions below are newer than MY's last good copy: TH must still serve its buckets.
        th.config = th.config.model_copy(
            update={"publish": th.config.publish.model_copy(update={"keep_versions": 10})}
        )

        def serve(signed: SignedManifest) -> None:
            """Make TH serve ``signed`` as its latest manifest (as a compromised or buggy node would),
            for one sync; its own publication history stays as it was."""
            th.latest_manifest = lambda: signed  # type: ignore[method-assign]

        def refused(reason: str) -> None:
            try:
                _refused_and_kept(net, "TH", reason)
            finally:
                del th.latest_manifest

        # Tampered: TH's next manifest with a flipped signature bit.
        th.publish(now=NOW + 1)
        good = SignedManifest.from_bytes(th.store.latest_manifest() or b"")
        serve(SignedManifest(good.manifest, bytes([good.signature[0] ^ 1]) + good.signature[1:]))
        refused("signature")

        # Rolled back: once MY holds a newer version, an older one, correctly signed.
        th.publish(now=NOW + 2)
        assert all(r.ok for r in net.sync("MY"))
        serve(SignedManifest.from_bytes(first))
        refused("version")

        # Swapped: TH serves SG's manifest, signed by SG.
        serve(SignedManifest.from_bytes(net.node("SG").store.latest_manifest() or b""))
        refused("signature")

        # A newer manifest under TH's name signed by another key.
        current = SignedManifest.from_bytes(th.store.manifest(th.store.latest_version() or 0) or b"").manifest
        forged = dataclasses.replace(good.manifest, version=current.version + 10)
        serve(sign_manifest(forged, Ed25519PrivateKey.generate()))
        refused("signature")

        # The last good copy still answers checks.
        plant = next(p for p in planted if "TH" in p.visible() and "MY" not in p.holders)
        assert _statuses(net.check("MY", [(plant.kind, plant.canonical)]).results[0])["TH"] == "MATCH"
    finally:
        net.close()


def test_a_stale_peer_is_reported_stale(tmp_path: Path) -> None:
    net, planted = _small(tmp_path)
    try:
        net.clock.now = NOW + 49 * 3600  # past the 48 h manifest validity, no sync since
        statuses = _statuses(net.check("MY", [(planted[0].kind, planted[0].canonical)]).results[0])
        assert set(statuses.values()) == {"STALE"}
    finally:
        net.close()


def test_an_investigator_cannot_skip_their_own_node(tmp_path: Path) -> None:
    net, _planted = _small(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as error:
            net.investigator("TH", as_member="MY").Check(S.CheckRequest(queries=[]))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        store = net.node("TH").store
        denied = [e for e in store.audit_entries(0, store.audit_size()) if b'"rpc.denied"' in e]
        # Before its first call the channel asked TH which protocol versions it serves (Health/Check,
        # docs/PROTOCOL.md "Versions"): refused and audited too, one entry per call.
        checks = [e for e in denied if b'"method":"/petanda.v1.InvestigatorService/Check"' in e]
        assert len(checks) == 1 and len(denied) == 2
        assert all(b'"actor":"MY/investigator"' in e for e in denied)
    finally:
        net.close()


def test_expiries_propagate_and_manifests_are_renewed_by_maintenance(tmp_path: Path) -> None:
    net, _planted = _small(tmp_path)
    try:
        th = net.node("TH")
        path = tmp_path / "expiring.csv"
        path.write_text("kind,value,expires_at,tlp\ndomain,expiring-soon.example,2026-12-01,GREEN\n")
        assert th.ingest([path], now=NOW).stored == 1
        assert all(r.ok for r in net.sync("MY"))
        query = [("domain", "expiring-soon.example")]
        assert _statuses(net.check("MY", query).results[0])["TH"] == "MATCH"
        version = th.latest_manifest().manifest.version

        assert th.maintain(now=NOW + 3600) is None  # nothing expired, manifest fresh: no new version
        net.clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()
        assert th.maintain(now=net.clock.now) is not None  # the indicator expired: republished
        assert th.latest_manifest().manifest.version == version + 1
        assert all(r.ok for r in net.sync("MY"))
        assert _statuses(net.check("MY", query).results[0])["TH"] == "NO_MATCH"

        later = net.clock.now + 13 * 3600  # a quarter of the 48 h validity: renewed before it can expire
        assert th.maintain(now=later) is not None
        assert th.latest_manifest().manifest.issued_at == int(later)
    finally:
        net.close()
