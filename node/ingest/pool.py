"""The CPU part of an ingest over a pool of processes: checks, canonical forms and digests on every core.

Python holds the GIL while it parses and canonicalises (``phonenumbers`` is pure Python), so threads do
not help; processes do. The parent reads the file (:func:`node.ingest.read_raw`: the format's own work,
cheap), sends chunks of :class:`~node.ingest.parsers.RawRecord` to the workers, and takes the results back
in file order, as flat rows and one ``bytes`` of digests per chunk, to store them itself: only the parent
writes, so every guarantee of the store (acknowledged batches, one transaction each) is the same as in
process. At most :data:`IN_FLIGHT_PER_WORKER` chunks per worker are sent and not yet taken back, so
memory does not follow the size of the file.

The workers get the OPRF key seed of the epoch (and the HMAC tier's epoch key, when it is on) once, when
they start (:class:`DigestKeys`, through the pool's initializer), never with a chunk. They are started
with ``spawn`` (a node may have threads: fork would copy their locks), ignore SIGINT (the parent stops
them, after the chunk at hand) and, on Linux, are killed by the kernel when the parent dies
(``PR_SET_PDEATHSIG``), so a SIGKILL or SIGTERM of the parent leaves no orphan.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as dtime
from itertools import islice
from typing import Final

from client.protocol import oprf
from client.protocol.digest import HmacDigester, oprf_input
from node.ingest.parsers import ParsedIndicator, RawRecord, RecordBuilder, Rejection

__all__ = [
    "CHUNK",
    "HMAC_LENGTH",
    "IN_FLIGHT_PER_WORKER",
    "Chunk",
    "DigestKeys",
    "IngestPool",
    "RowFields",
    "day_seconds",
    "row_fields",
]

#: Records per chunk sent to a worker: large enough that a chunk's IPC is small beside its work, small
#: enough that a file of one chunk or less is not worth a process (it is read in process).
CHUNK: Final = 2000
#: Chunks per worker sent and not yet taken back (the one it works on and the next).
IN_FLIGHT_PER_WORKER: Final = 2
#: Bytes of an HMAC-tier digest (HMAC-SHA256).
HMAC_LENGTH: Final = hashlib.sha256().digest_size
_PR_SET_PDEATHSIG: Final = 1

#: An indicator's stored fields but its source and digests: kind, canonical, category, first and last
#: seen (seconds), confidence, TLP, reports, expiry (seconds or None); see ``node.store.IndicatorRow``.
RowFields = tuple[str, str, str, int, int, int, str, int, int | None]


def day_seconds(day: date | None) -> int | None:
    """The UTC midnight starting ``day``, in seconds since the epoch (as the store keeps days)."""
    return None if day is None else int(datetime.combine(day, dtime(0, 0), UTC).timestamp())


def row_fields(p: ParsedIndicator) -> RowFields:
    """The stored fields of a parsed indicator (what ``Node._indicator_rows`` stores in process too)."""
    return (
        p.kind,
        p.canonical,
        p.category,
        day_seconds(p.first_seen) or 0,
        day_seconds(p.last_seen) or 0,
        p.confidence,
        p.tlp,
        p.reports,
        day_seconds(p.expires_at),
    )


@dataclass(frozen=True)
class DigestKeys:
    """What the workers need to check records and digest them, given once at their start.

    Attributes:
        epoch: The OPRF epoch of the digests.
        oprf_seed: The epoch's OPRF key seed; ``oprf_info`` the public info it is derived with.
        hmac_key: The HMAC tier's epoch key, or None when no kind is on the HMAC tier.
        hmac_kinds: The kinds on the HMAC tier.
        default_region, default_tlp, today: As :class:`node.ingest.parsers.RecordBuilder` takes them.
    """

    epoch: int
    oprf_seed: bytes
    oprf_info: bytes
    hmac_key: bytes | None
    hmac_kinds: frozenset[str]
    default_region: str
    default_tlp: str
    today: date


@dataclass(frozen=True)
class Chunk:
    """A worker's answer for one chunk, in file order.

    Attributes:
        rows: The accepted indicators' fields.
        oprf: Their OPRF outputs, :data:`client.protocol.oprf.OUTPUT_LENGTH` bytes each, concatenated.
        hmac: The HMAC digests of the rows of a kind on the HMAC tier, in order, concatenated.
        rejections: The records refused, by the format or by the checks.
    """

    rows: list[RowFields]
    oprf: bytes
    hmac: bytes
    rejections: list[Rejection]


class _Worker:
    """A worker's state: the key pair derived once, a record builder per source."""

    def __init__(self, keys: DigestKeys) -> None:
        self.keys = keys
        self.sk = oprf.derive_key_pair(keys.oprf_seed, keys.oprf_info, oprf.MODE_VOPRF).sk
        self.builders: dict[str, RecordBuilder] = {}
        self.hmac: dict[str, HmacDigester] = {}

    def builder(self, source: str) -> RecordBuilder:
        builder = self.builders.get(source)
        if builder is None:
            keys = self.keys
            builder = self.builders[source] = RecordBuilder(
                default_region=keys.default_region,
                default_tlp=keys.default_tlp,
                today=keys.today,
                source=source,
            )
        return builder

    def run(self, source: str, items: list[RawRecord | Rejection]) -> Chunk:
        builder = self.builder(source)
        parsed: list[ParsedIndicator] = []
        rejections: list[Rejection] = []
        for item in items:
            result = item if isinstance(item, Rejection) else builder.build_raw(item)
            if isinstance(result, Rejection):
                rejections.append(result)
            else:
                parsed.append(result)
        outputs = oprf.evaluate(self.sk, [oprf_input(p.kind, p.canonical) for p in parsed], oprf.MODE_VOPRF)
        hmac = b""
        if self.keys.hmac_key is not None:
            hmac = b"".join(
                self._hmac(p.kind).digest(p.canonical) for p in parsed if p.kind in self.keys.hmac_kinds
            )
        return Chunk([row_fields(p) for p in parsed], b"".join(outputs), hmac, rejections)

    def _hmac(self, kind: str) -> HmacDigester:
        digester = self.hmac.get(kind)
        if digester is None:
            assert self.keys.hmac_key is not None
            digester = self.hmac[kind] = HmacDigester(self.keys.hmac_key, self.keys.epoch, kind)
        return digester


_worker: _Worker | None = None


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); exit if it is already gone.

    The kernel sends the signal when the parent's *thread* that started the worker ends: the pool is
    started and shut down within one ``Node.ingest`` call, so that thread outlives it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _start(keys: DigestKeys, parent: int) -> None:
    global _worker
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    _worker = _Worker(keys)


def _run(source: str, items: list[RawRecord | Rejection]) -> Chunk:
    assert _worker is not None, "the pool's initializer did not run"
    return _worker.run(source, items)


class IngestPool:
    """``workers`` processes checking and digesting chunks of records; a context manager that stops them
    (after their chunk at hand) on leaving, whatever happened."""

    def __init__(self, keys: DigestKeys, workers: int) -> None:
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(keys, os.getpid()),
        )

    def __enter__(self) -> IngestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: chunks not started are dropped, the ones at hand finish; waits for them."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def map(self, source: str, items: Iterable[RawRecord | Rejection]) -> Iterator[Chunk]:
        """The chunks of ``items`` checked and digested, in order, with at most
        :data:`IN_FLIGHT_PER_WORKER` chunks per worker in flight."""
        pending: deque[Future[Chunk]] = deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        it = iter(items)
        while chunk := list(islice(it, CHUNK)):
            pending.append(self._executor.submit(_run, source, chunk))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
