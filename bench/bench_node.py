"""A real node's throughput: ingest end to end and per stage (SQLite, PostgreSQL), VOPRF over gRPC.

(a) Ingest. ``node.node.Node.ingest`` on a generated CSV (Malaysian phones, half national and half E.164,
or ``--mix mixed``: every kind from ``node.demodata``), on a fresh node per run, SQLite (WAL,
synchronous=FULL) and PostgreSQL (fsync on, a throw-away server from ``tests/pgserver.py`` if its
binaries exist). Beside it, each stage alone: parse + normalise (``node.ingest.parse_file``), the OPRF
outputs (``client.protocol.oprf.evaluate`` with 1 and 2 workers), the store's batch upsert. The whole ingest
runs
with the node's OPRF threads (``Node.workers``) set to 1 (one core: the target's terms) and to 2.
Target: >= 15k indicators/s on one core.

(b) VOPRF over gRPC. Two real nodes (``tests.fednet.start_net``: mTLS on 127.0.0.1), generous limits;
with the second node's peer certificate, ``EvaluateOprf`` with batches of ``--batch`` blinded elements,
verifiable, from one and from two concurrent callers; beside it, the same evaluation in process, and the
caller's side (blind, finalize with proof verification). Target: >= 10k evaluations/s.

Run from the repository root::

    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_node.py [--rows 50000] [--rounds 20]
    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_node.py --quick
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

from _common import fmt, machine_info, print_table  # bench/ is on sys.path when run as a script

from client._proto.petanda.v1 import common_pb2, peer_pb2
from client.protocol import oprf
from client.protocol.digest import oprf_input
from client.protocol.kinds import kind_code
from node.audit import event
from node.config import load_config
from node.demodata import generate, write_csv
from node.ingest import ParsedIndicator, parse_file
from node.node import Node
from node.store import IndicatorRow, open_store
from node.testbed import build_federation, write_config
from tests.fednet import start_net

PHONE = cast("common_pb2.Kind.ValueType", kind_code("phone"))
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
TODAY = date(2026, 11, 29)
INGEST_BATCH = 5000  # node.node._INGEST_BATCH
INGEST_TARGET = 15_000
VOPRF_TARGET = 10_000
FIELDS = ["kind", "value", "region", "category", "first_seen", "last_seen", "confidence", "tlp", "reports"]


def timed(fn: Callable[[], object]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# --- data ---------------------------------------------------------------------------------------------


def phone_rows(n: int, seed: int = 7) -> list[dict[str, str]]:
    """``n`` distinct Malaysian mobiles, every other one written nationally (``012-345 6789``)."""
    rng = random.Random(seed)
    rows = []
    for i, s in enumerate(rng.sample(range(10**7), n)):
        value = f"+6012{s:07d}" if i % 2 else f"012-{s // 10**4:03d} {s % 10**4:04d}"
        first = TODAY.toordinal() - rng.randrange(30, 400)
        rows.append(
            {
                "kind": "phone",
                "value": value,
                "region": "MY",
                "category": rng.choice(("investment", "romance", "job_task", "loan")),
                "first_seen": date.fromordinal(first).isoformat(),
                "last_seen": date.fromordinal(first + rng.randrange(0, 29)).isoformat(),
                "confidence": str(rng.randrange(40, 101)),
                "tlp": rng.choice(("CLEAR", "GREEN", "AMBER")),
                "reports": str(rng.randrange(1, 40)),
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# --- backends -----------------------------------------------------------------------------------------


@contextmanager
def postgres() -> Iterator[Callable[[], str] | None]:
    """Yield a factory of fresh PostgreSQL databases (durable server), or None without PostgreSQL."""
    try:
        import psycopg
        from psycopg import sql

        from tests.pgserver import PostgresUnavailable, postgres_server
    except ImportError as error:
        print(f"PostgreSQL skipped: {error}")
        yield None
        return
    try:
        server = postgres_server(durable=True)
        url = server.__enter__()
    except (PostgresUnavailable, RuntimeError) as error:
        print(f"PostgreSQL skipped: {error}")
        yield None
        return
    try:

        def new_database() -> str:
            name = f"petanda_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return urlunsplit(urlsplit(url)._replace(path="/" + name))

        yield new_database
    finally:
        server.__exit__(None, None, None)


class Backends:
    """Fresh nodes and stores on SQLite or PostgreSQL, all under one temporary directory."""

    def __init__(self, root: Path, pg: Callable[[], str] | None) -> None:
        self.root = root
        self.pg = pg
        self.count = 0

    def names(self) -> list[str]:
        return ["SQLite", "PostgreSQL"] if self.pg else ["SQLite"]

    def store_url(self, backend: str) -> str:
        self.count += 1
        if backend == "PostgreSQL":
            assert self.pg is not None
            return self.pg()
        return str(self.root / f"store-{self.count}.db")

    def node(self, backend: str) -> Node:
        """A new node MY with its own keys and an empty store."""
        self.count += 1
        federation = build_federation(self.root / f"node-{self.count}", ["MY"])
        member = federation.members["MY"]
        url = self.store_url(backend)
        write_config(member, [], store_url=url if backend == "PostgreSQL" else f"sqlite:///{url}")
        return Node.open(load_config(member.config), clock=lambda: NOW)


# --- (a) ingest ---------------------------------------------------------------------------------------


def _rows_for_store(parsed: list[ParsedIndicator], digests: list[bytes], epoch: int) -> list[IndicatorRow]:
    """The rows ``Node._store_batch`` builds (same fields, the OPRF digest under ``(epoch, 1)``)."""

    def seconds(day: date | None) -> int | None:
        return None if day is None else int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())

    return [
        IndicatorRow(
            kind=p.kind,
            canonical=p.canonical,
            category=p.category,
            first_seen=seconds(p.first_seen) or 0,
            last_seen=seconds(p.last_seen) or 0,
            confidence=p.confidence,
            tlp=p.tlp,
            reports=p.reports,
            expires_at=seconds(p.expires_at),
            source=p.source,
            digests={(epoch, 1): d},
        )
        for p, d in zip(parsed, digests, strict=True)
    ]


def bench_ingest(backends: Backends, path: Path, n: int) -> None:
    print(f"(a) Ingest of {path.name}: {n:,} rows, batches of {INGEST_BATCH:,} (one transaction each)\n")
    parse_s, parsed = timed(lambda: list(parse_file(path, default_region="MY", today=TODAY)))
    good = [p for p in parsed if isinstance(p, ParsedIndicator)]
    assert len(good) == n, f"{n - len(good)} rows rejected"
    key = oprf.derive_key_pair(bytes(32), b"bench", oprf.MODE_VOPRF)
    inputs = [oprf_input(p.kind, p.canonical) for p in good]

    def evaluate(workers: int) -> list[bytes]:
        out: list[bytes] = []
        for start in range(0, n, INGEST_BATCH):
            out += oprf.evaluate(
                key.sk, inputs[start : start + INGEST_BATCH], oprf.MODE_VOPRF, workers=workers
            )
        return out

    oprf1_s, digests = timed(lambda: evaluate(1))
    oprf2_s, digests2 = timed(lambda: evaluate(2))
    assert digests == digests2
    rows = _rows_for_store(good, digests, 1)

    stage_rows: list[tuple[str, ...]] = [
        ("parse + normalise (parse_file)", "—", fmt(n / parse_s), f"{parse_s / n * 1e6:.1f}", ""),
        ("OPRF evaluate, workers=1", "—", fmt(n / oprf1_s), f"{oprf1_s / n * 1e6:.1f}", ""),
        ("OPRF evaluate, workers=2", "—", fmt(n / oprf2_s), f"{oprf2_s / n * 1e6:.1f}", "2 threads"),
    ]
    e2e_rows: list[tuple[str, ...]] = []
    for backend in backends.names():
        store = open_store(backends.store_url(backend))
        try:

            def upsert(store: Any = store) -> None:
                for start in range(0, n, INGEST_BATCH):
                    batch = rows[start : start + INGEST_BATCH]
                    audit = [event("ingest", actor="node", role="node", now=NOW, count=len(batch))]
                    store.upsert_indicators(batch, now=int(NOW), audit=audit)

            upsert_s, _ = timed(upsert)
        finally:
            store.close()
        stage_rows.append(
            ("store upsert (new rows)", backend, fmt(n / upsert_s), f"{upsert_s / n * 1e6:.1f}", "")
        )
        for workers in (1, 2):
            node = backends.node(backend)
            default_workers = getattr(node, "workers", 1)
            try:
                node.workers = workers  # OPRF threads of the node (min(4, cores) by default)
                ingest_s, report = timed(partial(node.ingest, [path], now=NOW, publish_after=False))
                assert report.stored == n and not report.rejections
                publish_s, _ = timed(partial(node.publish, now=NOW))
            finally:
                node.close()
            rate = n / ingest_s
            label = f"workers={workers}" + (" (node default here)" if workers == default_workers else "")
            verdict = "met" if rate >= INGEST_TARGET else "missed"
            e2e_rows.append(
                (
                    f"Node.ingest, {label}",
                    backend,
                    fmt(rate),
                    f"{ingest_s / n * 1e6:.1f}",
                    f">= {INGEST_TARGET // 1000}k/s (1 core): {verdict}" if workers == 1 else verdict,
                )
            )
            e2e_rows.append(
                ("  then publish (filters, buckets, manifest)", backend, f"{publish_s:.2f} s", "", "")
            )
    head = ("ingest", "store", "indicators/s", "µs each", "target / note")
    print_table(head, [*e2e_rows, *stage_rows])
    sum1 = parse_s + oprf1_s
    print(
        f"\nStages alone add up, before the store, to {fmt(n / sum1)} with one OPRF worker and "
        f"{fmt(n / (parse_s + oprf2_s))} with two.\n"
    )


# --- (b) VOPRF over gRPC ------------------------------------------------------------------------------


def bench_grpc(root: Path, batch: int, rounds: int) -> None:
    limits = {
        "max_batch": batch,
        "oprf_burst": 10**6,
        "oprf_rate_per_s": 10**6,
        "oprf_daily_quota": 10**9,
        "oprf_holder_daily_quota": 10**9,
    }
    print(f"(b) VOPRF over gRPC (mTLS, 127.0.0.1): MY evaluates for SG, batches of {batch:,}, verifiable\n")
    net = start_net(root, ["MY", "SG"], now=NOW, limits=limits)
    try:
        path = root / "few.csv"
        write_csv(path, generate(["MY"], per_node=20, planted=0, today=TODAY)[0]["MY"])
        net.node("MY").ingest([path], now=NOW)
        node = net.node("MY")
        epoch, key = node.epoch, node.oprf_key(node.epoch)
        xs = [oprf_input("phone", f"+6012{i:07d}") for i in range(batch)]
        blinds, blinded = oprf.blind(xs, oprf.MODE_VOPRF)
        request = peer_pb2.EvaluateOprfRequest(
            epoch=epoch, kind=PHONE, blinded_elements=blinded, verifiable=True
        )
        stubs = [net.peer_stub("MY", as_member="SG") for _ in range(2)]
        first = stubs[0].EvaluateOprf(request, timeout=60)
        outputs = oprf.finalize(
            xs,
            blinds,
            list(first.evaluated_elements),
            oprf.MODE_VOPRF,
            blinded=blinded,
            pk=key.pk,
            proof=first.proof,
        )
        assert outputs == oprf.evaluate(key.sk, xs, oprf.MODE_VOPRF), (
            "gRPC outputs differ from local evaluation"
        )
        stubs[1].EvaluateOprf(request, timeout=60)  # warm the second channel

        def calls(stub: Any, count: int) -> None:
            for _ in range(count):
                stub.EvaluateOprf(request, timeout=60)

        def concurrent(callers: int) -> float:
            threads = [threading.Thread(target=calls, args=(stubs[i], rounds)) for i in range(callers)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return callers * rounds * batch / (time.perf_counter() - start)

        def local(workers: int) -> float:
            seconds, _ = timed(
                lambda: [oprf.blind_evaluate_verifiable(key, blinded, workers=workers) for _ in range(rounds)]
            )
            return rounds * batch / seconds

        def node_evaluate() -> float:
            seconds, _ = timed(
                lambda: [
                    node.evaluate("SG", epoch, "phone", blinded, verifiable=True, now=NOW)
                    for _ in range(rounds)
                ]
            )
            return rounds * batch / seconds

        client_rounds = max(1, rounds // 2)

        def client(workers: int) -> tuple[float, float]:
            blind_s, (bl, cs) = timed(
                lambda: [oprf.blind(xs, oprf.MODE_VOPRF, workers=workers) for _ in range(client_rounds)][-1]
            )
            d, proof = oprf.blind_evaluate_verifiable(key, cs)
            fin_s, _ = timed(
                lambda: [
                    oprf.finalize(
                        xs, bl, d, oprf.MODE_VOPRF, blinded=cs, pk=key.pk, proof=proof, workers=workers
                    )
                    for _ in range(client_rounds)
                ]
            )
            return client_rounds * batch / blind_s, client_rounds * batch / fin_s

        def round_trip() -> float:
            def run() -> None:
                for _ in range(client_rounds):
                    bl, cs = oprf.blind(xs, oprf.MODE_VOPRF)
                    req = peer_pb2.EvaluateOprfRequest(
                        epoch=epoch, kind=PHONE, blinded_elements=cs, verifiable=True
                    )
                    resp = stubs[0].EvaluateOprf(req, timeout=60)
                    oprf.finalize(
                        xs,
                        bl,
                        list(resp.evaluated_elements),
                        oprf.MODE_VOPRF,
                        blinded=cs,
                        pk=key.pk,
                        proof=resp.proof,
                    )

            seconds, _ = timed(run)
            return client_rounds * batch / seconds

        target = f">= {VOPRF_TARGET // 1000}k/s"
        default_workers = getattr(node, "workers", 1)
        rows: list[tuple[str, str, str, str]] = []
        for workers in (1, 2):
            node.workers = workers  # the server's OPRF threads per call (min(4, cores) by default)
            note = f"server workers={workers}" + (" (default here)" if workers == default_workers else "")
            for callers in (1, 2):
                figure = concurrent(callers)
                verdict = "met" if figure >= VOPRF_TARGET else "missed"
                label = f"EvaluateOprf over gRPC, {callers} caller{'s' if callers > 1 else ''}"
                rows.append((label, fmt(figure), f"{target}: {verdict}", note))
            rows.append(("  in process: Node.evaluate (quota + audit)", fmt(node_evaluate()), "", note))
        node.workers = default_workers
        local1, local2 = local(1), local(2)
        blind1, fin1 = client(1)
        blind2, fin2 = client(2)
        trip = round_trip()
        rows += [
            ("  in process: blind_evaluate_verifiable, 1 thread", fmt(local1), "", "the crypto alone"),
            ("  in process: blind_evaluate_verifiable, 2 threads", fmt(local2), "", "the crypto alone"),
            ("caller: Blind, workers=1 / 2", f"{fmt(blind1)} / {fmt(blind2)}", "", ""),
            ("caller: Finalize + VerifyProof, workers=1 / 2", f"{fmt(fin1)} / {fmt(fin2)}", "", ""),
            ("caller: Blind + RPC + Finalize, 1 caller, workers=1", fmt(trip), "", "an investigator's batch"),
        ]
        print_table(("operation", "evaluations/s", "target", "note"), rows)
        print(
            f"\n{rounds} calls of {batch:,} per caller; the callers and the server share this machine's "
            f"{os.cpu_count()} cores, so the 2-caller figure is bounded by them.\n"
        )
    finally:
        net.close()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="rows in the ingest CSV (50,000)")
    ap.add_argument("--mix", choices=("phones", "mixed"), default="phones", help="CSV content (phones)")
    ap.add_argument("--batch", type=int, default=1000, help="blinded elements per EvaluateOprf (1000)")
    ap.add_argument("--rounds", type=int, default=20, help="EvaluateOprf calls per caller (20)")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--skip", choices=("ingest", "grpc"), help="skip one part")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 rows, 3 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rounds = 5_000, 3

    print("bench_node: a real node's ingest and VOPRF serving")
    print(f"machine: {machine_info()}\n")
    with tempfile.TemporaryDirectory(prefix="petanda-bench-") as tmp:
        root = Path(tmp)
        if args.skip != "ingest":
            path = root / f"{args.mix}-{args.rows}.csv"
            if args.mix == "phones":
                write_rows(path, phone_rows(args.rows))
            else:
                write_csv(path, generate(["MY"], per_node=args.rows, planted=0, today=TODAY)[0]["MY"])
            with postgres() if not args.no_pg else _none() as pg:
                bench_ingest(Backends(root, pg), path, args.rows)
        if args.skip != "grpc":
            bench_grpc(root / "net", args.batch, args.rounds)


@contextmanager
def _none() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
