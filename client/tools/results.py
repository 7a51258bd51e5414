"""The pure part of ``petanda check``: guessing a kind, reading batch files, and turning results into output.

Nothing here does I/O or knows about gRPC: the data model is :mod:`client.protocol.model`, the
conversions to the wire are :mod:`client.transport.convert`, and :mod:`client.tools.check` reads and
writes the files and talks to the node. ``docs/investigators.md`` describes every output format here.

One module of this size: the batch formats, the kind guesser and the output formats of docs/investigators.md
belong to one command and change together.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from client.protocol.canonical import CHAIN_ALIASES, MAX_INPUT_LENGTH, PLATFORM_ALIASES
from client.protocol.errors import InputError, UnknownKind
from client.protocol.kinds import KINDS
from client.protocol.model import Metadata, Outcome, PeerOutcome, PeerStatus, Query, Sighting, order_results

__all__ = [
    "CAUSES",
    "CSV_COLUMNS",
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_MATCH",
    "EXIT_OK",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "SNIFF_BYTES",
    "InputFormat",
    "InputRow",
    "Metadata",
    "Outcome",
    "PeerOutcome",
    "PeerStatus",
    "Query",
    "Sighting",
    "Tally",
    "Verdict",
    "cause_of",
    "csv_row",
    "guess_kind",
    "not_text",
    "order_results",
    "outcome_document",
    "plan_batches",
    "printable",
    "read_rows",
    "short_detail",
    "summary_line",
    "table_rows",
    "verdict",
]

EXIT_OK: Final = 0
EXIT_MATCH: Final = 1
EXIT_ERROR: Final = 2
#: Some indicator was not answered by every peer (rate limited, unavailable, stale), or a ``--file`` run
#: stopped before its end: run it again with ``--resume``.
EXIT_INCOMPLETE: Final = 3

#: Most queries sent in one Check call (the node's default batch limit).
MAX_BATCH: Final = 1000
#: Most bytes of values sent in one Check call, well under the 8 MiB gRPC message limit.
MAX_BATCH_BYTES: Final = 4 * 1024 * 1024

InputFormat: TypeAlias = Literal["csv", "jsonl"]
Verdict: TypeAlias = Literal["match", "no_match", "incomplete", "error"]


# --- batch rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputRow:
    """One record of a batch file: what it said, and why it cannot be checked (``error``) if so.

    Attributes:
        line: 1-based line number where the record starts in the file.
        kind: the kind to check (from the file, ``--kind`` or guessed); as written when the row is bad.
        value: the value exactly as written in the file.
        region: the region from the file or ``--region``.
        error: why the row is not sent to the node; None for a good row.
    """

    line: int
    kind: str
    value: str
    region: str = ""
    error: str | None = None

    @property
    def query(self) -> Query:
        """The query this row sends."""
        return Query(self.kind, self.value, self.region)


# --- guessing the kind --------------------------------------------------------------------------------

_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_PREFIX: Final = re.compile(r"([A-Za-z0-9_\- ]+):")
_BANK_TRIPLE: Final = re.compile(r"[A-Za-z]{2}\s*:[^:]+:[^:]+")
_IBAN: Final = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}")
_EVM: Final = re.compile(r"0[xX][0-9a-fA-F]{40}")
_SEGWIT: Final = re.compile(r"(?i:bc1|ltc1)[a-zA-Z0-9]{6,87}")
_BASE58: Final = re.compile(r"[13LMT][1-9A-HJ-NP-Za-km-z]{24,34}")
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE: Final = re.compile(r"(?:\+|00)?[0-9(][0-9 ().\-/]*")
_DOTTED_QUAD: Final = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_MIN_PHONE_DIGITS: Final = 5
_HOST: Final = re.compile(r"[^\s/@:?#]+\.[^\s/@:?#.]+\.?(?::[0-9]{1,5})?")


def _guess(text: str) -> tuple[str | None, str]:
    """``(kind, "")`` for the first shape that fits stripped, non-empty ``text``, else ``(None, hint)``."""
    if _SCHEME.match(text):
        return "url", ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return ("ipv4" if address.version == 4 else "ipv6"), ""
    prefix = _PREFIX.match(text)
    if prefix and text.count(":") == 1:
        name = prefix[1].strip().lower()
        if name in PLATFORM_ALIASES:
            return "handle", ""
        if name in CHAIN_ALIASES or (name[5:] in CHAIN_ALIASES and name[:5] in ("usdt-", "usdc-")):
            return "crypto_wallet", ""
    if _BANK_TRIPLE.fullmatch(text):
        return "bank_account", ""
    if "@" in text:
        if _EMAIL.fullmatch(text) and not text.startswith("@"):
            return "email", ""
        return None, "an account name needs its platform, e.g. telegram:@name"
    if _EVM.fullmatch(text) or _SEGWIT.fullmatch(text) or (_BASE58.fullmatch(text) and not text.isdigit()):
        return "crypto_wallet", ""
    if _IBAN.fullmatch(text.replace(" ", "").replace("-", "").upper()):
        return "bank_account", ""
    if _DOTTED_QUAD.fullmatch(text):  # an IPv4 address would have been caught above
        return None, "it looks like an IPv4 address but is not one: four numbers 0-255, no leading zeros"
    if _PHONE.fullmatch(text):
        if sum(c.isdigit() for c in text) >= _MIN_PHONE_DIGITS:
            return "phone", ""
        return None, "too few digits for a phone number"
    host, slash, _ = text.partition("/")
    if _HOST.fullmatch(host):
        return ("url" if slash or ":" in host else "domain"), ""
    return None, "it has the shape of none of the kinds"


def guess_kind(value: str) -> str:
    """Guess the kind of an indicator from its shape, for ``petanda check VALUE`` without ``--kind``.

    The shapes are tried in this order; the first that fits wins (``docs/investigators.md`` lists them):
    a URL scheme (``url``); an IP address (``ipv4``/``ipv6``); a ``platform:`` prefix (``handle``) or a
    ``chain:`` prefix (``crypto_wallet``); ``CC:BANK:ACCOUNT`` (``bank_account``); ``local@host``
    (``email``); an EVM, segwit or base58 address (``crypto_wallet``); an IBAN (``bank_account``); a
    number of at least five digits, optionally with ``+`` or ``00`` (``phone``); a dotted host name, with
    a path or not (``url`` or ``domain``). The guess only picks the kind: the node still validates the
    value and refuses it with a reason if it does not parse.

    Raises:
        InputError: the value is empty or fits none of the shapes (the message asks for ``--kind``).
    """
    text = value.strip()
    if not text:
        raise InputError("empty value: nothing to check")
    kind, hint = _guess(text)
    if kind is None:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(
            f"cannot tell the kind of {shown!r} ({hint}); give --kind, one of: {', '.join(KINDS)}"
        )
    return kind


# --- reading batch files ------------------------------------------------------------------------------

_HEADER_COLUMNS: Final = ("kind", "value", "region")
#: Bytes of a batch file looked at before reading it (:func:`not_text`).
SNIFF_BYTES: Final = 8192


def not_text(block: bytes) -> str | None:
    """Why the first block of a batch file shows it is no text file (a spreadsheet, an archive, UTF-16…),
    or None.

    A NUL byte, or more than 1% of it (at least 8) bytes that are not UTF-8 or control characters other
    than tab and line ends: a few stray bytes of another encoding stay bad rows of their own lines.
    """
    if b"\x00" in block:
        return "it holds NUL bytes"
    text = block.decode("utf-8", "surrogateescape")
    odd = sum(1 for c in text if "\udc80" <= c <= "\udcff" or (c < " " and c not in "\t\n\r\f\v"))
    if odd > max(8, len(block) // 100):
        return "it is not UTF-8 text"
    return None


def _surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _row(
    line: int, kind: str | None, value: str, region: str | None, default_kind: str | None, default_region: str
) -> InputRow:
    """Complete and validate one record: default kind and region, guessing, local checks."""
    kind = (kind or "").strip().lower() or (default_kind or "")
    region = (region or "").strip() or default_region
    if _surrogates(value) or _surrogates(kind) or _surrogates(region):
        return InputRow(line, kind, value, region, "not valid UTF-8")
    if not value.strip():
        return InputRow(line, kind, value, region, "empty value")
    if len(value) > MAX_INPUT_LENGTH:
        return InputRow(line, kind, value, region, f"value longer than {MAX_INPUT_LENGTH} characters")
    if not kind:
        guessed, hint = _guess(value.strip())
        if guessed is None:
            return InputRow(
                line, "", value, region, f"cannot tell the kind ({hint}): add a kind column or --kind"
            )
        kind = guessed
    elif kind not in KINDS:
        return InputRow(line, kind, value, region, f"unknown kind {kind!r}")
    return InputRow(line, kind, value, region)


def _read_csv(lines: Iterable[str], default_kind: str | None, default_region: str) -> Iterator[InputRow]:
    # One record per line: no indicator contains a line break, and an unbalanced quote then spoils one
    # row instead of swallowing the rest of the file.
    columns: dict[str, int] | None = None
    first = True
    for number, line in enumerate(lines, start=1):
        try:
            cells = next(csv.reader((line,), strict=True), [])
        except csv.Error as exc:
            first = False
            yield InputRow(
                number, default_kind or "", line.rstrip("\r\n"), default_region, f"unparseable CSV: {exc}"
            )
            continue
        if all(not c.strip() for c in cells):
            continue
        if first:
            first = False
            names = [c.strip().lower() for c in cells]
            if "value" in names:
                columns = {n: names.index(n) for n in _HEADER_COLUMNS if n in names}
                continue
        if columns is not None:
            width = max(columns.values()) + 1
            if len(cells) < width:
                yield InputRow(
                    number, default_kind or "", "", default_region, f"{len(cells)} columns, expected {width}"
                )
                continue
            kind = cells[columns["kind"]] if "kind" in columns else None
            region = cells[columns["region"]] if "region" in columns else None
            yield _row(number, kind, cells[columns["value"]], region, default_kind, default_region)
        elif len(cells) == 1 and default_kind is not None:
            yield _row(number, None, cells[0], None, default_kind, default_region)
        elif len(cells) == 1:
            yield InputRow(
                number, "", cells[0], default_region, "missing column: expected kind,value[,region]"
            )
        elif len(cells) > len(_HEADER_COLUMNS):
            yield InputRow(
                number, cells[0], cells[1], cells[2], f"{len(cells)} columns, expected kind,value[,region]"
            )
        else:
            region = cells[2] if len(cells) == 3 else None
            yield _row(number, cells[0], cells[1], region, default_kind, default_region)


def _read_jsonl(lines: Iterable[str], default_kind: str | None, default_region: str) -> Iterator[InputRow]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield InputRow(number, default_kind or "", "", default_region, f"not JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield InputRow(number, default_kind or "", "", default_region, "not a JSON object")
            continue
        fields: dict[str, str | None] = {}
        bad = None
        for name in _HEADER_COLUMNS:
            item = record.get(name)
            if item is not None and not isinstance(item, str):
                bad = f"{name!r} must be a string"
            fields[name] = item
        value = fields["value"]
        if bad is None and value is None:
            bad = "missing 'value'"
        if bad is not None:
            text = value if isinstance(value, str) else ""
            yield InputRow(number, str(fields["kind"] or default_kind or ""), text, default_region, bad)
            continue
        assert value is not None
        yield _row(number, fields["kind"], value, fields["region"], default_kind, default_region)


def read_rows(
    lines: Iterable[str], fmt: InputFormat, *, kind: str | None = None, region: str = ""
) -> Iterator[InputRow]:
    """Read a batch file record by record (streaming: one record in memory at a time).

    Args:
        lines: the file's text lines (a text file opened with ``newline=""``), decoded with
            ``errors="surrogateescape"`` so that a line that is not UTF-8 becomes a bad row, not a crash.
        fmt: ``csv`` (columns ``kind,value[,region]``, or any order under a header line naming ``value``
            and optionally ``kind`` and ``region``; with a default kind, one column of values) or ``jsonl``
            (one object a line with string members ``value`` and optionally ``kind``, ``region``).
        kind: kind of records that have none; without it such records have their kind guessed.
        region: region of records that have none.

    Yields:
        One :class:`InputRow` per record, blank lines skipped; a record that cannot be checked has
        ``error`` set and keeps its line number.

    Raises:
        UnknownKind: ``kind`` is not an indicator kind.
    """
    if kind is not None and kind not in KINDS:
        raise UnknownKind(kind, KINDS)
    if fmt == "csv":
        return _read_csv(lines, kind, region)
    return _read_jsonl(lines, kind, region)


def plan_batches(
    rows: Iterable[InputRow], *, max_queries: int = MAX_BATCH, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[list[InputRow]]:
    """Group rows into batches, in order, each with at most ``max_queries`` good rows and ``max_bytes``.

    Bad rows travel with the batch they fall in, so output can be written in input order; a batch is
    yielded as soon as it is full, so a file of any size is read with bounded memory.
    """
    if max_queries < 1:
        raise InputError(f"batch size must be at least 1, not {max_queries}")
    batch: list[InputRow] = []
    queries = size = 0
    for row in rows:
        if row.error is None:
            cost = len(row.value.encode("utf-8", "surrogateescape")) + len(row.kind) + len(row.region)
            if queries and (queries == max_queries or size + cost > max_bytes):
                yield batch
                batch, queries, size = [], 0, 0
            queries += 1
            size += cost
        batch.append(row)
    if batch:
        yield batch


# --- verdicts and exit status -------------------------------------------------------------------------


def verdict(outcome: Outcome | None) -> Verdict:
    """One word for one indicator: ``error`` (refused, or a bad row), ``match`` (at least one peer holds
    it), ``no_match`` (every peer answered and none holds it), else ``incomplete`` (some peer could not
    answer: unavailable, rate-limited, stale, or no peer at all)."""
    if outcome is None or outcome.error:
        return "error"
    if outcome.matches:
        return "match"
    if outcome.peers and all(p.status is PeerStatus.NO_MATCH for p in outcome.peers):
        return "no_match"
    return "incomplete"


#: Why a row was not answered by every peer, in the order a summary names them: ``malformed`` (a bad
#: row, never sent) and ``refused`` (by the node) are errors; the others leave a row incomplete.
CAUSES: Final = ("malformed", "refused", "rate_limited", "unavailable", "stale", "unknown", "no_peer")
_CAUSE_OF_STATUS: Final = (
    (PeerStatus.RATE_LIMITED, "rate_limited"),
    (PeerStatus.UNAVAILABLE, "unavailable"),
    (PeerStatus.STALE, "stale"),
    (PeerStatus.UNKNOWN, "unknown"),
)
_CAUSE_LABEL: Final = {
    "malformed": "malformed",
    "refused": "refused by the node",
    "rate_limited": "rate limited",
    "unavailable": "unavailable",
    "stale": "stale",
    "unknown": "unknown status",
    "no_peer": "no peer to ask",
}


def cause_of(bad_row: bool, outcome: Outcome | None) -> str | None:
    """Why a row was not answered by every peer (one of :data:`CAUSES`; the first that applies, a peer
    rate limited before one unavailable…), or None when it was fully answered."""
    if bad_row or outcome is None:
        return "malformed"
    if outcome.error:
        return "refused"
    if not outcome.peers:
        return "no_peer"
    statuses = {p.status for p in outcome.peers}
    for status, cause in _CAUSE_OF_STATUS:
        if status in statuses:
            return cause
    return None


@dataclass(slots=True)
class Tally:
    """Counts of verdicts over a run, why rows were not fully answered, and the exit status they give.

    The rule: 3 (:data:`EXIT_INCOMPLETE`) if any row was not answered by every peer or the run stopped
    before the end of its file; else 2 if any row was an error (malformed, or refused by the node); else
    1 if any indicator matched; else 0.
    """

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("match", "no_match", "incomplete", "error"), 0)
    )
    causes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    error_lines: list[int] = field(default_factory=list)
    #: Per peer and cause (rate_limited, unavailable, …): rows, and the peer's last detail.
    peers: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    #: Why the run stopped before the end of its file (then the exit status is 3), if it did.
    stopped: str = ""

    def add(self, result: Verdict, line: int | None = None, cause: str | None = None) -> None:
        """Count one verdict and its cause; remember the line number of the first few errors."""
        self.counts[result] += 1
        if cause is not None:
            self.causes[cause] += 1
        if result == "error" and line is not None and len(self.error_lines) < 10:
            self.error_lines.append(line)

    def add_row(self, line: int, bad_row: bool, outcome: Outcome | None) -> Verdict:
        """Count one written row (``bad_row``: it was never sent); return its verdict."""
        result: Verdict = "error" if bad_row else verdict(outcome)
        self.add(result, line, cause_of(bad_row, outcome))
        if not bad_row and outcome is not None and not outcome.error:
            for peer in outcome.peers:
                cause = dict(_CAUSE_OF_STATUS).get(peer.status)
                if cause is not None:
                    count, _ = self.peers.get((peer.peer_id, cause), (0, ""))
                    self.peers[(peer.peer_id, cause)] = (count + 1, peer.detail)
        return result

    @property
    def rows(self) -> int:
        """How many indicators were counted."""
        return sum(self.counts.values())

    @property
    def incomplete(self) -> int:
        """Rows not answered by every peer (a match among them included)."""
        return sum(self.causes[c] for c in CAUSES[2:])

    @property
    def exit_status(self) -> int:
        """3 if any row is incomplete or the run stopped early, else 2 if any error, else 1 if any match,
        else 0."""
        if self.stopped or self.incomplete or self.counts["incomplete"]:
            return EXIT_INCOMPLETE
        if self.counts["error"]:
            return EXIT_ERROR
        if self.counts["match"]:
            return EXIT_MATCH
        return EXIT_OK

    def summary(self) -> str:
        """One line, e.g. ``1200 rows: 3 match, 1190 no match, 5 incomplete, 2 errors (1 malformed,
        1 refused by the node; lines 17, 230); 6 not answered by every peer (5 rate limited,
        1 unavailable)``."""
        c = self.counts
        text = f"{self.rows} rows: {c['match']} match, {c['no_match']} no match, {c['incomplete']} incomplete"
        text += f", {c['error']} error{'' if c['error'] == 1 else 's'}"
        if c["error"]:
            kinds = ", ".join(f"{self.causes[k]} {_CAUSE_LABEL[k]}" for k in CAUSES[:2] if self.causes[k])
            lines = ""
            if self.error_lines:
                more = ", ..." if c["error"] > len(self.error_lines) else ""
                plural = "s" if c["error"] > 1 else ""
                lines = f"line{plural} {', '.join(map(str, self.error_lines))}{more}"
            text += f" ({'; '.join(part for part in (kinds, lines) if part)})"
        if self.incomplete:
            kinds = ", ".join(f"{self.causes[k]} {_CAUSE_LABEL[k]}" for k in CAUSES[2:] if self.causes[k])
            text += f"; {self.incomplete} not answered by every peer ({kinds})"
        return text

    def peer_lines(self) -> list[str]:
        """One line per peer and cause that left rows unanswered, with the peer's words in short (the
        limit and when it resets, for a rate limit), e.g. ``TH: 80 rows rate limited: daily OPRF quota
        of MY for phone used up (…); it resets at 2026-11-30T00:00:00Z (in 3600 s)``."""
        lines = []
        for (peer_id, cause), (count, detail) in sorted(self.peers.items()):
            status = PeerStatus(cause)
            said = (
                _without_peer(printable(detail), peer_id)
                if status is PeerStatus.RATE_LIMITED
                else short_detail(status, detail, peer_id)
            )
            lines.append(
                f"{printable(peer_id)}: {count} row{'' if count == 1 else 's'} {_CAUSE_LABEL[cause]}"
                + (f": {said}" if said else "")
            )
        return lines


# --- rendering ----------------------------------------------------------------------------------------


def printable(text: str) -> str:
    """Make text from the wire safe for a terminal: control and bidi-formatting characters become ``\\uXXXX``.

    A peer's metadata must not be able to move the cursor, recolour or hide the output of the investigator's
    terminal (escape sequences) or reorder what it shows (Unicode bidi overrides).
    """
    if text.isprintable():
        return text
    return "".join(
        c if c == " " or unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else f"\\u{ord(c):04x}"
        for c in text
    )


_STATUS_LABEL: Final[Mapping[PeerStatus, str]] = {
    PeerStatus.MATCH: "MATCH",
    PeerStatus.NO_MATCH: "no match",
    PeerStatus.UNAVAILABLE: "unavailable",
    PeerStatus.RATE_LIMITED: "rate limited",
    PeerStatus.STALE: "stale",
    PeerStatus.UNKNOWN: "unknown",
}
#: Columns of :func:`table_rows`.
TABLE_COLUMNS: Final = (
    "peer",
    "status",
    "category",
    "first seen",
    "last seen",
    "confidence",
    "TLP",
    "reports",
)


_RESETS: Final = re.compile(r"resets at ([0-9T:\-]+Z)")
_RETRY_IN: Final = re.compile(r"retry in ([0-9.]+) s")
#: Longest detail a table shows (the whole text is in ``--json`` and the files' ``details``).
SHORT_DETAIL_MAX: Final = 48


def _without_peer(text: str, peer_id: str) -> str:
    """``text`` without the ``PEER: `` its node put in front of a peer's own words."""
    prefix = f"{peer_id}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _cut(text: str, limit: int = SHORT_DETAIL_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def short_detail(status: PeerStatus, detail: str, peer_id: str = "") -> str:
    """A peer's reason for not answering, in one short line for a table (``detail`` is the full text).

    A rate limit names the limit and when it lifts (``rate limit, retry in 3 s``, ``daily quota,
    resets 00:00 UTC``, ``holder-wide daily quota, …``); an unreachable peer says why in
    a word (``unreachable (connection refused)``, ``no answer in time``); anything else is its first
    clause, cut to :data:`SHORT_DETAIL_MAX` characters. Printable (:func:`printable`).
    """
    text = " ".join(_without_peer(printable(detail), peer_id).split())
    low = text.lower()
    if status is PeerStatus.RATE_LIMITED:
        if "holder-wide" in low:
            limit = "holder-wide daily quota"
        elif "daily" in low:
            limit = "daily quota"
        elif "too many calls" in low:
            limit = "call rate limit"
        elif "rate limit" in low or "burst" in low:
            limit = "rate limit"
        else:
            return _cut(text.split(";")[0]) if text else "refused"
        resets, retry = _RESETS.search(text), _RETRY_IN.search(text)
        if "can never pass" in low:
            return f"{limit}: the batch can never pass"
        if resets:  # always the next midnight: the date is in the whole detail
            return f"{limit}, resets 00:00 UTC"
        if retry:
            return f"{limit}, retry in {math.ceil(float(retry[1]))} s"
        return limit
    if status is PeerStatus.UNAVAILABLE:
        for words, short in (
            ("connection refused", "unreachable (connection refused)"),
            ("handshake", "unreachable (TLS handshake failed)"),
            ("certificate", "unreachable (TLS certificate refused)"),
            ("dns", "unreachable (name not resolved)"),
            ("deadline", "no answer in time"),
            ("timed out", "no answer in time"),
            ("shutting down", "this node is shutting down"),
            ("invalid answer", "invalid answer"),
        ):
            if words in low:
                return short
        if low.startswith("unavailable:") or "failed to connect" in low:
            return "unreachable"
    if status is PeerStatus.STALE and "secret mismatch" in low:
        return "HMAC key differs (federation secret mismatch)"
    first = re.sub(r"^[A-Z_]+: ", "", text).split("; ")[0]
    return _cut(first)


def table_rows(outcome: Outcome) -> list[tuple[PeerStatus, tuple[str, ...]]]:
    """One row of display strings per peer (matches first, then by peer id), with its status for colour.

    For a peer that did not answer, its reason in one short line (:func:`short_detail`) takes the
    category column. Every string is :func:`printable`.
    """
    order = {PeerStatus.MATCH: 0}
    rows = []
    for peer in sorted(outcome.peers, key=lambda p: (order.get(p.status, 1), p.peer_id)):
        m = peer.metadata
        if m is not None:
            cells = (m.category, m.first_seen, m.last_seen, str(m.confidence), m.tlp, str(m.reports))
        else:
            cells = (short_detail(peer.status, peer.detail, peer.peer_id), "", "", "", "", "")
        rows.append(
            (peer.status, tuple(printable(c) for c in (peer.peer_id, _STATUS_LABEL[peer.status], *cells)))
        )
    return rows


def summary_line(outcome: Outcome) -> str:
    """One line for one indicator, e.g. ``MATCH at 2 of 5 peers (SG, TH); 1 unavailable (LA)``."""
    if outcome.error:
        return f"refused by the node: {printable(outcome.error)}"
    if not outcome.peers:
        return "incomplete: the node has no peer to ask"
    groups: dict[PeerStatus, list[str]] = {}
    for peer in outcome.peers:
        groups.setdefault(peer.status, []).append(printable(peer.peer_id))
    total = len(outcome.peers)
    matched = sorted(groups.pop(PeerStatus.MATCH, []))
    head = f"MATCH at {len(matched)} of {total} peers ({', '.join(matched)})" if matched else ""
    no_match = len(groups.pop(PeerStatus.NO_MATCH, []))
    if not matched:
        head = f"no match at {no_match} of {total} peers" if groups else f"no match at any of {total} peers"
    parts = [head]
    for status in (PeerStatus.UNAVAILABLE, PeerStatus.RATE_LIMITED, PeerStatus.STALE, PeerStatus.UNKNOWN):
        if status in groups:
            parts.append(
                f"{len(groups[status])} {_STATUS_LABEL[status]} ({', '.join(sorted(groups[status]))})"
            )
    return "; ".join(parts)


def outcome_document(query: Query, outcome: Outcome | None, **extra: Any) -> dict[str, Any]:
    """The JSON object of one checked indicator (``check --json``, and each line of ``--format jsonl``).

    Keys: ``extra`` first (``line``, ``kind_guessed``…), then ``kind``, ``value``, ``region``,
    ``canonical``, ``verdict``, ``error``, ``peers`` (a list of :meth:`PeerOutcome.as_dict`).
    ``outcome`` None is a row that was not sent; pass its reason as ``error=...``.
    """
    doc: dict[str, Any] = dict(extra)
    error = doc.pop("error", "") or ""
    doc.update(kind=query.kind, value=query.value, region=query.region)
    doc["canonical"] = outcome.canonical if outcome is not None else ""
    doc["verdict"] = "error" if error else verdict(outcome)
    doc["error"] = error or (outcome.error if outcome is not None else "")
    doc["peers"] = [p.as_dict() for p in outcome.peers] if outcome is not None else []
    return doc


#: Header of ``--format csv``: one row per input row.
CSV_COLUMNS: Final = (
    "line",
    "kind",
    "value",
    "region",
    "canonical",
    "verdict",
    "matched_peers",
    "peers",
    "matches",
    "error",
    "details",
)


def csv_row(row: InputRow, outcome: Outcome | None) -> list[str]:
    """The CSV cells of one input row (:data:`CSV_COLUMNS`).

    ``peers`` is ``PEER=status`` joined by ``;``; ``matches`` is a compact JSON array of the matches'
    metadata, each with its ``peer_id`` (empty without a match); ``details`` a compact JSON object of
    the whole reason of each peer that did not answer (``{"LA": "LA: UNAVAILABLE: …"}``; empty when
    every peer answered). Text from peers is only ever inside that JSON, whose cell starts with ``[``
    or ``{``: a spreadsheet never reads it as a formula.
    """
    error = row.error or (outcome.error if outcome is not None else "")
    peers = outcome.peers if outcome is not None and not row.error else ()
    matches = [{"peer_id": p.peer_id, **p.metadata.as_dict()} for p in peers if p.metadata is not None]
    details = {p.peer_id: p.detail for p in sorted(peers, key=lambda p: p.peer_id) if not p.answered}
    return [
        str(row.line),
        row.kind,
        row.value,
        row.region,
        outcome.canonical if outcome is not None else "",
        "error" if row.error else verdict(outcome),
        ";".join(sorted(p.peer_id for p in peers if p.status is PeerStatus.MATCH)),
        ";".join(f"{p.peer_id}={p.status.value}" for p in sorted(peers, key=lambda p: p.peer_id)),
        json.dumps(matches, separators=(",", ":"), ensure_ascii=False) if matches else "",
        error,
        json.dumps(details, separators=(",", ":"), ensure_ascii=False) if details else "",
    ]
