"""Summaries of an audit log and their self-contained HTML report (pure: no I/O, no network).

:func:`summarise` folds decoded entries (:func:`client.protocol.auditlog.decode_entry`) into a
:class:`Summary`: counters per *party* (the ``peer`` field of an entry when it has one, else its
``actor``), per UTC day and per indicator kind. Every event is counted once in every table: the
investigators' checks and matches count one per (indicator, peer) asked, under that peer and the
indicator's kind; the indicators an investigator asked count one each, under that person
(:data:`COLUMNS` says what each column counts). :func:`render_html` turns a summary and the log's
verification status into one HTML document whose charts are inline SVG drawn here, with no script,
stylesheet, font or image fetched from anywhere. What each counter counts is defined in
``docs/auditors.md`` ("Reading a report").

One module of this size: the report's figures and their HTML rendering must show the same numbers.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from client.protocol.enumeration import (
    ACTION_ALERT,
    EXPOSURE_HEADERS,
    HOME_SPACE_TYPES,
    WINDOWS,
    Rules,
    Volume,
    assess,
    day_of,
    figures,
    iso_day,
    numbering_space,
    region_of,
)

__all__ = [
    "CHART_COLOURS",
    "CHECKS_NOTE",
    "COLUMNS",
    "COUNTER_NAMES",
    "HEADINGS",
    "MIXED",
    "OUTCOMES",
    "PEER_COLOURS",
    "RESULTS",
    "RESULT_COLOURS",
    "Counts",
    "Summary",
    "Verification",
    "exposure",
    "exposure_rows",
    "grand_total",
    "render_html",
    "summarise",
    "table_rows",
    "total_row",
    "totals",
    "utc_day",
]

#: The ``result`` values a node writes, in the order the charts stack them.
RESULTS: Final = ("ok", "rate_limited", "denied", "invalid", "refused", "error")
#: The per-peer outcomes an ``investigator.check`` entry counts, in chart order.
OUTCOMES: Final = ("match", "no_match", "unavailable", "rate_limited", "stale")

RESULT_COLOURS: Final[Mapping[str, str]] = {
    "ok": "#2e7d32",
    "rate_limited": "#f9a825",
    "denied": "#c62828",
    "invalid": "#6a1b9a",
    "refused": "#ef6c00",
    "error": "#455a64",
    "other": "#9e9e9e",
}
OUTCOME_COLOURS: Final[Mapping[str, str]] = {
    "match": "#d81b60",
    "no_match": "#00897b",
    "unavailable": "#8d6e63",
    "rate_limited": "#f9a825",
    "stale": "#5e35b1",
}
#: Colours of the parties in the queries-per-day chart, assigned in sorted order and reused cyclically.
PEER_COLOURS: Final = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
)
GROWTH_COLOUR: Final = "#1565c0"
#: Every colour a chart fills or strokes with (a screenshot test counts pixels of these).
CHART_COLOURS: Final = (
    *PEER_COLOURS,
    *RESULT_COLOURS.values(),
    *OUTCOME_COLOURS.values(),
    GROWTH_COLOUR,
)
#: Longest run of days drawn in the per-day charts (the most recent ones are kept).
MAX_CHART_DAYS: Final = 731
UNKNOWN: Final = "-"
#: The kind under which a check entry of several kinds is counted (its figures go under each kind).
MIXED: Final = "mixed"

Axis = Literal["party", "day", "kind"]


@dataclass(slots=True)
class Counts:
    """Counters of one group of entries (definitions in ``docs/auditors.md``)."""

    entries: int = 0
    queries: int = 0
    indicators: int = 0
    checks: int = 0
    matches: int = 0
    rate_limited: int = 0
    refused: int = 0
    failed: int = 0

    def add(self, other: Counts) -> None:
        """Add ``other``'s counters to these."""
        for name in COUNTER_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))


#: The counter names of :class:`Counts`, in column order.
COUNTER_NAMES: Final = tuple(f.name for f in fields(Counts))
#: Column heading and definition of each counter, in column order (the report prints them).
COLUMNS: Final[Mapping[str, tuple[str, str]]] = {
    "entries": ("entries", "log entries of that party, day and kind; each entry counts once"),
    "queries": (
        "queries",
        "OPRF evaluations this node performed for that peer (count of ok peer.evaluate_oprf entries)",
    ),
    "indicators": (
        "indicators",
        "indicators this node's investigators checked, one per indicator whatever the number of peers, "
        "under the investigator and the indicator's kind",
    ),
    "checks": (
        "checks",
        "those indicators' look-ups, one per (indicator, peer) asked, under the peer asked",
    ),
    "matches": (
        "matches",
        "of those look-ups, the ones the peer answered match: one per (indicator, peer), under the peer",
    ),
    "rate_limited": (
        "limited",
        "entries with result rate_limited, and look-ups the peer refused for its rate limit",
    ),
    "refused": ("refused", "artefacts of that peer this node refused (artefact.refused, result refused)"),
    "failed": ("failed", "entries with result denied, invalid or error"),
}
#: What the tables' check figures count, for their headings.
CHECKS_NOTE: Final = (
    "indicators: one per indicator checked; checks and matches: one per (indicator, peer) asked"
)


@dataclass(slots=True)
class Summary:
    """Everything a report shows, folded from the entries in one pass."""

    entries: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    #: ``(party, day, kind) -> counters``.
    rows: dict[tuple[str, str, str], Counts] = field(default_factory=dict)
    #: ``party -> result -> entries``.
    results: dict[str, Counter[str]] = field(default_factory=dict)
    #: ``peer -> outcome -> count`` over ``investigator.check`` entries.
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    #: ``action -> entries``.
    actions: Counter[str] = field(default_factory=Counter)
    #: ``day -> entries logged that day``.
    per_day: Counter[str] = field(default_factory=Counter)
    #: OPRF evaluations per peer, kind and UTC day, as the node itself folds them.
    volume: Volume = field(default_factory=Volume)
    #: ``(peer, method) -> [calls, entries]`` of the aggregated ``peer.reads`` entries.
    reads: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: The ``quota.alert``, ``peer.enumeration_alert``, ``peer.fp_alert``, ``fork``, ``node.recovered``
    #: and ``node.restored`` entries, in log order.
    alerts: list[Mapping[str, Any]] = field(default_factory=list)


#: Audit actions the report lists as alerts.
ALERT_ACTIONS: Final = (
    ACTION_ALERT,
    "quota.alert",
    "peer.fp_alert",
    "fork",
    "node.recovered",
    "node.restored",
)


def alert_party(alert: Mapping[str, Any]) -> str:
    """The peer an alert is about."""
    return _text(alert.get("peer") or alert.get("trigger") or alert.get("actor") or "-")


def alert_detail(alert: Mapping[str, Any]) -> str:
    """One line saying what an alert found."""
    action = alert.get("action")
    if action == "peer.fp_alert":
        return (
            f"{alert.get('unopened')} of {alert.get('tested')} values hit its filter without a record "
            f"(expected {alert.get('expected')}, p = {alert.get('p_value')})"
        )
    if action == "fork":
        return _text(alert.get("reason"))
    if action in ("node.recovered", "node.restored"):
        who = "it" if action == "node.recovered" else "this node"
        return (
            f"{who} restored a backup: log from size {alert.get('old_size')} back to "
            f"{alert.get('new_size')}, "
            f"manifests above version {alert.get('old_manifest_version')} (statement "
            f"{alert.get('sequence')}): {_text(alert.get('reason'))}"
        )
    return _text(alert.get("detail") or f"{alert.get('used')} of {alert.get('quota')} used")


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of verifying the log a report is drawn from."""

    ok: bool
    message: str
    node_id: str
    tree_size: int
    root_hex: str
    heads: int
    #: First bad entry index when the log is broken.
    bad_index: int | None = None


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def utc_day(ts: object) -> str:
    """Return the UTC date (``YYYY-MM-DD``) of unix time ``ts``, or ``"-"`` if it is not one."""
    if type(ts) is not int:
        return UNKNOWN
    try:
        return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return UNKNOWN


def _int(value: object, default: int = 0) -> int:
    """A non-negative JSON integer field, or ``default``."""
    return value if type(value) is int and value >= 0 else default


def _text(value: object) -> str:
    return value if isinstance(value, str) and value else UNKNOWN


def summarise(entries: Iterable[Mapping[str, Any]]) -> Summary:
    """Fold decoded audit entries into a :class:`Summary`.

    Per entry: the party is ``peer`` if present, else ``actor``; its kind is ``kind``, else the one kind
    of a check's ``kinds``, else :data:`MIXED` for a check of several kinds, else ``-``. ``entries``
    counts it once there. ``queries`` adds ``count`` (default 1) of an ``ok`` ``peer.evaluate_oprf``;
    ``rate_limited`` counts ``rate_limited`` results; ``refused`` counts ``artefact.refused`` actions and
    ``refused`` results; ``failed`` counts ``denied``, ``invalid`` and ``error`` results.

    An ``investigator.check`` adds ``indicators``, ``kinds[k]`` under the investigator and kind ``k``;
    and per peer and status of its ``outcomes_by_kind`` (``{kind: {peer: {status: n}}}``) adds ``checks``
    (every status), ``matches`` (``match``) and ``rate_limited`` (``rate_limited``) under that peer and
    kind: one per (indicator, peer). Its own ``matches`` field, the sum of those, is not added again. An
    entry written before ``outcomes_by_kind`` existed counts its ``outcomes`` under its one kind (or
    :data:`MIXED`).
    """
    summary = Summary()
    for entry in entries:
        summary.entries += 1
        ts = entry.get("ts")
        if type(ts) is int:
            summary.first_ts = ts if summary.first_ts is None else min(summary.first_ts, ts)
            summary.last_ts = ts if summary.last_ts is None else max(summary.last_ts, ts)
        day = utc_day(ts)
        action = _text(entry.get("action"))
        kinds = _kinds(entry) if action == "investigator.check" else {}
        kind = _text(entry.get("kind")) if entry.get("kind") or not kinds else _one_kind(kinds)
        result = _text(entry.get("result"))
        party = _text(entry.get("peer")) if entry.get("peer") else _text(entry.get("actor"))
        summary.actions[action] += 1
        summary.per_day[day] += 1
        summary.volume.add(entry)
        if action == "peer.reads":
            tally = summary.reads.setdefault((party, _text(entry.get("method"))), [0, 0])
            tally[0] += _int(entry.get("count"))
            tally[1] += 1
        elif action in ALERT_ACTIONS:
            summary.alerts.append(entry)
        summary.results.setdefault(party, Counter())[result if result in RESULTS else "other"] += 1

        counts = Counts(entries=1)
        if action == "peer.evaluate_oprf" and result == "ok":
            counts.queries = _int(entry.get("count"), 1)
        counts.rate_limited = int(result == "rate_limited")
        counts.refused = int(action == "artefact.refused" or result == "refused")
        counts.failed = int(result in ("denied", "invalid", "error"))
        _row(summary, party, day, kind).add(counts)
        if action != "investigator.check":
            continue
        for name, n in kinds.items():
            _row(summary, party, day, name).indicators += n
        for peer, peer_kind, answers in _look_ups(entry, kinds):
            numbers = {name: _int(answers.get(name)) for name in OUTCOMES}
            summary.outcomes.setdefault(peer, Counter()).update(numbers)
            _row(summary, peer, day, peer_kind).add(
                Counts(
                    checks=sum(numbers.values()),
                    matches=numbers["match"],
                    rate_limited=numbers["rate_limited"],
                )
            )
    return summary


def _kinds(entry: Mapping[str, Any]) -> dict[str, int]:
    """A check entry's ``kinds`` (``{kind: indicators}``), malformed items left out."""
    kinds = entry.get("kinds")
    if not isinstance(kinds, Mapping):
        return {}
    return {str(k): n for k, v in kinds.items() if k and (n := _int(v))}


def _one_kind(kinds: Mapping[str, int]) -> str:
    return next(iter(kinds)) if len(kinds) == 1 else MIXED


def _look_ups(
    entry: Mapping[str, Any], kinds: Mapping[str, int]
) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(peer, kind, {status: n})`` of a check entry: from ``outcomes_by_kind``, or, in an entry
    written before it existed, from ``outcomes`` under the entry's one kind (or :data:`MIXED`)."""
    by_kind = entry.get("outcomes_by_kind")
    if isinstance(by_kind, Mapping):
        per_kind = [(_text(k), v) for k, v in sorted(by_kind.items()) if isinstance(v, Mapping)]
    else:
        outcomes = entry.get("outcomes")
        fallback = _text(entry.get("kind")) if entry.get("kind") or not kinds else _one_kind(kinds)
        per_kind = [(fallback, outcomes)] if isinstance(outcomes, Mapping) else []
    for kind, peers in per_kind:
        for peer, tally in sorted(peers.items()):
            if isinstance(tally, Mapping):
                yield _text(peer), kind, tally


def exposure(summary: Summary, node_id: str, *, rules: Rules | None = None) -> dict[str, Any]:
    """What the peers' OPRF evaluations could have enumerated, as of the log's last day.

    ``figures``: per peer and kind, the evaluations over 1, 7 and 30 days ending with the log's last UTC
    day, against the daily quota the entries carry (``daily_quota``) and, for phone numbers, the home
    numbering space of the node's region (its id, when ``phonenumbers`` knows it; the node's
    ``country_region`` may differ). ``found``: every (peer, kind, rule) the log meets on some day under
    ``rules`` (the defaults of a node's ``[limits]``), with its first day and how many days.
    """
    rules = rules or Rules()
    region = region_of(node_id)
    space = numbering_space(region, HOME_SPACE_TYPES) if region else 0
    days = summary.volume.days()
    last = day_of(summary.last_ts) if summary.last_ts is not None else (days[-1] if days else 0)
    quota_of = summary.volume.quota_seen
    found: dict[tuple[str, str, str], list[int]] = {}
    for day in range(days[0], last + 1) if days else ():
        for alert in assess(summary.volume, day=day, quota_of=quota_of, space=space, rules=rules):
            first_and_count = found.setdefault((alert.peer, alert.kind, alert.rule), [day, 0])
            first_and_count[1] += 1
    return {
        "day": iso_day(last),
        "region": region,
        "space": space,
        "figures": figures(summary.volume, day=last, quota_of=quota_of, space=space),
        "found": [
            {"peer": p, "kind": k, "rule": r, "first_day": iso_day(first), "days": n}
            for (p, k, r), (first, n) in sorted(found.items())
        ],
    }


def exposure_rows(summary: Summary, node_id: str) -> list[list[str]]:
    """Printable rows of :func:`exposure`'s figures: peer, kind, 1d, 7d, 30d, quota, used, space."""
    rows = []
    for peer, kinds in exposure(summary, node_id)["figures"].items():
        for kind, row in kinds.items():
            quota = row["daily_quota"]
            used = row["quota_used_1d"]
            space = row.get("space_share_30d")
            rows.append(
                [
                    peer,
                    kind,
                    *(str(row[f"{w}d"]) for w in WINDOWS),
                    "-" if quota is None else str(quota),
                    "-" if used is None else f"{used:.0%}",
                    "-" if space is None else f"{space:.4%}",
                ]
            )
    return rows


def _row(summary: Summary, party: str, day: str, kind: str) -> Counts:
    return summary.rows.setdefault((party, day, kind), Counts())


def totals(summary: Summary, by: Axis) -> dict[str, Counts]:
    """Return the counters summed per party, per day or per kind, in sorted key order."""
    position = {"party": 0, "day": 1, "kind": 2}[by]
    out: dict[str, Counts] = defaultdict(Counts)
    for key, counts in summary.rows.items():
        out[key[position]].add(counts)
    return {name: out[name] for name in sorted(out)}


def grand_total(summary: Summary) -> Counts:
    """The counters over the whole log: the total line of every table (each table adds up to it)."""
    out = Counts()
    for counts in summary.rows.values():
        out.add(counts)
    return out


def total_row(summary: Summary, keys: int = 1) -> list[str]:
    """Printable total line of a table with ``keys`` key columns."""
    return ["total", *([""] * (keys - 1)), *(str(getattr(grand_total(summary), n)) for n in COUNTER_NAMES)]


def table_rows(summary: Summary, by: Axis | None = None) -> list[list[str]]:
    """Return printable rows: one per group of ``by``, or per ``(party, day, kind)`` when None."""
    if by is None:
        return [
            [*key, *(str(getattr(counts, n)) for n in COUNTER_NAMES)]
            for key, counts in sorted(summary.rows.items())
        ]
    return [
        [name, *(str(getattr(counts, n)) for n in COUNTER_NAMES)]
        for name, counts in totals(summary, by).items()
    ]


# --- HTML ---------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _peer_colours(parties: Iterable[str]) -> dict[str, str]:
    return {p: PEER_COLOURS[i % len(PEER_COLOURS)] for i, p in enumerate(sorted(parties))}


def _day_range(days: Iterable[str]) -> list[str]:
    """Every day from the first to the last known one (the last :data:`MAX_CHART_DAYS` at most)."""
    known = sorted(d for d in days if d != UNKNOWN)
    if not known:
        return []
    first, last = date.fromisoformat(known[0]), date.fromisoformat(known[-1])
    first = max(first, last - timedelta(days=MAX_CHART_DAYS - 1))
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def _nice_max(value: int) -> int:
    """Smallest 1, 2 or 5 times a power of ten that is at least ``value`` (and at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def _empty_chart(chart: str, title: str, note: str) -> str:
    return (
        f'<figure><figcaption>{_e(title)}</figcaption><svg data-chart="{chart}" width="1000" height="60" '
        f'role="img"><text x="10" y="35" class="note">{_e(note)}</text></svg></figure>'
    )


def _legend(items: Sequence[tuple[str, str]], y: int) -> str:
    parts, x = [], 70
    for label, colour in items:
        parts.append(
            f'<rect x="{x}" y="{y}" width="14" height="14" fill="{colour}"/>'
            f'<text x="{x + 20}" y="{y + 12}">{_e(label)}</text>'
        )
        x += 30 + 8 * len(label)
    return "".join(parts)


def _queries_chart(summary: Summary) -> str:
    """Stacked bars: OPRF evaluations per UTC day, one colour per party."""
    title = "OPRF evaluations per day (stacked by peer)"
    per: dict[tuple[str, str], int] = Counter()
    for (party, day, _kind), counts in summary.rows.items():
        if counts.queries:
            per[(party, day)] += counts.queries
    days = _day_range(day for _party, day in per)
    if not days:
        return _empty_chart("queries-per-day", title, "No OPRF evaluations in this log.")
    parties = sorted({party for party, _day in per})
    colours = _peer_colours(parties)
    width, height, left, top, plot_h = 1000, 380, 70, 20, 280
    plot_w = width - left - 20
    per_day_total = Counter[str]()
    for (_party, day), n in per.items():
        per_day_total[day] += n
    y_max = _nice_max(max(per_day_total[d] for d in days))
    slot = plot_w / len(days)
    bar = max(slot * 0.8, 1.0)
    out = [_axes(left, top, plot_w, plot_h, y_max)]
    for i, day in enumerate(days):
        y: float = top + plot_h
        for party in parties:
            n = per.get((party, day), 0)
            if not n:
                continue
            h = plot_h * n / y_max
            y -= h
            out.append(
                f'<rect class="bar" x="{left + i * slot + (slot - bar) / 2:.2f}" y="{y:.2f}" '
                f'width="{bar:.2f}" height="{h:.2f}" fill="{colours[party]}" data-peer="{_e(party)}" '
                f'data-day="{day}" data-value="{n}"><title>{_e(party)} {day}: {n}</title></rect>'
            )
    for i in sorted({0, len(days) // 2, len(days) - 1}):
        x = left + (i + 0.5) * slot
        out.append(
            f'<text x="{x:.2f}" y="{top + plot_h + 18}" text-anchor="{_anchor(i, days)}">{days[i]}</text>'
        )
    out.append(_legend([(p, colours[p]) for p in parties], top + plot_h + 34))
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg data-chart="queries-per-day" width="{width}" height="{height}" role="img">'
        f"{''.join(out)}</svg></figure>"
    )


def _anchor(i: int, days: Sequence[str]) -> str:
    """Text anchor of the date label of day ``i``, so the first and last labels stay inside the chart."""
    if len(days) > 1 and i == 0:
        return "start"
    return "end" if len(days) > 1 and i == len(days) - 1 else "middle"


def _axes(left: int, top: int, plot_w: float, plot_h: int, y_max: int) -> str:
    parts = []
    for step in range(5):
        value = y_max * step / 4
        y = top + plot_h - plot_h * step / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.2f}" x2="{left + plot_w:.2f}" y2="{y:.2f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end">{value:g}</text>'
        )
    return "".join(parts)


def _stacked_chart(
    chart: str,
    title: str,
    data: Mapping[str, Mapping[str, int]],
    order: Sequence[str],
    colours: Mapping[str, str],
) -> str:
    """Horizontal stacked bars, one per party, of the shares of ``order``'s categories."""
    rows = {party: tally for party, tally in sorted(data.items()) if sum(tally.values())}
    if not rows:
        return _empty_chart(chart, title, "Nothing to show.")
    width, left, bar_h, gap, plot_w = 1000, 120, 22, 10, 820
    height = 20 + len(rows) * (bar_h + gap) + 40
    longest = max(sum(t.values()) for t in rows.values())
    out = []
    for r, (party, tally) in enumerate(rows.items()):
        y = 10 + r * (bar_h + gap)
        x = float(left)
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{_e(party)}</text>')
        for category in order:
            n = tally.get(category, 0)
            if not n:
                continue
            w = plot_w * n / longest
            out.append(
                f'<rect class="bar" x="{x:.2f}" y="{y}" width="{w:.2f}" height="{bar_h}" '
                f'fill="{colours[category]}" data-peer="{_e(party)}" data-category="{category}" '
                f'data-value="{n}"><title>{_e(party)} {category}: {n}</title></rect>'
            )
            x += w
        out.append(f'<text x="{x + 6:.2f}" y="{y + 16}">{sum(tally.values())}</text>')
    present = [c for c in order if any(t.get(c) for t in rows.values())]
    out.append(_legend([(c, colours[c]) for c in present], height - 28))
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg data-chart="{chart}" width="{width}" height="{height}" role="img">'
        f"{''.join(out)}</svg></figure>"
    )


def _growth_chart(summary: Summary) -> str:
    """A line of the log's size at the end of each UTC day."""
    title = "Log growth (entries at the end of each UTC day)"
    days = _day_range(summary.per_day)
    if not days:
        return _empty_chart("log-growth", title, "No dated entries.")
    before = summary.per_day.get(UNKNOWN, 0) + sum(n for d, n in summary.per_day.items() if d < days[0])
    cumulative, total = [], before
    for day in days:
        total += summary.per_day.get(day, 0)
        cumulative.append(total)
    width, height, left, top, plot_h = 1000, 340, 70, 20, 270
    plot_w = width - left - 20
    y_max = _nice_max(cumulative[-1])
    step = plot_w / max(len(days) - 1, 1)
    points = [(left + i * step, top + plot_h - plot_h * n / y_max) for i, n in enumerate(cumulative)]
    if len(points) == 1:
        points.append((left + plot_w, points[0][1]))
    path = " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
    out = [_axes(left, top, plot_w, plot_h, y_max)]
    out.append(
        f'<polyline class="line" points="{path}" fill="none" stroke="{GROWTH_COLOUR}" stroke-width="4" '
        f'data-value="{cumulative[-1]}"/>'
    )
    for (x, y), day, n in zip(points, days, cumulative, strict=False):
        out.append(
            f'<circle cx="{x:.2f}" cy="{y:.2f}" r="4" fill="{GROWTH_COLOUR}" data-day="{day}" '
            f'data-value="{n}"><title>{day}: {n} entries</title></circle>'
        )
    for i in sorted({0, len(days) // 2, len(days) - 1}):
        out.append(
            f'<text x="{left + i * step:.2f}" y="{top + plot_h + 18}" text-anchor="{_anchor(i, days)}">'
            f"{days[i]}</text>"
        )
    return (
        f"<figure><figcaption>{_e(title)}</figcaption>"
        f'<svg data-chart="log-growth" width="{width}" height="{height}" role="img">'
        f"{''.join(out)}</svg></figure>"
    )


#: Column headings of the tables of counters, in :data:`COUNTER_NAMES` order.
HEADINGS: Final = tuple(COLUMNS[name][0] for name in COUNTER_NAMES)


def _table(
    caption: str, first: Sequence[str], rows: Sequence[Sequence[str]], table_id: str, total: Sequence[str]
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in (*first, *HEADINGS))
    foot = "".join(
        f'<td class="{"num" if i >= len(first) else "key"}">{_e(cell)}</td>' for i, cell in enumerate(total)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i >= len(first) else "key"}">{_e(cell)}</td>' for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<table id="{table_id}"><caption>{_e(caption)} ({_e(CHECKS_NOTE)})</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody><tfoot><tr>{foot}</tr></tfoot></table>"
    )


def _columns_html() -> str:
    """What every column of the tables counts."""
    items = "".join(f"<dt>{_e(heading)}</dt><dd>{_e(text)}</dd>" for heading, text in COLUMNS.values())
    return (
        '<h2>What the tables count</h2><dl id="columns" class="columns">'
        f"{items}</dl><p>Each table adds up to the same total line: every event is counted once, "
        f"under one party, one UTC day and one kind.</p>"
    )


def _plain_table(table_id: str, caption: str, head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table of text cells (the first ``key`` columns left-aligned, numbers right-aligned)."""
    cells = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if cell[:1].isdigit() or cell[:1] == "-" else "key"}">{_e(cell)}</td>'
            for cell in row
        )
        + "</tr>"
        for row in rows
    )
    heading = "".join(f"<th>{_e(h)}</th>" for h in head)
    return (
        f'<table id="{table_id}"><caption>{_e(caption)}</caption><thead><tr>{heading}</tr></thead>'
        f"<tbody>{cells}</tbody></table>"
    )


def _exposure_html(summary: Summary, node_id: str, rules: Rules | None) -> str:
    """The enumeration figures: volumes against quota and numbering space, patterns, alerts, reads."""
    found = exposure(summary, node_id, rules=rules)
    space = found["space"]
    note = (
        f"Windows end on {found['day']} (UTC), the log's last day. Home numbering space of "
        f"{found['region']}: {space} mobile and fixed-line numbers (phonenumbers metadata)."
        if space
        else f"Windows end on {found['day']} (UTC). No numbering space is known for node id {node_id}."
    )
    parts = [
        f'<p id="exposure-note">{_e(note)}</p>',
        _plain_table(
            "exposure",
            "OPRF evaluations per peer and kind, against its daily quota and the home numbering space",
            EXPOSURE_HEADERS,
            exposure_rows(summary, node_id),
        ),
        _plain_table(
            "enumeration-found",
            "Enumeration patterns this log shows (peer, kind, rule met, first UTC day, days met)",
            ("peer", "kind", "rule", "first day", "days"),
            [[f["peer"], f["kind"], f["rule"], f["first_day"], str(f["days"])] for f in found["found"]],
        ),
        _plain_table(
            "alerts",
            "Alerts the node recorded (quota.alert, peer.enumeration_alert, peer.fp_alert, fork, "
            "node.recovered, node.restored)",
            ("day", "action", "peer", "kind", "rule or limit", "detail"),
            [
                [
                    utc_day(a.get("ts")),
                    _text(a.get("action")),
                    alert_party(a),
                    _text(a.get("kind")),
                    _text(a.get("rule") or a.get("limit") or a.get("subject")),
                    alert_detail(a),
                ]
                for a in summary.alerts
            ],
        ),
        _plain_table(
            "reads",
            "Repeated read-only calls, aggregated (peer.reads)",
            ("peer", "method", "calls", "entries"),
            [[p, m, str(calls), str(n)] for (p, m), (calls, n) in sorted(summary.reads.items())],
        ),
    ]
    return "".join(parts)


_STYLE: Final = """
body{font-family:sans-serif;margin:24px;color:#212121;max-width:1100px}
.banner{padding:14px 18px;font-size:18px;font-weight:bold;color:#fff;border-radius:4px}
.banner.ok{background:#1b5e20}.banner.failed{background:#b71c1c}
.banner small{display:block;font-weight:normal;font-size:14px;margin-top:4px}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}dt{font-weight:bold}
dd{margin:0;font-family:monospace;word-break:break-all}
dl.columns dd{font-family:sans-serif;word-break:normal}tfoot td{font-weight:bold}
figure{margin:24px 0}figcaption{font-weight:bold;margin-bottom:6px}
svg text{font-size:12px;fill:#424242}svg .note{font-size:14px}
svg .grid{stroke:#e0e0e0;stroke-width:1}
table{border-collapse:collapse;margin:16px 0}caption{text-align:left;font-weight:bold;padding:6px 0}
th,td{border:1px solid #bdbdbd;padding:3px 8px}td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eeeeee}
"""


def render_html(
    summary: Summary, verification: Verification, *, generated_at: int, rules: Rules | None = None
) -> str:
    """Return the self-contained HTML report of ``summary`` under ``verification``'s banner.

    ``rules`` are the enumeration rules the patterns are looked for with (default: a node's defaults).
    """
    if verification.ok:
        banner = (
            f'<div class="banner ok" id="status" data-status="ok">Log verified: {verification.tree_size} '
            f"entries, {verification.heads} signed tree heads<small>{_e(verification.message)}</small></div>"
        )
    else:
        where = "" if verification.bad_index is None else f" at entry {verification.bad_index}"
        banner = (
            f'<div class="banner failed" id="status" data-status="failed">LOG VERIFICATION FAILED{where}'
            f"<small>{_e(verification.message)} — the figures below come from a log that is not what "
            "the node signed; do not rely on them.</small></div>"
        )
    span = (
        f"{utc_day(summary.first_ts)} to {utc_day(summary.last_ts)}" if summary.first_ts is not None else "-"
    )
    meta = (
        f"<dl><dt>Node</dt><dd>{_e(verification.node_id)}</dd>"
        f"<dt>Entries</dt><dd>{summary.entries}</dd><dt>Period (UTC)</dt><dd>{_e(span)}</dd>"
        f"<dt>Latest root</dt><dd>{_e(verification.root_hex)}</dd>"
        f"<dt>Report generated</dt><dd>{_e(_iso(generated_at))}</dd></dl>"
    )
    charts = [
        _queries_chart(summary),
        _stacked_chart(
            "results-per-peer",
            "Results of entries per peer or actor",
            summary.results,
            (*RESULTS, "other"),
            RESULT_COLOURS,
        ),
        _stacked_chart(
            "check-outcomes",
            "Outcomes of investigators' checks per peer",
            summary.outcomes,
            OUTCOMES,
            OUTCOME_COLOURS,
        ),
        _growth_chart(summary),
    ]
    actions = "".join(
        f'<tr><td class="key">{_e(a)}</td><td class="num">{n}</td></tr>'
        for a, n in sorted(summary.actions.items())
    )
    tables = [
        _columns_html(),
        _table("Per peer or actor", ("peer",), table_rows(summary, "party"), "by-peer", total_row(summary)),
        _table("Per UTC day", ("day",), table_rows(summary, "day"), "by-day", total_row(summary)),
        _table("Per kind", ("kind",), table_rows(summary, "kind"), "by-kind", total_row(summary)),
        '<table id="by-action"><caption>Per action</caption><thead><tr><th>action</th><th>entries</th>'
        f"</tr></thead><tbody>{actions}</tbody></table>",
        _table(
            "Per peer, day and kind",
            ("peer", "day", "kind"),
            table_rows(summary),
            "detail",
            total_row(summary, 3),
        ),
        _exposure_html(summary, verification.node_id, rules),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Petanda audit report: {_e(verification.node_id)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>Audit report of node {_e(verification.node_id)}</h1>{banner}{meta}"
        f"{''.join(charts)}{''.join(tables)}</body></html>\n"
    )
