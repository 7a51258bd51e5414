"""The audit log's Merkle tree in bounded memory (node.audit.TileTree).

UNIT TESTS: its roots and RFC 9162 proofs equal those of the full in-memory tree
(client.protocol.merkle.MerkleTree) at every size around tile boundaries, and its memory grows by
about a tile hash per 256 entries (measured with tracemalloc while appending a million entries).
"""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest

from client.protocol.errors import InputError
from client.protocol.merkle import MerkleTree, leaf_hash, verify_consistency
from node.audit import TileTree


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]


@pytest.mark.parametrize("size", [1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 4096, 4097, 70_001])
def test_roots_and_proofs_equal_the_full_trees(size: int) -> None:
    hashes = _leaves(size)
    reads: list[tuple[int, int]] = []

    def leaves(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return hashes[start:end]

    tiles = TileTree(leaves)
    for h in hashes:
        tiles.append(h)
    full = MerkleTree(hashes)
    assert tiles.size == size and tiles.root() == full.root()
    probes = sorted(p for p in {1, 2, size // 3, size // 2, size - 1, size} if 1 <= p <= size)
    for old in probes:
        assert tiles.root(old) == full.root(old)
        assert tiles.consistency_proof(old, size) == full.consistency_proof(old, size)
        verify_consistency(old, size, full.root(old), full.root(), tiles.consistency_proof(old, size))
    for index in sorted({0, size // 2, size - 1}):
        proof = tiles.inclusion_proof(index, size)
        assert proof == full.inclusion_proof(index, size)
    assert all(end - start <= 256 for start, end in reads)  # never more than a tile of leaves at a time
    with pytest.raises(InputError):
        tiles.root(size + 1)


def test_memory_grows_by_a_tile_hash_per_256_entries() -> None:
    n = 1_000_000
    tracemalloc.start()
    try:
        tiles = TileTree(lambda start, end: [])
        before, _ = tracemalloc.get_traced_memory()
        digest = hashlib.sha256
        for i in range(n):
            tiles.append(digest(i.to_bytes(8, "big")).digest())
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grown = after - before
    # ~3,900 tile hashes of 32 bytes (+ object overhead) and one tile's tail: well under 1 MB, where
    # the full tree keeps ~130 bytes per entry (130 MB here)
    assert grown < 2 * 2**20, grown
    assert tiles.size == n
