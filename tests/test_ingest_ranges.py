"""Reading CSV and JSON-lines files in byte ranges, each in a worker process (:mod:`node.ingest.pool`):
the same rows, digests and rejections (with their lines) as one reading of the whole file in process.

The pool is real (two spawned workers); ranges are made tiny here (1 to 4,096 bytes) so that every kind of
line end, quoted line break, bad row and the file's end fall on range boundaries. ``test_ingest_pool``
compares whole stores at the node's own range size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from client.protocol import oprf
from client.protocol.digest import HmacDigester, oprf_input
from client.protocol.errors import ImportError_
from node.ingest import ParsedIndicator, Rejection, file_ranges, parse_file
from node.ingest.csvjson import MAX_LINE_BYTES, line_ranges, read_csv_range
from node.ingest.parsers import RecordBuilder
from node.ingest.pool import Chunk, DigestKeys, IngestPool, day_seconds, row_fields

pytestmark = pytest.mark.timeout(300)

TODAY = date(2026, 11, 29)
KEYS = DigestKeys(
    epoch=3,
    oprf_seed=hashlib.sha256(b"ranges").digest(),
    oprf_info=b"test ranges",
    hmac_key=hashlib.sha256(b"hmac").digest(),
    hmac_kinds=frozenset({"url"}),
    default_region="MY",
    default_tlp="AMBER",
    today=TODAY,
)
SIZES = (1, 7, 64, 4096)


def _rows(n: int, newline: str, *, note: bool = True) -> list[str]:
    """``n`` rows (``kind,value,note,region``), mostly good, some bad in several ways, some with a quoted
    note holding line breaks (the note is a column the node ignores)."""
    out = []
    for i in range(n):
        value = f"+6012{1_000_000 + 13 * i:07d}" if i % 3 else f"https://scam-{i}.example/x"
        kind = "phone" if i % 3 else "url"
        text = f"note {i}"
        if note and i % 5 == 1:
            text = f'"a note{newline}over{chr(13) + chr(10)}three lines, ""quoted"" {i}"'
        if i % 11 == 4:
            value = "12"  # not a phone number
        if i % 17 == 8:
            kind = "fax"
        if i % 19 == 9:
            out.append(f"{kind},{value},{text},MY,surplus")  # one field too many
            continue
        if i % 23 == 10:
            out.append("")  # a blank line, skipped
        out.append(f"{kind},{value},{text},MY")
    return out


def _csv_files() -> Iterator[tuple[str, bytes]]:
    header = "kind,value,note,region"
    for name, nl in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        rows = _rows(120, nl)
        yield f"{name}.csv", (nl.join([header, *rows]) + nl).encode()
        yield f"{name}-no-final-newline.csv", nl.join([header, *rows]).encode()
    mixed = _rows(60, "\n")
    lines = [header, *mixed]
    # line ends of every kind in one file: a lone \r counts as a line end, as for the CSV reader
    yield (
        "mixed-ends.csv",
        "".join(line + ("\n", "\r\n", "\r")[i % 3] for i, line in enumerate(lines)).encode(),
    )
    yield "bom.csv", b"\xef\xbb\xbf" + ("\n".join([header, *_rows(40, "\n")]) + "\n").encode()
    yield (
        "semicolons.csv",
        ("kind;value;region\n" + "".join(f"phone;+6012{i:07d};MY\n" for i in range(50))).encode(),
    )
    yield "header-only.csv", b"kind,value\n"
    yield "header-only-no-newline.csv", b"kind,value"
    yield (
        "header-over-two-lines.csv",
        ('"kind\nx",kind,value\n' + "".join(f"a,phone,+6012{i:07d}\n" for i in range(30))).encode(),
    )
    bad = [
        "phone,+60121234567,ok,MY",
        'phone,"+6012123"4568,bad quote,MY',  # strict CSV: ',' expected after '"'
        "phone,+6012\xff34569,bad byte,MY",
        "phone,+60121234570,ok,MY",
    ]
    yield "bad-csv.csv", ("\n".join([header, *bad * 10]) + "\n").encode("utf-8", "surrogateescape")
    body = "\n".join([header, *_rows(30, "\n")]) + "\n"
    yield "unclosed-quote-at-end.csv", (body + 'phone,+60121234567,"never closed\nand on\n').encode()
    yield "unclosed-quote-in-the-middle.csv", (body + 'url,https://x.example/,"open\n' + body).encode()
    long_note = "\n".join(f"line {i}" for i in range(400))  # one record over many ranges
    yield "long-record.csv", (body + f'phone,+60129999999,"{long_note}",MY\n' + body).encode()
    yield (
        "too-wide-record.csv",
        (body + f'phone,+60129999998,"{long_note}","{long_note}",MY\n' + body).encode(),
    )


def _jsonl_files() -> Iterator[tuple[str, bytes]]:
    good = [f'{{"kind": "phone", "value": "+6012{i:07d}", "category": "loan"}}' for i in range(80)]
    lines = list(good)
    lines[3] = "{not json"
    lines[10] = ""
    lines[17] = '{"kind": "phone", "value": "12"}'
    lines[25] = '["an", "array"]'
    lines[33] = '{"kind": "url", "value": "https://scam.example/a", "confidence": true}'
    yield "rows.jsonl", ("\n".join(lines) + "\n").encode()
    yield "rows-crlf.jsonl", ("\r\n".join(lines)).encode()  # no final newline either
    yield "bom.jsonl", b"\xef\xbb\xbf" + ("\n".join(lines) + "\n").encode()
    yield (
        "bad-byte.jsonl",
        ("\n".join(lines[:5]) + "\n").encode()
        + b'{"kind": "\xff"}\n'
        + ("\n".join(lines[5:]) + "\n").encode(),
    )
    big = '{"kind": "phone", "value": "+60120000001", "pad": "' + "x" * MAX_LINE_BYTES + '"}'
    yield "long-line.jsonl", ("\n".join([*lines[:8], big, *lines[8:]]) + "\n").encode()
    yield "empty.jsonl", b""


def _expected(path: Path) -> Chunk:
    """What one reading of the whole file in process gives, digested as the workers digest."""
    results = list(parse_file(path, default_region="MY", today=TODAY))
    parsed = [r for r in results if isinstance(r, ParsedIndicator)]
    sk = oprf.derive_key_pair(KEYS.oprf_seed, KEYS.oprf_info, oprf.MODE_VOPRF).sk
    inputs = [oprf_input(p.kind, p.canonical) for p in parsed]
    outputs = oprf.evaluate(sk, inputs, oprf.MODE_VOPRF) if inputs else []
    assert KEYS.hmac_key is not None
    hmac = b"".join(
        HmacDigester(KEYS.hmac_key, KEYS.epoch, p.kind).digest(p.canonical)
        for p in parsed
        if p.kind in KEYS.hmac_kinds
    )
    rejections = [r for r in results if isinstance(r, Rejection)]
    return Chunk([row_fields(p) for p in parsed], b"".join(outputs), hmac, rejections, 0, 0)


def _pooled(pool: IngestPool, path: Path, size: int) -> Chunk:
    """The ranges' answers put together."""
    ranged = file_ranges(path)
    assert ranged is not None
    rows, digests, hmac, rejections = [], b"", b"", []
    for chunk in pool.read(ranged, size):
        rows += chunk.rows
        digests += chunk.oprf
        hmac += chunk.hmac
        rejections += chunk.rejections
    return Chunk(rows, digests, hmac, rejections, 0, 0)


@pytest.fixture(scope="module")
def pool() -> Iterator[IngestPool]:
    with IngestPool(KEYS, 2) as started:
        yield started


@pytest.mark.parametrize(("name", "content"), [*_csv_files(), *_jsonl_files()], ids=lambda x: str(x)[:40])
def test_ranges_give_what_one_reading_gives(
    pool: IngestPool, tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    expected = _expected(path)
    assert expected.rows or expected.rejections or name.startswith(("header-only", "empty"))
    for size in SIZES:
        assert _pooled(pool, path, size) == expected, f"ranges of {size} bytes"


def test_the_test_files_put_what_matters_on_range_boundaries(tmp_path: Path) -> None:
    """The files above do exercise the cases: bad rows, quoted line breaks and a record longer than a
    range, and rejections after lone-\\r and CRLF line ends, with their real lines."""
    path = tmp_path / "mixed.csv"
    path.write_bytes(dict(_csv_files())["mixed-ends.csv"])
    locations = [r.location for r in _expected(path).rejections]
    assert len(locations) >= 10 and int(locations[-1].split(":")[1]) > 60
    wide = tmp_path / "wide.csv"
    wide.write_bytes(dict(_csv_files())["too-wide-record.csv"])
    assert any("fields but the header has" in r.reason for r in _expected(wide).rejections)
    ranged = file_ranges(wide)
    assert ranged is not None
    spans = list(line_ranges(wide, ranged.start, ranged.line, 64, csv_lines=True))
    assert len(spans) > 50 and spans[-1].end == wide.stat().st_size
    assert ranged.layout is not None
    builder = RecordBuilder(default_region="MY", default_tlp="AMBER", today=TODAY, source="t")
    stops = [read_csv_range(wide, ranged.layout, span, builder)[1] for span in spans]
    past = [stop - span.end for stop, span in zip(stops, spans, strict=True) if stop != span.end]
    assert past and max(past) > 64 * 10  # records go on past their range's end, one over many ranges


def test_a_csv_without_a_header_is_refused_before_any_worker(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(ImportError_, match="no header row"):
        file_ranges(path)
    with pytest.raises(ImportError_, match="no header row"):
        list(parse_file(path, default_region="MY", today=TODAY))


@pytest.mark.parametrize(
    "day", [date(1, 1, 1), date(1969, 12, 31), date(1970, 1, 1), date(2026, 11, 29), date(9999, 12, 31)]
)
def test_day_seconds_is_utc_midnight(day: date) -> None:
    assert day_seconds(day) == int(datetime.combine(day, time(0, 0), UTC).timestamp())
    assert day_seconds(None) is None


def test_a_worker_error_reaches_the_parent_and_closes_the_pool(pool: IngestPool, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(dict(_csv_files())["lf.csv"])
    ranged = file_ranges(path)
    assert ranged is not None and ranged.layout is not None
    broken = replace(ranged, layout=replace(ranged.layout, at=(99,) * 10))  # a column no row has
    with IngestPool(KEYS, 2) as failing:
        with pytest.raises(IndexError):
            list(failing.read(broken, 64))  # raised in a worker, raised again here
        # the answers still on their way belong to no reading: the pool closed, and says so
        assert all(proc.poll() is not None for proc in failing._procs)
        with pytest.raises(RuntimeError, match="the ingest pool is closed"):
            list(failing.read(ranged, 64))
    assert _pooled(pool, path, 64) == _expected(path)  # another pool is not disturbed


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(dict(_csv_files())["lf.csv"])
    ranged = file_ranges(path)
    assert ranged is not None
    with IngestPool(KEYS, 2) as doomed:
        doomed._procs[1].kill()
        with pytest.raises(RuntimeError, match=r"an ingest worker \(pid \d+\) stopped: exit status -9"):
            list(doomed.read(ranged, 64))
