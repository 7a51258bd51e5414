"""The node's side of the audit log: building events and signing tree heads.

Events are plain field dictionaries handed to the store's mutating methods (``audit=``); the store
turns them into chained, canonical entries (:func:`client.protocol.auditlog.make_entry`) inside the same
transaction as the event, so an entry exists iff its event does. :class:`AuditLog` then signs tree
heads over what the store holds — never over entries that are not yet committed — after each batch
of writes and at a fixed interval, and for an auditor on demand (:meth:`AuditLog.fresh_head`, rate-limited
per auditor). :func:`check_fields` builds the fields of an ``investigator.check`` entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.auditlog import TreeHead, sign_tree_head
from client.protocol.merkle import (
    CompactRange,
    consistency_proof_with,
    inclusion_proof_with,
    node_hash,
    range_root,
    root_from_hashes,
    tree_size_arg,
)
from client.protocol.model import Outcome, Query
from node.store.base import Store

__all__ = ["AuditLog", "FreshHead", "check_fields", "event"]

_CATCH_UP_PAGE = 20_000

log = logging.getLogger(__name__)


def event(
    action: str, *, actor: str, role: str, now: float, result: str = "ok", **fields: Any
) -> dict[str, Any]:
    """Return the fields of one audit event; values must be strings or integers, never indicators.

    ``actor`` is the certificate identity of whoever caused the event (a peer's node id, ``CC/name`` of
    a person, or ``node`` for the node itself), ``role`` its role, ``action`` a dotted verb such as
    ``peer.evaluate_oprf``.
    """
    return {"ts": int(now), "action": action, "actor": actor, "role": role, "result": result, **fields}


def refuse_gossip(store: Store, *, via: str, what: str, label: str, reason: str, now: float) -> None:
    """Log and audit a gossip item refused (``gossip.refused``, ``what`` it was), against the peer ``via``
    that handed it over, never against the node it names (``label`` names the item in the log line)."""
    log.warning("%s from %s ignored: %s", label, via, reason)
    store.append_audit(
        [event("gossip.refused", actor=via, role="peer", now=now, result="refused", what=what, reason=reason)]
    )


def check_fields(
    queries: Sequence[Query], outcomes: Sequence[Outcome], unopened: Mapping[tuple[str, str], int]
) -> dict[str, Any]:
    """The fields of the one ``investigator.check`` entry of a check call (``docs/auditors.md``).

    ``kinds``: ``{kind: indicators asked}`` (invalid ones included); ``count`` and ``invalid``;
    ``outcomes``: ``{peer: {status: n}}``, one per (indicator, peer) asked; ``outcomes_by_kind``: the
    same split by kind, ``{kind: {peer: {status: n}}}``, so that a batch of several kinds is counted
    under each; ``matches``: the (indicator, peer) pairs answered ``match`` (the sum of the outcomes'
    ``match``, not a further figure); ``unopened``: ``{peer: {kind: n}}``, hits that opened no record.
    """
    kinds: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    by_kind: dict[str, dict[str, dict[str, int]]] = {}
    for query, outcome in zip(queries, outcomes, strict=True):
        kinds[query.kind] = kinds.get(query.kind, 0) + 1
        for peer in outcome.peers:
            status = peer.status.value
            for tally in (
                counts.setdefault(peer.peer_id, {}),
                by_kind.setdefault(query.kind, {}).setdefault(peer.peer_id, {}),
            ):
                tally[status] = tally.get(status, 0) + 1
    hits: dict[str, dict[str, int]] = {}
    for (peer_id, kind), n in sorted(unopened.items()):
        hits.setdefault(peer_id, {})[kind] = n
    return {
        "kinds": kinds,
        "count": len(outcomes),
        "invalid": sum(1 for o in outcomes if o.error),
        "matches": sum(c.get("match", 0) for c in counts.values()),
        "outcomes": counts,
        "outcomes_by_kind": by_kind,
        "unopened": hits,
    }


@dataclass(frozen=True, slots=True)
class FreshHead:
    """What :meth:`AuditLog.fresh_head` gave an auditor."""

    head: TreeHead
    #: Entries committed when the head was chosen (more than ``head.tree_size`` if it is not fresh).
    log_size: int
    #: Whether ``head`` was signed for this request.
    signed_now: bool
    #: When the rate limit refused a new head: seconds until this auditor may have one; else 0.
    retry_after_s: float


#: Leaves per tile: the tree keeps one hash per complete tile in memory and reads leaves from the store.
TILE_LEVEL: Final = 8
#: Complete-subtree hashes at or above this level are kept once computed (a handful per million leaves).
_CACHE_LEVEL: Final = 16


class TileTree:
    """The audit log's Merkle tree in bounded memory: a compact range for the root, one hash per complete
    tile of 256 leaves, and leaf hashes read from the store when a proof needs them.

    Memory grows by 32 bytes (and a list slot) per 256 entries, ~2.5 MB for 10 million entries, instead
    of every leaf hash; an inclusion or consistency proof reads at most a few tiles' worth of leaf hashes.
    """

    def __init__(self, leaves: Callable[[int, int], list[bytes]]) -> None:
        self._leaves = leaves
        self._range = CompactRange()
        self._tiles: list[bytes] = []
        self._tail: list[bytes] = []
        self._cache: dict[tuple[int, int], bytes] = {}
        #: Proofs are served while the log grows: a proof reads the tiles and the tail under this lock.
        self._lock = threading.RLock()

    @property
    def size(self) -> int:
        return self._range.size

    def append(self, leaf: bytes) -> None:
        with self._lock:
            self._append(leaf)

    def _append(self, leaf: bytes) -> None:
        self._range.append(leaf)
        self._tail.append(leaf)
        if len(self._tail) == 1 << TILE_LEVEL:
            self._tiles.append(root_from_hashes(self._tail))
            self._tail = []

    def _perfect(self, level: int, index: int) -> bytes:
        """The root of the complete subtree ``[index * 2**level, (index + 1) * 2**level)``."""
        if level < TILE_LEVEL:
            start = index << level
            tile, offset = divmod(start, 1 << TILE_LEVEL)
            if tile == len(self._tiles):  # in the tail, still in memory
                return root_from_hashes(self._tail[offset : offset + (1 << level)])
            return root_from_hashes(self._leaves(start, start + (1 << level)))
        key = (level, index)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        width = 1 << (level - TILE_LEVEL)
        root = root_from_hashes_of_subtrees(self._tiles[index * width : (index + 1) * width])
        if level >= _CACHE_LEVEL:
            self._cache[key] = root
        return root

    def _size(self, size: int | None) -> int:
        return tree_size_arg(size, self.size)

    def root(self, size: int | None = None) -> bytes:
        with self._lock:
            size = self._size(size)
            return self._range.root() if size == self.size else range_root(self._perfect, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        with self._lock:
            return inclusion_proof_with(self._perfect, index, self._size(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        with self._lock:
            return consistency_proof_with(self._perfect, old_size, self._size(new_size))


def root_from_hashes_of_subtrees(roots: list[bytes]) -> bytes:
    """The root over equal, complete subtrees given by their roots (a power of two of them)."""
    level = list(roots)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class AuditLog:
    """Signs tree heads over the store's audit log; one per node process (thread-safe)."""

    def __init__(
        self,
        store: Store,
        node_id: str,
        key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._tree = TileTree(store.audit_leaf_hashes)

    def use_key(self, key: Ed25519PrivateKey) -> None:
        """Sign every later tree head with ``key`` (after a rollover of the node's signing key)."""
        with self._lock:
            self._key = key

    @property
    def public_key(self) -> bytes:
        """The raw Ed25519 public key that verifies this node's tree heads."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def _catch_up(self) -> None:
        size = self._store.audit_size()
        while self._tree.size < size:
            end = min(size, self._tree.size + _CATCH_UP_PAGE)
            for leaf in self._store.audit_leaf_hashes(self._tree.size, end):
                self._tree.append(leaf)

    def tree(self, size: int) -> TileTree:
        """The log's Merkle tree, holding at least ``size`` committed entries (for proofs)."""
        with self._lock:
            if self._tree.size < size:
                self._catch_up()
            if self._tree.size < size:
                from client.protocol.errors import NotFound

                raise NotFound(f"tree_size: the log holds {self._tree.size} entries, not {size}")
            return self._tree

    def sign_head(self, *, force: bool = False) -> TreeHead | None:
        """Sign and store a tree head over every committed entry, unless the last head covers them all.

        Returns the new head, or ``None`` when nothing was added since the last one (and not ``force``).
        """
        with self._lock:
            self._catch_up()
            last = self._store.latest_tree_head()
            if not force and last is not None and last.size == self._tree.size:
                return None
            unsigned = TreeHead(self._node_id, self._tree.size, self._tree.root(), int(self._clock()))
            head = sign_tree_head(unsigned, self._key)
            self._store.save_tree_head(head.tree_size, head.root_hash, head.timestamp, head.signature)
            log.info("signed tree head: size %d, root %s", head.tree_size, head.root_hash.hex())
            return head

    def fresh_head(self, auditor: str, *, interval_s: float) -> FreshHead:
        """A head over every committed entry, for ``auditor`` (``docs/auditors.md``, "Fresh tree heads").

        When the latest head already covers the whole log, that head (nothing is signed or consumed).
        Otherwise a head is signed now, unless ``auditor`` was given one less than ``interval_s``
        seconds ago (a token bucket of one in the store, shared by replicas): then the latest head, and
        ``log_size`` says how many entries it does not cover.
        """
        size = self._store.audit_size()
        latest = self.latest()
        if latest.tree_size >= size:
            return FreshHead(latest, size, False, 0.0)
        decision = self._store.consume_quota(
            f"audit.fresh_head:{auditor}",
            1,
            now=self._clock(),
            rate_per_s=1.0 / interval_s,
            burst=1,
            daily_limit=86_400,  # never the binding limit: interval_s is at least one second
        )
        if not decision.allowed:
            return FreshHead(latest, size, False, decision.retry_after_s)
        signed = self.sign_head()
        head = signed or self.latest()  # None: another thread signed over everything meanwhile
        return FreshHead(head, max(size, head.tree_size), signed is not None, 0.0)

    def latest(self) -> TreeHead:
        """The latest signed tree head, signing a first one if the node has none yet."""
        stored = self._store.latest_tree_head()
        if stored is None:
            head = self.sign_head(force=True)
            assert head is not None
            return head
        return TreeHead(self._node_id, stored.size, stored.root, stored.timestamp, stored.signature)
