"""Phone screening on the HMAC tier, one core: normalise, digest, test a 1M-digest Bloom filter.

The pipeline an offline screen runs for each chunk of input: ``client.protocol.canonical.normalize("phone",
...)``,
``client.protocol.digest.HmacDigester.digest_many`` (the precomputed-pad HMAC-SHA256 of the tier), then one
batched ``client.protocol.bloom.BloomFilter.contains_many`` over the chunk against a filter of
``--filter-size``
digests at p = 1e-6. Two input styles: E.164 (``+60123456789``) and Malaysian national
(``012-345 6789``, region MY). Beside each stage, the alternatives: plain SHA-256 instead of HMAC (no key:
what the HMAC costs), a Python ``set`` of the same digests instead of the filter (what the filter costs,
at many times its memory), per-item ``contains`` instead of the batch. Target: >= 80k phones/s.

Run from the repository root::

    PYTHONPATH=. python bench/bench_pipeline.py [--n 200000] [--filter-size 1000000] [--chunk 10000]
    PYTHONPATH=. python bench/bench_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections.abc import Callable, Sequence

from _common import machine_info, print_table  # bench/ is on sys.path when run as a script

from client.protocol.bloom import BloomFilter
from client.protocol.canonical import normalize
from client.protocol.digest import HmacDigester, derive_epoch_key, hmac_digest
from client.protocol.kinds import TIER_HMAC, indicator_bytes

TARGET = 80_000
EPOCH = 1
P = 1e-6


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    """The best wall time of ``repeat`` runs of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds / 1000:,.1f}k/s"


def micros(count: int, seconds: float) -> str:
    return f"{seconds / count * 1e6:.2f}"


def phones(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` Malaysian mobile numbers (012 + 7 digits), as E.164 and as written nationally."""
    rng = random.Random(seed)
    subscribers = rng.sample(range(10**7), n)  # distinct, so the hit count is exact
    e164 = [f"+6012{s:07d}" for s in subscribers]
    national = [f"012-{s // 10**4:03d} {s % 10**4:04d}" for s in subscribers]
    return e164, national


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="phones screened per input style (100,000)")
    ap.add_argument("--filter-size", type=int, default=1_000_000, help="digests in the filter (1,000,000)")
    ap.add_argument("--chunk", type=int, default=10_000, help="phones per batch check (10,000)")
    ap.add_argument("--hit-rate", type=float, default=0.01, help="share of phones the filter holds (0.01)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept (3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k phones, 100k-digest filter, 1 run")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.filter_size, args.repeat = 20_000, 100_000, 1
    n, chunk, rep = args.n, args.chunk, args.repeat

    print("bench_pipeline: HMAC-tier phone screening on one core")
    print(f"machine: {machine_info()}")
    print(
        f"phones: {n:,} per style, chunk {chunk:,}, filter {args.filter_size:,} digests at p={P:g}, "
        f"hit rate {args.hit_rate:g}, best of {rep}\n"
    )

    key = derive_epoch_key(bytes(range(32)), EPOCH)
    digester = HmacDigester(key, EPOCH, "phone")
    e164, national = phones(n, seed=1)
    canonical = [normalize("phone", v) for v in e164]
    assert all(normalize("phone", v, "MY") == c for v, c in zip(national[:1000], canonical, strict=False))
    assert digester.digest(canonical[0]) == hmac_digest(key, EPOCH, "phone", canonical[0])

    # The filter: digests of a disjoint range of numbers (013 ...), plus the share of the queried phones
    # the filter should hold.
    t0 = time.perf_counter()
    held = int(n * args.hit_rate)
    others = [f"+6013{i:07d}" for i in range(args.filter_size - held)]
    members = digester.digest_many(others) + digester.digest_many(canonical[:held])
    bloom = BloomFilter.build(b"".join(members), p=P, kind="phone", tier=TIER_HMAC, epoch=EPOCH, node_id="MY")
    as_set = set(members)
    set_bytes = sys.getsizeof(as_set) + sum(sys.getsizeof(x) for x in as_set)
    filter_bytes = len(bloom.to_bytes())
    del others
    print(
        f"filter: m={bloom.m:,} bits ({bloom.m / 8 / 2**20:.1f} MiB), k={bloom.k}, built with its digests in "
        f"{time.perf_counter() - t0:.1f} s; the Python set of the same digests takes "
        f"{set_bytes / 2**20:.1f} MiB, {set_bytes / filter_bytes:.0f}x the filter's "
        f"{filter_bytes / 2**20:.1f} MiB\n"
    )

    chunks_e = [e164[i : i + chunk] for i in range(0, n, chunk)]
    chunks_n = [national[i : i + chunk] for i in range(0, n, chunk)]
    canon_chunks = [canonical[i : i + chunk] for i in range(0, n, chunk)]
    digest_chunks = [digester.digest_many(c) for c in canon_chunks]
    input_chunks = [[indicator_bytes("phone", c) for c in cs] for cs in canon_chunks]
    hits = sum(int(bloom.contains_many(d).sum()) for d in digest_chunks)
    assert hits >= held, "a member was reported absent"

    def stage(fn: Callable[[], object]) -> float:
        return best_seconds(fn, rep)

    t: dict[str, float] = {}
    t["norm_e164"] = stage(lambda: [[normalize("phone", v) for v in c] for c in chunks_e])
    t["norm_nat"] = stage(lambda: [[normalize("phone", v, "MY") for v in c] for c in chunks_n])
    t["hmac_many"] = stage(lambda: [digester.digest_many(c) for c in canon_chunks])
    t["hmac_one"] = stage(lambda: [[digester.digest(v) for v in c] for c in canon_chunks])
    t["hmac_stdlib"] = stage(lambda: [[hmac_digest(key, EPOCH, "phone", v) for v in c] for c in canon_chunks])
    t["sha256"] = stage(
        lambda: [[hashlib.sha256(indicator_bytes("phone", v)).digest() for v in c] for c in canon_chunks]
    )
    t["sha256_pre"] = stage(lambda: [[hashlib.sha256(x).digest() for x in c] for c in input_chunks])
    t["bloom_many"] = stage(lambda: [bloom.contains_many(d) for d in digest_chunks])
    t["bloom_one"] = stage(lambda: [[bloom.contains(x) for x in d] for d in digest_chunks])
    t["set"] = stage(lambda: [[x in as_set for x in d] for d in digest_chunks])

    def pipeline(source: list[list[str]], region: str | None, digest: str, lookup: str) -> Callable[[], int]:
        def run() -> int:
            found = 0
            for values in source:
                canon = [normalize("phone", v, region) for v in values]
                if digest == "hmac":
                    digests = digester.digest_many(canon)
                else:
                    digests = [hashlib.sha256(indicator_bytes("phone", v)).digest() for v in canon]
                if lookup == "bloom":
                    found += int(bloom.contains_many(digests).sum())
                else:
                    found += sum(x in as_set for x in digests)
            return found

        return run

    e2e: dict[tuple[str, str, str], float] = {}
    for style, source, region in (("e164", chunks_e, None), ("nat", chunks_n, "MY")):
        for digest, lookup in (("hmac", "bloom"), ("hmac", "set"), ("sha256", "bloom"), ("sha256", "set")):
            e2e[(style, digest, lookup)] = stage(pipeline(source, region, digest, lookup))

    ratio = f"{set_bytes / filter_bytes:.0f}x"
    print("Per stage (phones per second on one core, and µs per phone):")
    rows = [
        (
            "normalise: E.164 input '+60123456789'",
            t["norm_e164"],
            "petanda (fast path, no phonenumbers.parse)",
        ),
        ("normalise: national '012-345 6789', region MY", t["norm_nat"], "petanda (phonenumbers.parse)"),
        ("digest: HmacDigester.digest_many", t["hmac_many"], "petanda"),
        ("digest: HmacDigester.digest per item", t["hmac_one"], "alternative"),
        ("digest: hmac.digest one-shot (hmac_digest)", t["hmac_stdlib"], "alternative"),
        ("digest: hashlib.sha256(kind||0||canonical), unkeyed", t["sha256"], "alternative (no key)"),
        ("  sha256 alone, input bytes prebuilt", t["sha256_pre"], "reference"),
        (f"filter: BloomFilter.contains_many, {chunk:,} per call", t["bloom_many"], "petanda"),
        ("filter: BloomFilter.contains per item", t["bloom_one"], "alternative"),
        ("filter: Python set of the same digests", t["set"], f"alternative (exact, {ratio} the memory)"),
    ]
    print_table(
        ("stage", "rate", "µs/phone", "what"),
        [(name, rate(n, s), micros(n, s), what) for name, s, what in rows],
    )

    print(f"\nEnd to end, chunks of {chunk:,} (target >= {TARGET // 1000}k phones/s on one core):")
    e2e_rows = []
    for digest, lookup, what in (
        ("hmac", "bloom", "petanda"),
        ("hmac", "set", "alternative"),
        ("sha256", "bloom", "alternative (no key)"),
        ("sha256", "set", "alternative (no key)"),
    ):
        label = f"normalise + {'HMAC' if digest == 'hmac' else 'SHA-256'} + {lookup}"
        se, sn = e2e[("e164", digest, lookup)], e2e[("nat", digest, lookup)]
        verdict = "E.164 " + ("met" if n / se >= TARGET else "missed")
        verdict += ", national " + ("met" if n / sn >= TARGET else "missed")
        e2e_rows.append((label, rate(n, se), rate(n, sn), f">= {TARGET // 1000}k/s", verdict, what))
    print_table(("pipeline", "E.164 input", "national input", "target", "verdict", "what"), e2e_rows)
    share = {
        k: t[k] / (t["norm_e164"] + t["hmac_many"] + t["bloom_many"])
        for k in ("norm_e164", "hmac_many", "bloom_many")
    }
    print(
        f"\nSplit of the E.164 pipeline: normalise {share['norm_e164']:.0%}, HMAC {share['hmac_many']:.0%}, "
        f"filter {share['bloom_many']:.0%}. Filter hits: {hits:,} for {held:,} held (more: false positives)."
    )


if __name__ == "__main__":
    main()
