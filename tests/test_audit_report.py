"""``petanda audit report``: the summaries of client.tools.report and the HTML report, seen in a real
browser."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from client.protocol.auditlog import make_entry
from client.tools.report import (
    CHART_COLOURS,
    PEER_COLOURS,
    RESULT_COLOURS,
    Counts,
    Verification,
    render_html,
    summarise,
    table_rows,
    totals,
    utc_day,
)
from tests.test_audit_verify import T0, event, heads_for, modified, run, write_dir

DAY = 86_400


def e(ts: int, action: str, actor: str, result: str, **extra: Any) -> dict[str, Any]:
    role = "node" if actor == "node" else "investigator" if "/" in actor else "peer"
    return {"ts": ts, "action": action, "actor": actor, "role": role, "result": result, **extra}


def known_events() -> list[dict[str, Any]]:
    """A small log whose totals are worked out by hand in the tests below."""
    outcomes = {
        "TH": {"match": 1, "no_match": 0, "unavailable": 0, "rate_limited": 0, "stale": 0},
        "SG": {"match": 0, "no_match": 1, "unavailable": 0, "rate_limited": 1, "stale": 0},
    }
    ev = "peer.evaluate_oprf"
    return [
        e(T0, ev, "TH", "ok", kind="phone", count=5),
        e(T0 + 60, ev, "TH", "ok", kind="phone"),
        e(T0 + 120, ev, "TH", "rate_limited", kind="phone", count=7),
        e(T0 + 180, ev, "SG", "ok", kind="email", count=3),
        e(T0 + 240, "artefact.refused", "node", "refused", peer="SG", reason="rollback"),
        e(T0 + 300, "sync.pull", "node", "ok", peer="TH", version=4),
        e(T0 + DAY, "investigator.check", "MY/alice", "ok", kind="phone", count=1, outcomes=outcomes),
        e(T0 + DAY + 60, "peer.get_bucket", "TH", "ok", kind="phone", matches=2),
        e(T0 + DAY + 120, ev, "TH", "denied", kind="phone"),
    ]


def known_entries() -> list[bytes]:
    out: list[bytes] = []
    for i, fields in enumerate(known_events()):
        out.append(make_entry(i, out[-1] if out else None, fields))
    return out


def c(**values: int) -> Counts:
    return Counts(**values)


def test_summary_totals_of_a_known_log() -> None:
    summary = summarise(known_events())
    assert summary.entries == 9
    assert (summary.first_ts, summary.last_ts) == (T0, T0 + DAY + 120)
    assert totals(summary, "party") == {
        "MY/alice": c(entries=1),
        "SG": c(entries=2, queries=3, checks=2, rate_limited=1, refused=1),
        # The check's match at TH counts once, under TH (not again under the investigator); the
        # `matches` field of an entry that is not a check (no node writes one) counts nothing.
        "TH": c(entries=6, queries=6, checks=1, matches=1, rate_limited=1, failed=1),
    }
    assert totals(summary, "day") == {
        "2024-05-01": c(entries=6, queries=9, rate_limited=1, refused=1),
        "2024-05-02": c(entries=3, checks=3, matches=1, rate_limited=1, failed=1),
    }
    assert totals(summary, "kind") == {
        "-": c(entries=2, refused=1),
        "email": c(entries=1, queries=3),
        "phone": c(entries=6, queries=6, checks=3, matches=1, rate_limited=2, failed=1),
    }
    assert summary.rows[("TH", "2024-05-01", "phone")] == c(entries=3, queries=6, rate_limited=1)
    assert summary.results["TH"] == Counter({"ok": 4, "rate_limited": 1, "denied": 1})
    assert summary.outcomes == {
        "TH": Counter({"match": 1, "no_match": 0, "unavailable": 0, "rate_limited": 0, "stale": 0}),
        "SG": Counter({"match": 0, "no_match": 1, "unavailable": 0, "rate_limited": 1, "stale": 0}),
    }
    assert summary.actions["peer.evaluate_oprf"] == 5
    assert table_rows(summary, "party")[2] == ["TH", "6", "6", "0", "1", "1", "1", "0", "1"]
    assert table_rows(summary)[0] == ["MY/alice", "2024-05-02", "phone", "1", *["0"] * 7]


def test_summary_tolerates_odd_fields() -> None:
    summary = summarise([{"ts": "yesterday", "count": -3, "matches": True, "peer": 7}, {}])
    assert summary.entries == 2
    assert totals(summary, "day") == {"-": c(entries=2)}
    assert utc_day(T0) == "2024-05-01"
    assert utc_day(True) == "-"


def verified(entries: int = 9) -> Verification:
    return Verification(True, "all good", "MY", entries, "ab" * 32, 1)


def test_html_is_self_contained_and_escaped() -> None:
    events = [
        *known_events(),
        {"ts": T0, "action": "x", "actor": "<script>alert(1)</script>", "result": "ok"},
    ]
    page = render_html(summarise(events), verified(), generated_at=T0)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<link|<img|<iframe""", page, re.IGNORECASE)
    for chart in ("queries-per-day", "results-per-peer", "check-outcomes", "log-growth"):
        assert f'data-chart="{chart}"' in page
    assert 'data-status="ok"' in page
    assert 'data-peer="TH" data-day="2024-05-01" data-value="6"' in page


def test_html_shows_a_red_banner_for_a_broken_log(tmp_path: Path) -> None:
    entries = known_entries()
    altered = list(entries)
    altered[4] = modified(altered[4])
    directory = write_dir(tmp_path / "log", altered, heads_for(entries, [len(entries)]))
    html_file = tmp_path / "report.html"
    assert run("report", str(directory), "--html", str(html_file)) == 1
    page = html_file.read_text()
    assert 'class="banner failed"' in page
    assert "LOG VERIFICATION FAILED at entry 4" in page


def test_cli_report_prints_the_tables_and_writes_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = known_entries()
    directory = write_dir(tmp_path / "log", entries, heads_for(entries, [3, len(entries)]))
    html_file = tmp_path / "report.html"
    assert run("report", str(directory), "--html", str(html_file), "--detail") == 0
    out = capsys.readouterr().out
    assert "log verified" in out
    assert re.search(r"│ TH\s+│\s+6 │\s+6 │\s+0 │\s+1 │\s+1 │\s+1 │\s+0 │\s+1 │", out), out
    assert 'data-status="ok"' in html_file.read_text()


# --- the report in a real browser ---------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG into rows of RGB bytes (pure Python + zlib)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, cc = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else cc
                line[i] = (line[i] + pred) & 0xFF
        previous = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
    return width, height, rows


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: chromium is required (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    entries = known_entries()
    for i in range(len(entries), 300):
        entries.append(make_entry(i, entries[-1], {**event(i), "ts": T0 + 2400 * i}))
    directory = write_dir(tmp_path / "log", entries, heads_for(entries, [len(entries)]))
    html_file = tmp_path / "report.html"
    assert run("report", str(directory), "--html", str(html_file)) == 0
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
    ]  # fmt: skip
    shot = tmp_path / "report.png"
    url = html_file.resolve().as_uri()
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, timeout=120, check=True, text=True
    ).stdout

    for chart in ("queries-per-day", "results-per-peer", "check-outcomes", "log-growth"):
        assert re.search(rf'<svg[^>]*data-chart="{chart}"', dom), chart
    bars = re.findall(r'<rect class="bar"[^>]*data-value="(\d+)"', dom)
    assert len(bars) > 20 and all(int(v) > 0 for v in bars)
    assert re.search(r'<polyline class="line"[^>]*data-value="300"', dom)
    assert 'data-status="ok"' in dom

    width, height, rows = _read_png(shot)
    assert (width, height) == (1200, 1600)
    wanted = {_rgb(colour) for colour in CHART_COLOURS}
    seen: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for x in range(0, len(row), 3):
            pixel = (row[x], row[x + 1], row[x + 2])
            if pixel in wanted:
                seen[pixel] += 1
    total = sum(seen.values())
    assert total > 40_000, seen  # the charts cover a large part of the page
    assert seen[_rgb(PEER_COLOURS[0])] > 1_000  # bars of the first peer in the queries chart
    assert seen[_rgb(RESULT_COLOURS["ok"])] > 1_000  # the ok share of the results chart
    assert len([c for c in seen.values() if c > 200]) >= 6  # several series, not one blot of colour
