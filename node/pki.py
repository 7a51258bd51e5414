"""The federation's certificates: a CA, certificates for peers and people, and mutual TLS on the server.

Keys are ECDSA P-256 with SHA-256 signatures: grpcio's BoringSSL does not offer Ed25519 among the
TLS signature algorithms (a handshake with Ed25519 certificates fails with
``NO_COMMON_SIGNATURE_ALGORITHMS``). The identity scheme is in :mod:`client.transport.tls` and in
``docs/operators.md``.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client.protocol.errors import ConfigError, PermissionDenied
from client.transport.tls import (
    DEFAULT_KEEPALIVE_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    Identity,
    Role,
    identity_from_certificate,
    load_certificate,
    load_private_key,
    peer_server_name,
    read_private_file,
)
from node.keys import write_private_file, write_public_file

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CERT_DAYS",
    "IssuedFiles",
    "identity_from_context",
    "init_ca",
    "issue",
    "server_credentials",
    "server_options",
]

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
DEFAULT_CA_DAYS: Final = 3650
DEFAULT_CERT_DAYS: Final = 825
#: Certificates start to be valid this long before they are issued, to tolerate clock skew.
BACKDATE: Final = dt.timedelta(minutes=5)
_ORG: Final = "Petanda federation"


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """The files :func:`issue` wrote."""

    cert: Path
    key: Path
    ca: Path


def _now(now: dt.datetime | None) -> dt.datetime:
    return dt.datetime.now(dt.UTC) if now is None else now.astimezone(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(
    dir: Path,
    *,
    name: str = "Petanda federation CA",
    days: int = DEFAULT_CA_DAYS,
    now: dt.datetime | None = None,
) -> Path:
    """Create the federation CA: ``ca.crt`` (0644) and ``ca.key`` (0600) in ``dir``; return ``ca.crt``.

    Raises:
        ConfigError: either file exists already, or ``days`` is not positive.
    """
    dir = Path(dir)
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}")
    for file in (CA_CERT_FILE, CA_KEY_FILE):
        if (dir / file).exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(dir / file))
    start = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG), x509.NameAttribute(NameOID.COMMON_NAME, name)]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    dir.mkdir(parents=True, exist_ok=True)
    write_private_file(dir / CA_KEY_FILE, _key_pem(key))
    write_public_file(dir / CA_CERT_FILE, _pem(cert))
    return dir / CA_CERT_FILE


def _file_stem(identity: Identity) -> str:
    return identity.state if identity.name is None else f"{identity.state}-{identity.name}.{identity.role}"


def issue(
    ca_dir: Path,
    *,
    role: Role,
    id: str,
    out_dir: Path,
    hostnames: Sequence[str] | None = None,
    ips: Sequence[str] | None = None,
    days: int = DEFAULT_CERT_DAYS,
    now: dt.datetime | None = None,
) -> IssuedFiles:
    """Issue a certificate and key for a peer (``id="MY"``) or a person (``id="MY/alice"``).

    Writes ``<stem>.crt`` (0644), ``<stem>.key`` (0600) and a copy of ``ca.crt`` in ``out_dir``, where
    the stem is the node id for a peer and ``CC-name.role`` for a person (``MY-alice.investigator``).

    A peer certificate carries, besides ``hostnames`` and ``ips``, the DNS name ``<id>.peer.petanda``
    (lower-case, :func:`client.transport.tls.peer_server_name`): the name its callers verify, so that a
    certificate of one member cannot pass for another member's server.

    Args:
        ca_dir: directory holding ``ca.crt`` and ``ca.key``.
        role: ``peer``, ``investigator`` or ``auditor``.
        id: the node id, or ``CC/name`` for a person.
        out_dir: where to write the files.
        hostnames: DNS names the peer serves under (default ``["localhost"]``); people have none.
        ips: IP addresses the peer serves on (default ``["127.0.0.1"]``); people have none.
        days: validity in days, capped by the CA's own expiry.
        now: issue time (default: the current time).

    Raises:
        ConfigError: invalid identity, hostname (or one under ``.petanda``) or IP; host names for a
            person; a file already exists (``ca.crt`` may exist if it is the same CA certificate);
            unreadable CA files.
    """
    identity = Identity.from_id(role, id)
    if role == "peer":
        hostnames = ["localhost"] if hostnames is None else list(hostnames)
        ips = ["127.0.0.1"] if ips is None else list(ips)
    elif hostnames or ips:
        raise ConfigError(f"an {role} certificate carries no host names or IP addresses")
    else:
        hostnames, ips = [], []
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}")
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if role == "peer":
        san.append(x509.DNSName(peer_server_name(identity.state)))
    for host in hostnames:
        try:
            name = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ConfigError(f"invalid host name {host!r}") from None
        if name == "petanda" or name.endswith(".petanda"):
            raise ConfigError(f"host name {host!r}: names under .petanda are reserved for node identities")
        san.append(x509.DNSName(name))
    for ip in ips:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ConfigError(f"invalid IP address {ip!r}") from None

    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert_pem = (ca_dir / CA_CERT_FILE).read_bytes() if (ca_dir / CA_CERT_FILE).exists() else None
    if ca_cert_pem is None:
        raise ConfigError("no CA certificate here (run init-ca first)", path=str(ca_dir / CA_CERT_FILE))
    ca_cert = load_certificate(ca_cert_pem, source=str(ca_dir / CA_CERT_FILE))
    ca_key = load_private_key(read_private_file(ca_dir / CA_KEY_FILE), source=str(ca_dir / CA_KEY_FILE))

    stem = _file_stem(identity)
    paths = IssuedFiles(out_dir / f"{stem}.crt", out_dir / f"{stem}.key", out_dir / CA_CERT_FILE)
    for path in (paths.cert, paths.key):
        if path.exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(path))
    if paths.ca.exists() and paths.ca.read_bytes() != ca_cert_pem:
        raise ConfigError("a different CA certificate is already there", path=str(paths.ca))

    start = _now(now)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    eku = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if role == "peer"
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, identity.state),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_private_file(paths.key, _key_pem(key))
    write_public_file(paths.cert, _pem(cert))
    if not paths.ca.exists():
        write_public_file(paths.ca, ca_cert_pem)
    return paths


def server_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    """Server credentials for mutual TLS: a client must present a certificate from the federation CA.

    Raises:
        ConfigError: a PEM does not parse, the key is not ECDSA P-256, or it does not match the certificate.
    """
    load_certificate(ca_pem, source="CA certificate")
    cert = load_certificate(cert_pem, source="certificate")
    key = load_private_key(key_pem, source="private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError("the private key does not match the server certificate")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


def server_options(
    *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive_ms: int = DEFAULT_KEEPALIVE_MS
) -> list[tuple[str, int]]:
    """gRPC server options matching :func:`client.transport.tls.channel_options`: size limits, keepalive
    policy."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Clients ping every keepalive_ms on open calls; allow twice that rate before GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.http2.max_ping_strikes", 2),
    ]


@functools.lru_cache(maxsize=1024)
def _identity_of(pem: bytes) -> Identity:
    identity = identity_from_certificate(pem)
    cert = x509.load_pem_x509_certificate(pem)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ConfigError("certificate lacks basicConstraints or extendedKeyUsage") from None
    if bc.ca or ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ConfigError("certificate is not an end-entity certificate for TLS client authentication")
    return identity


def identity_from_context(context: grpc.ServicerContext) -> Identity:
    """The caller's identity, from the client certificate that the TLS handshake verified.

    Raises:
        PermissionDenied: the call is not over TLS, there is no client certificate, or it carries no
            valid petanda identity.
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        raise PermissionDenied("the call is not over TLS")
    pems = auth.get("x509_pem_cert")
    if not pems or len(pems) != 1:
        raise PermissionDenied("no client certificate")
    try:
        return _identity_of(pems[0])
    except ConfigError as exc:
        raise PermissionDenied(f"client certificate refused: {exc.reason}") from None
