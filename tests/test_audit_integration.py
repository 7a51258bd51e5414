"""The audit log end to end: real nodes, real mutual TLS, real SQLite, and the auditor's own tools.

An auditor fetches a node's log with ``petanda audit fetch`` after real exchanges, verifies it and
reports on it; every kind of exchange event lands in the log, free of raw indicators; a peer that
shows two different logs is caught by its peers' syncs and by the auditor; and a node killed while
appending leaves a log whose every signed head verifies.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import phonenumbers
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import investigator_pb2, peer_pb2
from client.protocol import oprf
from client.protocol.auditlog import TreeHead, canonical_json, decode_entry, make_entry, verify_log
from client.protocol.canonical import normalize
from client.protocol.kinds import TIER_OPRF, kind_code
from client.protocol.manifest import SignedManifest
from client.tools.audit import ENTRIES_FILE, load_dir
from client.tools.cli import main as petanda
from node.audit import AuditLog
from node.config import load_config
from node.demodata import Planted, generate, write_csv
from node.node import Node
from node.testbed import build_federation
from tests.fednet import Net, start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
S = investigator_pb2
Rows = dict[str, list[dict[str, str]]]
#: Columns of the report's per-peer table after the peer's name.
ENTRIES, QUERIES, INDICATORS, CHECKS, MATCHES, LIMITED, REFUSED, FAILED = range(8)
#: Entries a fetch writes before the node signs the head it fetches up to (GetPublicKey, ListTreeHeads,
#: ListRecoveries).
FETCH_CALLS_BEFORE_HEAD = 3


# --- helpers -------------------------------------------------------------------------------------------


def _world(
    root: Path,
    ids: list[str],
    *,
    per_node: int = 12,
    planted: int = 8,
    limits: dict[str, object] | None = None,
) -> tuple[Net, Rows, list[Planted]]:
    """A started federation of ``ids``, each node holding its own synthetic indicators, all synced."""
    today = datetime.fromtimestamp(NOW, UTC).date()
    rows, plants = generate(ids, per_node=per_node, planted=planted, today=today)
    net = start_net(root / "net", ids, now=NOW, limits=limits)
    try:
        for node_id, node_rows in rows.items():
            path = root / f"{node_id}.csv"
            write_csv(path, node_rows)
            report = net.node(node_id).ingest([path], now=NOW)
            assert report.rejections == [] and report.stored == len(node_rows)
        net.sync_all()
    except BaseException:
        net.close()
        raise
    return net, rows, plants


def _fetch(
    net: Net,
    node_id: str,
    directory: Path,
    *,
    as_cert: tuple[Path, Path] | None = None,
    server_name: str = "",
) -> int:
    member = net.federation.members[node_id]
    cert, key = as_cert or member.auditor
    extra = ["--server-name", server_name] if server_name else []
    return petanda(
        ["audit", "fetch", str(directory), "--node", member.address, "--ca", str(net.federation.ca),
         "--cert", str(cert), "--key", str(key), *extra]
    )  # fmt: skip


def _entries(node: Node) -> list[dict[str, Any]]:
    return [decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size())]


def _heads(node: Node) -> list[TreeHead]:
    return [TreeHead(node.id, h.size, h.root, h.timestamp, h.signature) for h in node.store.tree_heads()]


def _verify_store(node: Node) -> None:
    """Sign a head over everything and verify the node's whole log as an auditor would."""
    node.audit.sign_head()
    raw = node.store.audit_entries(0, node.store.audit_size())
    verify_log(raw, _heads(node), Ed25519PublicKey.from_public_bytes(node.audit.public_key), node_id=node.id)


def _spellings(kind: str, value: str, region: str) -> set[str]:
    """A raw indicator in every common spelling: as reported, canonical, cased, and a phone's digits."""
    canonical = normalize(kind, value, region)
    out = {value, canonical, value.lower(), value.upper(), canonical.lower(), canonical.upper()}
    if kind == "phone":
        number = phonenumbers.parse(canonical)
        national = str(number.national_number)
        out |= {canonical.lstrip("+"), national, "0" + national, re.sub(r"\D", "", value)}
    if kind == "url":
        out.add(canonical.split("://", 1)[-1])
    return {s for s in out if len(s) >= 6}


def _secrets(rows: Rows) -> set[str]:
    return {
        s
        for node_rows in rows.values()
        for r in node_rows
        for s in _spellings(r["kind"], r["value"], r["region"])
    }


def _leaks(entries: list[bytes], secrets: set[str]) -> list[str]:
    text = b"\n".join(entries).decode("utf-8")
    return sorted(s for s in secrets if s in text)


def _table(page: str, table_id: str) -> dict[str, list[int]]:
    match = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert match, table_id
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", match.group(1)):
        cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        rows[cells[0]] = [int(c) for c in cells[1:]]
    return rows


def _total(page: str, table_id: str) -> list[int]:
    match = re.search(rf'<table id="{table_id}">.*?<tfoot><tr>(.*?)</tr></tfoot>', page, re.S)
    assert match, table_id
    return [int(c) for c in re.findall(r"<td[^>]*>(\d+)</td>", match.group(1))]


def _oprf_elements(net: Net, asker: str, holder: str, queries: list[tuple[str, str]]) -> int:
    """How many blinded elements ``asker`` sends ``holder`` for ``queries`` (kinds it publishes)."""
    cached = net.node(asker).store.peer_manifest(holder)
    assert cached is not None
    manifest = SignedManifest.from_bytes(cached).manifest
    return sum(1 for kind, _ in queries if manifest.entry(kind, TIER_OPRF) is not None)


def _outcomes(response: Any) -> dict[str, dict[str, int]]:
    """Per peer: outcomes counted and matches, from a check's response."""
    out: dict[str, dict[str, int]] = {}
    for result in response.results:
        for peer in result.peers:
            tally = out.setdefault(peer.peer_id, {"checks": 0, "matches": 0})
            tally["checks"] += 1
            tally["matches"] += peer.status == S.PEER_STATUS_MATCH
    return out


# --- 1: the auditor's tools against a real node ------------------------------------------------------


def test_auditor_fetches_verifies_and_reports_a_real_nodes_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net, rows, planted = _world(tmp_path, ["MY", "TH", "SG"])
    try:
        my = net.node("MY")
        # Peers' investigators check through their own nodes, which query MY's OPRF.
        th_queries = [(p.kind, p.canonical) for p in planted]
        sg_queries = th_queries[:3]
        net.check("TH", th_queries)
        net.check("SG", sg_queries)
        queries = {
            "TH": _oprf_elements(net, "TH", "MY", th_queries),
            "SG": _oprf_elements(net, "SG", "MY", sg_queries),
        }
        assert queries["TH"] > queries["SG"] > 0
        # MY's own investigator checks twice (one query is invalid and reaches no peer).
        mine = [(p.kind, p.canonical) for p in planted] + [("phone", "not a phone")]
        first, second = net.check("MY", mine), net.check("MY", mine[:2])
        outcomes = {
            peer: {k: a[k] + _outcomes(second)[peer][k] for k in a} for peer, a in _outcomes(first).items()
        }
        assert outcomes["TH"]["checks"] == len(planted) + 2 and outcomes["TH"]["matches"] > 0
        # No head is signed by hand: the fetch asks the node for one over everything it holds.
        size = my.store.audit_size() + FETCH_CALLS_BEFORE_HEAD
        capsys.readouterr()

        log_dir = tmp_path / "audit-MY"
        assert _fetch(net, "MY", log_dir) == 0
        out = capsys.readouterr().out
        assert f"fetched node MY: {size} new entries (0 -> {size})" in out
        assert "complete: the node's whole log as of" in out
        assert petanda(["audit", "verify", str(log_dir)]) == 0
        assert capsys.readouterr().out.startswith(f"OK: {size} entries")

        page_path = tmp_path / "report.html"
        assert petanda(["audit", "report", str(log_dir), "--html", str(page_path)]) == 0
        page = page_path.read_text()
        assert 'data-status="ok"' in page
        by_peer = _table(page, "by-peer")
        for peer in ("TH", "SG"):
            assert by_peer[peer][QUERIES] == queries[peer], peer
            assert by_peer[peer][CHECKS] == outcomes[peer]["checks"], peer
            assert by_peer[peer][MATCHES] == outcomes[peer]["matches"], peer
            assert by_peer[peer][LIMITED] == by_peer[peer][FAILED] == 0
        # A match is counted once, under the peer that answered it; the investigator's row counts the
        # indicators asked (one each, whatever the number of peers), the invalid one included.
        assert by_peer["MY/investigator"][MATCHES] == by_peer["MY/investigator"][CHECKS] == 0
        assert by_peer["MY/investigator"][INDICATORS] == len(mine) + 2
        totals = _total(page, "by-peer")
        assert totals[MATCHES] == outcomes["TH"]["matches"] + outcomes["SG"]["matches"]
        assert totals == _total(page, "by-day") == _total(page, "by-kind")
        actions = {k: v[0] for k, v in _table(page, "by-action").items()}
        assert actions["investigator.check"] == 2 and sum(actions.values()) == size

        # More activity, then an incremental fetch checked by the consistency proof (a minute later:
        # the node signs at most one head per auditor per audit.fresh_head_interval_s).
        before = (log_dir / ENTRIES_FILE).read_bytes()
        net.check("SG", sg_queries)
        net.check("MY", mine[:1])
        net.clock.now += my.config.audit.fresh_head_interval_s
        grown = my.store.audit_size() + FETCH_CALLS_BEFORE_HEAD
        capsys.readouterr()
        assert _fetch(net, "MY", log_dir) == 0
        assert f"{grown - size} new entries ({size} -> {grown})" in capsys.readouterr().out
        assert (log_dir / ENTRIES_FILE).read_bytes().startswith(before)
        assert petanda(["audit", "verify", str(log_dir)]) == 0
        assert len(load_dir(log_dir).entries) == grown
        assert petanda(["audit", "report", str(log_dir), "--html", str(page_path)]) == 0
        by_peer = _table(page_path.read_text(), "by-peer")
        assert by_peer["SG"][QUERIES] == 2 * queries["SG"]
        assert by_peer["TH"][CHECKS] == outcomes["TH"]["checks"] + 1

        # Tampering with one entry is caught and named.
        for index in (0, size // 2, grown - 1):
            tampered = tmp_path / f"tampered-{index}"
            shutil.copytree(log_dir, tampered)
            lines = (tampered / ENTRIES_FILE).read_bytes().split(b"\n")
            fields = decode_entry(lines[index])
            lines[index] = canonical_json({**fields, "ts": fields["ts"] + 1})
            (tampered / ENTRIES_FILE).write_bytes(b"\n".join(lines))
            capsys.readouterr()
            assert petanda(["audit", "verify", str(tampered)]) == 1
            assert f"first bad index {index}:" in capsys.readouterr().out
            assert petanda(["audit", "report", str(tampered), "--html", str(page_path)]) == 1
            assert f"LOG VERIFICATION FAILED at entry {index}" in page_path.read_text()

        # Only the node's own auditors may fetch. Another state's auditor does not even reach MY's node
        # by default (it expects th.peer.petanda); told to accept MY's name, it is refused by the node.
        capsys.readouterr()
        assert _fetch(net, "MY", tmp_path / "denied-dial", as_cert=net.federation.members["TH"].auditor) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Hostname Verification" in err, err
        for name, cert in (("investigator", net.federation.members["MY"].investigator),
                           ("other state's auditor", net.federation.members["TH"].auditor)):  # fmt: skip
            capsys.readouterr()
            target = tmp_path / f"denied-{name}"
            assert _fetch(net, "MY", target, as_cert=cert, server_name="my.peer.petanda") == 2, name
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "PERMISSION_DENIED" in err, err
            assert not (tmp_path / f"denied-{name}" / ENTRIES_FILE).exists()

        # No entry anywhere holds a raw indicator, in any common spelling.
        secrets = _secrets(rows)
        assert _leaks(load_dir(log_dir).entries, secrets) == []
        for node_id in ("TH", "SG"):
            node = net.node(node_id)
            assert _leaks(node.store.audit_entries(0, node.store.audit_size()), secrets) == []
    finally:
        net.close()


def _checks_in(directory: Path) -> list[dict[str, Any]]:
    return [e for e in map(decode_entry, load_dir(directory).entries) if e["action"] == "investigator.check"]


def test_a_fetch_right_after_a_check_holds_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The pilot's stale log: a fetch returned only what the 300 s tree head covered. Now the node signs
    a head for the fetch (at most one per auditor per audit.fresh_head_interval_s, audited), and within
    that interval the fetch says how many entries it leaves out and when to fetch again."""
    net, _rows, planted = _world(tmp_path, ["MY", "TH"], per_node=6, planted=4)
    try:
        my = net.node("MY")
        interval = my.config.audit.fresh_head_interval_s
        assert interval < my.config.audit.tree_head_interval_s
        queries = [(p.kind, p.canonical) for p in planted]
        response = net.check("MY", queries)
        expected = _outcomes(response)["TH"]
        log_dir = tmp_path / "audit-MY"
        capsys.readouterr()
        assert _fetch(net, "MY", log_dir) == 0
        assert "complete: the node's whole log as of" in capsys.readouterr().out
        [check] = _checks_in(log_dir)
        assert check["count"] == len(queries)
        assert check["outcomes"]["TH"].get("match", 0) == expected["matches"] > 0
        assert sum(check["outcomes"]["TH"].values()) == expected["checks"]
        assert sum(sum(p.values()) for k in check["outcomes_by_kind"].values() for p in k.values()) == len(
            queries
        )
        assert petanda(["audit", "verify", str(log_dir)]) == 0

        # A second check and an immediate second fetch: the auditor's rate limit gives the latest head,
        # and the fetch says what it left out.
        net.check("MY", queries[:1])
        size = my.store.audit_size() + FETCH_CALLS_BEFORE_HEAD
        fetched = len(load_dir(log_dir).entries)
        capsys.readouterr()
        assert _fetch(net, "MY", log_dir) == 0
        out = capsys.readouterr().out
        assert f"note: {size - fetched} entries the node wrote after its latest head" in out, out
        assert f"fetch again in {interval} s" in out
        assert len(_checks_in(log_dir)) == 1 and len(load_dir(log_dir).entries) == fetched
        assert petanda(["audit", "verify", str(log_dir)]) == 0

        # After the interval the next fetch holds the second check too.
        net.clock.now += interval
        capsys.readouterr()
        assert _fetch(net, "MY", log_dir) == 0
        assert "complete: the node's whole log as of" in capsys.readouterr().out
        assert [c["count"] for c in _checks_in(log_dir)] == [len(queries), 1]
        assert petanda(["audit", "verify", str(log_dir)]) == 0

        # Every request for a fresh head is audited, signed or refused.
        fresh = [e for e in _entries(my) if e["action"] == "auditor.fresh_tree_head"]
        assert [(e["actor"], e["result"], e["signed"]) for e in fresh] == [
            ("MY/auditor", "ok", 1),
            ("MY/auditor", "rate_limited", 0),
            ("MY/auditor", "ok", 1),
        ]
        assert fresh[1]["log_size"] - fresh[1]["size"] == size - fetched
        heads = {h.tree_size for h in _heads(my)}
        assert {fresh[0]["size"], fresh[2]["size"]} <= heads
    finally:
        net.close()


# --- 2: every kind of exchange event lands in the log ------------------------------------------------


def test_every_kind_of_exchange_event_is_logged(tmp_path: Path) -> None:
    net, rows, planted = _world(tmp_path, ["MY", "TH"], limits={"oprf_daily_quota": 40})
    try:
        my = net.node("MY")
        queries = [(p.kind, p.canonical) for p in planted]
        # TH's investigator finds MY's records and reports a sighting of one to MY.
        th_result = net.check("TH", queries)
        hit = next(
            (q, peer) for q, r in zip(queries, th_result.results, strict=True) for peer in r.peers
            if peer.status == S.PEER_STATUS_MATCH
        )  # fmt: skip
        (kind, _), peer = hit
        meta = peer.metadata
        request = S.SightingRequest(
            peer_id="MY", kind=kind, tier=meta.tier, version=meta.version, tag=meta.tag
        )
        assert net.investigator("TH").ReportSighting(request).recorded
        # MY's investigator checks and reports a sighting to TH.
        my_result = net.check("MY", [*queries, ("email", "not an email")])
        match = next(
            (q, p) for q, r in zip(queries, my_result.results, strict=True) for p in r.peers
            if p.status == S.PEER_STATUS_MATCH
        )  # fmt: skip
        (kind, _), peer = match
        meta = peer.metadata
        request = S.SightingRequest(
            peer_id="TH", kind=kind, tier=meta.tier, version=meta.version, tag=meta.tag
        )
        assert net.investigator("MY").ReportSighting(request).recorded
        # TH's node sends MY an invalid element (the identity), then a batch over its daily quota.
        stub = net.peer_stub("MY", as_member="TH")
        epoch = my.epoch

        def evaluate(elements: list[bytes]) -> grpc.StatusCode:
            request = peer_pb2.EvaluateOprfRequest(
                epoch=epoch, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
            )
            with pytest.raises(grpc.RpcError) as failure:
                stub.EvaluateOprf(request, timeout=10)
            return failure.value.code()  # type: ignore[no-any-return]

        assert evaluate([bytes(32)]) == grpc.StatusCode.INVALID_ARGUMENT
        _, blinded = oprf.blind([f"x{i}".encode() for i in range(40)], oprf.MODE_VOPRF)
        assert evaluate(blinded) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The operator retracts and rotates; then TH serves a key MY did not pin: refused.
        own = rows["MY"][0]
        assert my.retract(own["kind"], own["value"], region=own["region"], now=NOW + 5)
        assert my.rotate(now=NOW + 6) == epoch + 1
        my.store.set_meta("peer.TH.signing_key", "11" * 32)
        results = {r.peer_id: r for r in net.sync("MY")}
        assert not results["TH"].ok

        entries = _entries(my)
        actions = {e["action"] for e in entries}
        served = ("peer.get_manifest", "peer.get_filter", "peer.get_records", "peer.report_sighting")
        served += ("peer.exchange_tree_head",)
        expected = {
            "config.loaded",
            "ingest",
            "publish",
            "retract",
            "rotate",
            "sync.pull",
            "artefact.refused",
        }
        expected |= {"peer.key_pinned", "peer.evaluate_oprf", "investigator.check", "investigator.sighting"}
        expected |= set(served)
        assert expected <= actions, expected - actions
        by_action: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            by_action.setdefault(entry["action"], []).append(entry)
        oprf_results = {e["result"] for e in by_action["peer.evaluate_oprf"]}
        assert oprf_results == {"ok", "invalid", "rate_limited"}
        assert {e["actor"] for e in by_action["peer.evaluate_oprf"]} == {"TH"}
        assert all(e["actor"] == "TH" and e["role"] == "peer" for a in served for e in by_action[a])
        [check] = by_action["investigator.check"]
        tally = _outcomes(my_result)["TH"]
        assert (
            check["actor"] == "MY/investigator"
            and check["count"] == len(queries) + 1
            and check["invalid"] == 1
        )
        assert check["outcomes"]["TH"].get("match", 0) == tally["matches"] == check["matches"]
        assert sum(check["outcomes"]["TH"].values()) == tally["checks"]
        [sighting] = by_action["investigator.sighting"]
        assert (sighting["peer"], sighting["kind"], sighting["result"]) == ("TH", kind, "ok")
        [refused] = by_action["artefact.refused"]
        assert refused["peer"] == "TH" and "signing key" in refused["reason"]
        assert by_action["rotate"][0]["epoch"] == epoch + 1
        assert {e["result"] for e in by_action["sync.pull"]} == {"ok"}
        # The log verifies and holds no raw indicator.
        _verify_store(my)
        assert _leaks(my.store.audit_entries(0, my.store.audit_size()), _secrets(rows)) == []
    finally:
        net.close()


def test_a_changed_configuration_is_logged_once(tmp_path: Path) -> None:
    federation = build_federation(tmp_path, ["MY"])
    path = federation.members["MY"].config

    def opened() -> tuple[list[dict[str, Any]], str]:
        config = load_config(path)
        node = Node.open(config)
        try:
            loaded = [e for e in _entries(node) if e["action"] == "config.loaded"]
        finally:
            node.close()
        return loaded, hashlib.sha256(config.model_dump_json().encode()).hexdigest()

    loaded, first = opened()
    assert [(e["config_sha256"], e["previous"], e["actor"]) for e in loaded] == [(first, "", "node")]
    assert opened()[0] == loaded  # unchanged: nothing new
    path.write_text(path.read_text() + "# a comment changes no setting\n")
    assert opened()[0] == loaded
    path.write_text(path.read_text() + "[audit]\ntree_head_interval_s = 60\n")
    loaded, second = opened()
    assert second != first
    assert [(e["config_sha256"], e["previous"]) for e in loaded] == [(first, ""), (second, first)]


# --- 3: forks ----------------------------------------------------------------------------------------


def _rewrite_log(db: Path, mode: str, size: int) -> None:
    """Rewrite a node's log behind its back, as a dishonest operator with the database file could.

    ``rewritten``: entry 1 changed and every later entry re-chained; ``same_size``: the same, cut to
    ``size`` entries; ``shrunk``: cut to ``size - 2`` entries, unchanged. Tree heads beyond go too.
    """
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("DROP TRIGGER audit_log_no_update")
            conn.execute("DROP TRIGGER audit_log_no_delete")
            entries = [bytes(e) for (e,) in conn.execute("SELECT entry FROM audit_log ORDER BY idx")]
            keep = {"rewritten": len(entries), "same_size": size, "shrunk": size - 2}[mode]
            conn.execute("DELETE FROM audit_log WHERE idx >= ?", (keep,))
            conn.execute("UPDATE audit_state SET size = ? WHERE id = 1", (keep,))
            if mode == "shrunk":
                conn.execute("DELETE FROM tree_heads WHERE size > ?", (keep,))
                return
            conn.execute("DELETE FROM tree_heads")
            new = entries[:1]
            for index in range(1, keep):
                fields = decode_entry(entries[index])
                for reserved in ("v", "i", "prev"):
                    del fields[reserved]
                if index == 1:
                    fields["ts"] += 3600
                new.append(make_entry(index, new[-1], fields))
            conn.executemany(
                "UPDATE audit_log SET entry = ?, leaf_hash = ? WHERE idx = ?",
                [(e, hashlib.sha256(b"\x00" + e).digest(), i) for i, e in enumerate(new)],
            )
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["rewritten", "same_size", "shrunk"])
def test_a_peer_showing_two_logs_is_caught(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    net, _rows, _planted = _world(tmp_path, ["MY", "TH"], per_node=4, planted=2)
    try:
        my, th = net.node("MY"), net.node("TH")
        kept = my.store.peer_tree_heads("TH")
        size = max(h.size for h in kept)
        assert size >= 3  # config.loaded, ingest, publish
        manifest = my.store.peer_manifest("TH")
        audit_dir = tmp_path / "audit-TH"
        assert _fetch(net, "TH", audit_dir) == 0

        db = th.config.store.sqlite_path
        assert db is not None
        _rewrite_log(db, mode, size)
        net.clock.now += 60
        th.audit = AuditLog(th.store, "TH", th.signing_key, clock=net.clock)
        if mode == "rewritten":
            th.ingest([tmp_path / "TH.csv"], now=net.clock.now)  # a new publication, and a new head
        else:
            assert th.audit.sign_head(force=True) is not None
        forged = th.audit.latest()
        assert th.store.integrity_check() == []  # the rewrite is clean: only other logs can show it

        # TH first presents its new head to MY (its own sync); MY must not take it as proven.
        assert all(r.ok for r in net.sync("TH"))
        assert forged.root_hash not in {h.root for h in my.store.peer_tree_heads("TH")}
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="node.node"):
            results = {r.peer_id: r for r in net.sync("MY")}
        assert not results["TH"].ok and "fork" in results["TH"].detail, results["TH"]
        assert any("FORK" in r.getMessage() and "TH" in r.getMessage() for r in caplog.records)
        forks = [e for e in _entries(my) if e["action"] == "fork"]
        assert forks and all(e["actor"] == "TH" and e["result"] == "fork" for e in forks)
        refused = [e for e in _entries(my) if e["action"] == "artefact.refused"]
        assert len(refused) == 1 and "fork" in refused[0]["reason"]
        assert my.store.peer_manifest("TH") == manifest  # the last good copy is kept
        assert forged.root_hash not in {h.root for h in my.store.peer_tree_heads("TH")}
        # And again on the next sync: the forged log never becomes the base.
        assert not {r.peer_id: r for r in net.sync("MY")}["TH"].ok
        _verify_store(my)

        # TH's auditor, holding the earlier fetch, is not fooled either.
        assert _fetch(net, "TH", audit_dir) == 2
        assert any(p.name.startswith("rejected-") for p in audit_dir.iterdir())
        assert petanda(["audit", "verify", str(audit_dir)]) == 0  # the earlier fetch is left intact
    finally:
        net.close()


# --- 4: SIGKILL while appending ----------------------------------------------------------------------

_APPENDER = """
import sys
from node.config import load_config
from node.node import Node

node = Node.open(load_config(sys.argv[1]))
i = 0
while True:
    node.record("test.append", actor="node", role="node", n=i)
    i += 1
    if i % 50 == 0:
        head = node.audit.sign_head()
        print(f"head {head.tree_size}", flush=True)
"""


def _read_line(process: subprocess.Popen[bytes], deadline: float) -> str:
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, "the appender printed nothing in time"
        byte = os.read(process.stdout.fileno(), 1)
        assert byte, f"the appender exited: {process.wait()}"
        line += byte
    return line.decode().strip()


def test_sigkill_while_appending_leaves_a_verifiable_log(tmp_path: Path) -> None:
    federation = build_federation(tmp_path / "fed", ["MY"])
    config_path = federation.members["MY"].config
    script = tmp_path / "appender.py"
    script.write_text(_APPENDER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, str(script), str(config_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 40
        printed = [_read_line(process, deadline) for _ in range(3)]
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    signed = [int(line.removeprefix("head ")) for line in printed]
    assert signed == sorted(signed) and signed[0] >= 50

    config = load_config(config_path)
    node = Node.open(config)
    try:
        store = node.store
        assert store.integrity_check() == []
        size = store.audit_size()
        heads = _heads(node)
        latest = max(h.tree_size for h in heads)
        assert latest >= signed[-1] and all(h.tree_size <= size for h in heads)
        raw = store.audit_entries(0, size)
        assert [decode_entry(e)["i"] for e in raw] == list(range(size))  # contiguous, no gap
        key = Ed25519PublicKey.from_public_bytes(node.audit.public_key)
        verify_log(raw[:latest], heads, key, node_id="MY")
        # The reopened node continues the same chain and signs over it.
        for n in range(7):
            node.record("test.after", actor="node", role="node", n=n)
        head = node.audit.sign_head()
        assert head is not None and head.tree_size == store.audit_size() == size + 7
        verify_log(store.audit_entries(0, head.tree_size), _heads(node), key, node_id="MY")
        assert store.integrity_check() == []
    finally:
        node.close()
