"""Recovery statements: a node restored from a backup says, signed, which history it lost (sans-I/O).

A node restored from yesterday's backup holds a shorter audit log and older manifests than its peers
saw. Without a word from it, every peer records a fork. With a *recovery statement* it says so, signed
with the same key that signs its manifests and tree heads: the latest head its peers held of its log
(``old_head``, a head it signed itself, as they gave it back), the signed head of the restored log it
continues from (``new_head``), the latest manifest its peers held (``old_manifest_version`` and its
hash: the next one it publishes is above it and names it), a reason and a time. A peer accepts the
rollback only when a valid statement covers what it holds (:func:`check_covers`); it keeps the statement
and the heads it replaced as evidence, audits ``node.recovered`` and gossips the statement on.

Statements are numbered (``sequence``: 1 for a node's first recovery); a second, different statement of
one number, both signed by the node, is its fork like two manifests of one version.

Statement bytes (``statement_bytes``), all integers big-endian::

    "petanda/v1/recovery" || 0x00 || u8 len(node_id) || node_id (ASCII) || u32 sequence || u64 issued_at
      || old_head: u64 tree_size || root_hash[32] || u64 timestamp || signature[64]
      || new_head: u64 tree_size || root_hash[32] || u64 timestamp || signature[64]
      || u64 old_manifest_version || old_manifest_hash[32]
      || u16 len(reason) || reason (UTF-8, 1..1024 bytes)

A signed statement is those bytes followed by the 64-byte Ed25519 signature over them. Vectors:
``tests/vectors/recovery.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.protocol._encoding import Reader, Writer, check_node_id
from client.protocol.auditlog import LogFork, TreeHead, verify_tree_head
from client.protocol.errors import EncodingError, InputError, SignatureError, WrongNodeError

__all__ = [
    "REASON_MAX",
    "RECOVERY_LABEL",
    "RECOVERY_VERSION",
    "RecoveryStatement",
    "check_covers",
    "check_one_per_sequence",
    "is_before",
    "sign_statement",
    "statement_bytes",
    "statement_hash",
    "verify_statement",
]

#: Domain-separation prefix of the statement bytes.
RECOVERY_LABEL: Final = b"petanda/v1/recovery\x00"
#: The protocol version recovery statements (and ``GetHeld``) exist from: a node sends them, or asks
#: ``GetHeld``, only on a link where both sides speak it (docs/PROTOCOL.md, "Versions").
RECOVERY_VERSION: Final = 3
#: Longest reason, in UTF-8 bytes.
REASON_MAX: Final = 1024
_SIGNATURE_SIZE: Final = 64


@dataclass(frozen=True, slots=True)
class RecoveryStatement:
    """A node's signed word that it rolled back from ``old_head`` to ``new_head`` (see the module)."""

    node_id: str
    sequence: int
    issued_at: int
    old_head: TreeHead
    new_head: TreeHead
    old_manifest_version: int
    old_manifest_hash: bytes
    reason: str
    signature: bytes = b""

    def to_bytes(self) -> bytes:
        """The signed statement: :func:`statement_bytes` followed by the signature."""
        if len(self.signature) != _SIGNATURE_SIZE:
            raise InputError("recovery statement: not signed")
        return statement_bytes(self) + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> RecoveryStatement:
        """Parse a signed statement; :class:`EncodingError` names the field at fault (nothing verified)."""
        r = Reader(data, "recovery statement")
        if r.take(len(RECOVERY_LABEL), "label") != RECOVERY_LABEL:
            raise r.error("label", "not a petanda/v1 recovery statement")
        node_id = r.node_id()
        sequence = r.u32("sequence")
        issued_at = r.u64("issued_at")
        heads = []
        for name in ("old_head", "new_head"):
            size = r.u64(f"{name}.tree_size")
            root = r.take(32, f"{name}.root_hash")
            timestamp = r.u64(f"{name}.timestamp")
            signature = r.take(_SIGNATURE_SIZE, f"{name}.signature")
            heads.append(TreeHead(node_id, size, root, timestamp, signature))
        version = r.u64("old_manifest_version")
        mhash = r.take(32, "old_manifest_hash")
        raw = r.blob16("reason")
        try:
            reason = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.error("reason", "not UTF-8") from None
        signature = r.take(_SIGNATURE_SIZE, "signature")
        r.end()
        statement = cls(node_id, sequence, issued_at, heads[0], heads[1], version, mhash, reason, signature)
        try:
            statement_bytes(statement)
        except InputError as error:
            raise EncodingError(f"recovery statement: {error}") from None
        return statement


def _head(w: Writer, head: TreeHead, node_id: str, name: str) -> None:
    if head.node_id != node_id:
        raise InputError(f"{name}: the head of {head.node_id!r}, not of {node_id!r}")
    w.u64(head.tree_size, f"{name}.tree_size")
    w.fixed(head.root_hash, 32, f"{name}.root_hash")
    w.u64(head.timestamp, f"{name}.timestamp")
    w.fixed(head.signature, _SIGNATURE_SIZE, f"{name}.signature")


def statement_bytes(statement: RecoveryStatement) -> bytes:
    """The canonical, domain-separated bytes the statement's signature covers."""
    w = Writer(RECOVERY_LABEL)
    w.node_id(check_node_id(statement.node_id))
    if statement.sequence < 1:
        raise InputError("sequence: must be 1 or more")
    w.u32(statement.sequence, "sequence")
    w.u64(statement.issued_at, "issued_at")
    _head(w, statement.old_head, statement.node_id, "old_head")
    _head(w, statement.new_head, statement.node_id, "new_head")
    if statement.new_head.tree_size == 0:
        raise InputError("new_head.tree_size: a restored log holds at least one entry")
    w.u64(statement.old_manifest_version, "old_manifest_version")
    w.fixed(statement.old_manifest_hash, 32, "old_manifest_hash")
    reason = statement.reason.encode("utf-8", errors="strict")
    if not 1 <= len(reason) <= REASON_MAX:
        raise InputError(f"reason: must be 1 to {REASON_MAX} UTF-8 bytes")
    w.blob16(reason, "reason")
    return w.getvalue()


def statement_hash(statement: RecoveryStatement) -> bytes:
    """SHA-256 of the signed statement: its name in audit entries and evidence."""
    return hashlib.sha256(statement.to_bytes()).digest()


def sign_statement(statement: RecoveryStatement, key: Ed25519PrivateKey) -> RecoveryStatement:
    """Return ``statement`` signed with the node's signing key."""
    return dataclasses.replace(statement, signature=key.sign(statement_bytes(statement)))


def verify_statement(
    statement: RecoveryStatement,
    key: Ed25519PublicKey,
    *,
    expected_node: str,
    old_keys: tuple[Ed25519PublicKey, ...] = (),
) -> None:
    """Check that ``expected_node`` signed the statement and both heads it names.

    The statement and its new head must verify under ``key`` (the node's key in force); the old head,
    signed before the restore, under ``key`` or one of ``old_keys`` (keys it rolled from).

    Raises:
        WrongNodeError: the statement names another node.
        SignatureError: a signature does not verify.
    """
    if statement.node_id != expected_node:
        raise WrongNodeError(f"recovery statement of {statement.node_id}, expected {expected_node}")
    try:
        key.verify(statement.signature, statement_bytes(statement))
    except InvalidSignature:
        raise SignatureError(
            f"recovery statement {statement.sequence} of {statement.node_id}: signature does not verify"
        ) from None
    verify_tree_head(statement.new_head, key)
    for candidate in (key, *old_keys):
        try:
            verify_tree_head(statement.old_head, candidate)
            return
        except SignatureError:
            continue
    raise SignatureError(
        f"recovery statement {statement.sequence} of {statement.node_id}: its old head of size "
        f"{statement.old_head.tree_size} was not signed by {statement.node_id}"
    )


def check_covers(
    statement: RecoveryStatement,
    *,
    held_head: TreeHead | None,
    held_manifest: tuple[int, bytes] | None,
) -> None:
    """Check that the statement covers all a peer holds of the node: no head of its log larger than the
    statement's old head (nor another root at its size), no manifest above the old manifest version
    (nor another manifest of that version).

    Raises:
        LogFork: the node erased more than its statement names (a fork, as without a statement).
    """
    old = statement.old_head
    if held_head is not None:
        if held_head.tree_size > old.tree_size:
            raise LogFork(
                f"its recovery statement {statement.sequence} names a head of size {old.tree_size}, but "
                f"we hold one of size {held_head.tree_size}: it erased more than it says"
            )
        if held_head.tree_size == old.tree_size and held_head.root_hash != old.root_hash:
            raise LogFork(
                f"its recovery statement {statement.sequence} names another root for size "
                f"{old.tree_size} than the head it showed us"
            )
    if held_manifest is not None:
        version, digest = held_manifest
        if version > statement.old_manifest_version:
            raise LogFork(
                f"its recovery statement {statement.sequence} names manifest version "
                f"{statement.old_manifest_version}, but we hold version {version}"
            )
        if version == statement.old_manifest_version and digest != statement.old_manifest_hash:
            raise LogFork(
                f"its recovery statement {statement.sequence} names another manifest of version {version} "
                "than the one we hold"
            )


def check_one_per_sequence(statements: Sequence[RecoveryStatement]) -> None:
    """Check that no two different statements (all of one node) carry one sequence number.

    Raises:
        LogFork: two different statements of one sequence, both as the node signed them.
    """
    by_sequence: dict[int, RecoveryStatement] = {}
    for statement in statements:
        seen = by_sequence.setdefault(statement.sequence, statement)
        if seen.to_bytes() != statement.to_bytes():
            raise LogFork(
                f"two different recovery statements numbered {statement.sequence}, both of node "
                f"{statement.node_id}"
            )


def is_before(head: TreeHead, statement: RecoveryStatement) -> bool:
    """Whether ``head`` belongs to the history the statement erased: no larger than its old head and
    signed no later than its new head (and not that head). Such a head is evidence, not a fork."""
    new = statement.new_head
    if (head.tree_size, head.root_hash) == (new.tree_size, new.root_hash):
        return False
    return head.tree_size <= statement.old_head.tree_size and head.timestamp <= new.timestamp
