"""The federation's certificates: a CA, certificates for peers and people, their renewal and revocation
(a CRL signed by the CA), and mutual TLS on the server.

Keys are ECDSA P-256 with SHA-256 signatures: grpcio's BoringSSL does not offer Ed25519 among the
TLS signature algorithms (a handshake with Ed25519 certificates fails with
``NO_COMMON_SIGNATURE_ALGORITHMS``). The identity scheme is in :mod:`client.transport.tls` and in
``docs/operators.md``.

Lifetimes are short on purpose (:data:`DEFAULT_PEER_DAYS`): grpcio gives a client no view of the server's
certificate, so only servers enforce the CRL, and a stolen, revoked node key can still pass for that
node to the nodes and people who call it until its certificate expires. ``ca renew`` makes renewal
cheap. The CA directory holds ``ca.crt``, ``ca.key``, ``issued.jsonl`` (one line per certificate issued:
serial, role, id, expiry) and ``crl.pem`` (the newest CRL).

People have CAs of their own, one per state (ADR 0013): the federation CA signs node certificates and
each state's *people-CA* (:func:`people_init` makes its key and request in the state,
:func:`sign_people_ca` signs it at the federation CA); investigators and auditors are issued by their
state's people-CA. A people-CA directory holds ``people-ca.key``, ``people-ca.crt``, ``ca.crt`` (the
federation CA, the trust anchor every party keeps), its own ``issued.jsonl`` and ``crl.pem``; :func:`issue`,
:func:`renew`, :func:`revoke` and :func:`sign_crl` work on either kind of directory.

One module of this size: CA, issuance, renewal and revocation share the CA's files and its serial registry.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from client.protocol.errors import ConfigError, PermissionDenied
from client.transport.tls import (
    DEFAULT_KEEPALIVE_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    Identity,
    Role,
    check_country_code,
    identity_from_certificate,
    load_certificate,
    load_private_key,
    peer_server_name,
    read_private_file,
)
from node.crl import REASONS, CrlError, crl_number, parse_crl, reason_name, verify_crl
from node.keys import replace_public_file, write_private_file, write_public_file

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CRL_FILE",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CRL_DAYS",
    "DEFAULT_PEER_DAYS",
    "DEFAULT_PEOPLE_CA_DAYS",
    "DEFAULT_PERSON_DAYS",
    "ISSUED_FILE",
    "PEOPLE_CA_CERT_FILE",
    "PEOPLE_CA_CSR_FILE",
    "PEOPLE_CA_KEY_FILE",
    "IssuedFiles",
    "Renewal",
    "Revocation",
    "certificate_from_context",
    "identity_from_context",
    "init_ca",
    "issue",
    "parse_serial",
    "people_ca_state",
    "people_init",
    "renew",
    "revoke",
    "serial_from_context",
    "server_credentials",
    "server_options",
    "sign_crl",
    "sign_people_ca",
]

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
#: The CA's newest CRL, in its directory: what operators distribute (``tls.crl`` of one node suffices).
CRL_FILE: Final = "crl.pem"
#: One JSON line per certificate the CA issued: what ``ca revoke --serial`` checks a serial against.
ISSUED_FILE: Final = "issued.jsonl"
DEFAULT_CA_DAYS: Final = 3650
#: A state's people-CA: the federation CA signs it once; renewing it with the same key changes no person.
DEFAULT_PEOPLE_CA_DAYS: Final = 1825
#: Files of a people-CA directory, besides ``ca.crt`` (the federation CA), ``issued.jsonl`` and ``crl.pem``.
PEOPLE_CA_KEY_FILE: Final = "people-ca.key"
PEOPLE_CA_CSR_FILE: Final = "people-ca.csr"
PEOPLE_CA_CERT_FILE: Final = "people-ca.crt"
#: The organisational unit of a people-CA's subject (the country attribute names its state).
PEOPLE_CA_UNIT: Final = "people"
#: Node certificates: a stolen, revoked node key passes for that node to its callers until expiry.
DEFAULT_PEER_DAYS: Final = 90
#: Investigators and auditors: servers enforce the CRL against them, so only leaks before revocation count.
DEFAULT_PERSON_DAYS: Final = 365
#: Days from a CRL's signature to its next-update time: the CA re-signs it (``ca crl``) before then.
DEFAULT_CRL_DAYS: Final = 7
#: Certificates start to be valid this long before they are issued, to tolerate clock skew.
BACKDATE: Final = dt.timedelta(minutes=5)
_ORG: Final = "Petanda federation"
#: RFC 5280: a serial number is a positive integer of at most 20 octets.
_MAX_SERIAL: Final = (1 << 159) - 1


#: keyUsage of a certificate authority (the federation CA and every people-CA): certificates and CRLs.
_CA_USAGE: Final = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


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
        # pathLen 1: the federation CA signs the states' people-CAs, which sign only people (pathLen 0).
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_USAGE, critical=True)
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


def _default_days(role: Role) -> int:
    return DEFAULT_PEER_DAYS if role == "peer" else DEFAULT_PERSON_DAYS


@dataclass(frozen=True, slots=True)
class _Authority:
    """The CA of a directory: the federation CA, or a state's people-CA under it."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    #: The federation CA (``ca.crt``): the trust anchor copied to every holder of a certificate.
    root: x509.Certificate
    root_pem: bytes
    #: What follows each certificate issued in its file: nothing for the federation CA, the people-CA's
    #: own certificate for a people-CA (a person presents the chain; nodes trust the federation CA only).
    chain_pem: bytes
    #: The state of a people-CA; None for the federation CA.
    state: str | None


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _load_ca(ca_dir: Path) -> _Authority:
    """The federation CA in ``ca_dir`` (``ca.crt``, ``ca.key``), or the people-CA there
    (``people-ca.crt``, ``people-ca.key`` and the federation's ``ca.crt``)."""
    path = ca_dir / CA_CERT_FILE
    key_path = ca_dir / PEOPLE_CA_KEY_FILE
    if key_path.exists() and not (path.exists() and (ca_dir / PEOPLE_CA_CERT_FILE).exists()):
        raise ConfigError(
            f"no people-CA certificate yet: send {PEOPLE_CA_CSR_FILE} to the federation CA "
            f"(ca sign-people-ca) and put the {PEOPLE_CA_CERT_FILE} and {CA_CERT_FILE} it returns here",
            path=str(ca_dir),
        )
    if not path.exists():
        raise ConfigError("no CA certificate here (run ca init first)", path=str(path))
    root_pem = path.read_bytes()
    root = load_certificate(root_pem, source=str(path))
    if not key_path.exists():
        key = load_private_key(read_private_file(ca_dir / CA_KEY_FILE), source=str(ca_dir / CA_KEY_FILE))
        return _Authority(root, key, root, root_pem, b"", None)
    if (ca_dir / CA_KEY_FILE).exists():
        raise ConfigError(
            f"holds both {CA_KEY_FILE} and {PEOPLE_CA_KEY_FILE}: keep a people-CA in a directory of its own",
            path=str(ca_dir),
        )
    key = load_private_key(read_private_file(key_path), source=str(key_path))
    cert_path = ca_dir / PEOPLE_CA_CERT_FILE
    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(cert_path)) from None
    cert = load_certificate(pem, source=str(cert_path))
    state = people_ca_state(cert, root, source=str(cert_path))
    if not _same_key(cert, key):
        raise ConfigError(f"{PEOPLE_CA_KEY_FILE} does not match this certificate", path=str(cert_path))
    return _Authority(cert, key, root, root_pem, pem, state)


def _people_ca_subject(state: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, state),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, PEOPLE_CA_UNIT),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Petanda people CA {state}"),
        ]
    )


def people_ca_state(cert: x509.Certificate, root: x509.Certificate, *, source: str | None = None) -> str:
    """The state of a people-CA certificate, once checked: signed by the federation CA ``root``, a CA
    limited to issuing end entities (pathLen 0) for TLS clients (extKeyUsage clientAuth only), whose
    subject names one state (``C=<CC>, OU=people``).

    Raises:
        ConfigError: naming ``source``, what the certificate lacks.
    """
    if not _is_issued_by(cert, root):
        raise ConfigError("not signed by the federation CA (issuer or signature differ)", path=source)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise ConfigError(
            "not a people-CA certificate: lacks basicConstraints, keyUsage or extKeyUsage", path=source
        ) from None
    if not bc.ca or bc.path_length != 0 or not usage.key_cert_sign:
        raise ConfigError("not a people-CA certificate: must be a CA with pathLen 0", path=source)
    if list(eku) != [ExtendedKeyUsageOID.CLIENT_AUTH]:
        raise ConfigError("not a people-CA certificate: its extKeyUsage must be clientAuth only", path=source)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    states = cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)
    if [u.value for u in units] != [PEOPLE_CA_UNIT] or len(states) != 1:
        raise ConfigError(
            f"not a people-CA certificate: its subject needs one C=<state> and OU={PEOPLE_CA_UNIT}",
            path=source,
        )
    state = states[0].value
    assert isinstance(state, str)
    try:
        return check_country_code(state, what="people-CA state")
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=source) from None


def _ca_copy(out_dir: Path, root_pem: bytes) -> Path:
    """Where the copy of the federation CA goes in ``out_dir``; refused if another one is there."""
    path = out_dir / CA_CERT_FILE
    if path.exists() and path.read_bytes() != root_pem:
        raise ConfigError("a different CA certificate is already there", path=str(path))
    return path


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(path))


def people_init(dir: Path, *, state: str) -> Path:
    """Make a people-CA for ``state``: its key ``people-ca.key`` (0600) and a certificate signing request
    ``people-ca.csr`` (0644) for the federation CA to sign (:func:`sign_people_ca`); return the request.

    The key never leaves the state: the federation CA's operator sees only the request.

    Raises:
        ConfigError: an invalid state; either file exists, or ``dir`` holds the federation CA's key.
    """
    check_country_code(state, what="state")
    dir = Path(dir)
    _refuse_existing(dir / PEOPLE_CA_KEY_FILE, dir / PEOPLE_CA_CSR_FILE)
    if (dir / CA_KEY_FILE).exists():
        raise ConfigError(
            "holds the federation CA: keep a people-CA in a directory of its own", path=str(dir)
        )
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_people_ca_subject(state))
        .sign(key, hashes.SHA256())
    )
    dir.mkdir(parents=True, exist_ok=True)
    write_private_file(dir / PEOPLE_CA_KEY_FILE, _key_pem(key))
    write_public_file(dir / PEOPLE_CA_CSR_FILE, request.public_bytes(serialization.Encoding.PEM))
    return dir / PEOPLE_CA_CSR_FILE


@dataclass(frozen=True, slots=True)
class PeopleCa:
    """What :func:`sign_people_ca` wrote: the people-CA certificate, a copy of ``ca.crt``, its state."""

    cert: Path
    ca: Path
    state: str
    serial: int


def sign_people_ca(
    ca_dir: Path,
    csr: Path,
    *,
    out_dir: Path,
    days: int = DEFAULT_PEOPLE_CA_DAYS,
    now: dt.datetime | None = None,
) -> PeopleCa:
    """Sign a state's people-CA request at the federation CA in ``ca_dir``.

    Only the request's key and its state (``C=``) are taken from it; the rest of the certificate is the
    people-CA profile: CA with pathLen 0, keyUsage keyCertSign and cRLSign, extKeyUsage clientAuth only
    (so it cannot mint a server certificate that anyone accepts), validity ``days`` capped by the
    federation CA's. Writes ``people-ca.crt`` and a copy of ``ca.crt`` into ``out_dir`` (never over a
    file) and records the serial in ``issued.jsonl`` (role ``people-ca``): revoke a people-CA like any
    certificate, and every person it issued is refused.

    Raises:
        ConfigError: ``ca_dir`` is not the federation CA; the request does not parse, its signature does
            not verify, its key is not P-256 or it names no single valid state; a file exists.
    """
    ca_dir, out_dir, csr = Path(ca_dir), Path(out_dir), Path(csr)
    authority = _load_ca(ca_dir)
    if authority.state is not None:
        raise ConfigError("a people-CA cannot sign people-CAs; the federation CA does", path=str(ca_dir))
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}", key="days")
    try:
        request = x509.load_pem_x509_csr(csr.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(csr)) from None
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate signing request ({exc})", path=str(csr)) from None
    if not request.is_signature_valid:
        raise ConfigError("the request's signature does not verify under its key", path=str(csr))
    public_key = request.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ConfigError("the request's key must be an ECDSA P-256 key", path=str(csr))
    states = request.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)
    units = request.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(states) != 1 or [u.value for u in units] != [PEOPLE_CA_UNIT]:
        raise ConfigError(
            "not a people-CA request (ca people-init): its subject needs one C=<state> and "
            f"OU={PEOPLE_CA_UNIT}",
            path=str(csr),
        )
    state = str(states[0].value)
    try:
        check_country_code(state, what="the request's state")
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=str(csr)) from None
    cert_path = out_dir / PEOPLE_CA_CERT_FILE
    _refuse_existing(cert_path)
    ca_path = _ca_copy(out_dir, authority.root_pem)
    start = _now(now)
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_people_ca_subject(state))
        .issuer_name(authority.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(min(start + dt.timedelta(days=days), authority.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_public_file(cert_path, _pem(cert))
    if not ca_path.exists():
        write_public_file(ca_path, authority.root_pem)
    _record_issued(ca_dir, "people-ca", state, cert, renews=None)
    return PeopleCa(cert_path, ca_path, state, cert.serial_number)


def _may_issue(authority: _Authority, identity: Identity, *, root_person: bool = False) -> None:
    """Refuse what this CA must not issue: nodes from a people-CA, people of another state, and people
    from the federation CA (unless ``root_person``, a migration's test of old certificates)."""
    if authority.state is not None:
        if identity.role == "peer":
            raise ConfigError(
                "a people-CA issues investigators and auditors only; node certificates come from the "
                "federation CA",
                key="role",
            )
        if identity.state != authority.state:
            raise ConfigError(
                f"this is the people-CA of {authority.state}: it cannot issue {identity}", key="id"
            )
    elif identity.role != "peer" and not root_person:
        raise ConfigError(
            f"the federation CA issues nodes and people-CAs, not people: issue {identity} with the "
            f"people-CA of {identity.state} (ca people-init, ca sign-people-ca)",
            key="role",
        )


def _san(identity: Identity, hostnames: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if identity.role == "peer":
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
    return san


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    identity: Identity,
    public_key: ec.EllipticCurvePublicKey,
    san: list[x509.GeneralName],
    *,
    days: int,
    now: dt.datetime | None,
) -> x509.Certificate:
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}")
    start = _now(now)
    end = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    eku = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if identity.role == "peer"
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, identity.state),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _record_issued(ca_dir: Path, role: str, id: str, cert: x509.Certificate, *, renews: int | None) -> None:
    """Append one line to the CA's ``issued.jsonl`` (created 0644)."""
    line = {
        "serial": f"{cert.serial_number:x}",
        "role": role,
        "id": id,
        "not_after": cert.not_valid_after_utc.isoformat(),
    }
    if renews is not None:
        line["renews"] = f"{renews:x}"
    fd = os.open(ca_dir / ISSUED_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def issued(ca_dir: Path) -> dict[int, dict[str, str]]:
    """The certificates the CA in ``ca_dir`` recorded as issued, by serial (empty if none recorded)."""
    path = Path(ca_dir) / ISSUED_FILE
    try:
        lines = path.read_text("ascii").splitlines()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    result: dict[int, dict[str, str]] = {}
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            result[int(item["serial"], 16)] = item
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"line {number} is not a record of an issued certificate", path=str(path)
            ) from None
    return result


def issue(
    ca_dir: Path,
    *,
    role: Role,
    id: str,
    out_dir: Path,
    hostnames: Sequence[str] | None = None,
    ips: Sequence[str] | None = None,
    days: int | None = None,
    now: dt.datetime | None = None,
    root_person: bool = False,
) -> IssuedFiles:
    """Issue a certificate and key for a peer (``id="MY"``) at the federation CA, or for a person
    (``id="MY/alice"``) at the people-CA of the person's state.

    Writes ``<stem>.crt`` (0644), ``<stem>.key`` (0600) and a copy of ``ca.crt`` (the federation CA) in
    ``out_dir``, where the stem is the node id for a peer and ``CC-name.role`` for a person
    (``MY-alice.investigator``), and records the serial in the CA's ``issued.jsonl``. A person's
    ``<stem>.crt`` holds the chain: the person's certificate, then the people-CA's.

    A peer certificate carries, besides ``hostnames`` and ``ips``, the DNS name ``<id>.peer.petanda``
    (lower-case, :func:`client.transport.tls.peer_server_name`): the name its callers verify, so that a
    certificate of one member cannot pass for another member's server.

    Args:
        ca_dir: the federation CA's directory (``ca.crt``, ``ca.key``) for a peer, a people-CA's
            (``people-ca.crt``, ``people-ca.key``, ``ca.crt``) for a person.
        role: ``peer``, ``investigator`` or ``auditor``.
        id: the node id, or ``CC/name`` for a person.
        out_dir: where to write the files.
        hostnames: DNS names the peer serves under (default ``["localhost"]``); people have none.
        ips: IP addresses the peer serves on (default ``["127.0.0.1"]``); people have none.
        days: validity in days (default :data:`DEFAULT_PEER_DAYS` for a peer,
            :data:`DEFAULT_PERSON_DAYS` for a person), capped by the CA's own expiry.
        now: issue time (default: the current time).
        root_person: let the federation CA issue a person, as before the people-CAs (tests of a
            migration's old certificates; no command offers it).

    Raises:
        ConfigError: invalid identity, hostname (or one under ``.petanda``) or IP; host names for a
            person; a person at the federation CA, a peer or another state's person at a people-CA;
            a file already exists (``ca.crt`` may exist if it is the same CA certificate); unreadable
            CA files.
    """
    identity = Identity.from_id(role, id)
    if role == "peer":
        hostnames = ["localhost"] if hostnames is None else list(hostnames)
        ips = ["127.0.0.1"] if ips is None else list(ips)
    elif hostnames or ips:
        raise ConfigError(f"an {role} certificate carries no host names or IP addresses")
    else:
        hostnames, ips = [], []
    days = _default_days(role) if days is None else days
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}")
    san = _san(identity, hostnames, ips)

    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    authority = _load_ca(ca_dir)
    _may_issue(authority, identity, root_person=root_person)
    stem = _file_stem(identity)
    paths = IssuedFiles(out_dir / f"{stem}.crt", out_dir / f"{stem}.key", out_dir / CA_CERT_FILE)
    _refuse_existing(paths.cert, paths.key)
    _ca_copy(out_dir, authority.root_pem)

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(authority.cert, authority.key, identity, key.public_key(), san, days=days, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_private_file(paths.key, _key_pem(key))
    write_public_file(paths.cert, _pem(cert) + authority.chain_pem)
    if not paths.ca.exists():
        write_public_file(paths.ca, authority.root_pem)
    _record_issued(ca_dir, identity.role, identity.id, cert, renews=None)
    return paths


@dataclass(frozen=True, slots=True)
class Renewal:
    """What :func:`renew` wrote: the new certificate, its key when a new one was made, and the serials."""

    cert: Path
    key: Path | None
    ca: Path
    serial: int
    old_serial: int


def _is_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert`` issued ``cert``: its name is the issuer's and its key verifies the signature."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, source: str) -> None:
    if not _is_issued_by(cert, ca_cert):
        raise ConfigError("not a certificate of this CA (issuer or signature differ)", path=source)


def renew(
    ca_dir: Path,
    cert: Path,
    *,
    out_dir: Path,
    new_key: bool = False,
    days: int | None = None,
    now: dt.datetime | None = None,
) -> Renewal:
    """Reissue a certificate of this CA: the same identity, host names and IP addresses, a new serial
    and a new validity; the same public key unless ``new_key``.

    At a people-CA it also takes a person of its state whom the federation CA issued directly (before
    the people-CAs): the migration's reissue, under the people-CA, with the person's key.

    Writes ``<stem>.crt`` (and with ``new_key`` ``<stem>.key``, 0600) and a copy of ``ca.crt`` into
    ``out_dir``, which must not hold them: nothing is ever overwritten. The old certificate stays valid
    until it expires or is revoked (``ca revoke --reason superseded``).

    Raises:
        ConfigError: the certificate is unreadable or not issued by this CA; this CA may not issue it
            now (a person at the federation CA); its key is revoked for ``keyCompromise`` and
            ``new_key`` is not set; a file exists in ``out_dir``.
    """
    ca_dir, out_dir, cert = Path(ca_dir), Path(out_dir), Path(cert)
    authority = _load_ca(ca_dir)
    try:
        old_pem = cert.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(cert)) from None
    old = load_certificate(old_pem, source=str(cert))
    identity = identity_from_certificate(old_pem, source=str(cert))
    migrating = authority.state is not None and identity.role != "peer" and _is_issued_by(old, authority.root)
    if not migrating:
        _issued_by(old, authority.cert, source=str(cert))
    _may_issue(authority, identity)
    crl = _ca_crl(ca_dir, authority.cert)
    entry = None if crl is None else crl.get_revoked_certificate_by_serial_number(old.serial_number)
    if entry is not None and reason_name(entry) == "keyCompromise" and not new_key:
        raise ConfigError(
            "this certificate's key is revoked as compromised: renew it with a new key (--new-key)",
            path=str(cert),
        )
    san_ext = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    peer_name = peer_server_name(identity.state)
    hostnames = [n for n in san_ext.get_values_for_type(x509.DNSName) if n != peer_name]
    ips = [str(ip) for ip in san_ext.get_values_for_type(x509.IPAddress)]
    san = _san(identity, hostnames, ips)

    stem = _file_stem(identity)
    paths = IssuedFiles(out_dir / f"{stem}.crt", out_dir / f"{stem}.key", out_dir / CA_CERT_FILE)
    _refuse_existing(*((paths.cert, paths.key) if new_key else (paths.cert,)))
    _ca_copy(out_dir, authority.root_pem)

    key = ec.generate_private_key(ec.SECP256R1()) if new_key else None
    public_key = key.public_key() if key is not None else old.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ConfigError("the certificate's key is not an ECDSA key", path=str(cert))
    days = _default_days(identity.role) if days is None else days
    fresh = _leaf(authority.cert, authority.key, identity, public_key, san, days=days, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    if key is not None:
        write_private_file(paths.key, _key_pem(key))
    write_public_file(paths.cert, _pem(fresh) + authority.chain_pem)
    if not paths.ca.exists():
        write_public_file(paths.ca, authority.root_pem)
    _record_issued(ca_dir, identity.role, identity.id, fresh, renews=old.serial_number)
    return Renewal(
        paths.cert, paths.key if key is not None else None, paths.ca, fresh.serial_number, old.serial_number
    )


# --- revocation ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocation:
    """What :func:`revoke` or :func:`sign_crl` wrote: the CRL file, its number, next update and size."""

    path: Path
    number: int
    next_update: dt.datetime
    revoked: int


def parse_serial(text: str) -> int:
    """A certificate serial number written in hex (``4a3f…``, ``0x4A3F…`` or ``4A:3F:…``).

    Raises:
        ConfigError: (key ``serial``) not hex, zero, or longer than RFC 5280's 20 octets.
    """
    digits = text.strip().lower().removeprefix("0x").replace(":", "")
    if not digits or not digits.isascii() or any(c not in "0123456789abcdef" for c in digits):
        raise ConfigError(f"{text!r} is not a serial number in hex (e.g. 4a3f0c…)", key="serial")
    value = int(digits, 16)
    if not 0 < value <= _MAX_SERIAL:
        raise ConfigError(f"{text!r} is not a positive serial number of at most 20 octets", key="serial")
    return value


def _ca_crl(ca_dir: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    path = ca_dir / CRL_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    try:
        crl = parse_crl(data)
        verify_crl(crl, ca_cert, issuer="this CA")
    except CrlError as exc:
        raise ConfigError(f"{exc}; restore the CA's last CRL", path=str(path)) from None
    return crl


def _write_crl(
    ca_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    previous: x509.CertificateRevocationList | None,
    entries: Sequence[x509.RevokedCertificate],
    *,
    days: int,
    now: dt.datetime | None,
) -> Revocation:
    if days < 1:
        raise ConfigError(f"a CRL must be valid for at least 1 day, got {days}", key="days")
    start = _now(now)
    # Increasing even if crl.pem were lost: never below the signing time in seconds.
    number = max(crl_number(previous) + 1 if previous is not None else 1, int(start.timestamp()))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start - BACKDATE)
        .next_update(start + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    path = ca_dir / CRL_FILE
    replace_public_file(path, crl.public_bytes(serialization.Encoding.PEM))
    assert crl.next_update_utc is not None
    return Revocation(path, number, crl.next_update_utc, len(entries))


def revoke(
    ca_dir: Path,
    *,
    serial: int | None = None,
    cert: Path | None = None,
    reason: str,
    days: int = DEFAULT_CRL_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Revocation:
    """Revoke a certificate of this CA: add it to the CA's CRL (``crl.pem``, created if absent) and sign
    the CRL again with the next CRL number and a next update ``days`` from now.

    Give the certificate by ``serial`` or by its file ``cert`` (checked to be issued by this CA). A
    serial must be one the CA recorded in ``issued.jsonl`` unless ``force`` (certificates issued before
    that file existed).

    Raises:
        ConfigError: neither or both of ``serial`` and ``cert``; an unknown ``reason`` (key ``reason``);
            a serial that is the CA's own, unknown to the CA, or already revoked (key ``serial``); a
            certificate file of another CA.
    """
    if (serial is None) == (cert is None):
        raise ConfigError(
            "give the certificate to revoke by its serial or by its file, not both", key="serial"
        )
    flag = REASONS.get(reason)
    if flag is None:
        raise ConfigError(
            f"{reason!r} is not a revocation reason; one of: {', '.join(REASONS)}", key="reason"
        )
    ca_dir = Path(ca_dir)
    authority = _load_ca(ca_dir)
    ca_cert, ca_key = authority.cert, authority.key
    if cert is not None:
        try:
            leaf = load_certificate(Path(cert).read_bytes(), source=str(cert))
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(cert)) from None
        _issued_by(leaf, ca_cert, source=str(cert))
        serial = leaf.serial_number
    assert serial is not None
    shown = f"{serial:x}"
    if serial == ca_cert.serial_number:
        raise ConfigError(f"{shown} is the CA certificate's own serial", key="serial")
    if cert is None and not force and serial not in issued(ca_dir):
        raise ConfigError(
            f"{shown} is not in {ca_dir / ISSUED_FILE}: not a certificate of this CA? Revoke by --cert "
            "FILE, or pass --force for a certificate issued before that file existed",
            key="serial",
        )
    previous = _ca_crl(ca_dir, ca_cert)
    entries = list(previous) if previous is not None else []
    for entry in entries:
        if entry.serial_number == serial:
            raise ConfigError(
                f"{shown} is already revoked ({reason_name(entry)}, "
                f"{entry.revocation_date_utc.date().isoformat()})",
                key="serial",
            )
    revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(_now(now))
    if flag is not x509.ReasonFlags.unspecified:  # RFC 5280: omit reasonCode rather than say unspecified
        revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
    entries.append(revoked.build())
    return _write_crl(ca_dir, ca_cert, ca_key, previous, entries, days=days, now=now)


def sign_crl(ca_dir: Path, *, days: int = DEFAULT_CRL_DAYS, now: dt.datetime | None = None) -> Revocation:
    """Sign the CA's CRL again (created empty if absent): the same entries, the next CRL number, a next
    update ``days`` from now. Run it before the current one's next update (weekly, by default)."""
    ca_dir = Path(ca_dir)
    authority = _load_ca(ca_dir)
    ca_cert, ca_key = authority.cert, authority.key
    previous = _ca_crl(ca_dir, ca_cert)
    entries = list(previous) if previous is not None else []
    return _write_crl(ca_dir, ca_cert, ca_key, previous, entries, days=days, now=now)


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


@functools.lru_cache(maxsize=1024)
def _certificate_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def certificate_from_context(context: grpc.ServicerContext) -> x509.Certificate:
    """The caller's verified client certificate (the leaf: gRPC shows no more of the chain).

    Raises:
        PermissionDenied: no single client certificate, or one that does not parse.
    """
    pems = context.auth_context().get("x509_pem_cert")
    if not pems or len(pems) != 1:
        raise PermissionDenied("no client certificate")
    try:
        return _certificate_of(pems[0])
    except ValueError:
        raise PermissionDenied("client certificate does not parse") from None


def serial_from_context(context: grpc.ServicerContext) -> int:
    """The serial number of the caller's verified client certificate (for the CRL check).

    Raises:
        PermissionDenied: no single client certificate, or one that does not parse.
    """
    return certificate_from_context(context).serial_number
