"""``petanda demo`` as the README runs it: eleven node processes, planted overlaps found, clean shutdown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_to_completion_and_finds_every_planted_overlap(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client.tools.cli", "demo", "--per-node", "40", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},  # a pipe: no terminal width
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = re.search(
        r"(\d+) planted overlaps checked .*?: (\d+) found\s+exactly\s+at\s+their\s+holders",  # wrapped at 80
        result.stdout,
        re.S,
    )
    assert found and found.group(1) == found.group(2) and int(found.group(1)) > 20, result.stdout[-2000:]
    assert "wrong" not in result.stdout
    # stdout is a pipe: the tables are whole, never cut at 80 columns (`confid…`, `money_m…`)
    rows = [line for line in result.stdout.splitlines() if line.startswith(("┃", "│"))]
    assert any("┃ confidence ┃" in row for row in rows), result.stdout[:3000]
    assert not [row for row in rows if "…" in row], result.stdout[:3000]
    assert "all nodes drained and stopped" in result.stdout
    assert "exited with" not in result.stdout  # every node process exited 0 on SIGTERM
    for node in ("BN", "KH", "ID", "LA", "MM", "MY", "PH", "SG", "TH", "TL", "VN"):
        assert (tmp_path / "federation" / node / "petanda.db").exists()
