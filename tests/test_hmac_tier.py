"""The HMAC tier end to end: one federation secret, its fingerprint in every manifest, a mismatch answered
STALE with its reason (never a silent "no match"), kinds switched to the HMAC tier and back without losing
a match, and the secret shared and rotated with ``petanda-node hmac``.

Real nodes (``tests/fednet.py``: gRPC over mutual TLS, SQLite stores, configs written by
``node.testbed.write_config`` with ``hmac.kinds`` and its acknowledgement) unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from client._proto.petanda.v1 import investigator_pb2
from client.protocol.auditlog import decode_entry
from client.protocol.digest import derive_epoch_key, hmac_fingerprint
from client.protocol.errors import ConfigError
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import NO_HMAC, SignedManifest
from node import hmactier
from node.cli import main
from node.config import load_config
from node.demodata import write_csv
from node.keys import FEDERATION_SECRET_FILE, format_fingerprint, load_federation_secret, secret_fingerprint
from node.node import Node
from node.publish import publish
from node.store.base import RecordBatch, Store
from node.testbed import build_federation, write_config
from tests.fednet import Net, start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
S = investigator_pb2
STATUS = {S.PEER_STATUS_MATCH: "MATCH", S.PEER_STATUS_NO_MATCH: "NO_MATCH",
          S.PEER_STATUS_UNAVAILABLE: "UNAVAILABLE", S.PEER_STATUS_RATE_LIMITED: "RATE_LIMITED",
          S.PEER_STATUS_STALE: "STALE"}  # fmt: skip
TIER = {TIER_OPRF: "oprf", TIER_HMAC: "hmac"}

URLS = [f"https://pay-{n}.scam.example/claim" for n in range(4)]


def _row(kind: str, value: str) -> dict[str, str]:
    return {
        "kind": kind,
        "value": value,
        "region": "",
        "category": "phishing",
        "first_seen": "2026-11-01",
        "last_seen": "2026-11-20",
        "confidence": "80",
        "tlp": "GREEN",
        "reports": "2",
    }


def _ingest(net: Net, node_id: str, rows: Sequence[tuple[str, str]], tmp: Path, name: str) -> None:
    path = tmp / f"{node_id}-{name}.csv"
    write_csv(path, [_row(k, v) for k, v in rows])
    report = net.node(node_id).ingest([path], now=net.clock.now)
    assert report.rejections == [] and report.stored == len(rows)


def _start(tmp_path: Path, ids: Sequence[str], hmac_kinds: Sequence[str] = ()) -> Net:
    """A running federation in which every member has published (so every sync succeeds)."""
    net = start_net(tmp_path / "net", ids, now=NOW, hmac_kinds=hmac_kinds)
    for node_id in ids:
        net.node(node_id).publish(now=NOW)
    return net


def _set_kinds(net: Net, kinds: Sequence[str]) -> None:
    """Rewrite every member's config with ``hmac.kinds`` (and its acknowledgement) and reload it."""
    members = net.federation.members
    for node_id, member in members.items():
        write_config(member, members.values(), hmac_kinds=kinds)
        net.node(node_id).config = load_config(member.config)


def _answers(
    net: Net, asker: str, peer: str, values: Sequence[str], kind: str = "url"
) -> list[tuple[str, str, str]]:
    """(status, tier, detail) of ``peer`` for each value checked by ``asker``."""
    out = []
    for result in net.check(asker, [(kind, v) for v in values]).results:
        [answer] = [p for p in result.peers if p.peer_id == peer]
        tier = TIER.get(answer.metadata.tier, "") if answer.status == S.PEER_STATUS_MATCH else ""
        out.append((STATUS[answer.status], tier, answer.detail))
    return out


def _evaluations(net: Net, node_id: str, since: int) -> int:
    store = net.node(node_id).store
    return sum(b'"peer.evaluate_oprf"' in e for e in store.audit_entries(since, store.audit_size()))


def _manifest(net: Net, asker: str, peer: str) -> Any:
    return SignedManifest.from_bytes(net.node(asker).store.peer_manifest(peer) or b"").manifest


def _tiers(manifest: Any, kind: str) -> set[int]:
    return {e.tier for e in manifest.entries if e.kind == kind}


class _WithoutOprf:
    """A store whose publication leaves out the OPRF digests of one kind: what a member publishes when it
    offers that kind on the HMAC tier only (the protocol allows it; this implementation always publishes
    the OPRF tier too). Everything else is the real store."""

    def __init__(self, store: Store, kind: str) -> None:
        self._store, self._kind = store, kind

    def iter_records(self, epoch: int, kind: str, tier: int, **kw: Any) -> Iterator[RecordBatch]:
        if (kind, tier) == (self._kind, TIER_OPRF):
            return iter(())
        return self._store.iter_records(epoch, kind, tier, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _publish_hmac_only(node: Node, kind: str, now: float) -> None:
    """Publish ``kind`` on the HMAC tier only, signed with the node's own key (see :class:`_WithoutOprf`)."""
    hmactier.update_digests(node, now=now)
    publish(
        _WithoutOprf(node.store, kind),  # type: ignore[arg-type]
        node_id=node.id,
        epoch=node.epoch,
        oprf_public_key=node.oprf_key(node.epoch).pk,
        signing_key=node.signing_key,
        now=int(now),
        false_positive_rate=node.config.publish.false_positive_rate,
        max_prefix_bits=node.config.publish.bucket_prefix_bits,
        validity_s=node.config.publish.manifest_validity_hours * 3600,
        hmac_key=node.hmac_key(node.epoch),
        hmac_kinds=node.config.hmac.kinds,
    )


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- switching a kind's tier -----------------------------------------------------------------------------


def test_switching_a_kind_to_the_hmac_tier_and_back_keeps_every_match(tmp_path: Path) -> None:
    net = _start(tmp_path, ["MY", "TH"])
    try:
        _ingest(net, "TH", [("url", URLS[0]), ("url", URLS[1])], tmp_path, "before")
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS[:2]) == [("MATCH", "oprf", "")] * 2

        # url on the HMAC tier: the indicators stored before the switch get their HMAC digests before the
        # next publication (here the one after an ingest of a new URL), so the HMAC-tier filter holds them.
        net.clock.now += 60
        _set_kinds(net, ["url"])
        _ingest(net, "TH", [("url", URLS[2])], tmp_path, "after")
        net.sync_all()
        manifest = _manifest(net, "MY", "TH")
        assert _tiers(manifest, "url") == {TIER_OPRF, TIER_HMAC}
        assert next(e.count for e in manifest.entries if e.kind == "url" and e.tier == TIER_HMAC) == 3
        before = net.node("TH").store.audit_size()
        assert _answers(net, "MY", "TH", URLS[:3]) == [("MATCH", "hmac", "")] * 3
        assert _evaluations(net, "TH", before) == 0  # tested offline

        # ... and back: published on the OPRF tier only, nothing lost.
        net.clock.now += 60
        _set_kinds(net, [])
        net.node("TH").publish(now=net.clock.now)
        _ingest(net, "TH", [("url", URLS[3])], tmp_path, "off")  # stored with no HMAC digest
        net.sync_all()
        assert _tiers(_manifest(net, "MY", "TH"), "url") == {TIER_OPRF}
        assert _answers(net, "MY", "TH", URLS) == [("MATCH", "oprf", "")] * 4

        # Back on the HMAC tier once more: the URL stored while it was off is digested too.
        net.clock.now += 60
        _set_kinds(net, ["url"])
        net.node("TH").publish(now=net.clock.now)
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS) == [("MATCH", "hmac", "")] * 4
        assert _answers(net, "MY", "TH", ["https://never.scam.example/x"]) == [("NO_MATCH", "", "")]
    finally:
        net.close()


def _runs(node: Node) -> list[dict[str, Any]]:
    entries = [decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size())]
    return [e for e in entries if e["action"] == "hmac.digests"]


def test_digests_are_computed_once_per_change(tmp_path: Path) -> None:
    net = start_net(tmp_path / "net", ["MY"], now=NOW, hmac_kinds=["url"])
    try:
        _ingest(net, "MY", [("url", URLS[0])], tmp_path, "a")
        node = net.node("MY")
        for step in range(3):
            node.publish(now=NOW + step)
        runs = _runs(node)
        assert len(runs) == 1 and runs[0]["kinds"] == "url" and runs[0]["epoch"] == 1
        assert runs[0]["secret_fingerprint"] == secret_fingerprint(node.federation_secret()).hex()
        # The first run cannot know the secret the ingest's digests were computed under: it computes them
        # again. A rotation digests the new epoch at once; the run after it only records the new state.
        node.rotate(now=NOW + 10)
        assert [(r["epoch"], r["computed"], r["dropped"]) for r in _runs(node)] == [(1, 1, 1), (2, 0, 0)]
        manifest = node.latest_manifest().manifest
        assert manifest.hmac_fingerprint == hmac_fingerprint(derive_epoch_key(node.federation_secret(), 2))
    finally:
        net.close()


def test_the_hmac_tier_without_a_secret_is_refused_with_the_remedy(tmp_path: Path) -> None:
    net = start_net(tmp_path / "net", ["MY"], now=NOW, without_secret=["MY"])
    try:
        node = net.node("MY")
        secret = net.federation.members["MY"].dir / FEDERATION_SECRET_FILE
        node.publish(now=NOW)  # no HMAC kind, no secret: published, with no fingerprint
        assert node.latest_manifest().manifest.hmac_fingerprint == NO_HMAC
        _set_kinds(net, ["url"])
        with pytest.raises(ConfigError, match=r"holds no federation secret.*hmac import") as error:
            _ingest(net, "MY", [("url", URLS[0])], tmp_path, "a")
        assert error.value.path == str(secret)
    finally:
        net.close()


# --- a secret mismatch -----------------------------------------------------------------------------------


def test_a_secret_mismatch_is_stale_with_its_reason_until_the_secret_is_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = _start(tmp_path, ["MY", "TH"], hmac_kinds=["url"])
    members = net.federation.members
    th, my = net.node("TH"), net.node("MY")
    try:
        _ingest(net, "TH", [("url", URLS[0])], tmp_path, "a")
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS[:1]) == [("MATCH", "hmac", "")]
        assert {p["id"]: p["state"] for p in hmactier.fingerprints(my)["peers"]} == {"TH": "same"}

        # TH takes another secret while serving (it reads the replaced file at its next use).
        other = tmp_path / "other.key"
        assert _cli(capsys, "hmac", "generate", "--out", str(other))[0] == 0
        code, out, _ = _cli(
            capsys,
            "hmac",
            "import",
            "--config",
            str(members["TH"].config),
            "--replace",
            str(other),
            "--no-publish",
        )
        assert code == 0 and "replaces" in out
        net.clock.now += 60
        th.publish(now=net.clock.now)
        net.sync_all()
        manifest = _manifest(net, "MY", "TH")
        assert manifest.hmac_fingerprint == hmac_fingerprint(
            derive_epoch_key(load_federation_secret(other), 1)
        )
        assert {p["id"]: p["state"] for p in hmactier.fingerprints(my)["peers"]} == {"TH": "different"}

        # url on both tiers: MY's check falls back to TH's OPRF tier, online, and still matches.
        before = th.store.audit_size()
        assert _answers(net, "MY", "TH", URLS[:2]) == [("MATCH", "oprf", ""), ("NO_MATCH", "", "")]
        assert _evaluations(net, "TH", before) == 1

        # url on the HMAC tier only: STALE with the reason, never a silent "no match".
        net.clock.now += 60
        _publish_hmac_only(th, "url", net.clock.now)
        net.sync_all()
        assert _tiers(_manifest(net, "MY", "TH"), "url") == {TIER_HMAC}
        for status, _tier, detail in _answers(net, "MY", "TH", URLS[:2]):
            assert status == "STALE" and "federation secret mismatch" in detail

        # MY exports its secret, TH imports it; after TH's republication the mismatch is gone.
        shared = tmp_path / "shared.key"
        code, exported, _ = _cli(
            capsys, "hmac", "export", "--config", str(members["MY"].config), "--out", str(shared)
        )
        assert code == 0 and stat.S_IMODE(shared.stat().st_mode) == 0o600
        code, imported, _ = _cli(
            capsys,
            "hmac",
            "import",
            "--config",
            str(members["TH"].config),
            "--replace",
            str(shared),
            "--no-publish",
        )
        assert code == 0
        fingerprint = format_fingerprint(secret_fingerprint(my.federation_secret()))
        assert fingerprint in exported and fingerprint in imported  # what the two operators read out
        net.clock.now += 60
        _publish_hmac_only(th, "url", net.clock.now)
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS[:2]) == [("MATCH", "hmac", ""), ("NO_MATCH", "", "")]
        net.clock.now += 60
        th.publish(now=net.clock.now)
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS[:1]) == [("MATCH", "hmac", "")]
        assert {p["id"]: p["state"] for p in hmactier.fingerprints(my)["peers"]} == {"TH": "same"}
    finally:
        net.close()


def test_an_asker_without_a_secret_is_stale_on_hmac_only_kinds(tmp_path: Path) -> None:
    net = start_net(tmp_path / "net", ["MY", "TH"], now=NOW, without_secret=["MY"])
    try:
        members = net.federation.members  # TH puts url on the HMAC tier; MY, holding no secret, cannot
        write_config(members["TH"], members.values(), hmac_kinds=["url"])
        net.node("TH").config = load_config(members["TH"].config)
        for node_id in ("MY", "TH"):
            net.node(node_id).publish(now=NOW)
        _ingest(net, "TH", [("url", URLS[0])], tmp_path, "a")
        net.sync_all()
        assert _answers(net, "MY", "TH", URLS[:1]) == [("MATCH", "oprf", "")]  # both tiers: OPRF
        net.clock.now += 60
        _publish_hmac_only(net.node("TH"), "url", net.clock.now)
        net.sync_all()
        [(status, _tier, detail)] = _answers(net, "MY", "TH", URLS[:1])
        assert status == "STALE" and "holds no federation HMAC key" in detail
    finally:
        net.close()


# --- the operator's commands -----------------------------------------------------------------------------


def test_init_says_how_to_share_the_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "init", "--id", "MY", "--dir", str(tmp_path / "my"))
    assert code == 0
    fingerprint = format_fingerprint(
        secret_fingerprint(load_federation_secret(tmp_path / "my" / FEDERATION_SECRET_FILE))
    )
    assert f"a NEW random one, fingerprint {fingerprint}" in out
    assert "ONE federation secret" in out and "hmac export" in out and "hmac import" in out
    assert "--replace FILE" in out and "hmac fingerprint" in out

    # Given the federation's secret, init copies it and prints its fingerprint to read back.
    code, out, _ = _cli(
        capsys,
        "init", "--id", "TH", "--dir", str(tmp_path / "th"),
        "--federation-secret", str(tmp_path / "my" / FEDERATION_SECRET_FILE),
    )  # fmt: skip
    assert (
        code == 0
        and f"copied from {tmp_path / 'my' / FEDERATION_SECRET_FILE}, fingerprint {fingerprint}" in out
    )


def test_export_import_and_fingerprint_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    federation = build_federation(
        tmp_path / "fed", ["MY", "TH", "SG"], ports={"MY": 1, "TH": 2, "SG": 3}, hmac_kinds=["url"]
    )
    my, th, sg = (federation.members[i] for i in ("MY", "TH", "SG"))
    th_secret = th.dir / FEDERATION_SECRET_FILE
    th_secret.unlink()  # before TH's first start: TH holds no secret

    def held(config: Path) -> str:
        """The fingerprint of the secret a node's store holds (``hmac fingerprint --json``)."""
        info = json.loads(_cli(capsys, "hmac", "fingerprint", "--config", str(config), "--json")[1])
        return str(info["secret_fingerprint"])

    fresh = tmp_path / "fresh.key"
    assert _cli(capsys, "hmac", "generate", "--out", str(fresh))[0] == 0
    assert _cli(capsys, "hmac", "import", "--config", str(th.config), str(fresh), "--no-publish")[0] == 0

    out_file = tmp_path / "my.key"
    code, out, _ = _cli(capsys, "hmac", "export", "--config", str(my.config), "--out", str(out_file))
    fingerprint = format_fingerprint(
        secret_fingerprint(load_federation_secret(my.dir / FEDERATION_SECRET_FILE))
    )
    assert code == 0 and fingerprint in out and stat.S_IMODE(out_file.stat().st_mode) == 0o600
    code, _, err = _cli(capsys, "hmac", "export", "--config", str(my.config), "--out", str(out_file))
    assert code == 2 and "refusing to overwrite" in err

    # A file group or others may read is refused; so is replacing another secret without --replace.
    os.chmod(out_file, 0o640)
    code, _, err = _cli(capsys, "hmac", "import", "--config", str(th.config), str(out_file))
    assert code == 2 and "too open" in err
    os.chmod(out_file, 0o600)
    code, _, err = _cli(capsys, "hmac", "import", "--config", str(th.config), str(out_file))
    assert code == 2 and "--replace" in err and fingerprint in err
    assert held(th.config) == secret_fingerprint(load_federation_secret(fresh)).hex()

    # Imported with --replace, it publishes at once (TH's HMAC tier is on): the manifest signs it.
    code, out, _ = _cli(capsys, "hmac", "import", "--config", str(th.config), "--replace", str(out_file))
    assert code == 0 and fingerprint in out and "published version 1" in out and "generation 2" in out
    assert held(th.config) == secret_fingerprint(out_file.read_bytes()).hex()
    assert not th_secret.exists()  # the secret is in TH's store, wrapped under its KEK, not in a file
    code, out, _ = _cli(capsys, "hmac", "import", "--config", str(th.config), "--replace", str(out_file))
    assert code == 0 and "already" in out

    code, out, _ = _cli(capsys, "hmac", "fingerprint", "--config", str(th.config))
    assert code == 0 and f"fingerprint {fingerprint}" in out and "peer MY: never synced" in out
    code, out, _ = _cli(capsys, "hmac", "fingerprint", "--config", str(th.config), "--json")
    info = json.loads(out)
    epoch_key = derive_epoch_key(out_file.read_bytes(), 1)
    assert info["epoch_key_fingerprint"] == info["manifest_fingerprint"] == hmac_fingerprint(epoch_key).hex()
    assert info["kinds"] == ["url"] and info["held"] is True and info["secret_generation"] == 2

    # No secret at all (SG's file removed before its first start): fingerprint says so and exits 1.
    (sg.dir / FEDERATION_SECRET_FILE).unlink()
    code, out, _ = _cli(capsys, "hmac", "fingerprint", "--config", str(sg.config))
    assert code == 1 and "NONE held" in out
