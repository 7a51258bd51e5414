"""``petanda check --file`` at the peers' limits: pacing, retries of what was refused, resuming.

The first tests drive :class:`client.tools.batch.BatchRun` against a small stand-in of a node whose
peers keep token buckets and daily quotas on a fake clock (no sleeping: the clock jumps). The last one
is the real thing: three real nodes, a 30,000-row file through the ``petanda`` CLI in a subprocess,
killed with SIGKILL half-way and resumed, compared with an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2
from client.protocol.errors import InputError, PeerUnavailable, RateLimited
from client.protocol.model import Metadata, Outcome, PeerOutcome, PeerStatus, Query
from client.tools.batch import NODE, BatchRun, Pacer, Writer, merge, read_previous
from client.tools.cli import main
from client.tools.results import CSV_COLUMNS, Tally, read_rows, short_detail
from client.transport.convert import results_from_proto
from tests.fednet import Clock, Net, start_net
from tests.limitednet import DATA, T0, audit_actions, retry_ms, rpc_error

DAY = 86_400.0
META = Metadata("investment", "2024-01-02", "2024-03-04", 80, "AMBER", 3, "ab" * 16, "oprf", 7)


# --- a stand-in node with rate-limited peers ----------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 10 * DAY + 3600) -> None:
        self.now = now
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@dataclass
class Bucket:
    """A peer's token bucket and daily quota per kind, as node/quotas.py words its refusals."""

    rate: float
    burst: int
    daily: int = 10**9
    state: dict[str, tuple[float, float, int, int]] = field(default_factory=dict)

    def take(self, peer: str, kind: str, n: int, now: float) -> tuple[bool, float, str]:
        tokens, at, day, used = self.state.get(kind, (float(self.burst), now, int(now // DAY), 0))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if int(now // DAY) != day:
            day, used = int(now // DAY), 0
        if used + n > self.daily:
            wait = (day + 1) * DAY - now
            reset = datetime.fromtimestamp((day + 1) * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return (
                False,
                wait,
                (
                    f"{peer}: daily OPRF quota of MY for {kind} used up ({used} of {self.daily} today, "
                    f"{n} asked); it resets at {reset} (in {wait:.0f} s)"
                ),
            )
        if tokens < n:
            wait = (n - tokens) / self.rate
            return (
                False,
                wait,
                (
                    f"{peer}: OPRF rate limit of MY for {kind} reached ({self.rate:g}/s, "
                    f"burst {self.burst}); retry in {wait:.1f} s"
                ),
            )
        self.state[kind] = (tokens - n, now, day, used + n)
        return True, 0.0, ""


@dataclass
class StandIn:
    """The investigator's node: SG and TH, each behind its own bucket; SG holds ``held``."""

    clock: FakeClock
    buckets: dict[str, Bucket]
    held: frozenset[str] = frozenset()
    call_s: float = 0.2
    #: (value, peer) → times the peer answered it (match or no match).
    answered: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    calls: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    node_bucket: Bucket | None = None
    fail_after: int | None = None

    def __call__(self, queries: Sequence[Query], peers: Sequence[str]) -> list[Outcome]:
        self.calls.append((len(queries), tuple(peers)))
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise PeerUnavailable("node 127.0.0.1:1 unreachable: connection refused")
        now = self.clock()
        self.clock.now += self.call_s
        if self.node_bucket is not None:
            ok, wait, why = self.node_bucket.take("MY/alice", "check", len(queries), now)
            if not ok:
                raise RateLimited(
                    f"the node refused: rate limit or quota exhausted: {why}", retry_after_s=wait
                )
        kinds = Counter(q.kind for q in queries)
        verdicts: dict[tuple[str, str], tuple[bool, float, str]] = {}
        for peer in peers or sorted(self.buckets):
            for kind, n in kinds.items():
                verdicts[(peer, kind)] = self.buckets[peer].take(peer, kind, n, now)
                if not verdicts[(peer, kind)][0]:
                    self.refusals[peer] += 1
        outcomes = []
        for q in queries:
            answers = []
            for peer in peers or sorted(self.buckets):
                ok, wait, why = verdicts[(peer, q.kind)]
                if not ok:
                    answers.append(
                        PeerOutcome(peer, PeerStatus.RATE_LIMITED, None, why, math.ceil(wait * 1000))
                    )
                    continue
                self.answered[(q.value, peer)] += 1
                hit = peer == "SG" and q.value in self.held
                answers.append(
                    PeerOutcome(peer, PeerStatus.MATCH, META)
                    if hit
                    else PeerOutcome(peer, PeerStatus.NO_MATCH)
                )
            outcomes.append(Outcome(q.value, peers=tuple(answers)))
        return outcomes


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+6012{i:07d}" for i in range(start, start + n)]


def csv_input(values: Sequence[str]) -> str:
    return "kind,value\n" + "".join(f"phone,{v}\n" for v in values)


def run(
    node: StandIn, text: str, *, previous: str | None = None, batch_size: int = 100, max_wait: float = 300
) -> tuple[str, Tally, BatchRun]:
    out = io.StringIO()
    tally = Tally()
    runner = BatchRun(
        call=node,
        writer=Writer(out, "csv"),
        tally=tally,
        clock=node.clock,
        sleep=node.clock.sleep,
        batch_size=batch_size,
        max_wait=max_wait,
    )
    earlier = read_previous(io.StringIO(previous), "csv", name="out.csv.partial") if previous else iter(())
    try:
        runner.run(read_rows(io.StringIO(text, newline=""), "csv"), earlier, name="out.csv.partial")
    except BaseException:
        runner.salvage()
        raise
    return out.getvalue(), tally, runner


def records(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- pacing and retries ------------------------------------------------------------------------------


def test_the_pacer_fits_the_refill_rate_from_one_refusal() -> None:
    pacer = Pacer()
    key = ("TH", "phone")
    assert pacer.wait({key: 100}, 0.0) == 0  # before any refusal: the burst
    pacer.passed(key, 0.0)
    # 1 s after the last call that passed, 100 evaluations were 1 s short: 100 per 2 s.
    pacer.refused(key, 100, sent=1.0, done=1.1, retry_s=1.0)
    assert pacer.wait({key: 100}, 1.1) == pytest.approx(1.0)  # the refusal's own wait
    pacer.passed(key, 2.1)
    assert pacer.pace(key) == pytest.approx(1.05 * 2.0 / 100)
    assert pacer.wait({key: 100, NODE: 100}, 2.2) == pytest.approx(2.1 + 2.1 - 2.2)


def test_rows_refused_by_a_burst_are_asked_again_of_that_peer_only_until_every_row_is_answered() -> None:
    clock = FakeClock()
    start = clock.now
    node = StandIn(clock, {"SG": Bucket(rate=200, burst=400), "TH": Bucket(rate=1000, burst=1000)})
    values = phones(3000)
    node.held = frozenset(values[::500])
    out, tally, runner = run(node, csv_input(values))
    rows = records(out)
    assert [int(r["line"]) for r in rows] == list(range(2, 3002))
    assert {r["peers"] for r in rows} <= {"SG=match;TH=no_match", "SG=no_match;TH=no_match"}
    assert [r["value"] for r in rows if r["verdict"] == "match"] == values[::500]
    # Never asked twice of a peer that had answered: one answer per row and peer.
    assert set(node.answered.values()) == {1} and len(node.answered) == 6000
    assert node.refusals["SG"] > 0 and node.refusals["TH"] == 0
    assert all(peers == ("SG",) for _, peers in node.calls if peers)  # retries ask SG alone
    # The pace was learnt: 3000 evaluations at 200/s after a burst of 400 need 13 s; few refusals.
    assert 13 <= clock.now - start < 15
    assert node.refusals["SG"] <= 4
    assert runner.pacer.pace(("SG", "phone")) == pytest.approx(1 / 200, rel=0.1)
    assert tally.exit_status == 1 and tally.incomplete == 0


def test_the_nodes_own_rate_limit_is_waited_out_and_its_daily_quota_stops_the_run() -> None:
    clock = FakeClock()
    node = StandIn(clock, {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)})
    node.node_bucket = Bucket(rate=100, burst=200)
    start = clock.now
    out, tally, _ = run(node, csv_input(phones(1000)))
    assert len(records(out)) == 1000 and tally.exit_status == 0 and not tally.stopped
    assert 8 <= clock.now - start < 9  # 800 checks beyond the burst at 100/s

    clock = FakeClock(11 * DAY - 600)  # ten minutes before midnight: the daily quota will not wait
    node = StandIn(clock, {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)})
    node.node_bucket = Bucket(rate=1e6, burst=10**6, daily=450)
    out, tally, _ = run(node, csv_input(phones(1000)), max_wait=300)
    assert len(records(out)) == 400  # four batches of 100 passed
    assert tally.exit_status == 3
    assert "daily OPRF quota of MY for check used up" in tally.stopped
    assert "it resets at 1970-01-12T00:00:00Z" in tally.stopped


def test_a_peers_daily_quota_stops_cleanly_naming_it_and_a_resume_next_day_ends_as_one_run() -> None:
    values = phones(1000)
    held = frozenset(values[::97])

    whole_node = StandIn(FakeClock(), {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}, held)
    whole, whole_tally, _ = run(whole_node, csv_input(values))
    assert whole_tally.exit_status == 1

    clock = FakeClock()
    buckets = {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6, daily=650)}
    node = StandIn(clock, buckets, held)
    partial, tally, _ = run(node, csv_input(values))
    assert tally.exit_status == 3
    assert tally.stopped.startswith("TH: daily OPRF quota of MY for phone used up (600 of 650 today")
    assert "it resets at 1970-01-12T00:00:00Z" in tally.stopped
    rows = records(partial)
    assert len(rows) == 700  # 600 answered by both, then a batch TH refused, then the run stopped
    assert {r["peers"].split(";")[1] for r in rows[600:]} == {"TH=rate_limited"}
    assert all(r["verdict"] in ("incomplete", "match") for r in rows[600:])
    assert "daily OPRF quota" in json.loads(rows[650]["details"])["TH"]
    (line,) = tally.peer_lines()
    assert line.startswith("TH: 100 rows rate limited: daily OPRF quota of MY for phone used up")

    clock.now += DAY  # the quota resets at midnight
    resumed, tally, _ = run(node, csv_input(values), previous=partial)
    assert resumed == whole and tally.exit_status == 1
    # SG answered each row once in all; TH was asked again only for the 100 rows it had refused.
    assert set(node.answered.values()) == {1} and len(node.answered) == 2000


def test_an_interrupted_run_keeps_what_was_answered_and_a_resume_asks_only_the_rest() -> None:
    values = phones(2000)
    held = frozenset(values[::333])
    buckets = {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}
    whole, _, _ = run(StandIn(FakeClock(), dict(buckets), held), csv_input(values))

    node = StandIn(FakeClock(), {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}, held, fail_after=7)
    out = io.StringIO()
    runner = BatchRun(
        node, Writer(out, "csv"), Tally(), clock=node.clock, sleep=node.clock.sleep, batch_size=100
    )
    with pytest.raises(PeerUnavailable):
        try:
            runner.run(read_rows(io.StringIO(csv_input(values), newline=""), "csv"))
        except BaseException:
            runner.salvage()
            raise
    partial = out.getvalue()
    assert len(records(partial)) == 700
    torn = partial + "703,phone,+60120000701,,+6012"  # a record cut by a crash is simply asked again
    node.fail_after = None
    resumed, tally, _ = run(node, csv_input(values), previous=torn)
    assert resumed == whole and tally.exit_status == 1
    assert set(node.answered.values()) == {1}


def test_a_resume_refuses_an_output_of_another_input() -> None:
    values = phones(10)
    out, _, _ = run(
        StandIn(FakeClock(), {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}), csv_input(values)
    )
    other = csv_input(phones(10, start=5))
    with pytest.raises(InputError, match="line 2 is about phone '\\+60120000000', the input about phone"):
        run(StandIn(FakeClock(), {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}), other, previous=out)
    with pytest.raises(InputError, match="not a JSON-lines output"):
        list(read_previous(io.StringIO(out), "jsonl", name="out"))


def test_rows_are_read_as_a_stream() -> None:
    """An endless input: the run asks about its first window before reading much further."""
    consumed = 0

    def endless() -> Iterator[str]:
        nonlocal consumed
        yield "kind,value\n"
        for i in itertools.count():
            consumed += 1
            yield f"phone,+6012{i:07d}\n"

    node = StandIn(FakeClock(), {"SG": Bucket(1e6, 10**6), "TH": Bucket(1e6, 10**6)}, fail_after=2)
    runner = BatchRun(
        node, Writer(io.StringIO(), "csv"), Tally(), clock=node.clock, sleep=node.clock.sleep, batch_size=500
    )
    with pytest.raises(PeerUnavailable):
        runner.run(read_rows(endless(), "csv"))
    assert consumed <= 1500


def test_merge_keeps_the_answers_of_the_peers_not_asked() -> None:
    old = Outcome(
        "+60123",
        peers=(PeerOutcome("SG", PeerStatus.MATCH, META), PeerOutcome("TH", PeerStatus.RATE_LIMITED)),
    )
    new = Outcome("+60123", peers=(PeerOutcome("TH", PeerStatus.NO_MATCH),))
    assert merge(old, new, ("TH",)).peers == (
        PeerOutcome("SG", PeerStatus.MATCH, META),
        PeerOutcome("TH", PeerStatus.NO_MATCH),
    )
    assert merge(None, new, ()) == new


SMALL: dict[str, object] = {
    "max_batch": 10,
    "oprf_burst": 10,
    "oprf_rate_per_s": 1.0,
    "oprf_daily_quota": 8,
    "check_rate_per_s": 1.0,
    "check_burst": 10,
    "check_daily_quota": 25,
}
IDS = ["MY", "TH", "SG"]


# --- what the node says ------------------------------------------------------------------------------


def test_the_node_names_each_limit_and_passes_a_peers_retry_after_to_the_investigator(tmp_path: Path) -> None:
    """Real nodes: MY evaluates 8 phones a day for TH; TH's investigators may check 10 at once, 1 a
    second, 25 a day."""
    net = start_net(tmp_path / "net", IDS, now=T0, limits=SMALL)
    try:
        net.node("MY").ingest([DATA / "indicators.csv"], now=T0)
        assert {r.peer_id: r.ok for r in net.sync("TH")}["MY"]
        stub = net.investigator("TH")

        def request(values: Sequence[str], peers: Sequence[str] = ()) -> investigator_pb2.CheckRequest:
            queries = [investigator_pb2.IndicatorQuery(kind="phone", value=v) for v in values]
            return investigator_pb2.CheckRequest(queries=queries, peers=list(peers))

        first = stub.Check(request(["+60123456789", *phones(4)], ["MY"]), timeout=10)
        statuses = [[(p.peer_id, p.status) for p in r.peers] for r in first.results]
        assert (
            statuses
            == [[("MY", investigator_pb2.PEER_STATUS_MATCH)]]
            + [[("MY", investigator_pb2.PEER_STATUS_NO_MATCH)]] * 4
        )  # only the peer asked for
        net.clock.now += 20
        second = stub.Check(request(phones(5, start=10), ["MY"]), timeout=10)
        outcomes = results_from_proto(second, 5)
        midnight = (T0 // DAY + 1) * DAY
        for outcome in outcomes:
            (peer,) = outcome.peers
            assert peer.status is PeerStatus.RATE_LIMITED
            assert peer.retry_after_ms == pytest.approx((midnight - net.clock.now) * 1000, abs=1000)
            assert peer.detail.startswith(
                "MY: daily OPRF quota of TH for phone used up (5 of 8 today, 5 asked)"
            )
            assert short_detail(peer.status, peer.detail, "MY") == "daily quota, resets 00:00 UTC"
        error = rpc_error(lambda: stub.Check(request(["+60123456789"], ["XX"]), timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "peers: 'XX' is not a peer of this node"

        # The investigator's own limits: 10 + 10 taken so far would leave 5 of the day.
        net.clock.now += 20
        stub.Check(request(phones(10, start=20)), timeout=10)
        error = rpc_error(lambda: stub.Check(request(phones(1, start=30)), timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_ms(error) == 1000
        assert re.fullmatch(
            r"check rate limit of TH/\S+ reached \(1/s, burst 10\); retry in 1\.0 s", error.details() or ""
        )
        net.clock.now += 20
        error = rpc_error(lambda: stub.Check(request(phones(10, start=40)), timeout=10))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait = midnight - net.clock.now
        assert retry_ms(error) == math.ceil(wait * 1000)
        assert re.fullmatch(
            r"daily check quota of TH/\S+ used up \(20 of 25 today, 10 asked\); it resets at 00:00 UTC "
            rf"\(2024-06-02T00:00:00Z, in {wait:.0f} s\)",
            error.details() or "",
        )
        refused = [
            e for e in audit_actions(net, "TH", "investigator.check") if e.get("result") == "rate_limited"
        ]
        assert [e["limit"] for e in refused] == ["rate", "daily"]
    finally:
        net.close()


# --- three real nodes --------------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
ROWS = 30_000
#: The peers' OPRF limits: 600/s after a burst of 1,000 here, so the test takes under a minute; the
#: issue's literal burst of 2,000 at 100/s (~5 minutes) with PETANDA_BULK_LIMITS=100:2000.
_RATE, _BURST = (float(x) for x in os.environ.get("PETANDA_BULK_LIMITS", "600:1000").split(":"))
LIMITS: dict[str, object] = {
    "oprf_rate_per_s": _RATE,
    "oprf_burst": int(_BURST),
    "oprf_daily_quota": 10_000_000,
    "oprf_holder_daily_quota": 10_000_000,
    "check_rate_per_s": 1_000_000.0,
    "check_burst": 10_000_000,
    "check_daily_quota": 100_000_000,
}


class WallClock(Clock):
    """The federation's settable clock, moving with the wall clock from where it stood (the peers' token
    buckets refill). No ticking thread: one waking every few ms slows the nodes' calls tenfold (GIL)."""

    t0 = 0.0

    def __call__(self) -> float:
        return self.now + (time.monotonic() - self.t0)


def _ingest(net: Net, node_id: str, values: Sequence[str], tmp: Path) -> None:
    path = tmp / f"{node_id}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "value", "category", "first_seen", "last_seen", "confidence", "tlp", "reports"])
        for v in values:
            w.writerow(["phone", v, "investment", "2026-01-01", "2026-11-01", "70", "AMBER", "2"])
    assert net.node(node_id).ingest([path], now=NOW).stored == len(values)


def _argv(net: Net) -> list[str]:
    member = net.federation.members["MY"]
    cert, key = member.investigator
    return ["--node", member.address, "--ca", str(net.federation.ca), "--cert", str(cert), "--key", str(key)]


def _petanda(net: Net, *argv: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "client.tools.cli", "check", *argv, *_argv(net)]
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _drain(net: Net, first: int) -> None:
    """Another check of MY's spends its whole burst at both peers (as a colleague's would)."""
    response = net.check("MY", [("phone", f"+6011{first + i:08d}") for i in range(1000)], deadline_ms=30_000)
    assert all(p.status == 2 for r in response.results for p in r.peers)  # NO_MATCH: each evaluated


def _refusals(net: Net, peer: str) -> tuple[int, int]:
    """MY's evaluations at ``peer``: calls refused by a limit, calls that passed."""
    entries = [e for e in audit_actions(net, peer, "peer.evaluate_oprf") if e.get("actor") == "MY"]
    refused = sum(1 for e in entries if e.get("result") == "rate_limited")
    return refused, len(entries) - refused


def test_thirty_thousand_rows_at_the_peers_limit_are_all_answered_through_a_kill_and_a_resume(
    tmp_path: Path,
) -> None:
    """30,000 phones (27 held by TH or SG) through ``petanda check --file`` in a subprocess against three
    real nodes; the run is killed with SIGKILL after about 8,000 rows and resumed with ``--resume``.

    The peers allow MY 600 evaluations a second after a burst of 1,000. The pilot's 100/s would make
    30,000 rows take five minutes; the issue's 2,000/s is more than the asker computes here (about 750
    rows a second against two peers on two busy cores), so the limit would never bite. At 600/s the run
    is bound by the limit: the client runs into it, waits the time the refusal names, asks the refused
    peers again for the refused rows, and paces the calls that follow (about 55 s in all). Before each
    of the two runs another check of MY's spends the burst, so each starts refused whatever the speed
    of the machine. Daily quotas are far away (this is about the burst and the rate).

    The final output is compared byte for byte with what one uninterrupted run writes: every row, in
    order, answered by both peers; a held row's record as a run of the held rows alone writes it, every
    other row's the no-match record of the format.
    """
    prefixes = "23469"  # valid Malaysian mobile prefixes for the numbers 2000000-2029999
    values = [f"+60 1{prefixes[i % 5]}-{2_000_000 + i:07d}" for i in range(ROWS)]
    canonical = [f"+601{prefixes[i % 5]}{2_000_000 + i:07d}" for i in range(ROWS)]
    th_holds, sg_holds = set(range(17, ROWS, 1999)), set(range(1000, ROWS, 2999)) | {17}
    source, held_file = tmp_path / "leads.csv", tmp_path / "held.csv"
    for path, rows in ((source, range(ROWS)), (held_file, sorted(th_holds | sg_holds))):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "kind", "value"])
            w.writerows([f"C{i}", "phone", values[i]] for i in rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETANDA_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    out, reference = tmp_path / "results.csv", tmp_path / "held-results.csv"
    partial = Path(f"{out}.partial")

    net = start_net(tmp_path / "net", IDS, now=NOW, limits=LIMITS)
    try:
        _ingest(net, "TH", [canonical[i] for i in sorted(th_holds)], tmp_path)
        _ingest(net, "SG", [canonical[i] for i in sorted(sg_holds)], tmp_path)
        _ingest(net, "MY", ["+60321234567"], tmp_path)
        net.sync_all()
        net.clock.t0 = time.monotonic()  # type: ignore[attr-defined]
        net.clock.__class__ = WallClock

        started = time.monotonic()
        _drain(net, 0)
        victim = _petanda(net, "--file", str(source), "--out", str(out), "--quiet", env=env)
        while victim.poll() is None and (not partial.exists() or partial.stat().st_size < 600_000):
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=60)
        assert victim.returncode == -signal.SIGKILL
        kept = partial.read_text().count("\n") - 1
        assert 5_000 < kept < ROWS and not out.exists()

        _drain(net, 1000)
        again = _petanda(net, "--file", str(source), "--out", str(out), "--resume", env=env)
        _, err = again.communicate(timeout=600)
        assert again.returncode == 1, err
        seconds = time.monotonic() - started

        assert main(["check", "--file", str(held_file), "--out", str(reference), "--quiet", *_argv(net)]) == 1
        refusals = {peer: _refusals(net, peer) for peer in ("TH", "SG")}
    finally:
        net.close()

    assert not partial.exists()
    with reference.open(newline="") as f:
        held = {row[2]: row for row in csv.reader(f)}
    expected = io.StringIO()
    w = csv.writer(expected, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i, (value, form) in enumerate(zip(values, canonical, strict=True)):
        if value in held:
            w.writerow([str(i + 2), *held[value][1:]])
        else:
            w.writerow(
                [str(i + 2), "phone", value, "", form, "no_match", "", "SG=no_match;TH=no_match", "", "", ""]
            )
    assert out.read_text() == expected.getvalue()
    with out.open(newline="") as f:
        matched = {int(r["line"]) - 2: r["matched_peers"] for r in csv.DictReader(f) if r["matched_peers"]}
    both = {
        i: ";".join(p for p, h in (("SG", sg_holds), ("TH", th_holds)) if i in h) for i in th_holds | sg_holds
    }
    assert matched == both and both[17] == "SG;TH"
    summary = f"{ROWS} rows: {len(both)} match, {ROWS - len(both)} no match, 0 incomplete, 0 errors"
    assert err.strip().splitlines()[-1] == summary
    # Paced: each peer refused MY now and then (each run started refused), never every other call.
    for peer, (refused, passed) in refusals.items():
        assert 2 <= refused <= passed // 2, (peer, refusals)
    print(f"\n{ROWS} rows in {seconds:.1f} s ({kept} kept at the kill); MY's calls (refused, passed):")
    print(refusals)
