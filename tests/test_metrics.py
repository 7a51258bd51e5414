"""The Prometheus ``/metrics`` endpoint, scraped over HTTP, and the JSON log.

A real two-member federation in this process (``tests/fednet.py``) serves its metrics on 127.0.0.1:0;
the test syncs, checks (a value held, one not held, then one past the holder-wide quota), fails a sync,
sends an invalid evaluation, and after each step scrapes both nodes over HTTP and reads the exposition
with ``prometheus_client.parser``. A real ``petanda-node serve`` process with ``[metrics]`` on shows the
same endpoint and writes its log as JSON lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client._proto.petanda.v1 import peer_pb2
from client.transport.convert import kind_to_proto
from node.config import load_config
from node.metrics import MetricsServer, start_metrics_server
from tests.fednet import Net, start_net
from tests.test_peer_health import ENV, Serving, _federation

pytestmark = pytest.mark.timeout(180)

NOW = 1_760_000_000.0
HELD = "+60123456789"


def scrape(server: MetricsServer | int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape over HTTP: (name, sorted labels) -> value."""
    port = server if isinstance(server, int) else server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"no {name}{labels}; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Net, dict[str, MetricsServer]]]:
    net = start_net(tmp_path, ["MY", "SG"], now=NOW, limits={"oprf_holder_daily_quota": 3})
    csv = tmp_path / "sg.csv"
    csv.write_text(f"kind,value,region,category,tlp\nphone,{HELD},MY,investment,GREEN\n")
    assert net.node("SG").ingest([csv], now=NOW).rejections == []
    net.node("MY").publish(now=NOW)
    servers = {
        node_id: start_metrics_server(net.node(node_id).metrics, "127.0.0.1:0") for node_id in net.running
    }
    try:
        yield net, servers
    finally:
        for server in servers.values():
            server.close()
        net.close()


def test_a_scrape_shows_syncs_checks_evaluations_quotas_and_alerts(
    net: tuple[Net, dict[str, MetricsServer]],
) -> None:
    federation, servers = net
    my, sg = federation.node("MY"), federation.node("SG")

    before = scrape(servers["MY"])
    assert value(before, "petanda_peer_state", peer="SG", state="stale") == 1  # never synced
    assert ("petanda_peer_sync_age_seconds", (("peer", "SG"),)) not in before

    # a sync, then a check of a held value and one not held
    assert all(result.ok for result in federation.sync("MY"))
    federation.clock.now = NOW + 7
    response = federation.check("MY", [("phone", HELD), ("phone", "+60198765432")])
    assert [r.peers[0].status for r in response.results] == [1, 2]  # MATCH, NO_MATCH (the wire enum)

    mine = scrape(servers["MY"])
    assert value(mine, "petanda_syncs_total", peer="SG", outcome="ok") == 1
    assert value(mine, "petanda_peer_last_sync_success_timestamp_seconds", peer="SG") == NOW
    assert value(mine, "petanda_peer_sync_age_seconds", peer="SG") == 7
    assert value(mine, "petanda_peer_sync_consecutive_failures", peer="SG") == 0
    assert value(mine, "petanda_peer_state", peer="SG", state="ok") == 1
    assert value(mine, "petanda_peer_state", peer="SG", state="stale") == 0
    assert value(mine, "petanda_sync_duration_seconds_count", peer="SG") == 1
    assert value(mine, "petanda_check_answers_total", peer="SG", kind="phone", answer="match") == 1
    assert value(mine, "petanda_check_answers_total", peer="SG", kind="phone", answer="no_match") == 1
    assert value(mine, "petanda_check_duration_seconds_count") == 1
    assert value(mine, "petanda_check_duration_seconds_bucket", le="+Inf") == 1
    assert value(mine, "petanda_audit_log_entries") == my.store.audit_size()
    assert value(mine, "petanda_oprf_epoch") == my.epoch
    size = my.store.audit_size()
    scrape(servers["MY"])
    assert my.store.audit_size() == size  # a scrape writes no audit entry (peers see the log's size)

    held = scrape(servers["SG"])  # the holder: one call of two elements, result ok, no hit counted
    assert value(held, "petanda_oprf_evaluations_total", peer="MY", kind="phone", result="ok") == 1
    assert value(held, "petanda_oprf_evaluated_elements_total", peer="MY", kind="phone", result="ok") == 2
    assert value(held, "petanda_oprf_quota_used", peer="MY", kind="phone") == 2
    assert value(held, "petanda_oprf_daily_quota", peer="MY") == 20_000
    assert value(held, "petanda_oprf_holder_quota_used", kind="phone") == 2
    assert value(held, "petanda_oprf_holder_daily_quota") == 3
    assert value(held, "petanda_audit_log_entries") == sg.store.audit_size()
    assert not any(name.startswith("petanda_check_answers") for name, _ in held)  # SG checked nothing
    assert not any(k[0] == "petanda_alerts" for k in held)

    # past the holder-wide quota: the call is refused, its alert is in force, the asker sees rate_limited
    federation.check("MY", [("phone", "+60123456780"), ("phone", "+60123456781")])
    held = scrape(servers["SG"])
    assert value(held, "petanda_oprf_evaluations_total", peer="MY", kind="phone", result="rate_limited") == 1
    assert value(held, "petanda_alerts", alert="holder_quota", peer="", kind="phone") == 1
    mine = scrape(servers["MY"])
    assert value(mine, "petanda_check_answers_total", peer="SG", kind="phone", answer="rate_limited") == 2
    assert value(mine, "petanda_check_duration_seconds_count") == 2

    # an invalid batch sent straight to SG's peer service: counted as invalid, no quota taken
    stub = federation.peer_stub("SG", as_member="MY")
    with pytest.raises(grpc.RpcError) as refused:
        stub.EvaluateOprf(
            peer_pb2.EvaluateOprfRequest(
                epoch=sg.epoch, kind=kind_to_proto("url"), blinded_elements=[b"x" * 32]
            )
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    held = scrape(servers["SG"])
    assert value(held, "petanda_oprf_evaluations_total", peer="MY", kind="url", result="invalid") == 1
    assert ("petanda_oprf_quota_used", (("kind", "url"), ("peer", "MY"))) not in held

    # SG goes away: the next sync fails, counted and in the state
    federation.stop("SG")
    federation.clock.now = NOW + 60
    assert not federation.sync("MY")[0].ok
    mine = scrape(servers["MY"])
    assert value(mine, "petanda_syncs_total", peer="SG", outcome="error") == 1
    assert value(mine, "petanda_sync_failures_total", peer="SG") == 1
    assert value(mine, "petanda_peer_sync_consecutive_failures", peer="SG") == 1
    assert value(mine, "petanda_peer_sync_age_seconds", peer="SG") == 60
    assert value(mine, "petanda_peer_state", peer="SG", state="degraded") == 1
    assert value(mine, "petanda_audit_log_entries") == my.store.audit_size()


def test_a_fork_on_record_is_an_alert(net: tuple[Net, dict[str, MetricsServer]]) -> None:
    federation, servers = net
    federation.node("MY").record_fork("SG", "two roots for size 5", now=NOW)
    mine = scrape(servers["MY"])
    assert value(mine, "petanda_alerts", alert="fork", peer="SG", kind="") == 1
    assert value(mine, "petanda_peer_forks_total", peer="SG") == 1
    assert value(mine, "petanda_peer_state", peer="SG", state="fork") == 1


def test_metrics_listen_is_local_unless_allowed(tmp_path: Path) -> None:
    from client.protocol.errors import ConfigError
    from node.config import render_config_template

    base = render_config_template("MY", listen="127.0.0.1:0")
    for listen, ok in (
        ("127.0.0.1:9464", True),
        ("[::1]:0", True),
        ("localhost:9464", True),
        ("0.0.0.0:9464", False),
    ):
        path = tmp_path / "node.toml"
        path.write_text(base.replace('listen = "127.0.0.1:9464"', f'listen = "{listen}"'))
        if ok:
            assert load_config(path).metrics.listen == listen
            continue
        with pytest.raises(ConfigError) as refused:
            load_config(path)
        assert f"{path}:metrics: listen {listen!r} is not a loopback address" in str(refused.value)
        assert "not a loopback address" in str(refused.value)
        path.write_text(path.read_text().replace("allow_remote = false", "allow_remote = true"))
        assert load_config(path).metrics.allow_remote


def test_serve_exposes_metrics_and_logs_json(tmp_path: Path) -> None:
    federation = _federation(tmp_path, ["MY", "SG"], interval_s=1, timeout_s=5)
    my = federation.members["MY"]
    with my.config.open("a") as config:
        config.write('[metrics]\nenabled = true\nlisten = "127.0.0.1:0"\n[logging]\nformat = "json"\n')
    sg = Serving(federation.members["SG"].config)
    served = Serving(my.config, "-v")
    try:
        line = served.out.text[0]
        assert "; metrics on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        deadline = time.monotonic() + 30
        while True:  # the sync loop runs every second: wait for its first success
            samples = scrape(port)
            if ("petanda_syncs_total", (("outcome", "ok"), ("peer", "SG"))) in samples:
                break
            assert time.monotonic() < deadline, sorted(k for k in samples if "sync" in k[0])
            time.sleep(0.2)
        assert value(samples, "petanda_peer_state", peer="SG", state="ok") == 1
        assert value(samples, "petanda_sync_failures_total", peer="SG") == 0  # a series before any failure
        assert value(samples, "petanda_audit_log_entries") > 0
    finally:
        served.stop()
        sg.stop()
    records = [json.loads(text) for text in served.err.all().splitlines() if text.strip()]
    assert records, served.err.all()
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    syncs = [r for r in records if r["logger"] == "node.sync" and r.get("peer") == "SG"]
    assert syncs, records
    assert syncs[0]["outcome"] in ("ok", "not_modified") and syncs[0]["level"] == "INFO"
    assert isinstance(syncs[0]["latency_s"], float) and syncs[0]["version"] >= 1
    assert syncs[0]["message"].startswith("sync SG: ")


def test_log_format_flag_overrides_the_config_and_is_checked(tmp_path: Path) -> None:
    federation = _federation(tmp_path, ["MY", "SG"], interval_s=60, timeout_s=1)
    config = federation.members["MY"].config
    with config.open("a") as file:
        file.write('[logging]\nformat = "json"\n')

    def sync(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node.cli", *flags, "-v", "sync", "--config", str(config)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )

    as_json = sync()  # SG does not run: the sync fails, logged as one JSON object with its fields
    assert as_json.returncode == 1
    failed = [json.loads(text) for text in as_json.stderr.splitlines() if '"node.sync"' in text]
    assert failed and failed[0]["level"] == "WARNING" and failed[0]["outcome"] == "error"
    assert failed[0]["consecutive_failures"] == 1 and failed[0]["peer"] == "SG"
    as_text = sync("--log-format", "text")
    assert " WARNING node.sync: sync SG: failed after " in as_text.stderr
    assert not as_text.stderr.lstrip().startswith("{")
    wrong = sync("--log-format", "xml")
    assert wrong.returncode == 2 and "invalid choice: 'xml'" in wrong.stderr
    config.write_text(config.read_text().replace('format = "json"', 'format = "yaml"'))
    bad = sync()
    assert bad.returncode == 2
    assert "logging.format: unknown log format 'yaml'; expected text or json" in bad.stderr
