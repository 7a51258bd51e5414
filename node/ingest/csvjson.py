"""Ingest of flat files: CSV with a header row, and JSON lines (one object per line).

Both are streamed row by row, so a file of millions of rows never sits in memory. Rows name their
fields as in :data:`COLUMNS`; ``docs/operators.md`` describes them column by column.

Both can also be read in **byte ranges**, each by another process (:mod:`node.ingest.pool`), with the
same results as one reading of the whole file: :func:`line_ranges` cuts the file after a ``\\n`` and
gives each range the number of its first line; :func:`read_csv_range` and :func:`read_jsonl_range` read
one. A JSON line never holds a ``\\n``, but a quoted CSV field may: a range's last record may go on past
the range's end, and then its reader reads on to the record's end and says where it stopped; the next
range is right only if it started there (``node.ingest.pool`` reads it again from there otherwise).
"""

from __future__ import annotations

import _csv
import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

from client.protocol.errors import ImportError_, InputError
from node.ingest.parsers import Builder, Rejection

__all__ = [
    "COLUMNS",
    "MAX_LINE_BYTES",
    "REQUIRED_COLUMNS",
    "CsvLayout",
    "FileRanges",
    "Range",
    "csv_layout",
    "line_ranges",
    "parse_csv",
    "parse_jsonl",
    "read_csv_range",
    "read_jsonl_range",
]

#: Every field a row may have, in the order of :meth:`RecordBuilder.build`'s keywords.
COLUMNS: Final = (
    "kind",
    "value",
    "region",
    "category",
    "first_seen",
    "last_seen",
    "confidence",
    "tlp",
    "reports",
    "expires_at",
)
#: Fields without which a row is not an indicator.
REQUIRED_COLUMNS: Final = ("kind", "value")
#: Longest JSON line read; a longer one is rejected (and skipped) without being held in memory.
MAX_LINE_BYTES: Final = 1 << 20

_R = TypeVar("_R")

_DELIMITERS: Final = (",", ";", "\t")
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_INTEGER_FIELDS: Final = frozenset({"confidence", "reports"})
_ENCODING: Final = ("utf-8", "surrogateescape")  # undecodable bytes kept, rejected per row


@dataclass(frozen=True, slots=True)
class CsvLayout:
    """What a CSV file's header says, read once: enough to read any of its ranges.

    Attributes:
        delimiter: The field separator.
        width: The number of fields of the header (every row must have as many).
        at: The index of each of :data:`COLUMNS` in a row, in that order; -1 for a column absent (a
            row is read with an empty field appended: "not given").
        data_start: The byte offset of the first line after the header (after a UTF-8 BOM too).
        data_line: That line's number (the header is line 1, or lines 1.. if it holds a line break).
    """

    delimiter: str
    width: int
    at: tuple[int, ...]
    data_start: int
    data_line: int


@dataclass(frozen=True, slots=True)
class Range:
    """Bytes ``start`` to ``end`` of a file, cut after a ``\\n`` (or at its end); ``line`` is the number
    of the line starting at ``start``."""

    start: int
    end: int
    line: int


@dataclass(frozen=True, slots=True)
class FileRanges:
    """A CSV or JSON-lines file to read in ranges: what every range of it shares.

    Attributes:
        path: The file.
        source: What its indicators' ``source`` says (``format:file name``).
        layout: A CSV file's header, or None for JSON lines.
        start, line: Where its records start (after a CSV header): byte offset and line number.
    """

    path: Path
    source: str
    layout: CsvLayout | None
    start: int
    line: int


def _delimiter(header: str) -> str:
    """The delimiter of a CSV file: the most frequent of ``,`` ``;`` and tab in its header line."""
    counts = [(header.count(d), -i, d) for i, d in enumerate(_DELIMITERS)]
    return max(counts)[2]


def _header_positions(header: list[str], name: str) -> dict[str, int]:
    """Map the known columns of the header to their index; unknown names are ignored."""
    positions: dict[str, int] = {}
    for index, column in enumerate(header):
        key = column.strip().lower()
        if key in positions:
            raise ImportError_(f"{name}:1", f"column {key!r} appears twice in the header")
        if key in COLUMNS:
            positions[key] = index
    for required in REQUIRED_COLUMNS:
        if required not in positions:
            raise ImportError_(f"{name}:1", f"the header has no {required!r} column (required: kind, value)")
    return positions


def _is_utf8(row: list[str]) -> bool:
    """True if no field holds an undecodable byte (kept as a lone surrogate by ``surrogateescape``)."""
    try:
        "".join(row).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_open(path: Path) -> io.TextIOWrapper:
    """The CSV file as text; UTF-16 refused (Excel's "Unicode text" is not what we read)."""
    with path.open("rb") as probe:
        start = probe.read(4)
    if start.startswith(_UTF16_BOMS):
        raise ImportError_(path.name, "the file is UTF-16; save it as UTF-8 (CSV UTF-8)")
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _csv_header(lines: Iterator[str], name: str) -> tuple[_csv.Reader, CsvLayout]:
    """The reader of the file's lines, past the header, and the layout the header gives (offsets 0)."""
    first = next(lines, "")
    if not first.strip():
        raise ImportError_(f"{name}:1", "no header row (the first line is empty)")
    delimiter = _delimiter(first)
    reader = csv.reader(chain((first,), lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise ImportError_(f"{name}:1", f"the header is not valid CSV: {exc}") from None
    if not _is_utf8(header):
        raise ImportError_(f"{name}:1", "the header is not valid UTF-8")
    positions = _header_positions(header, name)
    at = tuple(positions.get(column, -1) for column in COLUMNS)
    return reader, CsvLayout(delimiter, len(header), at, 0, reader.line_num + 1)


def csv_layout(path: Path) -> CsvLayout:
    """Read the header of a CSV file: its layout, and where its first row starts.

    Raises:
        ImportError_: as :func:`parse_csv` does for the header.
    """
    with _csv_open(path) as handle:
        read: list[str] = []

        def lines() -> Iterator[str]:
            for line in handle:
                read.append(line)
                yield line

        _, layout = _csv_header(lines(), path.name)
    with path.open("rb") as probe:
        bom = len(_UTF8_BOM) if probe.read(len(_UTF8_BOM)) == _UTF8_BOM else 0
    # the reader takes no line beyond the header's last: what it read is the header
    start = bom + sum(len(line.encode(*_ENCODING)) for line in read)
    return CsvLayout(layout.delimiter, layout.width, layout.at, start, layout.data_line)


def _csv_item(
    row: list[str], location: str, layout: CsvLayout, builder: Builder[_R]
) -> _R | Rejection | None:
    """One CSV row checked (None for a blank row, which is skipped)."""
    if not any(row):
        return None
    if len(row) != layout.width:
        return Rejection(location, f"the row has {len(row)} fields but the header has {layout.width}")
    if not _is_utf8(row):
        return Rejection(location, "the row is not valid UTF-8")
    fields, at = [*row, ""], layout.at  # an absent column reads as "" (index -1): "not given", as None
    return builder.build(
        location,
        kind=fields[at[0]],
        value=fields[at[1]],
        region=fields[at[2]],
        category=fields[at[3]],
        first_seen=fields[at[4]],
        last_seen=fields[at[5]],
        confidence=fields[at[6]],
        tlp=fields[at[7]],
        reports=fields[at[8]],
        expires_at=fields[at[9]],
    )


def parse_csv(path: Path, builder: Builder[_R]) -> Iterator[_R | Rejection]:
    """Stream the rows of a CSV file with a header row (comma, semicolon or tab separated).

    Handles a UTF-8 byte-order mark, quoted fields (with embedded separators, quotes and line breaks)
    and CRLF line ends. Blank rows are skipped. Locations are ``file:line``, 1-based, the header being
    line 1; a record spanning several lines is located at its first line.

    Raises:
        ImportError_: (on the first iteration) the file is not UTF-8 text, or its header lacks a
            required column or repeats one.
    """
    name = path.name
    with _csv_open(path) as handle:
        reader, layout = _csv_header(iter(handle), name)
        end = reader.line_num
        while True:
            line = end + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                yield Rejection(f"{name}:{line}", f"not valid CSV: {exc}")
                continue
            end = reader.line_num
            item = _csv_item(row, f"{name}:{line}", layout, builder)
            if item is not None:
                yield item


def line_ranges(path: Path, start: int, line: int, size: int, *, csv_lines: bool) -> Iterator[Range]:
    """Cut ``path`` from byte ``start`` (line number ``line``) into ranges of about ``size`` bytes, each
    ending after a ``\\n`` (or at the end of the file), with the number of its first line.

    The parent reads every byte once (C-speed counts), holding one block. ``csv_lines``: count lines as
    the CSV reader does (a text file's universal newlines: ``\\n``, ``\\r\\n`` and a lone ``\\r``); else
    as JSON lines (``\\n`` only).
    """
    with path.open("rb") as handle:
        handle.seek(start)
        at, first, pending, cr = start, start, 0, False  # cr: the last block read ended with \r

        def count(data: bytes) -> int:
            nonlocal cr
            n = data.count(b"\n")
            if csv_lines and data:
                n += data.count(b"\r") - data.count(b"\r\n") - (cr and data[0] == 0x0A)
                cr = data[-1] == 0x0D
            return n

        while block := handle.read(size):
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # one long line: the range goes on
                pending += count(block)
            else:
                yield Range(first, at + cut, line)
                line += pending + count(block[:cut])
                first, pending = at + cut, count(block[cut:])
            at += len(block)
        if first < at:
            yield Range(first, at, line)


def read_csv_range(
    path: Path, layout: CsvLayout, span: Range, builder: Builder[_R]
) -> tuple[list[_R | Rejection], int, int]:
    """Read the CSV records that start in ``span`` of ``path`` (of ``layout``), as :func:`parse_csv`
    reads them in the whole file, provided ``span`` starts at a record's start.

    Returns the results, the byte offset where the last record read ends (``span.end``, or beyond it
    when that record goes on past the range: its reader then reads on, as :func:`parse_csv` would) and
    the number of lines read.
    """
    name, base = path.name, span.line - 1
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(span.start)
        text = handle.read(span.end - span.start).decode(*_ENCODING)
        lines = io.StringIO(text, newline="").readlines()
        exhausted = False

        def mark() -> Iterator[str]:
            nonlocal exhausted
            exhausted = True
            yield from ()

        reader = csv.reader(chain(lines, mark()), delimiter=layout.delimiter, strict=True)
        out: list[_R | Rejection] = []
        end = 0
        while True:
            location = f"{name}:{base + end + 1}"
            try:
                row = next(reader)
            except StopIteration:
                return out, span.end, len(lines)
            except csv.Error as exc:
                if exhausted and span.end < size:  # a quoted line break: the record goes on
                    item, stop, used = _csv_past_end(handle, lines[end:], location, layout, builder)
                    if item is not None:
                        out.append(item)
                    return out, span.end + stop, end + used
                end = reader.line_num
                out.append(Rejection(location, f"not valid CSV: {exc}"))
                continue
            end = reader.line_num
            item = _csv_item(row, location, layout, builder)
            if item is not None:
                out.append(item)


def _csv_past_end(
    handle: BinaryIO, lines: list[str], location: str, layout: CsvLayout, builder: Builder[_R]
) -> tuple[_R | Rejection | None, int, int]:
    """Read one record from ``lines`` (its first lines) on into the file from ``handle``'s position:
    the record, the bytes read past the range and the record's number of lines."""
    taken = 0

    def more() -> Iterator[str]:
        nonlocal taken
        while raw := handle.readline():
            for piece in io.StringIO(raw.decode(*_ENCODING), newline=""):
                taken += len(piece.encode(*_ENCODING))
                yield piece  # the reader takes no line past its record's last

    reader = csv.reader(chain(lines, more()), delimiter=layout.delimiter, strict=True)
    try:
        row = next(reader)
    except csv.Error as exc:
        return Rejection(location, f"not valid CSV: {exc}"), taken, reader.line_num
    return _csv_item(row, location, layout, builder), taken, reader.line_num


def json_object(text: str) -> dict[str, object]:
    """One line of JSON lines as an object.

    Raises:
        InputError: not valid JSON (the parser's reason and column), nested too deeply, or not an object.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InputError("not valid JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got a JSON {_json_type(record)}")
    return record


def _json_type(item: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(item), "null")


def _json_fields(record: dict[str, object]) -> dict[str, str | int | None]:
    """Pick the known fields of a JSON object, checking their JSON types (unknown keys are ignored)."""
    fields: dict[str, str | int | None] = {}
    for column in COLUMNS:
        item = record.get(column)
        if item is None or isinstance(item, str):
            fields[column] = item
        elif column in _INTEGER_FIELDS and isinstance(item, int) and not isinstance(item, bool):
            fields[column] = item
        else:
            expected = "an integer or a string" if column in _INTEGER_FIELDS else "a string"
            raise InputError(f"{column}: expected {expected}, got a JSON {_json_type(item)}")
    return fields


def _lines(handle: BinaryIO, limit: int = -1) -> Iterator[bytes | None]:
    """Yield each line's bytes, or None for a line over :data:`MAX_LINE_BYTES`; at most ``limit`` bytes
    (all if negative), which must end after a ``\\n``."""
    readline = handle.readline
    left = limit if limit >= 0 else 1 << 62
    while left > 0:
        raw = readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        left -= len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = readline(MAX_LINE_BYTES)
                left -= len(raw)
            yield None
            continue
        yield raw


def parse_jsonl(path: Path, builder: Builder[_R]) -> Iterator[_R | Rejection]:
    """Stream a JSON-lines file: one JSON object per line, with the fields of :data:`COLUMNS`.

    ``confidence`` and ``reports`` may be JSON integers or strings; other fields are strings; null or
    an absent key means "not given". Blank lines are skipped; a line that is not a JSON object is
    rejected with its number and the parser's reason.
    """
    with path.open("rb") as handle:
        yield from _jsonl_records(enumerate(_lines(handle), 1), path.name, builder)


def read_jsonl_range(path: Path, span: Range, builder: Builder[_R]) -> tuple[list[_R | Rejection], int, int]:
    """Read the lines of ``span`` of a JSON-lines file as :func:`parse_jsonl` reads them in the whole
    file. Returns the results, ``span.end`` and the number of lines read (as :func:`read_csv_range`)."""
    with path.open("rb") as handle:
        handle.seek(span.start)
        numbered = list(enumerate(_lines(handle, span.end - span.start), span.line))
    return list(_jsonl_records(numbered, path.name, builder)), span.end, len(numbered)


def _jsonl_records(
    lines: Iterable[tuple[int, bytes | None]], name: str, builder: Builder[_R]
) -> Iterator[_R | Rejection]:
    for number, raw in lines:
        location = f"{name}:{number}"
        if raw is None:
            yield Rejection(location, f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Rejection(location, f"not valid UTF-8 (byte {exc.start + 1})")
            continue
        try:
            record = json_object(text)
        except InputError as exc:
            yield Rejection(location, str(exc))
            continue
        try:
            fields = _json_fields(record)
        except InputError as exc:
            yield Rejection(location, str(exc))
            continue
        yield builder.build(
            location,
            kind=_text(fields["kind"]),
            value=_text(fields["value"]),
            region=_text(fields["region"]),
            category=_text(fields["category"]),
            first_seen=_text(fields["first_seen"]),
            last_seen=_text(fields["last_seen"]),
            confidence=fields["confidence"],
            tlp=_text(fields["tlp"]),
            reports=fields["reports"],
            expires_at=_text(fields["expires_at"]),
        )


def _text(item: str | int | None) -> str | None:
    """A string field (its JSON type was checked by :func:`_json_fields`)."""
    return item if item is None or isinstance(item, str) else str(item)
