"""What a peer's OPRF evaluations could enumerate: volumes per peer and kind, and the alert rules (pure).

A holder learns nothing about the values a peer evaluates, but it sees how many, of which kind and when.
That volume, set against the peer's daily quota and against the size of the home numbering space, is
the only sign of an enumeration in progress. Both the node (``petanda-node status``, its maintenance
alerts) and the auditor's report (``petanda audit report``) compute it here, from the same
``peer.evaluate_oprf`` audit entries, so that their figures agree.

:func:`numbering_space` counts the national significant numbers that ``phonenumbers``' metadata accepts
for a region (exactly: the number of digit strings of a possible length that the metadata's pattern
matches). That is an upper bound of the numbers actually allocated: the patterns describe ranges that
may be assigned, and an enumerator that knows the allocated blocks needs fewer guesses.

One module of this size: node status and the audit report must compute these figures identically, so they
share this one pure module.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date as _date
from datetime import timedelta as _timedelta
from functools import lru_cache
from typing import Any, Final

import phonenumbers
from phonenumbers import PhoneMetadata

__all__ = [
    "ACTION_ALERT",
    "ACTION_EVALUATE",
    "EXPOSURE_HEADERS",
    "HOME_SPACE_TYPES",
    "RULE_QUOTA",
    "RULE_SPACE",
    "WINDOWS",
    "Alert",
    "Rules",
    "Volume",
    "assess",
    "count_matches",
    "day_of",
    "figures",
    "iso_day",
    "numbering_space",
    "region_of",
]

#: Column heads of the per-peer, per-kind exposure table (status and the audit report show the same).
EXPOSURE_HEADERS: Final = (
    "peer",
    "kind",
    "1 day",
    "7 days",
    "30 days",
    "daily quota",
    "used today",
    "space 30d",
)

ACTION_EVALUATE: Final = "peer.evaluate_oprf"
ACTION_ALERT: Final = "peer.enumeration_alert"
#: More than ``Rules.quota_share`` of the daily quota on ``Rules.days`` consecutive UTC days.
RULE_QUOTA: Final = "quota_share"
#: Phone evaluations over 30 days above ``Rules.space_share`` of the home numbering space.
RULE_SPACE: Final = "numbering_space"
#: The numbering space an enumeration of phone numbers must cover: mobile and fixed-line numbers.
HOME_SPACE_TYPES: Final = ("mobile", "fixed_line")
#: The windows (in UTC days, today included) of the volume figures.
WINDOWS: Final = (1, 7, 30)
_SECONDS_PER_DAY: Final = 86_400
_EPOCH_DAY: Final = _date(1970, 1, 1)


def day_of(ts: float) -> int:
    """The UTC day (days since 1970-01-01) of unix time ``ts``."""
    return math.floor(ts / _SECONDS_PER_DAY)


# --- the numbering space ------------------------------------------------------------------------------

_Node = tuple[Any, ...]


class _PatternParser:
    """The regular expressions of phonenumbers' metadata: digits, ``\\d``, classes, groups, ``|`` and
    the quantifiers ``?``, ``*``, ``+``, ``{n}``, ``{n,}``, ``{n,m}``. Anything else is refused."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def parse(self) -> _Node:
        node = self._alternation()
        if self.pos != len(self.text):
            raise ValueError(f"unexpected {self.text[self.pos]!r} at {self.pos} in {self.text!r}")
        return node

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _take(self, expected: str) -> None:
        if not self.text.startswith(expected, self.pos):
            raise ValueError(f"expected {expected!r} at {self.pos} in {self.text!r}")
        self.pos += len(expected)

    def _alternation(self) -> _Node:
        options = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else ("alt", options)

    def _sequence(self) -> _Node:
        items = []
        while self._peek() not in ("", "|", ")"):
            items.append(self._quantified(self._atom()))
        return ("seq", items)

    def _atom(self) -> _Node:
        char = self._peek()
        if char.isdigit():
            self.pos += 1
            return ("set", frozenset({int(char)}))
        if self.text.startswith("\\d", self.pos):
            self.pos += 2
            return ("set", frozenset(range(10)))
        if char == "[":
            return self._class()
        if char == "(":
            self._take("(?:" if self.text.startswith("(?:", self.pos) else "(")
            node = self._alternation()
            self._take(")")
            return node
        raise ValueError(f"unsupported {char!r} at {self.pos} in {self.text!r}")

    def _class(self) -> _Node:
        self._take("[")
        negate = self._peek() == "^"
        if negate:
            self.pos += 1
        digits: set[int] = set()
        while self._peek() != "]":
            if self.text.startswith("\\d", self.pos):
                self.pos += 2
                digits.update(range(10))
                continue
            char = self._peek()
            if not char.isdigit():
                raise ValueError(f"unsupported {char!r} in a class at {self.pos} in {self.text!r}")
            self.pos += 1
            if self._peek() == "-" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] != "]":
                self.pos += 1
                high = self._peek()
                if not high.isdigit():
                    raise ValueError(f"bad range at {self.pos} in {self.text!r}")
                self.pos += 1
                digits.update(range(int(char), int(high) + 1))
            else:
                digits.add(int(char))
        self._take("]")
        return ("set", frozenset(set(range(10)) - digits if negate else digits))

    def _quantified(self, node: _Node) -> _Node:
        char = self._peek()
        if char in ("?", "*", "+"):
            self.pos += 1
            low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[char]
            return ("rep", node, low, high)
        if char != "{":
            return node
        end = self.text.index("}", self.pos)
        body = self.text[self.pos + 1 : end]
        self.pos = end + 1
        low_text, comma, high_text = body.partition(",")
        low = int(low_text)
        high = (None if high_text == "" else int(high_text)) if comma else low
        return ("rep", node, low, high)


class _Nfa:
    """A Thompson automaton over the ten digits, counted by subset construction (so a number matched
    by two branches of a pattern, or by two patterns, is counted once)."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.moves: list[list[tuple[frozenset[int], int]]] = []

    def state(self) -> int:
        self.eps.append([])
        self.moves.append([])
        return len(self.eps) - 1

    def build(self, node: _Node) -> tuple[int, int]:
        kind = node[0]
        start = self.state()
        if kind == "set":
            end = self.state()
            self.moves[start].append((node[1], end))
            return start, end
        if kind == "seq":
            current = start
            for item in node[1]:
                first, last = self.build(item)
                self.eps[current].append(first)
                current = last
            return start, current
        if kind == "alt":
            end = self.state()
            for option in node[1]:
                first, last = self.build(option)
                self.eps[start].append(first)
                self.eps[last].append(end)
            return start, end
        _, inner, low, high = node
        current = start
        for _ in range(low):
            first, last = self.build(inner)
            self.eps[current].append(first)
            current = last
        end = self.state()
        self.eps[current].append(end)
        if high is None:
            first, last = self.build(inner)
            self.eps[current].append(first)
            self.eps[last].append(current)
        else:
            for _ in range(high - low):
                first, last = self.build(inner)
                self.eps[current].append(first)
                current = last
                self.eps[current].append(end)
        return start, end

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        stack = list(seen)
        while stack:
            for nxt in self.eps[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return frozenset(seen)

    def count(self, start: int, accept: int, lengths: Iterable[int]) -> int:
        wanted = set(lengths)
        if not wanted:
            return 0
        current: dict[frozenset[int], int] = {self.closure([start]): 1}
        total = 0
        for length in range(1, max(wanted) + 1):
            following: dict[frozenset[int], int] = defaultdict(int)
            for states, n in current.items():
                for digit in range(10):
                    moved = [t for s in states for digits, t in self.moves[s] if digit in digits]
                    if moved:
                        following[self.closure(moved)] += n
            current = following
            if length in wanted:
                total += sum(n for states, n in current.items() if accept in states)
        return total


def _possible_lengths(metadata: Any, desc: Any) -> set[int]:
    lengths = {n for n in (desc.possible_length or ()) if n > 0}
    if not lengths:
        lengths = {n for n in (metadata.general_desc.possible_length or ()) if n > 0}
    return lengths


@lru_cache(maxsize=64)
def numbering_space(region: str, types: tuple[str, ...] = ("mobile",)) -> int:
    """How many national significant numbers of ``region`` the metadata of ``types`` accepts.

    ``types`` are names of ``phonenumbers`` number descriptions (``mobile``, ``fixed_line``, ...). Each
    pattern counts at the possible lengths of its own description; a number that two descriptions
    accept counts once. 0 for a region without metadata or without such numbers.
    """
    metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
    if metadata is None:
        return 0
    patterns: dict[str, set[int]] = {}
    for name in types:
        desc = getattr(metadata, name, None)
        if desc is not None and desc.national_number_pattern:
            patterns[desc.national_number_pattern] = _possible_lengths(metadata, desc)
    lengths = sorted(set().union(*patterns.values())) if patterns else []
    return sum(count_matches([p for p, own in patterns.items() if n in own], n) for n in lengths)


def count_matches(patterns: Iterable[str], length: int) -> int:
    """How many digit strings of ``length`` match (in full) at least one of ``patterns``.

    The patterns are the metadata's regular-expression subset (digits, ``\\d``, classes, groups,
    ``|``, ``?``, ``*``, ``+``, ``{n}``, ``{n,}``, ``{n,m}``); anything else raises ValueError.
    """
    nfa = _Nfa()
    start, accept = nfa.state(), nfa.state()
    for pattern in patterns:
        first, last = nfa.build(_PatternParser(pattern).parse())
        nfa.eps[start].append(first)
        nfa.eps[last].append(accept)
    return nfa.count(start, accept, [length])


def region_of(node_id: str) -> str | None:
    """The phone-number region of a node id, or None when ``phonenumbers`` knows none by that code."""
    return node_id if node_id in phonenumbers.SUPPORTED_REGIONS else None


# --- volumes ------------------------------------------------------------------------------------------


def _day_number(value: object) -> int | None:
    """A day given as ``YYYY-MM-DD`` or as a day number, as a day number (None if neither)."""
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return (_date.fromisoformat(value) - _EPOCH_DAY).days
        except ValueError:
            return None
    return None


def iso_day(day: int) -> str:
    """``YYYY-MM-DD`` of a UTC day number."""
    return (_EPOCH_DAY + _timedelta(days=day)).isoformat()


@dataclass
class Volume:
    """OPRF evaluations per peer, kind and UTC day, folded from audit entries (:meth:`add`).

    Only ``ok`` ``peer.evaluate_oprf`` entries count (their ``count`` of blinded elements, under their
    ``actor``): refused and invalid batches were not evaluated. ``quotas`` keeps the largest
    ``daily_quota`` an entry of that day carried, for readers that do not know the node's config;
    ``alerted`` the ``peer.enumeration_alert`` entries already written, as ``(peer, kind, rule, day)``.
    ``entries`` counts the entries folded: a node resumes folding its log from there.
    """

    daily: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    quotas: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    alerted: set[tuple[str, str, str, int]] = field(default_factory=set)
    entries: int = 0

    def add(self, entry: Mapping[str, Any]) -> None:
        """Fold one decoded audit entry."""
        self.entries += 1
        ts = entry.get("ts")
        if type(ts) is not int:
            return
        action, peer, kind = entry.get("action"), entry.get("actor"), entry.get("kind")
        if not isinstance(peer, str) or not isinstance(kind, str):
            return
        if action == ACTION_EVALUATE and entry.get("result") == "ok":
            count = entry.get("count")
            if type(count) is not int or count <= 0:
                return
            day = day_of(ts)
            per_day = self.daily.setdefault(peer, {}).setdefault(kind, {})
            per_day[day] = per_day.get(day, 0) + count
            quota = entry.get("daily_quota")
            if type(quota) is int and quota >= 0:
                quotas = self.quotas.setdefault(peer, {}).setdefault(kind, {})
                quotas[day] = max(quotas.get(day, 0), quota)
        elif action == ACTION_ALERT:
            rule, day_value = entry.get("rule"), _day_number(entry.get("day"))
            if isinstance(rule, str) and day_value is not None:
                self.alerted.add((peer, kind, rule, day_value))

    def extend(self, entries: Iterable[Mapping[str, Any]]) -> Volume:
        """Fold every entry of ``entries``; return self."""
        for entry in entries:
            self.add(entry)
        return self

    def on(self, peer: str, kind: str, day: int) -> int:
        """Evaluations of ``peer`` on ``kind`` during UTC day ``day``."""
        return self.daily.get(peer, {}).get(kind, {}).get(day, 0)

    def total(self, peer: str, kind: str, *, last_day: int, days: int) -> int:
        """Evaluations of ``peer`` on ``kind`` over the ``days`` UTC days ending with ``last_day``."""
        per_day = self.daily.get(peer, {}).get(kind, {})
        return sum(per_day.get(d, 0) for d in range(last_day - days + 1, last_day + 1))

    def quota_seen(self, peer: str, kind: str, day: int) -> int | None:
        """The daily quota the entries of ``day`` (else of the latest earlier day) carried, if any."""
        quotas = self.quotas.get(peer, {}).get(kind, {})
        earlier = [d for d in quotas if d <= day]
        return quotas[max(earlier)] if earlier else None

    def days(self) -> list[int]:
        """Every UTC day with an evaluation, ascending."""
        return sorted({d for kinds in self.daily.values() for per in kinds.values() for d in per})

    def prune(self, before_day: int) -> None:
        """Forget the days before ``before_day``."""
        for table in (self.daily, self.quotas):
            for kinds in table.values():
                for per_day in kinds.values():
                    for day in [d for d in per_day if d < before_day]:
                        del per_day[day]
        self.alerted = {a for a in self.alerted if a[3] >= before_day}

    def to_json(self) -> dict[str, Any]:
        """Plain data for :meth:`from_json` (days as decimal strings: JSON keys are strings)."""

        def table(t: dict[str, dict[str, dict[int, int]]]) -> dict[str, Any]:
            return {
                p: {k: {str(d): n for d, n in sorted(per.items())} for k, per in kinds.items() if per}
                for p, kinds in sorted(t.items())
            }

        return {
            "entries": self.entries,
            "daily": table(self.daily),
            "quotas": table(self.quotas),
            "alerted": sorted([list(a) for a in self.alerted]),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Volume:
        """The volume :meth:`to_json` described (raises ValueError, TypeError or KeyError otherwise)."""

        def table(t: Mapping[str, Any]) -> dict[str, dict[str, dict[int, int]]]:
            return {
                str(p): {str(k): {int(d): int(n) for d, n in per.items()} for k, per in kinds.items()}
                for p, kinds in t.items()
            }

        alerted = {(str(p), str(k), str(r), int(d)) for p, k, r, d in data.get("alerted", [])}
        return cls(table(data["daily"]), table(data.get("quotas", {})), alerted, int(data["entries"]))


# --- alerts -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rules:
    """When a peer's evaluations look like an enumeration (defaults of ``[limits]`` in the node)."""

    #: A day counts when the peer evaluated more than this share of its daily quota on one kind...
    quota_share: float = 0.5
    #: ... and this many consecutive such UTC days raise an alert.
    days: int = 3
    #: Phone evaluations over 30 days above this share of the home numbering space raise an alert.
    space_share: float = 0.01
    #: The kind the numbering-space rule applies to.
    space_kind: str = "phone"


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule that a peer's volume on one kind met on one UTC day."""

    peer: str
    kind: str
    rule: str
    day: int
    volume: int
    threshold: int
    detail: str

    def fields(self) -> dict[str, Any]:
        """The alert as audit-entry fields (integers and strings only)."""
        return {
            "peer": self.peer,
            "kind": self.kind,
            "rule": self.rule,
            "day": iso_day(self.day),
            "volume": self.volume,
            "threshold": self.threshold,
            "detail": self.detail,
        }


QuotaOf = Callable[[str, str, int], "int | None"]


def assess(volume: Volume, *, day: int, quota_of: QuotaOf, space: int, rules: Rules = Rules()) -> list[Alert]:
    """The alerts that ``volume`` meets on UTC day ``day`` (today's volume so far counts).

    ``quota_of(peer, kind, day)`` is the peer's daily quota on that day (None if unknown: the quota rule
    is then skipped); ``space`` the size of the home numbering space of ``rules.space_kind`` (0: that
    rule is skipped).
    """
    alerts = []
    for peer, kinds in sorted(volume.daily.items()):
        for kind in sorted(kinds):
            run = []
            for d in range(day - rules.days + 1, day + 1):
                quota = quota_of(peer, kind, d)
                if quota is None or quota <= 0:
                    break
                threshold = math.floor(quota * rules.quota_share)
                if volume.on(peer, kind, d) <= threshold:
                    break
                run.append(threshold)
            if len(run) == rules.days:
                alerts.append(
                    Alert(
                        peer,
                        kind,
                        RULE_QUOTA,
                        day,
                        volume.on(peer, kind, day),
                        run[-1],
                        f"more than {rules.quota_share:.0%} of its daily quota on {kind} on "
                        f"{rules.days} consecutive UTC days",
                    )
                )
            if kind == rules.space_kind and space > 0:
                threshold = math.floor(space * rules.space_share)
                month = volume.total(peer, kind, last_day=day, days=30)
                if month > threshold:
                    alerts.append(
                        Alert(
                            peer,
                            kind,
                            RULE_SPACE,
                            day,
                            month,
                            threshold,
                            f"{month} {kind} evaluations in 30 days, more than {rules.space_share * 100:g} % "
                            f"of the home numbering space ({space})",
                        )
                    )
    return alerts


def figures(
    volume: Volume,
    *,
    day: int,
    quota_of: QuotaOf,
    space: int,
    peers: Iterable[str] = (),
) -> dict[str, Any]:
    """Volumes per peer and kind over :data:`WINDOWS` days ending with ``day``, as plain data.

    Per ``peer -> kind``: ``1d``, ``7d``, ``30d`` evaluations; ``daily_quota``; ``quota_used_1d`` (share
    of today's quota used), ``quota_used_7d`` and ``quota_used_30d`` (share of the quota of those days);
    and for phone numbers ``space_share_30d`` (of the home numbering space ``space``). ``peers`` adds
    peers without any evaluation (with no kinds).
    """
    out: dict[str, dict[str, Any]] = {p: {} for p in peers}
    for peer, kinds in sorted(volume.daily.items()):
        for kind in sorted(kinds):
            row: dict[str, Any] = {f"{w}d": volume.total(peer, kind, last_day=day, days=w) for w in WINDOWS}
            if not any(row.values()):
                continue
            quota = quota_of(peer, kind, day)
            row["daily_quota"] = quota
            for w in WINDOWS:
                row[f"quota_used_{w}d"] = round(row[f"{w}d"] / (quota * w), 4) if quota else None
            if kind == "phone" and space > 0:
                row["space_share_30d"] = round(row["30d"] / space, 6)
            out.setdefault(peer, {})[kind] = row
    return {peer: out[peer] for peer in sorted(out)}
