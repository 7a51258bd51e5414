"""Benchmark: offline verification of an audit log (``petanda audit verify``), 100k and 1M entries.

Prints, per size: building the entries, loading a fetched directory, the full ``verify_log`` (and the
share of its parts: leaf hashing, canonical decoding, the Merkle accumulator), and the append
throughput of ``CompactRange`` next to ``MerkleTree`` and a one-shot ``root_from_hashes``.

Run: PYTHONPATH=. python bench/bench_audit.py [SIZE ...]   (default: 100000 1000000)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.auditlog import TreeHead, decode_entry, make_entry, sign_tree_head, verify_log
from client.protocol.merkle import CompactRange, MerkleTree, leaf_hash, root_from_hashes
from client.tools.audit import load_dir, verify_dir

T0 = 1_714_521_600
PEERS = ("TH", "SG", "ID", "PH", "VN", "KH", "LA", "MM", "BN", "TL")


def timed(label: str, n: int, fn: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<50} {seconds:8.2f} s  {n / seconds:>12,.0f} entries/s")
    return result


def build(n: int) -> list[bytes]:
    entries: list[bytes] = []
    previous: bytes | None = None
    for i in range(n):
        fields = {
            "ts": T0 + i // 10,
            "action": "peer.evaluate_oprf",
            "actor": PEERS[i % len(PEERS)],
            "role": "peer",
            "result": "ok" if i % 50 else "rate_limited",
            "kind": "phone",
            "count": 1 + i % 100,
            "daily_used": i % 10_000,
        }
        previous = make_entry(i, previous, fields)
        entries.append(previous)
    return entries


def bench(n: int) -> None:
    print(f"{n:,} entries")
    key = Ed25519PrivateKey.generate()
    entries: list[bytes] = timed("build entries (make_entry)", n, lambda: build(n))  # type: ignore[assignment]
    hashes = [leaf_hash(e) for e in entries]
    tree = CompactRange()
    heads = []
    step = max(n // 10, 1)
    for i, h in enumerate(hashes, start=1):
        tree.append(h)
        if i % step == 0 or i == n:
            heads.append(sign_tree_head(TreeHead("MY", i, tree.root(), T0 + i), key))
    public = key.public_key()

    timed(f"verify_log ({len(heads)} heads)", n, lambda: verify_log(entries, heads, public, node_id="MY"))
    timed("  of which: leaf_hash", n, lambda: [leaf_hash(e) for e in entries])
    timed("  of which: decode_entry (parse + canonical check)", n, lambda: [decode_entry(e) for e in entries])

    def compact() -> None:
        CompactRange().extend(hashes)

    def merkle_tree() -> None:
        MerkleTree(hashes)

    timed("CompactRange.extend (append throughput)", n, compact)
    timed("MerkleTree(...) (keeps every node)", n, merkle_tree)
    timed("root_from_hashes (one-shot, level by level)", n, lambda: root_from_hashes(hashes))

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        (directory / "node.json").write_text(
            json.dumps({"node_id": "MY", "public_key": raw.hex(), "fetched_at": T0})
        )
        (directory / "entries.jsonl").write_bytes(b"".join(e + b"\n" for e in entries))
        (directory / "tree-heads.jsonl").write_text("".join(json.dumps(h.to_json()) + "\n" for h in heads))
        size_mb = (directory / "entries.jsonl").stat().st_size / 1e6
        print(f"  entries.jsonl: {size_mb:.0f} MB")
        log = timed("load_dir (read the fetched directory)", n, lambda: load_dir(directory))
        timed("audit verify = load_dir + verify_dir", n, lambda: verify_dir(load_dir(directory)))
        del log


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    for n in sizes:
        bench(n)


if __name__ == "__main__":
    main()
