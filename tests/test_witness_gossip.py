"""Witness gossip, on real nodes over real mutual TLS: a peer hands over the tree heads it has proven of
the others, and a node that shows two members two different logs is caught as a fork."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from client._proto.petanda.v1 import peer_pb2
from client.protocol.auditlog import TreeHead, sign_tree_head
from client.transport.convert import tree_head_to_proto
from node.config import DEFAULT_STORE_FILE, load_config
from node.node import Node
from node.server import start_server
from node.sync import Syncer
from node.testbed import write_config
from tests.fednet import Net
from tests.threestates import NOW, audit_actions, point, start_three


def test_a_peer_hands_over_its_proven_heads_of_the_others(tmp_path: Path) -> None:
    net = start_three(tmp_path)
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
    net = start_three(tmp_path)
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
        assert audit_actions(my, "fork") == []
        assert sg.audit.latest().tree_size > h2.size
    finally:
        net.close()


def test_a_witnessed_head_with_another_root_for_a_known_size_is_a_fork_at_once(tmp_path: Path) -> None:
    net = start_three(tmp_path)
    try:
        my, sg = net.node("MY"), net.node("SG")
        known = max(my.store.peer_tree_heads("SG"), key=lambda h: h.size)
        forged = sign_tree_head(TreeHead("SG", known.size, bytes(32), known.timestamp + 1), sg.signing_key)
        syncer = Syncer(my, net.running["MY"].links, clock=net.clock)
        unsigned = dataclasses.replace(forged, root_hash=b"\x01" * 32)  # signature no longer matches
        syncer._take_witnessed("TH", [tree_head_to_proto(unsigned)], now=NOW)
        assert audit_actions(my, "fork") == []
        syncer._take_witnessed("TH", [tree_head_to_proto(forged)], now=NOW)
        forks = audit_actions(my, "fork")
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
    (twin_dir / DEFAULT_STORE_FILE).chmod(0o600)  # as the original: readable by the node's user only
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
    net = start_three(tmp_path, sync=False)
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
        point(net, "TH", {"SG": member.address})  # TH is shown the twin, MY the original

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
        assert audit_actions(my, "fork") == []  # nothing to compare yet: the witnessed size is new to MY
        pending = json.loads(my.store.get_meta("peer.SG.witnessed") or "[]")
        assert [(w["size"], w["root"], w["via"]) for w in pending] == [
            (witnessed.size, witnessed.root.hex(), "TH")
        ]

        result = syncer.sync_peer("SG")
        assert not result.ok and "fork" in result.detail, result
        forks = audit_actions(my, "fork")
        assert len(forks) == 1 and forks[0]["actor"] == "SG", forks
        assert "TH" in forks[0]["reason"] and reason in forks[0]["reason"], forks
        assert my.store.get_meta("peer.SG.witnessed") == "[]"  # settled
        assert witnessed.root not in {h.root for h in my.store.peer_tree_heads("SG")}
    finally:
        if twin is not None:
            server.server.stop(0).wait()
            twin.close()
        net.close()
