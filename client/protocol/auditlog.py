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

import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.protocol.errors import EncodingError, ProtocolError, SignatureError
from client.protocol.merkle import CompactRange, leaf_hash

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


def _no_floats(text: str) -> Any:
    raise EncodingError(f"audit entries hold integers and strings only, not {text}")


#: Parses entries; floats, NaN and infinities are refused while parsing (canonical JSON has none).
_DECODER: Final = json.JSONDecoder(parse_float=_no_floats, parse_constant=_no_floats)
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
    return _encode(value)


def _encode(value: Mapping[str, Any]) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodingError("audit entries hold valid Unicode only (found a lone surrogate)") from None


def _refuse_floats(value: Any) -> None:
    kind = type(value)
    if kind is str or kind is int:
        return
    if kind is dict:
        for item in value.values():
            _refuse_floats(item)
        return
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
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise EncodingError(f"entry index {index!r} is not a non-negative integer")
    if (index == 0) != (previous is None):
        raise EncodingError("entry 0 has no predecessor and every other entry has one")
    prev = "" if previous is None else leaf_hash(previous).hex()
    return canonical_json({**fields, "v": ENTRY_VERSION, "i": index, "prev": prev})


def decode_entry(data: bytes) -> dict[str, Any]:
    """Parse an entry and check it is canonical; raise :class:`EncodingError` otherwise."""
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncodingError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise EncodingError("not a JSON object")
    if _encode(value) != data:
        raise EncodingError("not in canonical form")
    version, index, prev = value.get("v"), value.get("i"), value.get("prev")
    if type(version) is not int or version != ENTRY_VERSION:
        raise EncodingError(f"missing or unsupported version {version!r}")
    if type(index) is not int or index < 0:
        raise EncodingError(f"missing or bad index {index!r}")
    if not isinstance(prev, str):
        raise EncodingError("missing or bad predecessor hash")
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
        if not isinstance(value, Mapping):
            raise EncodingError("tree head: not a JSON object")
        expected = {"node_id": str, "tree_size": int, "root_hash": str, "timestamp": int, "signature": str}
        for name, kind in expected.items():
            if name not in value:
                raise EncodingError(f"tree head: missing field {name!r}")
            if type(value[name]) is not kind:
                raise EncodingError(f"tree head: field {name!r} must be a JSON {kind.__name__}")
        try:
            root_hash = bytes.fromhex(value["root_hash"])
            signature = bytes.fromhex(value["signature"])
        except ValueError:
            raise EncodingError("tree head: root_hash and signature must be hex") from None
        head = cls(value["node_id"], value["tree_size"], root_hash, value["timestamp"], signature)
        tree_head_bytes(head)
        return head


def tree_head_bytes(head: TreeHead) -> bytes:
    """Return the canonical, domain-separated bytes that a tree head's signature covers."""
    if not head.node_id.isascii():
        raise EncodingError("tree head: node_id must be ASCII")
    node = head.node_id.encode("ascii")
    if not 1 <= len(node) <= 255:
        raise EncodingError("tree head: node_id must be 1..255 ASCII bytes")
    if len(head.root_hash) != 32:
        raise EncodingError("tree head: root_hash must be 32 bytes")
    if not 0 <= head.tree_size < 2**64 or not 0 <= head.timestamp < 2**64:
        raise EncodingError("tree head: tree_size and timestamp must be unsigned 64-bit integers")
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
    for earlier, later in itertools.pairwise(ordered):
        if later.tree_size < earlier.tree_size:
            raise LogFork(
                f"tree head at {later.timestamp} has size {later.tree_size}, smaller than "
                f"{earlier.tree_size} signed earlier at {earlier.timestamp}: the log shrank"
            )


def _decoded_or_reason(entry: bytes) -> dict[str, Any] | str:
    try:
        return decode_entry(entry)
    except EncodingError as error:
        return str(error)


def _links_to(entry: bytes, predecessor_hash: bytes) -> bool:
    """Whether ``entry`` decodes and names ``predecessor_hash`` as its predecessor."""
    value = _decoded_or_reason(entry)
    return isinstance(value, dict) and value["prev"] == predecessor_hash.hex()


def _chain_fault(
    entries: Sequence[bytes], k: int, value: dict[str, Any] | str, previous: bytes | None, verified: int
) -> tuple[int, str] | None:
    """Check entry ``k`` against its index and hash chain; return ``(first bad index, reason)`` or None.

    ``previous`` is the leaf hash of entry ``k - 1`` and ``verified`` the largest size whose signed root
    the entries before ``k`` reproduce (those entries are then exactly what the node signed). With one
    alteration the chain pins it down; where the chain alone is ambiguous (the last entry), the signed
    roots decide.
    """
    if isinstance(value, str):
        return k, f"not a canonical audit entry ({value})"
    index: int = value["i"]
    n = len(entries)
    if index == k:
        expected = "" if previous is None else previous.hex()
        if value["prev"] == expected:
            return None
        if k == 0:
            return 0, "entry 0 must name no predecessor"
        if verified >= k:
            return k, f"its hash-chain link does not match entry {k - 1}, which the node signed"
        if k + 1 < n:
            if _links_to(entries[k + 1], leaf_hash(entries[k])):
                return k - 1, f"its content differs from what entry {k}'s hash chain records"
            return k, f"its hash-chain link does not match entry {k - 1}"
        return k - 1, (
            f"its content differs from what entry {k}'s hash chain records (or entry {k}'s link was altered)"
        )
    if index > k:
        return k, f"entry missing or moved (found the entry of index {index})"
    if index == k - 1:
        # Two entries carry index k - 1: one of them was inserted (or is a copy).
        if verified >= k:
            return k, f"a second entry with index {k - 1} (inserted or duplicated)"
        if entries[k] == entries[k - 1]:
            return k, f"a duplicate of entry {k - 1}"
        if k + 1 == n or _links_to(entries[k + 1], leaf_hash(entries[k])):
            return k - 1, f"an entry was inserted (entry {k} carries index {k - 1})"
        return k, f"an entry was inserted (it carries index {k - 1})"
    return k, f"entries out of order (found the entry of index {index})"


def _root_break(size: int, verified: int, count: int) -> LogBreak:
    """The break shown when the entries do not give the root signed for ``size``."""
    if size == count:
        also = f" (or entries {verified}..{size - 1} were rewritten)" if verified < size - 1 else ""
        return LogBreak(size - 1, f"differs from what the node signed in its tree head of size {size}{also}")
    return LogBreak(
        verified,
        f"entries {verified}..{size - 1} were rewritten with a recomputed hash chain: they do not give "
        f"the root the node signed for size {size}",
    )


def _walk(entries: Sequence[bytes], heads: Sequence[TreeHead]) -> None:
    """One pass over the entries: decode, index, hash chain and every signed root; raise the first break."""
    roots = {head.tree_size: head.root_hash for head in heads}
    count = len(entries)
    if not roots:
        if count:
            raise LogBreak(0, "no signed tree head covers the log")
        return
    latest = max(roots)
    accumulator = CompactRange()
    verified = 0
    root_failure: int | None = None
    previous: bytes | None = None
    for k, entry in enumerate(entries):
        if root_failure is None and k in roots:
            if accumulator.root() == roots[k]:
                verified = k
            else:
                root_failure = k
        fault = _chain_fault(entries, k, _decoded_or_reason(entry), previous, verified)
        if fault is not None:
            if root_failure is not None and fault[0] >= root_failure:
                raise _root_break(root_failure, verified, count)
            raise LogBreak(*fault)
        previous = leaf_hash(entry)
        accumulator.append(previous)
    if root_failure is None and count in roots and accumulator.root() != roots[count]:
        root_failure = count
    if root_failure is not None:
        raise _root_break(root_failure, verified, count)
    if latest > count:
        raise LogBreak(
            count, f"missing: the log holds {count} entries but a signed tree head covers {latest}"
        )
    if count > latest:
        raise LogBreak(latest, f"not covered by any signed tree head (the latest covers {latest} entries)")


def verify_log(
    entries: Sequence[bytes], heads: Sequence[TreeHead], key: Ed25519PublicKey, *, node_id: str
) -> None:
    """Verify a fetched log: every head signed by ``key`` for ``node_id``, no fork, every root recomputed.

    ``entries`` must be exactly the entries ``[0, latest head size)``: each canonical, carrying its own
    index and its predecessor's leaf hash, and every head's root must be the RFC 9162 root of the
    entries before its size.

    Raises:
        SignatureError: a head names another node or its signature does not verify.
        LogFork: two heads cannot belong to one append-only log.
        LogBreak: the entries are not the log the heads sign; ``index`` is the first entry at fault
            (altered, missing, moved, inserted, duplicated, or not covered by any head).
    """
    for head in heads:
        if head.node_id != node_id:
            raise SignatureError(
                f"tree head of size {head.tree_size} names node {head.node_id!r}, not {node_id!r}"
            )
        verify_tree_head(head, key)
    check_heads(heads)
    _walk(entries, heads)
