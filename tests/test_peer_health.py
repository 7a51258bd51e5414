"""Peer health in ``petanda-node status``: states, thresholds and the sync outcomes they come from.

The states are tested three ways: :func:`node.health.assess` on its own (every threshold and the
precedence), a real federation in this process (``tests/fednet.py``) whose clock the test moves, and
real ``petanda-node serve`` processes — one frozen with SIGSTOP, one killed and restarted — watched
through ``petanda-node status --json`` as an operator would. The last tests check what the node logs
(``-v``) and that gRPC's own C-core lines stay off its stderr.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node import health
from node.config import load_config
from node.health import PeerHealth, assess
from node.node import Node
from node.testbed import Federation, build_federation, free_ports, write_config
from tests.fednet import Net
from tests.threestates import NOW, start_three

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
for _name in ("GRPC_VERBOSITY", "GRPC_TRACE"):
    ENV.pop(_name, None)
#: A line of gRPC's C core (absl format): severity letter, MMDD, time, thread, file:line].
CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./-]+:\d+\]", re.MULTILINE)


# --- the rules on their own -----------------------------------------------------------------------------


def _state(h: PeerHealth, *, now: float = 1000.0, expires: float | None = 10_000.0, **kw: Any) -> str:
    return assess(h, now=now, interval_s=60, timeout_s=10, manifest_expires_at=expires, **kw)[0]


def test_states_and_their_thresholds() -> None:
    synced = PeerHealth(last_attempt_at=990, last_result="ok", last_success_at=991, latency_s=0.05)
    assert _state(synced) == "ok"
    assert _state(PeerHealth()) == "ok"  # a manifest held, but no sync recorded (before an upgrade)
    assert _state(PeerHealth(), expires=None) == "stale"  # never synced
    assert _state(synced, expires=999) == "stale"  # its manifest expired
    # slow: a sync that downloaded nothing and took over half the deadline; a long download is not
    assert _state(PeerHealth(last_attempt_at=990, last_result="ok", last_success_at=997, latency_s=6)) == (
        "degraded"
    )
    big = PeerHealth(last_attempt_at=990, last_result="ok", last_success_at=997, latency_s=6, bytes=10**8)
    assert _state(big) == "ok"

    def failed(n: int, *, last_success: float | None = 900, result: str = "error") -> PeerHealth:
        return PeerHealth(
            last_attempt_at=995,
            last_result=result,
            last_success_at=last_success,
            last_error="UNAVAILABLE: x",
            last_error_at=995,
            consecutive_failures=n,
            failing_since=950,
        )

    assert _state(failed(1)) == "degraded"  # last success 100 s ago: within two intervals (120 s)
    assert _state(failed(2)) == "degraded"
    assert _state(failed(3)) == "unreachable"  # FAILURES_UNREACHABLE in a row
    assert _state(failed(1), now=1021) == "unreachable"  # no success for 121 s > 2 x 60 s
    assert _state(failed(1, last_success=None), now=1060) == "degraded"  # failing for 110 s only
    assert _state(failed(1, last_success=None), now=1071, expires=None) == "unreachable"
    # a refusal means the peer answered: degraded (or stale once its manifest expires), never unreachable
    assert _state(failed(5, result="refused")) == "degraded"
    assert _state(failed(5, result="refused"), expires=999) == "stale"
    # a frozen peer: the sync started after the last success hangs; nothing has failed yet
    frozen = PeerHealth(last_attempt_at=1000, last_result="ok", last_success_at=950, latency_s=0.05)
    assert _state(frozen, now=1060) == "ok"
    assert assess(frozen, now=1071, interval_s=60, timeout_s=10, manifest_expires_at=9e9) == (
        "unreachable",
        "no successful sync for 121 s: a sync is still waiting",
    )
    # a node that stopped syncing after a success says nothing against its peers
    assert _state(synced, now=5000) == "ok"
    # precedence: fork > unreachable > stale > degraded > ok
    fork = health.ForkRecord(count=1, last_at=990, reason="two roots", subject="log")
    assert _state(failed(3), expires=None, fork=fork) == "fork"
    assert _state(failed(3), expires=None) == "unreachable"
    assert _state(failed(1), expires=None) == "stale"
    assert health.STATES == ("fork", "unreachable", "stale", "degraded", "ok")


# --- a federation in this process, its clock moved by the test --------------------------------------------


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = start_three(tmp_path)
    try:
        yield net
    finally:
        net.close()


def _peers(node: Node, now: float) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in node.status(now=now)["peers"]}


def test_a_stopped_peer_degrades_then_is_unreachable_and_a_fork_shows(net: Net, tmp_path: Path) -> None:
    my = net.node("MY")
    peers = _peers(my, NOW)
    for peer in ("SG", "TH"):
        p = peers[peer]
        assert (p["state"], p["manifest"], p["reason"]) == ("ok", "ok", "")
        assert p["last_success_at"] == int(NOW) and p["consecutive_failures"] == 0
        assert p["last_error"] is None and p["latency_s"] is not None and p["version"] == 1
    status = my.status(now=NOW)
    assert status["sync"] == {
        "interval_s": 60,
        "timeout_s": 10.0,
        "unreachable_after_failures": 3,
        "unreachable_after_s": 120,
        "slow_s": 5.0,
    }

    net.stop("SG")
    interval = my.config.sync.interval_s
    net.clock.now = NOW + interval
    results = {r.peer_id: r for r in net.sync("MY")}
    assert results["SG"].outcome == "error" and results["TH"].outcome == "not_modified"
    sg = _peers(my, net.clock.now)["SG"]
    assert sg["state"] == "degraded" and sg["consecutive_failures"] == 1
    assert sg["last_error_at"] == int(NOW + interval) and "UNAVAILABLE" in sg["last_error"]
    assert sg["last_success_at"] == int(NOW) and "UNAVAILABLE" in sg["reason"]
    # Two intervals and a second without a success: unreachable, though only one sync failed.
    net.clock.now = NOW + 2 * interval + 1
    assert _peers(my, net.clock.now)["SG"]["state"] == "unreachable"
    assert _peers(my, net.clock.now)["TH"]["state"] == "ok"  # synced at the first interval
    net.sync("MY")
    net.sync("MY")
    sg = _peers(my, net.clock.now)["SG"]
    assert (sg["state"], sg["consecutive_failures"]) == ("unreachable", 3)
    assert sg["reason"].startswith("3 syncs failed in a row: ")

    # A separate process (as `petanda-node status`) reads the same: it is all in the store.
    other = Node.open(load_config(net.federation.members["MY"].config), clock=net.clock)
    try:
        assert _peers(other, net.clock.now)["SG"] == sg
    finally:
        other.close()

    # A fork on record (of either kind) outranks everything, and stays.
    my.record_fork("TH", "log shrank from 9 to 3", now=net.clock.now)
    th = _peers(my, net.clock.now)["TH"]
    assert th["state"] == "fork" and "log shrank" in th["reason"]
    assert th["fork"] == {
        "count": 1,
        "last_at": int(net.clock.now),
        "reason": "log shrank from 9 to 3",
        "subject": "log",
    }
    my.record_fork("SG", "two manifests of version 1", now=net.clock.now, subject="manifest")
    peers = _peers(my, net.clock.now)
    assert peers["SG"]["state"] == "fork" and peers["SG"]["fork"]["subject"] == "manifest"
    assert peers["TH"]["fork"]["count"] == 1  # the log is scanned from where the last status stopped


def test_status_counts_what_is_withheld(net: Net, tmp_path: Path) -> None:
    csv = tmp_path / "tlp.csv"
    csv.write_text(
        "kind,value,region,category,tlp\n"
        "phone,+60123456701,MY,investment,RED\n"
        "phone,+60123456702,MY,investment,RED\n"
        "phone,+60123456703,MY,investment,AMBER+STRICT\n"
        "domain,strict.example,MY,phishing,AMBER+STRICT\n"
        "domain,clear.example,MY,phishing,CLEAR\n"
    )
    my = net.node("MY")
    before = my.status(now=NOW)["indicators"]
    assert my.ingest([csv], now=NOW).rejections == []
    status = my.status(now=NOW)
    assert status["withheld"] == {
        "RED": 2,
        "AMBER+STRICT": 2,
        "kinds": {"domain": {"RED": 0, "AMBER+STRICT": 1}, "phone": {"RED": 2, "AMBER+STRICT": 1}},
    }
    assert status["indicators"]["phone"]["active"] == before.get("phone", {"active": 0})["active"] + 3
    assert my.retract("phone", "+60123456701", now=NOW)
    assert my.status(now=NOW)["withheld"]["RED"] == 1


# --- real node processes ---------------------------------------------------------------------------------


class Output:
    """Everything a child writes on one stream, read by a thread (the pipe never fills)."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.text: list[str] = []

        def pump() -> None:
            for line in stream:
                self.text.append(line)
                self.lines.put(line.rstrip("\n"))

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def all(self) -> str:
        return "".join(self.text)


class Serving:
    """One ``petanda-node serve`` process and its output."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *args, "serve", "--config", str(config)],
            cwd=config.parent,
            env=env or ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out = Output(self.process.stdout)
        self.err = Output(self.process.stderr)
        line = self.out.lines.get(timeout=30)
        assert "serving on port" in line, (line, self.err.all())

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.err.thread.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=cwd,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _federation(root: Path, ids: list[str], *, interval_s: int, timeout_s: float) -> Federation:
    """A federation whose members listen on free ports and have published once (nothing held)."""
    ports = dict(zip(ids, free_ports(len(ids)), strict=True))
    federation = build_federation(
        root, ids, ports=ports, sync={"interval_s": interval_s, "timeout_s": timeout_s}
    )
    for member in federation.members.values():
        node = Node.open(load_config(member.config))
        try:
            node.publish(now=time.time())
        finally:
            node.close()
    return federation


def _status(config: Path) -> dict[str, Any]:
    done = _cli("status", "--json", "--config", config, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def _wait_for(config: Path, peer: str, state: str, *, within: float) -> dict[str, Any]:
    """Poll ``petanda-node status --json`` until ``peer`` is in ``state``; that status."""
    deadline = time.monotonic() + within
    seen: list[str] = []
    while True:
        status = _status(config)
        entry = _peer(status, peer)
        if entry["state"] == state:
            return status
        seen.append(f"{entry['state']} ({entry['reason']})")
        assert time.monotonic() < deadline, f"{peer} never {state}; seen: {seen}"
        time.sleep(0.2)


def _two_intervals_after(since: float, config: Path, interval: int) -> dict[str, Any]:
    """The status, run once two sync intervals after ``since`` (when a peer stopped), and half a second
    more for a sync that was just ending as it stopped."""
    time.sleep(max(0.0, since + 2 * interval + 0.5 - time.monotonic()))
    return _status(config)


def _peer(status: dict[str, Any], peer: str) -> dict[str, Any]:
    return next(p for p in status["peers"] if p["id"] == peer)


@pytest.mark.slow
def test_frozen_and_killed_peers_are_unreachable_within_two_intervals_and_recover(tmp_path: Path) -> None:
    interval = 1
    federation = _federation(tmp_path, ["MY", "SG", "TH"], interval_s=interval, timeout_s=3.0)
    configs = {m.id: m.config for m in federation.members.values()}
    my_config = configs["MY"]
    servers: dict[str, Serving] = {}
    try:
        servers["SG"] = Serving(configs["SG"])
        servers["TH"] = Serving(configs["TH"])
        servers["MY"] = Serving(my_config, "-v")
        _wait_for(my_config, "SG", "ok", within=20)
        _wait_for(my_config, "TH", "ok", within=20)

        # SIGSTOP: the peer accepts connections (the kernel does) but answers nothing; no sync of it
        # fails before its 3 s deadline, yet it is unreachable after two intervals.
        servers["SG"].process.send_signal(signal.SIGSTOP)
        status = _two_intervals_after(time.monotonic(), my_config, interval)
        sg = _peer(status, "SG")
        assert sg["state"] == "unreachable", sg
        assert _peer(status, "TH")["state"] == "ok"  # its sync does not wait for SG's
        servers["SG"].process.send_signal(signal.SIGCONT)
        status = _wait_for(my_config, "SG", "ok", within=20)
        assert _peer(status, "SG")["consecutive_failures"] == 0

        # SIGKILL: connections are refused; then the same node starts again on the same port.
        servers["TH"].kill()
        status = _two_intervals_after(time.monotonic(), my_config, interval)
        th = _peer(status, "TH")
        assert th["state"] == "unreachable", th
        assert th["consecutive_failures"] >= 1 and "UNAVAILABLE" in th["last_error"]
        assert th["last_error_at"] >= th["last_success_at"]
        assert _peer(status, "SG")["state"] == "ok"
        servers["TH"] = Serving(configs["TH"])
        status = _wait_for(my_config, "TH", "ok", within=20)
        th = _peer(status, "TH")
        assert th["consecutive_failures"] == 0 and th["last_error"]  # the last error stays on show

        table = _cli("status", "--config", my_config, cwd=my_config.parent)
        assert table.returncode == 0, table.stderr
        assert "unreachable after 3 failures or 2 s without a success" in table.stdout
        assert "withheld from publication (active, by TLP): RED 0, AMBER+STRICT 0" in table.stdout

        assert servers["MY"].stop() == 0
        log = servers["MY"].err.all()
        assert re.search(r"INFO node\.sync: sync SG: (ok|not modified), version 1, \d+ bytes, [\d.]+ s", log)
        assert re.search(
            r"WARNING node\.sync: sync TH: failed after [\d.]+ s \(\d+ in a row\): TH: UNAVAILABLE", log
        )
        assert re.search(r"INFO node\.audit: signed tree head: size \d+, root [0-9a-f]{64}", log)  # at drain
        assert not CORE_LINE.search(log), log
    finally:
        for server in servers.values():
            server.kill()


def test_verbose_logs_publications_and_tree_heads(tmp_path: Path) -> None:
    federation = build_federation(tmp_path, ["MY"])
    config = federation.members["MY"].config
    done = _cli("-v", "publish", "--config", config, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"INFO node\.node: published version 1 \(epoch 1\): no filters; withheld RED 0, AMBER\+STRICT 0; "
        r"manifest [0-9a-f]{64}",
        done.stderr,
    ), done.stderr
    assert re.search(r"INFO node\.audit: signed tree head: size \d+", done.stderr)
    quiet = _cli("publish", "--config", config, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""  # INFO only with -v


def _refuse_a_caller_without_certificate(port: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"x")
                tls.recv(10)
        except (ssl.SSLError, OSError):
            pass


@pytest.mark.slow
def test_refused_tls_prints_no_grpc_core_line(tmp_path: Path) -> None:
    """MY dials SG at TH's address (a misconfigured peer): TH refuses the name MY asks for, MY refuses
    the certificate TH shows; and a caller without a certificate knocks at TH. gRPC's C core prints an
    ``E…`` line of ssl_transport_security.cc for the first when its verbosity is ERROR (the control);
    by default neither node's stderr has any C-core line, and MY's own log names the cause."""
    federation = _federation(tmp_path, ["MY", "SG", "TH"], interval_s=1, timeout_s=2.0)
    members = federation.members
    write_config(
        members["MY"],
        members.values(),
        sync={"interval_s": 1, "timeout_s": 2.0},
        addresses={"SG": members["TH"].address},  # TH answers for SG: its certificate names th.peer.petanda
    )
    my_config, th_config = members["MY"].config, members["TH"].config

    control = Serving(th_config, env={**ENV, "GRPC_VERBOSITY": "ERROR"})
    try:
        assert _cli("sync", "--config", my_config, cwd=tmp_path).returncode == 1
    finally:
        assert control.stop() == 0
    # asked for, the C core's line reaches TH's log through Python logging, in the node's own format
    assert re.search(
        r"ERROR grpc\.core: No match found for server name: sg\.peer\.petanda \(.*ssl_transport_security\.cc",
        control.err.all(),
    ), control.err.all()
    assert not CORE_LINE.search(control.err.all()), control.err.all()

    th = Serving(th_config)
    try:
        once = _cli("sync", "--config", my_config, cwd=tmp_path)
        _refuse_a_caller_without_certificate(members["TH"].port)
    finally:
        assert th.stop() == 0
    assert once.returncode == 1 and not CORE_LINE.search(once.stderr), once.stderr
    assert re.search(r"WARNING node\.sync: sync SG: failed .*Hostname Verification Check failed", once.stderr)
    log = th.err.all()
    assert "ssl_transport_security" not in log and not CORE_LINE.search(log), log
