"""Recovery as a protocol event: a node restored from a backup is taken back by its peers, not as a fork.

INTEGRATION TESTS on three real nodes (tests/threestates.py: real servers, mutual TLS, SQLite stores).
SG is backed up while it serves, then ingests, publishes and is synced by its peers; its disk is "lost"
and it is restored from the backup (``node.backup.restore``), asks its peers what they hold of it
(``GetHeld``), signs a recovery statement and publishes above them. MY and TH accept the statement
(``node.recovered``, no fork) within one sync, TH even before it syncs SG (gossip via MY), and a check
matches again. A shrink without a statement is a fork; a statement that does not verify is audited
against whoever handed it over, and one that does not cover what a peer holds is SG's fork.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2, peer_pb2
from client.protocol.auditlog import LogFork, TreeHead, sign_tree_head
from client.protocol.errors import PeerUnavailable, PetandaError
from client.protocol.manifest import SignedManifest, sign_manifest
from client.protocol.recovery import RecoveryStatement, sign_statement
from client.tools.audit import fetch_log, load_dir, verify_dir, verify_recoveries
from client.tools.cli import main as audit_main
from client.tools.report import alert_detail, alert_party, summarise
from client.transport.convert import tree_head_to_proto
from client.transport.versions import SERVED_KEY, VERSION_KEY, version_of
from node.backup import backup, restore
from node.cli import main
from node.config import load_config
from node.node import Node
from node.peers import Links
from node.recovery import Recovery, kept, not_asked, recover, take_statements
from node.rpc import caller
from node.server import start_server
from node.servicers import PeerServicer
from node.store import open_store
from node.sync import Syncer
from tests.fednet import Net, Running
from tests.threestates import audit_actions, start_three, sync_results

REASON = "disk lost; restored from the nightly backup"
BEFORE = "before-the-backup.example"
AFTER = "after-the-backup.example"


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Servicer methods a test may replace while the servers run (looked up at each call)."""
    installed: dict[str, Any] = {}

    def wrap(name: str) -> Any:
        original = getattr(PeerServicer, name)

        def wrapper(self: PeerServicer, request: Any, context: Any) -> Any:
            hook = installed.get(name)
            return hook(original, self, request, context) if hook else original(self, request, context)

        return wrapper

    for name in ("ExchangeTreeHead", "GetHeld"):
        monkeypatch.setattr(PeerServicer, name, wrap(name))
    return installed


@pytest.fixture
def net(tmp_path: Path, hooks: dict[str, Any]) -> Iterator[Net]:
    net = start_three(tmp_path)
    yield net
    net.close()


def _csv(path: Path, *domains: str) -> Path:
    path.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        + "".join(f"domain,{d},phishing,2026-01-01,2026-11-01,70,GREEN\n" for d in domains)
    )
    return path


def _sync_one(net: Net, node_id: str, peer_id: str) -> Any:
    """``node_id`` syncs ``peer_id`` alone."""
    return Syncer(net.node(node_id), net.running[node_id].links, clock=net.clock).sync_peer(peer_id)


def _backup_while_serving(net: Net, out: Path) -> None:
    """Back SG up while it writes audit entries from another thread (and serves)."""
    sg = net.node("SG")
    sg.ingest([_csv(out.with_suffix(".csv"), BEFORE)], now=net.clock.now)
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            sg.record("test.noise", actor="node", role="node")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        backup(sg.config.store.url, out)
    finally:
        stop.set()
        writer.join()
    assert out.stat().st_mode & 0o777 == 0o600


def _move_on(net: Net, tmp_path: Path) -> None:
    """SG ingests and publishes after the backup, and every peer syncs it (they see more than the backup)."""
    net.clock.now += 60
    sg = net.node("SG")
    sg.ingest([_csv(tmp_path / "later.csv", AFTER)], now=net.clock.now)
    for _ in range(5):
        sg.record("test.noise", actor="node", role="node")
    sg.audit.sign_head()
    net.sync_all()


def _stop(net: Net, node_id: str) -> Running:
    """Stop ``node_id``'s server and close its node (an operator stops the node before a restore)."""
    r = net.running[node_id]
    r.server.server.stop(0).wait()
    r.investigator.checker.close()
    r.links.close()
    r.node.close()
    return r


def _serve_again(net: Net, r: Running, node: Node | None = None, links: Links | None = None) -> None:
    """Serve ``r``'s member again on its address (its node opened anew unless given)."""
    node = node or Node.open(load_config(r.member.config), clock=net.clock)
    links = links or Links(node)
    server = start_server(node, links=links, max_workers=8)
    assert server.port == r.member.port
    net.running[r.member.id] = Running(r.member, node, server, links, server.investigator)


def _restore(net: Net, node_id: str, source: Path, *, statement: bool = True) -> Recovery | None:
    """Stop ``node_id``, put the backup back, recover (unless not ``statement``), publish, serve again
    on the same address."""
    r = _stop(net, node_id)
    net.clock.now += 3600
    config = load_config(r.member.config)
    restore(config.store.url, source)
    node = Node.open(config, clock=net.clock)
    links = Links(node)
    done = recover(node, links, reason=REASON, now=net.clock.now) if statement else None
    node.publish(now=net.clock.now)
    _serve_again(net, r, node, links)
    net.clock.now += 60
    return done


def _restore_by_cli(net: Net, node_id: str, *args: str) -> int:
    """Stop ``node_id`` and run ``petanda-node restore ARGS`` on it (its exit status). The command signs
    with the wall clock, which is after the test's clock: the test's clock then moves past it."""
    r = _stop(net, node_id)
    code = main(["restore", "--config", str(r.member.config), *args])
    net.clock.now = max(net.clock.now, time.time()) + 60
    _serve_again(net, r)
    return code


@pytest.fixture
def restored(net: Net, tmp_path: Path) -> tuple[Net, dict[str, Any]]:
    """SG backed up, moved on, and restored with a recovery statement; what the peers held before."""
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    held = {
        peer: {
            "head": max(net.node(peer).store.peer_tree_heads("SG"), key=lambda h: h.size),
            "version": SignedManifest.from_bytes(
                net.node(peer).store.peer_manifest("SG") or b""
            ).manifest.version,
        }
        for peer in ("MY", "TH")
    }
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    return net, {"held": held, "done": done}


def test_the_backup_is_a_consistent_store(net: Net, tmp_path: Path) -> None:
    out = tmp_path / "b.db"
    _backup_while_serving(net, out)
    with open_store(str(out)) as copy:
        assert copy.integrity_check() == []
        assert copy.latest_manifest() == net.node("SG").store.latest_manifest()
    with pytest.raises(PetandaError, match="exists already"):
        backup(net.node("SG").config.store.url, out)  # never overwritten


def test_restore_refuses_a_backup_others_may_read_or_that_is_no_store(net: Net, tmp_path: Path) -> None:
    url = net.node("MY").config.store.url
    before = net.node("MY").store.audit_size()
    loose = tmp_path / "loose.db"
    _backup_while_serving(net, loose)
    loose.chmod(0o644)
    with pytest.raises(PetandaError, match="chmod 600"):
        restore(url, loose)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    junk.chmod(0o600)
    with pytest.raises(PetandaError, match=r"not a SQLite database|not a backup"):
        restore(url, junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    other.chmod(0o600)
    with pytest.raises(PetandaError, match="not a backup of a Petanda store"):
        restore(url, other)
    assert net.node("MY").store.audit_size() >= before  # untouched


def test_peers_accept_the_recovery_statement_and_checks_match_again(
    restored: tuple[Net, dict[str, Any]],
) -> None:
    net, facts = restored
    statement: RecoveryStatement = facts["done"].statement
    held = facts["held"]
    sg = net.node("SG")
    # SG learnt from its peers the latest head and manifest they hold of it, and publishes above them.
    assert statement.old_head.tree_size == max(h["head"].size for h in held.values())
    assert statement.old_head.tree_size > statement.new_head.tree_size  # the log went back
    assert statement.old_manifest_version == max(h["version"] for h in held.values())
    assert sg.latest_manifest().manifest.version == statement.old_manifest_version + 1
    (restored_entry,) = audit_actions(sg, "node.restored")
    assert restored_entry["sequence"] == 1 and restored_entry["reason"] == REASON

    # MY syncs SG: within one sync, the statement is accepted, no fork, the new manifest taken.
    my = net.node("MY")
    assert sync_results(net, "MY")["SG"].ok
    assert audit_actions(my, "fork") == []
    (recovered,) = audit_actions(my, "node.recovered")
    assert recovered["actor"] == "SG" and recovered["via"] == "SG" and recovered["reason"] == REASON
    assert recovered["old_size"] == statement.old_head.tree_size
    assert recovered["new_size"] == statement.new_head.tree_size
    cached = SignedManifest.from_bytes(my.store.peer_manifest("SG") or b"").manifest
    assert cached.version == statement.old_manifest_version + 1
    # A check of an indicator SG held at the backup matches again at MY after that one sync; one it
    # lost does not.
    answer = net.check("MY", [("domain", BEFORE), ("domain", AFTER)])
    statuses = [{p.peer_id: p.status for p in r.peers}["SG"] for r in answer.results]
    assert statuses == [investigator_pb2.PEER_STATUS_MATCH, investigator_pb2.PEER_STATUS_NO_MATCH]
    # The heads MY held of SG's lost history are kept as evidence with the statement.
    (evidence,) = kept(my, "SG")
    lost = {(h["tree_size"], h["root_hash"]) for h in evidence["superseded"]}
    mine = held["MY"]["head"]
    assert (mine.size, mine.root.hex()) in lost
    assert max(h.size for h in my.store.peer_tree_heads("SG")) >= statement.new_head.tree_size

    # TH learns of the recovery from MY's gossip before it talks to SG: no fork either.
    th = net.node("TH")
    assert _sync_one(net, "TH", "MY").ok
    (gossiped,) = audit_actions(th, "node.recovered")
    assert gossiped["via"] == "MY" and gossiped["sequence"] == 1
    assert _sync_one(net, "TH", "SG").ok
    assert audit_actions(th, "fork") == [] and len(audit_actions(th, "node.recovered")) == 1

    # SG itself syncs its peers again, and a later round is quiet.
    assert all(r.ok for r in net.sync("SG"))
    net.sync_all()
    assert audit_actions(sg, "fork") == []
    for node_id in ("MY", "TH"):
        assert audit_actions(net.node(node_id), "fork") == []
        assert len(audit_actions(net.node(node_id), "node.recovered")) == 1

    # Replayed to a member that holds later heads of SG (its record of the statement gone), the old
    # statement is ignored: it would roll that member's base back.
    my.store.set_meta("recovery.SG", "[]")
    assert take_statements(my, [statement.to_bytes()], via="TH", now=net.clock.now) == []
    assert len(audit_actions(my, "node.recovered")) == 1 and audit_actions(my, "fork") == []
    my.store.set_meta("recovery.SG", json.dumps([evidence]))

    # The auditor's report lists it among the alerts, with what was erased.
    (alert,) = [a for a in summarise(audit_actions(my, "node.recovered")).alerts]
    assert alert_party(alert) == "SG"
    assert f"back to {statement.new_head.tree_size}" in alert_detail(alert) and REASON in alert_detail(alert)

    # status counts the recovery per peer
    peers = {p["id"]: p for p in my.status(now=net.clock.now)["peers"]}
    assert peers["SG"]["recoveries"] == 1 and peers["TH"]["recoveries"] == 0


def test_a_peer_two_versions_behind_syncs_across_the_recovery(net: Net, tmp_path: Path) -> None:
    """TH last synced SG two versions before the latest MY held: the restored SG no longer has the
    manifests in between, and TH takes the chain from the manifest SG's statement names."""
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    sg = net.node("SG")
    for _ in range(2):
        net.clock.now += 60
        sg.publish(now=net.clock.now)
    assert _sync_one(net, "MY", "SG").ok  # TH does not sync: it stays two versions behind
    th_version = SignedManifest.from_bytes(net.node("TH").store.peer_manifest("SG") or b"").manifest.version
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    assert done.statement.old_manifest_version == th_version + 2
    th = net.node("TH")
    result = _sync_one(net, "TH", "SG")
    assert result.ok and result.version == th_version + 3, result
    assert audit_actions(th, "fork") == [] and audit_actions(th, "artefact.refused") == []
    assert [e["via"] for e in audit_actions(th, "node.recovered")] == ["SG"]


def test_a_shrink_without_a_statement_is_a_fork(net: Net, tmp_path: Path) -> None:
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    _restore(net, "SG", source, statement=False)
    my = net.node("MY")
    result = sync_results(net, "MY")["SG"]
    assert not result.ok and "fork" in result.detail
    forks = audit_actions(my, "fork")
    assert forks and {f["actor"] for f in forks} == {"SG"}
    assert audit_actions(my, "node.recovered") == []


def test_a_statement_that_does_not_cover_what_a_peer_holds_is_a_fork(net: Net, tmp_path: Path) -> None:
    """SG claims to have lost less than it did: its old head is one from before what MY holds."""
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    _restore(net, "SG", source, statement=False)
    sg = net.node("SG")
    latest = sg.audit.latest()
    stale = TreeHead("SG", latest.tree_size, latest.root_hash, latest.timestamp, latest.signature)
    forged = sign_statement(
        RecoveryStatement("SG", 1, int(net.clock.now), stale, stale, 0, bytes(32), "claims too little"),
        sg.signing_key,
    )
    sg.store.set_meta(
        "recovery.SG",
        json.dumps(
            [
                {
                    "sequence": 1,
                    "sha256": "",
                    "statement": forged.to_bytes().hex(),
                    "via": "SG",
                    "at": 0,
                    "superseded": [],
                }
            ]
        ),
    )
    my = net.node("MY")
    assert not sync_results(net, "MY")["SG"].ok
    forks = audit_actions(my, "fork")
    assert forks and {f["actor"] for f in forks} == {"SG"}
    assert any("erased more than it says" in f["reason"] for f in forks), forks
    assert audit_actions(my, "node.recovered") == []


def test_a_peer_still_showing_the_erased_history_is_not_taken_for_a_fork(
    restored: tuple[Net, dict[str, Any]],
) -> None:
    """TH takes SG's statement from SG itself, then syncs MY, which has not heard of the recovery and
    still witnesses a head of SG's erased history: evidence, not a fork, and nothing left pending."""
    net, _facts = restored
    th = net.node("TH")
    assert _sync_one(net, "TH", "SG").ok
    assert _sync_one(net, "TH", "MY").ok
    assert json.loads(th.store.get_meta("peer.SG.witnessed") or "[]") == []
    assert _sync_one(net, "TH", "SG").ok
    assert audit_actions(th, "fork") == []
    assert [e["via"] for e in audit_actions(th, "node.recovered")] == ["SG"]
    # MY then hears of it from TH's gossip, and SG's own copy adds nothing.
    my = net.node("MY")
    assert _sync_one(net, "MY", "TH").ok
    assert _sync_one(net, "MY", "SG").ok
    assert audit_actions(my, "fork") == []
    assert [e["via"] for e in audit_actions(my, "node.recovered")] == ["TH"]


@pytest.mark.parametrize("forgery", ["bad-signature", "signed-by-another-node"])
def test_a_forged_statement_is_refused_and_audited_against_the_sender(
    restored: tuple[Net, dict[str, Any]], hooks: dict[str, Any], forgery: str
) -> None:
    """MY hands TH a statement of SG's recovery that SG did not sign: TH refuses it, audits MY, and
    neither accepts a recovery nor records a fork of SG from it."""
    net, facts = restored
    genuine: RecoveryStatement = facts["done"].statement
    if forgery == "bad-signature":
        raw = bytearray(genuine.to_bytes())
        raw[-1] ^= 1
        item = bytes(raw)
    else:
        item = sign_statement(
            dataclasses.replace(genuine, reason="MY says SG lost everything"), net.node("MY").signing_key
        ).to_bytes()

    def forge(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        response: peer_pb2.ExchangeTreeHeadResponse = original(self, request, context)
        if self.node.id == "MY":
            del response.recoveries[:]
            response.recoveries.append(item)
        return response

    hooks["ExchangeTreeHead"] = forge
    th = net.node("TH")
    assert _sync_one(net, "TH", "MY").ok
    refused = [e for e in audit_actions(th, "gossip.refused") if e.get("what") == "recovery"]
    assert refused and {e["actor"] for e in refused} == {"MY"}
    assert "signature" in refused[0]["reason"]
    assert audit_actions(th, "node.recovered") == []
    assert audit_actions(th, "fork") == []
    assert kept(th, "SG") == []


def test_backup_while_writing_and_restore_on_both_backends(store_url: str, tmp_path: Path) -> None:
    """The store alone (SQLite and a real PostgreSQL): a backup taken while another thread appends audit
    entries is a consistent store, and a restore brings the store back to it, dropping what came after."""
    out = tmp_path / "store.backup"
    with open_store(store_url) as store:
        store.save_publication(1, b"m1", {("phone", 1): b"f1"}, {("phone", 1, 0): b"b1"})
        stop = threading.Event()

        def write() -> None:
            while not stop.is_set():
                store.append_audit([{"ts": 1, "action": "test.noise", "actor": "node", "role": "node"}])

        writer = threading.Thread(target=write)
        writer.start()
        try:
            done = backup(store_url, out)
        finally:
            stop.set()
            writer.join()
        assert done.size > 0 and out.stat().st_mode & 0o777 == 0o600
        entries = store.audit_entries(0, store.audit_size())
        store.save_publication(2, b"m2", {}, {})
    restore(store_url, out)
    with open_store(store_url) as back:
        assert back.integrity_check() == []
        assert back.latest_manifest() == b"m1" and back.get_filter(1, "phone", 1) == b"f1"
        size = back.audit_size()
        assert back.audit_entries(0, size) == entries[:size]  # a prefix of the log: nothing torn


def test_the_cli_backs_up_and_refuses_to_restore_without_every_peer(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(net.running["SG"].member.config)
    out = tmp_path / "cli.backup"
    assert main(["backup", "--config", config, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mode 0600" in printed and "which is not in it" in printed and "KEK" in printed
    assert out.stat().st_mode & 0o777 == 0o600
    assert main(["backup", "--config", config, str(out)]) == 2
    assert "exists already" in capsys.readouterr().err

    # While SG serves, restore refuses before it touches the store.
    size = net.node("SG").store.audit_size()
    assert main(["restore", "--config", config, str(out), "--reason", "test"]) == 2
    err = capsys.readouterr().err
    assert "node.listen" in err and "stop the node (every replica) before `restore`" in err, err
    assert net.node("SG").store.audit_size() == size and kept(net.node("SG"), "SG") == []

    for node_id in ("MY", "TH"):
        net.stop(node_id)
    r = net.running["SG"]
    r.server.server.stop(0).wait()
    r.node.close()
    assert main(["restore", "--config", config, str(out), "--reason", ""]) == 2
    assert "--reason: must be 1 to 1024 bytes" in capsys.readouterr().err
    code = main(["restore", "--config", config, str(out), "--reason", "test"])
    err = capsys.readouterr().err
    assert code == 2 and "not every peer said what it holds of this node: MY: UNAVAILABLE" in err, err
    assert "; TH: UNAVAILABLE" in err and "--allow-unreachable" in err, err
    with open_store(load_config(r.member.config).store.url) as store:
        assert store.get_meta("recovery.SG") is None  # nothing signed
    assert main(["restore", "--config", config, "--reason", "test", "--allow-unreachable"]) == 0
    printed = capsys.readouterr().out
    assert "MY: not asked (UNAVAILABLE" in printed and "TH: not asked (UNAVAILABLE" in printed, printed
    assert "no peer was asked, so nothing is known of what they hold: no statement signed" in printed
    assert "hold nothing this store lacks" not in printed
    r.node = Node.open(load_config(r.member.config), clock=net.clock)  # for net.close()


def test_the_cli_restores_signs_and_publishes_and_peers_take_it(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The operator's path: `petanda-node backup` while serving, more published, then `petanda-node
    restore FILE --reason …` on the stopped node: it signs the statement and publishes above the peers;
    started again, its peers take the statement within one sync, and `status` shows the recovery."""
    config = str(net.running["SG"].member.config)
    source = tmp_path / "sg.backup"
    net.node("SG").ingest([_csv(tmp_path / "before.csv", BEFORE)], now=net.clock.now)
    assert main(["backup", "--config", config, str(source)]) == 0
    _move_on(net, tmp_path)
    held = SignedManifest.from_bytes(net.node("MY").store.peer_manifest("SG") or b"").manifest.version
    capsys.readouterr()
    assert _restore_by_cli(net, "SG", str(source), "--reason", REASON) == 0
    out = capsys.readouterr().out
    assert f"store restored from {source}" in out
    assert "recovery statement 1 signed" in out and f"above version {held}" in out, out
    assert f"published version {held + 1}" in out, out
    sg = net.node("SG")
    (restored_entry,) = audit_actions(sg, "node.restored")
    assert restored_entry["reason"] == REASON and restored_entry["asked"] == "MY,TH"
    assert sg.latest_manifest().manifest.version == held + 1
    # The auditors' report of SG's own log lists the restore among its alerts.
    (alert,) = summarise(audit_actions(sg, "node.restored")).alerts
    assert alert_detail(alert).startswith("this node restored a backup: log from size ")
    assert REASON in alert_detail(alert)

    my = net.node("MY")
    assert sync_results(net, "MY")["SG"].ok
    assert audit_actions(my, "fork") == []
    (recovered,) = audit_actions(my, "node.recovered")
    assert recovered["actor"] == "SG" and recovered["statement_sha256"] == restored_entry["statement_sha256"]
    assert SignedManifest.from_bytes(my.store.peer_manifest("SG") or b"").manifest.version == held + 1

    # `petanda-node status` of both sides shows the recovery.
    assert main(["status", "--config", config]) == 0
    assert "this node was restored from a backup 1 time(s)" in capsys.readouterr().out
    assert main(["status", "--config", str(net.running["MY"].member.config)]) == 0
    assert "SG restored from a backup 1 time(s)" in capsys.readouterr().out
    status = json.loads((main(["status", "--json", "--config", config]), capsys.readouterr().out)[1])
    assert status["recoveries"] == 1


def _labelled(version: int) -> tuple[tuple[str, str], ...]:
    return () if version == 2 else ((VERSION_KEY, str(version)),)


def test_a_version_2_peer_is_not_asked_and_is_sent_no_statement(
    net: Net, tmp_path: Path, hooks: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """TH serves version 2 only. SG's restore cannot ask it GetHeld (a message of version 3): it stops,
    naming TH and its version, until the operator passes --allow-unreachable. Recovery statements then go
    to MY (version 3) and never to TH, in either direction of an exchange; TH, which cannot take one,
    records SG's fork as a version-2 node does."""
    net.pin("TH", [2])
    for r in net.running.values():  # as after TH's restart: its peers learn its versions anew
        r.links.reset()
    source = tmp_path / "sg.backup"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    capsys.readouterr()

    assert _restore_by_cli(net, "SG", str(source), "--reason", REASON) == 2
    err = capsys.readouterr().err
    assert "TH: it serves protocol version 2 only, and GetHeld is a message of version 3" in err, err
    assert "--allow-unreachable" in err and "MY:" not in err, err
    assert kept(net.node("SG"), "SG") == []  # nothing signed
    assert audit_actions(net.node("TH"), "peer.get_held") == []  # TH was never asked
    assert len(audit_actions(net.node("MY"), "peer.get_held")) == 1

    assert _restore_by_cli(net, "SG", "--reason", REASON, "--allow-unreachable") == 0
    out = capsys.readouterr().out
    assert "TH: not asked (it serves protocol version 2 only" in out and "recovery statement 1" in out, out
    (entry,) = audit_actions(net.node("SG"), "node.restored")
    assert (entry["asked"], entry["unreachable"]) == ("MY", "TH")
    assert audit_actions(net.node("TH"), "peer.get_held") == []

    # SG's exchanges carry its statement to MY only; MY's answers carry it to TH never.
    seen: list[tuple[str, str, int, int]] = []

    def watch(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        response = original(self, request, context)
        version = version_of(context.invocation_metadata())
        seen.append((self.node.id, caller(context).state, version, len(request.recoveries)))
        seen.append((caller(context).state, self.node.id, version, len(response.recoveries)))
        return response

    hooks["ExchangeTreeHead"] = watch
    results = sync_results(net, "SG")
    assert results["MY"].ok and results["TH"].ok
    assert ("MY", "SG", 3, 1) in seen and ("TH", "SG", 2, 0) in seen, seen  # (to, from, version, items)
    assert sync_results(net, "MY")["SG"].ok
    assert len(audit_actions(net.node("MY"), "node.recovered")) == 1
    seen.clear()
    assert _sync_one(net, "TH", "MY").ok
    assert ("TH", "MY", 2, 0) in seen, seen
    th = net.node("TH")
    assert audit_actions(th, "node.recovered") == []
    th_of_sg = sync_results(net, "TH")["SG"]
    assert not th_of_sg.ok and "fork" in th_of_sg.detail
    assert {f["actor"] for f in audit_actions(th, "fork")} == {"SG"}
    assert audit_actions(net.node("MY"), "fork") == []


def test_a_server_answers_a_version_2_call_without_version_3_fields(net: Net, tmp_path: Path) -> None:
    """MY holds SG's statement. Asked in version 3, its ExchangeTreeHead gossips it; asked in version 2
    (no label), it does not, and GetHeld is refused naming the versions. A statement sent in a call of
    version 2 is not read: SG's shrunk head is then a fork, as at a version-2 node."""
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    assert sync_results(net, "MY")["SG"].ok
    statement = done.statement.to_bytes()

    as_th = net.raw_peer_stub("MY", as_member="TH")
    head = tree_head_to_proto(net.node("TH").audit.latest())
    for version, items in ((3, [statement]), (2, [])):
        answer = as_th.ExchangeTreeHead(
            peer_pb2.ExchangeTreeHeadRequest(head=head), metadata=_labelled(version), timeout=10
        )
        assert list(answer.recoveries) == items, version
    with pytest.raises(grpc.RpcError) as refused:
        as_th.GetHeld(peer_pb2.GetHeldRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "GetHeld is a message of protocol version 3; this call is in version 2"
    assert dict(refused.value.trailing_metadata())[SERVED_KEY] == "2,3"
    denied = [e for e in audit_actions(net.node("MY"), "rpc.denied") if e["result"] == "unsupported_version"]
    assert [(e["actor"], e["protocol"]) for e in denied] == [("TH", 2)]
    assert [e for e in audit_actions(net.node("MY"), "peer.get_held") if e["actor"] == "TH"] == []
    held = as_th.GetHeld(peer_pb2.GetHeldRequest(), metadata=_labelled(3), timeout=10)
    assert held.HasField("head")

    # SG, in version 2, hands TH its statement with its shrunk head: TH does not read it.
    th = net.node("TH")
    as_sg = net.raw_peer_stub("TH", as_member="SG")
    request = peer_pb2.ExchangeTreeHeadRequest(
        head=tree_head_to_proto(net.node("SG").audit.latest()), recoveries=[statement]
    )
    as_sg.ExchangeTreeHead(request, timeout=10)
    assert audit_actions(th, "node.recovered") == []
    assert {f["actor"] for f in audit_actions(th, "fork")} == {"SG"}
    # The same request in version 3: taken, from SG itself.
    as_sg.ExchangeTreeHead(request, metadata=_labelled(3), timeout=10)
    assert [e["via"] for e in audit_actions(th, "node.recovered")] == ["SG"]


def test_a_node_that_speaks_version_2_only_asks_no_peer(net: Net) -> None:
    """SG set to `[protocol] versions = [2]` cannot ask GetHeld of anyone: recover stops, naming its own
    setting for every peer, and no peer is called."""
    net.pin("SG", [2])
    sg = net.running["SG"]
    sg.links.reset()
    why = not_asked(sg.node, sg.links, "MY")
    assert why == (
        "this node speaks protocol version 2 only ([protocol] versions), and GetHeld is a message of "
        "version 3"
    )
    with pytest.raises(PeerUnavailable) as refused:
        recover(sg.node, sg.links, reason=REASON, now=net.clock.now)
    assert f"MY: {why}; TH: {why}" in str(refused.value) and "--allow-unreachable" in str(refused.value)
    for node_id in ("MY", "TH"):
        assert audit_actions(net.node(node_id), "peer.get_held") == []
    assert kept(sg.node, "SG") == []


def test_a_peer_cannot_make_the_restored_node_claim_what_it_did_not_sign(
    net: Net, tmp_path: Path, hooks: dict[str, Any]
) -> None:
    """TH answers SG's GetHeld with a larger head, a later manifest and a statement of SG, all signed by
    TH's key: SG drops each (logged), and its statement names only what MY held of it."""
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    my_head = max(net.node("MY").store.peer_tree_heads("SG"), key=lambda h: h.size)
    my_version = SignedManifest.from_bytes(net.node("MY").store.peer_manifest("SG") or b"").manifest.version
    th_key = net.node("TH").signing_key
    genuine = SignedManifest.from_bytes(net.node("TH").store.peer_manifest("SG") or b"").manifest
    forged_head = sign_tree_head(TreeHead("SG", my_head.size + 1000, bytes(32), int(net.clock.now)), th_key)
    forged_manifest = sign_manifest(dataclasses.replace(genuine, version=my_version + 50), th_key)
    forged_statement = sign_statement(
        RecoveryStatement("SG", 7, int(net.clock.now), forged_head, forged_head, 1, bytes(32), "TH says"),
        th_key,
    )

    def forge(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        response: peer_pb2.GetHeldResponse = original(self, request, context)
        if self.node.id == "TH":
            response.head.CopyFrom(tree_head_to_proto(forged_head))
            response.signed_manifest = forged_manifest.to_bytes()
            response.recoveries.append(forged_statement.to_bytes())
        return response

    hooks["GetHeld"] = forge
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    assert done.answered == ["MY", "TH"]
    assert (done.statement.old_head.tree_size, done.statement.old_head.root_hash) == (
        my_head.size,
        my_head.root,
    )
    assert done.statement.old_manifest_version == my_version and done.adopted_version == my_version
    assert done.statement.sequence == 1  # TH's statement of sequence 7 counted for nothing
    assert net.node("SG").latest_manifest().manifest.version == my_version + 1
    # MY takes the statement: it covers all MY holds.
    assert sync_results(net, "MY")["SG"].ok
    assert audit_actions(net.node("MY"), "fork") == []


# --- the auditor's copy of a restored node's log ------------------------------------------------------


def _noise(net: Net, node_id: str, count: int) -> None:
    for _ in range(count):
        net.node(node_id).record("test.noise", actor="node", role="node")


def test_an_auditors_copy_a_restore_erased_is_kept_as_evidence_and_the_fetch_goes_on(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _noise(net, "SG", 3)  # past the backup: the restore erases these
    audit_dir = tmp_path / "audit-sg"
    before = fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))
    _move_on(net, tmp_path)  # the peers hold more than the auditor: the statement covers its copy
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    statement = done.statement
    assert statement.new_head.tree_size < before.tree_size <= statement.old_head.tree_size

    after = fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))

    assert after.recovered == (statement,)
    # It went on from the last head both logs share, at or before the restored log's head.
    assert 0 < after.previous_size <= statement.new_head.tree_size
    log = load_dir(audit_dir)
    assert log.recoveries == [statement]
    assert verify_dir(log) is not None
    [line] = verify_recoveries(audit_dir, log)
    assert "recovery 1" in line and f"{before.tree_size} entries, verified" in line
    evidence = load_dir(audit_dir / "recovered-1")
    assert len(evidence.entries) == before.tree_size  # the erased entries, as fetched
    assert verify_dir(evidence) is not None
    actions = [json.loads(e)["action"] for e in log.entries[statement.new_head.tree_size :]]
    assert "node.restored" in actions
    # The command line says the same; a later fetch has nothing more to move.
    assert audit_main(["audit", "verify", str(audit_dir)]) == 0
    assert "recovery 1" in capsys.readouterr().out
    again = fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now) + 120)
    assert again.recovered == () and not (audit_dir / "recovered-2").exists()


def test_a_restore_that_erased_more_than_its_statement_says_is_a_fork_to_the_auditor(
    net: Net, tmp_path: Path
) -> None:
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _move_on(net, tmp_path)
    audit_dir = tmp_path / "audit-sg"
    before = fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))  # after the peers' last look
    done = _restore(net, "SG", source)
    assert done is not None and done.statement is not None
    assert before.tree_size > done.statement.old_head.tree_size  # a head no peer held

    with pytest.raises(LogFork, match="erased more than it says"):
        fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))

    kept = load_dir(audit_dir)  # the auditor's copy is untouched
    assert len(kept.entries) == before.tree_size and kept.recoveries == []
    assert not (audit_dir / "recovered-1").exists()
    assert any(p.name.startswith("rejected-") for p in audit_dir.iterdir())


def test_a_recovery_statement_line_that_is_tampered_with_fails_verification(
    net: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "sg-backup.db"
    _backup_while_serving(net, source)
    _noise(net, "SG", 3)
    audit_dir = tmp_path / "audit-sg"
    fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))
    _move_on(net, tmp_path)
    _restore(net, "SG", source)
    fetch_log(net.auditor("SG"), audit_dir, now=int(net.clock.now))
    path = audit_dir / "recoveries.jsonl"
    line = json.loads(path.read_text())
    raw = bytearray.fromhex(line["statement"])
    raw[-70] ^= 1  # a byte of the reason: the signature no longer holds
    path.write_text(json.dumps({**line, "statement": raw.hex()}) + "\n")

    assert audit_main(["audit", "verify", str(audit_dir)]) == 1
    assert "signature" in capsys.readouterr().out
