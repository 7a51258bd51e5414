"""MY, SG and TH on real servers over real mutual TLS (``tests/fednet.py``), each holding a few indicators
of its own: the small federation of the peer identity, sync limit, check and witness gossip tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.protocol.auditlog import decode_entry
from node.config import load_config
from node.demodata import generate, write_csv
from node.node import Node
from node.testbed import write_config
from tests.fednet import Net, start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
IDS = ["MY", "SG", "TH"]


def start_three(root: Path, *, sync: bool = True) -> Net:
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


def sync_results(net: Net, node_id: str) -> dict[str, Any]:
    """``node_id`` syncs every peer: the results by peer."""
    return {r.peer_id: r for r in net.sync(node_id)}


def audit_actions(node: Node, action: str) -> list[dict[str, Any]]:
    """The decoded entries of ``node``'s audit log with this ``action``."""
    entries = (decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size()))
    return [e for e in entries if e["action"] == action]


def point(net: Net, node_id: str, addresses: dict[str, str]) -> None:
    """Rewrite ``node_id``'s config with some peers at other addresses, and reopen its channels."""
    r = net.running[node_id]
    write_config(r.member, net.federation.members.values(), addresses=addresses)
    r.node.config = load_config(r.member.config)
    r.links.reset()
