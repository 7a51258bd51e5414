"""The smoke run of bench/bench_replicas.py: it completes and prints its table (CI asserts no timing).

The script starts TH's two replicas over one PostgreSQL (``PETANDA_TEST_PG_DSN`` when set, else a
throw-away server of its own), MY, checks through MY, SIGKILLs a replica, and exits non-zero when an
answer is wrong or a check failed outside the killed replica's in-flight calls.
"""

from __future__ import annotations

import os

import pytest

from tests.benchrun import run_bench
from tests.pgserver import ENV_DSN, PostgresUnavailable, find_bindir


def _postgres_or_skip() -> None:
    if os.environ.get(ENV_DSN):
        return
    try:
        find_bindir()
    except PostgresUnavailable as error:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and PostgreSQL is required: {error}")
        pytest.skip(f"bench_replicas needs PostgreSQL: {error}")


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_replicas_smoke_run_kills_a_replica_and_prints_its_table() -> None:
    _postgres_or_skip()
    done = run_bench("bench_replicas.py", "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in done.stdout.splitlines()}
    assert {"before the kill", "after the kill (+1 s on)", "whole run"} <= rows.keys(), done.stdout
    assert int(rows["whole run"][2].replace(",", "")) > 0  # checks were answered
    assert "killed TH-a (SIGKILL)" in done.stdout
    assert "0 failed checks outside the killed replica's in-flight calls (target 0): met" in done.stdout
