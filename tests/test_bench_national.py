"""The smoke run of bench/bench_national.py: its stages work end to end (CI asserts no timing).

The script forks a child per stage (ingest, publish, a 1 % change, publish, the delta a peer would
fetch) and exits non-zero when a stage fails or stores fewer indicators than its CSV holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_national_smoke_run_builds_publishes_and_measures_the_delta() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_national.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert "ingest (parse, OPRF, store)" in rows and "publish after +1%" in rows
    delta = rows["sync after +1%: delta / full"].split()
    sent, full = (int(x.replace(",", "")) for x in (delta[6], delta[8]))
    assert 0 < sent < full  # a delta, smaller than the full download of the same version
