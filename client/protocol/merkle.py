"""RFC 9162 (Certificate Transparency v2) Merkle trees over SHA-256: roots, inclusion and consistency
proofs, and their verification.

The hashing is RFC 6962's and RFC 9162's: a leaf hashes as ``SHA-256(0x00 || entry)``, an interior node
as ``SHA-256(0x01 || left || right)``, the empty tree as ``SHA-256("")``, and a tree of ``n > 1`` leaves
splits at the largest power of two below ``n``. The verifiers follow the bit-twiddling algorithms of
RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by step.

Three ways in, for three sizes of problem:

* :func:`root_hash`, :func:`inclusion_proof`, :func:`consistency_proof` take raw entries: the reference
  definitions, for tests and small trees;
* the ``*_from_hashes`` functions take precomputed leaf hashes (O(n) per call, no re-hashing of entries);
* :class:`MerkleTree` keeps every complete subtree hash (about 2n hashes) so that roots and proofs for any
  past size cost O(log n); :class:`CompactRange` keeps only the O(log n) hashes needed to append and to
  compute the current root, for an append-only log that stores its leaves elsewhere.

Verification failures raise :class:`~client.protocol.errors.InclusionProofError` or
:class:`~client.protocol.errors.ConsistencyProofError`; bad local arguments to a proof generator raise
:class:`~client.protocol.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from client.protocol.errors import ConsistencyProofError, InclusionProofError, InputError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleTree",
    "consistency_proof",
    "consistency_proof_from_hashes",
    "consistency_proof_with",
    "inclusion_proof",
    "inclusion_proof_from_hashes",
    "inclusion_proof_with",
    "leaf_hash",
    "node_hash",
    "range_root",
    "root_from_hashes",
    "root_from_inclusion_proof",
    "root_hash",
    "tree_size_arg",
    "verify_consistency",
    "verify_inclusion",
    "verify_inclusion_hash",
]

#: Size of every hash in the tree (SHA-256).
HASH_SIZE: Final = 32
#: Root of the empty tree: SHA-256 of the empty string.
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256

#: ``perfect(level, index)`` returns the hash of the complete subtree of ``2**level`` leaves that starts
#: at leaf ``index * 2**level``.
PerfectNodes = Callable[[int, int], bytes]


def leaf_hash(entry: bytes) -> bytes:
    """Return the hash of a leaf: ``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


# --- roots --------------------------------------------------------------------------------------------


def _check_hashes(hashes: Sequence[bytes], what: str) -> None:
    for i, h in enumerate(hashes):
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise InputError(f"{what}[{i}]: expected a {HASH_SIZE}-byte hash")


def _reduce(hashes: Sequence[bytes]) -> bytes:
    """Root of a non-empty list of leaf hashes, level by level (an odd last node moves up unchanged)."""
    level = list(hashes)
    while len(level) > 1:
        pairs = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            pairs.append(level[-1])
        level = pairs
    return level[0]


def root_from_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the root of the tree whose leaf hashes are ``leaf_hashes`` (O(n) hashes)."""
    _check_hashes(leaf_hashes, "leaf_hashes")
    if not leaf_hashes:
        return EMPTY_ROOT
    return _reduce(leaf_hashes)


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """Return the RFC 9162 Merkle tree hash of the raw entries ``leaves`` (``SHA-256("")`` if empty)."""
    return root_from_hashes([leaf_hash(e) for e in leaves])


# --- proof generation over any source of complete-subtree hashes ------------------------------------


def _range_root(perfect: PerfectNodes, lo: int, hi: int) -> bytes:
    """Root of leaves ``[lo, hi)``, where ``lo`` is a multiple of the largest power of two <= hi - lo.

    Every range met by the RFC 9162 recursions has that alignment, so the range splits into complete
    subtrees of decreasing size, folded from the right.
    """
    parts: list[bytes] = []
    pos, remaining = lo, hi - lo
    while remaining:
        level = remaining.bit_length() - 1
        parts.append(perfect(level, pos >> level))
        pos += 1 << level
        remaining -= 1 << level
    root = parts[-1]
    for h in reversed(parts[:-1]):
        root = node_hash(h, root)
    return root


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path(perfect: PerfectNodes, m: int, lo: int, hi: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[lo:hi]), with ``m`` an absolute leaf index."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < lo + k:
        return [*_path(perfect, m, lo, lo + k), _range_root(perfect, lo + k, hi)]
    return [*_path(perfect, m, lo + k, hi), _range_root(perfect, lo, lo + k)]


def _subproof(perfect: PerfectNodes, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF(m, D[lo:hi], b), with ``m`` relative to ``lo``."""
    n = hi - lo
    if m == n:
        return [] if complete else [_range_root(perfect, lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(perfect, m, lo, lo + k, complete), _range_root(perfect, lo + k, hi)]
    return [*_subproof(perfect, m - k, lo + k, hi, False), _range_root(perfect, lo, lo + k)]


def _check_index(index: int, size: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise InputError(f"leaf index {index!r} is not in a tree of {size} leaves")


def _check_sizes(old_size: int, new_size: int) -> None:
    if (
        isinstance(old_size, bool)
        or not isinstance(old_size, int)
        or not isinstance(new_size, int)
        or not 0 < old_size <= new_size
    ):
        raise InputError(f"no consistency proof from size {old_size!r} to size {new_size!r}")


def tree_size_arg(size: int | None, current: int) -> int:
    """``size`` (``current`` when None), refusing one that is not between 0 and ``current``."""
    if size is None:
        return current
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= current:
        raise InputError(f"tree size {size!r} is not between 0 and {current}")
    return size


def range_root(perfect: PerfectNodes, size: int) -> bytes:
    """Root of the first ``size`` leaves from a source of complete-subtree hashes
    (``perfect(level, index)``: the root of leaves ``[index * 2**level, (index + 1) * 2**level)``)."""
    if size == 0:
        return hashlib.sha256(b"").digest()
    return _range_root(perfect, 0, size)


def inclusion_proof_with(perfect: PerfectNodes, index: int, size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of leaf ``index`` in a tree of ``size`` leaves, from complete-subtree
    hashes (a store that keeps tiles serves proofs without holding the tree in memory)."""
    _check_index(index, size)
    return _path(perfect, index, 0, size)


def consistency_proof_with(perfect: PerfectNodes, old_size: int, new_size: int) -> list[bytes]:
    """RFC 9162 consistency proof from ``old_size`` to ``new_size``, from complete-subtree hashes."""
    _check_sizes(old_size, new_size)
    return _subproof(perfect, old_size, 0, new_size, True)


def _sequence_nodes(leaf_hashes: Sequence[bytes]) -> PerfectNodes:
    def perfect(level: int, index: int) -> bytes:
        return _reduce(leaf_hashes[index << level : (index + 1) << level])

    return perfect


def inclusion_proof_from_hashes(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof (audit path) of leaf ``index`` in the tree of ``leaf_hashes``."""
    _check_hashes(leaf_hashes, "leaf_hashes")
    _check_index(index, len(leaf_hashes))
    return _path(_sequence_nodes(leaf_hashes), index, 0, len(leaf_hashes))


def consistency_proof_from_hashes(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the proof that the first ``old_size`` leaves form a prefix of the tree of ``leaf_hashes``.

    Defined for ``0 < old_size <= len(leaf_hashes)``; the proof is empty when the sizes are equal.
    """
    _check_hashes(leaf_hashes, "leaf_hashes")
    _check_sizes(old_size, len(leaf_hashes))
    return _subproof(_sequence_nodes(leaf_hashes), old_size, 0, len(leaf_hashes), True)


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof of raw entry ``leaves[index]`` in the tree of ``leaves``."""
    return inclusion_proof_from_hashes([leaf_hash(e) for e in leaves], index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the consistency proof from the tree of ``leaves[:old_size]`` to the tree of ``leaves``."""
    return consistency_proof_from_hashes([leaf_hash(e) for e in leaves], old_size)


# --- stateful trees -----------------------------------------------------------------------------------


class MerkleTree:
    """An append-only tree that keeps every complete-subtree hash: O(log n) roots and proofs at any size.

    Memory is about ``2n`` hashes (roughly 130 MB of Python objects per million leaves); a store may
    instead persist the levels and answer ``perfect(level, index)`` itself.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.append(h)

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> MerkleTree:
        """Build a tree from raw entries."""
        return cls(leaf_hash(e) for e in entries)

    def __len__(self) -> int:
        return len(self._levels[0])

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, leaf_hash_: bytes) -> int:
        """Append a leaf hash and return its index."""
        if not isinstance(leaf_hash_, bytes) or len(leaf_hash_) != HASH_SIZE:
            raise InputError(f"leaf hash: expected {HASH_SIZE} bytes")
        levels = self._levels
        levels[0].append(leaf_hash_)
        level = 0
        while not len(levels[level]) & 1:
            row = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1
        return len(levels[0]) - 1

    def append_entry(self, entry: bytes) -> int:
        """Append a raw entry and return its index."""
        return self.append(leaf_hash(entry))

    def leaf(self, index: int) -> bytes:
        """Return the hash of leaf ``index``."""
        _check_index(index, self.size)
        return self._levels[0][index]

    def _perfect(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def _size_arg(self, size: int | None) -> int:
        return tree_size_arg(size, self.size)

    def root(self, size: int | None = None) -> bytes:
        """Return the root of the first ``size`` leaves (default: all)."""
        n = self._size_arg(size)
        return EMPTY_ROOT if n == 0 else _range_root(self._perfect, 0, n)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the inclusion proof of leaf ``index`` in the tree of the first ``size`` leaves."""
        n = self._size_arg(size)
        _check_index(index, n)
        return _path(self._perfect, index, 0, n)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the consistency proof from size ``old_size`` to ``new_size`` (default: all)."""
        n = self._size_arg(new_size)
        _check_sizes(old_size, n)
        return _subproof(self._perfect, old_size, 0, n, True)


class CompactRange:
    """The O(log n) state of an append-only tree: one hash per set bit of its size, left to right.

    Appending costs one leaf push and on average one node hash; :meth:`root` costs at most
    ``log2(n)`` hashes. ``(size, hashes)`` is the whole state: persist it and rebuild with
    :meth:`from_state`.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild from a saved state; ``len(hashes)`` must be the number of set bits of ``size``."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"compact range size {size!r} is not a non-negative integer")
        if len(hashes) != size.bit_count():
            raise InputError(
                f"a compact range of size {size} has {size.bit_count()} hashes, not {len(hashes)}"
            )
        _check_hashes(hashes, "compact range hashes")
        state = cls()
        state._size = size
        state._hashes = list(hashes)
        return state

    @property
    def size(self) -> int:
        """Number of leaves appended."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The roots of the complete subtrees covering the leaves, largest (leftmost) first."""
        return tuple(self._hashes)

    def append(self, leaf_hash_: bytes) -> None:
        """Append one leaf hash."""
        if not isinstance(leaf_hash_, bytes) or len(leaf_hash_) != HASH_SIZE:
            raise InputError(f"leaf hash: expected {HASH_SIZE} bytes")
        hashes = self._hashes
        hashes.append(leaf_hash_)
        n = self._size
        while n & 1:
            right = hashes.pop()
            hashes[-1] = node_hash(hashes[-1], right)
            n >>= 1
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append several leaf hashes."""
        for h in leaf_hashes:
            self.append(h)

    def append_entry(self, entry: bytes) -> None:
        """Append one raw entry."""
        self.append(leaf_hash(entry))

    def root(self) -> bytes:
        """Return the root of the tree of every leaf appended so far."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            root = node_hash(h, root)
        return root


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ------------------------------------------------


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def root_from_inclusion_proof(leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root that ``proof`` leads to from leaf hash ``leaf_hash_`` at ``index`` in ``size``.

    Raises:
        InclusionProofError: the arguments are malformed or the proof has the wrong length for
            ``(index, size)``.
    """
    if not _is_count(index) or not _is_count(size) or index >= size:
        raise InclusionProofError(f"leaf index {index!r} is not in a tree of {size!r} leaves")
    if not _is_hash(leaf_hash_):
        raise InclusionProofError(f"leaf hash is not {HASH_SIZE} bytes")
    for i, p in enumerate(proof):
        if not _is_hash(p):
            raise InclusionProofError(f"inclusion proof element {i} is not {HASH_SIZE} bytes")
    fn, sn = index, size - 1
    r = leaf_hash_
    for p in proof:
        if sn == 0:
            raise InclusionProofError(f"inclusion proof for leaf {index} of {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofError(f"inclusion proof for leaf {index} of {size} is too short")
    return r


def verify_inclusion_hash(
    leaf_hash_: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash ``leaf_hash_`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Raises:
        InclusionProofError: the proof does not lead to ``root``.
    """
    computed = root_from_inclusion_proof(leaf_hash_, index, size, proof)
    if not _is_hash(root) or not hmac.compare_digest(computed, root):
        raise InclusionProofError(f"inclusion proof for leaf {index} of {size} does not lead to the root")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that raw entry ``leaf`` is leaf ``index`` of the tree of ``size`` leaves with ``root``.

    Raises:
        InclusionProofError: the proof does not lead to ``root``.
    """
    if not isinstance(leaf, bytes | bytearray):
        raise InclusionProofError("leaf entry is not bytes")
    verify_inclusion_hash(leaf_hash(bytes(leaf)), index, size, proof, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves with ``old_root`` is a prefix of the tree of
    ``new_size`` leaves with ``new_root``.

    Equal sizes need an empty proof and equal roots; an old size of 0 needs an empty proof and
    ``old_root`` equal to :data:`EMPTY_ROOT` (nothing to prove beyond that).

    Raises:
        ConsistencyProofError: the proof does not show consistency.
    """
    if not _is_count(old_size) or not _is_count(new_size) or old_size > new_size:
        raise ConsistencyProofError(f"no consistency from size {old_size!r} to size {new_size!r}")
    if not _is_hash(old_root) or not _is_hash(new_root):
        raise ConsistencyProofError(f"a tree root is not {HASH_SIZE} bytes")
    for i, c in enumerate(proof):
        if not _is_hash(c):
            raise ConsistencyProofError(f"consistency proof element {i} is not {HASH_SIZE} bytes")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ConsistencyProofError(f"consistency proof from {old_size} to {new_size} must be empty")
        expected = EMPTY_ROOT if old_size == 0 else new_root
        if not hmac.compare_digest(old_root, expected):
            raise ConsistencyProofError(f"old root does not match the tree of size {old_size}")
        return
    if not proof:
        raise ConsistencyProofError(f"consistency proof from {old_size} to {new_size} is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyProofError(f"consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyProofError(f"consistency proof from {old_size} to {new_size} is too short")
    if not hmac.compare_digest(fr, old_root):
        raise ConsistencyProofError(f"consistency proof does not lead to the old root (size {old_size})")
    if not hmac.compare_digest(sr, new_root):
        raise ConsistencyProofError(f"consistency proof does not lead to the new root (size {new_size})")
