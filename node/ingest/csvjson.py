"""Ingest of flat files: CSV with a header row, and JSON lines (one object per line).

Both are streamed row by row, so a file of millions of rows never sits in memory. Rows name their
fields as in :data:`COLUMNS`; ``docs/operators.md`` describes them column by column.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Final, TypeVar

from client.protocol.errors import ImportError_, InputError
from node.ingest.parsers import Builder, Rejection

__all__ = ["COLUMNS", "MAX_LINE_BYTES", "REQUIRED_COLUMNS", "parse_csv", "parse_jsonl"]

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
    with path.open("rb") as probe:
        start = probe.read(4)
    if start.startswith(_UTF16_BOMS):
        raise ImportError_(name, "the file is UTF-16; save it as UTF-8 (CSV UTF-8)")
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        first = handle.readline()
        if not first.strip():
            raise ImportError_(f"{name}:1", "no header row (the first line is empty)")
        reader = csv.reader(chain((first,), handle), delimiter=_delimiter(first), strict=True)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise ImportError_(f"{name}:1", f"the header is not valid CSV: {exc}") from None
        if not _is_utf8(header):
            raise ImportError_(f"{name}:1", "the header is not valid UTF-8")
        positions = _header_positions(header, name)
        width = len(header)
        kind_at, value_at = positions["kind"], positions["value"]
        region_at, category_at = positions.get("region"), positions.get("category")
        first_at, last_at, exp_at = (
            positions.get("first_seen"),
            positions.get("last_seen"),
            positions.get("expires_at"),
        )
        conf_at, tlp_at, rep_at = positions.get("confidence"), positions.get("tlp"), positions.get("reports")
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
            if not any(row):
                continue
            location = f"{name}:{line}"
            if len(row) != width:
                yield Rejection(location, f"the row has {len(row)} fields but the header has {width}")
                continue
            if not _is_utf8(row):
                yield Rejection(location, "the row is not valid UTF-8")
                continue
            yield builder.build(
                location,
                kind=row[kind_at],
                value=row[value_at],
                region=None if region_at is None else row[region_at],
                category=None if category_at is None else row[category_at],
                first_seen=None if first_at is None else row[first_at],
                last_seen=None if last_at is None else row[last_at],
                confidence=None if conf_at is None else row[conf_at],
                tlp=None if tlp_at is None else row[tlp_at],
                reports=None if rep_at is None else row[rep_at],
                expires_at=None if exp_at is None else row[exp_at],
            )


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


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line bytes), or (line number, None) for a line over :data:`MAX_LINE_BYTES`."""
    readline = handle.readline
    number = 0
    while True:
        raw = readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = readline(MAX_LINE_BYTES)
            yield number, None
            continue
        yield number, raw


def parse_jsonl(path: Path, builder: Builder[_R]) -> Iterator[_R | Rejection]:
    """Stream a JSON-lines file: one JSON object per line, with the fields of :data:`COLUMNS`.

    ``confidence`` and ``reports`` may be JSON integers or strings; other fields are strings; null or
    an absent key means "not given". Blank lines are skipped; a line that is not a JSON object is
    rejected with its number and the parser's reason.
    """
    name = path.name
    with path.open("rb") as handle:
        for number, raw in _lines(handle):
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
