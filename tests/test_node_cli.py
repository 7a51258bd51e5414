"""``petanda-node`` as an operator runs it: one subprocess per command, in a scratch directory.

The module builds one node from nothing (``ca init``, ``ca issue``, ``init``); each test works on its
own copy of that directory, so tests do not depend on one another. The commands here are the ones
``docs/operators.md`` shows.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.protocol.canonical import normalize
from client.protocol.kinds import TIER_OPRF
from client.transport.tls import secure_channel
from node.config import load_config
from node.ingest import ParsedIndicator, Rejection, parse_file
from node.store import open_store
from node.testbed import free_ports

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SAMPLES = [DATA / n for n in ("indicators.csv", "indicators.jsonl", "stix_bundle.json", "misp_event.json")]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
BATCH = 5000


def petanda_node(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``petanda-node ARGS`` in ``cwd`` and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Lines:
    """Lines of a child's stdout as they come, read by a thread (so a test can wait with a timeout)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 30) -> str | None:
        """The next line, or None at end of file; raises queue.Empty after ``timeout`` seconds."""
        return self._queue.get(timeout=timeout)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation CA, MY's certificates, people-CA and people, and MY's node directory, made with the
    CLI as docs/operators.md shows ("From nothing to a serving node")."""
    root = tmp_path_factory.mktemp("operator")
    steps = [
        ("ca", "init", "--dir", "ca"),
        ("ca", "issue", "--ca", "ca", "--role", "peer", "--id", "MY", "--out", "my/tls",
         "--hostname", "localhost", "--ip", "127.0.0.1"),
        ("ca", "people-init", "--state", "MY", "--dir", "people-ca"),
        ("ca", "sign-people-ca", "--ca", "ca", "--csr", "people-ca/people-ca.csr", "--out", "people-ca"),
        ("ca", "issue", "--ca", "people-ca", "--role", "investigator", "--id", "MY/alice", "--out", "people"),
        ("ca", "issue", "--ca", "people-ca", "--role", "auditor", "--id", "MY/bob", "--out", "people"),
        ("init", "--id", "MY", "--dir", "my", "--listen", "127.0.0.1:7443"),
    ]  # fmt: skip
    for step in steps:
        done = petanda_node(*step, cwd=root)
        assert done.returncode == 0, (step, done.stderr)
        assert not done.stderr
    config = root / "my" / "node.toml"
    text = config.read_text()
    assert 'people_ca = ""' in text
    config.write_text(text.replace('people_ca = ""', 'people_ca = "../people-ca/people-ca.crt"'))
    return root


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template (modes preserved), so each test starts from a fresh node."""
    copy = tmp_path / "site"
    shutil.copytree(template, copy)
    return copy


def _status(site: Path) -> dict[str, object]:
    done = petanda_node("status", "--json", "--config", "my/node.toml", cwd=site)
    assert done.returncode == 0, done.stderr
    status: dict[str, object] = json.loads(done.stdout)
    return status


def _set_listen(site: Path, port: int) -> None:
    config = site / "my" / "node.toml"
    text = config.read_text()
    text = text.replace('listen = "127.0.0.1:7443"', f'listen = "127.0.0.1:{port}"')
    text = text.replace("shutdown_grace_s = 10.0", "shutdown_grace_s = 2.0")
    config.write_text(text)


def _today() -> datetime:
    return datetime.now(UTC)


# --- setting up a node ----------------------------------------------------------------------------------


def test_setup_writes_private_keys_and_a_config_that_loads(template: Path, site: Path) -> None:
    private = [
        "ca/ca.key",
        "my/tls/MY.key",
        "people/MY-alice.investigator.key",
        "people/MY-bob.auditor.key",
        "people-ca/people-ca.key",
        "my/signing.key",
        "my/kek.key",
        "my/hmac/federation.key",
    ]
    for name in private:
        assert stat.S_IMODE((template / name).stat().st_mode) == 0o600, name
    for name in ("ca/ca.crt", "my/tls/MY.crt", "my/tls/ca.crt", "people/MY-alice.investigator.crt"):
        assert (template / name).is_file(), name

    config = load_config(template / "my" / "node.toml")
    assert config.node.id == "MY" and config.node.listen == "127.0.0.1:7443"
    assert config.tls.key == template / "my" / "tls" / "MY.key"
    assert config.store.sqlite_path == template / "my" / "petanda.db"
    assert config.node.reflection is False
    assert config.tls.people_ca is not None
    assert config.tls.people_ca.resolve() == template / "people-ca" / "people-ca.crt"

    # A second init refuses, names the file, and changes nothing.
    before = {p: p.read_bytes() for p in (site / "my").rglob("*") if p.is_file()}
    again = petanda_node("init", "--id", "MY", "--dir", "my", cwd=site)
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1
    assert "my/node.toml" in again.stderr and "not overwritten" in again.stderr
    assert {p: p.read_bytes() for p in (site / "my").rglob("*") if p.is_file()} == before

    # A hand-written node.toml without keys: init refuses before writing any key.
    (site / "other").mkdir()
    (site / "other" / "node.toml").write_text("# mine\n")
    refused = petanda_node("init", "--id", "SG", "--dir", "other", cwd=site)
    assert refused.returncode == 2 and "other/node.toml" in refused.stderr
    assert sorted(p.name for p in (site / "other").iterdir()) == ["node.toml"]

    # Issuing over an existing certificate is refused too.
    reissue = petanda_node(
        "ca", "issue", "--ca", "ca", "--role", "peer", "--id", "MY", "--out", "my/tls", cwd=site
    )
    assert reissue.returncode == 2 and "MY.crt" in reissue.stderr


def test_a_config_error_names_the_file_and_the_key(site: Path) -> None:
    config = site / "my" / "node.toml"
    config.write_text(config.read_text().replace("max_batch = 1000", 'max_batch = "x"'))
    done = petanda_node("status", "--config", "my/node.toml", cwd=site)
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()
    assert "my/node.toml" in line and "limits.max_batch" in line

    config.write_text(config.read_text().replace('max_batch = "x"', "max_batch = 1000\nmax_bach = 3"))
    done = petanda_node("ingest", "--config", "my/node.toml", SAMPLES[0], cwd=site)
    assert done.returncode == 2 and "limits.max_bach" in done.stderr and "unknown key" in done.stderr


# --- ingest, status, publish, retract, rotate ----------------------------------------------------------


def test_ingest_reports_stored_updated_rejected_with_locations(site: Path) -> None:
    today = _today().date()
    parsed = [r for path in SAMPLES for r in parse_file(path, default_region="MY", today=today)]
    good = [r for r in parsed if isinstance(r, ParsedIndicator)]
    rejected = [r for r in parsed if isinstance(r, Rejection)]
    distinct = {(p.kind, p.canonical) for p in good}
    assert rejected and len(distinct) < len(good)  # the samples hold bad rows and repeated indicators

    first = petanda_node("ingest", "--config", "my/node.toml", "--max-errors", "1000", *SAMPLES, cwd=site)
    assert first.returncode == 1, first.stderr
    summary = f"stored {len(distinct)}, updated {len(good) - len(distinct)}, rejected {len(rejected)}"
    assert first.stdout.strip().splitlines()[-1] == summary
    errors = first.stderr.strip().splitlines()
    assert errors == [f"{r.location}: {r.reason}" for r in rejected]
    assert any(re.match(r"indicators\.csv:\d+: ", e) for e in errors)
    assert any(re.match(r"indicators\.jsonl:\d+: ", e) for e in errors)
    assert any(e.startswith("stix_bundle.json#indicator--") for e in errors)
    assert any(e.startswith("misp_event.json#") for e in errors)

    status = _status(site)
    counts = status["indicators"]
    assert isinstance(counts, dict)
    assert sum(c["active"] + c["expired"] for c in counts.values()) == len(distinct)
    assert status["epoch"] == 1 and status["manifest_version"] == 2 and status["integrity"] == []

    second = petanda_node("ingest", "--config", "my/node.toml", *SAMPLES, cwd=site)
    assert second.returncode == 1
    assert (
        second.stdout.strip().splitlines()[-1] == f"stored 0, updated {len(good)}, rejected {len(rejected)}"
    )
    assert _status(site)["manifest_version"] == 3

    clean = petanda_node("ingest", "--config", "my/node.toml", "--no-publish", SAMPLES[0], cwd=site)
    assert clean.returncode == 1  # the CSV has bad rows too; --no-publish leaves the manifest alone
    assert _status(site)["manifest_version"] == 3


def test_publish_retract_rotate(site: Path) -> None:
    ingest = petanda_node("ingest", "--config", "my/node.toml", DATA / "indicators.csv", cwd=site)
    assert ingest.returncode == 1
    assert _status(site)["manifest_version"] == 2

    published = petanda_node("publish", "--config", "my/node.toml", cwd=site)
    assert published.returncode == 0 and published.stdout.startswith("published version 3 (epoch 1)")
    assert _status(site)["manifest_version"] == 3

    config = load_config(site / "my" / "node.toml")
    canonical = normalize("domain", "Shopee-Refund.EXAMPLE.", "MY")

    def publishable(epoch: int) -> tuple[set[tuple[str, bytes]], bytes | None]:
        """The (kind, digest) pairs publishable under ``epoch``, and the domain's digest (if any)."""
        with open_store(config.store.url) as store:
            now = int(_today().timestamp())
            record = store.get_indicator("domain", canonical)
            assert record is not None
            rows = {(r.kind, r.digest) for r in store.iter_publishable(epoch, now=now)}
            return rows, record.digests.get((epoch, TIER_OPRF))

    rows, digest = publishable(1)
    assert digest is not None and ("domain", digest) in rows
    retract = petanda_node(
        "retract", "--config", "my/node.toml", "domain", "Shopee-Refund.EXAMPLE.", cwd=site
    )
    assert retract.returncode == 0 and "retracted" in retract.stdout
    after, _ = publishable(1)
    assert after == rows - {("domain", digest)}
    status = _status(site)
    assert status["manifest_version"] == 4
    counts = status["indicators"]
    assert isinstance(counts, dict) and counts["domain"]["retracted"] == 1
    again = petanda_node("retract", "--config", "my/node.toml", "domain", "shopee-refund.example", cwd=site)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert _status(site)["manifest_version"] == 4
    bad = petanda_node("retract", "--config", "my/node.toml", "phone", "12", cwd=site)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1

    rotate = petanda_node("rotate", "--config", "my/node.toml", cwd=site)
    assert rotate.returncode == 0 and "epoch 2" in rotate.stdout
    status = _status(site)
    assert status["epoch"] == 2 and status["manifest_version"] == 5
    assert not (site / "my" / "oprf").exists()  # the new key is in the store, wrapped under my/kek.key
    with open_store(load_config(site / "my" / "node.toml").store.url) as store:
        assert store.wrapped_key_epochs("oprf") == [1, 2]
    # Every live indicator was digested again under the new key; the retracted one was not.
    live, new_digest = publishable(2)
    assert len(live) == len(after) and not {d for _, d in live} & {d for _, d in after}
    assert new_digest is None


# --- crash safety ------------------------------------------------------------------------------------------


def _big_csv(site: Path, rows: int) -> Path:
    big = site / "big.csv"
    with big.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "value", "region", "category", "tlp"])
        for i in range(rows):
            writer.writerow(["phone", f"+6591{i:06d}", "SG", "investment", "GREEN"])
    assert normalize("phone", f"+6591{rows - 1:06d}", "SG") == f"+6591{rows - 1:06d}"
    return big


def _with_ingest_workers(site: Path, workers: int) -> None:
    config = site / "my" / "node.toml"
    config.write_text(config.read_text().replace("workers = 0", f"workers = {workers}"))
    assert load_config(config).ingest.workers == workers


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its ingest workers), from /proc."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents[int(stat_file.parent.name)] = int(fields[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        children = {child for child, ppid in parents.items() if ppid == parent}
        found |= children
        todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited (PID 1 of a container may not reap it)


def _all_gone(pids: set[int], timeout: float = 15) -> set[int]:
    """The ``pids`` still running after up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := {pid for pid in pids if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.slow
def test_sigkill_during_a_large_ingest_loses_no_acknowledged_batch(site: Path) -> None:
    rows = 60_000
    big = _big_csv(site, rows)
    _with_ingest_workers(site, 2)  # the pool's workers check and digest, the ingest process stores

    process = spawn("ingest", "--progress", "--config", "my/node.toml", big, cwd=site)
    lines = Lines(process)
    acknowledged = 0
    try:
        for _ in range(2):
            line = lines.next(timeout=60)
            assert line is not None, process.stderr.read() if process.stderr else ""
            match = re.fullmatch(r"acknowledged: stored (\d+), updated (\d+)", line)
            assert match, line
            acknowledged = int(match.group(1))
        workers = _descendants(process.pid)
        assert len(workers) >= 2
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _all_gone(workers) == set()  # no orphan: the kernel killed every worker with its parent
    assert acknowledged == 2 * BATCH

    config = load_config(site / "my" / "node.toml")
    with open_store(config.store.url) as store:
        assert store.integrity_check() == []
        now = int(_today().timestamp())
        counts = store.counts(now=now)
        stored = sum(c.active for c in counts.values())
        assert stored >= acknowledged and stored % BATCH == 0 and stored < rows
        assert list(store.iter_needing_digest(1, TIER_OPRF, now=now)) == []
        size = store.audit_size()
        entries = [json.loads(e) for e in store.audit_entries(0, size)]
    # One "ingest" event per committed batch, written in the batch's transaction; nothing published but
    # init's empty manifest.
    ingests = [e for e in entries if e["action"] == "ingest"]
    assert len(ingests) == stored // BATCH and all(e["count"] == BATCH for e in ingests)
    assert [e["filters"] for e in entries if e["action"] == "publish"] == [{}]

    assert _status(site)["integrity"] == []
    done = petanda_node("ingest", "--config", "my/node.toml", big, cwd=site, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stored {rows - stored}, updated {stored}, rejected 0"
    status = _status(site)
    assert status["manifest_version"] == 2
    assert status["indicators"] == {"phone": {"active": rows, "expired": 0, "retracted": 0}}


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_ctrl_c_or_sigterm_stops_an_ingest_and_its_workers(site: Path, sig: int, status: int) -> None:
    # Large enough that the ingest is still running when the signal lands, even on a loaded machine:
    # since workers read their own byte ranges (ADR 0022), 60,000 rows took ~3 s and a descheduled test
    # sometimes signalled an ingest that had already finished.
    big = _big_csv(site, 400_000)
    _with_ingest_workers(site, 2)
    process = spawn("ingest", "--progress", "--config", "my/node.toml", big, cwd=site)
    lines = Lines(process)
    try:
        line = lines.next(timeout=60)
        assert line is not None and line.startswith("acknowledged:"), line
        workers = _descendants(process.pid)
        assert len(workers) >= 2
        process.send_signal(sig)  # the ingest process only: the workers must follow it
        assert process.wait(timeout=30) == status
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _all_gone(workers) == set()
    config = load_config(site / "my" / "node.toml")
    with open_store(config.store.url) as store:
        assert store.integrity_check() == []
        stored = sum(c.active for c in store.counts(now=int(_today().timestamp())).values())
    assert stored % BATCH == 0 and 0 < stored < 400_000  # whole batches only


# --- serving -----------------------------------------------------------------------------------------------


def _health_channel(site: Path, port: int) -> grpc.Channel:
    people = site / "people"
    return secure_channel(
        f"127.0.0.1:{port}",
        ca=site / "ca" / "ca.crt",
        cert=people / "MY-alice.investigator.crt",
        key=people / "MY-alice.investigator.key",
    )


@pytest.fixture
def serving(site: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, int]]:
    """``serve --no-sync`` on a free port, once it has said it is serving."""
    [port] = free_ports(1)
    _set_listen(site, port)
    process = spawn("serve", "--no-sync", "--config", "my/node.toml", cwd=site)
    lines = Lines(process)
    try:
        line = lines.next(timeout=30)
        assert line == f"node MY serving on port {port}", (line, process.stderr and process.stderr.read())
        yield process, lines, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_sigterm_drains_and_exits_zero(site: Path, serving: tuple[subprocess.Popen[str], Lines, int]) -> None:
    process, lines, port = serving
    channel = _health_channel(site, port)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        check = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="petanda.v1.PeerService"), timeout=20)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        # The open watch sees the drain begin; the server then stops within its 2 s grace period.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=15) == 0
        assert lines.next(timeout=5) is None
        with pytest.raises(grpc.RpcError):
            stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    finally:
        channel.close()
    # The drain signed a final tree head over the log.
    config = load_config(site / "my" / "node.toml")
    with open_store(config.store.url) as store:
        head = store.latest_tree_head()
        assert head is not None and head.size == store.audit_size()


@pytest.mark.slow
def test_serve_refuses_a_port_in_use(site: Path, serving: tuple[subprocess.Popen[str], Lines, int]) -> None:
    process, _, port = serving
    second = petanda_node("serve", "--no-sync", "--config", "my/node.toml", cwd=site, timeout=30)
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert "node.listen" in line and str(port) in line
    assert process.poll() is None  # the first server is untouched

    [other] = free_ports(1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", other))
        squatter.listen()
        config = site / "my" / "node.toml"
        config.write_text(config.read_text().replace(f'"127.0.0.1:{port}"', f'"127.0.0.1:{other}"'))
        blocked = petanda_node("serve", "--no-sync", "--config", "my/node.toml", cwd=site, timeout=30)
    assert blocked.returncode == 2
    [line] = blocked.stderr.strip().splitlines()
    assert "node.listen" in line and str(other) in line
