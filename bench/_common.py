"""What the benchmarks share: the machine line and plain aligned tables."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Sequence

__all__ = ["fmt", "machine_info", "print_table"]


def machine_info() -> str:
    """CPU model, cores, Python, libsodium and the load average, on one line."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    sodium = "n/a"
    try:
        import pysodium

        fn = pysodium.sodium.sodium_version_string
        fn.restype = ctypes.c_char_p
        sodium = fn().decode()
    except (ImportError, AttributeError, OSError):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, libsodium {sodium}, "
        f"load average {load}"
    )


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``head`` as a plain aligned table."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def fmt(per_s: float) -> str:
    return f"{per_s / 1000:,.1f}k/s" if per_s >= 1000 else f"{per_s:,.0f}/s"
