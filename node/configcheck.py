"""``petanda-node config check``: a node's configuration validated, its files read, each peer reached.

Nothing is written: the store is not opened (nor created or migrated), no key is made. Each finding
names what was checked (a config key, a file, a peer) and says why it failed or what it found:

- the files the config names: the node directory (mode 0700, its signing key and OPRF key), the TLS
  CA, certificate (its identity is this node's, not expired) and key (mode 0600, matching the
  certificate), the CRL, the federation secret (needed when ``hmac.kinds`` is not empty), and where a
  SQLite store lives;
- each peer: a mutual-TLS handshake that verifies the peer's name, and one ``GetManifest`` call
  (what a sync starts with; the peer audits it as it audits a sync), within a timeout. It proves that
  the peer's certificate is from the federation CA and names it, and that the peer lists this node.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization

from client._proto.petanda.v1 import peer_pb2
from client.protocol import errors
from client.protocol.manifest import SignedManifest
from client.transport.tls import (
    identity_from_certificate,
    load_certificate,
    load_private_key,
    read_private_file,
)
from node import keys
from node.config import NodeConfig
from node.crl import parse_crl, verify_crl
from node.keystore import kek_fingerprint
from node.peers import PeerLink, peer_error, printable

__all__ = ["Finding", "check_files", "check_peers"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing checked: ``what`` (a key, a file or ``peer XX``), whether it is fine, and the detail."""

    what: str
    ok: bool
    detail: str


def _finding(what: str, check: Callable[[], str]) -> Finding:
    try:
        return Finding(what, True, check())
    except errors.PetandaError as error:
        return Finding(what, False, str(error))


def check_files(config: NodeConfig, *, now: dt.datetime | None = None) -> list[Finding]:
    """Every file the configuration names, read as the node would read it."""
    now = now or dt.datetime.now(dt.UTC)
    directory = Path(config.node.dir)
    tls = config.tls

    def node_dir() -> str:
        keys.check_node_dir(directory)
        found = keys.read_node_id(directory)
        if found != config.node.id:
            raise errors.ConfigError(f"holds node {found}, not {config.node.id}", path=str(directory))
        keys.load_signing_key(directory)
        return f"mode 0700, node {found}, signing key"

    def kek() -> str:
        # The OPRF keys and the federation secret are in the store, wrapped under this key (ADR 0011);
        # whether the store's are wrapped under this very KEK is `petanda-node keys fingerprint`'s to say.
        path = Path(config.keys.kek_file)
        if not path.exists():
            raise errors.ConfigError(
                "missing: the node's OPRF keys are wrapped under it in the store; copy it from another "
                "replica of this node (compare with petanda-node keys fingerprint), or run petanda-node "
                "keys migrate on a node that still keeps its keys in files",
                path=str(path),
            )
        return f"mode 0600, fingerprint {keys.format_fingerprint(kek_fingerprint(keys.load_kek(path)))}"

    def ca() -> str:
        cert = load_certificate(_read(tls.ca), source=str(tls.ca))
        return f"{cert.subject.rfc4514_string()}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"

    def certificate() -> str:
        pem = _read(tls.cert)
        identity = identity_from_certificate(pem, source=str(tls.cert))
        if identity.role != "peer" or identity.id != config.node.id:
            raise errors.ConfigError(
                f"identifies {identity}, not this node's peer certificate ({config.node.id})",
                path=str(tls.cert),
            )
        cert = load_certificate(pem, source=str(tls.cert))
        left = cert.not_valid_after_utc - now
        if left.total_seconds() <= 0:
            raise errors.ConfigError(
                f"expired on {cert.not_valid_after_utc:%Y-%m-%d} (petanda-node ca renew)", path=str(tls.cert)
            )
        return f"{identity}, expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d})"

    def key() -> str:
        private = load_private_key(read_private_file(tls.key), source=str(tls.key))
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        cert = load_certificate(_read(tls.cert), source=str(tls.cert))
        if cert.public_key().public_bytes(*raw) != private.public_key().public_bytes(*raw):
            raise errors.ConfigError(f"does not match the certificate {tls.cert}", path=str(tls.key))
        return "mode 0600, ECDSA P-256, matches the certificate"

    def crl() -> str:
        if tls.crl is None:
            return "none configured"
        held = parse_crl(_read(tls.crl))
        try:
            number = verify_crl(held, load_certificate(_read(tls.ca), source=str(tls.ca)))
        except errors.PetandaError as error:
            raise errors.ConfigError(str(error), path=str(tls.crl)) from None
        return f"CRL number {number}, {len(list(held))} revoked, next update {held.next_update_utc}"

    def secret() -> str:
        path = Path(config.hmac.federation_secret_file)
        if not path.exists():  # normal once the node's first start wrapped it into the store
            return "no file: the store keeps the secret once wrapped (petanda-node hmac fingerprint)"
        fingerprint = keys.format_fingerprint(keys.secret_fingerprint(keys.load_federation_secret(path)))
        return f"mode 0600, fingerprint {fingerprint} (read only until the store holds a secret)"

    def store() -> str:
        path = config.store.sqlite_path
        if path is None:
            return "PostgreSQL (not contacted)"
        if path.exists():
            return f"SQLite {path}"
        if not path.parent.is_dir():
            raise errors.ConfigError("its directory does not exist", path=str(path))
        return f"SQLite {path} (created at the first command that opens the node)"

    return [
        _finding("node.dir", node_dir),
        _finding("keys.kek_file", kek),
        _finding("tls.ca", ca),
        _finding("tls.cert", certificate),
        _finding("tls.key", key),
        _finding("tls.crl", crl),
        _finding("hmac.federation_secret_file", secret),
        _finding("store.url", store),
    ]


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None


@dataclass(frozen=True, slots=True)
class _Configured:
    config: NodeConfig


def check_peers(config: NodeConfig, *, timeout_s: float) -> list[Finding]:
    """Reach each peer: TLS handshake (its name verified) and one ``GetManifest``, within ``timeout_s``."""
    found = []
    for entry in config.peers:
        what = f"peer {entry.id} ({entry.address})"
        try:
            link = PeerLink(_Configured(config), entry.id)
        except errors.PetandaError as error:
            found.append(Finding(what, False, str(error)))
            continue
        try:
            response = link.stub.GetManifest(peer_pb2.GetManifestRequest(known_version=0), timeout=timeout_s)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # reached, and it answers; it holds nothing yet
                found.append(
                    Finding(what, True, f"mutual TLS, GetManifest: {printable(error.details() or '')}")
                )
            else:
                found.append(Finding(what, False, str(peer_error(entry.id, error))))
            continue
        finally:
            link.close()
        try:
            manifest = SignedManifest.from_bytes(response.signed_manifest).manifest
        except errors.PetandaError as error:
            found.append(Finding(what, False, f"reached, but its manifest does not parse: {error}"))
            continue
        if manifest.node_id != entry.id:
            found.append(Finding(what, False, f"answers as node {manifest.node_id}, not {entry.id}"))
            continue
        found.append(Finding(what, True, f"mutual TLS, GetManifest: version {manifest.version}"))
    return found
