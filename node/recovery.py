"""Recovery as a protocol event: a restored node's signed recovery statement, and its peers' side.

A node restored from a backup (``petanda-node restore``, :mod:`node.backup`) holds an audit log that is a
prefix of what its peers saw and manifests older than theirs. :func:`recover` asks every peer what it
holds of this node (``GetHeld``: the latest tree head, manifest and recovery statements, each signed by
this node), keeps the latest manifest they hold so the next publication is above it and names it
(:meth:`node.store.base.Store.adopt_manifest`), and signs a :class:`RecoveryStatement` from the latest
head they hold to a head of the restored log. The statement travels with every tree-head exchange.

A peer takes statements with :func:`take_statements`: one that verifies under the node's pinned key
and covers all the peer holds of it (:func:`client.protocol.recovery.check_covers`) replaces the heads
it kept of that node by the statement's new head; the replaced heads and the statement are kept as
evidence (meta ``recovery.<node>``) and ``node.recovered`` is audited. A statement that does not cover
what the peer holds is a fork of the node (it signed it); one that does not verify is ignored and
audited against whoever handed it over, never against the node it names.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import peer_pb2
from client.protocol import errors
from client.protocol.auditlog import LogFork, TreeHead, verify_tree_head
from client.protocol.manifest import GENESIS_HASH, SignedManifest, manifest_hash, verify_signed_manifest
from client.protocol.recovery import (
    REASON_MAX,
    RECOVERY_VERSION,
    RecoveryStatement,
    check_covers,
    sign_statement,
    statement_hash,
    verify_statement,
)
from client.protocol.versions import format_versions
from client.transport.convert import tree_head_from_proto, tree_head_to_proto
from node.audit import event, refuse_gossip
from node.node import RECOVERY_META, Node
from node.peers import Links, peer_error, printable
from node.store.base import HeadRow

log = logging.getLogger(__name__)

__all__ = [
    "GOSSIP_OWN_MAX",
    "Held",
    "Recovery",
    "check_reason",
    "gossip",
    "held_of",
    "kept",
    "not_asked",
    "own_statements",
    "recover",
    "take_statements",
]

#: Own statements sent with a tree-head exchange (the newest): recoveries are rare.
GOSSIP_OWN_MAX: Final = 4
_ACCEPT_LOCK: Final = threading.Lock()


def kept(node: Node, node_id: str) -> list[dict[str, Any]]:
    """The recovery statements kept of ``node_id`` (this node's own too), oldest first: each a dict of
    ``sequence``, ``sha256``, ``statement`` (hex), ``via``, ``at`` and ``superseded`` (the heads it
    replaced, as :meth:`TreeHead.to_json` gives them)."""
    raw = node.store.get_meta(RECOVERY_META.format(node_id))
    records: list[dict[str, Any]] = json.loads(raw) if raw else []
    return records


def _statements(node: Node, node_id: str) -> list[RecoveryStatement]:
    return [RecoveryStatement.from_bytes(bytes.fromhex(r["statement"])) for r in kept(node, node_id)]


def gossip(node: Node, *, exclude: str) -> list[bytes]:
    """What this node hands over in a tree-head exchange: its own newest statements and the latest it
    accepted of every other peer (not ``exclude``'s, the caller's)."""
    items = [s.to_bytes() for s in _statements(node, node.id)[-GOSSIP_OWN_MAX:]]
    for entry in node.config.peers:
        if entry.id != exclude and (records := kept(node, entry.id)):
            items.append(bytes.fromhex(records[-1]["statement"]))
    return items


def own_statements(node: Node, *, newest: int | None = GOSSIP_OWN_MAX) -> list[bytes]:
    """This node's own statements, oldest first: the ``newest`` ones, as its tree-head requests carry
    them, or every one (``None``, for its auditors)."""
    statements = _statements(node, node.id)
    return [s.to_bytes() for s in (statements if newest is None else statements[-newest:])]


# --- the peer's side ----------------------------------------------------------------------------------


def _old_keys(node: Node, node_id: str) -> tuple[Ed25519PublicKey, ...]:
    history = json.loads(node.store.get_meta(f"peer.{node_id}.key_history") or "[]")
    return tuple(Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in reversed(history))


def _refuse(node: Node, via: str, reason: str, *, now: float) -> None:
    refuse_gossip(node.store, via=via, what="recovery", label="recovery statement", reason=reason, now=now)


def take_statements(
    node: Node, items: Sequence[bytes], *, via: str, now: float, only: str | None = None
) -> list[RecoveryStatement]:
    """Check the recovery statements ``via`` handed over; accept those that cover what we hold.

    ``only`` restricts them to one member's (a caller sends only its own). Returns the statements
    accepted now. A statement that does not parse or verify is audited against ``via`` (``gossip.refused``);
    one that does not cover what we hold of its node, or a second statement of one sequence, is that
    node's fork (:meth:`Node.record_fork`).
    """
    configured = {p.id for p in node.config.peers}
    accepted: list[RecoveryStatement] = []
    for data in items[: len(configured) + GOSSIP_OWN_MAX]:
        try:
            statement = RecoveryStatement.from_bytes(data)
            node_id = statement.node_id
            if node_id == node.id or node_id not in configured or (only is not None and node_id != only):
                continue
            pinned = node.peer_signing_key(node_id)
            if pinned is None:  # nothing held of it yet: nothing to cover
                continue
            verify_statement(
                statement,
                Ed25519PublicKey.from_public_bytes(pinned),
                expected_node=node_id,
                old_keys=_old_keys(node, node_id),
            )
        except errors.PetandaError as error:
            _refuse(node, via, printable(str(error)), now=now)
            continue
        with _ACCEPT_LOCK:  # two syncs (the node's own and a gossiper's) may bring one statement at once
            taken = _accept(node, statement, via=via, now=now)
        if taken:
            accepted.append(statement)
    return accepted


def _accept(node: Node, statement: RecoveryStatement, *, via: str, now: float) -> bool:
    node_id = statement.node_id
    digest = statement_hash(statement).hex()
    records = kept(node, node_id)
    same = [r for r in records if r["sequence"] == statement.sequence]
    if same:
        if same[0]["sha256"] != digest:
            node.record_fork(
                node_id,
                f"two recovery statements of sequence {statement.sequence} both signed by {node_id}: "
                f"{same[0]['sha256'][:16]}… (from {same[0]['via']}) and {digest[:16]}… (from {via})",
                now=now,
                subject="recovery",
            )
        return False
    if records and statement.sequence < max(r["sequence"] for r in records):
        return False  # an older statement than one already accepted: nothing it could cover now
    heads = node.store.peer_tree_heads(node_id)
    last = max(heads, key=lambda h: (h.size, h.timestamp)) if heads else None
    held_head = (
        None if last is None else TreeHead(node_id, last.size, last.root, last.timestamp, last.signature)
    )
    cached = node.store.peer_manifest(node_id)
    held_manifest = None
    issued = 0
    if cached is not None:
        try:
            manifest = SignedManifest.from_bytes(cached).manifest
            held_manifest = (manifest.version, manifest_hash(manifest))
            issued = manifest.issued_at
        except errors.EncodingError:
            held_manifest = None
    if (held_head is not None and held_head.timestamp >= statement.new_head.timestamp) or (
        issued >= statement.issued_at
    ):
        # We hold something it signed at or after the statement: a replay of an earlier recovery (or
        # its clock went back). Ignored, never a fork: the heads it shows us decide as without it.
        return False
    try:
        check_covers(statement, held_head=held_head, held_manifest=held_manifest)
    except LogFork as fork:
        node.record_fork(node_id, str(fork), now=now)
        return False
    new = statement.new_head

    def evidence(before: str | None, dropped: list[HeadRow]) -> str:
        value: list[dict[str, Any]] = json.loads(before) if before else []
        value.append(
            {
                "sequence": statement.sequence,
                "sha256": digest,
                "statement": statement.to_bytes().hex(),
                "via": via,
                "at": int(now),
                "superseded": [
                    TreeHead(node_id, h.size, h.root, h.timestamp, h.signature).to_json() for h in dropped
                ],
            }
        )
        return json.dumps(value, separators=(",", ":"))

    node.store.reset_peer_tree_heads(
        node_id,
        HeadRow(new.tree_size, new.root_hash, new.timestamp, new.signature),
        meta_key=RECOVERY_META.format(node_id),
        meta_value=evidence,
        audit=[
            event(
                "node.recovered",
                actor=node_id,
                role="peer",
                now=now,
                via=via,
                sequence=statement.sequence,
                old_size=statement.old_head.tree_size,
                old_root=statement.old_head.root_hash.hex(),
                new_size=new.tree_size,
                new_root=new.root_hash.hex(),
                old_manifest_version=statement.old_manifest_version,
                reason=printable(statement.reason),
                statement_sha256=digest,
            )
        ],
    )
    log.warning(
        "peer %s recovered from a backup (statement %d, via %s): its log goes back from size %d to %d; "
        "reason: %s",
        node_id,
        statement.sequence,
        via,
        statement.old_head.tree_size,
        new.tree_size,
        printable(statement.reason),
    )
    return True


# --- the restored node's side -------------------------------------------------------------------------


@dataclass
class Held:
    """What one peer holds of this node, each item verified under this node's key."""

    head: TreeHead | None = None
    manifest: SignedManifest | None = None
    sequences: list[int] = field(default_factory=list)


@dataclass
class Recovery:
    """What :func:`recover` did: the statement signed (None when the peers hold nothing this node
    lost), the manifest version adopted from them, and the peers asked."""

    statement: RecoveryStatement | None
    adopted_version: int | None
    answered: list[str]
    unreachable: dict[str, str]


def held_of(node: Node, peer_id: str) -> peer_pb2.GetHeldResponse:
    """The ``GetHeld`` answer to ``peer_id``: what this node holds of it."""
    heads = node.store.peer_tree_heads(peer_id)
    response = peer_pb2.GetHeldResponse(
        signed_manifest=node.store.peer_manifest(peer_id) or b"",
        recoveries=[bytes.fromhex(r["statement"]) for r in kept(node, peer_id)],
    )
    if heads:
        h = max(heads, key=lambda h: (h.size, h.timestamp))
        response.head.CopyFrom(
            tree_head_to_proto(TreeHead(peer_id, h.size, h.root, h.timestamp, h.signature))
        )
    return response


def _ask(node: Node, links: Links, peer_id: str, key: Ed25519PublicKey, *, timeout: float) -> Held:
    """Ask one peer what it holds of us; items not signed by us are dropped (logged): a peer cannot make
    us claim a head or manifest we never signed."""
    response = links.get(peer_id).stub.GetHeld(peer_pb2.GetHeldRequest(), timeout=timeout)
    held = Held()
    if response.HasField("head"):
        head = tree_head_from_proto(response.head)
        try:
            if head.node_id != node.id:
                raise errors.WrongNodeError(f"a head of {printable(head.node_id)}")
            verify_tree_head(head, key)
            held.head = head
        except errors.PetandaError as error:
            log.warning("restore: %s returned a head we did not sign: %s", peer_id, error)
    if response.signed_manifest:
        try:
            signed = SignedManifest.from_bytes(response.signed_manifest)
            verify_signed_manifest(signed, key, expected_node=node.id)
            held.manifest = signed
        except errors.PetandaError as error:
            log.warning("restore: %s returned a manifest we did not sign: %s", peer_id, error)
    for data in response.recoveries:
        try:
            statement = RecoveryStatement.from_bytes(data)
            verify_statement(statement, key, expected_node=node.id)
            held.sequences.append(statement.sequence)
        except errors.PetandaError as error:
            log.warning("restore: %s returned a statement we did not sign: %s", peer_id, error)
    return held


def not_asked(node: Node, links: Links, peer_id: str) -> str | None:
    """Why ``peer_id`` cannot be asked ``GetHeld``, a message of protocol version
    :data:`RECOVERY_VERSION` that only a link where both sides speak it carries; None when it can be
    asked, or when its versions are unknown (it did not answer the probe: the call itself says why)."""
    ours = node.config.protocol.versions
    if RECOVERY_VERSION not in ours:
        return (
            f"this node speaks protocol version {format_versions(ours)} only ([protocol] versions), and "
            f"GetHeld is a message of version {RECOVERY_VERSION}"
        )
    if links.speaks(peer_id, RECOVERY_VERSION):
        return None
    served = links.versions()[peer_id].served
    if served is None:
        return None
    return (
        f"it serves protocol version {format_versions(served)} only, and GetHeld is a message of version "
        f"{RECOVERY_VERSION}: it cannot say what it holds of this node, and records a fork of it until it "
        "upgrades"
    )


def _lost_log(node: Node, old: TreeHead) -> bool:
    """Whether the restored log lacks ``old`` (it is not a head of our log as it stands)."""
    if old.tree_size > node.store.audit_size():
        return True
    return node.audit.tree(old.tree_size).root(old.tree_size) != old.root_hash


def _lost_manifest(node: Node, signed: SignedManifest) -> bool:
    ours = node.store.manifest(signed.manifest.version)
    return ours is None or manifest_hash(SignedManifest.from_bytes(ours).manifest) != manifest_hash(
        signed.manifest
    )


def check_reason(reason: str) -> None:
    """Refuse a reason the statement cannot carry (before anything is changed).

    Raises:
        InputError: empty, longer than :data:`REASON_MAX` bytes, or not valid UTF-8.
    """
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        size = 0
    if not 1 <= size <= REASON_MAX:
        raise errors.InputError(f"--reason: must be 1 to {REASON_MAX} bytes of valid UTF-8 (it is signed)")


def recover(
    node: Node,
    links: Links,
    *,
    reason: str,
    now: float,
    timeout: float | None = None,
    allow_unreachable: bool = False,
    actor: str = "node",
) -> Recovery:
    """Learn from every peer what it holds of this node and, if it holds anything the restored store
    lost, adopt its latest manifest and sign a recovery statement (audited ``node.restored``).

    Raises:
        PeerUnavailable: a peer did not answer, or does not speak protocol version 3 (:func:`not_asked`;
            nothing changed), unless ``allow_unreachable``: a peer left out records a fork if it holds a
            later head or manifest than those that answered (a version-2 peer records one anyway).
    """
    check_reason(reason)
    timeout = node.config.sync.timeout_s if timeout is None else timeout
    key = Ed25519PublicKey.from_public_bytes(node.audit.public_key)
    answers: dict[str, Held] = {}
    unreachable: dict[str, str] = {}
    for entry in node.config.peers:
        why = not_asked(node, links, entry.id)
        if why is not None:
            unreachable[entry.id] = why
            continue
        try:
            answers[entry.id] = _ask(node, links, entry.id, key, timeout=timeout)
        except grpc.RpcError as error:
            unreachable[entry.id] = str(peer_error(entry.id, error)).removeprefix(f"{entry.id}: ")
    if unreachable and not allow_unreachable:
        raise errors.PeerUnavailable(
            "restore: not every peer said what it holds of this node: "
            + "; ".join(f"{peer}: {why}" for peer, why in sorted(unreachable.items()))
            + " (no recovery statement signed: run `petanda-node restore` again, without a backup file, "
            "once they answer, or pass --allow-unreachable)"
        )
    heads = [h.head for h in answers.values() if h.head is not None]
    manifests = [h.manifest for h in answers.values() if h.manifest is not None]
    old_head = max(heads, key=lambda h: (h.tree_size, h.timestamp)) if heads else None
    old_manifest = max(manifests, key=lambda m: m.manifest.version) if manifests else None
    lost = (old_head is not None and _lost_log(node, old_head)) or (
        old_manifest is not None and _lost_manifest(node, old_manifest)
    )
    answered = sorted(answers)
    if not lost:
        return Recovery(None, None, answered, unreachable)
    adopted = None
    latest = node.store.latest_version()
    if old_manifest is not None and old_manifest.manifest.version > (latest or 0):
        adopted = old_manifest.manifest.version
        node.store.adopt_manifest(
            adopted,
            old_manifest.to_bytes(),
            audit=[
                event(
                    "manifest.adopted",
                    actor=actor,
                    role="node",
                    now=now,
                    version=adopted,
                    manifest_hash=manifest_hash(old_manifest.manifest).hex(),
                )
            ],
        )
    new_head = node.audit.sign_head(force=True)
    assert new_head is not None
    sequences = [s for h in answers.values() for s in h.sequences]
    sequences += [r["sequence"] for r in kept(node, node.id)]
    statement = sign_statement(
        RecoveryStatement(
            node_id=node.id,
            sequence=max(sequences, default=0) + 1,
            issued_at=int(now),
            old_head=old_head or new_head,
            new_head=new_head,
            old_manifest_version=old_manifest.manifest.version if old_manifest else 0,
            old_manifest_hash=manifest_hash(old_manifest.manifest) if old_manifest else GENESIS_HASH,
            reason=reason,
        ),
        node.signing_key,
    )
    record = {
        "sequence": statement.sequence,
        "sha256": statement_hash(statement).hex(),
        "statement": statement.to_bytes().hex(),
        "via": node.id,
        "at": int(now),
        "superseded": [],
    }
    node.store.set_meta(
        RECOVERY_META.format(node.id),
        json.dumps([*kept(node, node.id), record], separators=(",", ":")),
        audit=[
            event(
                "node.restored",
                actor=actor,
                role="node",
                now=now,
                sequence=statement.sequence,
                old_size=statement.old_head.tree_size,
                old_root=statement.old_head.root_hash.hex(),
                new_size=new_head.tree_size,
                new_root=new_head.root_hash.hex(),
                old_manifest_version=statement.old_manifest_version,
                reason=printable(reason),
                statement_sha256=record["sha256"],
                asked=",".join(answered),
                unreachable=",".join(sorted(unreachable)),
            )
        ],
    )
    node.audit.sign_head()
    log.warning(
        "recovery statement %d signed: log from size %d back to %d, manifests continue above version %d",
        statement.sequence,
        statement.old_head.tree_size,
        new_head.tree_size,
        statement.old_manifest_version,
    )
    return Recovery(statement, adopted, answered, unreachable)
