"""Reading a retraction file for ``petanda-node retract --file``: the indicators to withdraw, one a line.

Two formats, chosen by ``fmt`` or else by the extension (``.jsonl`` and ``.ndjson`` are JSON lines,
anything else CSV):

- **CSV**, one indicator per physical line: ``kind,value[,region]``, or columns named by a header line
  (cells ``kind`` and ``value``, optionally ``region``, in any order, other columns ignored). The
  delimiter is the most frequent of ``,`` ``;`` and tab in the first line; RFC 4180 quotes are read.
- **JSON lines**: one object per line with string members ``kind``, ``value`` and optionally ``region``;
  other members are ignored.

Each line yields a :class:`Retraction` (the canonical form, normalised as on ingest) or a
:class:`~node.ingest.parsers.Rejection` naming ``file:line`` and the reason; nothing is retracted "as is".
Blank lines are skipped (and still counted); a UTF-8 byte-order mark is allowed. Parsing is pure: no
store, no clock.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from client.protocol.canonical import normalize
from client.protocol.errors import ImportError_, InputError
from client.protocol.kinds import KINDS
from node.ingest.csvjson import json_object
from node.ingest.parsers import Rejection, parse_region

__all__ = ["RETRACT_FORMATS", "Retraction", "parse_retractions"]

#: Format names accepted by ``fmt`` (and ``retract --format``).
RETRACT_FORMATS: Final = ("csv", "jsonl")
_JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
_DELIMITERS: Final = (",", ";", "\t")
_UTF8_BOM: Final = "\ufeff"
_MAX_LINE_BYTES: Final = 1 << 16  # a retraction line holds one indicator: 64 KiB is plenty


@dataclass(frozen=True, slots=True)
class Retraction:
    """One indicator to retract: its kind and canonical form, and where the file names it (``f.csv:3``)."""

    kind: str
    canonical: str
    location: str


def _indicator(location: str, kind: object, value: object, region: object, default_region: str) -> Retraction:
    if not isinstance(kind, str) or not kind.strip():
        raise InputError("kind: missing" if kind is None or kind == "" else "kind: not a string")
    kind_name = kind.strip().lower()
    if kind_name not in KINDS:
        raise InputError(f"kind: unknown kind {kind.strip()!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(value, str) or not value.strip():
        raise InputError("value: missing" if value is None or value == "" else "value: not a string")
    if region is None or region == "":
        row_region = default_region
    elif not isinstance(region, str):
        raise InputError("region: not a string")
    else:
        try:
            row_region = parse_region(region)
        except InputError as exc:
            raise InputError(f"region: {exc}") from None
    try:
        canonical = normalize(kind_name, value, row_region)
    except InputError as exc:
        raise InputError(f"value: {exc}") from None
    return Retraction(kind_name, canonical, location)


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)`` of each line, text None for a line that is not UTF-8 or too long."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if len(raw) > _MAX_LINE_BYTES:
                yield number, None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
                continue
            if number == 1:
                text = text.removeprefix(_UTF8_BOM)
            yield number, text.rstrip("\r\n")


def _csv(path: Path, default_region: str) -> Iterator[Retraction | Rejection]:
    delimiter: str | None = None
    columns: dict[str, int] | None = None  # from a header line; None: kind,value[,region]
    for number, text in _lines(path):
        location = f"{path.name}:{number}"
        if text is None:
            yield Rejection(location, "not UTF-8 text, or a line over 64 KiB")
            continue
        if not text.strip():
            continue
        if delimiter is None:  # the first line that holds anything
            delimiter = max((text.count(d), -i, d) for i, d in enumerate(_DELIMITERS))[2]
            try:
                cells = next(csv.reader([text], delimiter=delimiter, strict=True))
            except csv.Error:
                cells = []
            names = [c.strip().lower() for c in cells]
            if "kind" in names and "value" in names:
                if len(set(names)) != len(names):
                    raise ImportError_(location, "a column appears twice in the header")
                columns = {name: names.index(name) for name in ("kind", "value", "region") if name in names}
                continue
        try:
            cells = next(csv.reader([text], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            yield Rejection(location, f"not a CSV line: {exc}")
            continue
        if all(not c.strip() for c in cells):
            continue
        if columns is None:
            if len(cells) not in (2, 3):
                yield Rejection(location, f"expected kind,value[,region], got {len(cells)} columns")
                continue
            kind, value, region = cells[0], cells[1], cells[2].strip() if len(cells) == 3 else None
        else:
            width = max(columns.values()) + 1
            if len(cells) < width:
                yield Rejection(
                    location, f"expected at least {width} columns as in the header, got {len(cells)}"
                )
                continue
            kind, value = cells[columns["kind"]], cells[columns["value"]]
            region = cells[columns["region"]].strip() if "region" in columns else None
        try:
            yield _indicator(location, kind, value, region, default_region)
        except InputError as exc:
            yield Rejection(location, str(exc))


def _jsonl(path: Path, default_region: str) -> Iterator[Retraction | Rejection]:
    for number, text in _lines(path):
        location = f"{path.name}:{number}"
        if text is None:
            yield Rejection(location, "not UTF-8 text, or a line over 64 KiB")
            continue
        if not text.strip():
            continue
        try:
            item = json_object(text)
        except InputError as exc:
            yield Rejection(location, str(exc))
            continue
        try:
            yield _indicator(
                location, item.get("kind"), item.get("value"), item.get("region"), default_region
            )
        except InputError as exc:
            yield Rejection(location, str(exc))


def parse_retractions(
    path: Path, *, default_region: str, fmt: str | None = None
) -> Iterator[Retraction | Rejection]:
    """Read a retraction file, yielding a :class:`Retraction` or a ``Rejection`` per non-blank line.

    The file and ``fmt`` are checked at once (before the first ``next``).

    Args:
        path: The file.
        default_region: Region of national phone numbers and ``BANK:ACCOUNT`` where a line gives none.
        fmt: ``csv`` or ``jsonl`` to override the detection by extension.

    Raises:
        ImportError_: unknown ``fmt``, no such file, or a header that names a column twice.
    """
    if fmt is not None and fmt not in RETRACT_FORMATS:
        raise ImportError_(path.name, f"unknown format {fmt!r}; expected one of {', '.join(RETRACT_FORMATS)}")
    if not path.is_file():
        raise ImportError_(str(path), "no such file")
    chosen = fmt or ("jsonl" if path.suffix.lower() in _JSONL_SUFFIXES else "csv")
    region = parse_region(default_region)
    return _jsonl(path, region) if chosen == "jsonl" else _csv(path, region)
