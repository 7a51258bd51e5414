"""Revocation: the CA's CRL (``ca revoke``, ``ca crl``, ``ca renew``), its enforcement by a node's server
before any handler runs, its reload without restart, and its distribution over peer links (``GetCrl``,
:func:`node.crl.fetch_crl`), all over real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._proto.petanda.v1 import (
    auditor_pb2,
    auditor_pb2_grpc,
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.protocol.errors import ConfigError, PermissionDenied
from client.transport.tls import secure_channel
from node.cli import main
from node.config import load_config
from node.crl import NEWEST_CRL_FILE, CrlError, CrlHolder, check_peer, fetch_crl, parse_crl, verify_crl
from node.node import Node
from node.peers import Links
from node.pki import (
    CRL_FILE,
    DEFAULT_PEER_DAYS,
    DEFAULT_PERSON_DAYS,
    init_ca,
    issue,
    parse_serial,
    people_init,
    renew,
    revoke,
    sign_crl,
    sign_people_ca,
)
from node.server import start_server
from node.testbed import Federation, build_federation, write_config
from tests.fednet import Clock, Net, Running

pytestmark = pytest.mark.timeout(90)

NOW = dt.datetime.now(dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _serial(path: Path) -> int:
    return _cert(path).serial_number


def _ca_crl(ca_dir: Path) -> x509.CertificateRevocationList:
    return parse_crl((ca_dir / CRL_FILE).read_bytes())


# --- the CA side --------------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_revoke_signs_a_crl_with_increasing_numbers_and_ca_crl_renews_it(ca: Path, tmp_path: Path) -> None:
    my = issue(ca, role="peer", id="MY", out_dir=tmp_path / "my")
    # a person the federation CA issued before the people-CAs: its CRL revokes them too
    alice = issue(ca, role="investigator", id="MY/alice", out_dir=tmp_path / "people", root_person=True)
    ca_cert = _cert(ca / "ca.crt")

    first = revoke(ca, serial=_serial(my.cert), reason="keyCompromise")
    crl = _ca_crl(ca)
    assert verify_crl(crl, ca_cert) == first.number
    assert crl.issuer == ca_cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(_serial(my.cert))
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )
    assert crl.next_update_utc is not None
    assert dt.timedelta(days=6.9) < crl.next_update_utc - NOW < dt.timedelta(days=7.1)

    second = revoke(ca, cert=alice.cert, reason="affiliationChanged")  # by file
    assert second.number > first.number and second.revoked == 2

    renewed = sign_crl(ca, days=3)
    crl = _ca_crl(ca)
    assert renewed.number > second.number and renewed.revoked == 2
    assert {e.serial_number for e in crl} == {_serial(my.cert), _serial(alice.cert)}
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - NOW < dt.timedelta(days=3.1)


def test_revoke_refuses_a_bad_serial_or_reason_naming_the_argument(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    my = issue(ca, role="peer", id="MY", out_dir=tmp_path / "my")
    serial = f"{_serial(my.cert):x}"

    def run(*argv: str) -> tuple[int, str]:
        code = main(["ca", "revoke", "--ca", str(ca), *argv])
        return code, capsys.readouterr().err

    code, err = run("--serial", "not-hex", "--reason", "keyCompromise")
    assert code == 2 and "serial" in err and "not-hex" in err
    code, err = run("--serial", "0", "--reason", "keyCompromise")
    assert code == 2 and "serial" in err
    code, err = run("--serial", "ab" * 21, "--reason", "keyCompromise")  # 21 octets: beyond RFC 5280
    assert code == 2 and "20 octets" in err
    code, err = run("--serial", serial, "--reason", "certificateHold")  # revocations never lapse here
    assert code == 2 and "reason" in err and "keyCompromise" in err
    code, err = run("--serial", "abcdef", "--reason", "superseded")  # not a serial this CA issued
    assert code == 2 and "serial" in err and "issued.jsonl" in err
    code, err = run("--serial", f"{_serial(ca / 'ca.crt'):x}", "--reason", "superseded")
    assert code == 2 and "own serial" in err
    assert not (ca / CRL_FILE).exists()  # nothing signed by a refused command

    code, _ = run("--serial", serial.upper(), "--reason", "cessationOfOperation")
    assert code == 0
    code, err = run("--serial", serial, "--reason", "keyCompromise")
    assert code == 2 and "already revoked (cessationOfOperation" in err
    assert parse_serial("0x" + serial) == parse_serial(":".join(serial[i : i + 2] for i in range(0, 40, 2)))

    rogue = tmp_path / "rogue"
    init_ca(rogue)
    other = issue(rogue, role="peer", id="TH", out_dir=tmp_path / "th")
    code, err = run("--cert", str(other.cert), "--reason", "keyCompromise")
    assert code == 2 and "not a certificate of this CA" in err


def test_default_lifetimes_are_short(ca: Path, tmp_path: Path) -> None:
    peer = _cert(issue(ca, role="peer", id="MY", out_dir=tmp_path / "a").cert)
    sign_people_ca(ca, people_init(tmp_path / "people-ca", state="MY"), out_dir=tmp_path / "people-ca")
    person = _cert(issue(tmp_path / "people-ca", role="auditor", id="MY/bob", out_dir=tmp_path / "b").cert)
    assert (peer.not_valid_after_utc - NOW).days in (DEFAULT_PEER_DAYS - 1, DEFAULT_PEER_DAYS)
    assert DEFAULT_PEER_DAYS <= 90 and DEFAULT_PERSON_DAYS <= 365
    assert (person.not_valid_after_utc - NOW).days in (DEFAULT_PERSON_DAYS - 1, DEFAULT_PERSON_DAYS)


def test_renew_keeps_the_identity_and_names_with_a_new_serial(ca: Path, tmp_path: Path) -> None:
    old = issue(
        ca, role="peer", id="MY", out_dir=tmp_path / "old", hostnames=["my.example"], ips=["10.0.0.7"]
    )
    done = renew(ca, old.cert, out_dir=tmp_path / "new", days=30)
    before, after = _cert(old.cert), _cert(done.cert)
    assert done.key is None and done.serial == after.serial_number != before.serial_number
    assert after.public_key() == before.public_key()  # the old key goes on with the new certificate
    san = x509.SubjectAlternativeName
    assert after.extensions.get_extension_for_class(san) == before.extensions.get_extension_for_class(san)
    assert (after.not_valid_after_utc - NOW).days in (29, 30)
    # After a compromise the key must change.
    revoke(ca, cert=old.cert, reason="keyCompromise")
    with pytest.raises(ConfigError, match="--new-key"):
        renew(ca, old.cert, out_dir=tmp_path / "again")
    fresh = renew(ca, old.cert, out_dir=tmp_path / "again", new_key=True)
    assert fresh.key is not None and _cert(fresh.cert).public_key() != before.public_key()
    # CLI: the same, nothing overwritten.
    assert (
        main(["ca", "renew", "--ca", str(ca), "--cert", str(old.cert), "--out", str(tmp_path / "again")]) == 2
    )


# --- a node holds the CRL -----------------------------------------------------------------------------


def test_holder_keeps_the_newest_and_refuses_a_crl_the_ca_did_not_sign(ca: Path, tmp_path: Path) -> None:
    my = issue(ca, role="peer", id="MY", out_dir=tmp_path / "my")
    ca_cert = _cert(ca / "ca.crt")
    older = sign_crl(ca)
    older_pem = (ca / CRL_FILE).read_bytes()
    revoke(ca, cert=my.cert, reason="keyCompromise")
    newer_pem = (ca / CRL_FILE).read_bytes()
    records: list[tuple[str, dict[str, Any]]] = []
    holder = CrlHolder(ca_cert, keep=tmp_path / "keep.pem", record=lambda a, **f: records.append((a, f)))
    assert holder.number == 0 and holder.current() is None and not holder.is_revoked(_serial(my.cert))

    assert holder.offer(newer_pem)
    assert (
        holder.is_revoked(_serial(my.cert)) and holder.revocation_reason(_serial(my.cert)) == "keyCompromise"
    )
    assert not holder.offer(older_pem)  # a lower number never replaces a higher one
    assert holder.number > older.number and holder.is_revoked(_serial(my.cert))
    assert [a for a, _ in records] == ["crl.adopted"]

    rogue = tmp_path / "rogue"
    init_ca(rogue)  # the same subject name, another key
    sign_crl(rogue, days=30)
    with pytest.raises(CrlError, match="signature"):
        holder.offer((rogue / CRL_FILE).read_bytes())
    with pytest.raises(CrlError, match=r"not an X\.509 CRL"):
        holder.offer(b"garbage")
    assert holder.is_revoked(_serial(my.cert))

    # The newest is kept in the node directory and survives a restart.
    again = CrlHolder(ca_cert, keep=tmp_path / "keep.pem")
    assert again.number == holder.number and again.is_revoked(_serial(my.cert))


def test_a_crl_file_the_ca_did_not_sign_is_refused_at_startup(ca: Path, tmp_path: Path) -> None:
    rogue = tmp_path / "rogue"
    init_ca(rogue)
    sign_crl(rogue)
    with pytest.raises(ConfigError, match=r"tls\.crl: the CRL's signature does not verify"):
        CrlHolder(_cert(ca / "ca.crt"), path=rogue / CRL_FILE)
    with pytest.raises(ConfigError, match=r"tls\.crl: cannot read"):
        CrlHolder(_cert(ca / "ca.crt"), path=tmp_path / "missing.pem")


# --- enforcement on a real server ---------------------------------------------------------------------


def _set_crl(config: Path, crl: Path, people_crl: Path | None = None) -> None:
    text = config.read_text()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("key = ")) + 1
    lines.insert(at, f"crl = {json.dumps(str(crl))}")
    if people_crl is not None:
        lines.insert(at, f"people_crl = {json.dumps(str(people_crl))}")
    config.write_text("\n".join(lines) + "\n")


def _people_ca(federation: Federation, node_id: str) -> Path:
    people_ca = federation.members[node_id].people_ca
    assert people_ca is not None
    return people_ca


def _start(root: Path, ids: Sequence[str], *, crl_for: Sequence[str]) -> Net:
    """Like :func:`tests.fednet.start_net`; the CA and each people-CA sign a first (empty) CRL, and the
    members in ``crl_for`` read the CA's ``crl.pem`` as their ``tls.crl`` and their people-CA's as their
    ``tls.people_crl``."""
    federation = build_federation(root, ids)
    sign_crl(federation.ca.parent)
    crl = {node_id: federation.ca.parent / CRL_FILE for node_id in crl_for}
    people_crl = {node_id: _people_ca(federation, node_id) / CRL_FILE for node_id in crl_for}
    for node_id in crl_for:
        sign_crl(_people_ca(federation, node_id))
    for node_id, path in crl.items():
        _set_crl(federation.members[node_id].config, path, people_crl[node_id])
    clock = Clock(time.time())
    net = Net(federation, clock)
    for node_id, member in federation.members.items():
        node = Node.open(load_config(member.config), clock=clock)
        links = Links(node)
        server = start_server(node, links=links, max_workers=8)
        member.port = server.port
        net.running[node_id] = Running(member, node, server, links, server.investigator)
    for node_id, member in federation.members.items():
        write_config(member, federation.members.values())
        if node_id in crl:
            _set_crl(member.config, crl[node_id], people_crl[node_id])
        net.running[node_id].node.config = load_config(member.config)
    return net


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """MY and TH, peers of each other; MY reads the CA's crl.pem (signed, empty, before it starts)."""
    net = _start(tmp_path / "fed", ["MY", "TH"], crl_for=["MY"])
    try:
        yield net
    finally:
        net.close()


def _audit(node: Node, action: str) -> list[dict[str, Any]]:
    entries = [json.loads(e) for e in node.store.audit_entries(0, node.store.audit_size())]
    return [e for e in entries if e.get("action") == action]


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _channel(net: Net, node_id: str, cert: Path, key: Path) -> grpc.Channel:
    channel = secure_channel(
        net.federation.members[node_id].address, ca=net.federation.ca, cert=cert, key=key
    )
    net.channels.append(channel)
    return channel


def _health(channel: grpc.Channel) -> Any:
    request = health_pb2.HealthCheckRequest(service="")
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def _wait_for(condition: Callable[[], bool], *, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def test_a_revoked_certificate_of_each_role_is_refused_before_any_handler_and_audited(net: Net) -> None:
    my = net.node("MY")
    ca_dir = net.federation.ca.parent
    member = net.federation.members["MY"]
    th_tls = net.federation.members["TH"].dir / "tls"
    certs = {
        "peer": (th_tls / "TH.crt", th_tls / "TH.key"),
        "investigator": member.investigator,
        "auditor": member.auditor,
    }
    channels = {role: _channel(net, "MY", *files) for role, files in certs.items()}
    serving = health_pb2.HealthCheckResponse.SERVING
    assert all(_health(channel) == serving for channel in channels.values())
    first = my.crl.number
    assert first > 0

    # The federation CA revokes the peer, MY's people-CA the two people; the operator puts the new CRLs
    # in place (the configured files): no restart.
    for role, (cert, _key) in certs.items():
        issuer = ca_dir if role == "peer" else _people_ca(net.federation, "MY")
        revoke(issuer, cert=cert, reason="keyCompromise" if role == "peer" else "affiliationChanged")
    denied = grpc.StatusCode.PERMISSION_DENIED

    def is_refused(channel: grpc.Channel) -> bool:
        try:
            _health(channel)
        except grpc.RpcError as error:
            return bool(error.code() == denied)
        return False

    # The server itself notices the new file (a stat at most once a second), with calls coming in.
    _wait_for(lambda: is_refused(channels["auditor"]))
    assert my.crl.number > first

    own_call: dict[str, Callable[[], Any]] = {
        "peer": lambda: peer_pb2_grpc.PeerServiceStub(channels["peer"]).GetCrl(
            peer_pb2.GetCrlRequest(), timeout=5
        ),
        "investigator": lambda: investigator_pb2_grpc.InvestigatorServiceStub(channels["investigator"]).Check(
            investigator_pb2.CheckRequest(), timeout=5
        ),
        "auditor": lambda: auditor_pb2_grpc.AuditorServiceStub(channels["auditor"]).GetTreeHead(
            auditor_pb2.GetTreeHeadRequest(), timeout=5
        ),
    }
    for role, channel in channels.items():
        assert _code(functools.partial(_health, channel)) == denied, role
        assert _code(own_call[role]) == denied, role

    refused = [e for e in _audit(my, "rpc.denied") if e["result"] == "revoked"]
    assert {(e["actor"], e["role"]) for e in refused} == {
        ("TH", "peer"),
        ("MY/investigator", "investigator"),
        ("MY/auditor", "auditor"),
    }
    # No handler ran for them: no peer read and no auditor read by these callers.
    assert not [e for e in _audit(my, "peer.get_crl") if e["actor"] == "TH"]
    assert not _audit(my, "auditor.get_tree_head")
    # An unrevoked caller still gets through.
    sg = issue(
        _people_ca(net.federation, "MY"), role="auditor", id="MY/carol", out_dir=net.federation.root / "carol"
    )
    assert _health(_channel(net, "MY", sg.cert, sg.key)) == serving


def test_a_peer_not_configured_or_no_longer_configured_is_refused_and_audited(net: Net) -> None:
    my = net.node("MY")
    ca_dir = net.federation.ca.parent
    vn = issue(ca_dir, role="peer", id="VN", out_dir=net.federation.root / "VN-tls")
    stub = peer_pb2_grpc.PeerServiceStub(_channel(net, "MY", vn.cert, vn.key))
    assert (
        _code(lambda: stub.GetCrl(peer_pb2.GetCrlRequest(), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    )

    th = net.peer_stub("MY", as_member="TH")
    assert th.GetCrl(peer_pb2.GetCrlRequest(), timeout=5).crl  # configured: served
    # MY's operator removes TH from [[peers]] and the config is reloaded: TH is refused at once.
    write_config(net.federation.members["MY"], [net.federation.members["MY"]])
    my.config = load_config(net.federation.members["MY"].config)
    assert _code(lambda: th.GetCrl(peer_pb2.GetCrlRequest(), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED

    denied = {(e["actor"], e["result"]) for e in _audit(my, "rpc.denied")}
    assert denied == {("VN", "denied"), ("TH", "denied")}


def test_a_revoked_member_cannot_sync_with_us_and_we_refuse_to_sync_with_it(net: Net) -> None:
    my, th = net.node("MY"), net.node("TH")
    ca_dir = net.federation.ca.parent
    th_cert = net.federation.members["TH"].dir / "tls" / "TH.crt"
    check_peer(my, "TH", timeout=5)  # not revoked: the probe passes
    revoke(ca_dir, cert=th_cert, reason="affiliationChanged")
    assert my.crl.reload_if_changed(force=True)

    # TH's calls to MY are refused before any handler (its sync pulls from MY this way).
    stub = net.peer_stub("MY", as_member="TH")
    request = peer_pb2.GetManifestRequest(known_version=0)
    assert _code(lambda: stub.GetManifest(request, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(PermissionDenied):
        fetch_crl(stub, th.crl, timeout=5, peer_id="MY")
    # MY, calling TH, sees TH's server certificate only through a probe handshake: it is revoked.
    with pytest.raises(PermissionDenied, match="revoked"):
        check_peer(my, "TH", timeout=5)
    assert [e["reason"] for e in _audit(my, "peer.revoked")] == ["affiliationChanged"]
    # Through the real sync, on both sides: neither pulls from the other any more, both audit it.
    assert {r.peer_id: r.ok for r in net.sync("MY")}["TH"] is False
    assert {r.peer_id: r.ok for r in net.sync("TH")}["MY"] is False
    assert any("revoked" in e.get("reason", "") for e in _audit(my, "artefact.refused"))


def test_getcrl_serves_the_newest_and_fetch_crl_adopts_it_across_a_restart(net: Net) -> None:
    my, th = net.node("MY"), net.node("TH")
    ca_dir = net.federation.ca.parent
    assert th.crl.number == 0 and my.crl.number > 0
    stub = net.peer_stub("MY", as_member="TH")

    assert fetch_crl(stub, th.crl, timeout=5, peer_id="MY")
    assert th.crl.number == my.crl.number
    assert not fetch_crl(stub, th.crl, timeout=5, peer_id="MY")  # not modified
    assert stub.GetCrl(peer_pb2.GetCrlRequest(known_number=th.crl.number), timeout=5).not_modified
    served = _audit(my, "peer.get_crl")
    assert len(served) == 3 and all(e["actor"] == "TH" for e in served)
    assert [e["source"] for e in _audit(th, "crl.adopted")] == ["peer:MY"]

    # A revocation reaches TH at its next fetch, and TH enforces it: the federation CA revokes TH's
    # people-CA, and TH refuses every person it issued.
    people_ca = _people_ca(net.federation, "TH") / "people-ca.crt"
    alice = issue(people_ca.parent, role="investigator", id="TH/alice", out_dir=net.federation.root / "alice")
    channel = _channel(net, "TH", alice.cert, alice.key)
    assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    revoke(ca_dir, cert=people_ca, reason="keyCompromise")
    _wait_for(lambda: my.crl.reload_if_changed() or my.crl.is_revoked(_serial(people_ca)))
    assert fetch_crl(stub, th.crl, timeout=5, peer_id="MY")
    with pytest.raises(grpc.RpcError) as refused:
        _health(channel)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "people-CA of TH that issued investigator TH/alice is revoked (keyCompromise)" in str(
        refused.value.details()
    )

    # TH kept it in its node directory: a restarted TH enforces it before any sync.
    kept = net.federation.members["TH"].dir / NEWEST_CRL_FILE
    assert kept.exists()
    restarted = Node.open(load_config(net.federation.members["TH"].config), clock=net.clock)
    try:
        assert restarted.crl.number == my.crl.number and restarted.crl.is_revoked(_serial(people_ca))
    finally:
        restarted.close()


def test_fetch_crl_refuses_a_crl_not_signed_by_the_ca_and_keeps_the_old(
    net: Net, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    my, th = net.node("MY"), net.node("TH")
    stub = net.peer_stub("MY", as_member="TH")
    assert fetch_crl(stub, th.crl, timeout=5, peer_id="MY")
    held = th.crl.number
    # MY turns hostile and serves a CRL of its own making with a huge number.
    rogue = tmp_path / "rogue"
    init_ca(rogue)
    sign_crl(rogue)
    forged = parse_crl((rogue / CRL_FILE).read_bytes())
    from cryptography.hazmat.primitives import serialization

    der = forged.public_bytes(serialization.Encoding.DER)
    my.crl.snapshot = lambda: (10**12, der)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="node.crl"):
        assert not fetch_crl(stub, th.crl, timeout=5, peer_id="MY")
    assert th.crl.number == held
    assert any("refused the CRL served by MY" in r.getMessage() for r in caplog.records)
    refused = _audit(th, "crl.refused")
    assert len(refused) == 1 and refused[0]["actor"] == "MY" and refused[0]["result"] == "invalid"


def test_a_stale_crl_is_still_enforced_and_shown_stale(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    my = issue(ca, role="peer", id="MY", out_dir=tmp_path / "my")
    revoke(ca, cert=my.cert, reason="keyCompromise", days=1, now=NOW - dt.timedelta(days=10))
    holder = CrlHolder(_cert(ca / "ca.crt"), path=ca / CRL_FILE, clock=time.time)
    with caplog.at_level(logging.WARNING, logger="node.crl"):
        assert holder.check(_serial(my.cert)) == "keyCompromise"  # still refused
        holder.check(_serial(my.cert))
    status = holder.status()
    assert status["stale"] and status["revoked"] == 1
    warnings = [r for r in caplog.records if "past its next update" in r.getMessage()]
    assert len(warnings) == 1  # once an hour, not once a call


def test_a_bad_crl_file_at_runtime_is_logged_and_the_held_one_kept(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    my = issue(ca, role="peer", id="MY", out_dir=tmp_path / "my")
    revoke(ca, cert=my.cert, reason="keyCompromise")
    path = tmp_path / "crl.pem"
    path.write_bytes((ca / CRL_FILE).read_bytes())
    holder = CrlHolder(_cert(ca / "ca.crt"), path=path, check_every_s=0)
    path.write_bytes(b"-----BEGIN X509 CRL-----\ntruncated\n")
    with caplog.at_level(logging.ERROR, logger="node.crl"):
        assert holder.check(_serial(my.cert)) == "keyCompromise"
    assert any("ignoring the CRL file" in r.getMessage() for r in caplog.records)
    path.unlink()
    assert holder.check(_serial(my.cert)) == "keyCompromise"  # a vanished file lifts nothing


def test_status_shows_the_crl(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    config = net.federation.members["MY"].config
    assert main(["status", "--config", str(config), "--json"]) == 0
    crl = json.loads(capsys.readouterr().out)["crl"]
    assert crl["number"] == net.node("MY").crl.number and crl["stale"] is False and crl["configured"]
