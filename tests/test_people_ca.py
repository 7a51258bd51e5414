"""A people-CA per state (ADR 0013): the federation CA signs node certificates and each state's
people-CA; a node serves only the people its own state's people-CA issued. The CA side (``ca
people-init``, ``ca sign-people-ca``, ``ca issue``, ``ca renew``) and the node's check, over real mutual
TLS on 127.0.0.1 with real certificates.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc, peer_pb2, peer_pb2_grpc
from client.protocol.errors import ConfigError
from client.transport.tls import load_private_key, read_private_file, secure_channel
from node.cli import main
from node.config import load_config
from node.node import Node
from node.peers import Links
from node.pki import (
    PEOPLE_CA_CERT_FILE,
    PEOPLE_CA_CSR_FILE,
    PEOPLE_CA_KEY_FILE,
    init_ca,
    issue,
    people_init,
    server_credentials,
    sign_crl,
    sign_people_ca,
)
from node.server import RunningServer, start_server
from node.testbed import Federation, Member, build_federation
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(90)

DENIED = grpc.StatusCode.PERMISSION_DENIED
SERVING = health_pb2.HealthCheckResponse.SERVING


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _people_ca(federation: Federation, node_id: str) -> Path:
    people_ca = federation.members[node_id].people_ca
    assert people_ca is not None
    return people_ca


def _forge(
    out: Path,
    issuer_dir: Path,
    uri: str,
    *,
    issuer_files: tuple[str, str] = (PEOPLE_CA_CERT_FILE, PEOPLE_CA_KEY_FILE),
    ca: bool = False,
    dns: Sequence[str] = (),
) -> tuple[Path, Path]:
    """What a hostile state's own code can make with its own CA key: any certificate at all. Writes the
    chain (the certificate, then its issuer's) and the key; returns their paths."""
    issuer = _cert(issuer_dir / issuer_files[0])
    issuer_key = load_private_key(read_private_file(issuer_dir / issuer_files[1]))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if dns else [])
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), *map(x509.DNSName, dns)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    chain = _pem(cert) + (b"" if issuer_files[0] == "ca.crt" else _pem(issuer))
    (out / "forged.crt").write_bytes(chain)
    key_path = out / "forged.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return out / "forged.crt", key_path


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), str(info.value.details())


def _audit(node: Node, action: str) -> list[dict[str, Any]]:
    entries = [json.loads(e) for e in node.store.audit_entries(0, node.store.audit_size())]
    return [e for e in entries if e.get("action") == action]


# --- the CA side --------------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_people_ca_profile_key_stays_in_the_state(ca: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "people-ca-MY"
    csr = people_init(state_dir, state="MY")
    assert (state_dir / PEOPLE_CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    # The federation CA's operator gets the request only, and signs it elsewhere.
    done = sign_people_ca(ca, csr, out_dir=tmp_path / "for-MY")
    assert done.state == "MY" and not (tmp_path / "for-MY" / PEOPLE_CA_KEY_FILE).exists()
    people = _cert(done.cert)
    people.verify_directly_issued_by(_cert(ca / "ca.crt"))
    bc = people.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    usage = people.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    eku = people.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # it can never mint a server certificate
    assert people.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "MY"
    issued = [json.loads(line) for line in (ca / "issued.jsonl").read_text().splitlines()]
    assert [(i["role"], i["id"]) for i in issued] == [("people-ca", "MY")]


def test_each_ca_issues_only_what_it_may(ca: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "people-ca-MY"
    people_init(state_dir, state="MY")
    with pytest.raises(ConfigError, match="no people-CA certificate yet"):
        issue(state_dir, role="investigator", id="MY/alice", out_dir=tmp_path / "x")
    sign_people_ca(ca, state_dir / PEOPLE_CA_CSR_FILE, out_dir=state_dir)
    with pytest.raises(ConfigError, match="role: the federation CA issues nodes and people-CAs"):
        issue(ca, role="investigator", id="MY/alice", out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="role: a people-CA issues investigators and auditors only"):
        issue(state_dir, role="peer", id="MY", out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="id: this is the people-CA of MY: it cannot issue auditor TH/bob"):
        issue(state_dir, role="auditor", id="TH/bob", out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="a people-CA cannot sign people-CAs"):
        sign_people_ca(state_dir, people_init(tmp_path / "th", state="TH"), out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()

    alice = issue(state_dir, role="investigator", id="MY/alice", out_dir=tmp_path / "people")
    chain = x509.load_pem_x509_certificates(alice.cert.read_bytes())
    assert chain[1] == _cert(state_dir / PEOPLE_CA_CERT_FILE)
    assert alice.ca.read_bytes() == (ca / "ca.crt").read_bytes()  # the trust anchor is the federation CA's


def test_bad_requests_and_directories_are_refused_naming_the_file(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'XX' is not an ISO 3166-1"):
        people_init(tmp_path / "p", state="XX")
    csr = people_init(tmp_path / "p", state="MY")
    with pytest.raises(ConfigError, match="overwrite"):
        people_init(tmp_path / "p", state="MY")
    with pytest.raises(ConfigError, match="holds the federation CA"):
        people_init(ca, state="MY")
    not_csr = tmp_path / "not.csr"
    not_csr.write_text("hello")
    with pytest.raises(ConfigError, match=rf"{not_csr}: not a PEM certificate signing request"):
        sign_people_ca(ca, not_csr, out_dir=tmp_path / "o")
    # A request for a node-like subject (no OU=people) is not a people-CA request.
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "MY")])
    odd = tmp_path / "odd.csr"
    odd.write_bytes(
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(ConfigError, match="not a people-CA request"):
        sign_people_ca(ca, odd, out_dir=tmp_path / "o")
    # A request whose signature is not its key's (swapped public key) is refused.
    other = x509.load_pem_x509_csr(people_init(tmp_path / "q", state="MY").read_bytes())
    mine = x509.load_pem_x509_csr(csr.read_bytes())
    swapped = tmp_path / "swapped.csr"
    der = mine.public_bytes(serialization.Encoding.DER)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    forged = der.replace(mine.public_key().public_bytes(*spki), other.public_key().public_bytes(*spki))
    swapped.write_bytes(x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="signature does not verify"):
        sign_people_ca(ca, swapped, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    # Both CA keys in one directory: refused rather than guessed.
    (tmp_path / "p" / "ca.key").write_bytes(b"")
    sign_people_ca(ca, csr, out_dir=tmp_path / "p")
    with pytest.raises(ConfigError, match="keep a people-CA in a directory of its own"):
        issue(tmp_path / "p", role="auditor", id="MY/bob", out_dir=tmp_path / "b")


def test_cli_hierarchy_and_migration_of_a_root_issued_person(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = issue(ca, role="investigator", id="MY/alice", out_dir=tmp_path / "old", root_person=True)
    state = tmp_path / "people-ca-MY"
    assert main(["ca", "people-init", "--state", "MY", "--dir", str(state)]) == 0
    csr = str(state / PEOPLE_CA_CSR_FILE)
    assert main(["ca", "sign-people-ca", "--ca", str(ca), "--csr", csr, "--out", str(state)]) == 0
    assert "signed the people-CA of MY" in capsys.readouterr().out
    # The migration: the person's root-issued certificate is reissued under MY's people-CA, same key.
    new = tmp_path / "new"
    assert main(["ca", "renew", "--ca", str(state), "--cert", str(old.cert), "--out", str(new)]) == 0
    fresh = _cert(new / "MY-alice.investigator.crt")
    fresh.verify_directly_issued_by(_cert(state / PEOPLE_CA_CERT_FILE))
    assert fresh.public_key() == _cert(old.cert).public_key()
    issued = [json.loads(line) for line in (state / "issued.jsonl").read_text().splitlines()]
    assert issued[-1]["renews"] == f"{_cert(old.cert).serial_number:x}"
    # The people-CA revokes its own people in a CRL of its own, for its state's node only.
    cert = str(new / "MY-alice.investigator.crt")
    assert main(["ca", "revoke", "--ca", str(state), "--cert", cert, "--reason", "superseded"]) == 0
    assert "tls.people_crl" in capsys.readouterr().out and (state / "crl.pem").exists()
    # Another state's people-CA cannot take MY's person over.
    th = tmp_path / "people-ca-TH"
    sign_people_ca(ca, people_init(th, state="TH"), out_dir=th)
    code = main(["ca", "renew", "--ca", str(th), "--cert", str(old.cert), "--out", str(tmp_path / "th")])
    assert code == 2 and "people-CA of TH" in capsys.readouterr().err
    # A bad state names the argument.
    assert main(["ca", "people-init", "--state", "my", "--dir", str(tmp_path / "z")]) == 2
    assert "'my' is not an ISO 3166-1" in capsys.readouterr().err


# --- the node's check, over real mutual TLS ------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = start_net(tmp_path_factory.mktemp("fed"), ["MY", "TH"], now=time.time())
    try:
        yield net
    finally:
        net.close()


def _check(net: Net, node_id: str, cert: Path, key: Path) -> Callable[[], Any]:
    channel = secure_channel(
        net.federation.members[node_id].address, ca=net.federation.ca, cert=cert, key=key
    )
    net.channels.append(channel)
    stub = investigator_pb2_grpc.InvestigatorServiceStub(channel)
    request = investigator_pb2.CheckRequest(
        queries=[investigator_pb2.IndicatorQuery(kind="phone", value="+60123456789")], deadline_ms=3000
    )
    return lambda: stub.Check(request, timeout=10)


def _health(net: Net, node_id: str, cert: Path, key: Path) -> Any:
    channel = secure_channel(
        net.federation.members[node_id].address, ca=net.federation.ca, cert=cert, key=key
    )
    net.channels.append(channel)
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_own_states_people_are_served(net: Net) -> None:
    reply = _check(net, "MY", *net.federation.members["MY"].investigator)()
    assert len(reply.results) == 1
    assert _health(net, "MY", *net.federation.members["MY"].auditor) == SERVING


def test_a_person_of_another_states_people_ca_is_refused_and_audited(net: Net, tmp_path: Path) -> None:
    my = net.node("MY")
    # TH's people-CA is validly signed by the federation CA; its own code mints an "investigator of MY".
    eve = _forge(tmp_path / "eve", _people_ca(net.federation, "TH"), "urn:petanda:investigator:MY:eve")
    code, details = _code(_check(net, "MY", *eve))
    assert code == DENIED
    assert "investigator MY/eve is refused: it is not issued by the people-CA of MY" in details
    assert "Petanda people CA TH" in details
    # TH's genuine investigator is refused at MY too.
    code, _ = _code(_check(net, "MY", *net.federation.members["TH"].investigator))
    assert code == DENIED
    refused = [e for e in _audit(my, "rpc.denied") if e["result"] == "wrong_issuer"]
    by_actor = {e["actor"]: e for e in refused}
    assert by_actor["MY/eve"]["method"] == "/petanda.v1.InvestigatorService/Check"
    assert "CN=Petanda people CA TH" in by_actor["MY/eve"]["issuer"]
    assert "TH/investigator" in by_actor
    assert not [e for e in _audit(my, "investigator.check") if e["actor"] in {"MY/eve", "TH/investigator"}]


def test_a_people_ca_cannot_mint_a_node(net: Net, tmp_path: Path) -> None:
    """As a client: the node wants a peer's certificate straight from the federation CA. As a server:
    the people-CA's extKeyUsage (clientAuth only) makes every TLS client refuse the chain."""
    th_ca = _people_ca(net.federation, "TH")
    fake = _forge(tmp_path / "fake", th_ca, "urn:petanda:peer:TH")
    channel = secure_channel(
        net.federation.members["MY"].address, ca=net.federation.ca, cert=fake[0], key=fake[1]
    )
    net.channels.append(channel)
    stub = peer_pb2_grpc.PeerServiceStub(channel)
    code, details = _code(lambda: stub.GetCrl(peer_pb2.GetCrlRequest(), timeout=5))
    assert code == DENIED and "peer TH is not issued by the federation CA" in details
    assert any(
        e["actor"] == "TH" and e["result"] == "wrong_issuer" for e in _audit(net.node("MY"), "rpc.denied")
    )

    server_cert, server_key = _forge(
        tmp_path / "srv", th_ca, "urn:petanda:peer:SG", dns=["sg.peer.petanda", "localhost"]
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    ca_pem = net.federation.ca.read_bytes()
    credentials = server_credentials(ca_pem, server_cert.read_bytes(), server_key.read_bytes())
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        cert, key = (
            net.federation.members["MY"].dir / "tls" / "MY.crt",
            net.federation.members["MY"].dir / "tls" / "MY.key",
        )
        client = secure_channel(
            f"127.0.0.1:{port}", ca=ca_pem, cert=cert, key=key, server_name="sg.peer.petanda"
        )
        net.channels.append(client)
        code, _ = _code(
            lambda: health_pb2_grpc.HealthStub(client).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0).wait()


def test_a_people_ca_not_signed_by_the_federation_ca_fails_the_handshake(net: Net, tmp_path: Path) -> None:
    rogue_root = tmp_path / "rogue-root"
    init_ca(rogue_root)
    rogue = tmp_path / "rogue-people"
    sign_people_ca(rogue_root, people_init(rogue, state="MY"), out_dir=rogue)
    mallory = issue(rogue, role="investigator", id="MY/mallory", out_dir=tmp_path / "m")
    code, _ = _code(_check(net, "MY", mallory.cert, mallory.key))
    assert code == grpc.StatusCode.UNAVAILABLE  # the handshake: no chain to the federation CA
    # A people-CA cannot make a people-CA (pathLen 0): the chain fails the handshake too.
    my_ca = _people_ca(net.federation, "MY")
    _forge(tmp_path / "sub", my_ca, "urn:petanda:investigator:MY:sub", ca=True)
    leaf, key = _forge(
        tmp_path / "leaf",
        tmp_path / "sub",
        "urn:petanda:investigator:MY:below",
        issuer_files=("forged.crt", "forged.key"),
    )
    leaf.write_bytes(leaf.read_bytes() + (my_ca / PEOPLE_CA_CERT_FILE).read_bytes())
    assert len(x509.load_pem_x509_certificates(leaf.read_bytes())) == 3
    code, _ = _code(_check(net, "MY", leaf, key))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert not [e for e in _audit(net.node("MY"), "rpc.denied") if e["actor"] == "MY/mallory"]


# --- configuration and the migration flag ---------------------------------------------------------------


def _set_tls(member: Member, **values: object) -> None:
    lines = member.config.read_text().splitlines()
    lines = [line for line in lines if line.split(" = ")[0] not in values]
    at = lines.index("[tls]") + 1
    lines[at:at] = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    member.config.write_text("\n".join(lines) + "\n")


class _Alone:
    """One member's node and server, started from its config file."""

    def __init__(self, member: Member) -> None:
        self.node = Node.open(load_config(member.config))
        self.links = Links(self.node)
        self.server: RunningServer = start_server(self.node, links=self.links, max_workers=4)
        self.address = f"127.0.0.1:{self.server.port}"
        self.channels: list[grpc.Channel] = []

    def health(self, ca: Path, cert: Path, key: Path) -> Any:
        channel = secure_channel(self.address, ca=ca, cert=cert, key=key)
        self.channels.append(channel)
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.server.server.stop(0).wait()
        self.server.investigator.checker.close()
        self.links.close()
        self.node.close()


class _Starter:
    """Starts MY alone from its testbed config with some ``[tls]`` keys set (replacing the previous)."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self.started: list[_Alone] = []

    def __call__(self, **tls: object) -> _Alone:
        self.close()
        member = self.federation.members["MY"]
        if tls:
            _set_tls(member, **tls)
        self.started.append(_Alone(member))
        return self.started[-1]

    def close(self) -> None:
        for running in self.started:
            running.close()
        self.started.clear()


@pytest.fixture
def alone(tmp_path: Path) -> Iterator[_Starter]:
    starter = _Starter(build_federation(tmp_path / "fed", ["MY"]))
    try:
        yield starter
    finally:
        starter.close()


def test_a_root_issued_person_is_refused_unless_the_migration_flag_is_on(
    alone: _Starter, tmp_path: Path
) -> None:
    federation = alone.federation
    ca_dir = federation.ca.parent
    old = issue(ca_dir, role="investigator", id="MY/alice", out_dir=tmp_path / "old", root_person=True)

    node = alone()
    with pytest.raises(grpc.RpcError) as refused:
        node.health(federation.ca, old.cert, old.key)
    assert refused.value.code() == DENIED
    assert "issued by the federation CA, not by the people-CA of MY" in str(refused.value.details())
    assert "tls.root_people" in str(refused.value.details())
    entries = [e for e in _audit(node.node, "rpc.denied") if e["actor"] == "MY/alice"]
    # the call, and the protocol-version probe (a Health/Check) the channel sends before its first call
    assert [e["result"] for e in entries] == ["wrong_issuer"] * 2
    assert {e["issuer"] for e in entries} == {_cert(federation.ca).subject.rfc4514_string()}

    node = alone(root_people=True)
    assert node.health(federation.ca, old.cert, old.key) == SERVING
    member = federation.members["MY"]
    assert node.health(federation.ca, *member.investigator) == SERVING  # the people-CA's people too

    # Without a people-CA and without the flag the node serves no person, and says why.
    node = alone(people_ca="", root_people=False)
    with pytest.raises(grpc.RpcError) as refused:
        node.health(federation.ca, *member.investigator)
    assert refused.value.code() == DENIED and "has no people-CA (tls.people_ca)" in str(
        refused.value.details()
    )


def test_a_people_ca_of_another_state_or_root_is_a_config_error(alone: _Starter, tmp_path: Path) -> None:
    federation = alone.federation
    th = tmp_path / "people-ca-TH"
    sign_people_ca(federation.ca.parent, people_init(th, state="TH"), out_dir=th)
    with pytest.raises(ConfigError, match=r"tls\.people_ca: this is the people-CA of TH, not of this node's"):
        alone(people_ca=str(th / PEOPLE_CA_CERT_FILE))
    rogue_root = tmp_path / "rogue-root"
    init_ca(rogue_root)
    rogue = tmp_path / "rogue"
    sign_people_ca(rogue_root, people_init(rogue, state="MY"), out_dir=rogue)
    with pytest.raises(ConfigError, match=r"tls\.people_ca: not signed by the federation CA"):
        alone(people_ca=str(rogue / PEOPLE_CA_CERT_FILE))
    with pytest.raises(ConfigError, match=r"tls\.people_ca: cannot read"):
        alone(people_ca=str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="people_crl is the people-CA's CRL: set people_ca too"):
        alone(people_ca="", people_crl=str(tmp_path / "crl.pem"))
    # The federation's CRL is not the people-CA's: refused at start, naming the key.
    sign_crl(federation.ca.parent)
    people_ca = federation.members["MY"].people_ca
    assert people_ca is not None
    with pytest.raises(ConfigError, match=r"tls\.people_crl: the CRL is issued by .*, not the people-CA"):
        alone(
            people_ca=str(people_ca / PEOPLE_CA_CERT_FILE), people_crl=str(federation.ca.parent / "crl.pem")
        )


def test_a_federation_ca_made_before_the_hierarchy_still_anchors_people_ca_chains(tmp_path: Path) -> None:
    """Roots made before ADR 0013 say pathLen 0. grpcio's BoringSSL takes the trust anchor's constraints
    as given (RFC 5280 section 6.1.1), so a people-CA under such a root works without a new root."""
    old_root = tmp_path / "old-root"
    init_ca(old_root)
    key = load_private_key(read_private_file(old_root / "ca.key"))
    new = _cert(old_root / "ca.crt")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(new.subject)
        .issuer_name(new.subject)
        .public_key(key.public_key())
        .serial_number(new.serial_number)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=10))
    )
    for ext in new.extensions:
        value = (
            x509.BasicConstraints(ca=True, path_length=0)
            if isinstance(ext.value, x509.BasicConstraints)
            else ext.value
        )
        builder = builder.add_extension(value, critical=ext.critical)
    (old_root / "ca.crt").write_bytes(_pem(builder.sign(key, hashes.SHA256())))
    people = tmp_path / "people-ca"
    sign_people_ca(old_root, people_init(people, state="MY"), out_dir=people)
    alice = issue(people, role="investigator", id="MY/alice", out_dir=tmp_path / "alice")
    node = issue(old_root, role="peer", id="MY", out_dir=tmp_path / "node")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    ca_pem = (old_root / "ca.crt").read_bytes()
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(ca_pem, node.cert.read_bytes(), node.key.read_bytes())
    )
    server.start()
    try:
        channel = secure_channel(
            f"127.0.0.1:{port}", ca=ca_pem, cert=alice.cert, key=alice.key, server_name="my.peer.petanda"
        )
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == SERVING
        channel.close()
    finally:
        server.stop(0).wait()
