"""Store throughput, SQLite vs PostgreSQL side by side: batch upserts, audit appends, publishing scan.

Both backends run durable: SQLite WAL with synchronous=FULL, PostgreSQL with fsync and synchronous_commit
on (a throw-away server from tests/pgserver.py, or PETANDA_TEST_PG_DSN). Usage::

    PYTHONPATH=. python bench/bench_store.py [--rows 100000] [--batch 5000] [--appends 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.store import IndicatorRow, Store, open_store

NOW = 1_700_000_000


def make_rows(n: int, offset: int = 0) -> list[IndicatorRow]:
    return [
        IndicatorRow(
            kind="phone",
            canonical=f"+65{i:09d}",
            category="investment",
            first_seen=NOW - 1000,
            last_seen=NOW,
            confidence=60,
            tlp="GREEN",
            reports=1 + i % 3,
            expires_at=None,
            source="bench",
            digests={(1, 1): hashlib.sha512(b"%d" % i).digest()},
        )
        for i in range(offset, offset + n)
    ]


def bench_store(store: Store, rows: int, batch: int, appends: int) -> dict[str, float]:
    data = make_rows(rows)
    batches = [data[i : i + batch] for i in range(0, rows, batch)]
    out: dict[str, float] = {}

    def timed(name: str, n: int, fn: Callable[[], object]) -> None:
        t = time.perf_counter()
        fn()
        out[name] = n / (time.perf_counter() - t)

    def upsert_all() -> None:
        for i, b in enumerate(batches):
            store.upsert_indicators(b, now=NOW, audit=[{"action": "ingest", "batch": i}])

    timed("upsert new rows/s", rows, upsert_all)
    timed("upsert merge rows/s", rows, upsert_all)
    timed("publish scan rows/s", rows, lambda: sum(1 for _ in store.iter_publishable(1, now=NOW)))
    timed(
        "audit append (1/tx) /s",
        appends,
        lambda: [store.append_audit([{"action": "e"}]) for _ in range(appends)],
    )
    timed(
        "audit append (100/tx) entries/s",
        appends * 100,
        lambda: [
            store.append_audit([{"action": "entry", "j": j} for j in range(100)]) for _ in range(appends)
        ],
    )
    timed(
        "consume_quota /s",
        appends,
        lambda: [
            store.consume_quota("peer", 1, now=NOW + i, rate_per_s=1e6, burst=1e6, daily_limit=10**9)
            for i in range(appends)
        ],
    )
    return out


@contextmanager
def pg_database() -> Iterator[str | None]:
    import psycopg
    from psycopg import sql

    from tests.pgserver import PostgresUnavailable, postgres_server

    try:
        server = postgres_server(durable=True)
        url = server.__enter__()
    except PostgresUnavailable as e:
        print(f"PostgreSQL skipped: {e}")
        yield None
        return
    name = f"petanda_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield urlunsplit(urlsplit(url)._replace(path="/" + name))
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        server.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--appends", type=int, default=1_000)
    args = ap.parse_args()

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(os.path.join(tmp, "bench.db")) as s:
            results["SQLite"] = bench_store(s, args.rows, args.batch, args.appends)
    with pg_database() as url:
        if url:
            with open_store(url) as s:
                results["PostgreSQL"] = bench_store(s, args.rows, args.batch, args.appends)

    names = list(next(iter(results.values())))
    print(f"rows={args.rows} batch={args.batch} appends={args.appends} (durable commits on both)")
    print(f"{'measure':34}" + "".join(f"{b:>14}" for b in results))
    for n in names:
        print(f"{n:34}" + "".join(f"{results[b][n]:>14,.0f}" for b in results))


if __name__ == "__main__":
    main()
