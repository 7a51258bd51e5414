"""Mutual-TLS identities and gRPC channels of the federation (an adapter: it imports ``grpc``).

Every party holds a certificate issued by the federation CA. Its identity is one SAN URI::

    urn:petanda:peer:<CC>                  a member node; <CC> is its node id (ISO 3166-1 alpha-2)
    urn:petanda:investigator:<CC>:<name>   a person of state <CC>
    urn:petanda:auditor:<CC>:<name>

with ``<name>`` matching ``[a-z0-9._-]{1,64}``. The identity of a caller comes from that certificate,
never from a request field (``docs/operators.md``, "Certificates and identities").
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.protocol.errors import ConfigError, PeerUnavailable
from client.protocol.versions import SUPPORTED
from client.transport.versions import VersionInterceptor

__all__ = [
    "COUNTRY_CODES",
    "DEFAULT_KEEPALIVE_MS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PEER_NAME_SUFFIX",
    "RECONNECT_BACKOFF_INITIAL_MS",
    "RECONNECT_BACKOFF_MAX_MS",
    "ROLES",
    "URI_PREFIX",
    "Identity",
    "PemSource",
    "Role",
    "channel_credentials",
    "channel_options",
    "check_country_code",
    "identity_from_certificate",
    "load_certificate",
    "load_private_key",
    "parse_identity_uri",
    "peer_server_name",
    "read_private_file",
    "secure_channel",
    "server_certificate",
]

Role: TypeAlias = Literal["peer", "investigator", "auditor"]
#: The roles a certificate may carry; ``peer`` is a member node, the others are people of its state.
ROLES: Final[tuple[Role, ...]] = ("peer", "investigator", "auditor")
#: Every identity URI starts with this prefix, in exactly this case.
URI_PREFIX: Final = "urn:petanda:"

#: The officially assigned ISO 3166-1 alpha-2 codes (249): the valid node ids and states of people.
COUNTRY_CODES: Final[frozenset[str]] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT
    BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH
    ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT
    HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS
    LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI
    NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG
    SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG
    UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
    """.split()
)

_NAME_RE: Final = re.compile(r"[a-z0-9._-]{1,64}")

#: Largest gRPC message a channel sends or accepts unless told otherwise (filters are streamed in chunks).
DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
#: Interval of HTTP/2 keepalive pings on an open call; servers must permit pings at least this often.
DEFAULT_KEEPALIVE_MS: Final = 60_000
#: Longest wait between two attempts to reconnect to a server that refused or dropped the connection.
#: gRPC's own default grows to 120 s (1 s x 1.6 per attempt): a peer restarted after a few seconds'
#: outage stayed "unavailable" for up to ~25 s. With 1 s, a restarted server is reached within ~1.2 s
#: (the backoff has 20 % jitter); ten peers' channels retrying once a second cost a down node nothing.
RECONNECT_BACKOFF_MAX_MS: Final = 1_000
#: First wait before reconnecting (then x 1.6 per attempt, up to :data:`RECONNECT_BACKOFF_MAX_MS`).
RECONNECT_BACKOFF_INITIAL_MS: Final = 250

#: A certificate or key given as a file path (``str`` or path-like) or as the PEM bytes themselves.
PemSource: TypeAlias = "str | os.PathLike[str] | bytes"


#: DNS suffix of the name every node certificate carries for its node id (``my.peer.petanda``).
PEER_NAME_SUFFIX: Final = ".peer.petanda"


def peer_server_name(node_id: str) -> str:
    """The DNS name that every certificate of node ``node_id`` carries and its callers verify.

    ``peer_server_name("MY") == "my.peer.petanda"``.
    """
    return f"{node_id.lower()}{PEER_NAME_SUFFIX}"


def check_country_code(code: str, *, what: str = "country code") -> str:
    """Return ``code`` if it is an assigned ISO 3166-1 alpha-2 code (upper case), else raise ConfigError."""
    if code not in COUNTRY_CODES:
        raise ConfigError(f"{what} {code!r} is not an ISO 3166-1 alpha-2 code in upper case (e.g. 'MY')")
    return code


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is: a member node (``peer``) or a person of a member state.

    Attributes:
        role: ``peer``, ``investigator`` or ``auditor``.
        state: ISO 3166-1 alpha-2 code of the member state; for a peer, its node id.
        name: the person's id within the state (``[a-z0-9._-]{1,64}``); None for a peer.
    """

    role: Role
    state: str
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r} is not one of {', '.join(ROLES)}")
        check_country_code(self.state, what="state")
        if self.role == "peer":
            if self.name is not None:
                raise ConfigError(f"a peer identity has no person name (got {self.name!r})")
        elif self.name is None or not _NAME_RE.fullmatch(self.name):
            raise ConfigError(f"{self.role} name {self.name!r} must match [a-z0-9._-]{{1,64}}")

    @classmethod
    def from_id(cls, role: Role, id: str) -> Identity:
        """Build an identity from its textual id: ``"MY"`` for a peer, ``"MY/alice"`` for a person."""
        state, sep, name = id.partition("/")
        if role == "peer" and sep:
            raise ConfigError(f"a peer id is a country code alone, e.g. 'MY' (got {id!r})")
        if role != "peer" and not sep:
            raise ConfigError(f"an {role} id is 'CC/name', e.g. 'MY/alice' (got {id!r})")
        return cls(role, state, name if sep else None)

    @property
    def id(self) -> str:
        """The textual id: the node id for a peer, ``CC/name`` for a person."""
        return self.state if self.name is None else f"{self.state}/{self.name}"

    @property
    def uri(self) -> str:
        """The SAN URI that encodes this identity in a certificate."""
        tail = self.state if self.name is None else f"{self.state}:{self.name}"
        return f"{URI_PREFIX}{self.role}:{tail}"

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


def parse_identity_uri(uri: str) -> Identity:
    """Parse ``urn:petanda:<role>:<CC>[:<name>]`` (exact case, no other form), raising ConfigError."""
    if not uri.startswith(URI_PREFIX):
        raise ConfigError(f"identity URI {uri!r} does not start with {URI_PREFIX!r}")
    parts = uri[len(URI_PREFIX) :].split(":")
    role = parts[0]
    if role not in ROLES:
        raise ConfigError(f"identity URI {uri!r} has unknown role {role!r}")
    expected = 2 if role == "peer" else 3
    if len(parts) != expected:
        form = "urn:petanda:peer:CC" if role == "peer" else f"urn:petanda:{role}:CC:name"
        raise ConfigError(f"identity URI {uri!r} is not of the form {form}")
    return Identity(role, parts[1], parts[2] if role != "peer" else None)


def load_certificate(pem: bytes, *, source: str | None = None) -> x509.Certificate:
    """Parse one PEM certificate, raising ConfigError naming ``source`` if it does not parse."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM X.509 certificate ({exc})", path=source) from None


def load_private_key(pem: bytes, *, source: str | None = None) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM ECDSA P-256 private key, raising ConfigError naming ``source``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an unencrypted PEM private key ({exc})", path=source) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("the TLS key must be an ECDSA P-256 key", path=source)
    return key


def identity_from_certificate(pem: bytes, *, source: str | None = None) -> Identity:
    """Return the identity that a PEM certificate carries in its one ``urn:petanda:`` SAN URI.

    Args:
        pem: the certificate, PEM-encoded.
        source: where it came from (a file name), named in errors.

    Raises:
        ConfigError: the certificate does not parse, carries no or several petanda URIs, or an
            invalid one.
    """
    cert = load_certificate(pem, source=source)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ConfigError("certificate has no subjectAltName: no petanda identity", path=source) from None
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("urn:petanda:")
    ]
    if len(uris) != 1:
        raise ConfigError(
            f"certificate must carry exactly one petanda URI SAN, found {len(uris)}", path=source
        )
    try:
        return parse_identity_uri(uris[0])
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=source) from None


def read_private_file(path: str | os.PathLike[str]) -> bytes:
    """Read a secret file, refusing one that group or others may access (as ssh does), naming the file.

    Raises:
        ConfigError: unreadable, not a regular file, or mode allowing group/other access.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError("not a regular file", path=name)
            if os.name == "posix" and st.st_mode & 0o077:
                raise ConfigError(
                    f"permissions {stat.S_IMODE(st.st_mode):04o} are too open: a key file must not be "
                    f"accessible by group or others (chmod 600 {name})",
                    path=name,
                )
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=name) from None


def _read(source: PemSource, *, private: bool) -> tuple[bytes, str | None]:
    if isinstance(source, bytes):
        return source, None
    name = os.fspath(source)
    if private:
        return read_private_file(name), name
    try:
        return Path(name).read_bytes(), name
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=name) from None


def _check_material(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, names: Sequence[str | None]) -> None:
    """Fail early, naming the file, on material gRPC would only refuse later with an opaque error."""
    load_certificate(ca_pem, source=names[0])
    cert = load_certificate(cert_pem, source=names[1])
    key = load_private_key(key_pem, source=names[2])
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ConfigError(
            f"private key does not match the certificate {names[1] or ''}".rstrip(), path=names[2]
        )


def channel_credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ChannelCredentials:
    """Credentials for mutual TLS: trust only the federation CA, present our certificate and key.

    Raises:
        ConfigError: a PEM does not parse, the key is not ECDSA P-256, or it does not match the certificate.
    """
    _check_material(ca_pem, cert_pem, key_pem, ("CA certificate", "certificate", "private key"))
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def channel_options(
    *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive_ms: int = DEFAULT_KEEPALIVE_MS
) -> list[tuple[str, int | str]]:
    """gRPC channel options: message size limits both ways, keepalive pings on open calls only, and a
    short reconnect backoff.

    The backoff (:data:`RECONNECT_BACKOFF_INITIAL_MS` growing to :data:`RECONNECT_BACKOFF_MAX_MS`) is
    what lets a restarted server be reached again within about a second; calls still fail fast while the
    server is down (no ``wait_for_ready``: a check must not wait out its deadline on a dead peer).
    ``grpc.min_reconnect_backoff_ms`` is left alone: gRPC uses it as the deadline of one connection
    attempt (20 s), and a slow handshake to a far peer must not be cut short.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ]


def secure_channel(
    target: str,
    *,
    ca: PemSource,
    cert: PemSource,
    key: PemSource,
    server_name: str | None = None,
    options: Sequence[tuple[str, int | str]] | None = None,
    versions: Iterable[int] | None = SUPPORTED,
) -> grpc.Channel:
    """Open a mutual-TLS gRPC channel to ``target`` (``host:port``).

    Every call on it carries the protocol version negotiated with the node
    (:class:`client.transport.versions.VersionInterceptor`).

    Args:
        target: the server's address.
        ca, cert, key: the federation CA certificate, our certificate and our private key, each a path or
            PEM bytes. A key read from a file must not be accessible by group or others.
        server_name: the DNS name to verify in the server's certificate when it differs from the host
            in ``target`` (e.g. connecting by IP address).
        options: gRPC channel options; default :func:`channel_options`.
        versions: the protocol versions the caller speaks; None labels no call (a raw channel).

    Raises:
        ConfigError: a file is unreadable or invalid (named in the message).
    """
    ca_pem, ca_name = _read(ca, private=False)
    cert_pem, cert_name = _read(cert, private=False)
    key_pem, key_name = _read(key, private=True)
    _check_material(
        ca_pem,
        cert_pem,
        key_pem,
        (ca_name or "CA certificate", cert_name or "certificate", key_name or "private key"),
    )
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    opts = list(channel_options() if options is None else options)
    if server_name is not None:
        opts.append(("grpc.ssl_target_name_override", server_name))
    channel = grpc.secure_channel(target, creds, options=opts)
    if versions is None:
        return channel
    return VersionInterceptor.wrap(channel, versions)[0]


def server_certificate(
    target: str,
    *,
    ca: str | os.PathLike[str],
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    server_name: str,
    timeout: float,
) -> x509.Certificate:
    """The certificate a server presents at ``target``, from a TLS handshake of our own (then closed).

    grpcio gives a client no view of the server's certificate, so whoever must see it (its serial, to
    check it against a CRL) opens this separate connection: mutual TLS with the same CA, certificate and
    key files as the gRPC channel, the certificate verified against ``ca`` and ``server_name``. It is
    another connection than the channel's: a server may show each a different certificate.

    Raises:
        ConfigError: a file is unreadable, or the key file is accessible by group or others.
        PeerUnavailable: no connection, or the handshake failed (another CA, the wrong name…).
    """
    read_private_file(key)  # the same refusal of an open key file as secure_channel's
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{target!r} is not host:port")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=os.fspath(ca))
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS files for a probe: {exc}") from None
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError; named for the reader
        raise PeerUnavailable(f"{target}: TLS probe failed: {exc}") from None
    if der is None:
        raise PeerUnavailable(f"{target}: the server presented no certificate")
    return x509.load_der_x509_certificate(der)
