"""Certificates, identities and mutual TLS against a real gRPC server on 127.0.0.1:0."""

from __future__ import annotations

import datetime as dt
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.errors import ConfigError, PermissionDenied
from client.transport.tls import (
    COUNTRY_CODES,
    Identity,
    channel_credentials,
    identity_from_certificate,
    parse_identity_uri,
    secure_channel,
)
from node.pki import (
    identity_from_context,
    init_ca,
    issue,
    people_init,
    server_credentials,
    server_options,
    sign_people_ca,
)

ASEAN = ("BN", "KH", "ID", "LA", "MY", "MM", "PH", "SG", "TH", "VN", "TL")
WHOAMI = "/petanda.test.Probe/WhoAmI"


# --- identities --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        ("urn:petanda:peer:MY", Identity("peer", "MY")),
        ("urn:petanda:investigator:SG:alice.tan-2", Identity("investigator", "SG", "alice.tan-2")),
        ("urn:petanda:auditor:TL:a_b", Identity("auditor", "TL", "a_b")),
    ],
)
def test_identity_uri_parses(uri: str, identity: Identity) -> None:
    assert parse_identity_uri(uri) == identity
    assert identity.uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "urn:petanda:peer:my",  # lower-case state
        "urn:petanda:peer:XX",  # not an assigned code
        "urn:petanda:peer:MYS",  # alpha-3
        "urn:petanda:peer:MY:alice",  # a peer has no name
        "urn:petanda:investigator:MY",  # a person needs one
        "urn:petanda:investigator:MY:Alice",  # upper case in the name
        "urn:petanda:investigator:MY:" + "a" * 65,
        "urn:petanda:investigator:MY:a/b",
        "urn:petanda:investigator:MY:a:b",
        "urn:petanda:admin:MY:root",
        "URN:petanda:peer:MY",  # exact case only
        "urn:petanda:peer:MY:",
        "urn:other:peer:MY",
        "",
    ],
)
def test_identity_uri_refused(uri: str) -> None:
    with pytest.raises(ConfigError):
        parse_identity_uri(uri)


@given(
    st.sampled_from(["investigator", "auditor"]),
    st.sampled_from(sorted(COUNTRY_CODES)),
    st.from_regex(r"[a-z0-9._-]{1,64}", fullmatch=True),
)
def test_identity_round_trips(role: str, state: str, name: str) -> None:
    identity = Identity(role, state, name)  # type: ignore[arg-type]
    assert parse_identity_uri(identity.uri) == identity
    assert Identity.from_id(identity.role, identity.id) == identity


def test_country_codes_are_iso_alpha2() -> None:
    import phonenumbers

    assert len(COUNTRY_CODES) == 249
    assert set(ASEAN) <= COUNTRY_CODES
    # phonenumbers knows every assigned code but a few uninhabited ones, plus three that are not ISO.
    assert phonenumbers.SUPPORTED_REGIONS - COUNTRY_CODES == {"AC", "TA", "XK"}
    assert COUNTRY_CODES - phonenumbers.SUPPORTED_REGIONS == {"AQ", "BV", "GS", "HM", "PN", "TF", "UM"}


def test_from_id_refuses_mixed_forms() -> None:
    with pytest.raises(ConfigError, match="country code alone"):
        Identity.from_id("peer", "MY/alice")
    with pytest.raises(ConfigError, match="CC/name"):
        Identity.from_id("auditor", "MY")


# --- certificates ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    issue(root / "ca", role="peer", id="MY", out_dir=root / "my")
    issue(root / "ca", role="peer", id="SG", out_dir=root / "sg")
    sign_people_ca(root / "ca", people_init(root / "people-ca", state="MY"), out_dir=root / "people-ca")
    issue(root / "people-ca", role="investigator", id="MY/alice", out_dir=root / "people")
    init_ca(root / "rogue-ca")
    issue(root / "rogue-ca", role="peer", id="SG", out_dir=root / "rogue")
    return root


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_files_and_modes(pki: Path) -> None:
    assert stat.S_IMODE((pki / "ca" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca" / "ca.crt").stat().st_mode) == 0o644
    ca = _cert(pki / "ca" / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1  # it signs the people-CAs
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_init_ca_refuses_to_overwrite(pki: Path) -> None:
    before = (pki / "ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="overwrite"):
        init_ca(pki / "ca")
    assert (pki / "ca" / "ca.key").read_bytes() == before


def test_peer_certificate(pki: Path) -> None:
    cert = _cert(pki / "my" / "MY.crt")
    assert stat.S_IMODE((pki / "my" / "MY.key").stat().st_mode) == 0o600
    assert (pki / "my" / "ca.crt").read_bytes() == (pki / "ca" / "ca.crt").read_bytes()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:petanda:peer:MY"]
    assert san.get_values_for_type(x509.DNSName) == ["my.peer.petanda", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "MY"
    assert cert.issuer == _cert(pki / "ca" / "ca.crt").subject
    assert identity_from_certificate((pki / "my" / "MY.crt").read_bytes()) == Identity("peer", "MY")


def test_person_certificate(pki: Path) -> None:
    path = pki / "people" / "MY-alice.investigator.crt"
    cert = _cert(path)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [] and san.get_values_for_type(x509.IPAddress) == []
    assert identity_from_certificate(path.read_bytes()) == Identity("investigator", "MY", "alice")
    # the file holds the chain the person presents: their certificate, then their state's people-CA
    chain = x509.load_pem_x509_certificates(path.read_bytes())
    assert chain[1] == _cert(pki / "people-ca" / "people-ca.crt")
    cert.verify_directly_issued_by(chain[1])
    assert (pki / "people" / "ca.crt").read_bytes() == (pki / "ca" / "ca.crt").read_bytes()


def test_issue_refuses_bad_requests(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overwrite"):
        issue(pki / "ca", role="peer", id="MY", out_dir=pki / "my")
    with pytest.raises(ConfigError):
        issue(pki / "ca", role="peer", id="my", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="host names"):
        issue(pki / "ca", role="auditor", id="MY/bob", out_dir=tmp_path, hostnames=["x.example"])
    with pytest.raises(ConfigError, match="IP address"):
        issue(pki / "ca", role="peer", id="TH", out_dir=tmp_path, ips=["300.1.1.1"])
    with pytest.raises(ConfigError, match="different CA"):
        issue(pki / "rogue-ca", role="peer", id="TH", out_dir=pki / "my")
    with pytest.raises(ConfigError, match="no CA certificate"):
        issue(tmp_path, role="peer", id="TH", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_issue_is_capped_by_ca_expiry(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca", days=10)
    files = issue(tmp_path / "ca", role="peer", id="VN", out_dir=tmp_path / "vn", days=825)
    assert _cert(files.cert).not_valid_after_utc == _cert(files.ca).not_valid_after_utc


@pytest.mark.parametrize(
    ("uris", "match"),
    [
        ([], "found 0"),
        (["urn:petanda:peer:MY", "urn:petanda:peer:SG"], "found 2"),
        (["urn:petanda:peer:ZZ"], "ZZ"),
    ],
)
def test_identity_from_certificate_needs_exactly_one_valid_uri(
    pki: Path, uris: list[str], match: str
) -> None:
    pem = _forge(pki / "ca", uris)[0]
    with pytest.raises(ConfigError, match=match):
        identity_from_certificate(pem, source="x.crt")


def test_identity_from_certificate_names_file() -> None:
    with pytest.raises(ConfigError, match=r"^bad\.crt: not a PEM"):
        identity_from_certificate(b"garbage", source="bad.crt")


def _forge(
    ca_dir: Path,
    uris: list[str],
    *,
    eku: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    ),
) -> tuple[bytes, bytes]:
    """A certificate signed by the CA at ``ca_dir`` with arbitrary URIs, as a CA operator could mint."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = _cert(ca_dir / "ca.crt")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem


# --- mutual TLS over a real gRPC server ---------------------------------------------------------------


def _who_am_i(request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        return identity_from_context(context).uri.encode()
    except PermissionDenied as exc:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        raise AssertionError("abort returned") from exc


@pytest.fixture(scope="module")
def server(pki: Path) -> Iterator[int]:
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=server_options())
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    srv.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "petanda.test.Probe", {"WhoAmI": grpc.unary_unary_rpc_method_handler(_who_am_i)}
            )
        ]
    )
    creds = server_credentials(
        (pki / "my" / "ca.crt").read_bytes(),
        (pki / "my" / "MY.crt").read_bytes(),
        (pki / "my" / "MY.key").read_bytes(),
    )
    port = srv.add_secure_port("127.0.0.1:0", creds)
    srv.start()
    yield port
    srv.stop(None)


def _sg_channel(pki: Path, port: int, server_name: str | None = None) -> grpc.Channel:
    sg = pki / "sg"
    return secure_channel(
        f"localhost:{port}", ca=sg / "ca.crt", cert=sg / "SG.crt", key=sg / "SG.key", server_name=server_name
    )


def _health(channel: grpc.Channel) -> int:
    with channel:
        return int(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        )


def _whoami(channel: grpc.Channel) -> str:
    with channel:
        return bytes(channel.unary_unary(WHOAMI)(b"", timeout=5)).decode()


def test_peer_with_valid_certificate_is_served(pki: Path, server: int) -> None:
    assert _health(_sg_channel(pki, server)) == health_pb2.HealthCheckResponse.SERVING
    assert _whoami(_sg_channel(pki, server)) == "urn:petanda:peer:SG"


def test_person_identity_reaches_servicer(pki: Path, server: int) -> None:
    people = pki / "people"
    channel = secure_channel(
        f"127.0.0.1:{server}",
        ca=(people / "ca.crt").read_bytes(),
        cert=(people / "MY-alice.investigator.crt").read_bytes(),
        key=(people / "MY-alice.investigator.key").read_bytes(),
    )
    assert parse_identity_uri(_whoami(channel)) == Identity("investigator", "MY", "alice")


def test_client_without_certificate_is_refused(pki: Path, server: int) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "sg" / "ca.crt").read_bytes())
    with pytest.raises(grpc.RpcError) as err:
        _health(grpc.secure_channel(f"localhost:{server}", creds))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_from_another_ca_is_refused(pki: Path, server: int) -> None:
    # It trusts our CA, but its own certificate comes from a rogue CA.
    creds = channel_credentials(
        (pki / "sg" / "ca.crt").read_bytes(),
        (pki / "rogue" / "SG.crt").read_bytes(),
        (pki / "rogue" / "SG.key").read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as err:
        _health(grpc.secure_channel(f"localhost:{server}", creds))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_server_from_another_ca_is_refused(pki: Path, server: int) -> None:
    # The client trusts only the rogue CA: our server's certificate must not verify.
    channel = secure_channel(
        f"localhost:{server}",
        ca=pki / "rogue" / "ca.crt",
        cert=pki / "rogue" / "SG.crt",
        key=pki / "rogue" / "SG.key",
    )
    with pytest.raises(grpc.RpcError) as err:
        _health(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_client_certificate_is_refused(pki: Path, server: int, tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    files = issue(pki / "ca", role="peer", id="TH", out_dir=tmp_path, days=1, now=long_ago)
    with pytest.raises(grpc.RpcError) as err:
        _health(secure_channel(f"localhost:{server}", ca=files.ca, cert=files.cert, key=files.key))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_without_identity_is_denied_by_servicer(pki: Path, server: int) -> None:
    cert, key = _forge(pki / "ca", [])
    channel = secure_channel(f"localhost:{server}", ca=pki / "sg" / "ca.crt", cert=cert, key=key)
    with pytest.raises(grpc.RpcError) as err:
        _whoami(channel)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "found 0" in (err.value.details() or "")


def test_certificate_without_client_auth_is_refused_by_handshake(pki: Path, server: int) -> None:
    cert, key = _forge(pki / "ca", ["urn:petanda:peer:SG"], eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    channel = secure_channel(f"localhost:{server}", ca=pki / "sg" / "ca.crt", cert=cert, key=key)
    with pytest.raises(grpc.RpcError) as err:
        _whoami(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


class _FakeContext:
    """Only what identity_from_context reads: the auth context of a call."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def test_identity_from_context_checks_itself(pki: Path) -> None:
    # Defence in depth: refused even if the handshake were configured to let these through.
    good = (pki / "sg" / "SG.crt").read_bytes()
    ctx = _FakeContext({"transport_security_type": [b"ssl"], "x509_pem_cert": [good]})
    assert identity_from_context(ctx) == Identity("peer", "SG")
    server_only = _forge(pki / "ca", ["urn:petanda:peer:SG"], eku=(ExtendedKeyUsageOID.SERVER_AUTH,))[0]
    for auth in (
        {"transport_security_type": [b"insecure"], "x509_pem_cert": [good]},
        {"transport_security_type": [b"ssl"]},
        {"transport_security_type": [b"ssl"], "x509_pem_cert": [server_only]},
        {"transport_security_type": [b"ssl"], "x509_pem_cert": [b"garbage"]},
    ):
        with pytest.raises(PermissionDenied):
            identity_from_context(_FakeContext(auth))


def test_server_certificate_must_name_the_host(pki: Path, server: int) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _health(_sg_channel(pki, server, server_name="other.example"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


# --- local errors name the file ------------------------------------------------------------------------


def test_secure_channel_names_missing_file(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.crt: cannot read"):
        secure_channel(
            "localhost:1", ca=tmp_path / "nope.crt", cert=pki / "sg" / "SG.crt", key=pki / "sg" / "SG.key"
        )


def test_secure_channel_refuses_open_key_file(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "SG.key"
    key.write_bytes((pki / "sg" / "SG.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"SG\.key: permissions 0644 are too open"):
        secure_channel("localhost:1", ca=pki / "sg" / "ca.crt", cert=pki / "sg" / "SG.crt", key=key)


def test_secure_channel_refuses_mismatched_key(pki: Path) -> None:
    with pytest.raises(ConfigError, match=r"MY\.key: private key does not match"):
        secure_channel(
            "localhost:1", ca=pki / "sg" / "ca.crt", cert=pki / "sg" / "SG.crt", key=pki / "my" / "MY.key"
        )


def test_secure_channel_refuses_garbage_certificate(pki: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"bad\.crt: not a PEM X\.509 certificate"):
        secure_channel("localhost:1", ca=pki / "sg" / "ca.crt", cert=bad, key=pki / "sg" / "SG.key")


def test_server_credentials_refuse_mismatched_key(pki: Path) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        server_credentials(
            (pki / "my" / "ca.crt").read_bytes(),
            (pki / "my" / "MY.crt").read_bytes(),
            (pki / "sg" / "SG.key").read_bytes(),
        )
