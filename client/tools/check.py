"""``petanda check`` and ``petanda sighting``: the investigator's commands (an adapter: gRPC and files).

The node does the whole fan-out to the peers; this module only sends the investigator's queries to their
own national node over mutual TLS, in batches, and shows or writes what comes back. The pure parts
(kind guessing, file reading, verdicts, rendering to rows) are in :mod:`client.tools.results`; the protobuf
conversions are here, in pairs. ``docs/investigators.md`` is the user's guide.

One module of this size: the `check` and `sighting` commands and their rendering share the connection and
the output formats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from client._proto.petanda.v1 import investigator_pb2_grpc
from client.protocol.errors import InputError, UnknownKind
from client.protocol.kinds import KINDS
from client.tools.batch import BatchRun, Previous, Writer, read_previous
from client.tools.connection import (
    Connection,
    add_connection_arguments,
    open_channel,
    resolve_connection,
)
from client.tools.results import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_MATCH,
    EXIT_OK,
    MAX_BATCH,
    SNIFF_BYTES,
    TABLE_COLUMNS,
    InputFormat,
    Outcome,
    PeerStatus,
    Query,
    Sighting,
    Tally,
    guess_kind,
    not_text,
    outcome_document,
    printable,
    read_rows,
    summary_line,
    table_rows,
    verdict,
)
from client.tools.tables import print_table
from client.transport.convert import queries_to_proto, results_from_proto, sighting_to_proto
from client.transport.status import error_from_rpc

__all__ = [
    "InvestigatorClient",
    "add_check_commands",
    "open_input",
    "run_check",
    "run_sighting",
]

#: Time given to the node beyond the fan-out deadline (its own work, the network) before the call fails.
CALL_MARGIN_S: Final = 10.0
#: Time a call may take when no ``--deadline-ms`` is given (the node applies its own default inside it).
DEFAULT_CALL_TIMEOUT_S: Final = 120.0

_STATUS_STYLE: Final = {
    PeerStatus.MATCH: "bold red",
    PeerStatus.NO_MATCH: "green",
    PeerStatus.UNAVAILABLE: "yellow",
    PeerStatus.RATE_LIMITED: "yellow",
    PeerStatus.STALE: "yellow",
    PeerStatus.UNKNOWN: "magenta",
}
_VERDICT_STYLE: Final = {"match": "bold red", "no_match": "green", "incomplete": "yellow", "error": "bold"}


# --- the client ---------------------------------------------------------------------------------------


class InvestigatorClient:
    """Calls to the national node's InvestigatorService, with gRPC errors turned into PetandaError."""

    def __init__(self, channel: grpc.Channel, target: str) -> None:
        self._stub = investigator_pb2_grpc.InvestigatorServiceStub(channel)
        self._target = target

    def check(
        self, queries: Sequence[Query], deadline_ms: int = 0, peers: Sequence[str] = ()
    ) -> list[Outcome]:
        """Check one batch (with every peer, or only ``peers``); the call may last ``deadline_ms`` plus
        :data:`CALL_MARGIN_S`.

        Raises:
            PeerError: the node could not be reached, refused the certificate, the quota, or failed.
            InputError: the node refused the request as a whole (e.g. the batch is too large).
            ProtocolError: the answer does not have one result per query.
        """
        timeout = deadline_ms / 1000 + CALL_MARGIN_S if deadline_ms else DEFAULT_CALL_TIMEOUT_S
        try:
            response = self._stub.Check(queries_to_proto(queries, deadline_ms, peers), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._target) from None
        return results_from_proto(response, len(queries))

    def report_sighting(self, sighting: Sighting, timeout: float = DEFAULT_CALL_TIMEOUT_S) -> bool:
        """Report a sighting; True if the peer recorded it."""
        try:
            response = self._stub.ReportSighting(sighting_to_proto(sighting), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._target) from None
        return bool(response.recorded)


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[InvestigatorClient]:
    conn: Connection = resolve_connection(args)
    with open_channel(conn) as channel:
        yield InvestigatorClient(channel, conn.target)


# --- check VALUE --------------------------------------------------------------------------------------


def _table(outcome: Outcome) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in TABLE_COLUMNS:
        table.add_column(
            column,
            justify="right" if column in ("confidence", "reports") else "left",
            # a peer's reason is one short line (results.short_detail), and stays one
            no_wrap=column in ("peer", "status", "category"),
            overflow="ellipsis",
        )
    for status, cells in table_rows(outcome):
        style = _STATUS_STYLE[status]
        row = [Text(cells[0]), Text(cells[1], style=style)]
        if status is PeerStatus.MATCH:
            row += [Text(c) for c in cells[2:]]
        else:
            row += [Text(cells[2], style="dim italic"), *(Text(c) for c in cells[3:])]
        table.add_row(*row)
    return table


def render_outcome(
    console: Console, query: Query, outcome: Outcome, *, kind_guessed: bool = False, wide: bool = False
) -> None:
    """Print one checked indicator: a title line, the table of peers, and the summary line; the table
    whole when the output is not a terminal or ``wide`` (:func:`client.tools.tables.print_table`)."""
    title = Text()
    title.append(query.kind, style="bold")
    if kind_guessed:
        title.append(" (guessed; --kind to change)", style="dim")
    title.append(" ")
    title.append(printable(query.value.strip()))
    if outcome.canonical and outcome.canonical != query.value.strip():
        title.append(" → ", style="dim")
        title.append(printable(outcome.canonical))
    if query.region:
        title.append(f"  region {printable(query.region)}", style="dim")
    console.print(title)
    if outcome.peers:
        print_table(console, _table(outcome), wide=wide)
    console.print(Text(summary_line(outcome), style=_VERDICT_STYLE[verdict(outcome)]))


def _check_one(args: argparse.Namespace, out: TextIO) -> int:
    kind = args.kind
    guessed = kind is None
    if guessed:
        kind = guess_kind(args.value)
    query = Query(kind, args.value, args.region or "")
    with _client(args) as client:
        (outcome,) = client.check([query], args.deadline_ms)
    if args.json:
        doc = outcome_document(query, outcome, kind_guessed=guessed)
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        out.flush()
    else:
        console = Console(file=out, highlight=False)
        render_outcome(console, query, outcome, kind_guessed=guessed, wide=args.wide)
    if outcome.error:
        if args.json:
            return EXIT_ERROR
        raise InputError(f"the node refused {query.kind} {query.value!r}: {outcome.error}")
    if not outcome.fully_answered:
        return EXIT_INCOMPLETE
    return EXIT_MATCH if outcome.matches else EXIT_OK


# --- check --file -------------------------------------------------------------------------------------


def _input_format(args: argparse.Namespace) -> InputFormat:
    if args.input_format:
        fmt: InputFormat = args.input_format
        return fmt
    suffix = Path(args.file).suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson", ".json") else "csv"


@contextlib.contextmanager
def open_input(path: str, *, name: str = "") -> Iterator[tuple[TextIO, Callable[[], int], int | None]]:
    """Open a batch file for streaming: the text stream, a function giving bytes read so far, the size.

    ``name`` is what messages call the file (default: ``path``; ``petanda web`` gives the name of an
    upload, not its temporary path).

    Raises:
        InputError: it cannot be read, or its first block shows it is no text (:func:`not_text`).
    """
    if path == "-":
        stdin = sys.stdin.buffer
        _refuse_binary("stdin", stdin.peek(SNIFF_BYTES)[:SNIFF_BYTES] if hasattr(stdin, "peek") else b"")
        text = io.TextIOWrapper(stdin, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            yield text, lambda: 0, None
        finally:
            text.detach()  # leave the process's stdin open
        return
    try:
        raw = io.FileIO(path, "r")
    except OSError as exc:
        raise InputError(f"{name or path}: cannot read: {exc.strerror or exc}") from None
    size = os.fstat(raw.fileno()).st_size
    buffered = io.BufferedReader(raw, 1 << 16)
    try:
        _refuse_binary(name or path, buffered.peek(SNIFF_BYTES)[:SNIFF_BYTES])
    except BaseException:
        buffered.close()
        raise
    with io.TextIOWrapper(buffered, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
        yield text, raw.tell, size


def _refuse_binary(name: str, block: bytes) -> None:
    why = not_text(block)
    if why is not None:
        raise InputError(
            f"{name}: not a text file ({why} in its first {len(block)} bytes); give CSV or JSON lines "
            "in UTF-8 (a spreadsheet: save it as CSV UTF-8)"
        )


class _Output:
    """Stdout, or ``path`` written as ``path.partial`` and renamed to ``path`` once the run reached the
    end of its file.

    A run that stops (a limit, a failure) keeps ``path.partial`` (checks cost quota) for ``--resume``;
    one that wrote nothing removes it. A resumed run reads the earlier results (``path.partial``, else
    ``path``) while it writes ``path.resuming``, which becomes ``path`` (complete) or ``path.partial``
    (stopped again, the earlier results it did not reach copied in). If the process is killed while
    resuming, the next ``--resume`` first merges ``path.resuming`` over the earlier file
    (:meth:`_consolidate`): no answer is lost at any point.
    """

    def __init__(self, path: str | None, source: str, *, resume: bool, fmt: str) -> None:
        self.path = None if path in (None, "-") else path
        self.previous_path: str | None = None
        self.fmt = fmt
        if self.path is None:
            if resume:
                raise InputError("--resume needs --out OUT: it goes on with the results in OUT")
            self.stream: TextIO = sys.stdout
            return
        if source != "-" and os.path.exists(self.path) and os.path.samefile(self.path, source):
            raise InputError(f"--out {self.path} is the input file")
        self.partial = self.path + ".partial"
        self.resuming = self.path + ".resuming"
        if resume:
            if os.path.exists(self.resuming):
                self._consolidate()
            for candidate in (self.partial, self.path):
                if os.path.exists(candidate):
                    self.previous_path = candidate
                    break
        elif os.path.exists(self.partial) or os.path.exists(self.resuming):
            raise InputError(
                f"{self.partial} holds the results of an interrupted run: give --resume to go on with it "
                "(only what was not answered is asked again), or delete it to start over"
            )
        self.target = self.resuming if self.previous_path else self.partial
        try:
            self.stream = open(self.target, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"{self.target}: cannot write: {exc.strerror or exc}") from None

    @property
    def is_terminal(self) -> bool:
        """Whether results go to a terminal (then they are the display, and no progress bar is drawn)."""
        return self.path is None and self.stream.isatty()

    @contextlib.contextmanager
    def previous(self) -> Iterator[Iterator[Previous]]:
        """The earlier results to resume from (none for a fresh run)."""
        if self.previous_path is None:
            yield iter(())
            return
        try:
            with open(self.previous_path, encoding="utf-8", newline="") as f:
                yield read_previous(f, self.fmt, name=self.previous_path)
        except OSError as exc:
            raise InputError(f"{self.previous_path}: cannot read: {exc.strerror or exc}") from None

    def _consolidate(self) -> None:
        """Merge what a killed resume wrote (``.resuming``, newer) over the results it resumed from into
        ``.partial``."""
        base = next((p for p in (self.partial, self.path) if p and os.path.exists(p)), None)
        merging = f"{self.path}.merging"
        with contextlib.ExitStack() as stack:
            newer = stack.enter_context(open(self.resuming, encoding="utf-8", newline=""))
            older: TextIO = (
                stack.enter_context(open(base, encoding="utf-8", newline="")) if base else io.StringIO("")
            )
            out = stack.enter_context(open(merging, "w", encoding="utf-8", newline=""))
            writer = Writer(out, self.fmt)
            for record in _merge(
                read_previous(newer, self.fmt, name=self.resuming),
                read_previous(older, self.fmt, name=base or ""),
            ):
                writer.copy(record)
            out.flush()
            os.fsync(out.fileno())
        os.replace(merging, self.partial)
        os.unlink(self.resuming)

    def finish(self, *, complete: bool, wrote: bool, answered: bool) -> str | None:
        """Close the output; return where the results are (None: stdout, or nothing was written).

        ``complete``: the run reached the end of its file; ``wrote``: it wrote any record; ``answered``:
        any of them is a new answer (not copied from the earlier results).
        """
        if self.path is None:
            self.stream.flush()
            return None
        self.stream.close()
        if complete:
            os.replace(self.target, self.path)
            if self.previous_path == self.partial:
                os.unlink(self.partial)
            return self.path
        if self.previous_path is not None and not answered:
            os.unlink(self.target)  # nothing new: the earlier results stay as they were
            return self.previous_path
        if self.previous_path is not None:
            os.replace(self.target, self.partial)
            return self.partial
        if wrote:
            return self.partial
        os.unlink(self.partial)
        return None


def _merge(newer: Iterator[Previous], older: Iterator[Previous]) -> Iterator[Previous]:
    """Two outputs' records in line order; on the same line, the newer one."""
    a, b = next(newer, None), next(older, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.line <= b.line):
            assert a is not None
            if b is not None and b.line == a.line:
                b = next(older, None)
            yield a
            a = next(newer, None)
        else:
            yield b
            b = next(older, None)


def _progress(quiet: bool, output: _Output) -> Progress:
    stderr = Console(stderr=True)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rows]} rows, {task.fields[matches]} match"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal or output.is_terminal,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _check_file(args: argparse.Namespace) -> int:
    if args.value is not None:
        raise InputError("give either VALUE or --file, not both")
    if args.json:
        raise InputError("--json is for one VALUE; with --file use --format jsonl")
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise InputError(f"--batch-size must be between 1 and {MAX_BATCH}")
    fmt = _input_format(args)
    tally = Tally()
    where: str | None = None
    with open_input(args.file) as (stream, position, size), _client(args) as client:
        output = _Output(args.out, args.file, resume=args.resume, fmt=args.format)
        complete = failed = False
        run: BatchRun | None = None
        try:
            with _progress(args.quiet, output) as progress, output.previous() as previous:
                title = f"checking {args.file}"
                task = progress.add_task(title, total=size, rows=0, matches=0)

                def waiting(seconds: float, why: str) -> None:
                    progress.update(task, description=f"waiting {seconds:.0f} s for {why}")

                def written() -> None:
                    progress.update(
                        task,
                        description=title,
                        completed=position(),
                        rows=tally.rows,
                        matches=tally.counts["match"],
                    )

                run = BatchRun(
                    call=lambda queries, peers: client.check(queries, args.deadline_ms, peers),
                    writer=Writer(output.stream, args.format),
                    tally=tally,
                    clock=time.monotonic,
                    sleep=time.sleep,
                    batch_size=args.batch_size,
                    max_wait=args.max_wait,
                    on_wait=waiting,
                    on_written=written,
                )
                try:
                    rows = read_rows(stream, fmt, kind=args.kind, region=args.region or "")
                    run.run(rows, previous, name=output.previous_path or "")
                except BaseException:
                    failed = True
                    run.salvage()
                    raise
                complete = not tally.stopped
        finally:
            answered = run is not None and run.answered > 0
            where = output.finish(
                complete=complete and tally.rows > 0, wrote=tally.rows > 0, answered=answered
            )
            if failed and where is not None:
                print(f"petanda: {_resume_hint(where)}", file=sys.stderr)
    if tally.rows == 0:
        raise InputError(f"{args.file}: no rows to check (it is empty, or holds only blank lines, a header)")
    _report(args, tally, where)
    return tally.exit_status


def _resume_hint(where: str) -> str:
    return (
        f"the results so far are in {where}: run the same command with --resume to go on (only what was "
        "not answered is asked again)"
    )


def _report(args: argparse.Namespace, tally: Tally, where: str | None) -> None:
    """The end of a run on stderr: why it stopped (always), then (unless --quiet) each peer that left
    rows unanswered with its reason, and the summary line last."""
    if tally.stopped:
        print(f"petanda: stopped before the end of {args.file}: {tally.stopped}", file=sys.stderr)
        if where is not None:
            print(f"petanda: {_resume_hint(where)}", file=sys.stderr)
    if args.quiet:
        return
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in tally.peer_lines():
        console.print(Text(line))
    if tally.incomplete and not tally.stopped and where is not None:
        console.print(
            Text(f"to ask the peers that did not answer again: the same command with --resume ({where})")
        )
    console.print(Text(tally.summary()))


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``petanda check``: returns 0 no match, 1 a match, 2 an error (or raises PetandaError),
    3 not every peer answered (or a ``--file`` run stopped at a limit: ``--resume`` goes on)."""
    if args.kind is not None and args.kind not in KINDS:
        raise UnknownKind(args.kind, KINDS)
    if args.file is not None:
        return _check_file(args)
    if args.value is None:
        raise InputError("nothing to check: give a VALUE or --file FILE")
    for flag in ("out", "input_format"):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} is for --file")
    if args.resume:
        raise InputError("--resume is for --file")
    return _check_one(args, sys.stdout)


# --- sighting -----------------------------------------------------------------------------------------


def run_sighting(args: argparse.Namespace) -> int:
    """Handler of ``petanda sighting``: prints recorded (exit 0) or not recorded (exit 1)."""
    sighting = Sighting(args.peer, args.kind, args.tier, args.version, args.tag.lower())
    with _client(args) as client:
        recorded = client.report_sighting(sighting)
    print("recorded" if recorded else "not recorded")
    return EXIT_OK if recorded else EXIT_MATCH


# --- argparse -----------------------------------------------------------------------------------------

_CHECK_EPILOG: Final = """\
exit status:
  0  no peer holds the indicator(s), and every peer answered for every one
  1  at least one peer holds at least one indicator (and every peer answered)
  2  an error: bad input, a refused value, a bad row in --file, unreachable node, no rows, ...
  3  not every peer answered for every indicator (rate limited, unavailable, stale), or a --file run
     stopped at a limit it cannot wait for (a daily quota): run it again with --resume

The kind is guessed when --kind is not given (URL, IP, platform:name, chain:address, CC:BANK:ACCOUNT,
e-mail, wallet, IBAN, phone, domain); an ambiguous value asks for --kind.
--file reads CSV (kind,value[,region], or a header naming value and optionally kind, region) or JSON
lines ({"kind": ..., "value": ..., "region": ...}) and writes one output row per input row. It paces
itself to the limits of your node and the peers, asks again (after the wait they name) only the rows and
peers that refused, and with --resume goes on from OUT.partial (or OUT) without asking again what was
answered. See docs/investigators.md."""


def _uint32(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} is out of range")
    return value


def _uint64(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{value} is out of range")
    return value


def add_check_commands(subparsers: Any) -> None:
    """Register ``check`` and ``sighting`` on the ``petanda`` parser's subparsers (``handler`` defaults)."""
    kinds = ", ".join(KINDS)
    p = subparsers.add_parser(
        "check",
        help="check an indicator, or a file of them, against every peer",
        description="Check indicators against every peer of the federation through your national node.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("value", metavar="VALUE", nargs="?", help="the indicator as you have it")
    p.add_argument("--kind", metavar="KIND", help=f"one of: {kinds} (default: guessed)")
    p.add_argument(
        "--region", metavar="CC", help="region of national phone numbers (default: the node's country)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument(
        "--wide",
        action="store_true",
        help="print the table whole even on a terminal (it is whole already when stdout is not one)",
    )
    p.add_argument(
        "--deadline-ms", type=_uint32, default=0, metavar="N", help="fan-out deadline (0: node default)"
    )
    batch = p.add_argument_group("batch")
    batch.add_argument(
        "--file", metavar="FILE", help="check every row of a CSV or JSON-lines file ('-': stdin)"
    )
    batch.add_argument(
        "--input-format", choices=("csv", "jsonl"), help="default: from the extension, else csv"
    )
    batch.add_argument("--out", metavar="OUT", help="write results to OUT (default: stdout)")
    batch.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv", help="output format (default: csv)"
    )
    batch.add_argument(
        "--batch-size",
        type=int,
        default=MAX_BATCH,
        metavar="N",
        help=f"queries per call (default {MAX_BATCH})",
    )
    batch.add_argument(
        "--resume",
        action="store_true",
        help="go on with the results in OUT.partial (or OUT): copy what was answered, ask the rest",
    )
    batch.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        metavar="S",
        help="longest wait for a rate limit before stopping the run (default 300 s)",
    )
    batch.add_argument("--quiet", action="store_true", help="no progress bar and no summary on stderr")
    add_connection_arguments(p)
    p.set_defaults(handler=run_check)

    s = subparsers.add_parser(
        "sighting",
        help="report a sighting of a match to the peer that holds it",
        description="Report a sighting; the values come from the match's metadata in `petanda check --json`.",
        epilog="exit status: 0 recorded, 1 not recorded, 2 an error",
    )
    s.add_argument("--peer", required=True, metavar="PEER", help="the peer that matched (peer_id)")
    s.add_argument("--kind", required=True, metavar="KIND", help=f"one of: {kinds}")
    s.add_argument("--tier", required=True, choices=("oprf", "hmac"), help="metadata.tier")
    s.add_argument("--version", required=True, type=_uint64, metavar="N", help="metadata.version")
    s.add_argument("--tag", required=True, metavar="HEX", help="metadata.tag")
    add_connection_arguments(s)
    s.set_defaults(handler=run_sighting)
