"""Memory of a piece of work measured in a child process: the peak RSS at checkpoints, and SQLite's share.

The tests run each measurement in a freshly started interpreter (:func:`in_fresh_process`,
multiprocessing's ``spawn``), not a fork of the pytest process: a forked child inherits the heap of a
long test run, and memory freed there but still resident is reused by the child without raising its RSS
(a full suite run hid half of what the probe's own test allocates). The child resets its peak RSS
(``/proc/self/clear_refs``, ``5``) once its setup is done, then records at checkpoints the peak RSS so
far (``VmHWM``) and the peak of what SQLite has allocated (``sqlite3_memory_highwater``: its page caches,
64 MiB per connection at most, ``node/store/sqlite.py``). The caches grow with the database up to their
cap, so a slope of the RSS between two sizes of a database smaller than the cap would count them as a
cost per row; the tests take the slope of the peak RSS *less SQLite's peak* (what the node's own code
holds), and check SQLite's peak against its cap separately. Worker processes of the measured process (an
ingest pool) are counted by their RSS at each checkpoint (``children``), added to the process's own.

Used by ``tests/test_memory_bounds.py`` and ``bench/bench_audit_growth.py``; Linux only (``/proc``).
"""

from __future__ import annotations

import _sqlite3
import ctypes
import multiprocessing
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Mark", "Probe", "in_fresh_process", "rss_bytes"]

_LIB = ctypes.CDLL(_sqlite3.__file__)  # resolves into the libsqlite3 the sqlite3 module uses
_LIB.sqlite3_memory_highwater.restype = ctypes.c_int64
_LIB.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
_LIB.sqlite3_memory_used.restype = ctypes.c_int64


def _status_kib(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        match = re.search(rf"^{field}:\s+(\d+) kB", handle.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/{pid}/status has no {field}")
    return int(match.group(1))


def _children_rss(pid: int) -> int:
    """The RSS now of every descendant of ``pid`` (0 when it has none)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                children = [int(c) for c in handle.read().split()]
        except OSError:
            continue  # a thread that ended meanwhile
        for child in children:
            try:
                total += _status_kib("VmRSS", str(child)) * 1024 + _children_rss(child)
            except (OSError, RuntimeError):
                continue  # a worker that ended meanwhile
    return total


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
    #: RSS of the process's worker processes at this checkpoint.
    children: int = 0

    @property
    def own(self) -> int:
        """The peak RSS less SQLite's peak, and the workers': what the node's code held (module doc)."""
        return self.peak - self.sqlite + self.children


class Probe:
    """Started in the child after its setup: resets the peaks, then records :class:`Mark` s."""

    def __init__(self) -> None:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        _LIB.sqlite3_memory_highwater(1)  # resets SQLite's to what it uses now
        self.marks: list[Mark] = []

    def mark(self, n: int) -> Mark:
        peak, sqlite = _status_kib("VmHWM") * 1024, int(_LIB.sqlite3_memory_highwater(0))
        mark = Mark(n, peak, sqlite, _children_rss(os.getpid()))
        self.marks.append(mark)
        return mark

    @staticmethod
    def slope(first: Mark, second: Mark) -> float:
        """Bytes of the process's own peak (less SQLite's) per unit of work between two marks."""
        return (second.own - first.own) / (second.n - first.n)


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a freshly started interpreter and return its result; an exception there is
    raised here as a ``RuntimeError`` naming it. ``fn`` must be a module-level function and ``args``
    picklable (``spawn``). The process is not a daemon, so it may start workers of its own."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_run, args=(send, fn, args))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        status, value = "error", "it died without an answer"
    process.join()
    if status != "ok":
        raise RuntimeError(f"child failed (exit code {process.exitcode}): {value}")
    result: dict[str, Any] = value
    return result


def _run(send: Any, fn: Callable[..., dict[str, Any]], args: tuple[Any, ...]) -> None:
    try:
        send.send(("ok", fn(*args)))
    except BaseException as error:  # reported to the parent, which raises
        send.send(("error", repr(error)))
