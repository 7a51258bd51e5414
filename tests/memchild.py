"""Memory of a piece of work measured in a child process: the peak RSS at checkpoints, and SQLite's share.

The tests run each measurement in a freshly started interpreter (:func:`in_fresh_process`,
multiprocessing's ``spawn``), not a fork of the pytest process: a forked child inherits the heap of a
long test run, and memory freed there but still resident is reused by the child without raising its RSS
(a full suite run hid half of what the probe's own test allocates). A benchmark, a small process of its
own, may fork (:func:`in_child`). The child resets its peak RSS (``/proc/self/clear_refs``,
``5``) once its setup is done, then records at checkpoints the peak RSS so far (``VmHWM``) and the peak
of what SQLite has allocated (``sqlite3_memory_highwater``: its page caches, 64 MiB per connection at
most, ``node/store/sqlite.py``). The caches grow with the database up to their cap, so a slope of the RSS
between two sizes of a database smaller than the cap would count them as a cost per row; the tests take
the slope of the peak RSS *less SQLite's peak* (what the node's own code holds), and check SQLite's peak
against its cap separately. The child's peak RSS as its parent sees it (``wait4``'s ``ru_maxrss``, the
largest of the child and the children it waited for) is returned too by :func:`in_child`.

Used by ``tests/test_memory_bounds.py``, ``bench/bench_audit_growth.py`` and ``bench/bench_national.py``;
Linux only (``/proc``).
"""

from __future__ import annotations

import _sqlite3
import ctypes
import json
import multiprocessing
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Mark", "Probe", "in_child", "in_fresh_process", "rss_bytes"]

_LIB = ctypes.CDLL(_sqlite3.__file__)  # resolves into the libsqlite3 the sqlite3 module uses
_LIB.sqlite3_memory_highwater.restype = ctypes.c_int64
_LIB.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
_LIB.sqlite3_memory_used.restype = ctypes.c_int64


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def rss_bytes() -> int:
    """The resident set size of this process now."""
    return _status_kib("VmRSS") * 1024


@dataclass(frozen=True, slots=True)
class Mark:
    """One checkpoint: ``n`` units of work done (indicators, entries)."""

    n: int
    #: Peak RSS of the process since the probe started.
    peak: int
    #: Peak of SQLite's allocations (page caches, statements) since the probe started.
    sqlite: int

    @property
    def own(self) -> int:
        """The peak RSS less SQLite's peak: what the rest of the process held (see the module doc)."""
        return self.peak - self.sqlite


class Probe:
    """Started in the child after its setup: resets the peaks, then records :class:`Mark` s."""

    def __init__(self) -> None:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        _LIB.sqlite3_memory_highwater(1)  # resets SQLite's to what it uses now
        self.marks: list[Mark] = []

    def mark(self, n: int) -> Mark:
        mark = Mark(n, _status_kib("VmHWM") * 1024, int(_LIB.sqlite3_memory_highwater(0)))
        self.marks.append(mark)
        return mark

    @staticmethod
    def slope(first: Mark, second: Mark) -> float:
        """Bytes of the process's own peak (less SQLite's) per unit of work between two marks."""
        return (second.own - first.own) / (second.n - first.n)


def in_child(fn: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Run ``fn`` in a forked child; return what it returned (JSON) and the child's peak RSS in bytes.

    An exception in the child is raised in the parent as a ``RuntimeError`` naming it.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test runner
        os.close(read_end)
        code = 0
        try:
            out = json.dumps(fn()).encode()
        except BaseException as error:  # reported to the parent, which raises
            out, code = json.dumps({"error": repr(error)}).encode(), 1
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    result = json.loads(data or b"{}")
    if status != 0 or "error" in result:
        raise RuntimeError(f"child failed: {result.get('error', status)}")
    return result, usage.ru_maxrss * 1024  # KiB on Linux


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a freshly started interpreter and return its result; its exceptions are
    raised here. ``fn`` must be a module-level function and ``args`` picklable (``spawn``)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
    return result
