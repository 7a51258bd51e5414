"""A check reads a peer's manifest and then its filter and records: artefacts replaced between the
reads are neither used nor cached (the check says STALE), on real nodes over real mutual TLS."""

from __future__ import annotations

from pathlib import Path

from client.protocol.manifest import SignedManifest
from client.protocol.model import PeerStatus
from node.check import Checker
from tests.threestates import start_three


def test_a_filter_replaced_during_a_check_is_not_used_or_cached(tmp_path: Path) -> None:
    net = start_three(tmp_path)
    checker = Checker(net.node("MY"), net.running["MY"].links, clock=net.clock)
    try:
        my = net.node("MY")
        signed = SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"")
        entry = signed.manifest.entries[0]
        good = my.store.peer_filter("TH", entry.kind, entry.tier) or b""
        other = bytearray(good)
        other[-1] ^= 1
        keys = [(e.kind, e.tier) for e in signed.manifest.entries]
        filters = {k: my.store.peer_filter("TH", *k) or b"" for k in keys}
        records = {k: my.store.peer_records("TH", *k) or b"" for k in keys}
        my.store.save_peer_state(
            "TH", signed.to_bytes(), {**filters, (entry.kind, entry.tier): bytes(other)}, records
        )
        view = checker.view("TH")
        assert view.problem == "artefacts changed during the check" and view.filters.get(keys[0]) is None
        assert (entry.kind, entry.tier) not in checker._views["TH"][2]  # nothing of it cached
        outcome = checker.check([(entry.kind, "x")], deadline_s=5).outcomes[0]
        th = next(o for o in outcome if o.peer_id == "TH")
        assert (th.status, th.detail) == (PeerStatus.STALE, "artefacts changed during the check")
        assert (entry.kind, entry.tier) not in checker._views["TH"][2]
        my.store.save_peer_state("TH", signed.to_bytes(), filters, records)
        view = checker.view("TH")
        assert view.problem == "" and (entry.kind, entry.tier) in view.filters
        assert (entry.kind, entry.tier) in checker._views["TH"][2]
    finally:
        checker.close()
        net.close()
