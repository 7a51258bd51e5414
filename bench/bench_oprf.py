"""Throughput of Petanda's RFC 9497 OPRF/VOPRF (client/protocol/oprf.py, libsodium) beside the ``voprf``
package.

Run from the repository root::

    PYTHONPATH=. python bench/bench_oprf.py [--batch 1000] [--repeat 3]

Figures are elements (or rounds) per second, best of ``--repeat`` runs. Two-thread figures need both
cores otherwise idle: on a shared machine, rerun until they are stable. The ``voprf`` PyPI package
(0.2.x) is a PyO3 binding of the Rust ``voprf`` crate on curve25519-dalek: it implements RFC 9497 mode
0x01 (VOPRF) only, with its own object types, so the OPRF (mode 0x00) rows have no counterpart; its
two-thread figure is given after a slash when it was measured.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pysodium

from client.protocol import oprf
from client.protocol.oprf import MODE_OPRF, MODE_VOPRF

voprf_r: Any
try:
    from voprf import ristretto as voprf_r
except ImportError:  # pragma: no cover - optional bench dependency
    voprf_r = None


def best_rate(count: int, fn: Callable[[], object], repeat: int) -> float:
    """Best of ``repeat`` runs of ``fn``, as ``count`` per second."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def threaded(fn: Callable[[int, int], object], n: int, threads: int) -> Callable[[], None]:
    """Split ``[0, n)`` over ``threads`` threads, each calling ``fn(start, end)``."""
    pool = ThreadPoolExecutor(threads)
    step = n // threads
    bounds = [(i * step, n if i == threads - 1 else (i + 1) * step) for i in range(threads)]

    def run() -> None:
        for f in [pool.submit(fn, a, b) for a, b in bounds]:
            f.result()

    return run


def fmt(rate: float | None) -> str:
    if rate is None:
        return "—"
    return f"{rate / 1000:,.1f}k/s" if rate >= 1000 else f"{rate:,.0f}/s"


def micro_hot_path(repeat: int) -> float:
    """Scalar multiplication through pysodium's wrapper against a direct call on its ctypes handle."""
    n = 5000
    k = pysodium.crypto_core_ristretto255_scalar_random()
    p = pysodium.crypto_core_ristretto255_random()
    out = ctypes.create_string_buffer(32)
    raw = pysodium.sodium.crypto_scalarmult_ristretto255
    h = bytes(64)

    def wrapper() -> None:
        for _ in range(n):
            pysodium.crypto_scalarmult_ristretto255(k, p)

    def direct() -> None:
        for _ in range(n):
            raw(out, k, p)
            out.raw  # noqa: B018 - the copy out is part of the cost

    def wrapper_h2g() -> None:
        for _ in range(n):
            pysodium.crypto_core_ristretto255_from_hash(h)

    def direct_h2g() -> None:
        f = pysodium.sodium.crypto_core_ristretto255_from_hash
        for _ in range(n):
            f(out, h)
            out.raw  # noqa: B018

    print("Hot-path choice (µs per call, lower is better):")
    smult_us = 0.0
    for name, a, b in (
        ("crypto_scalarmult_ristretto255", wrapper, direct),
        ("crypto_core_ristretto255_from_hash", wrapper_h2g, direct_h2g),
    ):
        wa = 1e6 / best_rate(n, a, repeat)
        wb = 1e6 / best_rate(n, b, repeat)
        print(f"  {name:36} pysodium wrapper {wa:6.1f}   direct ctypes {wb:6.1f}")
        smult_us = wb if name == "crypto_scalarmult_ristretto255" else smult_us
    print()
    return smult_us


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000, help="elements per batch (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    args = ap.parse_args(argv)
    n, rep = args.batch, args.repeat

    print(f"cores: {os.cpu_count()}, batch: {n}, best of {rep}")
    smult_us = micro_hot_path(rep)

    seed, info = bytes(range(32)), b"petanda bench"
    key0 = oprf.derive_key_pair(seed, info, MODE_OPRF)
    key1 = oprf.derive_key_pair(seed, info, MODE_VOPRF)
    xs = [b"phone\x00+6012%07d" % i for i in range(n)]
    blinds0, c0 = oprf.blind(xs, MODE_OPRF)
    blinds1, c1 = oprf.blind(xs, MODE_VOPRF)
    d0 = oprf.blind_evaluate(key0.sk, c0)
    d1, proof1 = oprf.blind_evaluate_verifiable(key1, c1)

    rows: list[tuple[str, float | None, float | None, str, str]] = []

    def ours(name: str, count: int, fn: Callable[[int], object], other: str, target: str) -> None:
        rows.append(
            (name, best_rate(count, lambda: fn(1), rep), best_rate(count, lambda: fn(2), rep), other, target)
        )

    # --- the voprf package ------------------------------------------------------------------------
    v: dict[str, str] = {}
    if voprf_r is not None:
        ev = voprf_r.Evaluator.from_seed(seed, info)
        agree = ev.public_key.serialize() == key1.pk and [ev.evaluate_known_input(x) for x in xs[:50]] == (
            oprf.evaluate(key1.sk, xs[:50], MODE_VOPRF)
        )
        print(f"voprf package: same key and outputs as client.protocol.oprf in mode 0x01: {agree}\n")
        vb = [voprf_r.Client.blind(x) for x in xs]
        v_clients, v_blinded = [c for c, _ in vb], [b for _, b in vb]
        v_out = ev.evaluate_batch(v_blinded)

        def v_eval_batch(a: int, b: int) -> None:
            ev.evaluate_batch(v_blinded[a:b])

        def v_evaluate(a: int, b: int) -> None:
            for x in xs[a:b]:
                ev.evaluate_known_input(x)

        def v_blind(a: int, b: int) -> None:
            for x in xs[a:b]:
                voprf_r.Client.blind(x)

        def v_round_single(a: int, b: int) -> None:
            for x in xs[a:b]:
                client, blinded = voprf_r.Client.blind(x)
                client.finalize(ev.evaluate(blinded), ev.public_key)

        def v_round_batch(a: int, b: int) -> None:
            bl = [voprf_r.Client.blind(x) for x in xs[a:b]]
            out = ev.evaluate_batch([q for _, q in bl])
            voprf_r.Client.finalize_batch([c for c, _ in bl], out, ev.public_key)

        def both(fn: Callable[[int, int], object], count: int) -> str:
            one = best_rate(count, lambda: fn(0, count), rep)
            two = best_rate(count, threaded(fn, count, 2), rep)
            return f"{fmt(one)} / {fmt(two)}"

        single = min(n, 200)
        v["be1"] = both(v_eval_batch, n)
        v["eval"] = both(v_evaluate, n)
        v["blind"] = both(v_blind, n)
        v["fin1"] = fmt(
            best_rate(n, lambda: voprf_r.Client.finalize_batch(v_clients, v_out, ev.public_key), rep)
        )
        v["round1_single"] = both(v_round_single, single)
        v["round1_batch"] = both(v_round_batch, n)
    na0 = "n/a (no mode 0)"

    # --- client.protocol.oprf
    # ----------------------------------------------------------------------------------
    ours(
        "server BlindEvaluate, OPRF (mode 0)",
        n,
        lambda w: oprf.blind_evaluate(key0.sk, c0, workers=w),
        na0,
        "≥25k / ≥45k",
    )
    ours(
        f"server BlindEvaluate+proof, VOPRF, batch {n}",
        n,
        lambda w: oprf.blind_evaluate_verifiable(key1, c1, workers=w),
        v.get("be1", "—"),
        "≥12k (1 thr)",
    )
    ours(
        "server Evaluate (own indicators)",
        n,
        lambda w: oprf.evaluate(key1.sk, xs, MODE_VOPRF, workers=w),
        v.get("eval", "—"),
        "ingest ≥15k",
    )
    ours("client Blind", n, lambda w: oprf.blind(xs, MODE_VOPRF, workers=w), v.get("blind", "—"), "")
    ours("client Finalize, OPRF", n, lambda w: oprf.finalize(xs, blinds0, d0, MODE_OPRF, workers=w), na0, "")
    ours(
        f"client Finalize+VerifyProof, VOPRF, batch {n}",
        n,
        lambda w: oprf.finalize(xs, blinds1, d1, MODE_VOPRF, blinded=c1, pk=key1.pk, proof=proof1, workers=w),
        v.get("fin1", "—") + " (1 thr)",
        "",
    )

    def round_(inputs: list[bytes], mode: int, count: int, w: int) -> None:
        for start in range(0, len(inputs), count):
            batch = inputs[start : start + count]
            bl, c = oprf.blind(batch, mode, workers=w)
            if mode == MODE_OPRF:
                oprf.finalize(batch, bl, oprf.blind_evaluate(key0.sk, c, workers=w), mode, workers=w)
            else:
                d, p = oprf.blind_evaluate_verifiable(key1, c, workers=w)
                oprf.finalize(batch, bl, d, mode, blinded=c, pk=key1.pk, proof=p, workers=w)

    # A one-input round does not split; its two-thread figure runs two rounds at a time instead.
    single = min(n, 200)
    few = xs[:single]

    def rounds_of_one(mode: int) -> Callable[[int], None]:
        two = threaded(lambda a, b: round_(few[a:b], mode, 1, 1), single, 2)

        def run(threads: int) -> None:
            if threads == 1:
                round_(few, mode, 1, 1)
            else:
                two()

        return run

    ours("full round, 1 input, OPRF (rounds/s)", single, rounds_of_one(MODE_OPRF), na0, "")
    ours(
        "full round, 1 input, VOPRF (rounds/s)",
        single,
        rounds_of_one(MODE_VOPRF),
        v.get("round1_single", "—"),
        "",
    )
    ours(f"full round, batch {n}, OPRF (inputs/s)", n, lambda w: round_(xs, MODE_OPRF, n, w), na0, "")
    ours(
        f"full round, batch {n}, VOPRF (inputs/s)",
        n,
        lambda w: round_(xs, MODE_VOPRF, n, w),
        v.get("round1_batch", "—"),
        "",
    )

    head = ("operation", "petanda (1 thread)", "petanda (2 threads)", "voprf package (1 / 2 thr)", "target")
    widths = [max(len(head[0]), *(len(r[0]) for r in rows)), 18, 19, 26, 14]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-" * len(line))
    for name, one, two, other, target in rows:
        cells = (name, fmt(one), fmt(two), other, target)
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print()
    print("voprf package: Rust (voprf crate on curve25519-dalek) via PyO3, mode 0x01 only, no injectable")
    print(
        "blinds or proof randomness; a two-thread figure equal to the one-thread one means it holds the GIL."
    )
    print(
        f"petanda: libsodium's ristretto255 scalar multiplication ({smult_us:.0f} µs here) bounds one core to"
    )
    print(f"{1e3 / smult_us:.1f}k/s for one multiplication per element, {0.5e3 / smult_us:.1f}k/s for two.")


if __name__ == "__main__":
    main()
