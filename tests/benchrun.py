"""Run a script of ``bench/`` as its smoke test does: from the repository root, in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """``python bench/<script> <args>`` with ``PYTHONPATH`` at the root; its output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
