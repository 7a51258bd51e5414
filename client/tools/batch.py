"""The batch run of ``petanda check --file``: pacing, retries and resuming (no gRPC, no files of its own).

A run reads the input rows as a stream and keeps at most one *window* of them in memory: up to
``batch_size`` rows to ask about (and the bad or already answered rows among them, so that output stays in
input order). It asks the node, then asks again, after the wait the refusal named, only the rows and only
the peers that refused them (``CheckRequest.peers``): a peer that answered a row is never asked, nor
charged, twice for it. The :class:`Pacer` learns from each refusal how fast a peer (per kind) or the
node takes evaluations and spaces later calls so that they pass. A refusal that cannot be waited out
(a daily quota; a wait over ``max_wait``) stops the run cleanly after the window: what was answered is
written, and the reason names the limit and when it resets.

Resuming: the records of an earlier output of the same input (:func:`read_previous`, CSV or JSON lines,
in line order) are matched to the input rows as both stream by: a row answered by every peer (or an
error) is copied as it was; a row some peer did not answer is asked again of those peers only, and
merged; a row without a record is checked as in a fresh run. The output is what one uninterrupted run
would have written.

The clock, the sleep, the node and the output are given to :class:`BatchRun`; ``docs/investigators.md``
describes the user's side.

One module of this size: reading a batch, pacing it to the peers' limits and resuming it are one loop over
one output file.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TextIO

from client.protocol.errors import InputError, RateLimited
from client.protocol.model import Metadata, Outcome, PeerOutcome, PeerStatus, Query
from client.tools.results import (
    CSV_COLUMNS,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    InputRow,
    Tally,
    csv_row,
    outcome_document,
)

__all__ = [
    "MAX_TRIES",
    "NODE",
    "BatchRun",
    "Pacer",
    "Previous",
    "Writer",
    "merge",
    "read_previous",
]

#: The pacer's key of the node's own check limit (the peers' keys are ``(peer_id, kind)``).
NODE: Final = ("", "")
#: Times one row (or one call refused by the node) is asked again after a refusal that named its wait.
MAX_TRIES: Final = 10
#: Times it is asked again after a refusal that did not say when (waits of 1, 2, 4 s).
MAX_BLIND_TRIES: Final = 3
#: Most rows held at once: a window flushes at ``batch_size`` rows to ask or at this many rows in all.
WINDOW_ROWS: Final = 10_000

Key = tuple[str, str]
Call = Callable[[Sequence[Query], Sequence[str]], list[Outcome]]


# --- pacing -------------------------------------------------------------------------------------------


class Pacer:
    """When the next call may go, from the refusals seen: per key, a time before which it would be
    refused again, and a pace (seconds per evaluation) fitted to the limit's refill rate.

    After a refusal that says "retry in R s", a call of ``n`` evaluations sent ``d`` seconds after the
    last one that passed needed ``d + R`` seconds of refill: ``(d + R) / n`` per evaluation (5% more).
    Before that first fit, calls go as fast as they come (the bucket's burst).
    """

    MARGIN: Final = 1.05

    def __init__(self) -> None:
        self._ready: dict[Key, float] = {}
        self._pace: dict[Key, float] = {}
        self._last: dict[Key, float] = {}

    def wait(self, demand: Mapping[Key, int], now: float) -> float:
        """Seconds to wait before a call taking ``demand[key]`` evaluations of each key may go."""
        at = now
        for key, n in demand.items():
            at = max(at, self._ready.get(key, at))
            last = self._last.get(key)
            if last is not None:
                at = max(at, last + self._pace.get(key, 0.0) * n)
        return at - now

    def passed(self, key: Key, sent: float) -> None:
        """A call of ``key`` sent at ``sent`` passed."""
        self._last[key] = sent

    def refused(self, key: Key, n: int, *, sent: float, done: float, retry_s: float) -> None:
        """A call of ``n`` evaluations of ``key``, sent at ``sent`` and answered at ``done``, was
        refused with "retry in ``retry_s``"."""
        self._ready[key] = done + retry_s
        last = self._last.get(key)
        if last is not None and n > 0:
            self._pace[key] = self.MARGIN * (sent - last + retry_s) / n

    def pace(self, key: Key) -> float:
        """The fitted seconds per evaluation of ``key`` (0 before any refusal)."""
        return self._pace.get(key, 0.0)


def merge(old: Outcome | None, new: Outcome, asked: Sequence[str]) -> Outcome:
    """``old`` with the answers of the peers in ``asked`` replaced by ``new``'s (all of it when ``old``
    is None or ``asked`` is empty: every peer was asked)."""
    if old is None or not asked or not old.peers or new.error:
        return new
    fresh = {p.peer_id: p for p in new.peers}
    peers = [fresh.pop(p.peer_id) if p.peer_id in asked and p.peer_id in fresh else p for p in old.peers]
    peers += fresh.values()
    return Outcome(old.canonical or new.canonical, old.error, tuple(peers))


# --- earlier output -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Previous:
    """One record of an earlier output: which row it answers, what it said, and the record itself.

    ``final``: an error, or answered by every peer (copied on resume); otherwise only the peers that
    did not answer are asked again. ``record`` is the CSV cells or the JSON line, written back as is.
    """

    line: int
    kind: str
    value: str
    region: str
    verdict: str
    outcome: Outcome
    record: list[str] | str

    @property
    def final(self) -> bool:
        return self.verdict == "error" or self.outcome.fully_answered


def _peer_from_dict(doc: Mapping[str, object]) -> PeerOutcome:
    status = PeerStatus(str(doc["status"])) if doc["status"] in set(PeerStatus) else PeerStatus.UNKNOWN
    meta = doc.get("metadata")
    metadata = Metadata(**meta) if isinstance(meta, dict) and status is PeerStatus.MATCH else None
    return PeerOutcome(str(doc["peer_id"]), status, metadata, str(doc.get("detail") or ""))


def _from_csv(cells: list[str]) -> Previous:
    row = dict(zip(CSV_COLUMNS, cells, strict=True))
    matches = json.loads(row["matches"]) if row["matches"] else []
    metadata = {m.pop("peer_id"): Metadata(**m) for m in matches}
    details = json.loads(row["details"]) if row["details"] else {}
    peers = []
    for pair in row["peers"].split(";") if row["peers"] else []:
        peer_id, _, name = pair.partition("=")
        status = PeerStatus(name) if name in set(PeerStatus) else PeerStatus.UNKNOWN
        meta = metadata.get(peer_id) if status is PeerStatus.MATCH else None
        peers.append(PeerOutcome(peer_id, status, meta, str(details.get(peer_id, ""))))
    outcome = Outcome(row["canonical"], row["error"] if row["verdict"] == "error" else "", tuple(peers))
    return Previous(
        int(row["line"]), row["kind"], row["value"], row["region"], row["verdict"], outcome, cells
    )


def _from_json(text: str) -> Previous:
    doc = json.loads(text)
    peers = tuple(_peer_from_dict(p) for p in doc["peers"])
    error = str(doc["error"]) if doc["verdict"] == "error" else ""
    outcome = Outcome(str(doc["canonical"]), error, peers)
    return Previous(int(doc["line"]), doc["kind"], doc["value"], doc["region"], doc["verdict"], outcome, text)


def read_previous(stream: TextIO, fmt: str, *, name: str) -> Iterator[Previous]:
    """The records of an earlier output (``fmt`` csv or jsonl), in line order.

    A record torn by a crash (the last, without its line end) and anything after a record that does
    not parse are left out: those rows are simply checked again.

    Raises:
        InputError: the file is not an output of ``petanda check --file`` in ``fmt``.
    """
    first = stream.readline()
    if not first:
        return
    if fmt == "csv":
        header = next(csv.reader([first]), [])
        legacy = list(CSV_COLUMNS[:-1])
        if header not in (list(CSV_COLUMNS), legacy):
            raise InputError(
                f"{name} is not a CSV output of petanda check (give the --format it was written with)"
            )
        width = len(header)
        lines: Iterable[str] = _whole_lines(stream)
        reader = csv.reader(lines, strict=True)
    elif first.lstrip().startswith("{"):
        lines = _whole_lines(stream, first)
    else:
        raise InputError(f"{name} is not a JSON-lines output of petanda check (give --format csv)")
    last = 0
    try:
        records: Iterator[Previous] = (
            (_from_csv(cells + [""] * (len(CSV_COLUMNS) - width)) for cells in reader)
            if fmt == "csv"
            else (_from_json(text) for text in lines)
        )
        for record in records:
            if record.line <= last:
                return
            last = record.line
            yield record
    except (ValueError, KeyError, TypeError, csv.Error):
        return


def _whole_lines(stream: TextIO, first: str = "") -> Iterator[str]:
    """The lines of ``stream`` (after ``first``) that end with a line end: a torn last one is dropped."""
    line = first
    while line:
        if not line.endswith("\n"):
            return
        yield line
        line = stream.readline()
    for line in stream:
        if not line.endswith("\n"):
            return
        yield line


# --- output -------------------------------------------------------------------------------------------


class Writer:
    """Writes one output record per input row, as CSV or JSON lines (the header first for CSV)."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        self._stream = stream
        self._csv = csv.writer(stream, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(CSV_COLUMNS)

    def write(self, row: InputRow, outcome: Outcome | None) -> None:
        if self._csv is not None:
            self._csv.writerow(csv_row(row, outcome))
        else:
            doc = outcome_document(row.query, outcome, line=row.line, error=row.error or "")
            self._stream.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")

    def copy(self, record: Previous) -> None:
        """Write an earlier record again, as it was."""
        if self._csv is not None:
            assert isinstance(record.record, list)
            cells = record.record + [""] * (len(CSV_COLUMNS) - len(record.record))
            self._csv.writerow(cells)
        else:
            assert isinstance(record.record, str)
            self._stream.write(record.record.rstrip("\r\n") + "\n")

    def flush(self) -> None:
        self._stream.flush()


# --- the run ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    row: InputRow
    previous: Previous | None = None
    outcome: Outcome | None = None
    #: Whether the node must be asked (else the row is bad, or its earlier record is copied).
    work: bool = False
    #: The peers to ask; empty: every peer.
    ask: tuple[str, ...] = ()
    tries: int = 0


@dataclass(slots=True)
class BatchRun:
    """One ``check --file`` run: rows in, records out (see the module's docstring).

    Args:
        call: asks the node about queries, of the given peers only (empty: all); raises
            :class:`RateLimited` when the node refuses the whole call, other PetandaErrors on failure.
        writer: where records go; ``tally`` counts them.
        batch_size: most queries per call; ``max_wait``: longest wait for a limit before stopping.
        clock, sleep: monotonic seconds and a way to wait them; ``on_wait(seconds, why)`` is told first.
        on_written: told after each window is written (for progress).
    """

    call: Call
    writer: Writer
    tally: Tally
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    batch_size: int = MAX_BATCH
    max_bytes: int = MAX_BATCH_BYTES
    max_wait: float = 300.0
    on_wait: Callable[[float, str], None] = lambda seconds, why: None
    on_written: Callable[[], None] = lambda: None
    pacer: Pacer = field(default_factory=Pacer)
    #: Calls refused (by the node or by a peer for some rows) and then asked again.
    retries: int = 0
    #: Rows this run wrote an answer of its own for (not copied from the earlier output).
    answered: int = 0
    _peers: list[str] = field(default_factory=list)
    _window: list[_Item] = field(default_factory=list)
    _previous: Iterator[Previous] = field(default_factory=lambda: iter(()))
    _next: Previous | None = None
    _name: str = "the output"

    # --- reading ----------------------------------------------------------------------------------

    def run(self, rows: Iterable[InputRow], previous: Iterable[Previous] = (), *, name: str = "") -> None:
        """Check every row (or until a limit stops the run: ``tally.stopped`` says why).

        Raises:
            InputError: ``previous`` is not an output of these rows (the input or flags changed).
            PetandaError: the node failed (what was answered so far is written by :meth:`salvage`).
        """
        self._previous = iter(previous)
        self._next = next(self._previous, None)
        self._name = name or self._name
        work = size = 0
        for row in rows:
            item = self._admit(row)
            if not item.work and not work:
                self._write(item)
                continue
            self._window.append(item)
            if item.work:
                work += 1
                size += len(row.value.encode("utf-8", "surrogateescape")) + len(row.kind) + len(row.region)
            if work >= self.batch_size or size >= self.max_bytes or len(self._window) >= WINDOW_ROWS:
                self._resolve()
                self._flush()
                work = size = 0
                if self.tally.stopped:
                    break
        else:
            self._resolve()
            self._flush()
            if self._next is not None and not self.tally.stopped:
                raise InputError(
                    f"{self._name} has a result for line {self._next.line}, which the input does not have: "
                    "resume with the same input file and flags"
                )
        self._copy_rest()

    def salvage(self) -> None:
        """After a failure: write what the window holds an answer or an earlier record for, and the
        earlier records not reached, so that nothing answered is lost."""
        self._flush()
        self._copy_rest()
        self.writer.flush()

    def _admit(self, row: InputRow) -> _Item:
        previous = None
        if self._next is not None and self._next.line < row.line:
            raise InputError(
                f"{self._name} has a result for line {self._next.line}, which is no row of the input: "
                "resume with the same input file and flags"
            )
        if self._next is not None and self._next.line == row.line:
            previous, self._next = self._next, next(self._previous, None)
            if (previous.kind, previous.value, previous.region) != (row.kind, row.value, row.region):
                raise InputError(
                    f"{self._name} line {row.line} is about {previous.kind} {previous.value!r}, the input "
                    f"about {row.kind} {row.value!r}: resume with the same input file and flags"
                )
        if row.error is not None:
            return _Item(row)
        if previous is not None and previous.final:
            return _Item(row, previous)
        if previous is not None and previous.outcome.peers:
            return _Item(row, previous, work=True, ask=previous.outcome.unanswered)
        return _Item(row, previous, work=True)

    # --- asking -----------------------------------------------------------------------------------

    def _resolve(self) -> None:
        todo = [item for item in self._window if item.work]
        while todo and not self.tally.stopped:
            groups: dict[tuple[str, ...], list[_Item]] = {}
            for item in todo:
                groups.setdefault(item.ask, []).append(item)
            todo = []
            for ask, items in groups.items():
                if self.tally.stopped:
                    return
                answered = self._ask(items, ask)
                if answered is None:
                    return
                outcomes, sent, done = answered
                for item, outcome in zip(items, outcomes, strict=True):
                    base = item.outcome or (item.previous.outcome if item.previous is not None else None)
                    item.outcome = merge(base, outcome, ask)
                self._learn(items, outcomes, sent, done)
                todo += self._again(items)
            if todo and not self.tally.stopped:
                self.retries += 1

    def _ask(self, items: list[_Item], ask: tuple[str, ...]) -> tuple[list[Outcome], float, float] | None:
        queries = [item.row.query for item in items]
        kinds = Counter(item.row.kind for item in items)
        demand: dict[Key, int] = {NODE: len(queries)}
        for peer_id in ask or self._peers:
            demand.update({(peer_id, kind): n for kind, n in kinds.items()})
        tries = 0
        while True:
            now = self.clock()
            wait = self.pacer.wait(demand, now)
            if wait > 0:
                slowest = max(demand, key=lambda k: self.pacer.wait({k: demand[k]}, now))
                self.on_wait(wait, f"{slowest[0]}, {slowest[1]}" if slowest != NODE else "your node")
                self.sleep(wait)
            sent = self.clock()
            try:
                outcomes = self.call(queries, ask)
            except RateLimited as error:
                done = self.clock()
                retry = error.retry_after_s
                blind = retry is None
                limit = MAX_BLIND_TRIES if blind else MAX_TRIES
                retry = float(2**tries) if retry is None else retry
                if not math.isfinite(retry) or retry > self.max_wait or tries >= limit:
                    self.tally.stopped = _reason(str(error))
                    return None
                self.pacer.refused(NODE, len(queries), sent=sent, done=done, retry_s=retry)
                tries += 1
                self.retries += 1
                continue
            self.pacer.passed(NODE, sent)
            return outcomes, sent, self.clock()

    def _learn(self, items: list[_Item], outcomes: list[Outcome], sent: float, done: float) -> None:
        """Feed the pacer each (peer, kind)'s refusal or pass, and learn the node's peers."""
        refused: dict[Key, float] = {}
        passed: set[Key] = set()
        count: Counter[Key] = Counter()
        for item, outcome in zip(items, outcomes, strict=True):
            for peer in outcome.peers:
                if peer.peer_id not in self._peers:
                    self._peers.append(peer.peer_id)
                key = (peer.peer_id, item.row.kind)
                count[key] += 1
                if peer.status is PeerStatus.RATE_LIMITED:
                    retry = peer.retry_after_ms / 1000 if peer.retry_after_ms else 2.0**item.tries
                    refused[key] = max(refused.get(key, 0.0), retry)
                elif peer.answered:
                    passed.add(key)
        for key, retry in refused.items():
            self.pacer.refused(key, count[key], sent=sent, done=done, retry_s=retry)
        for key in passed - refused.keys():
            self.pacer.passed(key, sent)

    def _again(self, items: list[_Item]) -> list[_Item]:
        """The items to ask again (only the peers that refused them), or none when a refusal cannot be
        waited out: then the run stops after this window, naming that refusal."""
        again = []
        for item in items:
            assert item.outcome is not None
            limited = [p for p in item.outcome.peers if p.status is PeerStatus.RATE_LIMITED]
            if not limited or self.tally.stopped:
                continue
            worst = max(limited, key=lambda p: p.retry_after_ms)
            blind = not worst.retry_after_ms
            wait = 2.0**item.tries if blind else worst.retry_after_ms / 1000
            if wait > self.max_wait or item.tries >= (MAX_BLIND_TRIES if blind else MAX_TRIES):
                self.tally.stopped = _reason(worst.detail or f"{worst.peer_id}: rate limited")
                return []
            item.tries += 1
            item.ask = tuple(p.peer_id for p in limited)
            again.append(item)
        return again

    # --- writing ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        for item in self._window:
            self._write(item)
        self._window.clear()
        self.writer.flush()
        self.on_written()

    def _write(self, item: _Item) -> None:
        """Write an item's record: a bad row, this run's answer, or else its earlier record; an item with
        neither (the node refused before answering it) is left out, to be checked on resume."""
        row, previous = item.row, item.previous
        if row.error is not None:
            self.writer.write(row, None)
            self.tally.add_row(row.line, True, None)
        elif item.outcome is not None:
            self.writer.write(row, item.outcome)
            self.tally.add_row(row.line, False, item.outcome)
            self.answered += 1
        elif previous is not None:
            self.writer.copy(previous)
            self.tally.add_row(row.line, False, previous.outcome)

    def _copy_rest(self) -> None:
        """Copy the earlier records of the rows this run did not reach (it stopped, or failed)."""
        while self._next is not None:
            self.writer.copy(self._next)
            self._next = next(self._previous, None)
        self.writer.flush()


def _reason(text: str) -> str:
    return " ".join(text.split())
