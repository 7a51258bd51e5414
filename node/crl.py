"""Certificate revocation on a node: the newest CA-signed CRL it holds, enforced by its server.

A node holds one :class:`CrlHolder`. It reads the CRL the operator configured (``[tls] crl``, PEM or
DER, optional) and the newest one it received from a peer (``<node dir>/crl-newest.pem``), verifies the
federation CA's signature over each, and keeps the one with the highest CRL number. It re-reads the
configured file when it changes (a ``stat`` at most once a second, from the calls that check a
certificate), so a new CRL takes effect without a restart. Peers pass the newest CRL on over
``PeerService.GetCrl`` (:func:`fetch_crl`): a revocation reaches every member within one sync interval.

What a CRL past its next-update time means: it is still enforced (a revocation never lapses), the node
logs a warning at most once an hour and ``petanda-node status`` shows it as stale until the CA re-signs
it (``petanda-node ca crl``). Only servers can enforce a CRL: grpcio gives a client no view of the
server's certificate, so a node checks a peer it calls only through a separate probe handshake
(:func:`check_peer`), see ``docs/operators.md`` ("Revocation").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from client._proto.petanda.v1 import peer_pb2
from client.protocol import errors
from client.transport.status import error_class, retry_after_of
from client.transport.tls import load_certificate, peer_server_name, server_certificate
from node.config import NodeConfig
from node.keys import replace_public_file

log = logging.getLogger(__name__)

__all__ = [
    "MAX_CRL_BYTES",
    "NEWEST_CRL_FILE",
    "REASONS",
    "CrlError",
    "CrlHolder",
    "check_peer",
    "crl_number",
    "fetch_crl",
    "parse_crl",
    "reason_name",
    "verify_crl",
]

#: Where a node keeps the newest CRL it adopted, in its node directory (so it survives a restart).
NEWEST_CRL_FILE: Final = "crl-newest.pem"
#: The largest CRL a node reads or accepts from a peer.
MAX_CRL_BYTES: Final = 1024 * 1024
#: Seconds between two looks at the configured CRL file's size and time.
CHECK_EVERY_S: Final = 1.0
#: Seconds between two warnings that the CRL is past its next-update time.
_STALE_WARN_EVERY_S: Final = 3600.0

#: The RFC 5280 reason codes ``ca revoke`` accepts. ``certificateHold`` and ``removeFromCRL`` are not
#: among them (a revocation here never lapses), nor the CA and attribute-authority compromises (a
#: compromised CA means a new federation CA, not a CRL entry).
REASONS: Final[dict[str, x509.ReasonFlags]] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_NAME_OF: Final = {flag: name for name, flag in REASONS.items()} | {
    x509.ReasonFlags.ca_compromise: "cACompromise",
    x509.ReasonFlags.certificate_hold: "certificateHold",
    x509.ReasonFlags.aa_compromise: "aACompromise",
    x509.ReasonFlags.remove_from_crl: "removeFromCRL",
}


class NodeLike(Protocol):
    """What this module needs of a :class:`node.node.Node` (which imports this module)."""

    config: NodeConfig
    dir: Path
    clock: Callable[[], float]
    crl: CrlHolder

    def record(self, action: str, **fields: Any) -> None: ...


class CrlError(errors.ProtocolError):
    """A CRL that does not parse, is not signed by the federation CA, or lacks a number or next update."""


def reason_name(entry: x509.RevokedCertificate) -> str:
    """The RFC 5280 name of an entry's reason code (``unspecified`` when it carries none)."""
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return "unspecified"
    return _NAME_OF.get(flag, flag.value)


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """Parse a CRL in PEM or DER.

    Raises:
        CrlError: larger than :data:`MAX_CRL_BYTES`, or not a CRL.
    """
    if len(data) > MAX_CRL_BYTES:
        raise CrlError(f"a CRL of {len(data)} bytes is larger than the limit of {MAX_CRL_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CrlError(f"not an X.509 CRL ({exc})") from None


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRL number extension (RFC 5280 section 5.2.3), raising CrlError when it is missing."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        raise CrlError("the CRL carries no CRL number") from None


def verify_crl(
    crl: x509.CertificateRevocationList, ca: x509.Certificate, *, issuer: str = "the federation CA"
) -> int:
    """Check that the federation CA (or the CA ``ca`` that ``issuer`` names in errors, such as a
    people-CA) issued and signed ``crl`` and that it is complete; return its number.

    Raises:
        CrlError: another issuer, a signature that does not verify under the CA's key, no CRL number or
            no next-update time.
    """
    if crl.issuer != ca.subject:
        raise CrlError(f"the CRL is issued by {crl.issuer.rfc4514_string()!r}, not {issuer}")
    try:
        valid = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise CrlError(f"the CRL's signature does not verify under the key of {issuer}")
    if crl.next_update_utc is None:
        raise CrlError("the CRL carries no next-update time")
    return crl_number(crl)


@dataclass(frozen=True)
class _Held:
    crl: x509.CertificateRevocationList
    number: int
    der: bytes
    revoked: dict[int, str]
    source: str


def _held(crl: x509.CertificateRevocationList, number: int, source: str) -> _Held:
    revoked = {entry.serial_number: reason_name(entry) for entry in crl}
    return _Held(crl, number, crl.public_bytes(serialization.Encoding.DER), revoked, source)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class CrlHolder:
    """The newest CRL a node holds, signed by the federation CA. Thread-safe.

    Args:
        ca: the federation CA certificate (``tls.ca``).
        path: the operator's CRL file (``tls.crl``), re-read when it changes; None if not configured.
        keep: where to keep the newest CRL adopted (``<node dir>/crl-newest.pem``); None keeps nothing.
        clock: the node's clock (Unix seconds): whether the CRL is past its next update.
        record: called as ``record(action, **fields)`` for each CRL adopted (``crl.adopted``) and each one
            refused (``crl.refused``): the node's audit log.
        check_every_s: least interval between two looks at ``path`` (monotonic time).
        issuer: how errors name ``ca`` (a people-CA's holder says so).

    Raises:
        ConfigError: ``path`` is given but cannot be read, or is not a CRL signed by the CA.
    """

    def __init__(
        self,
        ca: x509.Certificate,
        *,
        path: Path | None = None,
        keep: Path | None = None,
        clock: Callable[[], float] = time.time,
        record: Callable[..., None] | None = None,
        check_every_s: float = CHECK_EVERY_S,
        issuer: str = "the federation CA",
    ) -> None:
        self.ca = ca
        self.issuer = issuer
        self.path = None if path is None else Path(path)
        self.keep = None if keep is None else Path(keep)
        self.check_every_s = check_every_s
        self._clock = clock
        #: ``record(action, **fields)``: the node's audit log (adoptions and refusals of CRLs).
        self.record: Callable[..., None] = record or (lambda action, **fields: None)
        self._lock = threading.Lock()
        self._held: _Held | None = None
        self._next_look = 0.0
        self._path_signature: tuple[int, int, int] | None = None
        self._warned_stale = -float("inf")
        if self.keep is not None and self.keep.exists():
            try:
                crl = parse_crl(self.keep.read_bytes())
                self._held = _held(crl, verify_crl(crl, ca, issuer=issuer), "kept")
            except (OSError, CrlError) as exc:  # a cache: peers send the newest again at the next sync
                log.warning("ignoring the kept CRL %s: %s", self.keep, exc)
        if self.path is not None:
            self._path_signature = _signature(self.path)
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise errors.ConfigError(
                    f"cannot read the CRL: {exc.strerror or exc}", key="tls.crl", path=str(self.path)
                ) from None
            try:
                crl = parse_crl(data)
                number = verify_crl(crl, ca, issuer=issuer)
            except CrlError as exc:
                raise errors.ConfigError(str(exc), key="tls.crl", path=str(self.path)) from None
            self._adopt(crl, number, "config")
        self._next_look = time.monotonic() + self.check_every_s

    @classmethod
    def for_node(cls, node: NodeLike) -> CrlHolder:
        """The holder of a node: its ``tls.ca`` and ``tls.crl``, kept in its node directory, audited."""
        tls = node.config.tls
        try:
            ca_pem = Path(tls.ca).read_bytes()
        except OSError as exc:
            raise errors.ConfigError(f"cannot read: {exc.strerror or exc}", path=str(tls.ca)) from None
        return cls(
            load_certificate(ca_pem, source=str(tls.ca)),
            path=tls.crl,
            keep=node.dir / NEWEST_CRL_FILE,
            clock=node.clock,
            record=node.record,
        )

    # --- what it holds --------------------------------------------------------------------------------

    def current(self) -> x509.CertificateRevocationList | None:
        """The newest CRL held, or None."""
        held = self._held
        return None if held is None else held.crl

    @property
    def number(self) -> int:
        """The CRL number of the newest CRL held; 0 when none."""
        held = self._held
        return 0 if held is None else held.number

    def der(self) -> bytes | None:
        """The newest CRL held, DER-encoded (what ``GetCrl`` serves), or None."""
        held = self._held
        return None if held is None else held.der

    def snapshot(self) -> tuple[int, bytes | None]:
        """The number and DER of the newest CRL held, read together: ``(0, None)`` when none."""
        held = self._held
        return (0, None) if held is None else (held.number, held.der)

    def revocation_reason(self, serial: int) -> str | None:
        """The reason ``serial`` is revoked (``keyCompromise``…), or None when it is not."""
        held = self._held
        return None if held is None else held.revoked.get(serial)

    def is_revoked(self, serial: int) -> bool:
        """Whether the newest CRL held lists certificate ``serial``."""
        return self.revocation_reason(serial) is not None

    def check(self, serial: int) -> str | None:
        """What the server asks on every call: re-read the CRL file if it changed, warn if the CRL is
        stale, and return the reason ``serial`` is revoked, or None."""
        self.reload_if_changed()
        held = self._held
        if held is not None and held.crl.next_update_utc is not None:
            if self._clock() > held.crl.next_update_utc.timestamp():
                self._warn_stale(held)
        return self.revocation_reason(serial)

    def is_stale(self, *, now: float | None = None) -> bool:
        """Whether the CRL held is past its next-update time (it is still enforced)."""
        held = self._held
        if held is None or held.crl.next_update_utc is None:
            return False
        return (self._clock() if now is None else now) > held.crl.next_update_utc.timestamp()

    def status(self, *, now: float | None = None) -> dict[str, Any]:
        """What ``petanda-node status`` shows: number, update times, entries, staleness, source."""
        held = self._held
        if held is None:
            return {"number": 0, "revoked": 0, "stale": False, "configured": self.path is not None}
        next_update = held.crl.next_update_utc
        return {
            "number": held.number,
            "this_update": held.crl.last_update_utc.isoformat(),
            "next_update": None if next_update is None else next_update.isoformat(),
            "revoked": len(held.revoked),
            "stale": self.is_stale(now=now),
            "source": held.source,
            "configured": self.path is not None,
        }

    # --- taking a newer one ---------------------------------------------------------------------------

    def offer(self, data: bytes, *, now: float | None = None, source: str = "peer") -> bool:
        """Adopt ``data`` (a CRL, DER or PEM) if the CA signed it and its number is higher than the held
        one's; keep it in the node directory. Returns whether it was adopted.

        A CRL already past its next update is adopted all the same (it still revokes), with a warning.

        Raises:
            CrlError: it does not parse, is not signed by the federation CA, or lacks a number or next
                update; the held CRL is kept.
        """
        crl = parse_crl(data)
        number = verify_crl(crl, self.ca, issuer=self.issuer)
        if number <= self.number:
            return False
        adopted = self._adopt(crl, number, source)
        if adopted and self.is_stale(now=now):
            log.warning("CRL number %d from %s is already past its next update", number, source)
        return adopted

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the configured CRL file if its inode, time or size changed (looking at most once every
        ``check_every_s`` seconds unless ``force``). Returns whether a newer CRL was adopted.

        A file that vanished, does not parse or is not signed by the CA is logged (ERROR) and the held
        CRL kept: a bad copy never lifts a revocation.
        """
        if self.path is None:
            return False
        now = time.monotonic()
        if not force and now < self._next_look:
            return False
        self._next_look = now + self.check_every_s
        signature = _signature(self.path)
        if signature == self._path_signature:
            return False
        self._path_signature = signature
        if signature is None:
            log.error("the CRL file %s is gone; enforcing CRL number %d still", self.path, self.number)
            return False
        try:
            return self.offer(self.path.read_bytes(), source="config")
        except (OSError, CrlError) as exc:
            log.error(
                "ignoring the CRL file %s: %s; enforcing CRL number %d still", self.path, exc, self.number
            )
            self.record("crl.refused", actor="node", role="node", result="invalid", source="config")
            return False

    def _adopt(self, crl: x509.CertificateRevocationList, number: int, source: str) -> bool:
        held = _held(crl, number, source)
        with self._lock:
            if self._held is not None and self._held.number >= number:
                return False
            self._held = held
        if self.keep is not None:
            try:
                replace_public_file(self.keep, crl.public_bytes(serialization.Encoding.PEM))
            except OSError as exc:
                log.error("cannot keep the CRL in %s: %s", self.keep, exc)
        log.info("adopted CRL number %d from %s: %d revoked", number, source, len(held.revoked))
        actor, role = (
            (source.removeprefix("peer:"), "peer") if source.startswith("peer:") else ("node", "node")
        )
        self.record(
            "crl.adopted",
            actor=actor,
            role=role,
            number=str(number),
            revoked=len(held.revoked),
            source=source,
        )
        return True

    def _warn_stale(self, held: _Held) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_stale < _STALE_WARN_EVERY_S:
                return
            self._warned_stale = now
        log.warning(
            "CRL number %d is past its next update (%s): still enforced; have the CA re-sign it "
            "(petanda-node ca crl) and distribute it",
            held.number,
            held.crl.next_update_utc,
        )


def fetch_crl(stub: Any, holder: CrlHolder, *, timeout: float, peer_id: str = "") -> bool:
    """Ask a peer for its newest CRL (``GetCrl``) and offer it to ``holder``. Returns whether a newer
    CRL was adopted.

    A CRL that the federation CA did not sign (or that does not parse) is refused, logged and audited
    as ``crl.refused`` against ``peer_id``; the held CRL is kept and False returned. A peer that does not
    implement ``GetCrl`` yet answers nothing new (False).

    Args:
        stub: a ``PeerServiceStub`` on the peer's channel.
        holder: the node's holder (``node.crl``).
        timeout: the call's deadline in seconds.
        peer_id: the peer's node id, for the log and the audit entries.

    Raises:
        PetandaError: the call failed, as :func:`node.peers.peer_error` says (PeerUnavailable,
            PermissionDenied, RateLimited).
    """
    try:
        response = stub.GetCrl(peer_pb2.GetCrlRequest(known_number=holder.number), timeout=timeout)
    except grpc.RpcError as error:
        code = error.code() if hasattr(error, "code") else None
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise _peer_error(peer_id or "peer", code, error) from None
    if response.not_modified or not response.crl:
        return False
    source = f"peer:{peer_id}" if peer_id else "peer"
    try:
        return holder.offer(response.crl, source=source)
    except CrlError as exc:
        log.warning("refused the CRL served by %s: %s", peer_id or "a peer", exc)
        holder.record(
            "crl.refused", actor=peer_id or "peer", role="peer", result="invalid", reason=str(exc)[:200]
        )
        return False


def _peer_error(peer_id: str, code: grpc.StatusCode | None, error: grpc.RpcError) -> errors.PetandaError:
    """As :func:`node.peers.peer_error` (which this module cannot import: node.peers imports the node)."""
    raw = error.details() if hasattr(error, "details") else str(error)
    detail = "".join(c if c.isprintable() else "?" for c in (raw or "no detail")[:200])
    cls = error_class(code)
    if cls is errors.RateLimited:
        return errors.RateLimited(f"{peer_id}: {detail}", retry_after_s=retry_after_of(error))
    if cls is errors.PermissionDenied:
        return errors.PermissionDenied(f"{peer_id}: {detail}")
    return errors.PeerUnavailable(f"{peer_id}: {code.name if code else 'error'}: {detail}")


def check_peer(node: NodeLike, peer_id: str, *, timeout: float) -> None:
    """Refuse to talk to a peer whose server certificate is revoked in the node's CRL.

    grpcio shows a client nothing of the server's certificate, so this opens a TLS connection of its own
    to the peer's address (the same CA, client certificate and server name as the node's channel), reads
    the certificate and closes it. It catches a member that keeps serving with a revoked certificate; an
    attacker holding a stolen key who answers this probe with the genuine node and the gRPC channel with
    the stolen key is not caught (the channel is another connection): hence short node certificates.

    Raises:
        PermissionDenied: the peer's certificate is revoked (audited as ``peer.revoked``).
        PeerUnavailable: the probe could not connect or the handshake failed.
        ConfigError: ``peer_id`` is not a configured peer.
    """
    entry = node.config.peer(peer_id)
    if entry is None:
        raise errors.ConfigError(f"{peer_id} is not a configured peer", key="peers")
    tls = node.config.tls
    cert = server_certificate(
        entry.address,
        ca=tls.ca,
        cert=tls.cert,
        key=tls.key,
        server_name=entry.server_name or peer_server_name(peer_id),
        timeout=timeout,
    )
    reason = node.crl.check(cert.serial_number)
    if reason is not None:
        serial = f"{cert.serial_number:x}"
        node.record(
            "peer.revoked", actor=peer_id, role="peer", result="revoked", serial=serial, reason=reason
        )
        raise errors.PermissionDenied(
            f"{peer_id}: its server certificate (serial {serial}) is revoked ({reason}); not syncing"
        )
