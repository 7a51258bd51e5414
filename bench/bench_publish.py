"""Publication alone at scale: CPU, peak RSS and buckets written, on a store filled directly.

A SQLite store is filled with N phone indicators whose digests are fake (SHA-512 of a counter: no OPRF, so
a large store is built in a fraction of ``bench_national.py``'s time), then published; 1 % more are added
and 0.5 % retracted, and it is published again. Each stage runs in a forked child whose peak RSS
``wait4`` reports, beside its CPU time (user + system): on a shared machine CPU is the figure to read.

Run from the repository root::

    PYTHONPATH=. python bench/bench_publish.py [--size 1000000]
    PYTHONPATH=. python bench/bench_publish.py --quick     # smoke run: 5,000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import machine_info, print_table  # bench/ is on sys.path when run as a script
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.publish import publish
from node.store import IndicatorRow, open_store

NOW = 1_764_000_000


def _fill(path: str, lo: int, hi: int, now: int) -> None:
    store = open_store(path)
    for start in range(lo, hi, 20_000):
        rows = [
            IndicatorRow(
                kind="phone",
                canonical=f"+6012{i:08d}",
                category="investment",
                first_seen=now - 1000,
                last_seen=now - 10,
                confidence=70,
                tlp="GREEN",
                reports=1,
                expires_at=None,
                source="bench",
                digests={(1, 1): hashlib.sha512(b"%d" % i).digest()},
            )
            for i in range(start, min(hi, start + 20_000))
        ]
        store.upsert_indicators(rows, now=now)
    store.close()


def _publish(path: str, now: int, *, cache: bool = True) -> None:
    store = open_store(path)
    publication = publish(
        store,
        node_id="MY",
        epoch=1,
        oprf_public_key=bytes(32),
        signing_key=Ed25519PrivateKey.from_private_bytes(bytes(32)),
        now=now,
        false_positive_rate=1e-6,
        max_prefix_bits=20,
        validity_s=86_400,
        cache_dir=Path(path).parent / "publish-cache" if cache else None,
    )
    store.close()
    how = "incremental" if publication.incremental else "from scratch"
    print(f"  version {publication.signed.manifest.version}: {how}")


def _retract(path: str, n: int, now: int) -> None:
    store = open_store(path)
    store.retract_many([("phone", f"+6012{i:08d}") for i in range(0, n, 200)], now=now)
    store.close()


def _in_child(fn: Callable[[], None]) -> tuple[float, float, float]:
    """Run ``fn`` in a forked child; return its wall seconds, CPU seconds and peak RSS in MiB."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException as error:  # reported by the exit code; the parent raises
            print(repr(error), file=sys.stderr)
            code = 1
        os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit("a stage failed (see above)")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _buckets_written(path: str, version: int) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        (written,) = db.execute("SELECT count(*) FROM bucket_data WHERE version = ?", (version,)).fetchone()
        (current,) = db.execute("SELECT count(*) FROM bucket_spans WHERE until_version IS NULL").fetchone()
    return int(written), int(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="indicators (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 indicators")
    args = parser.parse_args()
    n = 5_000 if args.quick else args.size
    print(f"bench_publish: {n:,} phones, then +1 % and -0.5 %; {machine_info()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "store.db")
        _in_child(lambda: _fill(path, 0, n, NOW))
        stages = [
            ("open the store (baseline)", lambda: open_store(path).close()),
            ("first publish", lambda: _publish(path, NOW + 60)),
            ("add 1 %", lambda: _fill(path, n, n + n // 100, NOW + 100)),
            ("retract 0.5 %", lambda: _retract(path, n, NOW + 110)),
            ("publish after the change", lambda: _publish(path, NOW + 120)),
        ]
        rows = []
        for name, fn in stages:
            wall, cpu, rss = _in_child(fn)
            rows.append([name, f"{wall:.2f} s", f"{cpu:.2f} s", f"{rss:.0f} MiB"])
        print_table(["stage", "wall", "CPU", "peak RSS"], rows)
        first, current = _buckets_written(path, 1)
        second, _ = _buckets_written(path, 2)
        print(
            f"buckets written: {first:,} by the first publication, {second:,} of {current:,} after the change"
        )


if __name__ == "__main__":
    main()
