"""The smoke run of bench/bench_audit_growth.py: a serving node's audit log grows, its RSS is reported at
each tenth, and the tree then serves proofs that verify (CI asserts no timing and no memory figure;
``tests/test_memory_bounds.py`` bounds the memory)."""

from __future__ import annotations

from tests.benchrun import run_bench


def test_bench_audit_growth_smoke_run_grows_the_log_and_verifies_its_proofs() -> None:
    done = run_bench("bench_audit_growth.py", "--quick")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tenths = [line.split()[0] for line in lines if line[:1].isdigit()]
    assert tenths == [f"{n:,}" for n in range(2_000, 20_001, 2_000)]
    assert any(line.startswith("inclusion of entry ") and line.endswith(": verified") for line in lines)
    assert any(line.startswith("peak RSS growth of the serving node") for line in lines)


def test_bench_audit_growth_names_a_bad_flag() -> None:
    done = run_bench("bench_audit_growth.py", "--entries", "5", timeout_s=120)
    assert done.returncode == 2 and "--entries: 5 is outside" in done.stderr
