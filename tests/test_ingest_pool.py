"""Ingest over a pool of processes (``[ingest] workers``, :mod:`node.ingest.pool`): the same stored bytes
as in process, the same rejections with their lines, retractions on top, and no worker left behind.

The nodes are real (keys wrapped in a real SQLite store); the workers are real processes. A test node's
store is copied before its first ingest, so two nodes hold the same OPRF key: one ingests in process,
the other through the pool, and the two stores are compared table by table.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client.protocol.errors import ImportError_
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from node.config import ConfigProblems, load_config
from node.ingest import file_ranges
from node.ingest.csvjson import line_ranges
from node.ingest.pool import RANGE_BYTES
from node.node import Node
from node.testbed import build_federation, write_config

pytestmark = pytest.mark.timeout(180)

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
#: Rows of about one range of the pool (a row of ``_write`` is 60-90 bytes).
CHUNK = RANGE_BYTES // 64
FIELDS = ["kind", "value", "region", "category", "first_seen", "last_seen", "confidence", "tlp", "reports"]


def _write(path: Path, rows: int, *, bad_every: int = 0) -> dict[int, str]:
    """A CSV of ``rows`` rows, mostly Malaysian mobiles (national and E.164), some URLs and e-mail
    addresses, a few repeated; every ``bad_every``-th row broken in turn in one of several ways. Returns
    the line numbers of the broken rows and the field the reason names."""
    bad: dict[int, str] = {}
    breakers = [
        ("value", lambda r: r.__setitem__("value", "12")),
        ("confidence", lambda r: r.__setitem__("confidence", "101")),
        ("last_seen", lambda r: r.__setitem__("last_seen", "2020-01-01")),
        ("kind", lambda r: r.__setitem__("kind", "fax")),
        ("the row has 10 fields", lambda r: r.__setitem__("extra", "x")),  # the CSV reader's own
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        for i in range(rows):
            n = i % (rows - 50)  # the last 50 rows repeat earlier ones: merged, counted as updated
            if n % 10 == 3:
                kind, value = "url", f"https://scam-{n}.example/pay?id={n}"
            elif n % 10 == 7:
                kind, value = "email", f"Refund.{n}@Example.COM"
            else:
                s = 1_234_567 + 7 * n
                kind, value = "phone", f"012-{s // 10**4:03d} {s % 10**4:04d}" if n % 2 else f"+6012{s:07d}"
            row = {
                "kind": kind,
                "value": value,
                "region": "MY",
                "category": ("investment", "romance", "job", "loan")[n % 4],
                "first_seen": f"2026-0{1 + n % 9}-1{n % 10}",
                "last_seen": "2026-11-0" + str(1 + n % 9),
                "confidence": str(n % 101),
                "tlp": ("CLEAR", "GREEN", "AMBER", "")[n % 4],
                "reports": str(1 + n % 7),
            }
            if bad_every and i % bad_every == bad_every - 1:
                field, breaker = breakers[(i // bad_every) % len(breakers)]
                breaker(row)
                bad[i + 2] = field  # the header is line 1
            writer.writerow([row[f] for f in FIELDS] + ([row["extra"]] if "extra" in row else []))
    return bad


def _twin_nodes(tmp_path: Path, *, hmac_kinds: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Two configs of one node (same keys) on two stores holding the same keys and nothing else."""
    member = build_federation(tmp_path / "fed", ["MY"], hmac_kinds=hmac_kinds).members["MY"]
    first, second = tmp_path / "one.db", tmp_path / "two.db"
    write_config(member, [], store_url=f"sqlite:///{first}", hmac_kinds=hmac_kinds)
    Node.open(load_config(member.config), clock=lambda: NOW).close()  # creates the store and its keys
    shutil.copy(first, second)
    other = member.config.with_name("node-two.toml")
    other.write_text(member.config.read_text().replace(str(first), str(second)))
    return member.config, other


def _ingest(config: Path, path: Path, workers: int) -> tuple[int, int, list[tuple[str, str]]]:
    node = Node.open(load_config(config), clock=lambda: NOW)
    try:
        report = node.ingest([path], now=NOW, publish_after=False, workers=workers)
    finally:
        node.close()
    return report.stored, report.updated, [(r.location, r.reason) for r in report.rejections]


def _tables(config: Path) -> dict[str, list[object]]:
    """Every row of the indicators and their digests, and the ingest entries of the audit log without
    their place in it (the second config, naming another store, is audited once more when loaded)."""
    url = load_config(config).store.url
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        tables: dict[str, list[object]] = {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("indicators", "digests")
        }
        entries = [json.loads(entry) for (entry,) in db.execute("SELECT entry FROM audit_log ORDER BY 1")]
    tables["ingest audit"] = [
        {k: v for k, v in e.items() if k not in ("i", "prev")} for e in entries if e["action"] == "ingest"
    ]
    return tables


def test_pooled_ingest_stores_the_same_rows_digests_and_audit_as_in_process(tmp_path: Path) -> None:
    one, two = _twin_nodes(tmp_path, hmac_kinds=("url",))
    path = tmp_path / "mixed.csv"
    bad = _write(path, 5000 + 2 * CHUNK + 123, bad_every=97)  # two store batches, chunks across them

    in_process = _ingest(one, path, workers=1)
    pooled = _ingest(two, path, workers=2)

    assert pooled == in_process
    stored, updated, rejections = pooled
    assert stored + updated + len(rejections) == 5000 + 2 * CHUNK + 123 and updated > 0
    # Every broken row is rejected with its file, line and the field at fault, in file order.
    assert [location for location, _ in rejections] == [f"mixed.csv:{line}" for line in sorted(bad)]
    assert all(reason.startswith(bad[int(loc.split(":")[1])]) for loc, reason in rejections)

    tables_one, tables_two = _tables(one), _tables(two)
    assert tables_two == tables_one  # every row, every digest, every audit entry, byte for byte
    tiers = {row[2] for row in tables_two["digests"]}
    assert tiers == {TIER_OPRF, TIER_HMAC}  # the HMAC tier's digests came from the workers too
    assert len(tables_two["indicators"]) == stored


def test_a_file_of_one_chunk_is_ingested_in_process_with_the_same_result(tmp_path: Path) -> None:
    one, two = _twin_nodes(tmp_path)
    path = tmp_path / "small.csv"
    _write(path, RANGE_BYTES // 100, bad_every=50)
    assert path.stat().st_size <= RANGE_BYTES
    assert _ingest(two, path, workers=2) == _ingest(one, path, workers=1)
    assert _tables(two) == _tables(one)


def test_retractions_after_a_pooled_ingest(tmp_path: Path) -> None:
    config, _ = _twin_nodes(tmp_path)
    path = tmp_path / "phones.csv"
    _write(path, 2 * CHUNK + 1)
    retract = tmp_path / "retract.csv"
    retract.write_text("kind,value,region\nphone,+60121234567,MY\nphone,012-123 4574,MY\nurl,nope,MY\n")
    node = Node.open(load_config(config), clock=lambda: NOW)
    try:
        report = node.ingest([path], now=NOW, publish_after=False, workers=2)
        assert report.stored > 2 * CHUNK - 60 and not report.rejections
        done = node.retract_file(retract, now=NOW)
        assert done.retracted == 2 and [r.location for r in done.rejections] == ["retract.csv:4"]
        status = node.status(now=NOW)["indicators"]["phone"]
        assert status["retracted"] == 2
    finally:
        node.close()


def test_workers_is_checked_in_the_config(tmp_path: Path) -> None:
    member = build_federation(tmp_path / "fed", ["MY"]).members["MY"]
    write_config(member, [])
    text = member.config.read_text()
    assert load_config(member.config).ingest.processes() == (os.cpu_count() or 1)  # one per core
    member.config.write_text(text + "\n[ingest]\nworkers = -1\n")
    with pytest.raises(ConfigProblems, match=r"ingest\.workers"):
        load_config(member.config)
    member.config.write_text(text + "\n[ingest]\nworkers = 3\n")
    assert load_config(member.config).ingest.processes() == 3


def test_json_lines_go_through_the_pool_too(tmp_path: Path) -> None:
    one, two = _twin_nodes(tmp_path)
    rows = tmp_path / "rows.csv"
    _write(rows, 2 * CHUNK + 5, bad_every=101)
    path = tmp_path / "rows.jsonl"
    with rows.open(encoding="utf-8") as source, path.open("w", encoding="utf-8") as out:
        for record in csv.DictReader(source):
            record.pop(None, None)  # a row's extra field: the JSON line simply lacks it
            out.write(json.dumps(record) + "\n")
        out.write("{not json\n")
    pooled = _ingest(two, path, workers=2)
    assert pooled == _ingest(one, path, workers=1)
    assert pooled[2][-1][0] == f"rows.jsonl:{2 * CHUNK + 6}"  # the broken line, rejected with its number
    assert _tables(two) == _tables(one)


def test_ranges_over_a_quoted_line_break_crlf_and_no_final_newline_store_the_same(tmp_path: Path) -> None:
    """The node's own range size: a quoted field with line breaks over the first range's end, CRLF line
    ends, bad rows on both sides of every boundary, no newline at the end of the file."""
    one, two = _twin_nodes(tmp_path, hmac_kinds=("url",))
    path = tmp_path / "crlf.csv"
    rows = tmp_path / "rows.csv"
    bad = _write(rows, 3 * CHUNK, bad_every=7)
    lines = rows.read_text(encoding="utf-8").splitlines()
    header, body = lines[0] + ",note", [line + ",x" for line in lines[1:]]
    text = "\r\n".join([header, *body])
    cut = text.rindex("\r\n", 0, RANGE_BYTES)  # the first range ends on this line end: a record over it
    start = text.rindex("\r\n", 0, cut) + 2  # the line ending there gets a note over lines
    record = text[start:cut].rsplit(",", 1)[0] + ',"a note\r\nover\nthe range end\r\n' + "x" * 300 + '"'
    text = text[:start] + record + text[cut:]
    path.write_bytes(text.encode())  # no final newline
    ranged = file_ranges(path)
    assert ranged is not None
    first = next(line_ranges(path, ranged.start, ranged.line, RANGE_BYTES, csv_lines=True))
    assert start < first.end < start + len(record)  # the first cut falls inside the quoted record

    in_process = _ingest(one, path, workers=1)
    pooled = _ingest(two, path, workers=2)
    assert pooled == in_process
    # the rows broken by ``_write`` are rejected at their lines, those after the note moved down
    at, more = text[:start].count("\n") + 1, record.count("\n")
    expected = [line if line <= at else line + more for line in sorted(bad)]
    assert [location for location, _ in pooled[2]] == [f"crlf.csv:{line}" for line in expected]
    assert _tables(two) == _tables(one)


@pytest.mark.parametrize(
    ("name", "content"), [("empty.jsonl", b""), ("empty.csv", b""), ("header.csv", b"kind,value\r\n")]
)
def test_empty_files_give_the_same_with_workers(tmp_path: Path, name: str, content: bytes) -> None:
    one, two = _twin_nodes(tmp_path)
    path = tmp_path / name
    path.write_bytes(content)
    outcomes = []
    for config, workers in ((one, 1), (two, 2)):
        try:
            outcomes.append(_ingest(config, path, workers=workers))
        except ImportError_ as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] == (
        "empty.csv:1: no header row (the first line is empty)" if name == "empty.csv" else (0, 0, [])
    )
