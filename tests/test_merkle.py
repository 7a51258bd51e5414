"""RFC 9162 Merkle trees: RFC 6962 reference vectors and properties of proofs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol.errors import ConsistencyProofError, InclusionProofError, InputError
from client.protocol.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    consistency_proof,
    consistency_proof_from_hashes,
    inclusion_proof,
    inclusion_proof_from_hashes,
    leaf_hash,
    root_from_hashes,
    root_hash,
    verify_consistency,
    verify_inclusion,
    verify_inclusion_hash,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "merkle.json").read_text())
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaves_hex"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["roots_by_size"]]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


# --- reference vectors --------------------------------------------------------------------------------


def test_leaf_hashes_match_rfc6962_reference() -> None:
    assert [leaf_hash(e).hex() for e in LEAVES] == VECTORS["leaf_hashes"]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_rfc6962_reference(size: int) -> None:
    assert root_hash(LEAVES[:size]) == ROOTS[size]
    assert root_from_hashes([leaf_hash(e) for e in LEAVES[:size]]) == ROOTS[size]
    assert MerkleTree.from_entries(LEAVES).root(size) == ROOTS[size]
    acc = CompactRange()
    for e in LEAVES[:size]:
        acc.append_entry(e)
    assert acc.root() == ROOTS[size]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert (
        root_hash([])
        == EMPTY_ROOT
        == bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    )


@pytest.mark.parametrize(
    "case", VECTORS["inclusion_proofs"], ids=lambda c: f"{c['leaf_index']}of{c['tree_size']}"
)
def test_inclusion_vectors(case: dict[str, object]) -> None:
    index, size = int(case["leaf_index"]), int(case["tree_size"])  # type: ignore[call-overload]
    expected = [bytes.fromhex(h) for h in case["proof"]]  # type: ignore[attr-defined]
    assert inclusion_proof(LEAVES[:size], index) == expected
    assert MerkleTree.from_entries(LEAVES).inclusion_proof(index, size) == expected
    root = ROOTS[size]
    verify_inclusion(LEAVES[index], index, size, expected, root)
    # The probes of transparency-dev/merkle's corruptInclusionProof: every one must fail.
    lh = leaf_hash(LEAVES[index])
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (index - 1, size, root, lh, expected),
        (index + 1, size, root, lh, expected),
        (index ^ 2, size, root, lh, expected),
        (index, size * 2, root, lh, expected),
        (index, size // 2, root, lh, expected),
        (index, size, root, leaf_hash(b"WrongLeaf"), expected),
        (index, size, EMPTY_ROOT, lh, expected),
        (index, size, SOME_HASH, lh, expected),
        (index, size, root, lh, [*expected, b""]),
        (index, size, root, lh, [*expected, root]),
        (index, size, root, lh, [b"", *expected]),
        (index, size, root, lh, [root, *expected]),
    ]
    for i in range(len(expected)):
        bad = list(expected)
        bad[i] = _flip(bad[i])
        probes.append((index, size, root, lh, bad))
    if expected:
        probes.append((index, size, root, lh, expected[:-1]))
    if len(expected) > 1:
        probes.append((index, size, root, lh, [expected[0], SOME_HASH, *expected[1:]]))
    for i, n, r, h, p in probes:
        with pytest.raises(InclusionProofError):
            verify_inclusion_hash(h, i, n, p, r)


@pytest.mark.parametrize(
    "case", VECTORS["consistency_proofs"], ids=lambda c: f"{c['old_size']}to{c['new_size']}"
)
def test_consistency_vectors(case: dict[str, object]) -> None:
    m, n = int(case["old_size"]), int(case["new_size"])  # type: ignore[call-overload]
    expected = [bytes.fromhex(h) for h in case["proof"]]  # type: ignore[attr-defined]
    assert consistency_proof(LEAVES[:n], m) == expected
    assert MerkleTree.from_entries(LEAVES).consistency_proof(m, n) == expected
    r1, r2 = ROOTS[m], ROOTS[n]
    verify_consistency(m, n, r1, r2, expected)
    if not expected:
        return
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (m - 1, n, r1, r2, expected),
        (m + 1, n, r1, r2, expected),
        (m ^ 2, n, r1, r2, expected),
        (m, n * 2, r1, r2, expected),
        (m, n // 2, r1, r2, expected),
        (m, n, SOME_HASH, r2, expected),
        (m, n, r1, SOME_HASH, expected),
        (m, n, r2, r1, expected),
        (m, n, r1, r2, []),
        (m, n, r1, r2, [*expected, b""]),
        (m, n, r1, r2, [*expected, r1]),
        (m, n, r1, r2, [*expected, r2]),
        (m, n, r1, r2, [b"", *expected]),
        (m, n, r1, r2, [r1, *expected]),
        (m, n, r1, r2, [r2, *expected]),
        (m, n, r1, r2, [expected[0], *expected]),
        (m, n, r1, r2, expected[:-1]),
    ]
    for i in range(len(expected)):
        bad = list(expected)
        bad[i] = _flip(bad[i], 4)
        probes.append((m, n, r1, r2, bad))
    for a, b, x, y, p in probes:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(a, b, x, y, p)


# --- edge cases ---------------------------------------------------------------------------------------


def test_consistency_from_the_empty_tree() -> None:
    verify_consistency(0, 8, EMPTY_ROOT, ROOTS[8], [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ConsistencyProofError):
        verify_consistency(0, 8, SOME_HASH, ROOTS[8], [])
    with pytest.raises(ConsistencyProofError):
        verify_consistency(0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT])


def test_equal_sizes_need_equal_roots_and_no_proof() -> None:
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])
    with pytest.raises(ConsistencyProofError):
        verify_consistency(5, 5, ROOTS[5], ROOTS[4], [])
    with pytest.raises(ConsistencyProofError):
        verify_consistency(5, 5, ROOTS[5], ROOTS[5], [SOME_HASH])
    with pytest.raises(ConsistencyProofError):
        verify_consistency(6, 5, ROOTS[6], ROOTS[5], [])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (2, 1), (-1, 3), (True, 2)])
def test_inclusion_refuses_impossible_positions(index: int, size: int) -> None:
    with pytest.raises(InclusionProofError):
        verify_inclusion_hash(SOME_HASH, index, size, [], SOME_HASH)


def test_single_leaf_tree_root_is_the_leaf_hash() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(b"data", 0, 1, [], h)
    with pytest.raises(InclusionProofError):
        verify_inclusion(b"data", 0, 1, [], b"")


def test_generators_refuse_bad_arguments() -> None:
    with pytest.raises(InputError):
        inclusion_proof(LEAVES, 8)
    with pytest.raises(InputError):
        consistency_proof(LEAVES, 0)
    with pytest.raises(InputError):
        consistency_proof(LEAVES, 9)
    with pytest.raises(InputError):
        inclusion_proof_from_hashes([b"short"], 0)
    with pytest.raises(InputError):
        MerkleTree().append(b"short")
    with pytest.raises(InputError):
        MerkleTree.from_entries(LEAVES).root(9)


def test_compact_range_state_round_trip() -> None:
    acc = CompactRange()
    for e in LEAVES[:7]:
        acc.append_entry(e)
    assert len(acc.hashes) == 3  # 7 = 4 + 2 + 1
    again = CompactRange.from_state(acc.size, acc.hashes)
    again.append_entry(LEAVES[7])
    assert again.root() == ROOTS[8]
    with pytest.raises(InputError):
        CompactRange.from_state(7, acc.hashes[:2])


# --- properties ---------------------------------------------------------------------------------------

entries = st.lists(st.binary(max_size=12), min_size=1, max_size=70, unique=True)


@settings(max_examples=60, deadline=None)
@given(entries)
def test_every_inclusion_proof_verifies_and_only_for_its_leaf(leaves: list[bytes]) -> None:
    tree = MerkleTree.from_entries(leaves)
    for size in range(1, len(leaves) + 1):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            verify_inclusion(leaves[index], index, size, proof, root)
    n = len(leaves)
    hashes = [leaf_hash(e) for e in leaves]
    root = tree.root()
    for index in range(n):
        proof = inclusion_proof_from_hashes(hashes, index)
        assert proof == tree.inclusion_proof(index)
        if n > 1:
            other = (index + 1) % n
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaves[other], index, n, proof, root)
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaves[index], other, n, proof, root)
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaves[index], index, n, proof, tree.root(n - 1))
        if index < n - 1:  # the proof against the other size's own root (a size alone is not bound)
            with pytest.raises(InclusionProofError):
                verify_inclusion(leaves[index], index, n - 1, proof, tree.root(n - 1))


@settings(max_examples=60, deadline=None)
@given(entries, st.data())
def test_every_consistency_proof_verifies_and_corruption_fails(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree.from_entries(leaves)
    n = len(leaves)
    hashes = [leaf_hash(e) for e in leaves]
    for m in range(1, n + 1):
        proof = tree.consistency_proof(m, n)
        verify_consistency(m, n, tree.root(m), tree.root(n), proof)
    m = data.draw(st.integers(1, n))
    proof = consistency_proof_from_hashes(hashes, m)
    assert proof == tree.consistency_proof(m)
    if m < n:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(m, n, SOME_HASH, tree.root(n), proof)
        with pytest.raises(ConsistencyProofError):
            verify_consistency(m, n, tree.root(m), SOME_HASH, proof)
        i = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[i] = _flip(bad[i], data.draw(st.integers(0, 7)))
        with pytest.raises(ConsistencyProofError):
            verify_consistency(m, n, tree.root(m), tree.root(n), bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), max_size=300))
def test_accumulators_agree_with_the_reference_root(leaves: list[bytes]) -> None:
    expected = root_hash(leaves)
    acc = CompactRange()
    acc.extend(leaf_hash(e) for e in leaves)
    assert acc.root() == expected
    assert acc.size == len(leaves)
    assert len(acc.hashes) == len(leaves).bit_count()
    assert MerkleTree.from_entries(leaves).root() == expected
