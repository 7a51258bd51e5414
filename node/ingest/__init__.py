"""Reading indicator files for ``petanda-node ingest``: CSV, JSON lines, STIX 2.1 bundles, MISP events.

:func:`parse_file` yields, for each row or object of the file, either a :class:`ParsedIndicator`
(canonical form and checked metadata) or a :class:`Rejection` naming the line or object and the reason.
Parsing is pure: no store, no clock (``today`` is a parameter). ``docs/operators.md`` is the
operator's description of the formats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Final

from client.protocol.errors import ImportError_
from node.ingest.csvjson import FileRanges, csv_layout, parse_csv, parse_jsonl
from node.ingest.misp import parse_misp_event
from node.ingest.parsers import (
    META_FIELDS,
    ParsedIndicator,
    RecordBuilder,
    Rejection,
)
from node.ingest.stix import parse_stix_bundle

__all__ = [
    "FORMATS",
    "META_FIELDS",
    "FileRanges",
    "ParsedIndicator",
    "Rejection",
    "detect_format",
    "file_ranges",
    "parse_file",
]

#: Format names accepted by ``fmt`` (and ``--format``).
FORMATS: Final = ("csv", "jsonl", "stix", "misp")
_EXTENSIONS: Final = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _load_json(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except UnicodeDecodeError:
        raise ImportError_(path.name, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ImportError_(
            f"{path.name}:{exc.lineno}", f"not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    except RecursionError:
        raise ImportError_(path.name, "not valid JSON: nested too deeply") from None


def _json_format(document: object, name: str) -> str:
    if isinstance(document, dict):
        if document.get("type") == "bundle":
            return "stix"
        if "Event" in document:
            return "misp"
    raise ImportError_(
        name, 'JSON file is neither a STIX bundle ("type": "bundle") nor a MISP event ("Event")'
    )


def detect_format(path: Path) -> str:
    """Return the format of ``path`` from its extension, and for ``.json`` from its content.

    Raises:
        ImportError_: the extension is unknown, or a ``.json`` file is neither a bundle nor an event.
    """
    suffix = path.suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix == ".json":
        return _json_format(_load_json(path), path.name)
    raise ImportError_(
        path.name, f"unknown file format {suffix or '(no extension)'!r}: use .csv, .jsonl, .ndjson or .json"
    )


def parse_file(
    path: Path,
    *,
    default_region: str,
    today: date,
    default_tlp: str = "AMBER",
    fmt: str | None = None,
    source: str | None = None,
) -> Iterator[ParsedIndicator | Rejection]:
    """Read an indicator file, yielding one result per indicator or rejected row/object.

    CSV and JSON lines are streamed; a STIX bundle or MISP event is one JSON document, read whole.
    The format, the defaults and a JSON document are checked at once (before the first ``next``);
    a CSV header is checked on the first ``next``.

    Args:
        path: The file.
        default_region: ISO 3166 alpha-2 country used where a row gives no region: national phone
            numbers and ``BANK:ACCOUNT`` bank accounts are read as of this country.
        today: The day of the ingest: the default first/last seen, and the reference for expiry.
        default_tlp: TLP level of indicators whose file gives none.
        fmt: ``csv``, ``jsonl``, ``stix`` or ``misp`` to override the detection.
        source: What :attr:`ParsedIndicator.source` says; by default ``format:file name``.

    Raises:
        ImportError_: the file cannot be read as the format (names the file, and the line if known).
        InputError: ``default_region``, ``default_tlp`` or ``fmt`` is not valid.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ImportError_(path.name, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ImportError_(str(path), "no such file")
    document: object = None
    if fmt in ("stix", "misp") or (fmt is None and path.suffix.lower() == ".json"):
        document = _load_json(path)
        chosen = fmt or _json_format(document, path.name)
    else:
        chosen = fmt or detect_format(path)
    builder = RecordBuilder(
        default_region=default_region,
        default_tlp=default_tlp,
        today=today,
        source=source if source is not None else f"{chosen}:{path.name}",
    )
    if chosen == "csv":
        return parse_csv(path, builder)
    if chosen == "jsonl":
        return parse_jsonl(path, builder)
    if chosen == "stix":
        return parse_stix_bundle(document, path.name, builder)
    return parse_misp_event(document, path.name, builder)


def file_ranges(path: Path, *, fmt: str | None = None) -> FileRanges | None:
    """For a line-oriented format (CSV, JSON lines): what reading ``path`` in byte ranges needs, each
    range in another process (:mod:`node.ingest.pool`), with the same results as :func:`parse_file`; a
    CSV header is read and checked here. None for a JSON document (STIX, MISP), which
    :func:`parse_file` reads whole.

    Raises:
        ImportError_: as :func:`parse_file`.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ImportError_(path.name, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ImportError_(str(path), "no such file")
    if fmt in ("stix", "misp") or (fmt is None and path.suffix.lower() == ".json"):
        return None
    chosen = fmt or detect_format(path)
    source = f"{chosen}:{path.name}"
    if chosen == "csv":
        layout = csv_layout(path)
        return FileRanges(path, source, layout, layout.data_start, layout.data_line)
    return FileRanges(path, source, None, 0, 1)
