"""Every figure of ``petanda audit report`` against figures this test counts from the events it logged.

A log of known events — investigators' checks of one and of several kinds, with invalid indicators and
every peer answer; OPRF evaluations of every result; syncs, refused artefacts, auditors' calls,
aggregated reads, alerts; two check entries in the format written before ``outcomes_by_kind`` — is built
with the node's own entry builders (:func:`node.audit.event`, :func:`node.audit.check_fields`) and
:func:`client.protocol.auditlog.make_entry`. The report is run as the auditor runs it, and every figure
it prints in the terminal and writes into the HTML (tables, total lines, chart values, enumeration,
alerts, reads) must equal what the test computes from its own record of the events, never from the
report's code.

What the tables count (``docs/auditors.md``, "Reading a report"): ``indicators``, one per indicator an
investigator checked, under that person; ``checks`` and ``matches``, one per (indicator, peer) asked,
under that peer; all three under the indicator's kind. Every event counts once in every table.
"""

from __future__ import annotations

import html
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from client.protocol.auditlog import decode_entry, make_entry
from client.protocol.enumeration import HOME_SPACE_TYPES, numbering_space
from client.protocol.model import Outcome, PeerOutcome, PeerStatus, Query
from node.audit import check_fields, event
from tests.test_audit_verify import heads_for, run, write_dir

T0 = 1_714_521_600  # 2024-05-01T00:00:00Z
DAY = 86_400
DAYS = 4
PEERS = ("TH", "SG", "ID")
PEOPLE = ("MY/alice", "MY/bob")
KINDS = ("phone", "email", "domain", "crypto_wallet")
ANSWERS = (PeerStatus.MATCH, PeerStatus.NO_MATCH, PeerStatus.UNAVAILABLE, PeerStatus.RATE_LIMITED)
ANSWERS += (PeerStatus.STALE,)
COLUMNS = ("entries", "queries", "indicators", "checks", "matches", "limited", "refused", "failed")
QUOTAS = {"TH": 1000, "SG": 1000, "ID": 100}


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


# --- the events, as the test records them -------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """One indicator of a check: its kind, whether it was valid, and each peer's answer."""

    kind: str
    valid: bool
    answers: tuple[tuple[str, PeerStatus], ...]


@dataclass(frozen=True)
class CheckCall:
    ts: int
    person: str
    asked: tuple[Asked, ...]
    legacy: bool = False  # written before outcomes_by_kind: no per-kind split in the entry


@dataclass(frozen=True)
class Plain:
    """Any other entry: who, what, the result, and the peer, kind and count it names."""

    ts: int
    action: str
    actor: str
    role: str
    result: str = "ok"
    peer: str = ""
    kind: str = ""
    count: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def party(self) -> str:
        return self.peer or self.actor


@dataclass
class Truth:
    checks: list[CheckCall] = field(default_factory=list)
    plain: list[Plain] = field(default_factory=list)

    def ordered(self) -> list[CheckCall | Plain]:
        return sorted([*self.checks, *self.plain], key=lambda e: e.ts)


def known_truth() -> Truth:
    rng = random.Random(20240501)
    truth = Truth()
    at = lambda day: T0 + day * DAY + rng.randrange(1, DAY - 1)  # noqa: E731
    for n in range(48):
        one_kind = rng.random() < 0.5
        kind = rng.choice(KINDS)
        asked = []
        for _ in range(rng.randint(1, 6)):
            k = kind if one_kind else rng.choice(KINDS)
            valid = rng.random() > 0.1
            answers = tuple(
                (peer, rng.choices(ANSWERS, weights=(20, 55, 10, 10, 5))[0]) for peer in PEERS
            ) if valid else ()  # fmt: skip
            asked.append(Asked(k, valid, answers))
        truth.checks.append(CheckCall(at(n % DAYS), rng.choice(PEOPLE), tuple(asked)))
    # Two entries of a node written before outcomes_by_kind: one kind, and several kinds ("mixed").
    match_at_th = (("TH", PeerStatus.MATCH), ("SG", PeerStatus.NO_MATCH), ("ID", PeerStatus.MATCH))
    truth.checks.append(CheckCall(at(1), "MY/alice", (Asked("phone", True, match_at_th),) * 2, legacy=True))
    mixed = (Asked("email", True, match_at_th), Asked("domain", True, match_at_th))
    truth.checks.append(CheckCall(at(2), "MY/bob", mixed, legacy=True))

    ev = "peer.evaluate_oprf"
    for day in range(DAYS):
        for _ in range(6):
            truth.plain.append(Plain(at(day), ev, "TH", "peer", kind="phone", count=rng.randint(1, 40)))
        truth.plain.append(Plain(at(day), ev, "SG", "peer", kind="email", count=rng.randint(1, 9)))
        if day:  # ID evaluates more than half its quota of domains on days 1, 2 and 3
            truth.plain.append(Plain(at(day), ev, "ID", "peer", kind="domain", count=51 + day))
    truth.plain += [
        Plain(at(0), ev, "TH", "peer", "rate_limited", kind="phone", count=900),
        Plain(at(2), ev, "TH", "peer", "invalid", kind="phone", count=1),
        Plain(at(3), ev, "SG", "peer", "denied", kind="email", count=2),
        Plain(at(1), "investigator.check", "MY/bob", "investigator", "rate_limited", count=70),
        Plain(at(0), "sync.pull", "node", "node", peer="TH"),
        Plain(at(1), "sync.pull", "node", "node", "error", peer="SG"),
        Plain(at(2), "artefact.refused", "node", "node", "refused", peer="ID"),
        Plain(at(0), "publish", "node", "node"),
        Plain(at(0), "peer.get_filter", "TH", "peer", kind="phone", count=4096),
        Plain(at(3), "auditor.get_entries", "MY/carol", "auditor", count=10),
        Plain(at(3), "auditor.fresh_tree_head", "MY/carol", "auditor", "rate_limited"),
        Plain(at(2), "peer.reads", "TH", "peer", peer="TH", count=120, extra=(("method", "GetManifest"),)),
        Plain(at(3), "peer.reads", "TH", "peer", peer="TH", count=30, extra=(("method", "GetManifest"),)),
        Plain(at(3), "peer.reads", "SG", "peer", peer="SG", count=7, extra=(("method", "GetFilter"),)),
        Plain(at(3), "quota.alert", "node", "node", "alert", kind="phone",
              extra=(("limit", "holder_daily"), ("quota", 5000), ("used", 5000), ("trigger", "TH"))),
    ]  # fmt: skip
    return truth


def entries_of(truth: Truth) -> list[bytes]:
    """The log, written with the node's own builders."""
    out: list[bytes] = []
    for item in truth.ordered():
        if isinstance(item, CheckCall):
            queries = [Query(a.kind, "x") for a in item.asked]
            outcomes = [
                Outcome("", "" if a.valid else "unparsable", tuple(PeerOutcome(p, s) for p, s in a.answers))
                for a in item.asked
            ]
            fields = check_fields(queries, outcomes, {})
            if item.legacy:
                del fields["outcomes_by_kind"]
            fields = event(
                "investigator.check", actor=item.person, role="investigator", now=item.ts, **fields
            )
        else:
            named: dict[str, Any] = dict(item.extra)
            if item.peer and item.actor != item.peer:
                named["peer"] = item.peer
            elif item.action == "peer.reads":
                named["peer"] = item.peer
            if item.kind:
                named["kind"] = item.kind
            if item.count is not None:
                named["count"] = item.count
            if item.action == "peer.evaluate_oprf":
                named["daily_quota"] = QUOTAS[item.actor]
            fields = event(
                item.action, actor=item.actor, role=item.role, now=item.ts, result=item.result, **named
            )
        out.append(make_entry(len(out), out[-1] if out else None, fields))
    return out


# --- the figures, counted from the record of the events --------------------------------------------------

Key = tuple[str, str, str]


def expected_rows(truth: Truth) -> dict[Key, Counter[str]]:
    """``(party, day, kind) -> column -> figure``, counted from the events."""
    rows: dict[Key, Counter[str]] = defaultdict(Counter)
    for call in truth.checks:
        day = iso(call.ts)
        kinds = {a.kind for a in call.asked}
        call_kind = next(iter(kinds)) if len(kinds) == 1 else "mixed"
        rows[(call.person, day, call_kind)]["entries"] += 1
        for asked in call.asked:
            rows[(call.person, day, asked.kind)]["indicators"] += 1
            for peer, status in asked.answers:
                kind = call_kind if call.legacy else asked.kind
                rows[(peer, day, kind)]["checks"] += 1
                rows[(peer, day, kind)]["matches"] += status is PeerStatus.MATCH
                rows[(peer, day, kind)]["limited"] += status is PeerStatus.RATE_LIMITED
    for item in truth.plain:
        row = rows[(item.party, iso(item.ts), item.kind or "-")]
        row["entries"] += 1
        if item.action == "peer.evaluate_oprf" and item.result == "ok":
            row["queries"] += item.count or 1
        row["limited"] += item.result == "rate_limited"
        row["refused"] += item.result == "refused"
        row["failed"] += item.result in ("denied", "invalid", "error")
    return rows


def grouped(rows: dict[Key, Counter[str]], axis: int | None) -> dict[tuple[str, ...], list[int]]:
    out: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for key, figures in rows.items():
        out[key if axis is None else (key[axis],)].update(figures)
    return {key: [out[key][c] for c in COLUMNS] for key in out}


# --- reading the report back ----------------------------------------------------------------------------


def html_table(page: str, table_id: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Headings, body rows and total line (empty if none) of an HTML table."""
    match = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert match, table_id
    body = match.group(1)
    heads = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", body)]

    def cells(part: str) -> list[list[str]]:
        return [
            [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", part, re.S)
        ]

    tbody = re.search(r"<tbody>(.*?)</tbody>", body, re.S)
    tfoot = re.search(r"<tfoot>(.*?)</tfoot>", body, re.S)
    total = cells(tfoot.group(1))[0] if tfoot else []
    return heads, cells(tbody.group(1)) if tbody else [], total


def html_caption(page: str, table_id: str) -> str:
    match = re.search(rf'<table id="{table_id}"><caption>(.*?)</caption>', page, re.S)
    assert match, table_id
    return html.unescape(match.group(1))


def terminal_table(out: str, title: str) -> tuple[list[str], list[list[str]], list[str]]:
    """Headings, body rows and total line of the rich table printed under ``title``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    top = next(i for i in range(start, len(lines)) if lines[i].startswith("┏"))
    split = lambda line: [c.strip() for c in line.strip()[1:-1].split(line.strip()[0])]  # noqa: E731
    heads = split(lines[top + 1])
    body, total, section = [], [], "body"
    for line in lines[top + 3 :]:
        if line.startswith("└"):
            break
        if line.startswith("├"):
            section = "total"
        elif line.startswith("│"):
            (body if section == "body" else total).append(split(line))
    assert len(total) <= 1
    return heads, body, total[0] if total else []


def as_figures(rows: Iterable[list[str]], keys: int) -> dict[tuple[str, ...], list[int]]:
    return {tuple(r[:keys]): [int(c) for c in r[keys:]] for r in rows}


def svg_values(page: str, chart: str, element: str, *attributes: str) -> dict[tuple[str, ...], int]:
    match = re.search(rf'<svg data-chart="{chart}"(.*?)</svg>', page, re.S)
    assert match, chart
    out = {}
    for tag in re.findall(rf"<{element} [^>]*>", match.group(1)):
        if "data-value" not in tag or all(f"{a}=" not in tag for a in attributes):
            continue
        key = tuple(html.unescape(re.search(rf'{a}="([^"]*)"', tag).group(1)) for a in attributes)  # type: ignore[union-attr]
        out[key] = int(re.search(r'data-value="(\d+)"', tag).group(1))  # type: ignore[union-attr]
    return out


# --- the test -------------------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Truth, list[bytes], str, str]:
    truth = known_truth()
    entries = entries_of(truth)
    directory = write_dir(tmp_path / "log", entries, heads_for(entries, [len(entries) // 2, len(entries)]))
    page_path = tmp_path / "report.html"
    capsys.readouterr()
    assert run("report", str(directory), "--detail", "--html", str(page_path)) == 0
    return truth, entries, capsys.readouterr().out, page_path.read_text()


def test_every_table_figure_of_the_report_equals_the_events(
    report: tuple[Truth, list[bytes], str, str],
) -> None:
    truth, entries, out, page = report
    rows = expected_rows(truth)
    total = grouped(rows, None)
    grand = [sum(figures[i] for figures in total.values()) for i in range(len(COLUMNS))]
    tables = {
        "by-peer": ("Per peer or actor", ("peer",), grouped(rows, 0)),
        "by-day": ("Per UTC day", ("day",), grouped(rows, 1)),
        "by-kind": ("Per kind", ("kind",), grouped(rows, 2)),
        "detail": ("Per peer, day and kind", ("peer", "day", "kind"), total),
    }
    for table_id, (title, keys, want) in tables.items():
        want = {k: v for k, v in want.items() if any(v)}
        heads, body, foot = html_table(page, table_id)
        assert heads == [*keys, *COLUMNS], table_id
        assert as_figures(body, len(keys)) == want, table_id
        assert foot == ["total", *[""] * (len(keys) - 1), *map(str, grand)], table_id
        caption = html_caption(page, table_id)
        assert caption.startswith(title) and "one per (indicator, peer)" in caption, caption
        assert "one per indicator checked" in caption, caption

        heads, body, foot = terminal_table(out, title)
        assert heads == [*keys, *COLUMNS], title
        assert as_figures(body, len(keys)) == want, title
        assert foot == ["total", *[""] * (len(keys) - 1), *map(str, grand)], title

    # One match is counted once: the tables' total is the number of (indicator, peer) pairs answered
    # match, which is also the sum of the check entries' own `matches` fields.
    pairs = [s for call in truth.checks for a in call.asked for _, s in a.answers]
    assert grand[COLUMNS.index("matches")] == pairs.count(PeerStatus.MATCH) > 50
    logged = [decode_entry(e) for e in entries]
    assert grand[COLUMNS.index("matches")] == sum(
        e["matches"] for e in logged if e["action"] == "investigator.check" and "matches" in e
    )
    assert grand[COLUMNS.index("checks")] == len(pairs)
    assert grand[COLUMNS.index("indicators")] == sum(len(call.asked) for call in truth.checks)
    assert grand[COLUMNS.index("entries")] == len(entries)
    # Checks are counted under their kinds: no look-up is left under kind "-", and under "mixed" only
    # those of the older entry of several kinds, which the entry does not split.
    by_kind = grouped(rows, 2)
    checks = COLUMNS.index("checks")
    assert by_kind[("-",)][checks] == 0
    assert by_kind[("mixed",)][checks] == 2 * len(PEERS)
    assert sum(by_kind[(kind,)][checks] for kind in KINDS) == len(pairs) - 2 * len(PEERS)

    # Per action, the banner and the page's summary.
    _, body, _ = html_table(page, "by-action")
    assert as_figures(body, 1) == {
        (a,): [n] for a, n in Counter(decode_entry(e)["action"] for e in entries).items()
    }
    actions = Counter(["investigator.check"] * len(truth.checks) + [p.action for p in truth.plain])
    assert as_figures(body, 1) == {(a,): [n] for a, n in actions.items()}
    assert f"Log verified: {len(entries)} entries, 2 signed tree heads" in page
    assert f"<dt>Entries</dt><dd>{len(entries)}</dd>" in page
    first, last = min(e.ts for e in truth.ordered()), max(e.ts for e in truth.ordered())
    assert f"<dd>{iso(first)} to {iso(last)}</dd>" in page


def test_every_chart_value_of_the_report_equals_the_events(
    report: tuple[Truth, list[bytes], str, str],
) -> None:
    truth, _entries, _out, page = report
    oprf_ok = [p for p in truth.plain if p.action == "peer.evaluate_oprf" and p.result == "ok"]
    per_peer_day: Counter[tuple[str, str]] = Counter()
    for p in oprf_ok:
        per_peer_day[(p.actor, iso(p.ts))] += p.count or 1
    assert svg_values(page, "queries-per-day", "rect", "data-peer", "data-day") == dict(per_peer_day)

    results: Counter[tuple[str, str]] = Counter()
    for call in truth.checks:
        results[(call.person, "ok")] += 1
    for p in truth.plain:
        results[(p.party, p.result if p.result != "alert" else "other")] += 1
    assert svg_values(page, "results-per-peer", "rect", "data-peer", "data-category") == dict(results)

    outcomes: Counter[tuple[str, str]] = Counter(
        (peer, status.value) for call in truth.checks for a in call.asked for peer, status in a.answers
    )
    assert svg_values(page, "check-outcomes", "rect", "data-peer", "data-category") == dict(outcomes)

    per_day = Counter(iso(e.ts) for e in truth.ordered())
    days = sorted(per_day)
    growth = {(d,): sum(per_day[x] for x in days if x <= d) for d in days}
    assert svg_values(page, "log-growth", "circle", "data-day") == growth


def test_enumeration_alerts_and_reads_figures_equal_the_events(
    report: tuple[Truth, list[bytes], str, str],
) -> None:
    truth, _entries, out, page = report
    last_day = max(e.ts for e in truth.ordered()) // DAY
    space = numbering_space("MY", HOME_SPACE_TYPES)
    volumes: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)
    for p in truth.plain:
        if p.action == "peer.evaluate_oprf" and p.result == "ok":
            volumes[(p.actor, p.kind)][p.ts // DAY] += p.count or 0
    want = []
    for (peer, kind), per_day in sorted(volumes.items()):
        window = [sum(n for d, n in per_day.items() if last_day - w < d <= last_day) for w in (1, 7, 30)]
        used = f"{window[0] / QUOTAS[peer]:.0%}"
        share = f"{window[2] / space:.4%}" if kind == "phone" else "-"
        want.append([peer, kind, *map(str, window), str(QUOTAS[peer]), used, share])
    _, body, _ = html_table(page, "exposure")
    assert body == want
    _, body, _ = terminal_table(out, "OPRF evaluations per peer and kind")
    assert body == want

    # ID evaluated more than half its daily quota of domains on days 1, 2 and 3: the rule is met once,
    # on day 3 (the first day that closes three such days).
    _, body, _ = html_table(page, "enumeration-found")
    assert body == [["ID", "domain", "quota_share", iso(T0 + 3 * DAY), "1"]]
    assert f"enumeration pattern ID domain: quota_share met on 1 day(s), first {iso(T0 + 3 * DAY)}" in out

    [alert] = [p for p in truth.plain if p.action == "quota.alert"]
    _, body, _ = html_table(page, "alerts")
    assert body == [[iso(alert.ts), "quota.alert", "TH", "phone", "holder_daily", "5000 of 5000 used"]]
    assert "quota.alert TH phone: 5000 of 5000 used" in out

    reads: dict[tuple[str, str], list[int]] = {}
    for p in truth.plain:
        if p.action == "peer.reads":
            tally = reads.setdefault((p.peer, dict(p.extra)["method"]), [0, 0])
            tally[0] += p.count or 0
            tally[1] += 1
    want = [[peer, method, str(calls), str(n)] for (peer, method), (calls, n) in sorted(reads.items())]
    assert html_table(page, "reads")[1] == want
    assert terminal_table(out, "Aggregated reads")[1] == want


def test_the_report_says_what_every_column_counts(report: tuple[Truth, list[bytes], str, str]) -> None:
    _truth, _entries, out, page = report
    definitions = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", page.split('id="columns"')[1]))
    assert list(definitions)[: len(COLUMNS)] == list(COLUMNS)
    assert "one per indicator" in definitions["indicators"]
    assert "one per (indicator, peer)" in definitions["checks"]
    assert "one per (indicator, peer)" in definitions["matches"]
    for column in COLUMNS:
        assert re.search(rf"^  {column}: ", out, re.M), column
