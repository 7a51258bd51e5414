"""The CPU part of an ingest over a pool of processes: reading, checks, canonical forms and digests on
every core.

Python holds the GIL while it parses and canonicalises (``phonenumbers`` is pure Python), so threads do
not help; processes do. The parent cuts a CSV or JSON-lines file into byte ranges of about
:data:`RANGE_BYTES` after a ``\\n`` (:func:`node.ingest.csvjson.line_ranges`, with each range's first line
number, so rejections name the file's real line) and sends each worker only the file's name and a range;
the worker reads it, checks, canonicalises and digests its records, and sends back flat rows and one
``bytes`` of digests per range. The parent takes them in file order and stores them itself: only the
parent writes, so every guarantee of the store (acknowledged batches, one transaction each) is the same
as in process. At most :data:`IN_FLIGHT_PER_WORKER` ranges per worker are sent and not yet taken back, so
memory does not follow the size of the file.

A quoted CSV field may hold a line break: when a range's last record goes on past its end, its worker
reads on to the record's end and says where it stopped; the next range, cut at a line break inside that
record, was read from the wrong place, and the parent has it read again from the right one
(:meth:`IngestPool.read`). The file must not change during the ingest (as in process).

The workers get the OPRF key seed of the epoch (and the HMAC tier's epoch key, when it is on) once, when
they start (:class:`DigestKeys`, the first message on their stdin pipe), never with a range. They are
fresh interpreters (``subprocess``: a node may have threads, whose locks a bare fork would copy held),
ignore SIGINT (the parent stops them, after the range at hand) and, on Linux, are killed by the kernel
when the parent dies (``PR_SET_PDEATHSIG``), so a SIGKILL or SIGTERM of the parent leaves no orphan.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pickle
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from subprocess import PIPE
from typing import Final

from client.protocol import oprf
from client.protocol.digest import HmacDigester, oprf_input
from node.ingest.csvjson import FileRanges, Range, line_ranges, read_csv_range, read_jsonl_range
from node.ingest.parsers import ParsedIndicator, RecordBuilder, Rejection

__all__ = [
    "HMAC_LENGTH",
    "IN_FLIGHT_PER_WORKER",
    "RANGE_BYTES",
    "Chunk",
    "DigestKeys",
    "IngestPool",
    "RowFields",
    "day_seconds",
    "row_fields",
    "serve",
]

#: Bytes of a file per range sent to a worker (~2,000 rows of a typical file): large enough that a range's
#: IPC is small beside its work, small enough that a file of one range or less is not worth a process
#: (it is read in process).
RANGE_BYTES: Final = 1 << 17
#: Ranges per worker sent and not yet taken back (the one it works on and the next).
IN_FLIGHT_PER_WORKER: Final = 2
#: Bytes of an HMAC-tier digest (HMAC-SHA256).
HMAC_LENGTH: Final = hashlib.sha256().digest_size
_PR_SET_PDEATHSIG: Final = 1
_EPOCH_DAY: Final = date(1970, 1, 1).toordinal()
_DAY: Final = 86400

#: An indicator's stored fields but its source and digests: kind, canonical, category, first and last
#: seen (seconds), confidence, TLP, reports, expiry (seconds or None); see ``node.store.IndicatorRow``.
RowFields = tuple[str, str, str, int, int, int, str, int, int | None]


def day_seconds(day: date | None) -> int | None:
    """The UTC midnight starting ``day``, in seconds since the epoch (as the store keeps days): whole
    days since 1970-01-01 (a tenth of the CPU of ``datetime.combine(...).timestamp()``, same value)."""
    return None if day is None else (day.toordinal() - _EPOCH_DAY) * _DAY


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
    """A worker's answer for one range, in file order.

    Attributes:
        rows: The accepted indicators' fields.
        oprf: Their OPRF outputs, :data:`client.protocol.oprf.OUTPUT_LENGTH` bytes each, concatenated.
        hmac: The HMAC digests of the rows of a kind on the HMAC tier, in order, concatenated.
        rejections: The records refused, by the format or by the checks.
        stop: The byte offset where the range's last record ends (its end, or beyond: a CSV record
            going on past it).
        lines: The lines read.
    """

    rows: list[RowFields]
    oprf: bytes
    hmac: bytes
    rejections: list[Rejection]
    stop: int
    lines: int


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

    def run(self, file: FileRanges, span: Range) -> Chunk:
        builder = self.builder(file.source)
        if file.layout is not None:
            items, stop, lines = read_csv_range(file.path, file.layout, span, builder)
        else:
            items, stop, lines = read_jsonl_range(file.path, span, builder)
        parsed: list[ParsedIndicator] = []
        rejections: list[Rejection] = []
        for item in items:
            if isinstance(item, Rejection):
                rejections.append(item)
            else:
                parsed.append(item)
        inputs = [oprf_input(p.kind, p.canonical) for p in parsed]
        outputs = oprf.evaluate(self.sk, inputs, oprf.MODE_VOPRF) if inputs else []  # 1 or more
        hmac = b""
        if self.keys.hmac_key is not None:
            hmac = b"".join(
                self._hmac(p.kind).digest(p.canonical) for p in parsed if p.kind in self.keys.hmac_kinds
            )
        return Chunk([row_fields(p) for p in parsed], b"".join(outputs), hmac, rejections, stop, lines)

    def _hmac(self, kind: str) -> HmacDigester:
        digester = self.hmac.get(kind)
        if digester is None:
            assert self.keys.hmac_key is not None
            digester = self.hmac[kind] = HmacDigester(self.keys.hmac_key, self.keys.epoch, kind)
        return digester


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); exit if it is already gone.

    The kernel sends the signal when the parent's *thread* that started the worker ends: the pool is
    started and shut down within one ``Node.ingest`` call, so that thread outlives it."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def serve(parent: int) -> None:
    """A worker's life (``python -c``, :class:`IngestPool`): the keys, then ranges to answer in order,
    one pickle each way on the pipes of its stdin and stdout, until its stdin ends."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    tasks, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the answers
    try:
        worker = _Worker(pickle.load(tasks))  # noqa: S301  # our parent, over our own pipe
        while True:
            try:
                file, span = pickle.load(tasks)  # noqa: S301  # as above
            except EOFError:  # the parent is done
                return
            try:
                data = pickle.dumps(worker.run(file, span), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # the parent raises it (as itself if it pickles)
                try:
                    data = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
                except Exception:
                    data = pickle.dumps(RuntimeError(f"an ingest worker failed: {exc!r}"))
            answers.write(data)
            answers.flush()
    except BrokenPipeError:  # the parent stopped reading: it is stopping
        os._exit(0)


class IngestPool:
    """``workers`` processes reading, checking and digesting ranges of files; a context manager that stops
    them (after their range at hand) on leaving, whatever happened.

    Each worker is a fresh interpreter (``python -c``) that imports this module and nothing of the
    program that started it (``multiprocessing``'s spawn would import the program's main module again in
    every worker). Ranges go to the workers in turn, each at most :data:`IN_FLIGHT_PER_WORKER` ahead,
    and come back in the same order.
    """

    def __init__(self, keys: DigestKeys, workers: int) -> None:
        self.workers = workers
        self.keys = keys
        self._local: _Worker | None = None
        self._closed = False
        self._procs: list[subprocess.Popen[bytes]] = []
        root = str(Path(__file__).resolve().parents[2])  # where the node and client packages are
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        code = f"from node.ingest.pool import serve; serve({os.getpid()})"
        try:
            for _ in range(workers):
                proc = subprocess.Popen([sys.executable, "-c", code], stdin=PIPE, stdout=PIPE, env=env)
                self._procs.append(proc)
                self._send(proc, keys)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> IngestPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers: ranges not started are dropped, the ones at hand finish; waits for them."""
        self._closed = True
        for proc in self._procs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with suppress(OSError):
                        pipe.close()
        for proc in self._procs:
            proc.wait()

    def _send(self, proc: subprocess.Popen[bytes], item: object) -> None:
        assert proc.stdin is not None
        try:
            pickle.dump(item, proc.stdin, pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
        except BrokenPipeError:
            raise self._died(proc) from None

    def _answer(self, proc: subprocess.Popen[bytes]) -> Chunk:
        assert proc.stdout is not None
        try:
            answer: Chunk | BaseException = pickle.load(proc.stdout)  # noqa: S301  # our child's pipe
        except EOFError:
            raise self._died(proc) from None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _died(self, proc: subprocess.Popen[bytes]) -> RuntimeError:
        return RuntimeError(f"an ingest worker (pid {proc.pid}) stopped: exit status {proc.wait()}")

    def _run_here(self, file: FileRanges, span: Range) -> Chunk:
        """A range read in this process (a range to read again, which is rare)."""
        if self._local is None:
            self._local = _Worker(self.keys)
        return self._local.run(file, span)

    def read(self, file: FileRanges, size: int = RANGE_BYTES) -> Iterator[Chunk]:
        """The ranges of about ``size`` bytes of ``file`` read, checked and digested, in file order, with
        at most :data:`IN_FLIGHT_PER_WORKER` ranges per worker in flight; as one reading of the whole
        file gives them. A reading left before its end (an error, here or in a worker, or the caller's)
        closes the pool: the answers still on their way would belong to no reading.

        Raises:
            RuntimeError: the pool is closed, or a worker stopped.
            Exception: what a worker raised.
        """
        if self._closed:
            raise RuntimeError("the ingest pool is closed")
        pending: deque[tuple[Range, subprocess.Popen[bytes]]] = deque()
        limit = IN_FLIGHT_PER_WORKER * self.workers
        spans = line_ranges(file.path, file.start, file.line, size, csv_lines=file.layout is not None)
        at, line = file.start, file.line  # where the next range must start, and its line
        turn = 0
        try:
            while True:
                while len(pending) < limit and (span := next(spans, None)) is not None:
                    proc = self._procs[turn % self.workers]
                    turn += 1
                    pending.append((span, proc))
                    self._send(proc, (file, span))
                if not pending:
                    return
                span, proc = pending.popleft()
                chunk = self._answer(proc)
                if span.start != at:  # the last range's last record went on into this one: read it again
                    span = replace(span, start=at, line=line)
                    chunk = self._run_here(file, span) if at < span.end else Chunk([], b"", b"", [], at, 0)
                at, line = chunk.stop, span.line + chunk.lines
                yield chunk
        finally:
            if pending:
                self.close()
