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
    "DEFAULT_PERSON_DAYS",
    "ISSUED_FILE",
    "IssuedFiles",
    "Renewal",
    "Revocation",
    "identity_from_context",
    "init_ca",
    "issue",
    "parse_serial",
    "renew",
    "revoke",
    "serial_from_context",
    "server_credentials",
    "server_options",
    "sign_crl",
]

CA_CERT_FILE: Final = "ca.crt"
CA_KEY_FILE: Final = "ca.key"
#: The CA's newest CRL, in its directory: what operators distribute (``tls.crl`` of one node suffices).
CRL_FILE: Final = "crl.pem"
#: One JSON line per certificate the CA issued: what ``ca revoke --serial`` checks a serial against.
ISSUED_FILE: Final = "issued.jsonl"
DEFAULT_CA_DAYS: Final = 3650
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


def _default_days(role: Role) -> int:
    return DEFAULT_PEER_DAYS if role == "peer" else DEFAULT_PERSON_DAYS


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, bytes, ec.EllipticCurvePrivateKey]:
    path = ca_dir / CA_CERT_FILE
    if not path.exists():
        raise ConfigError("no CA certificate here (run ca init first)", path=str(path))
    pem = path.read_bytes()
    cert = load_certificate(pem, source=str(path))
    key = load_private_key(read_private_file(ca_dir / CA_KEY_FILE), source=str(ca_dir / CA_KEY_FILE))
    return cert, pem, key


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


def _record_issued(ca_dir: Path, identity: Identity, cert: x509.Certificate, *, renews: int | None) -> None:
    """Append one line to the CA's ``issued.jsonl`` (created 0644)."""
    line = {
        "serial": f"{cert.serial_number:x}",
        "role": identity.role,
        "id": identity.id,
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
) -> IssuedFiles:
    """Issue a certificate and key for a peer (``id="MY"``) or a person (``id="MY/alice"``).

    Writes ``<stem>.crt`` (0644), ``<stem>.key`` (0600) and a copy of ``ca.crt`` in ``out_dir``, where
    the stem is the node id for a peer and ``CC-name.role`` for a person (``MY-alice.investigator``),
    and records the serial in the CA's ``issued.jsonl``.

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
        days: validity in days (default :data:`DEFAULT_PEER_DAYS` for a peer,
            :data:`DEFAULT_PERSON_DAYS` for a person), capped by the CA's own expiry.
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
    days = _default_days(role) if days is None else days
    if days < 1:
        raise ConfigError(f"validity must be at least 1 day, got {days}")
    san = _san(identity, hostnames, ips)

    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_cert_pem, ca_key = _load_ca(ca_dir)
    stem = _file_stem(identity)
    paths = IssuedFiles(out_dir / f"{stem}.crt", out_dir / f"{stem}.key", out_dir / CA_CERT_FILE)
    for path in (paths.cert, paths.key):
        if path.exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(path))
    if paths.ca.exists() and paths.ca.read_bytes() != ca_cert_pem:
        raise ConfigError("a different CA certificate is already there", path=str(paths.ca))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_cert, ca_key, identity, key.public_key(), san, days=days, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_private_file(paths.key, _key_pem(key))
    write_public_file(paths.cert, _pem(cert))
    if not paths.ca.exists():
        write_public_file(paths.ca, ca_cert_pem)
    _record_issued(ca_dir, identity, cert, renews=None)
    return paths


@dataclass(frozen=True, slots=True)
class Renewal:
    """What :func:`renew` wrote: the new certificate, its key when a new one was made, and the serials."""

    cert: Path
    key: Path | None
    ca: Path
    serial: int
    old_serial: int


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, source: str) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError("not a certificate of this CA (issuer or signature differ)", path=source) from None


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

    Writes ``<stem>.crt`` (and with ``new_key`` ``<stem>.key``, 0600) and a copy of ``ca.crt`` into
    ``out_dir``, which must not hold them: nothing is ever overwritten. The old certificate stays valid
    until it expires or is revoked (``ca revoke --reason superseded``).

    Raises:
        ConfigError: the certificate is unreadable or not issued by this CA; its key is revoked for
            ``keyCompromise`` and ``new_key`` is not set; a file exists in ``out_dir``.
    """
    ca_dir, out_dir, cert = Path(ca_dir), Path(out_dir), Path(cert)
    ca_cert, ca_cert_pem, ca_key = _load_ca(ca_dir)
    try:
        old_pem = cert.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(cert)) from None
    old = load_certificate(old_pem, source=str(cert))
    _issued_by(old, ca_cert, source=str(cert))
    identity = identity_from_certificate(old_pem, source=str(cert))
    crl = _ca_crl(ca_dir, ca_cert)
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
    for path in (paths.cert, paths.key) if new_key else (paths.cert,):
        if path.exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(path))
    if paths.ca.exists() and paths.ca.read_bytes() != ca_cert_pem:
        raise ConfigError("a different CA certificate is already there", path=str(paths.ca))

    key = ec.generate_private_key(ec.SECP256R1()) if new_key else None
    public_key = key.public_key() if key is not None else old.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ConfigError("the certificate's key is not an ECDSA key", path=str(cert))
    days = _default_days(identity.role) if days is None else days
    fresh = _leaf(ca_cert, ca_key, identity, public_key, san, days=days, now=now)
    out_dir.mkdir(parents=True, exist_ok=True)
    if key is not None:
        write_private_file(paths.key, _key_pem(key))
    write_public_file(paths.cert, _pem(fresh))
    if not paths.ca.exists():
        write_public_file(paths.ca, ca_cert_pem)
    _record_issued(ca_dir, identity, fresh, renews=old.serial_number)
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
        verify_crl(crl, ca_cert)
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
    ca_cert, _pem_bytes, ca_key = _load_ca(ca_dir)
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
    ca_cert, _pem_bytes, ca_key = _load_ca(ca_dir)
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
def _serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def serial_from_context(context: grpc.ServicerContext) -> int:
    """The serial number of the caller's verified client certificate (for the CRL check).

    Raises:
        PermissionDenied: no single client certificate, or one that does not parse.
    """
    pems = context.auth_context().get("x509_pem_cert")
    if not pems or len(pems) != 1:
        raise PermissionDenied("no client certificate")
    try:
        return _serial_of(pems[0])
    except ValueError:
        raise PermissionDenied("client certificate does not parse") from None
