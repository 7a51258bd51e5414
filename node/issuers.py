"""Who may have issued a caller's certificate (ADR 0013): the federation CA for nodes, the people-CA of
the node's own state for its investigators and auditors.

The TLS handshake proved that the caller's chain ends at the federation CA, not through which
people-CA: another state's people-CA is as validly signed by the federation CA as ours, and could mint
an "investigator of MY". gRPC shows a server only the caller's own certificate (``x509_pem_cert``;
``x509_pem_cert_chain`` holds that same one), so the node checks the certificate's *signature* under
the key of the CA it must come from — never the issuer's name alone:

- a peer's certificate must be signed by the federation CA itself (a people-CA cannot mint a node);
- a person's must be signed by ``tls.people_ca``, which the node checked at start to be signed by the
  federation CA and to name the node's state; or, while ``tls.root_people`` is on (a migration from a
  single CA), by the federation CA directly.

A person of the people-CA is also refused when the people-CA itself is revoked in the federation's CRL
(``tls.crl`` and what peers pass on) or the person is revoked in the people-CA's own CRL
(``tls.people_crl``). Each refusal is a :class:`Refusal` that the server audits (``rpc.denied``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from client.protocol import errors
from client.transport.tls import Identity, load_certificate
from node.config import NodeConfig
from node.crl import CrlHolder
from node.pki import people_ca_state

log = logging.getLogger(__name__)

__all__ = ["Issuers", "Refusal"]

_CACHED: Final = 1024

Issuer = Literal["root", "people", "other"]


class NodeLike(Protocol):
    """What :meth:`Issuers.for_node` needs of a :class:`node.node.Node` (which imports this module)."""

    id: str
    config: NodeConfig
    clock: Callable[[], float]
    crl: CrlHolder

    def record(self, action: str, **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a caller's certificate is refused.

    Attributes:
        result: the ``rpc.denied`` entry's result: ``wrong_issuer`` or ``revoked``.
        reason: one line for the caller (PERMISSION_DENIED) and the log.
        issuer: the certificate's issuer name (RFC 4514), recorded in the audit entry.
    """

    result: str
    reason: str
    issuer: str


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another key; names differ; another key type
        return False
    return True


class Issuers:
    """The CAs a node accepts its callers from, and the check of each call's certificate. Thread-safe.

    Args:
        node_id: the node's state.
        root: the federation CA certificate (``tls.ca``).
        people_ca: the people-CA certificate of the node's state (``tls.people_ca``), or None.
        root_people: serve people whose certificates the federation CA issued directly (migration).
        root_crl: the federation's CRL held by the node (a revoked people-CA refuses all its people).
        people_crl: the people-CA's CRL (``tls.people_crl``), or None.

    Raises:
        ConfigError: (key ``tls.people_ca``) ``people_ca`` is not a people-CA signed by ``root`` or names
            another state than ``node_id``.
    """

    def __init__(
        self,
        node_id: str,
        root: x509.Certificate,
        people_ca: x509.Certificate | None = None,
        *,
        root_people: bool = False,
        root_crl: CrlHolder | None = None,
        people_crl: CrlHolder | None = None,
        people_ca_source: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.root = root
        self.people_ca = people_ca
        self.root_people = root_people
        self.root_crl = root_crl
        self.people_crl = people_crl
        if people_ca is not None:
            try:
                state = people_ca_state(people_ca, root, source=people_ca_source)
            except errors.ConfigError as exc:
                raise errors.ConfigError(exc.reason, key="tls.people_ca", path=people_ca_source) from None
            if state != node_id:
                raise errors.ConfigError(
                    f"this is the people-CA of {state}, not of this node's state {node_id}",
                    key="tls.people_ca",
                    path=people_ca_source,
                )
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, Issuer] = OrderedDict()

    @classmethod
    def for_node(cls, node: NodeLike) -> Issuers:
        """The issuers of a node's configuration (``tls.ca``, ``tls.people_ca``, ``tls.people_crl``,
        ``tls.root_people``); :meth:`warn_at_start` says what a serving node should know of them."""
        tls = node.config.tls
        root = load_certificate(_read(Path(tls.ca), "tls.ca"), source=str(tls.ca))
        people_ca = people_crl = None
        if tls.people_ca is not None:
            path = Path(tls.people_ca)
            people_ca = load_certificate(_read(path, "tls.people_ca"), source=str(path))
            if tls.people_crl is not None:
                people_crl = _people_crl(people_ca, Path(tls.people_crl), node)
        return cls(
            node.id,
            root,
            people_ca,
            root_people=tls.root_people,
            root_crl=node.crl,
            people_crl=people_crl,
            people_ca_source=None if tls.people_ca is None else str(tls.people_ca),
        )

    @staticmethod
    def warn_at_start(node: NodeLike) -> None:
        """Log, when the node starts serving (not at every command that opens it), that it serves no
        people (no ``tls.people_ca``) or still serves people the federation CA issued directly."""
        tls = node.config.tls
        if tls.people_ca is None and not tls.root_people:
            log.warning("no tls.people_ca: node %s serves no investigators or auditors (peers only)", node.id)
        if tls.root_people:
            log.warning(
                "tls.root_people is on: node %s serves people whose certificates the federation CA "
                "issued directly; turn it off once every person holds a people-CA certificate",
                node.id,
            )

    def issuer_of(self, cert: x509.Certificate) -> Issuer:
        """Which CA signed ``cert``: the federation CA, the state's people-CA, or another (cached)."""
        key = cert.signature
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        if _issued_by(cert, self.root):
            found = "root"
        elif self.people_ca is not None and _issued_by(cert, self.people_ca):
            found = "people"
        else:
            found = "other"
        with self._lock:
            self._cache[key] = found
            while len(self._cache) > _CACHED:
                self._cache.popitem(last=False)
        return found

    def refusal(self, identity: Identity, cert: x509.Certificate) -> Refusal | None:
        """Why the node must refuse a caller ``identity`` presenting ``cert`` (already verified by the
        handshake to chain to the federation CA), or None to let it through."""
        issuer = self.issuer_of(cert)
        if identity.role == "peer" and issuer == "root":  # every peer call: no issuer name to format
            return None
        name = cert.issuer.rfc4514_string()[:200]
        if identity.role == "peer":
            return Refusal(
                "wrong_issuer", f"the certificate of {identity} is not issued by the federation CA", name
            )
        if issuer == "people":
            return self._people_revoked(identity, cert, name)
        if issuer == "root":
            if self.root_people:
                return None
            return Refusal(
                "wrong_issuer",
                f"the certificate of {identity} is issued by the federation CA, not by the people-CA of "
                f"{self.node_id}; the node serves such people only during a migration (tls.root_people)",
                name,
            )
        if self.people_ca is None:
            why = f"node {self.node_id} has no people-CA (tls.people_ca) and serves no people"
        else:
            why = f"it is not issued by the people-CA of {self.node_id}"
        return Refusal(
            "wrong_issuer", f"the certificate of {identity} is refused: {why} (issuer {name})", name
        )

    def _people_revoked(self, identity: Identity, cert: x509.Certificate, name: str) -> Refusal | None:
        assert self.people_ca is not None
        if self.root_crl is not None:
            why = self.root_crl.check(self.people_ca.serial_number)
            if why is not None:
                return Refusal(
                    "revoked",
                    f"the people-CA of {self.node_id} that issued {identity} is revoked ({why})",
                    name,
                )
        if self.people_crl is not None:
            why = self.people_crl.check(cert.serial_number)
            if why is not None:
                return Refusal(
                    "revoked", f"the certificate of {identity} is revoked by its people-CA ({why})", name
                )
        return None

    def status(self) -> dict[str, object]:
        """What ``petanda-node status`` shows of the people-CA: its serial and expiry, the migration
        flag, and its CRL."""
        people = self.people_ca
        return {
            "people_ca": None
            if people is None
            else {"serial": f"{people.serial_number:x}", "not_after": people.not_valid_after_utc.isoformat()},
            "root_people": self.root_people,
            "people_crl": None if self.people_crl is None else self.people_crl.status(),
        }


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read: {exc.strerror or exc}", key=key, path=str(path)) from None


def _people_crl(people_ca: x509.Certificate, path: Path, node: NodeLike) -> CrlHolder:
    """The people-CA's CRL, re-read when it changes; a bad file at start names ``tls.people_crl``. Its
    audit entries (``crl.adopted``, ``crl.refused``) carry ``crl = "people"``."""

    def record(action: str, **fields: Any) -> None:
        node.record(action, crl="people", **fields)

    try:
        return CrlHolder(
            people_ca, path=path, clock=node.clock, record=record, issuer="the people-CA (tls.people_ca)"
        )
    except errors.ConfigError as exc:
        raise errors.ConfigError(exc.reason, key="tls.people_crl", path=str(path)) from None
