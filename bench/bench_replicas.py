"""A replica killed under load: single checks through two replicas of one member on one PostgreSQL.

The federation is ``tests/replicanet.py``'s: TH (the holder) runs as two ``petanda-node serve``
processes over one real PostgreSQL database (a throw-away server from ``tests/pgserver.py``, fsync on,
unless ``PETANDA_TEST_PG_DSN`` names one): the replica at TH's ``address`` runs the background sync, the
one at its ``replicas`` address runs ``serve --no-sync``. MY (the asker) is a third ``serve`` process on
SQLite whose ``[[peers]]`` entry for TH lists both addresses, so its channel to TH balances over them
(gRPC round_robin; an ``EvaluateOprf`` that ends UNAVAILABLE is retried:
``node.peers.EVALUATE_RETRY``). TH holds ``--indicators`` phones; MY's investigators
(``--investigators`` threads, one mTLS channel each) send single checks through MY for ``--seconds``,
half of them hits. After a third of the run the replica at TH's ``address`` is killed with SIGKILL.

Every check is verified (MATCH exactly for what TH holds). A check fails when its Check call errs or
TH's answer is neither MATCH nor NO_MATCH. A failure is *in flight at the kill* when the check started
before the kill and ended within ``--window`` seconds after it (the calls the dead replica was serving
when it died); any other failure counts against the target: **0 failed checks outside the killed
replica's in-flight calls**. The script exits 1 when the target is missed or an answer is wrong.

Every limit the load would hit is raised (printed at the start): the benchmark measures what the
replicas sustain, not the default policy. Wall-clock rates are noisy on a shared machine: the CPU time of
every process (the three nodes and this one, the killed replica up to its kill) and the load average
are printed beside them.

Run from the repository root::

    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_replicas.py [--seconds 60]
    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_replicas.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

from _common import machine_info, print_table  # bench/ is on sys.path when run as a script

from tests.pgserver import ENV_DSN, PostgresUnavailable, find_bindir, postgres_server
from tests.replicanet import CHECK_DEADLINE_MS, LIMITS, Check, Replicas, Run, load


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new database on a throw-away PostgreSQL server (``tests/pgserver.py``), dropped at the end."""
    import psycopg
    from psycopg import sql

    with postgres_server(durable=True) as url:
        name = f"petanda_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield urlunsplit(urlsplit(url)._replace(path="/" + name))
        finally:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def percentile_ms(samples: Sequence[float], q: int) -> float:
    if len(samples) < 2:
        return samples[0] * 1000 if samples else float("nan")
    return statistics.quantiles([s * 1000 for s in samples], n=100, method="inclusive")[q - 1]


def report(run: Run, window: float, kill: str) -> bool:
    """Print the figures and the verdict; True when the target is met."""
    failed = [c for c in run.checks if c.error is not None]
    in_flight = [c for c in failed if not c.wrong and c.start < run.kill_at <= c.end <= run.kill_at + window]
    outside = [c for c in failed if c not in in_flight]
    before = [c for c in run.checks if c.end <= run.kill_at]
    after = [c for c in run.checks if c.start >= run.kill_at + window]
    after_s = run.stop - run.kill_at - window

    def rate(cs: Sequence[Check], seconds: float) -> str:
        return f"{len(cs) / seconds:,.0f}/s" if seconds > 0 else "n/a"

    def lat(cs: Sequence[Check]) -> str:
        ok = [c.end - c.start for c in cs if c.error is None]
        return f"{percentile_ms(ok, 50):.1f} / {percentile_ms(ok, 99):.1f}"

    print(f"\nkilled {kill} (SIGKILL) at {run.kill_at - run.start:.1f} s of {run.stop - run.start:.0f} s")
    print_table(
        ("phase", "checks", "checks/s", "p50 / p99 ms", "failed"),
        [
            ("before the kill", f"{len(before):,}", rate(before, run.kill_at - run.start), lat(before),
             str(sum(c.error is not None for c in before))),
            (f"after the kill (+{window:g} s on)", f"{len(after):,}", rate(after, after_s), lat(after),
             str(sum(c.error is not None for c in after))),
            ("whole run", f"{len(run.checks):,}", rate(run.checks, run.stop - run.start), lat(run.checks),
             str(len(failed))),
        ],
    )  # fmt: skip
    cpu_total = sum(run.cpu.values()) + run.wall_cpu_self
    print(
        "\nCPU seconds: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu.items())
        + f", investigators (this process) {run.wall_cpu_self:.1f}; total {cpu_total:.1f} over "
        f"{run.stop - run.start:.0f} s of wall time ({cpu_total / len(run.checks) * 1000:.1f} ms a check)"
    )
    print(
        "CPU seconds up to the kill (round_robin spreads the calls over both replicas): "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu_before_kill.items())
    )
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"\nfailed checks: {len(failed)}; in flight at the kill: {len(in_flight)}; outside: {len(outside)}")
    for label, shown in (("outside", outside[:10]), ("in flight", in_flight[:5])):
        for check in shown:
            started, ended = check.start - run.kill_at, check.end - run.kill_at
            print(f"  {label}: started {started:+.3f} s, ended {ended:+.3f} s from the kill: {check.error}")
    wrong = [c for c in run.checks if c.wrong]
    if wrong:
        print(f"\nWRONG ANSWERS: {len(wrong)}, e.g. {wrong[0].error}")
    met = not outside and not wrong and len(after) > 0 and len(before) > 0
    print(
        f"\nreplica killed during a {run.stop - run.start:.0f} s check load through two replicas on one "
        f"PostgreSQL: {len(outside)} failed checks outside the killed replica's in-flight calls "
        f"(target 0): {'met' if met else 'MISSED'}"
    )
    return met


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the check load (default 60)")
    parser.add_argument("--investigators", type=int, default=8, help="concurrent investigators (default 8)")
    parser.add_argument("--indicators", type=int, default=2000, help="phones TH holds (default 2000)")
    parser.add_argument("--window", type=float, default=1.0,
                        help="a failed check that started before the kill and ended within this many seconds "
                        "after it was in flight at the kill (default 1)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 s, 4 investigators, 200 phones")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.investigators, args.indicators = 8.0, 4, 200
    print(machine_info())
    print(f"limits raised on every node (the benchmark measures capacity, not policy): {LIMITS}")
    print(
        f"{args.investigators} investigators, single checks for {args.seconds:g} s, TH holds "
        f"{args.indicators:,} phones, half the checks hits; check deadline {CHECK_DEADLINE_MS} ms"
    )
    try:
        if not os.environ.get(ENV_DSN):
            find_bindir()
    except PostgresUnavailable as error:
        print(f"skipped: replicas share a PostgreSQL store: {error}")
        return
    with tempfile.TemporaryDirectory(prefix="petanda-replicas-") as tmp, postgres_database() as url:
        world = Replicas(Path(tmp), url, args.indicators)
        try:
            world.spawn()
            run = load(world, args.seconds, args.investigators, kill="TH-a")
        finally:
            world.close()
    if not report(run, args.window, "TH-a"):
        sys.exit(1)


if __name__ == "__main__":
    main()
