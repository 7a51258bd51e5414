"""A check reads a peer's manifest and then its filter: a filter replaced between the two reads is
neither used nor cached (the check says STALE), on real nodes over real mutual TLS."""

from __future__ import annotations

from pathlib import Path

from client.protocol.manifest import SignedManifest
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
