"""The smoke run of bench/bench_publish.py: every stage runs, and the publication after a small change
writes fewer buckets than the first one (CI asserts no timing)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_publish_smoke_run_writes_only_the_changed_buckets() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_publish.py"), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "publish after the change" in done.stdout
    pattern = r"buckets written: ([\d,]+) by the first publication, ([\d,]+) of ([\d,]+)"
    found = re.search(pattern, done.stdout)
    assert found is not None, done.stdout
    first, second, current = (int(x.replace(",", "")) for x in found.groups())
    assert first == current == 256  # 5,000 records: 8 prefix bits
    assert 0 < second < current  # 50 added and 25 retracted touch some buckets, not all
