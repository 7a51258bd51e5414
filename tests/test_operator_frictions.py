"""Small frictions of issue 10, part 6: whole tables in a pipe (or ``--wide``), the empty manifest that
``init`` publishes, ``petanda-node config check``, ``rotate --if-due`` and the systemd units of
``deploy/`` (checked with ``systemd-analyze verify``).

Real parts throughout: a federation of real servers in this process (``tests/fednet.py``), the CLIs
run as processes with stdout a pipe, as a script or a log collector would run them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.config import load_config
from node.node import Node
from node.testbed import build_federation, free_ports, write_config
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
NOW = 1_760_000_000.0
HELD = "+60123456789"
#: A category and a source long enough that an 80-column table cuts them.
CATEGORY = "money_mule"


def _env(**extra: str) -> dict[str, str]:
    drop = ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "PETANDA_CONFIG", "PETANDA_NODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": "/nonexistent", **extra}


def _run(module: str, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    net = start_net(tmp_path, ["MY", "SG"], now=NOW)
    csv = tmp_path / "sg.csv"
    csv.write_text(
        f"kind,value,region,category,tlp,confidence,reports\nphone,{HELD},MY,{CATEGORY},GREEN,85,12\n"
    )
    assert net.node("SG").ingest([csv], now=NOW).rejections == []
    net.node("MY").publish(now=NOW)
    try:
        yield net
    finally:
        net.close()


# --- (a) tables whole when stdout is not a terminal ----------------------------------------------------


def _check(net: Net, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    member = net.federation.members["MY"]
    cert, key = member.investigator
    return _run(
        "client.tools.cli",
        "check", HELD, "--kind", "phone", *flags,
        "--node", member.address, "--ca", net.federation.ca, "--cert", cert, "--key", key,
        **env,
    )  # fmt: skip


def test_check_tables_are_whole_in_a_pipe_and_with_wide(net: Net) -> None:
    assert all(r.ok for r in net.sync("MY"))
    piped = _check(net)  # stdout is a pipe: no terminal width applies
    assert piped.returncode == 1, piped.stderr  # 1: a match
    header = next(line for line in piped.stdout.splitlines() if line.lstrip().startswith("peer"))
    assert "confidence" in header and "reports" in header, piped.stdout
    row = next(line for line in piped.stdout.splitlines() if line.lstrip().startswith("SG"))
    assert CATEGORY in row and "85" in row and "12" in row, piped.stdout
    assert "…" not in piped.stdout
    # a terminal of 50 columns: the table is fitted (cut); --wide prints it whole there too
    narrow = _check(net, FORCE_COLOR="1", COLUMNS="50")
    assert narrow.returncode == 1 and "…" in narrow.stdout, narrow.stdout
    wide = _check(net, "--wide", FORCE_COLOR="1", COLUMNS="50")
    assert wide.returncode == 1 and "…" not in wide.stdout and "confidence" in wide.stdout, wide.stdout


def test_status_tables_are_whole_in_a_pipe(net: Net, tmp_path: Path) -> None:
    member = net.federation.members["MY"]
    (port,) = free_ports(1)
    write_config(member, net.federation.members.values(), addresses={"SG": f"127.0.0.1:{port}"})
    net.node("MY").config = load_config(member.config)
    net.running["MY"].links.reset()
    assert not net.sync("MY")[0].ok
    error = net.node("MY").status(now=NOW)["peers"][0]["last_error"]
    assert len(error) > 60, error  # longer than an 80-column table leaves for its column
    net.close()
    status = _run("node.cli", "status", "--config", member.config)
    assert status.returncode == 0, status.stderr
    assert error in status.stdout and "…" not in status.stdout, status.stdout
    wide = _run("node.cli", "status", "--wide", "--config", member.config, FORCE_COLOR="1", COLUMNS="60")
    assert wide.returncode == 0 and error in _plain(wide.stdout), wide.stdout


def _plain(text: str) -> str:
    """Terminal output without its colour codes."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# --- (b) init publishes an empty signed manifest --------------------------------------------------------


def test_init_publishes_an_empty_manifest(tmp_path: Path) -> None:
    def node_cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "node.cli", *args],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, (args, done.stderr)
        return done

    node_cli("ca", "init", "--dir", "ca")
    node_cli(
        "ca", "issue", "--ca", "ca", "--role", "peer", "--id", "MY", "--out", "my/tls", "--ip", "127.0.0.1"
    )
    done = node_cli("init", "--id", "MY", "--dir", "my", "--listen", "127.0.0.1:0")
    assert "published version 1, a signed manifest of no indicators" in done.stdout
    status = json.loads(node_cli("status", "--json", "--config", "my/node.toml").stdout)
    assert status["manifest_version"] == 1 and status["indicators"] == {}
    # without its certificates yet, init says that serve (or publish) will publish it
    done = node_cli("init", "--id", "SG", "--dir", "sg")
    assert "nothing published yet: no " in done.stdout and "`serve` (or `publish`)" in done.stdout


def test_peers_sync_a_freshly_initialised_node_without_complaint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net = start_net(tmp_path, ["MY", "SG"], now=NOW)
    try:
        never = net.sync("MY")[0]  # SG has published nothing at all: what peers saw before init published
        assert not never.ok and "has published nothing yet" in never.detail
        net.node("SG").publish(now=NOW)  # what init now does: a manifest of no indicators
        caplog.clear()
        with caplog.at_level(logging.INFO):
            (result,) = net.sync("MY")
        assert result.ok and result.version == 1, result
        assert not [r for r in caplog.records if "published nothing" in r.getMessage()]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        peer = net.node("MY").status(now=NOW)["peers"][0]
        assert (peer["state"], peer["manifest"], peer["version"]) == ("ok", "ok", 1)
        response = net.check("MY", [("phone", HELD)])
        assert [p.status for p in response.results[0].peers] == [2]  # NO_MATCH, not STALE
        # then SG ingests: the next sync goes from the empty version to one with filters
        csv = tmp_path / "sg.csv"
        csv.write_text(f"kind,value,region,category,tlp\nphone,{HELD},MY,investment,GREEN\n")
        net.node("SG").ingest([csv], now=NOW + 60)
        net.clock.now = NOW + 60
        (result,) = net.sync("MY")
        assert result.ok and result.version == 2, result
        response = net.check("MY", [("phone", HELD)])
        assert [p.status for p in response.results[0].peers] == [1]  # MATCH
        # and back to nothing: a retraction publishes a version with no records again
        net.node("SG").retract("phone", HELD, now=NOW + 120)
        net.clock.now = NOW + 120
        (result,) = net.sync("MY")
        assert result.ok and result.version == 3, result
        response = net.check("MY", [("phone", HELD)])
        assert [p.status for p in response.results[0].peers] == [2]
    finally:
        net.close()


# --- (c) petanda-node config check ----------------------------------------------------------------------


def test_config_check_with_a_live_peer(net: Net) -> None:
    config = net.federation.members["MY"].config
    done = _run("node.cli", "config", "check", "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("node.dir", "keys.kek_file", "tls.ca", "tls.cert", "tls.key", "tls.crl"):
        assert what in done.stdout
    sg = net.federation.members["SG"]
    assert f"peer SG ({sg.address})" in done.stdout
    assert "mutual TLS, GetManifest: version 1" in done.stdout
    assert "all 9 checks passed (1 peer configured)" in done.stdout
    as_json = json.loads(_run("node.cli", "config", "check", "--json", "--config", config).stdout)
    assert as_json["ok"] and {f["what"] for f in as_json["findings"] if f["ok"]} >= {"tls.key", "node.dir"}


def test_config_check_names_a_bad_field_and_exits_2(net: Net) -> None:
    config = net.federation.members["MY"].config
    config.write_text(config.read_text() + '[limits]\nmax_batch = 0\n[metrics]\nlisten = "0.0.0.0:9464"\n')
    done = _run("node.cli", "config", "check", "--config", config)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert (
        f"petanda-node: {config}:limits.max_batch: input should be greater than or equal to 1, got int 0"
        in lines
    )
    assert any(
        line.startswith(f"petanda-node: {config}:metrics: listen '0.0.0.0:9464' is not") for line in lines
    )
    missing = _run("node.cli", "config", "check", "--config", config.parent / "nope.toml")
    assert missing.returncode == 2 and "nope.toml: cannot read: No such file or directory" in missing.stderr
    timeout = _run("node.cli", "config", "check", "--timeout", "0", "--config", config)
    assert timeout.returncode == 2 and "--timeout: must be more than 0 seconds, got 0" in timeout.stderr


def test_config_check_reports_an_unreachable_peer_and_a_key_too_open(net: Net) -> None:
    member = net.federation.members["MY"]
    (port,) = free_ports(1)
    write_config(member, net.federation.members.values(), addresses={"SG": f"127.0.0.1:{port}"})
    done = _run("node.cli", "config", "check", "--timeout", "2", "--config", member.config)
    assert done.returncode == 1, done.stdout + done.stderr
    peer = next(line for line in done.stdout.splitlines() if f"peer SG (127.0.0.1:{port})" in line)
    assert "FAILED" in peer and "SG: UNAVAILABLE:" in peer, done.stdout
    assert "1 of 9 checks failed (1 peer configured)" in done.stdout
    key = member.dir / "tls" / "MY.key"
    key.chmod(0o640)
    files_only = _run("node.cli", "config", "check", "--no-peers", "--config", member.config)
    assert files_only.returncode == 1 and "peer SG" not in files_only.stdout
    tls_key = next(line for line in files_only.stdout.splitlines() if "tls.key" in line)
    assert "FAILED" in tls_key and "permissions 0640 are too open" in tls_key, files_only.stdout
    assert "1 of 8 checks failed" in files_only.stdout
    key.chmod(0o600)
    assert _run("node.cli", "config", "check", "--no-peers", "--config", member.config).returncode == 0
    kek = member.dir / "kek.key"
    kek.rename(member.dir / "kek.away")  # a replica without the key-encryption key cannot serve
    no_kek = _run("node.cli", "config", "check", "--no-peers", "--config", member.config)
    row = next(line for line in no_kek.stdout.splitlines() if "keys.kek_file" in line)
    assert no_kek.returncode == 1 and "FAILED" in row and "missing" in row, no_kek.stdout
    (member.dir / "kek.away").rename(kek)


# --- (d) rotate --if-due and the systemd units -----------------------------------------------------------


def test_rotate_if_due_rotates_once_when_due(tmp_path: Path) -> None:
    (member,) = build_federation(tmp_path, ["SG"]).members.values()
    Node.open(load_config(member.config)).close()  # the epoch starts now (the real clock)
    not_due = _run("node.cli", "rotate", "--if-due", "--config", member.config)
    assert not_due.returncode == 0 and "OPRF epoch 1 is not due: it rotates at" in not_due.stdout
    assert "nothing changed" in not_due.stdout
    node = Node.open(load_config(member.config))
    try:
        due = node.epoch_started_at(now=NOW) + node.config.oprf.epoch_days * 86_400
        assert node.rotate_if_due(now=due - 1) is None and node.epoch == 1
        assert node.rotate_if_due(now=due) is not None and node.epoch == 2
        assert node.rotate_if_due(now=due) is None and node.epoch == 2  # once
    finally:
        node.close()


UNITS = ("petanda-node.service", "petanda-rotate.service", "petanda-rotate.timer")


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian: systemd)"
)
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    executable = Path(sys.executable).parent / "petanda-node"
    assert executable.exists(), executable
    for name in UNITS:  # the units name /opt/petanda/.venv: point them at this environment's
        text = (REPO / "deploy" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/petanda/.venv/bin/petanda-node", str(executable)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr  # a bad value is only a warning
    service = (REPO / "deploy" / "petanda-node.service").read_text()
    for hardening in (
        "User=petanda",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/petanda",
        "NoNewPrivileges=yes",
    ):
        assert hardening in service
    # and a unit with a mistake is caught
    broken = tmp_path / "petanda-node.service"
    broken.write_text(broken.read_text().replace("ProtectSystem=strict", "ProtectSystem=everything"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)], capture_output=True, text=True
    )
    assert "Failed to parse protect system value" in bad.stderr
