"""Eleven ASEAN nodes in one process: an investigator's checks fanned out to ten peers, beside PSI.

A federation of the eleven ASEAN members (``node.testbed.ASEAN``) started by ``tests.fednet.start_net``:
real gRPC servers with mutual TLS on 127.0.0.1, one SQLite store each, synthetic per-country data from
``node.demodata.generate`` ingested through the CSV path, every filter synced by every member. Then,
through the investigator service of one node (MY):

(a) single-indicator checks, each fanned out to the ten peers (VOPRF evaluation with proof per peer,
    filter test, the record of a hit opened locally from the record set synced with the filter):
    latency p50 / p90 / p99. Targets: p50 <= 10 ms,
    p99 <= 25 ms on loopback.
(b) a batch of ``--batch`` indicators in Check calls of 1000 (the node's batch limit): indicators/s.

Beside them, ``openmined-psi`` (ECDH PSI on P-256, Google's C++ library) answering the same membership
question for the same sets: one PSI per server, each server's set being the canonical indicators that
peer holds; one item against ten servers (sequential and in ten threads) and the batch against ten
servers, with the server setup message computed per query (the protocol's flow) and precomputed (its
best case: a setup reused like a filter). All of it runs on this machine's cores, servers included.

Run from the repository root::

    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_federation.py [--per-node 2000] [--checks 300]
    PYTHONPATH=. GRPC_VERBOSITY=ERROR python bench/bench_federation.py --quick
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

import grpc
from _common import fmt, machine_info, print_table  # bench/ is on sys.path when run as a script

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from client.protocol.bloom import BloomFilter
from client.protocol.canonical import normalize
from client.protocol.kinds import TIER_OPRF
from client.transport.tls import secure_channel
from node.config import load_config
from node.demodata import generate, write_csv
from node.node import Node
from node.server import DEFAULT_SERVER_THREADS
from node.store import open_store
from node.testbed import ASEAN, CAPACITY_LIMITS, build_federation, free_ports
from tests.fednet import Net, start_net

psi: Any
try:
    psi = importlib.import_module("private_set_intersection.python")
except ImportError:  # pragma: no cover - optional bench dependency
    psi = None

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
TODAY = date(2026, 11, 29)
ASKER = "MY"
MAX_BATCH = 1000
P50_TARGET_MS, P99_TARGET_MS = 10.0, 25.0
PSI_FPR = 1e-6
S = investigator_pb2


class ServiceMeter:
    """Each peer's service of ``EvaluateOprf`` in the in-process federation: calls, wall and thread CPU
    seconds inside the servicer (gRPC's own C threads excluded). Installed before the servers start
    (gRPC binds a servicer's methods then); the asker's CPU is the process's less the peers' service."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls, self.wall, self.cpu = 0, 0.0, 0.0

    def install(self) -> None:
        from node.servicers import PeerServicer

        original = PeerServicer.EvaluateOprf

        def metered(servicer: Any, request: Any, context: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(servicer, request, context)
            finally:
                with self.lock:
                    self.calls += 1
                    self.wall += time.perf_counter() - wall
                    self.cpu += time.thread_time() - cpu

        PeerServicer.EvaluateOprf = metered  # type: ignore[method-assign]

    def snapshot(self) -> tuple[float, int, float, float]:
        """(process CPU seconds, calls, service wall seconds, service CPU seconds) now; with the nodes in
        their own processes, (the asker process's CPU, 0, 0, the peers' processes' CPU)."""
        if PROCESSES:
            asker = proc_cpu(PROCESSES[ASKER])
            return asker, 0, 0.0, asker + sum(proc_cpu(p) for n, p in PROCESSES.items() if n != ASKER)
        with self.lock:
            return time.process_time(), self.calls, self.wall, self.cpu


#: The node processes of the separate-process run (node id -> pid), for their CPU times.
PROCESSES: dict[str, int] = {}


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


METER = ServiceMeter()


def costs(before: tuple[float, int, float, float], checks: int) -> dict[str, float]:
    """Per check since ``before``: the process's CPU (ms), the asker's share (process less the peers'
    service, ms), and per peer call its service wall and CPU time (ms)."""
    cpu, calls, wall, served = (a - b for a, b in zip(METER.snapshot(), before, strict=True))
    if PROCESSES:  # cpu: the asker's; served: every node's
        return {"cpu_ms": served / checks * 1000, "asker_ms": cpu / checks * 1000}
    calls = max(1, int(calls))
    return {
        "cpu_ms": cpu / checks * 1000,
        "asker_ms": (cpu - served) / checks * 1000,
        "service_ms": wall / calls * 1000,
        "service_cpu_ms": served / calls * 1000,
    }


def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    """p50, p90 and p99 of ``samples_s``, in milliseconds."""
    q = statistics.quantiles([s * 1000 for s in samples_s], n=100, method="inclusive")
    return q[49], q[89], q[98]


def ms3(p: tuple[float, float, float]) -> tuple[str, str, str]:
    return tuple(f"{x:.1f}" for x in p)  # type: ignore[return-value]


# --- the federation -----------------------------------------------------------------------------------


LIMITS = {"max_batch": MAX_BATCH, **CAPACITY_LIMITS}


class World:
    """A running federation, what each member publishes, and queries drawn from it.

    In process (``tests.fednet.start_net``: every server in this Python process) or, with
    ``processes=True``, each node its own ``petanda-node serve`` process (as ``petanda demo`` runs them).
    """

    def __init__(
        self,
        root: Path,
        per_node: int,
        planted: int,
        *,
        processes: bool = False,
        limits: Mapping[str, object] | None = LIMITS,
        sync_interval_s: int = 2,
    ) -> None:
        ids = list(ASEAN)
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.channels: list[grpc.Channel] = []
        self.net: Net | None = None
        now = time.time() if processes else NOW
        today = datetime.fromtimestamp(now, UTC).date()
        start = time.perf_counter()
        self.rows, self.planted = generate(ids, per_node=per_node, planted=planted, today=today)
        self.generate_s = time.perf_counter() - start
        if processes:
            ports = dict(zip(ids, free_ports(len(ids)), strict=True))
            sync = {"interval_s": sync_interval_s, "timeout_s": 5.0}
            self.federation = build_federation(root / "fed", ids, ports=ports, limits=limits, sync=sync)
        else:
            start = time.perf_counter()
            # Each server with a deployment's threads (node.server.DEFAULT_SERVER_THREADS), not a test's.
            self.net = start_net(
                root / "net", ids, now=NOW, limits=LIMITS, max_workers=DEFAULT_SERVER_THREADS
            )
            self.federation = self.net.federation
            self.start_s = time.perf_counter() - start
        start = time.perf_counter()
        for node_id, rows in self.rows.items():
            path = root / f"{node_id}.csv"
            write_csv(path, rows)
            if self.net is not None:
                report = self.net.node(node_id).ingest([path], now=now)
            else:
                node = Node.open(load_config(self.federation.members[node_id].config))
                try:
                    report = node.ingest([path], now=now)
                finally:
                    node.close()
            assert not report.rejections, report.rejections[:3]
        self.ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        if self.net is not None:
            self.net.sync_all()
        else:
            self.start_s = self._spawn()
        self.sync_s = time.perf_counter() - start - (self.start_s if processes else 0.0)
        # What each peer publishes (RED and AMBER+STRICT are held back), as canonical (kind, value).
        self.held: dict[str, set[tuple[str, str]]] = {
            node_id: {
                (r["kind"], normalize(r["kind"], r["value"], r["region"]))
                for r in rows
                if r["tlp"] not in ("RED", "AMBER+STRICT")
            }
            for node_id, rows in self.rows.items()
        }
        self.peers = [p for p in ids if p != ASKER]
        store = open_store(load_config(self.federation.members[ASKER].config).store.url)
        try:
            self.filter_bytes = sum(
                len(store.peer_filter(peer, kind, tier) or b"")
                + len(store.peer_records(peer, kind, tier) or b"")
                for peer in self.peers
                for kind in {k for k, _ in self.held[peer]}
                for tier in (1, 2)
            )
        finally:
            store.close()

    def _spawn(self) -> float:
        """Start every node's server process; wait until each holds all its peers' manifests."""
        start = time.perf_counter()
        for node_id, member in self.federation.members.items():
            log = (member.dir / "node.log").open("wb")
            self.processes[node_id] = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "serve", "--config", str(member.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            PROCESSES[node_id] = self.processes[node_id].pid
        started = time.perf_counter() - start
        pending = set(self.federation.members)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for node_id in sorted(pending):
                if self.processes[node_id].poll() is not None:
                    raise SystemExit(f"node {node_id} exited; see {self.federation.members[node_id].dir}")
                config = load_config(self.federation.members[node_id].config)
                store = open_store(config.store.url)
                try:
                    if all(store.peer_manifest(p.id) for p in config.peers):
                        pending.discard(node_id)
                finally:
                    store.close()
            time.sleep(0.5)
        if pending:
            raise SystemExit(f"not synced after 120 s: {', '.join(sorted(pending))}")
        return started

    def investigator(self) -> Any:
        """An InvestigatorService stub of the asker, on a new mTLS channel."""
        member = self.federation.members[ASKER]
        cert, key = member.investigator
        channel = secure_channel(member.address, ca=self.federation.ca, cert=cert, key=key)
        self.channels.append(channel)
        return investigator_pb2_grpc.InvestigatorServiceStub(channel)

    def queries(self, count: int, hit_share: float, seed: int) -> list[tuple[str, str]]:
        """``count`` canonical indicators: ``hit_share`` of them held by a peer, the rest by nobody."""
        rng = random.Random(seed)
        held = sorted({item for peer in self.peers for item in self.held[peer]})
        hits = [held[rng.randrange(len(held))] for _ in range(round(count * hit_share))]
        misses = [("phone", f"+6012{rng.randrange(10**7):07d}") for _ in range(count - len(hits))]
        everything = set().union(*self.held.values())
        misses = [m for m in misses if m not in everything]
        out = hits + misses
        rng.shuffle(out)
        return out

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        if self.net is not None:
            self.net.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        PROCESSES.clear()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def check_request(items: Sequence[tuple[str, str]]) -> Any:
    return S.CheckRequest(queries=[S.IndicatorQuery(kind=k, value=v) for k, v in items], deadline_ms=30_000)


def verify(world: World, items: Sequence[tuple[str, str]], response: Any) -> int:
    """Check every answer against what the peers hold; return the number of (indicator, peer) matches."""
    matches = 0
    for (kind, value), result in zip(items, response.results, strict=True):
        assert not result.error, result.error
        for peer in result.peers:
            expected = (kind, value) in world.held[peer.peer_id]
            assert peer.status == (S.PEER_STATUS_MATCH if expected else S.PEER_STATUS_NO_MATCH), (
                kind,
                value,
                peer.peer_id,
                peer.status,
                peer.detail,
            )
            matches += expected
    return matches


def bench_petanda(world: World, checks: int, batch: int, hit_share: float) -> dict[str, Any]:
    stub = world.investigator()
    warm = world.queries(20, hit_share, seed=1)
    for item in warm:
        stub.Check(check_request([item]))
    out: dict[str, Any] = {}

    singles = world.queries(checks, hit_share, seed=2)
    before = METER.snapshot()
    latencies: list[float] = []
    hit_lat: list[float] = []
    miss_lat: list[float] = []
    for item in singles:
        start = time.perf_counter()
        response = stub.Check(check_request([item]))
        elapsed = time.perf_counter() - start
        latencies.append(elapsed)
        (hit_lat if verify(world, [item], response) else miss_lat).append(elapsed)
    out["single"] = percentiles(latencies)
    out["single_costs"] = costs(before, len(singles))
    out["single_hit"] = percentiles(hit_lat) if len(hit_lat) >= 2 else None
    out["single_miss"] = percentiles(miss_lat) if len(miss_lat) >= 2 else None
    out["hits"] = len(hit_lat)

    fresh: list[float] = []
    for item in singles[: max(2, checks // 5)]:
        start = time.perf_counter()
        world.investigator().Check(check_request([item]))  # a new mTLS channel per check
        fresh.append(time.perf_counter() - start)
    out["single_fresh"] = percentiles(fresh)

    items = world.queries(batch, hit_share, seed=3)
    matches = 0
    before = METER.snapshot()
    start = time.perf_counter()
    for first in range(0, len(items), MAX_BATCH):
        chunk = items[first : first + MAX_BATCH]
        matches += verify(world, chunk, stub.Check(check_request(chunk)))
    out["batch_s"] = time.perf_counter() - start
    out["batch_costs"] = costs(before, len(items))
    out["batch_n"] = len(items)
    out["batch_matches"] = matches
    return out


def bench_concurrent(world: World, seconds: float, investigators: int, hit_share: float) -> dict[str, Any]:
    """Single checks from ``investigators`` concurrent investigators of MY for ``seconds``, every node at
    its DEFAULT limits: checks/s, answers not fully answered, each check's latency, and (in process) the
    calls MY's peer senders made (coalescing merges concurrent checks' evaluations) and the transactions
    its group commit made. In process the nodes' limits are put to the defaults for the load; a world
    of node processes must have been built with them (``World(..., limits=None)``)."""
    from node.config import LimitsSection

    defaults = LimitsSection()
    saved = {}
    checker: Any = None
    if world.net is not None:
        for node_id, running in world.net.running.items():
            saved[node_id] = running.node.config
            running.node.config = running.node.config.model_copy(update={"limits": defaults})
        checker = world.net.running[ASKER].investigator.checker
    latencies: list[float] = []
    items = world.queries(20_000, hit_share, seed=4)
    lock = threading.Lock()
    done = [0, 0]  # checks, (indicator, peer) answers other than match / no match
    details: Counter[str] = Counter()  # why, for those
    stubs = [world.investigator() for _ in range(investigators)]
    for stub in stubs:  # connected before the load starts
        stub.Check(check_request([items[0]]))
    if checker is not None:
        calls0, evaluations0 = checker.scheduler.calls, checker.scheduler.evaluations
        commits0 = (checker.quotas.commits, checker.audit.commits)
    stop = time.perf_counter() + seconds

    def investigator(offset: int) -> None:
        stub = stubs[offset]
        i = offset
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            response = stub.Check(check_request([items[i % len(items)]]))
            took = time.perf_counter() - sent
            bad = [
                p.detail
                for p in response.results[0].peers
                if p.status not in (S.PEER_STATUS_MATCH, S.PEER_STATUS_NO_MATCH)
            ]
            with lock:
                done[0] += 1
                done[1] += len(bad)
                latencies.append(took)
                details.update(d.split(";")[0] for d in bad)
            i += investigators

    # The in-process nodes' shared clock (frozen by the test federation) runs in real time during the
    # load, so each peer's per-caller call limit refills as it would; it starts 10 min on, every bucket
    # full again. Node processes use the real clock.
    ticking = threading.Event()
    ticker: threading.Thread | None = None
    if world.net is not None:
        clock = world.net.clock
        clock.now += 600
        base = clock.now

        def tick() -> None:
            t0 = time.monotonic()
            while not ticking.wait(0.005):
                clock.now = base + (time.monotonic() - t0)

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
    load = os.getloadavg()[0]
    before = METER.snapshot()
    start = time.perf_counter()
    threads = [threading.Thread(target=investigator, args=(n,)) for n in range(investigators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    spent = costs(before, max(1, done[0]))
    out: dict[str, Any] = {
        "checks": done[0],
        "refused": done[1],
        "why": details.most_common(3),
        "seconds": elapsed,
        "costs": spent,
        "latency": percentiles(latencies) if len(latencies) >= 2 else None,
        "load": (load, os.getloadavg()[0]),
        "calls": None,
    }
    if ticker is not None:
        ticking.set()
        ticker.join()
    if checker is not None and world.net is not None:
        out["window_ms"] = checker.scheduler.window() * 1000  # at the default limits, before they go back
        for node_id, running in world.net.running.items():
            running.node.config = saved[node_id]
        out["calls"] = checker.scheduler.calls - calls0
        out["evaluations"] = checker.scheduler.evaluations - evaluations0
        out["commits"] = (checker.quotas.commits - commits0[0], checker.audit.commits - commits0[1])
    return out


# --- openmined-psi ------------------------------------------------------------------------------------


def bench_psi(world: World, checks: int, batch: int, hit_share: float) -> dict[str, Any]:
    """The same membership questions, one ECDH PSI per server (reveal_intersection=True)."""
    sets = {peer: [f"{k}\x00{v}" for k, v in sorted(world.held[peer])] for peer in world.peers}
    servers = {peer: psi.server.CreateWithNewKey(True) for peer in world.peers}
    client = psi.client.CreateWithNewKey(True)
    lock = threading.Lock()
    out: dict[str, Any] = {}

    def one_server(peer: str, items: list[str], request: Any, setup: Any | None) -> list[int]:
        server = servers[peer]
        if setup is None:
            setup = server.CreateSetupMessage(PSI_FPR, len(items), sets[peer], psi.DataStructure.GCS)
        response = server.ProcessRequest(request)
        with lock:  # one client object; its calls are not documented as thread-safe
            return list(client.GetIntersection(setup, response))

    def ask_all(items: list[str], setups: dict[str, Any] | None, threaded: bool) -> dict[str, list[int]]:
        # The request (the client's items under the client's key) does not depend on the server: it
        # is made once and sent to all ten.
        request = client.CreateRequest(items)
        results: dict[str, list[int]] = {}

        def run(peer: str) -> None:
            results[peer] = one_server(peer, items, request, setups[peer] if setups else None)

        if not threaded:
            for peer in world.peers:
                run(peer)
            return results
        threads = [threading.Thread(target=run, args=(peer,)) for peer in world.peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def check_answers(items: list[str], results: dict[str, list[int]]) -> int:
        matches = 0
        for peer, found in results.items():
            held = set(sets[peer])
            expected = {i for i, x in enumerate(items) if x in held}
            # GCS has false positives at rate PSI_FPR per query: a superset is a correct answer.
            assert expected <= set(found), (peer, len(expected), len(found))
            matches += len(expected)
        return matches

    singles = [f"{k}\x00{v}" for k, v in world.queries(checks, hit_share, seed=2)]
    cached1 = {
        p: servers[p].CreateSetupMessage(PSI_FPR, 1, sets[p], psi.DataStructure.GCS) for p in world.peers
    }
    out["setup_bytes_1"] = statistics.mean(m.ByteSize() for m in cached1.values())
    for label, setups, threaded in (
        ("seq_fresh", None, False),
        ("thr_fresh", None, True),
        ("seq_cached", cached1, False),
        ("thr_cached", cached1, True),
    ):
        runs = checks if setups else max(2, checks // 30)
        latencies = []
        for x in singles[:runs]:
            start = time.perf_counter()
            results = ask_all([x], setups, threaded)
            latencies.append(time.perf_counter() - start)
            check_answers([x], results)
        out[label] = percentiles(latencies)
        out[label + "_runs"] = runs

    items = [f"{k}\x00{v}" for k, v in world.queries(batch, hit_share, seed=3)]
    start = time.perf_counter()
    cached_b = {
        p: servers[p].CreateSetupMessage(PSI_FPR, len(items), sets[p], psi.DataStructure.GCS)
        for p in world.peers
    }
    setup_s = time.perf_counter() - start
    out["setup_bytes_b"] = statistics.mean(m.ByteSize() for m in cached_b.values())
    out["request_bytes_b"] = client.CreateRequest(items).ByteSize()
    for label, threaded in (("batch_seq", False), ("batch_thr", True)):
        start = time.perf_counter()
        results = ask_all(items, cached_b, threaded)
        out[label] = time.perf_counter() - start
        out[label + "_matches"] = check_answers(items, results)
    out["batch_setup_s"] = setup_s
    out["batch_n"] = len(items)
    return out


def filter_parse_ms(n: int) -> tuple[float, float]:
    """Milliseconds to parse a serialised OPRF-tier filter of ``n`` digests at p = 1e-6, and its MB."""
    data = BloomFilter.build(
        random.Random(1).randbytes(64 * n), p=1e-6, kind="phone", tier=TIER_OPRF, epoch=1, node_id="TH"
    ).to_bytes()
    runs = 10
    start = time.perf_counter()
    for _ in range(runs):
        BloomFilter.from_bytes(data)
    return (time.perf_counter() - start) / runs * 1000, len(data) / 1e6


# --- report -------------------------------------------------------------------------------------------


def print_concurrent(mode: str, c: dict[str, Any], investigators: int) -> None:
    """The (c) rows of one mode."""
    rate = c["checks"] / c["seconds"]
    verdict = "met" if rate >= 200 and c["refused"] == 0 else "missed"
    where = "in-process federation" if mode == "inproc" else "each node its own process"
    print(
        f"\n(c) Single checks from {investigators} concurrent investigators of MY, ten peers, "
        f"every node at its default limits, {c['seconds']:.1f} s ({where})"
    )
    calls = c["calls"]
    print_table(
        ("checks", "checks/s", "not fully answered", "calls to peers", "evaluations carried", "target"),
        [
            (
                f"{c['checks']:,}",
                f"{rate:,.0f}",
                f"{c['refused']:,}",
                "n/a" if calls is None else f"{calls:,}",
                "n/a" if calls is None else f"{c['evaluations']:,}",
                f">= 200/s, none refused: {verdict}",
            )
        ],
    )
    cost = c["costs"]
    checks = max(1, c["checks"])
    if mode == "inproc":
        print(
            f"  per check: all nodes' CPU {cost['cpu_ms']:.2f} ms, the asker's {cost['asker_ms']:.2f} ms; "
            f"per peer call: service {cost['service_ms']:.2f} ms wall, {cost['service_cpu_ms']:.2f} ms CPU"
        )
        quota_tx, audit_tx = c["commits"]
        print(
            f"  merging: {c['evaluations'] / max(1, calls):.1f} checks per call, "
            f"{calls / c['seconds'] / len(ASEAN[1:]):.1f} calls/s per peer (merge window "
            f"{c['window_ms']:.0f} ms); group commit at MY: {quota_tx / checks:.2f} quota and "
            f"{audit_tx / checks:.2f} audit transactions per check"
        )
        used = f"{cost['cpu_ms'] * rate / 1000:.2f} CPU-s per second in this one Python process (one GIL)"
    else:
        print(
            f"  per check: all nodes' CPU {cost['cpu_ms']:.2f} ms (their sync loops included), the asker's "
            f"process {cost['asker_ms']:.2f} ms"
        )
        used = (
            f"the asker's process {cost['asker_ms'] * rate / 1000:.2f} CPU-s per second, all nodes "
            f"{cost['cpu_ms'] * rate / 1000:.2f} (2 cores)"
        )
    if c["latency"]:
        p50, p90, p99 = ms3(c["latency"])
        print(f"  a check's latency under this load: p50 / p90 / p99 {p50} / {p90} / {p99} ms")
    print(f"  CPU used: {used}; load average {c['load'][0]:.1f} before, {c['load'][1]:.1f} after")
    if c["why"]:
        print("  why not answered: " + "; ".join(f"{why} ({n})" for why, n in c["why"]))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-node", type=int, default=1000, help="own indicators per member (1,000)")
    ap.add_argument("--planted", type=int, default=60, help="indicators planted in several members (60)")
    ap.add_argument("--checks", type=int, default=300, help="single-indicator checks timed (300)")
    ap.add_argument("--batch", type=int, default=10_000, help="indicators in the batch check (10,000)")
    ap.add_argument("--hit-share", type=float, default=0.1, help="share of queries a peer holds (0.1)")
    ap.add_argument(
        "--mode",
        choices=("inproc", "processes", "both"),
        default="both",
        help="eleven servers in this process, each in its own process, or both (both)",
    )
    ap.add_argument("--no-psi", action="store_true", help="skip openmined-psi")
    ap.add_argument(
        "--big-filter", type=int, default=1_000_000, help="digests of the filter whose parse is timed (1M)"
    )
    ap.add_argument(
        "--concurrent-s", type=float, default=10.0, help="seconds of concurrent investigators' checks (10)"
    )
    ap.add_argument("--investigators", type=int, default=20, help="concurrent investigators (20)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 per node, 30 checks, batch 1000")
    args = ap.parse_args(argv)
    if args.quick:
        args.per_node, args.checks, args.batch, args.big_filter = 200, 30, 1000, 100_000
        args.concurrent_s = 2.0
    modes = ["inproc", "processes"] if args.mode == "both" else [args.mode]

    print(
        "bench_federation: eleven ASEAN nodes, checks from MY's investigator service fanned out to ten peers"
    )
    print(f"machine: {machine_info()}")
    print(f"queries: {args.hit_share:.0%} held by at least one peer, the rest (phones) by none")
    print(
        "limits raised to measure capacity, not policy: " + ", ".join(f"{k}={v:,}" for k, v in LIMITS.items())
    )
    METER.install()
    ours: dict[str, dict[str, Any]] = {}
    concurrent: dict[str, dict[str, Any]] = {}
    theirs: dict[str, Any] | None = None
    filter_bytes = 0
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="petanda-bench-") as tmp:
            world = World(Path(tmp), args.per_node, args.planted, processes=mode == "processes")
            try:
                sizes = [len(world.held[peer]) for peer in world.peers]
                filter_bytes = world.filter_bytes
                print(
                    f"{mode}: {len(ASEAN)} nodes, {args.per_node:,} own indicators each + {args.planted} "
                    f"planted (peers publish {min(sizes):,}..{max(sizes):,}); data {world.generate_s:.1f} s, "
                    f"ingest {world.ingest_s:.1f} s, start {world.start_s:.1f} s, sync {world.sync_s:.1f} s; "
                    f"peer filters and records held by MY: {filter_bytes / 1024:,.0f} KiB"
                )
                ours[mode] = bench_petanda(world, args.checks, args.batch, args.hit_share)
                if mode == "inproc" and args.concurrent_s > 0:
                    concurrent[mode] = bench_concurrent(
                        world, args.concurrent_s, args.investigators, args.hit_share
                    )
                if theirs is None and psi is not None and not args.no_psi:
                    theirs = bench_psi(world, args.checks, args.batch, args.hit_share)
            finally:
                world.close()
    if "processes" in modes and args.concurrent_s > 0:  # (c) again, each node its own process
        with tempfile.TemporaryDirectory(prefix="petanda-bench-") as tmp:
            # Default limits; each node syncs at start and then every 60 s (a deployment's pace), so
            # that eleven sync loops every 2 s do not take the load's CPU.
            world = World(
                Path(tmp), args.per_node, args.planted, processes=True, limits=None, sync_interval_s=60
            )
            try:
                concurrent["processes"] = bench_concurrent(
                    world, args.concurrent_s, args.investigators, args.hit_share
                )
            finally:
                world.close()
    if psi is None:
        print("openmined-psi not installed: PSI rows skipped")
    parse_ms, parse_mb = filter_parse_ms(args.big_filter)

    label = {"inproc": "11 servers in this process", "processes": "each node its own process"}
    print(f"\n(a) One indicator checked against ten peers: latency in ms ({args.checks} checks)")
    rows = []
    for mode, r in ours.items():
        p50, _, p99 = r["single"]
        verdict = "p50 " + ("met" if p50 <= P50_TARGET_MS else "missed")
        verdict += ", p99 " + ("met" if p99 <= P99_TARGET_MS else "missed")
        rows.append((f"petanda Check via MY, {label[mode]}", *ms3(r["single"]), str(args.checks), verdict))
        if r["single_miss"]:
            rows.append(
                ("  of which no peer holds it", *ms3(r["single_miss"]), str(args.checks - r["hits"]), "")
            )
        if r["single_hit"]:
            rows.append(("  of which a peer holds it", *ms3(r["single_hit"]), str(r["hits"]), ""))
        fresh_runs = str(max(2, args.checks // 5))
        rows.append(("  new mTLS channel per check", *ms3(r["single_fresh"]), fresh_runs, ""))
    if theirs:
        for key, name in (
            ("seq_fresh", "PSI x10 sequential, setup per query"),
            ("thr_fresh", "PSI x10 in 10 threads, setup per query"),
            ("seq_cached", "PSI x10 sequential, setup precomputed"),
            ("thr_cached", "PSI x10 in 10 threads, setup precomputed"),
        ):
            rows.append((name, *ms3(theirs[key]), str(theirs[key + "_runs"]), ""))
    target = f"target p50<={P50_TARGET_MS:g} p99<={P99_TARGET_MS:g}"
    print_table(("protocol", "p50", "p90", "p99", "runs", target), rows)

    print(f"\n(b) A batch of {args.batch:,} indicators against ten peers (Check calls of {MAX_BATCH:,})")
    brows = []
    for mode, r in ours.items():
        rate = r["batch_n"] / r["batch_s"]
        brows.append(
            (
                f"petanda Check via MY, {label[mode]}",
                f"{r['batch_s']:.1f}",
                fmt(rate),
                str(r["batch_matches"]),
                "",
            )
        )
    if theirs:
        n = theirs["batch_n"]
        brows += [
            (
                "PSI x10 sequential, setup precomputed",
                f"{theirs['batch_seq']:.1f}",
                fmt(n / theirs["batch_seq"]),
                str(theirs["batch_seq_matches"]),
                f"setup for ten servers: {theirs['batch_setup_s']:.1f} s more",
            ),
            (
                "PSI x10 in 10 threads, setup precomputed",
                f"{theirs['batch_thr']:.1f}",
                fmt(n / theirs["batch_thr"]),
                str(theirs["batch_thr_matches"]),
                "",
            ),
            (
                "PSI x10 sequential, setup per query",
                f"{theirs['batch_seq'] + theirs['batch_setup_s']:.1f}",
                fmt(n / (theirs["batch_seq"] + theirs["batch_setup_s"])),
                "",
                "",
            ),
        ]
    print_table(("protocol", "seconds", "indicators/s", "matches", "note"), brows)

    print("\nCPU behind (a) and (b), per check of one indicator / per indicator of the batch (ms):")
    crows = []
    for mode, r in ours.items():
        for phase, key in (("(a) single", "single_costs"), ("(b) batch", "batch_costs")):
            c = r[key]
            crows.append(
                (
                    f"{label[mode]}, {phase}",
                    f"{c['cpu_ms']:.2f}",
                    f"{c['asker_ms']:.2f}",
                    f"{c['service_ms']:.2f}" if "service_ms" in c else "",
                    f"{c['service_cpu_ms']:.2f}" if "service_cpu_ms" in c else "",
                )
            )
    print_table(("run", "all nodes' CPU", "asker's CPU", "peer call: service wall", "service CPU"), crows)
    print(
        f"\nThe asker parses each peer's filter once per manifest version (node.check.Checker.view): "
        f"BloomFilter.from_bytes of\na filter of {args.big_filter:,} OPRF digests ({parse_mb:.1f} MB) takes "
        f"{parse_ms:.1f} ms, paid once after each sync, not per check."
    )
    for mode, load in concurrent.items():
        print_concurrent(mode, load, args.investigators)
    print("\nWhat each protocol reveals and moves:")
    print(
        "  petanda: the asker learns, per peer, match / no match and on a match the holder's metadata;\n"
        "    the peer learns how many blinded elements of which kind it evaluated, the same whether the\n"
        "    value is held or not, never the indicator. Filters and sealed records are downloaded once\n"
        f"    per publication at sync ({filter_bytes / 1024:,.0f} KiB for ten peers here); a check moves\n"
        "    32 B per element each way and a 64 B proof per batch, and nothing more on a hit."
    )
    if theirs:
        print(
            "  PSI (reveal_intersection): the client learns which of its items are in the server's set,\n"
            "    nothing else (no metadata); the server learns the client's set size. Each server sends a\n"
            "    setup message sized by its whole set, per query: "
            f"{theirs['setup_bytes_1'] / 1024:,.1f} KiB for one item,\n"
            f"    {theirs['setup_bytes_b'] / 1024:,.1f} KiB for {n:,} items (GCS, fpr {PSI_FPR:g}), plus the "
            f"request ({theirs['request_bytes_b'] / 1024:,.0f} KiB for {n:,} items) and the answer."
        )


if __name__ == "__main__":
    main()
