"""Manifest transparency: equivocation is caught by gossip, and gaps are chain-checked.

INTEGRATION TESTS on three real nodes (tests/fednet.py). TH is the hostile member: it shows MY one
manifest and SG another of the same version, both validly signed. Gossip carries the signed manifests
each node verified (never a bare hash), so MY, syncing with SG, holds two manifests of one version both
signed by TH: a fork of TH, recorded within two sync rounds. A gossiper cannot frame a member: an item
that does not verify under the member's pinned key is ignored and audited against the gossiper.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client._proto.petanda.v1 import peer_pb2
from client.protocol.auditlog import decode_entry
from client.protocol.errors import ConfigError
from client.protocol.manifest import SignedManifest, manifest_hash, sign_manifest, verify_signed_manifest
from node.node import Node
from node.servicers import PeerServicer
from tests.fednet import Net, start_net

IDS = ["MY", "TH", "SG"]
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()


def entries(node: Node) -> list[dict[str, Any]]:
    return [decode_entry(raw) for raw in node.store.audit_entries(0, node.store.audit_size())]


def forks(node: Node, of: str) -> list[dict[str, Any]]:
    return [e for e in entries(node) if e["action"] == "fork" and e["actor"] == of]


Hook = Any


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Hook]:
    """Servicer methods a test may replace while the servers run: gRPC binds each servicer's methods
    when the server starts, so the wrappers go in first and look the replacement up at each call."""
    installed: dict[str, Hook] = {}
    for name in ("GetManifest", "ExchangeTreeHead", "GetDelta"):
        original = getattr(PeerServicer, name)

        def wrapper(
            self: PeerServicer, request: Any, context: Any, *, _name: str = name, _fn: Any = original
        ) -> Any:
            hook = installed.get(_name)
            return hook(_fn, self, request, context) if hook else _fn(self, request, context)

        monkeypatch.setattr(PeerServicer, name, wrapper)
    return installed


@pytest.fixture
def net(tmp_path: Path, hooks: dict[str, Hook]) -> Iterator[Net]:
    net = start_net(tmp_path / "net", IDS, now=NOW)
    for node_id in IDS:
        csv = tmp_path / f"{node_id}.csv"
        csv.write_text(
            "kind,value,category,first_seen,last_seen,confidence,tlp\n"
            f"domain,{node_id.lower()}-scam.example,phishing,2026-01-01,2026-11-01,70,GREEN\n"
        )
        net.node(node_id).ingest([csv], now=NOW)
    net.sync_all()
    yield net
    net.close()


def _sync(net: Net, node_id: str) -> dict[str, Any]:
    return {r.peer_id: r for r in net.sync(node_id)}


def test_a_member_showing_two_peers_two_manifests_of_one_version_is_caught_by_a_third(
    net: Net, hooks: dict[str, Hook]
) -> None:
    th = net.node("TH")
    net.clock.now += 10
    th.publish(now=net.clock.now)
    honest = th.latest_manifest()
    other = sign_manifest(
        dataclasses.replace(honest.manifest, issued_at=honest.manifest.issued_at + 1), th.signing_key
    )
    assert manifest_hash(other.manifest) != manifest_hash(honest.manifest)

    def equivocate(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        if (
            self.node.id == "TH"
            and self._peer(context) == "SG"
            and request.known_version < other.manifest.version
        ):
            return peer_pb2.GetManifestResponse(
                signed_manifest=other.to_bytes(), signing_public_key=th.audit.public_key
            )
        return original(self, request, context)

    hooks["GetManifest"] = equivocate
    my = net.node("MY")
    # round 1: each of MY and SG accepts the version TH shows it; neither can tell yet
    assert _sync(net, "MY")["TH"].ok and _sync(net, "SG")["TH"].ok
    assert forks(my, "TH") == []
    # round 2: SG's gossip hands MY the other manifest, signed by TH
    _sync(net, "MY")
    (fork,) = forks(my, "TH")
    assert fork["subject"] == "manifest" and f"version {honest.manifest.version}" in fork["reason"]
    assert "from SG" in fork["reason"] and "from TH" in fork["reason"]
    assert forks(my, "SG") == []  # the messenger is not blamed


def test_a_forged_gossip_item_is_ignored_and_audited_against_the_gossiper(
    net: Net, hooks: dict[str, Hook]
) -> None:
    th = net.node("TH")
    honest = th.latest_manifest()
    forged = sign_manifest(
        dataclasses.replace(honest.manifest, issued_at=honest.manifest.issued_at + 1),
        Ed25519PrivateKey.generate(),
    )

    def frame(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        response = original(self, request, context)
        if self.node.id == "SG":
            del response.witnessed_manifests[:]
            response.witnessed_manifests.append(forged.to_bytes())
            response.witnessed_manifests.append(b"not a manifest")
        return response

    hooks["ExchangeTreeHead"] = frame
    my = net.node("MY")
    results = _sync(net, "MY")
    assert all(r.ok for r in results.values())
    assert forks(my, "TH") == []
    refused = [e for e in entries(my) if e["action"] == "gossip.refused"]
    assert refused and {e["actor"] for e in refused} == {"SG"} and "signature" in refused[0]["reason"]


def test_a_gap_of_three_versions_is_chain_checked(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    th, my = net.node("TH"), net.node("MY")
    held = SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"").manifest.version
    for _ in range(4):  # four new versions: MY skips three of them
        net.clock.now += 10
        th.publish(now=net.clock.now)
    latest = th.latest_manifest().manifest.version
    assert latest == held + 4

    # A chain with a link that does not name its predecessor is refused; the last good copy is kept.
    chain = th.manifest_chain(held, latest)
    assert len(chain) == 3
    middle = SignedManifest.from_bytes(chain[1]).manifest
    broken = sign_manifest(dataclasses.replace(middle, previous_hash=bytes(32)), th.signing_key)
    monkeypatch.setattr(th, "manifest_chain", lambda known, upto: [chain[0], broken.to_bytes(), chain[2]])
    result = _sync(net, "MY")["TH"]
    assert not result.ok and "predecessor" in result.detail
    assert SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"").manifest.version == held

    # Without the manifests in between, the gap cannot be checked: refused too.
    monkeypatch.setattr(th, "manifest_chain", lambda known, upto: [])
    result = _sync(net, "MY")["TH"]
    assert not result.ok and "skips from version" in result.detail

    # The real chain passes, and every manifest of it is remembered for later comparison with gossip.
    monkeypatch.undo()
    assert _sync(net, "MY")["TH"].ok
    assert SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"").manifest.version == latest
    for version in range(held + 1, latest + 1):
        assert my.store.get_meta(f"manifest.TH.{version}") is not None
    served = [e for e in entries(th) if e["action"] == "peer.get_manifest" and e["actor"] == "MY"]
    assert (
        served[-1]["chain"] == 3
        and served[-1]["manifest_hash"] == manifest_hash(th.latest_manifest().manifest).hex()
    )
    pulled = [
        e for e in entries(my) if e["action"] == "sync.pull" and e.get("peer") == "TH" and e["result"] == "ok"
    ]
    assert pulled[-1]["manifest_hash"] == served[-1]["manifest_hash"]
    published = [e for e in entries(th) if e["action"] == "publish"]
    assert published[-1]["manifest_hash"] == served[-1]["manifest_hash"]


def test_a_manifest_fork_is_recorded_once_with_its_evidence(net: Net, hooks: dict[str, Hook]) -> None:
    my, th = net.node("MY"), net.node("TH")
    signed = SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"")
    other = sign_manifest(
        dataclasses.replace(signed.manifest, issued_at=signed.manifest.issued_at + 5), th.signing_key
    )
    assert not my.note_manifest("TH", signed, via="TH", now=NOW)
    assert my.note_manifest("TH", other, via="SG", now=NOW)
    assert my.note_manifest("TH", other, via="SG", now=NOW + 60)  # the same evidence again: no new entry
    assert len(forks(my, "TH")) == 1
    kept = json.loads(my.store.get_meta(f"manifest.TH.{signed.manifest.version}") or "{}")
    evidence = SignedManifest.from_bytes(bytes.fromhex(kept["other"]))
    verify_signed_manifest(evidence, th.audit.public_key, expected_node="TH")
    assert manifest_hash(evidence.manifest).hex() == kept["other_hash"] != kept["hash"]


def test_a_signing_key_rollover_announced_under_the_old_key_is_followed(net: Net) -> None:
    my, th = net.node("MY"), net.node("TH")
    old = th.audit.public_key
    assert my.peer_signing_key("TH") == old
    net.clock.now += 10
    _old, new = th.roll_signing_key(now=net.clock.now)
    assert new != old and th.audit.public_key == new
    assert (th.dir / "signing.key").stat().st_mode & 0o077 == 0
    results = _sync(net, "MY")
    assert results["TH"].ok, results["TH"]
    assert my.peer_signing_key("TH") == new
    rolled = [e for e in entries(my) if e["action"] == "peer.key_rolled"]
    assert [(e["actor"], e["old"], e["new"]) for e in rolled] == [("TH", old.hex(), new.hex())]
    assert forks(my, "TH") == []
    assert _sync(net, "MY")["TH"].ok  # tree heads now verify under the new key
    assert any(e["action"] == "signing_key.rolled" for e in entries(th))


def test_a_key_change_nobody_announced_is_refused(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    from node import keys

    my, th = net.node("MY"), net.node("TH")
    # An honest node refuses to sign with a key nothing announced (test below); a hostile one runs its
    # own code and does it anyway:
    monkeypatch.setattr(th, "_follow_signing_key", lambda latest=None: None)
    old = th.audit.public_key
    stolen = Ed25519PrivateKey.generate()  # a new key swapped in without the announcement
    keys.replace_signing_key(th.dir, stolen, now=net.clock.now)
    th.signing_key = stolen
    th.audit.use_key(stolen)
    net.clock.now += 10
    th.publish(now=net.clock.now)
    result = _sync(net, "MY")["TH"]
    assert not result.ok and "bad signature" in result.detail  # verified under the pinned key, as always
    assert my.peer_signing_key("TH") == old


def test_an_honest_node_never_signs_with_a_key_nothing_announced(net: Net) -> None:
    from node import keys
    from node.node import Node as NodeClass

    th = net.node("TH")
    keys.replace_signing_key(th.dir, Ed25519PrivateKey.generate(), now=net.clock.now)  # swapped on disk
    th.publish(now=net.clock.now + 10)  # the running node goes on with the key in force, in memory
    restarted = NodeClass(th.config, th.store, clock=net.clock)  # a restart loads the swapped key
    with pytest.raises(ConfigError, match="puts in force"):
        restarted.publish(now=net.clock.now + 20)


def test_a_rollover_made_by_another_process_is_followed_by_the_serving_node(net: Net) -> None:
    from node.node import Node as NodeClass

    th, my = net.node("TH"), net.node("MY")
    other = NodeClass(th.config, th.store, clock=net.clock)  # `petanda-node roll-signing-key` beside serve
    net.clock.now += 10
    _old, new = other.roll_signing_key(now=net.clock.now)
    assert th.audit.public_key != new  # the serving node still holds the old key in memory...
    results = _sync(net, "MY")  # ...and follows the rollover as soon as it serves its manifest
    assert results["TH"].ok, results["TH"]
    assert th.audit.public_key == new and my.peer_signing_key("TH") == new
    net.clock.now += 10
    th.publish(now=net.clock.now)  # signed with the new key
    assert _sync(net, "MY")["TH"].ok


def test_a_failure_in_the_middle_of_a_rollover_sync_does_not_wedge_the_peer(
    net: Net, hooks: dict[str, Hook]
) -> None:
    th, my = net.node("TH"), net.node("MY")
    old = th.audit.public_key
    net.clock.now += 10
    _th_csv_more(net)
    _old, new = th.roll_signing_key(now=net.clock.now)
    failures = []

    def fail_once(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        if not failures:
            failures.append(1)
            context.abort(grpc.StatusCode.UNAVAILABLE, "a transient failure")
        return original(self, request, context)

    hooks["GetDelta"] = fail_once
    first = _sync(net, "MY")["TH"]
    assert not first.ok and my.peer_signing_key("TH") == old  # nothing pinned before the artefacts
    second = _sync(net, "MY")["TH"]
    assert second.ok, second
    assert my.peer_signing_key("TH") == new


def _th_csv_more(net: Net) -> None:
    path = net.federation.root / "th-more.csv"
    path.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp\n"
        "domain,th-second.example,phishing,2026-01-01,2026-11-01,70,GREEN\n"
    )
    net.node("TH").ingest([path], now=net.clock.now)
