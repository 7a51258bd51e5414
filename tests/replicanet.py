"""A member served by two replica processes over one PostgreSQL, and an asker balancing over them.

TH (the holder) runs as two ``petanda-node serve`` processes over one real PostgreSQL database: the
replica at TH's ``address`` ("TH-a") runs the background sync, the one at its ``replicas`` address
("TH-b") runs ``serve --no-sync``. MY (the asker) is a third ``serve`` process on SQLite whose
``[[peers]]`` entry for TH lists both addresses, so its channel to TH balances over them (gRPC
round_robin). :func:`load` sends single checks from concurrent investigators through MY and SIGKILLs a
replica a third of the way through. Used by ``tests/test_replicas_failover.py`` and
``bench/bench_replicas.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from client.transport.tls import secure_channel
from node.config import load_config
from node.node import Node
from node.store import open_store
from node.testbed import CAPACITY_LIMITS, Federation, build_federation, free_ports, write_config

S = investigator_pb2
ASKER, HOLDER = "MY", "TH"
#: Every limit a minute of checks from a few investigators would reach, raised out of the way.
LIMITS = CAPACITY_LIMITS
SYNC = {"interval_s": 2, "timeout_s": 5.0}
CHECK_DEADLINE_MS = 5000
WRONG_ANSWER = "wrong answer"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (``/proc/PID/stat``), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Check:
    """One single check: when it started and ended (monotonic seconds) and what went wrong, if anything."""

    start: float
    end: float
    #: None when TH's answer came and was right; else why not (a wrong answer starts with WRONG_ANSWER)
    error: str | None

    @property
    def wrong(self) -> bool:
        return self.error is not None and self.error.startswith(WRONG_ANSWER)


class Replicas:
    """MY, and TH served by two ``serve`` processes over one PostgreSQL database."""

    def __init__(self, root: Path, store_url: str, indicators: int) -> None:
        self.root = root
        my_port, th_port, replica_port = free_ports(3)
        self.federation: Federation = build_federation(
            root / "fed", [ASKER, HOLDER], ports={ASKER: my_port, HOLDER: th_port}, limits=LIMITS, sync=SYNC
        )
        my, th = self.federation.members[ASKER], self.federation.members[HOLDER]
        self.replica_address = f"127.0.0.1:{replica_port}"
        write_config(th, [my, th], limits=LIMITS, sync=SYNC, store_url=store_url)
        # The second replica: the same node directory and store, another listening address.
        self.replica_config = th.dir / "replica.toml"
        self.replica_config.write_text(th.config.read_text().replace(th.address, self.replica_address, 1))
        # MY's entry for TH lists both addresses (write_config writes the [[peers]] tables last).
        with my.config.open("a") as handle:
            handle.write(f"replicas = {json.dumps([self.replica_address])}\n")
        rng = random.Random(7)
        held = sorted({f"+668{rng.randrange(10**8):08d}" for _ in range(indicators)})
        self.held = set(held)
        self.hits = held
        self.misses = [
            p for p in (f"+669{rng.randrange(10**8):08d}" for _ in range(indicators)) if p not in self.held
        ]
        for member, phones in ((th, held), (my, [f"+6012{rng.randrange(10**7):07d}" for _ in range(10)])):
            csv = root / f"{member.id}.csv"
            csv.write_text("kind,value,tlp\n" + "".join(f"phone,{p},GREEN\n" for p in phones))
            node = Node.open(load_config(member.config))
            try:
                report = node.ingest([csv], now=time.time())
            finally:
                node.close()
            assert report.stored == len(phones), (member.id, report)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[BinaryIO] = []
        self.channels: list[grpc.Channel] = []

    def spawn(self) -> None:
        """Start TH's two replicas and MY; wait until MY holds TH's publication."""
        my, th = self.federation.members[ASKER], self.federation.members[HOLDER]
        for name, config, extra in (
            ("TH-a", th.config, []),
            ("TH-b", self.replica_config, ["--no-sync"]),
            ("MY", my.config, []),
        ):
            log = (self.root / f"{name}.log").open("wb")
            self.logs.append(log)
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "serve", *extra, "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.root / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{log}")
            with open_store(load_config(my.config).store.url) as store:
                if store.peer_manifest(HOLDER) is not None:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("MY did not sync TH's publication within 120 s")
            time.sleep(0.5)

    def investigator(self) -> Any:
        """An InvestigatorService stub of MY on a new mTLS channel."""
        member = self.federation.members[ASKER]
        cert, key = member.investigator
        channel = secure_channel(member.address, ca=self.federation.ca, cert=cert, key=key)
        self.channels.append(channel)
        return investigator_pb2_grpc.InvestigatorServiceStub(channel)

    def check(self, stub: Any, phone: str) -> str | None:
        """One single check of ``phone``: None when TH answered it correctly, else what went wrong."""
        request = S.CheckRequest(
            queries=[S.IndicatorQuery(kind="phone", value=phone)], deadline_ms=CHECK_DEADLINE_MS
        )
        try:
            response = stub.Check(request, timeout=CHECK_DEADLINE_MS / 1000 + 5)
        except grpc.RpcError as error:
            return f"Check: {error.code().name}: {error.details()}"
        result = response.results[0]
        if result.error:
            return f"result: {result.error}"
        [peer] = [p for p in result.peers if p.peer_id == HOLDER]
        if peer.status not in (S.PEER_STATUS_MATCH, S.PEER_STATUS_NO_MATCH):
            return f"{S.PeerStatus.Name(peer.status)}: {peer.detail}"
        expected = S.PEER_STATUS_MATCH if phone in self.held else S.PEER_STATUS_NO_MATCH
        if peer.status != expected:
            return f"{WRONG_ANSWER} for {phone}: {S.PeerStatus.Name(peer.status)}"
        return None

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p.pid) for name, p in self.processes.items()}

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


@dataclass
class Run:
    """The checks of one :func:`load` and when the replica was killed (monotonic seconds)."""

    checks: list[Check]
    kill_at: float
    start: float
    stop: float
    cpu: dict[str, float]
    #: CPU seconds of each process from the start of the load to the kill (both replicas served?)
    cpu_before_kill: dict[str, float]
    wall_cpu_self: float


def load(world: Replicas, seconds: float, investigators: int, kill: str) -> Run:
    """Single checks through MY from ``investigators`` threads (one channel each) for ``seconds``; the
    process ``kill`` ("TH-a" or "TH-b") is SIGKILLed a third of the way through."""
    stubs = [world.investigator() for _ in range(investigators)]
    for stub in stubs:  # warm: every channel connected, MY's channel to both replicas open
        for phone in world.hits[:2] + world.misses[:2]:
            error = world.check(stub, phone)
            assert error is None, error
    queries = world.hits + world.misses
    random.Random(3).shuffle(queries)
    checks: list[Check] = []
    lock = threading.Lock()
    cpu0 = world.cpu()
    self0 = time.process_time()
    start = time.monotonic()
    stop = start + seconds

    def investigator(offset: int) -> None:
        i = offset
        local: list[Check] = []
        while (begun := time.monotonic()) < stop:
            error = world.check(stubs[offset], queries[i % len(queries)])
            local.append(Check(begun, time.monotonic(), error))
            i += investigators
        with lock:
            checks.extend(local)

    threads = [threading.Thread(target=investigator, args=(n,)) for n in range(investigators)]
    for thread in threads:
        thread.start()
    time.sleep(seconds / 3)
    victim = world.processes[kill]
    at_kill = world.cpu()
    kill_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for thread in threads:
        thread.join()
    cpu1 = world.cpu()
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu1}
    cpu[kill] = at_kill[kill] - cpu0[kill]
    before = {name: at_kill[name] - cpu0[name] for name in at_kill}
    return Run(checks, kill_at, start, stop, cpu, before, time.process_time() - self0)
