"""What every ingest format shares: the records it yields and the checks of indicator metadata.

A format module (:mod:`node.ingest.csvjson`, :mod:`node.ingest.stix`, :mod:`node.ingest.misp`) reads its
file into raw field values and hands them to :class:`RecordBuilder`, which normalises the indicator with
:func:`client.protocol.canonical.normalize` and checks every metadata field. Each problem becomes a
:class:`Rejection` that names the place in the file and the field at fault; nothing is hashed "as is".
``docs/operators.md`` is the operator's description of these rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final, Protocol, TypeVar, cast

import phonenumbers

from client.protocol.canonical import normalize
from client.protocol.errors import InputError
from client.protocol.kinds import CATEGORIES, KINDS, TLP_LEVELS

__all__ = [
    "DEFAULT_CATEGORY",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_REPORTS",
    "FUTURE_SLACK",
    "META_FIELDS",
    "Builder",
    "ParsedIndicator",
    "RecordBuilder",
    "Rejection",
    "most_restrictive_tlp",
    "parse_category",
    "parse_date",
    "parse_region",
    "parse_tlp",
]

#: Category of an indicator whose file gives none.
DEFAULT_CATEGORY: Final = "other"
#: Confidence of an indicator whose file gives none (every format: "no opinion either way").
DEFAULT_CONFIDENCE: Final = 50
#: Number of reports of an indicator whose file gives none.
DEFAULT_REPORTS: Final = 1
#: How far after ``today`` a first/last-seen date may lie (a file written in a time zone ahead of ours).
FUTURE_SLACK: Final = timedelta(days=1)
#: Names of the metadata fields of :class:`ParsedIndicator`, as in the node's store and the wire.
META_FIELDS: Final = ("category", "first_seen", "last_seen", "confidence", "tlp", "reports", "expires_at")

_MAX_REPORTS: Final = 2**31 - 1
_CACHE_SIZE: Final = 65536  # distinct metadata strings remembered per file
_T = TypeVar("_T")
_R_co = TypeVar("_R_co", covariant=True)


@dataclass(frozen=True, slots=True)
class ParsedIndicator:
    """One indicator read from an ingest file: its canonical form and its checked metadata.

    Attributes:
        kind: One of :data:`client.protocol.kinds.KINDS`.
        canonical: The canonical form, as returned by :func:`client.protocol.canonical.normalize`.
        category: One of :data:`client.protocol.kinds.CATEGORIES`.
        first_seen: Day the indicator was first seen.
        last_seen: Day it was last seen; never before ``first_seen``.
        confidence: 0..100.
        tlp: One of :data:`client.protocol.kinds.TLP_LEVELS`.
        reports: Number of reports, at least 1.
        expires_at: Day from which the indicator is no longer valid, or None if it does not expire.
        source: Where the indicator comes from (by default ``format:file name``).
        location: Place in the file: ``file.csv:17`` (line) or ``bundle.json#indicator--…`` (object).
    """

    kind: str
    canonical: str
    category: str
    first_seen: date
    last_seen: date
    confidence: int
    tlp: str
    reports: int
    expires_at: date | None
    source: str
    location: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row or object of an ingest file that yields no indicator, with the one-line reason."""

    location: str
    reason: str


class Builder(Protocol[_R_co]):
    """What a streaming format (:mod:`node.ingest.csvjson`) hands each record to, by the keywords of
    :meth:`RecordBuilder.build` (a :class:`RecordBuilder`)."""

    @property
    def build(self) -> Callable[..., _R_co | Rejection]: ...


# --- single fields ------------------------------------------------------------------------------------

_TLP_ALIASES: Final[dict[str, str]] = {
    **{level.lower(): level for level in TLP_LEVELS},
    "white": "CLEAR",  # TLP 1.0
    "amber strict": "AMBER+STRICT",
    "amber_strict": "AMBER+STRICT",
    "amber-strict": "AMBER+STRICT",
}
_TLP_RANK: Final = {level: rank for rank, level in enumerate(TLP_LEVELS)}

_CATEGORY_SPLIT = re.compile(r"[\s\-/&+]+")
_CATEGORY_SYNONYMS: Final[dict[str, str]] = {
    "invest": "investment",
    "crypto_investment": "investment",
    "love": "romance",
    "job": "job_task",
    "task": "job_task",
    "job_and_task": "job_task",
    "authority": "impersonation_authority",
    "government": "impersonation_authority",
    "police": "impersonation_authority",
    "bank": "impersonation_bank",
    "courier": "impersonation_courier",
    "parcel": "impersonation_courier",
    "delivery": "impersonation_courier",
    "phish": "phishing",
    "e_commerce": "ecommerce",
    "shopping": "ecommerce",
    "online_shopping": "ecommerce",
    "lending": "loan",
    "mule": "money_mule",
    "mule_account": "money_mule",
    "compound": "scam_compound",
    "trafficking": "scam_compound",
    "human_trafficking": "scam_compound",
    "unknown": "other",
}


def parse_tlp(text: str) -> str:
    """Return the TLP 2.0 level named by ``text``: ``AMBER``, ``TLP:AMBER``, ``tlp:amber+strict``, ``WHITE``…

    Raises:
        InputError: not a TLP level.
    """
    cleaned = text.strip().lower()
    if cleaned.startswith("tlp"):
        cleaned = cleaned[3:].lstrip(" :")
    level = _TLP_ALIASES.get(cleaned)
    if level is None:
        raise InputError(f"unknown TLP level {text!r}; expected one of {', '.join(TLP_LEVELS)}")
    return level


def most_restrictive_tlp(levels: list[str]) -> str | None:
    """Return the most restrictive of TLP levels (already checked), or None for an empty list."""
    return max(levels, key=_TLP_RANK.__getitem__) if levels else None


def parse_category(text: str) -> str:
    """Return the category named by ``text``, case-insensitive, with a few synonyms and a ``scam`` suffix.

    ``"Job"``, ``"task scam"`` and ``"job/task"`` give ``job_task``; ``"mule"`` gives ``money_mule``;
    ``"Bank impersonation"`` gives ``impersonation_bank``.

    Raises:
        InputError: no category has that name.
    """
    cleaned = _CATEGORY_SPLIT.sub("_", text.strip().lower()).strip("_")
    for affix in ("_scam", "_scams", "_fraud"):
        if cleaned.endswith(affix) and len(cleaned) > len(affix):
            cleaned = cleaned[: -len(affix)]
            break
    if cleaned.startswith("scam_") and cleaned != "scam_compound":
        cleaned = cleaned[5:]
    if cleaned.endswith("_impersonation"):  # "bank impersonation" -> impersonation_bank
        cleaned = "impersonation_" + cleaned[: -len("_impersonation")]
    if cleaned in CATEGORIES:
        return cleaned
    found = _CATEGORY_SYNONYMS.get(cleaned)
    if found is None:
        raise InputError(f"unknown category {text!r}; expected one of {', '.join(CATEGORIES)}")
    return found


def parse_date(text: str) -> date:
    """Read an ISO 8601 date, or a date-time whose day (in UTC when it has an offset) is taken.

    Raises:
        InputError: not an ISO 8601 date or date-time.
    """
    cleaned = text.strip()
    if len(cleaned) == 10:
        try:
            return date.fromisoformat(cleaned)
        except ValueError:
            pass
    else:
        try:
            moment = datetime.fromisoformat(cleaned)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                moment = moment.astimezone(UTC)
            return moment.date()
    raise InputError(f"{text!r} is not an ISO 8601 date (YYYY-MM-DD) or date-time")


def parse_region(text: str) -> str:
    """Return an ISO 3166 alpha-2 region (upper case) known to the phone-number metadata.

    Raises:
        InputError: not such a region.
    """
    region = text.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(f"{text!r} is not an ISO 3166 alpha-2 country code")
    return region


def _integer(text: str | int, low: int, high: int) -> int:
    if isinstance(text, bool):  # bool is an int: a JSON true is not a number here
        raise InputError(f"{text!r} is not an integer")
    if isinstance(text, int):
        number = text
    else:
        cleaned = text.strip()
        if not (cleaned.isascii() and cleaned.isdigit()):
            raise InputError(f"{text!r} is not an integer")
        if len(cleaned) > 12:
            raise InputError(f"{cleaned[:12]}… is out of range {low}..{high}")
        number = int(cleaned)
    if not low <= number <= high:
        raise InputError(f"{number} is out of range {low}..{high}")
    return number


# --- whole records ------------------------------------------------------------------------------------


def _field(name: str, error: InputError) -> InputError:
    return InputError(f"{name}: {error}")


class RecordBuilder:
    """Turns the raw fields of one row or object into a :class:`ParsedIndicator` or a :class:`Rejection`.

    One builder serves a whole file: it holds the defaults and caches the parsed forms of repeated
    metadata strings (dates, levels, categories), which are few in a file of millions of rows.
    """

    __slots__ = ("_cache", "_default_region", "_default_tlp", "_source", "_today")

    def __init__(self, *, default_region: str, default_tlp: str, today: date, source: str) -> None:
        """Check the defaults once.

        Raises:
            InputError: ``default_region`` or ``default_tlp`` is not valid.
        """
        try:
            self._default_region = parse_region(default_region)
        except InputError as exc:
            raise InputError(f"default region: {exc}") from None
        try:
            self._default_tlp = parse_tlp(default_tlp)
        except InputError as exc:
            raise InputError(f"default TLP: {exc}") from None
        self._today = today
        self._source = source
        self._cache: dict[tuple[str, str], object] = {}

    @property
    def default_tlp(self) -> str:
        """The TLP level of an indicator whose file gives none."""
        return self._default_tlp

    @property
    def default_region(self) -> str:
        """The region used to read national phone numbers and ``BANK:ACCOUNT`` where a row gives none."""
        return self._default_region

    def _cached(self, field: str, text: str, parse: Callable[[str], _T]) -> _T:
        key = (field, text)
        try:
            return cast(_T, self._cache[key])
        except KeyError:
            pass
        try:
            value = parse(text)
        except InputError as exc:
            raise _field(field, exc) from None
        if len(self._cache) < _CACHE_SIZE:
            self._cache[key] = value
        return value

    def _date(self, field: str, value: str | date | None) -> date | None:
        if value is None or isinstance(value, date):
            return value
        if not value.strip():
            return None
        return self._cached(field, value, parse_date)

    def build(
        self,
        location: str,
        *,
        kind: str | None,
        value: str | None,
        region: str | None = None,
        category: str | None = None,
        first_seen: str | date | None = None,
        last_seen: str | date | None = None,
        confidence: str | int | None = None,
        tlp: str | None = None,
        reports: str | int | None = None,
        expires_at: str | date | None = None,
    ) -> ParsedIndicator | Rejection:
        """Check one record; empty strings and None mean "not given" and take the documented default.

        Dates may be given as strings (ISO 8601) or as :class:`datetime.date` already read by the format.
        """
        try:
            return self._build(
                location,
                kind=kind,
                value=value,
                region=region,
                category=category,
                first_seen=first_seen,
                last_seen=last_seen,
                confidence=confidence,
                tlp=tlp,
                reports=reports,
                expires_at=expires_at,
            )
        except InputError as exc:
            return Rejection(location, str(exc))

    def _build(
        self,
        location: str,
        *,
        kind: str | None,
        value: str | None,
        region: str | None,
        category: str | None,
        first_seen: str | date | None,
        last_seen: str | date | None,
        confidence: str | int | None,
        tlp: str | None,
        reports: str | int | None,
        expires_at: str | date | None,
    ) -> ParsedIndicator:
        if kind is None or not kind.strip():
            raise InputError("kind: missing")
        kind_name = kind.strip().lower()
        if kind_name not in KINDS:
            raise InputError(f"kind: unknown kind {kind.strip()!r}; expected one of {', '.join(KINDS)}")
        if value is None or not value.strip():
            raise InputError("value: missing")
        if region is None or not region.strip():
            row_region = self._default_region
        else:
            row_region = self._cached("region", region, parse_region)
        try:
            canonical = normalize(kind_name, value, row_region)
        except InputError as exc:
            raise _field("value", exc) from None

        if category is None or not category.strip():
            category_name = DEFAULT_CATEGORY
        else:
            category_name = self._cached("category", category, parse_category)
        if tlp is None or not tlp.strip():
            level = self._default_tlp
        else:
            level = self._cached("tlp", tlp, parse_tlp)
        try:
            score = (
                DEFAULT_CONFIDENCE if confidence is None or confidence == "" else _integer(confidence, 0, 100)
            )
        except InputError as exc:
            raise _field("confidence", exc) from None
        try:
            count = (
                DEFAULT_REPORTS if reports is None or reports == "" else _integer(reports, 1, _MAX_REPORTS)
            )
        except InputError as exc:
            raise _field("reports", exc) from None

        first = self._date("first_seen", first_seen)
        last = self._date("last_seen", last_seen)
        expires = self._date("expires_at", expires_at)
        if first is None:
            first = last if last is not None else self._today
        if last is None:
            last = first
        latest = self._today + FUTURE_SLACK
        if first > latest:
            raise InputError(f"first_seen: {first} is in the future (today is {self._today})")
        if last > latest:
            raise InputError(f"last_seen: {last} is in the future (today is {self._today})")
        if last < first:
            raise InputError(f"last_seen: {last} is before first_seen {first}")
        if expires is not None:
            if expires <= self._today:
                raise InputError(f"expires_at: {expires} is not after today ({self._today}): already expired")
            if expires <= first:
                raise InputError(f"expires_at: {expires} is not after first_seen {first}")

        return ParsedIndicator(
            kind=kind_name,
            canonical=canonical,
            category=category_name,
            first_seen=first,
            last_seen=last,
            confidence=score,
            tlp=level,
            reports=count,
            expires_at=expires,
            source=self._source,
            location=location,
        )
