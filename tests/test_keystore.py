"""The OPRF keys and the federation secret in the store, wrapped under a key-encryption key each replica
holds (``node.keystore``).

INTEGRATION TESTS on both backends (``store_url``: a SQLite file, and a fresh database on a real
PostgreSQL): two replicas of one node, each with its own copy of the node directory and real gRPC
servers over mutual TLS, share one store; one rotates, and the other answers ``EvaluateOprf`` in the new
epoch at once. A replica with another KEK is refused before it writes anything, with an error naming its
KEK file and both fingerprints; a wrapped row that was altered, or moved to another epoch, is refused.
Seed files of a node made before keys were in the store are wrapped in at its first start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import peer_pb2, peer_pb2_grpc
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.digest import oprf_input
from client.protocol.errors import ConfigError
from client.protocol.kinds import TIER_OPRF, kind_code
from client.protocol.manifest import SignedManifest
from client.transport.tls import secure_channel
from node import keys
from node.cli import main
from node.config import load_config
from node.keystore import (
    OPRF,
    FileKek,
    UnwrapError,
    kek_fingerprint,
    wrapping_ad,
)
from node.node import Node, oprf_key_info
from node.server import RunningServer, start_server
from node.store import open_store
from node.testbed import Member, build_federation, free_ports, write_config
from tests.keyrows import move_wrapped_key, raw_sql, tamper_wrapped_key
from tests.together import at_once

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
REPO = Path(__file__).resolve().parent.parent
HELD = "+60123456789"


# --- the wrapping itself -------------------------------------------------------------------------------


def _kek(tmp_path: Path, name: str = "kek.key") -> FileKek:
    path = tmp_path / name
    keys.init_kek(path)
    return FileKek(path)


def test_a_wrapped_key_unwraps_only_under_its_kek_node_purpose_and_epoch(tmp_path: Path) -> None:
    kek, other = _kek(tmp_path), _kek(tmp_path, "other.key")
    seed = secrets.token_bytes(32)
    blob = kek.wrap(seed, wrapping_ad("MY", OPRF, 2))
    assert len(blob) == 61 and blob[0] == 1 and seed not in blob
    assert kek.unwrap(blob, wrapping_ad("MY", OPRF, 2)) == seed
    assert kek.wrap(seed, wrapping_ad("MY", OPRF, 2)) != blob  # a fresh nonce each time
    for ad in (wrapping_ad("MY", OPRF, 3), wrapping_ad("TH", OPRF, 2), wrapping_ad("MY", "hmac", 2)):
        with pytest.raises(UnwrapError, match="does not verify"):
            kek.unwrap(blob, ad)
    with pytest.raises(UnwrapError, match="does not verify"):
        other.unwrap(blob, wrapping_ad("MY", OPRF, 2))
    for bad in (blob[:-1] + bytes([blob[-1] ^ 0x80]), blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]):
        with pytest.raises(UnwrapError, match="does not verify"):
            kek.unwrap(bad, wrapping_ad("MY", OPRF, 2))
    for bad in (b"", b"\x02" + blob[1:], blob[:28]):
        with pytest.raises(UnwrapError, match="not a wrapped key of format 1"):
            kek.unwrap(bad, wrapping_ad("MY", OPRF, 2))
    assert kek.fingerprint() == kek_fingerprint((tmp_path / "kek.key").read_bytes())
    assert kek.fingerprint() != other.fingerprint()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_kek_file_others_may_read_or_of_another_length_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.key"
    keys.init_kek(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=rf"kek\.key: permissions {mode:04o} are too open"):
        FileKek(path)
    short = tmp_path / "short.key"
    keys.write_private_file(short, bytes(31))
    with pytest.raises(ConfigError, match=r"short\.key: a seed file holds exactly 32 bytes, this one 31"):
        FileKek(short)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keys.init_kek(short)


# --- one node, both backends -----------------------------------------------------------------------------


@dataclasses.dataclass
class Site:
    """MY's files, its store's URL, TH (a peer that only calls), and copies of MY's node directory."""

    my: Member
    th: Member
    url: str
    root: Path

    def replica(self, name: str) -> Member:
        """A copy of MY's node directory and config at ``root/name`` (what an operator gives a replica)."""
        copy = self.root / name
        if not copy.exists():
            shutil.copytree(self.my.dir, copy, ignore=shutil.ignore_patterns("petanda.db*"))
        member = dataclasses.replace(self.my, dir=copy, config=copy / "node.toml")
        write_config(member, [member, self.th], store_url=self.url)
        return member

    def open(self, member: Member | None = None) -> Node:
        return Node.open(load_config((member or self.my).config), clock=lambda: NOW)


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Site:
    url = store_url if store_url.startswith("postgresql://") else f"sqlite:///{store_url}"
    federation = build_federation(tmp_path / "fed", ["MY", "TH"])
    my, th = federation.members["MY"], federation.members["TH"]
    th.port = free_ports(1)[0]  # TH only calls: MY needs it configured as a peer, not reachable
    write_config(my, [my, th], store_url=url)
    return Site(my, th, url, tmp_path)


def _snapshot(url: str) -> dict[str, Any]:
    """Everything a refused start must leave as it was: meta, wrapped keys, the audit log's size."""
    with raw_sql(url) as sql:
        return {
            "meta": sorted(sql("SELECT key, value FROM meta")),
            "keys": sorted(
                (p, e, k, bytes(b))
                for p, e, k, b in sql("SELECT purpose, epoch, kek, blob FROM wrapped_keys")
            ),
            "audit": sql("SELECT count(*) FROM audit_log"),
        }


def _entries(node: Node, action: str, purpose: str | None = None) -> list[dict[str, Any]]:
    entries = [decode_entry(e) for e in node.store.audit_entries(0, node.store.audit_size())]
    return [e for e in entries if e["action"] == action and purpose in (None, e.get("purpose"))]


def test_a_new_node_keeps_its_oprf_key_in_the_store_and_none_in_files(site: Site) -> None:
    node = site.open()
    try:
        assert node.epoch == 1 and node.keystore.epochs() == [1]
        row = node.store.wrapped_key(OPRF, 1)
        kek = FileKek(site.my.dir / "kek.key")
        assert row is not None and row.kek == kek.fingerprint().hex() and len(row.blob) == 61
        seed = kek.unwrap(row.blob, wrapping_ad("MY", OPRF, 1))
        assert node.oprf_key(1) == oprf.derive_key_pair(seed, oprf_key_info("MY", 1), oprf.MODE_VOPRF)
        assert not (site.my.dir / "oprf").exists()
        [stored] = _entries(node, "key.stored", OPRF)
        assert {k: stored[k] for k in ("purpose", "epoch", "kek", "source")} == {
            "purpose": "oprf", "epoch": 1, "kek": row.kek, "source": "new",
        }  # fmt: skip
    finally:
        node.close()
    again = site.open()  # a second start adds nothing
    try:
        assert again.keystore.epochs() == [1] and len(_entries(again, "key.stored", OPRF)) == 1
    finally:
        again.close()


def test_seed_files_of_an_older_node_are_wrapped_in_at_its_first_start_and_left_in_place(site: Site) -> None:
    # A node made before keys were in the store: seed files, no KEK, a store at epoch 2.
    kek_file = site.my.dir / "kek.key"
    kek_file.unlink()
    seeds = {epoch: secrets.token_bytes(32) for epoch in (1, 2)}
    for epoch, seed in seeds.items():
        keys.write_private_file(keys.oprf_seed_path(site.my.dir, epoch), seed)
    with open_store(site.url) as store:
        store.set_meta("oprf.epoch", "2")

    node = site.open()
    try:
        assert node.keys_imported == [1, 2] and node.keystore.epochs() == [1, 2] and node.epoch == 2
        assert (kek_file.stat().st_mode & 0o777) == 0o600  # made at this first start
        for epoch, seed in seeds.items():
            assert node.oprf_key(epoch) == oprf.derive_key_pair(
                seed, oprf_key_info("MY", epoch), oprf.MODE_VOPRF
            )
        assert [e["source"] for e in _entries(node, "key.stored", OPRF)] == [
            "file epoch-0001.key",
            "file epoch-0002.key",
        ]
        node.rotate(now=NOW)
        assert node.keystore.epochs() == [1, 2, 3] and keys.list_epochs(site.my.dir) == [
            1,
            2,
        ]  # no file for 3
    finally:
        node.close()
    assert [keys.load_oprf_seed(site.my.dir, e) for e in (1, 2)] == [seeds[1], seeds[2]]  # left in place

    # A file that disagrees with the store is refused, naming it.
    os.remove(keys.oprf_seed_path(site.my.dir, 2))
    keys.write_private_file(keys.oprf_seed_path(site.my.dir, 2), secrets.token_bytes(32))
    before = _snapshot(site.url)
    with pytest.raises(ConfigError, match=r"epoch-0002\.key: holds another OPRF seed than the store does"):
        site.open()
    assert _snapshot(site.url) == before


def test_a_replica_with_another_kek_is_refused_naming_its_file_and_changes_nothing(site: Site) -> None:
    site.open().close()
    other = site.replica("MY-b")
    other_kek = other.dir / "kek.key"
    os.remove(other_kek)
    keys.init_kek(other_kek)
    before = _snapshot(site.url)
    ours = keys.format_fingerprint(kek_fingerprint(other_kek.read_bytes()))
    held = keys.format_fingerprint(kek_fingerprint((site.my.dir / "kek.key").read_bytes()))
    with pytest.raises(ConfigError) as info:
        site.open(other)
    message = str(info.value)
    assert message.startswith(f"{other_kek}: this replica's KEK (fingerprint {ours})")
    assert f"wrapped under (fingerprint {held})" in message and "nothing was changed" in message
    assert _snapshot(site.url) == before

    # Without a KEK file, a store whose keys are wrapped says which KEK to copy there.
    os.remove(other_kek)
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(other_kek))}: no KEK file, .* fingerprint {held}: copy"
    ):
        site.open(other)
    assert not other_kek.exists() and _snapshot(site.url) == before


def test_an_altered_or_moved_wrapped_key_is_refused(site: Site) -> None:
    node = site.open()
    try:
        node.rotate(now=NOW)
        node.rotate(now=NOW)
    finally:
        node.close()
    move_wrapped_key(site.url, 2, 3)  # epoch 2's row, bytes intact, put where epoch 3's was
    with pytest.raises(UnwrapError, match="oprf key of epoch 3 of MY does not unwrap under the KEK file"):
        site.open()
    tamper_wrapped_key(site.url, 1)
    with open_store(site.url) as store:
        assert store.wrapped_key_epochs(OPRF) == [1, 3]

    # The schema refuses to change a row in place.
    with raw_sql(site.url) as sql, pytest.raises(Exception, match="a wrapped key is never changed"):
        sql("UPDATE wrapped_keys SET epoch = 4 WHERE epoch = 3")


def test_an_altered_federation_secret_row_is_refused(site: Site) -> None:
    site.open().close()
    tamper_wrapped_key(site.url, 1, purpose="hmac")
    before = _snapshot(site.url)
    with pytest.raises(UnwrapError, match="hmac secret generation 1 of MY does not unwrap under the KEK"):
        site.open()
    assert _snapshot(site.url) == before


def test_replicas_rotating_from_one_epoch_at_once_make_exactly_one_epoch(site: Site) -> None:
    replicas = [site.open(), site.open(site.replica("MY-b"))]
    try:
        assert at_once([lambda node=node: node.rotate(now=NOW, from_epoch=1) for node in replicas]) == [2, 2]
        assert [node.epoch for node in replicas] == [2, 2] and replicas[0].keystore.epochs() == [1, 2]
        assert len(_entries(replicas[0], "rotate")) == 1
        assert len([e for e in _entries(replicas[0], "key.stored", OPRF) if e["epoch"] == 2]) == 1
        assert replicas[0].oprf_key(2) == replicas[1].oprf_key(2)
        assert replicas[1].rotate(now=NOW, from_epoch=1) == 2  # late: changes nothing
        assert replicas[1].rotate(now=NOW) == 3  # from the current epoch: a new one
    finally:
        for node in replicas:
            node.close()


def test_a_federation_secret_imported_through_one_replica_is_every_replicas_at_once(site: Site) -> None:
    a, b = site.open(), site.open(site.replica("MY-b"))
    try:
        first = keys.load_federation_secret(site.my.dir / keys.FEDERATION_SECRET_FILE)
        assert a.federation_secret() == b.federation_secret() == first  # wrapped in at the first start
        assert b.hmac_key(1) is not None
        new = secrets.token_bytes(32)
        with pytest.raises(ConfigError, match=r"holds another federation secret .* add --replace"):
            a.install_federation_secret(new, replace=False, now=NOW)
        assert a.install_federation_secret(new, replace=True, now=NOW) == (2, True, first)
        assert b.federation_secret() == new  # B, which had read generation 1, reads 2 at its next use
        assert b.install_federation_secret(new, replace=False, now=NOW) == (2, False, None)
        stored = _entries(a, "key.stored", "hmac")
        assert [(e["epoch"], e["source"]) for e in stored] == [(1, "file federation.key"), (2, "import")]
    finally:
        a.close()
        b.close()
    # B's own file still holds the first secret: a restart does not bring it back.
    again = site.open(site.replica("MY-b"))
    try:
        assert again.federation_secret() == new
    finally:
        again.close()


# --- two serving replicas -----------------------------------------------------------------------------------


@pytest.fixture
def serving(site: Site) -> Iterator[tuple[Site, list[Node], list[RunningServer]]]:
    nodes = [site.open(), site.open(site.replica("MY-b"))]
    servers = [start_server(node, max_workers=4) for node in nodes]
    yield site, nodes, servers
    for server in servers:
        server.server.stop(0).wait()
        server.investigator.checker.close()
    for node in nodes:
        node.close()


def _stub(site: Site, port: int) -> peer_pb2_grpc.PeerServiceStub:
    tls = site.th.dir / "tls"
    channel = secure_channel(
        f"127.0.0.1:{port}", ca=tls / "ca.crt", cert=tls / "TH.crt", key=tls / "TH.key",
        server_name="my.peer.petanda",
    )  # fmt: skip
    return peer_pb2_grpc.PeerServiceStub(channel)


def _evaluate(
    stub: peer_pb2_grpc.PeerServiceStub, epoch: int, pk: bytes | None = None
) -> tuple[bytes, SignedManifest]:
    """TH's evaluation of HELD under MY's key of ``epoch``, its proof verified against ``pk`` (by default
    the key of the manifest served), and that manifest."""
    signed = SignedManifest.from_bytes(
        stub.GetManifest(peer_pb2.GetManifestRequest(), timeout=5).signed_manifest
    )
    inputs = [oprf_input("phone", HELD)]
    blinds, blinded = oprf.blind(inputs, oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=epoch, kind=kind_code("phone"), blinded_elements=blinded, verifiable=True
    )
    response = stub.EvaluateOprf(request, timeout=5)
    [output] = oprf.finalize(
        inputs, blinds, list(response.evaluated_elements), oprf.MODE_VOPRF,
        blinded=blinded, pk=pk or signed.manifest.oprf_public_key, proof=response.proof,
    )  # fmt: skip
    return output, signed


def test_one_replica_rotates_and_the_other_answers_in_the_new_epoch_at_once(
    serving: tuple[Site, list[Node], list[RunningServer]],
) -> None:
    site, (a, b), servers = serving
    csv = site.root / "my.csv"
    csv.write_text(f"kind,value,tlp\nphone,{HELD},GREEN\n")
    assert a.ingest([csv], now=NOW).stored == 1
    stub_a, stub_b = (_stub(site, server.port) for server in servers)
    output, signed = _evaluate(stub_b, 1)  # B has used (and cached) the key of epoch 1
    assert signed.manifest.epoch == 1

    assert a.rotate(now=NOW) == 2  # through replica A ...
    output, signed = _evaluate(stub_b, 2)  # ... B serves A's manifest of epoch 2 and evaluates under its key
    assert signed.manifest.epoch == 2 and signed.manifest.oprf_public_key == b.oprf_key(2).pk
    held = b.store.get_indicator("phone", HELD)
    assert held is not None and held.digests[(2, TIER_OPRF)] == output  # the digest A published
    assert _evaluate(stub_a, 2)[0] == output
    _evaluate(stub_b, 1, pk=a.oprf_key(1).pk)  # the retired epoch still answers during the grace period
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(stub_b, 3)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    assert b.rotate(now=NOW) == 3  # and the other way round
    assert _evaluate(stub_a, 3)[1].manifest.epoch == 3

    # An operator's `petanda-node rotate` in a process of its own, on a host with the config and the KEK.
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "rotate", "--config", str(site.my.config)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and "OPRF epoch 4 is current" in done.stdout, done.stderr
    for stub in (stub_a, stub_b):
        assert _evaluate(stub, 4)[1].manifest.epoch == 4


# --- the commands ------------------------------------------------------------------------------------------


def test_keys_fingerprint_compares_a_replicas_kek_with_the_stores(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "fingerprint", "--config", str(site.my.config)]) == 0
    out = capsys.readouterr().out
    shown = keys.format_fingerprint(kek_fingerprint((site.my.dir / "kek.key").read_bytes()))
    assert (
        f"KEK {site.my.dir / 'kek.key'}: fingerprint {shown}" in out and "the store names no KEK yet" in out
    )

    site.open().close()
    other = site.replica("MY-b")
    assert main(["keys", "fingerprint", "--config", str(other.config)]) == 0
    out = capsys.readouterr().out
    assert f"wrapped under fingerprint {shown}: the same KEK" in out and "epochs 1; current epoch 1" in out

    os.remove(other.dir / "kek.key")
    keys.init_kek(other.dir / "kek.key")
    assert main(["keys", "fingerprint", "--config", str(other.config), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["same"] is False and info["epochs"] == [1] and info["kek_file"] == str(other.dir / "kek.key")
    assert info["store_kek_fingerprint"] == kek_fingerprint((site.my.dir / "kek.key").read_bytes()).hex()
    os.remove(other.dir / "kek.key")
    assert main(["keys", "fingerprint", "--config", str(other.config)]) == 1
    out = capsys.readouterr().out
    assert "NONE (copy the KEK file of a replica" in out and f"wrapped under fingerprint {shown}\n" in out


def test_keys_migrate_wraps_the_seed_files_and_says_what_to_do_with_them(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.my.dir / "kek.key").unlink()
    keys.write_private_file(keys.oprf_seed_path(site.my.dir, 1), secrets.token_bytes(32))
    assert main(["keys", "migrate", "--config", str(site.my.config)]) == 0
    out = capsys.readouterr().out
    assert f"wrapped the OPRF seeds of epochs 1 from {site.my.dir / 'oprf'} into the store" in out
    assert "holds the same seeds as the store" in out and "delete it" in out
    assert "the federation secret is in the store (generation 1)" in out
    assert (site.my.dir / "kek.key").exists() and keys.list_epochs(site.my.dir) == [1]
    assert main(["keys", "migrate", "--config", str(site.my.config)]) == 0
    assert "nothing to wrap: the store holds the OPRF keys of epochs 1" in capsys.readouterr().out
