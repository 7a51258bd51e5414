"""Benchmark Petanda's Bloom filter against bloom-filter2 (pure Python) and rbloom (Rust).

Workload: n random 32-byte digests (the HMAC tier's size) at p = 1e-6, as a node publishes them.
Petanda is queried in batches (``contains_many``); the other two have no batch API, so they are queried
one item at a time in a Python loop (``digest in bf``), which is how a caller would use them.
bloom-filter2 manages ~30,000 operations a second: it is measured on a smaller sample and its build time
scaled to n, as the output says.

    PYTHONPATH=. python bench/bench_bloom.py [--n 1000000] [--queries 1000000] [--bf2-sample 100000]
"""

from __future__ import annotations

import argparse
import math
import pickle
import time
from collections.abc import Callable

import bloom_filter2
import numpy as np
import rbloom

from client.protocol.bloom import BloomFilter
from client.protocol.kinds import TIER_HMAC

P = 1e-6
OPTIMUM = -math.log(P) / math.log(2) ** 2


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _digest_hash(digest: bytes) -> int:
    """rbloom's hash_func for digests: the first 16 bytes as a signed 128-bit integer (what it requires)."""
    return int.from_bytes(digest[:16], "little", signed=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="members (default 1,000,000)")
    parser.add_argument(
        "--queries", type=int, default=1_000_000, help="non-members queried (default 1,000,000)"
    )
    parser.add_argument("--bf2-sample", type=int, default=100_000, help="items bloom-filter2 is timed on")
    args = parser.parse_args()
    n, queries, sample = args.n, args.queries, min(args.bf2_sample, args.n)

    rng = np.random.default_rng(1)
    members_buf = rng.bytes(n * 32)
    others_buf = rng.bytes(queries * 32)
    members = [members_buf[i : i + 32] for i in range(0, len(members_buf), 32)]
    others = [others_buf[i : i + 32] for i in range(0, len(others_buf), 32)]
    rows: list[tuple[str, ...]] = []

    def row(
        name: str, build: float, hit_rate: float, miss_rate: float, size: int, m: int, fp: str, note: str
    ) -> None:
        rows.append(
            (
                name,
                f"{build:.2f}",
                f"{hit_rate / 1e6:.2f}",
                f"{miss_rate / 1e6:.2f}",
                f"{size / 2**20:.2f}",
                f"{m / n:.2f} ({m / n / OPTIMUM:.3f}x)",
                fp,
                note,
            )
        )

    # Petanda: numpy, batched.
    bloom_box: list[BloomFilter] = []
    build = _timed(
        lambda: bloom_box.append(
            BloomFilter.build(members_buf, p=P, kind="phone", tier=TIER_HMAC, epoch=1, node_id="SG")
        )
    )
    bloom = bloom_box[0]
    assert bloom.contains_many(members_buf).all()
    hit = n / _timed(lambda: bloom.contains_many(members_buf))
    miss = queries / _timed(lambda: bloom.contains_many(others_buf))
    fps = int(bloom.contains_many(others_buf).sum())
    list_rate = n / _timed(lambda: bloom.contains_many(members))
    row(
        "petanda (numpy)",
        build,
        hit,
        miss,
        len(bloom.to_bytes()),
        bloom.m,
        f"{fps}/{queries} (fill^k {bloom.estimated_fpr:.2g})",
        f"batched; {list_rate / 1e6:.2f} M/s from a list of bytes",
    )

    # rbloom with a digest-derived hash_func (needed to serialise it) and with Python's hash().
    for label, hash_func, note in [
        ("rbloom (hash_func)", _digest_hash, "per item; save_bytes needs a hash_func"),
        ("rbloom (builtin hash)", hash, "per item; cannot be saved, hash is per-process"),
    ]:
        rb = rbloom.Bloom(n, P, hash_func=hash_func)
        build = _timed(lambda rb=rb: rb.update(members))  # type: ignore[misc]
        hit = n / _timed(lambda rb=rb: [d in rb for d in members])  # type: ignore[misc]
        miss = queries / _timed(lambda rb=rb: [d in rb for d in others])  # type: ignore[misc]
        fps = sum(d in rb for d in others)
        try:
            size = len(rb.save_bytes())
        except ValueError:
            size = rb.size_in_bits // 8
            note += " (size: bit array)"
        row(label, build, hit, miss, size, rb.size_in_bits, f"{fps}/{queries}", note)

    # bloom-filter2: pure Python, timed on a sample and scaled; its FP measured on a full filter of that size.
    bf2 = bloom_filter2.BloomFilter(max_elements=n, error_rate=P)
    t_add = _timed(lambda: [bf2.add(d) for d in members[:sample]])
    hit = sample / _timed(lambda: [d in bf2 for d in members[:sample]])
    miss = sample / _timed(lambda: [d in bf2 for d in others[:sample]])
    small = bloom_filter2.BloomFilter(max_elements=sample, error_rate=P)
    for d in members[:sample]:
        small.add(d)
    fps = sum(d in small for d in others[:sample])
    row(
        "bloom-filter2 (pure Python)",
        t_add * n / sample,
        hit,
        miss,
        len(pickle.dumps(bf2)),
        bf2.num_bits_m,
        f"{fps}/{sample} (n={sample})",
        f"per item; build scaled x{n // sample} from {sample}; size: pickle, k={bf2.num_probes_k}",
    )

    print(f"n = {n:,} random 32-byte digests, p = {P:g}; Bloom optimum {OPTIMUM:.2f} bits/item")
    print(f"Petanda: m = {bloom.m:,}, k = {bloom.k}, fill = {bloom.fill_ratio:.4f}\n")
    head = (
        "filter",
        "build s",
        "member M/s",
        "non-member M/s",
        "size MiB",
        "bits/item (vs opt)",
        "false positives",
        "notes",
    )
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
