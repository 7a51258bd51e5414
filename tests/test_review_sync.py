"""Security review fixes of sync, check and transport, on real nodes over real mutual TLS.

Server identity (every peer certificate names its node: ``<id>.peer.petanda``), pinning only after
verification, size caps on downloaded filters, the manifest/filter race of a check, peer-supplied text
in our audit log, and witness gossip catching a node that shows two members two different logs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc, peer_pb2
from client.protocol.auditlog import TreeHead, decode_entry, sign_tree_head
from client.protocol.errors import ConfigError, DecryptionError
from client.protocol.manifest import SignedManifest, manifest_hash, sign_manifest
from client.protocol.metadata import IndicatorMeta, open_record, seal, tag_of
from client.tools.connection import Connection, open_channel
from client.transport.convert import tree_head_to_proto
from client.transport.tls import peer_server_name
from node import peers, sync
from node.check import Checker
from node.config import DEFAULT_STORE_FILE, load_config
from node.demodata import generate, write_csv
from node.node import Node
from node.peers import DETAIL_MAX, printable
from node.pki import init_ca, issue
from node.server import start_server
from node.sync import FILTER_MAX, Syncer, filter_size_limit
from node.testbed import write_config
from tests.fednet import Net, start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
IDS = ["MY", "SG", "TH"]


def _start(root: Path, *, sync: bool = True) -> Net:
    """MY, SG and TH, each holding a few indicators of its own; all synced unless ``sync`` is false."""
    rows, _planted = generate(IDS, per_node=6, planted=3, today=datetime.fromtimestamp(NOW, UTC).date())
    net = start_net(root / "net", IDS, now=NOW)
    try:
        for node_id, node_rows in rows.items():
            path = root / f"{node_id}.csv"
            write_csv(path, node_rows)
            assert net.node(node_id).ingest([path], now=NOW).rejections == []
        if sync:
            net.sync_all()
    except BaseException:
        net.close()
        raise
    return net


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = _start(tmp_path, sync=False)
    yield net
    net.close()


def _results(net: Net, node_id: str) -> dict[str, Any]:
    return {r.peer_id: r for r in net.sync(node_id)}


def _actions(node: Node, action: str) -> list[dict[str, Any]]:
    entries = (decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size()))
    return [e for e in entries if e["action"] == action]


def _point(net: Net, node_id: str, addresses: dict[str, str]) -> None:
    """Rewrite ``node_id``'s config with some peers at other addresses, and reopen its channels."""
    r = net.running[node_id]
    write_config(r.member, net.federation.members.values(), addresses=addresses)
    r.node.config = load_config(r.member.config)
    r.links.reset()


# --- M5: the server's identity on every outgoing channel ------------------------------------------------


def test_a_peer_certificate_names_its_node_and_no_other(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    paths = issue(tmp_path / "ca", role="peer", id="TH", out_dir=tmp_path / "th", hostnames=["node.th"])
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["th.peer.petanda", "node.th"]
    assert peer_server_name("TH") == "th.peer.petanda"
    for reserved in ("my.peer.petanda", "*.peer.petanda", "petanda"):
        with pytest.raises(ConfigError, match="reserved"):
            issue(tmp_path / "ca", role="peer", id="SG", out_dir=tmp_path / "sg", hostnames=[reserved])


def test_a_peer_address_served_by_another_member_fails_the_handshake(net: Net) -> None:
    my = net.node("MY")
    th = net.federation.members["TH"]
    _point(net, "MY", {"SG": th.address})  # TH's server holds a valid CA certificate, but not SG's
    results = _results(net, "MY")
    assert results["TH"].ok, results["TH"]
    assert not results["SG"].ok and "UNAVAILABLE" in results["SG"].detail, results["SG"]
    assert my.store.get_meta("peer.SG.signing_key") is None
    assert my.store.peer_manifest("SG") is None and my.store.peer_tree_heads("SG") == []

    _point(net, "MY", {})
    results = _results(net, "MY")
    assert results["SG"].ok, results["SG"]
    assert my.store.get_meta("peer.SG.signing_key") == net.node("SG").audit.public_key.hex()


def test_an_investigator_reaches_only_their_own_states_node(net: Net) -> None:
    members = net.federation.members
    cert, key = members["MY"].investigator

    def check(target: str, server_name: str | None = None) -> Any:
        conn = Connection(target=target, ca=net.federation.ca, cert=cert, key=key, server_name=server_name)
        with open_channel(conn) as channel:
            stub = investigator_pb2_grpc.InvestigatorServiceStub(channel)
            return stub.Check(investigator_pb2.CheckRequest(queries=[]), timeout=5)

    assert list(check(members["MY"].address).results) == []
    with pytest.raises(grpc.RpcError) as error:
        check(members["TH"].address)  # TH's certificate is valid, but it is not my.peer.petanda
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _actions(net.node("TH"), "rpc.denied") == []  # refused by us, before any call reached TH
    # An explicit server name replaces the rule: the handshake passes, and TH refuses an MY person.
    with pytest.raises(grpc.RpcError) as error:
        check(members["TH"].address, server_name="th.peer.petanda")
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- pin after verify, and size caps -------------------------------------------------------------------


def _serve(node: Node, signed: SignedManifest, filters: dict[tuple[str, int], bytes]) -> None:
    """Make ``node`` serve ``signed`` and ``filters`` as its latest publication (as a hostile node could)."""
    node.store.save_publication((node.store.latest_version() or 0) + 1, signed.to_bytes(), filters, {})


def _oversized(node: Node, size: int) -> tuple[SignedManifest, dict[tuple[str, int], bytes]]:
    """``node``'s next manifest, correctly signed, whose first entry claims 1 indicator for ``size`` bytes."""
    node.publish(now=NOW + 1)
    good = SignedManifest.from_bytes(node.store.latest_manifest() or b"")
    big = bytes(size)
    first = dataclasses.replace(good.manifest.entries[0], count=1, filter_sha256=hashlib.sha256(big).digest())
    manifest = dataclasses.replace(
        good.manifest,
        version=good.manifest.version + 1,
        previous_hash=manifest_hash(good.manifest),
        entries=(first, *good.manifest.entries[1:]),
    )
    filters = {
        (e.kind, e.tier): node.filter_bytes(good.manifest.version, e.kind, e.tier) for e in manifest.entries
    }
    filters[(first.kind, first.tier)] = big
    return sign_manifest(manifest, node.signing_key), filters


def test_a_first_contact_key_is_pinned_only_after_its_artefacts_verify(net: Net) -> None:
    my, th = net.node("MY"), net.node("TH")
    _serve(th, *_oversized(th, 2 * 2**20))
    results = _results(net, "MY")
    assert not results["TH"].ok and "more than the" in results["TH"].detail, results["TH"]
    assert my.store.get_meta("peer.TH.signing_key") is None  # nothing verified under it yet
    assert my.store.peer_tree_heads("TH") == [] and my.store.peer_manifest("TH") is None
    assert results["SG"].ok and my.store.get_meta("peer.SG.signing_key") is not None
    th.publish(now=NOW + 2)  # a good manifest again
    assert _results(net, "MY")["TH"].ok
    assert my.store.get_meta("peer.TH.signing_key") == th.audit.public_key.hex()
    assert sorted(e["actor"] for e in _actions(my, "peer.key_pinned")) == ["SG", "TH"]


def test_a_filter_larger_than_its_count_allows_is_refused_and_the_last_copy_kept(tmp_path: Path) -> None:
    net = _start(tmp_path)
    try:
        my, th = net.node("MY"), net.node("TH")
        kept = my.store.peer_manifest("TH")
        signed, filters = _oversized(th, 3 * 2**20)
        limit = filter_size_limit(1)
        assert limit < 2**11
        _serve(th, signed, filters)
        result = _results(net, "MY")["TH"]
        assert not result.ok and f"more than the {limit} that 1 indicators allow" in result.detail, result
        assert my.store.peer_manifest("TH") == kept
        refused = _actions(my, "artefact.refused")
        assert len(refused) == 1 and refused[0]["peer"] == "TH" and str(limit) in refused[0]["reason"]
    finally:
        net.close()


def test_all_the_filters_of_one_manifest_are_capped_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _start(tmp_path, sync=False)
    try:
        first = min(len(net.node("TH").filter_bytes(1, e.kind, e.tier)) for e in _entries(net, "TH"))
        monkeypatch.setattr(sync, "MANIFEST_FILTERS_MAX", first)  # room for one filter only
        result = _results(net, "MY")["TH"]
        assert not result.ok and f"exceed {first} bytes" in result.detail, result
        monkeypatch.undo()
        assert _results(net, "MY")["TH"].ok
    finally:
        net.close()


def _entries(net: Net, node_id: str) -> Any:
    return SignedManifest.from_bytes(net.node(node_id).store.latest_manifest() or b"").manifest.entries


def test_filter_size_limits() -> None:
    assert filter_size_limit(0) == filter_size_limit(1) < 2048
    bits_per_item = 8 * (filter_size_limit(1_000_000) - 1024) / 1_000_000
    assert 43 < bits_per_item < 44  # -ln(1e-9) / ln(2)^2 = 43.1 bits
    assert filter_size_limit(10**12) == FILTER_MAX == 64 * 2**20


# --- L3: a filter replaced between the check's two reads -----------------------------------------------


def test_a_filter_replaced_during_a_check_is_not_used_or_cached(tmp_path: Path) -> None:
    net = _start(tmp_path)
    checker = Checker(net.node("MY"), net.running["MY"].links, clock=net.clock)
    try:
        my = net.node("MY")
        signed = SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"")
        entry = signed.manifest.entries[0]
        good = my.store.peer_filter("TH", entry.kind, entry.tier) or b""
        other = bytearray(good)
        other[-1] ^= 1
        filters = {
            (e.kind, e.tier): my.store.peer_filter("TH", e.kind, e.tier) or b""
            for e in signed.manifest.entries
        }
        my.store.save_peer_state("TH", signed.to_bytes(), {**filters, (entry.kind, entry.tier): bytes(other)})
        assert checker._filter("TH", signed.manifest, entry.kind, entry.tier) == (
            None,
            "filter changed during the check",
        )
        assert checker._filters == {}
        outcome = checker.check([(entry.kind, "x")], deadline_s=5)[0]
        th = next(o for o in outcome if o.peer_id == "TH")
        assert (th.status, th.detail) == ("STALE", "filter changed during the check")
        assert ("TH", entry.kind, entry.tier) not in checker._filters
        my.store.save_peer_state("TH", signed.to_bytes(), filters)
        bloom, why = checker._filter("TH", signed.manifest, entry.kind, entry.tier)
        assert bloom is not None and why == "" and ("TH", entry.kind, entry.tier) in checker._filters
    finally:
        checker.close()
        net.close()


# --- L4 and M1: what a peer can put into our logs -------------------------------------------------------


class _Failed(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return self._details


def test_peer_supplied_details_are_cut_and_made_printable() -> None:
    error = peers.peer_error("TH", _Failed("forged\n2026 fork resolved\x1b[2J" + "x" * 1000))
    text = str(error)
    assert text.isprintable() and "\n" not in text and "\x1b" not in text
    assert "forged?2026 fork resolved?[2J" in text
    assert len(text) <= len("TH: INTERNAL: ") + DETAIL_MAX and text.endswith("\u2026")
    assert printable("short and fine") == "short and fine"
    assert len(printable("y" * DETAIL_MAX)) == DETAIL_MAX and printable("y" * DETAIL_MAX) == "y" * DETAIL_MAX


def test_a_record_that_does_not_authenticate_does_not_name_its_tag() -> None:
    digest, wrong = bytes(range(32)), bytes(32)
    meta = IndicatorMeta.from_bytes(_meta_bytes())
    record = seal(digest, meta, node_id="TH", epoch=1, kind="domain", tier=1)
    with pytest.raises(DecryptionError) as error:
        open_record(wrong, record, node_id="TH", epoch=1, kind="domain", tier=1)
    message = str(error.value)
    assert tag_of(digest).hex() not in message and record.tag.hex()[:8] not in message
    assert "TH" in message and "\n" not in message


def _meta_bytes() -> bytes:
    from datetime import date

    return IndicatorMeta(
        category="phishing",
        first_seen=date(2026, 1, 1),
        last_seen=date(2026, 2, 1),
        confidence=50,
        tlp="GREEN",
        reports=1,
    ).to_bytes()


# --- M4: witness gossip ---------------------------------------------------------------------------------


def test_a_peer_hands_over_its_proven_heads_of_the_others(tmp_path: Path) -> None:
    net = _start(tmp_path)
    try:
        th = net.node("TH")
        stub = net.peer_stub("TH", as_member="MY")
        response = stub.ExchangeTreeHead(
            peer_pb2.ExchangeTreeHeadRequest(head=tree_head_to_proto(net.node("MY").audit.latest())),
            timeout=5,
        )
        assert [w.node_id for w in response.witnessed] == ["SG"]  # neither the caller nor TH itself
        latest = max(th.store.peer_tree_heads("SG"), key=lambda h: h.size)
        assert (response.witnessed[0].tree_size, response.witnessed[0].root_hash) == (
            latest.size,
            latest.root,
        )
    finally:
        net.close()


def test_an_honest_node_proves_what_others_witnessed_of_it(tmp_path: Path) -> None:
    net = _start(tmp_path)
    try:
        my, sg, th = net.node("MY"), net.node("SG"), net.node("TH")
        sg.ingest([tmp_path / "SG.csv"], now=NOW)  # a new head, h2 ...
        assert {r.peer_id: r for r in net.sync("TH")}["SG"].ok  # ... which TH proves ...
        h2 = max(th.store.peer_tree_heads("SG"), key=lambda h: h.size)
        sg.ingest([tmp_path / "SG.csv"], now=NOW)  # ... and h3, which nobody has yet
        syncer = Syncer(my, net.running["MY"].links, clock=net.clock)
        assert syncer.sync_peer("TH").ok
        pending = json.loads(my.store.get_meta("peer.SG.witnessed") or "[]")
        assert [(w["size"], w["via"]) for w in pending] == [(h2.size, "TH")]
        assert syncer.sync_peer("SG").ok  # SG proves h2 a prefix of h3
        assert my.store.get_meta("peer.SG.witnessed") == "[]"
        assert _actions(my, "fork") == []
        assert sg.audit.latest().tree_size > h2.size
    finally:
        net.close()


def test_a_witnessed_head_with_another_root_for_a_known_size_is_a_fork_at_once(tmp_path: Path) -> None:
    net = _start(tmp_path)
    try:
        my, sg = net.node("MY"), net.node("SG")
        known = max(my.store.peer_tree_heads("SG"), key=lambda h: h.size)
        forged = sign_tree_head(TreeHead("SG", known.size, bytes(32), known.timestamp + 1), sg.signing_key)
        syncer = Syncer(my, net.running["MY"].links, clock=net.clock)
        unsigned = dataclasses.replace(forged, root_hash=b"\x01" * 32)  # signature no longer matches
        syncer._take_witnessed("TH", [tree_head_to_proto(unsigned)], now=NOW)
        assert _actions(my, "fork") == []
        syncer._take_witnessed("TH", [tree_head_to_proto(forged)], now=NOW)
        forks = _actions(my, "fork")
        assert len(forks) == 1 and forks[0]["actor"] == "SG" and "TH witnessed" in forks[0]["reason"]
    finally:
        net.close()


def _twin(net: Net, root: Path, node_id: str) -> tuple[Node, Any]:
    """A second server of ``node_id`` from a copy of its directory and database: the same keys and
    certificate, and a log that goes its own way from now on (a node showing two members two logs)."""
    source = net.federation.members[node_id]
    twin_dir = root / f"{node_id}-twin"
    shutil.copytree(
        source.dir, twin_dir, ignore=shutil.ignore_patterns(f"{DEFAULT_STORE_FILE}*", "node.toml")
    )
    src = sqlite3.connect(source.dir / DEFAULT_STORE_FILE)
    dst = sqlite3.connect(twin_dir / DEFAULT_STORE_FILE)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    member = dataclasses.replace(source, dir=twin_dir, config=twin_dir / "node.toml", port=0)
    write_config(member, net.federation.members.values())
    node = Node.open(load_config(member.config), clock=net.clock)
    server = start_server(node, max_workers=4)
    member.port = server.port
    return node, (member, server)


@pytest.mark.parametrize(
    ("grow", "reason"),
    [(-1, "shrank"), (0, "another root for size"), (5, "is not in its log")],
    ids=["shorter", "same-size", "longer"],
)
def test_a_node_showing_two_members_two_logs_is_caught_by_witness_gossip(
    tmp_path: Path, grow: int, reason: str
) -> None:
    """SG shows TH a log that went its own way (a twin server), MY the original: after TH syncs SG, MY
    syncs TH (and learns of TH's head of SG) and then SG, which cannot prove that head part of its log.
    ``grow`` sets SG's signed size against the twin's: smaller, equal, or larger (a consistency proof)."""
    net = _start(tmp_path, sync=False)
    twin = None
    try:
        my = net.node("MY")
        assert all(r.ok for r in net.sync("MY"))  # MY has proven heads of SG; TH has none yet
        twin, (member, server) = _twin(net, tmp_path, "SG")
        path = tmp_path / "twin.csv"
        path.write_text("kind,value\ndomain,only-the-twin-has-this.example\n")
        net.clock.now += 60
        assert twin.ingest([path], now=net.clock.now).stored == 1  # its log diverges from SG's
        for _ in range(8):
            twin.record("test.noise", actor="node", role="node")
        assert twin.audit.sign_head() is not None
        _point(net, "TH", {"SG": member.address})  # TH is shown the twin, MY the original

        assert all(r.ok for r in net.sync("TH"))
        witnessed = max(net.node("TH").store.peer_tree_heads("SG"), key=lambda h: h.size)
        assert witnessed.root in {h.root for h in twin.store.tree_heads()}

        sg = net.node("SG")
        size = sg.store.audit_size()
        assert sg.audit.latest().tree_size <= size < witnessed.size
        for _ in range(max(0, witnessed.size - size + grow)):
            sg.record("test.noise", actor="node", role="node")  # SG's own log grows meanwhile
        if grow >= 0:
            assert sg.audit.sign_head() is not None and sg.audit.latest().tree_size == witnessed.size + grow
        syncer = Syncer(my, net.running["MY"].links, clock=net.clock)
        assert syncer.sync_peer("TH").ok
        assert _actions(my, "fork") == []  # nothing to compare yet: the witnessed size is new to MY
        pending = json.loads(my.store.get_meta("peer.SG.witnessed") or "[]")
        assert [(w["size"], w["root"], w["via"]) for w in pending] == [
            (witnessed.size, witnessed.root.hex(), "TH")
        ]

        result = syncer.sync_peer("SG")
        assert not result.ok and "fork" in result.detail, result
        forks = _actions(my, "fork")
        assert len(forks) == 1 and forks[0]["actor"] == "SG", forks
        assert "TH" in forks[0]["reason"] and reason in forks[0]["reason"], forks
        assert my.store.get_meta("peer.SG.witnessed") == "[]"  # settled
        assert witnessed.root not in {h.root for h in my.store.peer_tree_heads("SG")}
    finally:
        if twin is not None:
            server.server.stop(0).wait()
            twin.close()
        net.close()
