"""The smoke run of bench/bench_national.py: its stages work end to end (CI asserts no timing).

The script forks a child per stage (ingest, publish, a 1 % change, publish, the delta a peer would
fetch) and exits non-zero when a stage fails or stores fewer indicators than its CSV holds.
"""

from __future__ import annotations

from tests.benchrun import run_bench


def test_bench_national_smoke_run_builds_publishes_and_measures_the_delta() -> None:
    done = run_bench("bench_national.py", "--quick", "--node-only")  # the others have smoke tests
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert "ingest (parse, OPRF, store)" in rows and "publish after +1%" in rows
    delta = rows["sync after +1%: delta / full"].split()
    sent, full = (int(x.replace(",", "")) for x in (delta[6], delta[8]))
    assert 0 < sent < full  # a delta, smaller than the full download of the same version
