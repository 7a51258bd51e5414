"""The audit log's formats and its offline verification (sans-I/O).

Every exchange event of a node is one *entry*: a canonical JSON object (keys sorted, no insignificant
white space, UTF-8, integers and strings only) that names who did what, never a raw indicator, a digest
or a blinded element. Each entry carries its own index ``"i"`` and the RFC 9162 leaf hash of the entry
before it (``"prev"``, hex; empty for entry 0), so a break can be pinned to one index, and the entries
are the leaves of an RFC 9162 Merkle tree whose heads the node signs with Ed25519, so a log cannot be
shortened, extended or rewritten without the signatures showing it.

Signed tree head bytes (``tree_head_bytes``)::

    "petanda/v1/tree-head" || 0x00 || u8 len(node_id) || node_id (ASCII)
      || u64be tree_size || root_hash (32 bytes) || u64be timestamp

:func:`verify_log` checks a fetched log completely and raises :class:`LogBreak` naming the first bad
index; :func:`check_heads` finds forks between tree heads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.errors import EncodingError, ProtocolError, SignatureError
from client.merkle import CompactRange, leaf_hash

__all__ = [
    "ENTRY_VERSION",
    "LogBreak",
    "LogFork",
    "TreeHead",
    "canonical_json",
    "check_heads",
    "decode_entry",
    "make_entry",
    "sign_tree_head",
    "tree_head_bytes",
    "verify_log",
    "verify_tree_head",
]

ENTRY_VERSION: Final = 1
_TREE_HEAD_LABEL: Final = b"petanda/v1/tree-head\x00"


class LogBreak(ProtocolError):
    """The log is not complete and unaltered; ``index`` is the first entry at fault."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index
        self.reason = reason


class LogFork(ProtocolError):
    """Two signed tree heads cannot both be heads of one append-only log."""


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """Encode a JSON object canonically: sorted keys, ``,``/``:`` separators, UTF-8, no floats."""
    _refuse_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise EncodingError("audit entries hold integers and strings only, not floats")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def make_entry(index: int, previous: bytes | None, fields: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of entry ``index`` whose predecessor's raw bytes are ``previous``.

    ``fields`` are the event's own fields (``ts``, ``actor``, ``role``, ``action``, ...); ``v``, ``i``
    and ``prev`` are reserved and set here.
    """
    reserved = {"v", "i", "prev"} & fields.keys()
    if reserved:
        raise EncodingError(f"audit entry fields {sorted(reserved)} are reserved")
    if (index == 0) != (previous is None):
        raise EncodingError("entry 0 has no predecessor and every other entry has one")
    prev = "" if previous is None else leaf_hash(previous).hex()
    return canonical_json({**fields, "v": ENTRY_VERSION, "i": index, "prev": prev})


def decode_entry(data: bytes) -> dict[str, Any]:
    """Parse an entry and check it is canonical; raise :class:`EncodingError` otherwise."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncodingError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise EncodingError("not a JSON object")
    if canonical_json(value) != data:
        raise EncodingError("not in canonical form")
    if value.get("v") != ENTRY_VERSION or not isinstance(value.get("i"), int):
        raise EncodingError("missing or unsupported version or index")
    return value


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed tree head: the log of ``node_id`` had ``tree_size`` entries with root ``root_hash``."""

    node_id: str
    tree_size: int
    root_hash: bytes
    timestamp: int
    signature: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """Return the head as a JSON-able object (hex for bytes)."""
        return {
            "node_id": self.node_id,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp": self.timestamp,
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> TreeHead:
        """Parse :meth:`to_json`'s form, raising :class:`EncodingError` naming the bad field."""
        try:
            head = cls(
                node_id=str(value["node_id"]),
                tree_size=int(value["tree_size"]),
                root_hash=bytes.fromhex(value["root_hash"]),
                timestamp=int(value["timestamp"]),
                signature=bytes.fromhex(value["signature"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EncodingError(f"tree head: bad or missing field: {error}") from None
        tree_head_bytes(head)
        return head


def tree_head_bytes(head: TreeHead) -> bytes:
    """Return the canonical, domain-separated bytes that a tree head's signature covers."""
    node = head.node_id.encode("ascii")
    if not 1 <= len(node) <= 255:
        raise EncodingError("tree head: node_id must be 1..255 ASCII bytes")
    if len(head.root_hash) != 32:
        raise EncodingError("tree head: root_hash must be 32 bytes")
    if head.tree_size < 0 or head.timestamp < 0:
        raise EncodingError("tree head: tree_size and timestamp must not be negative")
    return (
        _TREE_HEAD_LABEL
        + bytes([len(node)])
        + node
        + struct.pack(">Q", head.tree_size)
        + head.root_hash
        + struct.pack(">Q", head.timestamp)
    )


def sign_tree_head(head: TreeHead, key: Ed25519PrivateKey) -> TreeHead:
    """Return ``head`` with its Ed25519 signature."""
    unsigned = TreeHead(head.node_id, head.tree_size, head.root_hash, head.timestamp)
    return TreeHead(*_fields(unsigned), signature=key.sign(tree_head_bytes(unsigned)))


def _fields(head: TreeHead) -> tuple[str, int, bytes, int]:
    return head.node_id, head.tree_size, head.root_hash, head.timestamp


def verify_tree_head(head: TreeHead, key: Ed25519PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``head``'s signature verifies under ``key``."""
    try:
        key.verify(head.signature, tree_head_bytes(head))
    except InvalidSignature:
        raise SignatureError(f"tree head of size {head.tree_size}: signature does not verify") from None


def check_heads(heads: Sequence[TreeHead]) -> None:
    """Raise :class:`LogFork` if two heads cannot belong to one append-only log.

    Sorted by time, sizes never shrink, and two heads of the same size have the same root. (A root
    that is not a prefix of a later one is found by :func:`verify_log` against the entries, or by a
    consistency proof between peers.)
    """
    by_size: dict[int, TreeHead] = {}
    for head in heads:
        seen = by_size.setdefault(head.tree_size, head)
        if seen.root_hash != head.root_hash:
            raise LogFork(f"two tree heads of size {head.tree_size} with different roots")
    ordered = sorted(heads, key=lambda h: (h.timestamp, h.tree_size))
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        if later.tree_size < earlier.tree_size:
            raise LogFork(
                f"tree head at {later.timestamp} has size {later.tree_size}, smaller than "
                f"{earlier.tree_size} signed earlier at {earlier.timestamp}: the log shrank"
            )


def _locate_break(entries: Sequence[bytes]) -> None:
    """Walk the index and hash chain; raise :class:`LogBreak` at the first entry at fault."""
    hashes = [leaf_hash(entry) for entry in entries]
    decoded: list[dict[str, Any] | None] = []
    for entry in entries:
        try:
            decoded.append(decode_entry(entry))
        except EncodingError:
            decoded.append(None)

    def link_ok(k: int) -> bool:
        """Entry k names entry k-1's leaf hash (entry 0 names none)."""
        value = decoded[k]
        if value is None:
            return False
        expected = "" if k == 0 else hashes[k - 1].hex()
        return bool(value.get("prev") == expected)

    for k, value in enumerate(decoded):
        if value is None:
            raise LogBreak(k, "not a canonical audit entry")
        if value["i"] != k:
            if k > 0 and value["i"] == k - 1:
                raise LogBreak(k - 1, f"an entry was inserted (entry {k} carries index {k - 1})")
            if value["i"] > k:
                raise LogBreak(k, f"entry missing or moved (found the entry of index {value['i']})")
            raise LogBreak(k, f"entries out of order (found the entry of index {value['i']})")
        if not link_ok(k):
            # Entry k-1's content changed (only link k breaks), or entry k's own "prev" did (links k
            # and k+1 both break, since entry k's hash changed with it).
            if k + 1 < len(entries) and not link_ok(k + 1):
                raise LogBreak(k, "its hash-chain link does not match the entry before it")
            raise LogBreak(k - 1, "its content differs from what the next entry's hash chain records")


def verify_log(
    entries: Sequence[bytes], heads: Sequence[TreeHead], key: Ed25519PublicKey, *, node_id: str
) -> None:
    """Verify a fetched log: every head signed by ``key``, no fork, every head's root recomputed.

    Raises :class:`LogBreak` naming the first bad index, :class:`LogFork` or :class:`SignatureError`.
    """
    for head in heads:
        if head.node_id != node_id:
            raise SignatureError(f"tree head of size {head.tree_size} names node {head.node_id!r}")
        verify_tree_head(head, key)
    check_heads(heads)
    _locate_break(entries)
    wanted = sorted({head.tree_size: head for head in heads}.values(), key=lambda h: h.tree_size)
    if wanted and wanted[-1].tree_size > len(entries):
        raise LogBreak(
            len(entries),
            f"missing: the log holds {len(entries)} entries but a signed tree head covers "
            f"{wanted[-1].tree_size}",
        )
    accumulator = CompactRange()
    previous_size = 0
    for head in wanted:
        for index in range(previous_size, head.tree_size):
            accumulator.append(leaf_hash(entries[index]))
        if accumulator.root() != head.root_hash:
            raise LogBreak(
                max(head.tree_size - 1, 0),
                f"the entries up to {head.tree_size} do not give the root the node signed",
            )
        previous_size = head.tree_size
