"""``petanda audit fetch|verify|report``: the auditor's tools (an adapter: files, gRPC, terminal).

A *fetched directory* holds a node's audit log as the auditor received it (``docs/auditors.md``)::

    DIR/node.json          {"node_id": "MY", "public_key": "<hex raw Ed25519>", "fetched_at": <unix s>}
    DIR/entries.jsonl      entry i on line i: exactly the leaf bytes, entries [0, latest head size)
    DIR/tree-heads.jsonl   every signed tree head ever fetched, TreeHead.to_json per line, by size
    DIR/recoveries.jsonl   the node's recovery statements, {"sequence": n, "statement": "<hex>"} per line
                           (absent until the node has one)
    DIR/recovered-N/       the earlier fetch a restore erased the end of (statement N), in this layout

``fetch`` fills or extends it over mutual TLS up to a tree head the node signs for the fetch
(``GetFreshTreeHead``, rate-limited per auditor; within the limit, the latest head and how many entries
it leaves out), checking signatures, forks, the consistency proof from the previous fetch and every
root before it writes anything; what fails those checks is kept, in the
same layout, under ``DIR/rejected-<unix time>/`` for ``verify`` to pin down. A restore that erased the end
of the fetched log is not a fork when the node's signed recovery statement covers every head fetched
(``docs/auditors.md``, "A recovery is not a fork"): the earlier copy moves to ``DIR/recovered-N/`` and the
fetch continues from the restored log. ``verify`` checks a
directory offline; ``report`` summarises it in the terminal and as a self-contained HTML file.

One module of this size: three commands over the one fetched-directory format they share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.protocol.auditlog import (
    LogBreak,
    LogFork,
    TreeHead,
    check_heads,
    decode_entry,
    verify_log,
    verify_tree_head,
)
from client.protocol.enumeration import EXPOSURE_HEADERS, Rules
from client.protocol.errors import (
    ConsistencyProofError,
    EncodingError,
    InputError,
    PermissionDenied,
    ProtocolError,
    SignatureError,
    WrongNodeError,
)
from client.protocol.merkle import CompactRange, leaf_hash, verify_consistency
from client.protocol.recovery import (
    RecoveryStatement,
    check_covers,
    check_one_per_sequence,
    verify_statement,
)
from client.tools.connection import add_connection_arguments
from client.tools.report import (
    CHECKS_NOTE,
    COLUMNS,
    HEADINGS,
    Summary,
    Verification,
    alert_detail,
    alert_party,
    exposure,
    exposure_rows,
    render_html,
    summarise,
    table_rows,
    total_row,
)
from client.tools.tables import print_table
from client.transport.convert import tree_head_from_proto

if TYPE_CHECKING:
    from client._proto.petanda.v1 import auditor_pb2, common_pb2

__all__ = [
    "DEFAULT_PAGE",
    "ENTRIES_FILE",
    "HEADS_FILE",
    "NODE_FILE",
    "RECOVERIES_FILE",
    "AuditorStub",
    "FetchResult",
    "FetchedLog",
    "add_audit_commands",
    "fetch_log",
    "load_dir",
    "summarise_dir",
    "verify_dir",
    "verify_recoveries",
]

NODE_FILE: Final = "node.json"
ENTRIES_FILE: Final = "entries.jsonl"
HEADS_FILE: Final = "tree-heads.jsonl"
RECOVERIES_FILE: Final = "recoveries.jsonl"
#: ``DIR/recovered-N/``: the copy a restore erased the end of, under recovery statement N.
RECOVERED_PREFIX: Final = "recovered-"
#: Entries asked for per GetEntries call.
DEFAULT_PAGE: Final = 10_000
#: Deadline of a unary call, and of one page of entries, in seconds.
UNARY_TIMEOUT: Final = 30.0
PAGE_TIMEOUT: Final = 300.0

_AUDIT_HELP: Final = "The auditor's tools: fetch a node's audit log, verify it offline, report on it."
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1


# --- the fetched directory ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchedLog:
    """The contents of a fetched directory (read by :func:`load_dir`)."""

    node_id: str
    public_key: bytes
    fetched_at: int
    entries: list[bytes]
    heads: list[TreeHead]
    #: The node's recovery statements, by sequence (``recoveries.jsonl``; signatures checked by
    #: :func:`verify_recoveries`).
    recoveries: list[RecoveryStatement] = field(default_factory=list)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: missing (not a fetched audit directory?)") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not JSON: {error}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: not a JSON object")
    return value


def _read_lines(path: Path) -> list[bytes]:
    """The lines of ``path`` without their ``\\n``; a missing last newline is tolerated."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: missing (not a fetched audit directory?)") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _read_heads(path: Path) -> list[TreeHead]:
    heads = []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            heads.append(TreeHead.from_json(json.loads(line)))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path}:{number}: not JSON: {error}") from None
        except EncodingError as error:
            raise InputError(f"{path}:{number}: {error}") from None
    return heads


def _read_recoveries(path: Path) -> list[RecoveryStatement]:
    if not path.exists():
        return []
    statements = []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            value = json.loads(line)
            statement = RecoveryStatement.from_bytes(bytes.fromhex(value["statement"]))
            if value["sequence"] != statement.sequence:
                raise EncodingError(f"sequence {value['sequence']}, the statement's {statement.sequence}")
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path}:{number}: not a recovery statement line: {error!r}") from None
        except EncodingError as error:
            raise InputError(f"{path}:{number}: {error}") from None
        statements.append(statement)
    return statements


def _recovery_lines(statements: Sequence[RecoveryStatement]) -> list[bytes]:
    return [
        json.dumps({"sequence": s.sequence, "statement": s.to_bytes().hex()}, sort_keys=True).encode() + b"\n"
        for s in sorted(statements, key=lambda s: s.sequence)
    ]


def load_dir(directory: str | os.PathLike[str]) -> FetchedLog:
    """Read a fetched directory.

    Raises:
        InputError: a file is missing or unreadable, or ``node.json`` or a tree head is malformed (the
            entries themselves are not checked here: :func:`verify_dir` does that).
    """
    root = Path(directory)
    node = _read_json_object(root / NODE_FILE)
    node_id, public_key, fetched_at = node.get("node_id"), node.get("public_key"), node.get("fetched_at")
    if not isinstance(node_id, str) or not node_id:
        raise InputError(f"{root / NODE_FILE}: node_id must be a non-empty string")
    try:
        key = bytes.fromhex(public_key) if isinstance(public_key, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise InputError(f"{root / NODE_FILE}: public_key must be 32 bytes in hex")
    if type(fetched_at) is not int:
        raise InputError(f"{root / NODE_FILE}: fetched_at must be an integer (unix seconds)")
    return FetchedLog(
        node_id,
        key,
        fetched_at,
        _read_lines(root / ENTRIES_FILE),
        _read_heads(root / HEADS_FILE),
        _read_recoveries(root / RECOVERIES_FILE),
    )


def _write_atomic(path: Path, chunks: Iterator[bytes] | Sequence[bytes]) -> None:
    """Write ``path`` through a temporary file, fsync it and rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _head_lines(heads: Sequence[TreeHead]) -> list[bytes]:
    ordered = sorted(set(heads), key=lambda h: (h.tree_size, h.timestamp, h.root_hash, h.signature))
    return [json.dumps(h.to_json(), sort_keys=True, separators=(",", ":")).encode() + b"\n" for h in ordered]


def _write_dir(
    directory: Path,
    node_id: str,
    public_key: bytes,
    fetched_at: int,
    old_entries: Sequence[bytes],
    new_entries: Sequence[bytes],
    heads: Sequence[TreeHead],
    recoveries: Sequence[RecoveryStatement] = (),
) -> None:
    """Write a fetched directory; the tree heads go last, so a crash never leaves heads without entries
    (the recovery statements, which only explain heads, before them)."""
    directory.mkdir(parents=True, exist_ok=True)
    node = {"node_id": node_id, "public_key": public_key.hex(), "fetched_at": fetched_at}
    _write_atomic(directory / NODE_FILE, [json.dumps(node, sort_keys=True, indent=1).encode() + b"\n"])
    _write_atomic(
        directory / ENTRIES_FILE, (entry + b"\n" for part in (old_entries, new_entries) for entry in part)
    )
    if recoveries:
        _write_atomic(directory / RECOVERIES_FILE, _recovery_lines(recoveries))
    _write_atomic(directory / HEADS_FILE, _head_lines(heads))
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- verify -------------------------------------------------------------------------------------------


def verify_dir(log: FetchedLog, *, pinned_key: bytes | None = None) -> TreeHead | None:
    """Verify a loaded directory completely; return its latest tree head (None for no head).

    Raises:
        SignatureError: the key differs from ``pinned_key``, or a head is not signed by it.
        LogFork: two heads cannot belong to one append-only log.
        LogBreak: the entries are not what the heads sign (the first bad index).
    """
    if pinned_key is not None and pinned_key != log.public_key:
        raise SignatureError(
            f"node.json holds public key {log.public_key.hex()}, not the expected {pinned_key.hex()}"
        )
    key = Ed25519PublicKey.from_public_bytes(log.public_key)
    verify_log(log.entries, log.heads, key, node_id=log.node_id)
    if not log.heads:
        return None
    return max(log.heads, key=lambda h: (h.tree_size, h.timestamp))


def verify_recoveries(directory: str | os.PathLike[str] | None, log: FetchedLog) -> list[str]:
    """Check the recovery statements of a verified directory; return a line describing each.

    Every statement must be signed by the node (statement and both heads), numbered once, and name as
    its new head a prefix of the directory's entries; the earlier copy it erased the end of, kept in
    ``recovered-N/`` of ``directory`` (when given), must verify on its own and be covered by it (no head
    past its old head).

    Raises:
        SignatureError: a statement is not signed by the node.
        LogFork: two statements of one number, a statement that does not cover the earlier copy, or a
            new head that is not the directory's log.
        InputError, LogBreak: ``recovered-N/`` is unreadable or does not verify.
    """
    key = Ed25519PublicKey.from_public_bytes(log.public_key)
    check_one_per_sequence(log.recoveries)
    lines = []
    for statement in log.recoveries:
        verify_statement(statement, key, expected_node=log.node_id)
        new, old = statement.new_head, statement.old_head
        if len(log.entries) >= new.tree_size and _prefix_range(log.entries[: new.tree_size]).root() != (
            new.root_hash
        ):
            raise LogFork(
                f"recovery statement {statement.sequence}: its new head of size {new.tree_size} is not "
                "this directory's log"
            )
        line = (
            f"recovery {statement.sequence} signed {_when(statement.issued_at)}: the node went back from "
            f"size {old.tree_size} to {new.tree_size} ({statement.reason!r})"
        )
        evidence = None if directory is None else Path(directory) / f"{RECOVERED_PREFIX}{statement.sequence}"
        if evidence is not None and evidence.is_dir():
            earlier = load_dir(evidence)
            held = verify_dir(earlier, pinned_key=log.public_key)
            if held is not None:
                check_covers(statement, held_head=held, held_manifest=None)
            line += f"; the earlier copy, {len(earlier.entries)} entries, verified in {evidence}"
        lines.append(line)
    return lines


def _when(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _pinned(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise InputError("--public-key must be 64 hex digits (a raw Ed25519 key)")
    return key


def _cmd_verify(args: argparse.Namespace) -> int:
    log = load_dir(args.directory)
    try:
        latest = verify_dir(log, pinned_key=_pinned(args.public_key))
        recoveries = verify_recoveries(args.directory, log)
    except LogBreak as error:
        print(f"FAILED: first bad index {error.index}: {error.reason}")
        return EXIT_FAILED
    except LogFork as error:
        print(f"FAILED: fork: {error}")
        return EXIT_FAILED
    except SignatureError as error:
        print(f"FAILED: signature: {error}")
        return EXIT_FAILED
    if latest is None:
        print(f"OK: 0 entries, 0 tree heads (node {log.node_id}: nothing signed yet)")
    else:
        print(
            f"OK: {len(log.entries)} entries, {len(set(log.heads))} tree heads, latest root "
            f"{latest.root_hash.hex()} (size {latest.tree_size}, signed {_when(latest.timestamp)}, "
            f"node {log.node_id})"
        )
    for line in recoveries:
        print(f"  {line}")
    return EXIT_OK


# --- report -------------------------------------------------------------------------------------------


def _verification(
    log: FetchedLog, pinned_key: bytes | None, directory: str | os.PathLike[str] | None
) -> Verification:
    try:
        latest = verify_dir(log, pinned_key=pinned_key)
        recoveries = verify_recoveries(directory, log)
    except LogBreak as error:
        return Verification(
            False, str(error), log.node_id, len(log.entries), "-", len(log.heads), error.index
        )
    except (LogFork, SignatureError) as error:
        return Verification(False, str(error), log.node_id, len(log.entries), "-", len(log.heads))
    root = "-" if latest is None else latest.root_hash.hex()
    signed = "no tree head yet" if latest is None else f"latest head signed {_when(latest.timestamp)}"
    message = f"Every entry, hash-chain link, signature and root checks out; {signed}."
    if recoveries:
        message += " " + "; ".join(recoveries) + "."
    return Verification(True, message, log.node_id, len(log.entries), root, len(set(log.heads)))


def _decodable(entries: Sequence[bytes]) -> Iterator[dict[str, Any]]:
    for entry in entries:
        try:
            yield decode_entry(entry)
        except EncodingError:
            continue


def _print_tables(
    summary: Summary, verification: Verification, detail: bool, rules: Rules | None = None
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    style = "bold white on green" if verification.ok else "bold white on red"
    status = "log verified" if verification.ok else "LOG VERIFICATION FAILED"
    console.print(f"[{style}] {status} [/] {verification.message}", highlight=False)
    groups: list[tuple[str, tuple[str, ...], list[list[str]]]] = [
        ("Per peer or actor", ("peer",), table_rows(summary, "party")),
        ("Per UTC day", ("day",), table_rows(summary, "day")),
        ("Per kind", ("kind",), table_rows(summary, "kind")),
    ]
    if detail:
        groups.append(("Per peer, day and kind", ("peer", "day", "kind"), table_rows(summary)))
    for title, keys, rows in groups:
        table = Table(title=f"{title} ({CHECKS_NOTE})", title_justify="left")
        for name in keys:
            table.add_column(name, no_wrap=True)
        for name in HEADINGS:
            table.add_column(name, justify="right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        table.add_section()
        table.add_row(*total_row(summary, len(keys)), style="bold")
        print_table(console, table, wide=True)  # a cropped figure would be wrong
    for heading, text in COLUMNS.values():
        console.print(f"  [bold]{heading}[/]: {text}", highlight=False)
    _print_exposure(console, summary, verification.node_id, rules)


def _print_exposure(console: Any, summary: Summary, node_id: str, rules: Rules | None) -> None:
    """The enumeration figures (``docs/auditors.md``, "Enumeration budget")."""
    from rich.table import Table

    found = exposure(summary, node_id, rules=rules)
    title = f"OPRF evaluations per peer and kind, windows ending {found['day']} (UTC)"
    if found["space"]:
        title += f"; home numbering space of {found['region']}: {found['space']}"
    table = Table(*EXPOSURE_HEADERS, title=title, title_justify="left")
    for row in exposure_rows(summary, node_id):
        table.add_row(*row)
    print_table(console, table, wide=True)
    for item in found["found"]:
        console.print(
            f"[bold red]enumeration pattern[/] {item['peer']} {item['kind']}: {item['rule']} met on "
            f"{item['days']} day(s), first {item['first_day']}",
            highlight=False,
        )
    for alert in summary.alerts:
        console.print(
            f"[bold]{alert.get('action')}[/] {alert_party(alert)} {alert.get('kind', '-')}: "
            f"{alert_detail(alert)}",
            highlight=False,
        )
    if summary.reads:
        reads = Table(
            "peer", "method", "calls", "entries", title="Aggregated reads (peer.reads)", title_justify="left"
        )
        for (peer, method), (calls, entries) in sorted(summary.reads.items()):
            reads.add_row(peer, method, str(calls), str(entries))
        print_table(console, reads, wide=True)


def summarise_dir(
    log: FetchedLog, *, pinned_key: bytes | None = None, directory: str | os.PathLike[str] | None = None
) -> tuple[Summary, Verification]:
    """What ``audit report`` draws from a fetched log: its summary, and its verification (the banner;
    the copies a restore erased, ``recovered-N/``, are checked when ``directory`` is given)."""
    return summarise(_decodable(log.entries)), _verification(log, pinned_key, directory)


def _cmd_report(args: argparse.Namespace) -> int:
    log = load_dir(args.directory)
    summary, verification = summarise_dir(log, pinned_key=_pinned(args.public_key), directory=args.directory)
    defaults = Rules()
    rules = Rules(
        quota_share=defaults.quota_share if args.alert_share is None else args.alert_share,
        days=defaults.days if args.alert_days is None else args.alert_days,
        space_share=defaults.space_share if args.alert_space_share is None else args.alert_space_share,
    )
    _print_tables(summary, verification, args.detail, rules)
    if args.html is not None:
        page = render_html(summary, verification, generated_at=int(time.time()), rules=rules)
        try:
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as error:
            raise InputError(f"{args.html}: cannot write: {error.strerror}") from None
        print(f"HTML report written to {args.html}")
    return EXIT_OK if verification.ok else EXIT_FAILED


# --- fetch --------------------------------------------------------------------------------------------


class AuditorStub(Protocol):
    """The calls of ``AuditorServiceStub`` that :func:`fetch_log` makes (a fake may stand in for it)."""

    def GetPublicKey(
        self, request: auditor_pb2.GetPublicKeyRequest, *, timeout: float
    ) -> auditor_pb2.GetPublicKeyResponse: ...

    def GetTreeHead(
        self, request: auditor_pb2.GetTreeHeadRequest, *, timeout: float
    ) -> common_pb2.SignedTreeHead: ...

    def GetFreshTreeHead(
        self, request: auditor_pb2.GetFreshTreeHeadRequest, *, timeout: float
    ) -> auditor_pb2.FreshTreeHead: ...

    def ListTreeHeads(
        self, request: auditor_pb2.ListTreeHeadsRequest, *, timeout: float
    ) -> Iterator[common_pb2.SignedTreeHead]: ...

    def GetEntries(
        self, request: auditor_pb2.GetEntriesRequest, *, timeout: float
    ) -> Iterator[auditor_pb2.AuditEntry]: ...

    def GetConsistencyProof(
        self, request: auditor_pb2.GetConsistencyProofRequest, *, timeout: float
    ) -> auditor_pb2.ProofResponse: ...

    def ListRecoveries(
        self, request: auditor_pb2.ListRecoveriesRequest, *, timeout: float
    ) -> auditor_pb2.ListRecoveriesResponse: ...


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What one fetch added."""

    node_id: str
    previous_size: int
    tree_size: int
    root_hash: bytes
    heads: int
    #: When the latest head was signed (unix seconds).
    signed_at: int = 0
    #: Entries in the node's log when the head was chosen; None if the node does not say (older node).
    log_size: int | None = None
    #: Whether the node signed the latest head for this fetch.
    signed_now: bool = False
    #: When the node refused a new head (the auditor's rate limit): seconds until it would sign one.
    retry_after_s: float = 0.0
    #: Recovery statements that erased the end of the earlier fetch (its copy kept in recovered-N/).
    recovered: tuple[RecoveryStatement, ...] = ()

    @property
    def unsigned(self) -> int:
        """Entries the node holds beyond the fetched head (not fetched: no signature covers them yet)."""
        return 0 if self.log_size is None else max(0, self.log_size - self.tree_size)


def _fresh_head(stub: AuditorStub) -> tuple[TreeHead, int | None, bool, float]:
    """The node's head over its whole log now (``GetFreshTreeHead``): the head, the log's size, whether
    it was signed for this call, and the seconds to wait for a new one when refused. A node older than
    that call answers UNIMPLEMENTED: then its latest head, the log's size unknown."""
    import grpc

    from client._proto.petanda.v1 import auditor_pb2

    try:
        fresh = stub.GetFreshTreeHead(auditor_pb2.GetFreshTreeHeadRequest(), timeout=UNARY_TIMEOUT)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        latest = stub.GetTreeHead(auditor_pb2.GetTreeHeadRequest(), timeout=UNARY_TIMEOUT)
        return tree_head_from_proto(latest), None, False, 0.0
    head = tree_head_from_proto(fresh.head)
    return head, fresh.log_size, fresh.signed_now, fresh.retry_after_ms / 1000


def _recoveries(stub: AuditorStub, key: Ed25519PublicKey, node_id: str) -> list[RecoveryStatement]:
    """The node's recovery statements, each verified, by sequence; none from a node older than the call."""
    import grpc

    from client._proto.petanda.v1 import auditor_pb2

    try:
        response = stub.ListRecoveries(auditor_pb2.ListRecoveriesRequest(), timeout=UNARY_TIMEOUT)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        return []
    statements = [RecoveryStatement.from_bytes(bytes(raw)) for raw in response.statements]
    for statement in statements:
        verify_statement(statement, key, expected_node=node_id)
    return sorted(statements, key=lambda s: s.sequence)


def _checked_heads(
    received: Sequence[TreeHead], known: Sequence[TreeHead], key: Ed25519PublicKey, node_id: str
) -> list[TreeHead]:
    """Verify ``received`` heads and return the union with ``known`` (raises on a bad or forked head)."""
    for head in received:
        if head.node_id != node_id:
            raise WrongNodeError(f"the node sent a tree head of node {head.node_id!r}, not {node_id!r}")
        verify_tree_head(head, key)
    union = sorted(set(known) | set(received), key=lambda h: (h.tree_size, h.timestamp))
    check_heads(union)
    return union


def _entries(
    stub: AuditorStub, start: int, end: int, page: int, progress: Callable[[int], None]
) -> list[bytes]:
    """Entries ``[start, end)``, page by page, checking the index of every one."""
    from client._proto.petanda.v1 import auditor_pb2

    out: list[bytes] = []
    position = start
    while position < end:
        stop = min(end, position + page)
        before = position
        for item in stub.GetEntries(
            auditor_pb2.GetEntriesRequest(start=position, end=stop), timeout=PAGE_TIMEOUT
        ):
            if item.index != position or position >= stop:
                raise ProtocolError(f"the node sent entry {item.index} where entry {position} was expected")
            out.append(bytes(item.entry))
            position += 1
        if position == before:
            raise ProtocolError(f"the node sent no entries for [{position}, {stop})")
        progress(position)
    return out


def _prefix_range(entries: Sequence[bytes]) -> CompactRange:
    accumulator = CompactRange()
    for entry in entries:
        accumulator.append(leaf_hash(entry))
    return accumulator


def fetch_log(
    stub: AuditorStub,
    directory: str | os.PathLike[str],
    *,
    now: int,
    page: int = DEFAULT_PAGE,
    progress: Callable[[int], None] = lambda _: None,
) -> FetchResult:
    """Fetch a node's audit log into ``directory``, or extend an earlier fetch there.

    The node is asked for a head over everything it holds now (``GetFreshTreeHead``); the entries up to
    that head are fetched, and :attr:`FetchResult.unsigned` says how many it left out when the node's
    rate limit gave its latest head instead.

    Checks before writing: the node id and key are those of the earlier fetch; every head is signed by
    the key and no two heads fork (old heads included); the consistency proof from the previous latest
    head to the new one; and that the entries give every head's root. Material that fails a check is
    written to ``DIR/rejected-<now>/`` and the error is raised.

    Raises:
        InputError: the directory holds something that is not an earlier fetch.
        SignatureError, WrongNodeError, LogFork, ConsistencyProofError, LogBreak, ProtocolError: the node
            misbehaved (see the message).
        PeerError: a call failed.
    """
    from client._proto.petanda.v1 import auditor_pb2

    root = Path(directory)
    if page < 1:
        raise InputError("--page must be at least 1")
    identity = stub.GetPublicKey(auditor_pb2.GetPublicKeyRequest(), timeout=UNARY_TIMEOUT)
    node_id, raw_key = identity.node_id, bytes(identity.public_key)
    if len(raw_key) != 32:
        raise EncodingError(f"the node's public key is {len(raw_key)} bytes, not 32")
    key = Ed25519PublicKey.from_public_bytes(raw_key)

    old_entries: list[bytes] = []
    old_heads: list[TreeHead] = []
    known: list[RecoveryStatement] = []
    fetched_before = now
    if (root / NODE_FILE).exists():
        old = load_dir(root)
        if old.node_id != node_id:
            raise WrongNodeError(f"{root} holds the log of node {old.node_id}, but the node is {node_id}")
        if old.public_key != raw_key:
            raise SignatureError(
                f"the node's key {raw_key.hex()} differs from {old.public_key.hex()} of the earlier fetch "
                f"in {root}; fetch into a new directory if the operators confirm a key rotation"
            )
        old_heads, known, fetched_before = old.heads, old.recoveries, old.fetched_at
        old_size = max((h.tree_size for h in old_heads), default=0)
        if len(old.entries) < old_size:
            raise InputError(
                f"{root}: holds {len(old.entries)} entries, fewer than its heads cover ({old_size})"
            )
        # Entries past the last head (an interrupted fetch) are fetched again.
        old_entries = old.entries[:old_size]
    elif root.exists() and any(not p.name.startswith("rejected-") for p in root.iterdir()):
        raise InputError(f"{root}: not empty and not a fetched audit directory")

    def reject(entries: Sequence[bytes], heads: Sequence[TreeHead]) -> Path:
        where = root / f"rejected-{now}"
        _write_dir(where, node_id, raw_key, now, old_entries, entries, heads)
        return where

    received = [
        tree_head_from_proto(h)
        for h in stub.ListTreeHeads(auditor_pb2.ListTreeHeadsRequest(), timeout=UNARY_TIMEOUT)
    ]
    # A restore that erased the end of the earlier fetch: with a statement covering every head fetched,
    # that copy becomes evidence (recovered-N/) and the fetch goes on from the last head both logs share
    # (one the restored node still lists); the consistency proof below then runs from that head.
    statements = _recoveries(stub, key, node_id)
    recovered: list[RecoveryStatement] = []
    try:
        check_one_per_sequence([*known, *statements])
        for statement in statements:
            new = statement.new_head
            if statement in known or not any(h.tree_size > new.tree_size for h in old_heads):
                continue
            held = max(old_heads, key=lambda h: (h.tree_size, h.timestamp))
            check_covers(statement, held_head=held, held_manifest=None)
            evidence = root / f"{RECOVERED_PREFIX}{statement.sequence}"
            _write_dir(evidence, node_id, raw_key, fetched_before, old_entries, [], old_heads, known)
            listed = set(received)
            old_heads = [h for h in old_heads if h.tree_size <= new.tree_size and h in listed]
            old_entries = old_entries[: max((h.tree_size for h in old_heads), default=0)]
            received.append(new)
            recovered.append(statement)
    except LogFork as error:
        where = reject([], old_heads)
        raise LogFork(f"{error} (evidence kept in {where})") from None
    recoveries = [*known, *(s for s in statements if s not in known)]
    fresh, log_size, signed_now, retry_after_s = _fresh_head(stub)
    received.append(fresh)
    try:
        heads = _checked_heads(received, old_heads, key, node_id)
    except (LogFork, SignatureError) as error:
        where = reject([], [*old_heads, *received])
        raise type(error)(f"{error} (evidence kept in {where})") from None
    latest = max(heads, key=lambda h: (h.tree_size, h.timestamp))
    old_latest = max(old_heads, key=lambda h: (h.tree_size, h.timestamp), default=None)

    if old_latest is not None and 0 < old_latest.tree_size < latest.tree_size:
        response = stub.GetConsistencyProof(
            auditor_pb2.GetConsistencyProofRequest(first=old_latest.tree_size, second=latest.tree_size),
            timeout=UNARY_TIMEOUT,
        )
        try:
            verify_consistency(
                old_latest.tree_size,
                latest.tree_size,
                old_latest.root_hash,
                latest.root_hash,
                [bytes(h) for h in response.hashes],
            )
        except ConsistencyProofError as error:
            where = reject([], heads)
            raise ConsistencyProofError(
                f"the node's tree of size {latest.tree_size} does not extend the one of size "
                f"{old_latest.tree_size} fetched before: {error} (evidence kept in {where})"
            ) from None

    accumulator = _prefix_range(old_entries)
    if old_latest is not None and accumulator.root() != old_latest.root_hash:
        raise InputError(
            f"{root}: its entries do not give the root of its own latest tree head; run "
            f"'petanda audit verify {root}' and fetch into a new directory"
        )
    new_entries = _entries(stub, len(old_entries), latest.tree_size, page, progress)
    for head in heads:
        if head.tree_size <= len(old_entries):
            continue
        while accumulator.size < head.tree_size:
            accumulator.append(leaf_hash(new_entries[accumulator.size - len(old_entries)]))
        if accumulator.root() != head.root_hash:
            where = reject(new_entries, heads)
            raise LogBreak(
                head.tree_size - 1,
                f"the entries the node sent do not give the root it signed for size {head.tree_size}; "
                f"run 'petanda audit verify {where}' to find the first bad entry",
            )
    _write_dir(root, node_id, raw_key, now, old_entries, new_entries, heads, recoveries)
    return FetchResult(
        node_id,
        len(old_entries),
        latest.tree_size,
        latest.root_hash,
        len(heads),
        signed_at=latest.timestamp,
        log_size=log_size,
        signed_now=signed_now,
        retry_after_s=retry_after_s,
        recovered=tuple(recovered),
    )


def _cmd_fetch(args: argparse.Namespace) -> int:
    import grpc

    from client._proto.petanda.v1 import auditor_pb2_grpc
    from client.tools.connection import open_channel, resolve_connection
    from client.transport.status import error_from_rpc

    # Flags, environment, config file, as for `petanda check`. Without a server name the node must prove
    # it is the auditor's own state's node.
    conn = resolve_connection(args)
    channel = open_channel(conn)

    def progress(position: int) -> None:
        print(f"  {position} entries", file=sys.stderr, flush=True)

    try:
        with channel:
            stub = auditor_pb2_grpc.AuditorServiceStub(channel)
            result = fetch_log(stub, args.directory, now=int(time.time()), page=args.page, progress=progress)
    except grpc.RpcError as error:
        failure = error_from_rpc(error, conn.target)
        if isinstance(failure, PermissionDenied):  # the usual cause: an investigator's certificate
            hint = f"{failure} ({error.code().name}); is your certificate an auditor's?"
            raise PermissionDenied(hint) from None
        raise failure from None
    for statement in result.recovered:
        print(
            f"node {result.node_id} was restored (recovery statement {statement.sequence}, "
            f"{statement.reason!r}): entries {statement.new_head.tree_size} to "
            f"{statement.old_head.tree_size} of the earlier fetch were erased; that copy is kept in "
            f"{Path(args.directory) / f'{RECOVERED_PREFIX}{statement.sequence}'}"
        )
    print(
        f"fetched node {result.node_id}: {result.tree_size - result.previous_size} new entries "
        f"({result.previous_size} -> {result.tree_size}), {result.heads} tree heads, latest root "
        f"{result.root_hash.hex()}; run 'petanda audit verify {args.directory}'"
    )
    print(_freshness(result))
    return EXIT_OK


def _freshness(result: FetchResult) -> str:
    """One line saying how far the fetched log reaches (``docs/auditors.md``, "Fresh tree heads")."""
    signed = f"signed {_when(result.signed_at)}"
    if result.log_size is None:
        return (
            f"note: the node is too old to sign a head on demand: the log is fetched up to its latest "
            f"head ({signed}); entries it wrote since are not included"
        )
    if result.unsigned:
        wait = math.ceil(result.retry_after_s)
        return (
            f"note: {result.unsigned} entries the node wrote after its latest head ({signed}) are NOT "
            f"fetched: it signs at most one head per auditor per interval; fetch again in {wait} s"
        )
    how = "signed for this fetch" if result.signed_now else "the latest head already covered it"
    return f"complete: the node's whole log as of {_when(result.signed_at)} ({how})"


# --- argparse -----------------------------------------------------------------------------------------


def add_audit_commands(subparsers: Any) -> None:
    """Register ``audit fetch|verify|report`` on the ``petanda`` parser's subparsers.

    Each handler is set with ``set_defaults(handler=...)`` and returns the exit status: 0 success,
    1 a log that fails verification, and errors raise :class:`~client.protocol.errors.PetandaError` (exit 2).
    """
    audit = subparsers.add_parser(
        "audit", help="fetch, verify and report on a node's audit log", description=_AUDIT_HELP
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    fetch = sub.add_parser("fetch", help="download (or extend) a node's audit log into DIR over mutual TLS")
    fetch.add_argument(
        "directory", metavar="DIR", help="fetched directory (created, or extended if it exists)"
    )
    add_connection_arguments(fetch)
    fetch.add_argument("--page", type=int, default=DEFAULT_PAGE, metavar="N", help="entries per request")
    fetch.set_defaults(handler=_cmd_fetch)

    verify = sub.add_parser("verify", help="verify a fetched log offline: exit 0 intact, 1 broken")
    verify.add_argument("directory", metavar="DIR")
    verify.add_argument(
        "--public-key", metavar="HEX", help="the node's Ed25519 key as you know it from elsewhere (pins it)"
    )
    verify.set_defaults(handler=_cmd_verify)

    report = sub.add_parser("report", help="summarise a fetched log per peer, day and kind")
    report.add_argument("directory", metavar="DIR")
    report.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    report.add_argument("--detail", action="store_true", help="also print the per peer/day/kind table")
    report.add_argument("--public-key", metavar="HEX", help="pin the node's Ed25519 key (as for verify)")
    report.add_argument(
        "--alert-share",
        type=float,
        metavar="SHARE",
        help="enumeration rule: share of the daily quota a day counts above (the node's "
        "limits.enumeration_alert_share; default 0.5)",
    )
    report.add_argument(
        "--alert-days",
        type=int,
        metavar="DAYS",
        help="enumeration rule: consecutive such days (limits.enumeration_alert_days; default 3)",
    )
    report.add_argument(
        "--alert-space-share",
        type=float,
        metavar="SHARE",
        help="enumeration rule: 30-day phone volume above this share of the home numbering space "
        "(limits.enumeration_alert_space_share; default 0.01)",
    )
    report.set_defaults(handler=_cmd_report)
