"""What a sync takes from a peer, on real nodes over real mutual TLS: a first-contact signing key is
pinned only after the artefacts signed under it verify, and downloaded filters are capped in size, one
by one (by the count the manifest declares) and all of one manifest together."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from client.protocol.manifest import SignedManifest, expected_records_size, manifest_hash, sign_manifest
from node import sync
from node.node import Node
from node.sync import FILTER_MAX, filter_size_limit
from tests.fednet import Net
from tests.threestates import NOW, audit_actions, start_three, sync_results


def _serve(node: Node, signed: SignedManifest, filters: dict[tuple[str, int], bytes]) -> None:
    """Make ``node`` serve ``signed`` and ``filters`` as its latest publication (as a hostile node could)."""
    node.store.save_publication((node.store.latest_version() or 0) + 1, signed.to_bytes(), filters, {})


def _oversized(node: Node, size: int) -> tuple[SignedManifest, dict[tuple[str, int], bytes]]:
    """``node``'s next manifest, correctly signed, whose first entry claims 1 indicator for ``size`` bytes."""
    node.publish(now=NOW + 1)
    good = SignedManifest.from_bytes(node.store.latest_manifest() or b"")
    big = bytes(size)
    first = dataclasses.replace(
        good.manifest.entries[0],
        count=1,
        filter_sha256=hashlib.sha256(big).digest(),
        prefix_bits=0,  # a plausible entry of one indicator: only the filter's size is wrong
        records_size=expected_records_size(1, 0),
    )
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


def _entries(net: Net, node_id: str) -> Any:
    return SignedManifest.from_bytes(net.node(node_id).store.latest_manifest() or b"").manifest.entries


def test_a_first_contact_key_is_pinned_only_after_its_artefacts_verify(tmp_path: Path) -> None:
    net = start_three(tmp_path, sync=False)
    try:
        my, th = net.node("MY"), net.node("TH")
        _serve(th, *_oversized(th, 2 * 2**20))
        results = sync_results(net, "MY")
        assert not results["TH"].ok and "more than the" in results["TH"].detail, results["TH"]
        assert my.store.get_meta("peer.TH.signing_key") is None  # nothing verified under it yet
        assert my.store.peer_tree_heads("TH") == [] and my.store.peer_manifest("TH") is None
        assert results["SG"].ok and my.store.get_meta("peer.SG.signing_key") is not None
        th.publish(now=NOW + 2)  # a good manifest again
        assert sync_results(net, "MY")["TH"].ok
        assert my.store.get_meta("peer.TH.signing_key") == th.audit.public_key.hex()
        assert sorted(e["actor"] for e in audit_actions(my, "peer.key_pinned")) == ["SG", "TH"]
    finally:
        net.close()


def test_a_filter_larger_than_its_count_allows_is_refused_and_the_last_copy_kept(tmp_path: Path) -> None:
    net = start_three(tmp_path)
    try:
        my, th = net.node("MY"), net.node("TH")
        kept = my.store.peer_manifest("TH")
        signed, filters = _oversized(th, 3 * 2**20)
        limit = filter_size_limit(1)
        assert limit < 2**13  # a filter sized for the smallest capacity (1,024) at 1e-9, plus its header
        _serve(th, signed, filters)
        result = sync_results(net, "MY")["TH"]
        assert not result.ok and f"more than the {limit} that 1 indicators allow" in result.detail, result
        assert my.store.peer_manifest("TH") == kept
        refused = audit_actions(my, "artefact.refused")
        assert len(refused) == 1 and refused[0]["peer"] == "TH" and str(limit) in refused[0]["reason"]
    finally:
        net.close()


def test_all_the_filters_of_one_manifest_are_capped_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = start_three(tmp_path, sync=False)
    try:
        first = min(len(net.node("TH").filter_bytes(1, e.kind, e.tier)) for e in _entries(net, "TH"))
        monkeypatch.setattr(sync, "MANIFEST_FILTERS_MAX", first)  # room for one filter only
        result = sync_results(net, "MY")["TH"]
        assert not result.ok and f"exceed {first} bytes" in result.detail, result
        monkeypatch.undo()
        assert sync_results(net, "MY")["TH"].ok
    finally:
        net.close()


def test_filter_size_limits() -> None:
    assert filter_size_limit(0) == filter_size_limit(1) == filter_size_limit(1024) < 8192
    bits_per_item = 8 * (filter_size_limit(2**20) - 1024) / 2**20
    assert 43 < bits_per_item < 44  # -ln(1e-9) / ln(2)^2 = 43.1 bits an item of the capacity
    assert filter_size_limit(2**20 + 1) > filter_size_limit(2**20)  # the next capacity: 2^21
    assert filter_size_limit(10**12) == FILTER_MAX == 64 * 2**20
