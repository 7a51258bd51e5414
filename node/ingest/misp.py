"""Ingest of MISP events in the MISP core format (``{"Event": {"Attribute": [...], "Object": [...]}}``).

Attributes of the types in :data:`MISP_TYPES` become indicators; three object templates give context
that a lone attribute lacks (``telegram-account``, ``coin-address``, ``bank-account``). Every other
attribute is rejected with its uuid and the reason, so that nothing is dropped without a word — except
deleted attributes (a deletion, not data) and descriptive attributes inside objects (text, dates…),
which describe the object's indicators. ``docs/operators.md`` lists the mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any, Final

from client.protocol.errors import ImportError_, InputError
from node.ingest.parsers import (
    ParsedIndicator,
    RecordBuilder,
    Rejection,
    most_restrictive_tlp,
    parse_category,
    parse_date,
    parse_tlp,
)

__all__ = ["MISP_TYPES", "attribute_indicators", "parse_misp_event"]

#: MISP attribute type -> indicator kind, for types whose value is the indicator itself.
MISP_TYPES: Final[dict[str, str]] = {
    "phone-number": "phone",
    "email": "email",
    "email-src": "email",
    "email-reply-to": "email",
    "url": "url",
    "domain": "domain",
    "hostname": "domain",
    "iban": "bank_account",
    "bank-account-nr": "bank_account",
    "btc": "crypto_wallet",
}
# Types refused with a specific reason (the rest get "unsupported MISP type").
_REFUSED: Final[dict[str, str]] = {
    "email-dst": "email-dst is a recipient, often the victim: not ingested (use email-src or email-reply-to)",
    "target-email": "target-email is a victim's address: not ingested",
    "link": "a MISP link points to a report, it is not an indicator (use type url)",
    "uri": "a uri is a path without a host; use type url",
    "xmr": "Monero addresses are not supported (chains: btc, eth, ltc, trx)",
    "jabber-id": "XMPP accounts are not a supported handle platform",
    "github-username": "GitHub accounts are not a supported handle platform",
}
# Descriptive types that, inside an object, describe its indicators and are not reported.
_DESCRIPTIVE: Final = frozenset(
    {
        "text",
        "comment",
        "datetime",
        "float",
        "integer",
        "counter",
        "boolean",
        "size-in-bytes",
        "port",
        "other",
    }
)
_IP_TYPES: Final = frozenset({"ip-src", "ip-dst"})
_IP_PORT_TYPES: Final = frozenset({"ip-src|port", "ip-dst|port"})
_PETANDA_CATEGORY: Final = "petanda:category="
_PETANDA_CONFIDENCE: Final = "petanda:confidence="


def _truthy(item: object) -> bool:
    """MISP writes flags as true, 1 or "1"."""
    return item is True or item == 1 or item == "1"


def _ip_kind(value: str) -> str:
    return "ipv6" if ":" in value else "ipv4"


def _attribute_pairs(attribute: dict[str, Any], context: dict[str, str]) -> list[tuple[str, str]]:
    """The (kind, value) pairs of one attribute, using ``context`` (its object's relations) if any.

    Raises:
        InputError: the type is not ingested; the message says why.
    """
    kind_name = attribute.get("type")
    value = attribute.get("value")
    if not isinstance(kind_name, str):
        raise InputError("no type")
    if not isinstance(value, str):
        raise InputError("no value string")
    template = context.get("", "")
    relation = attribute.get("object_relation")
    if template == "telegram-account" and relation == "username":
        return [("handle", f"telegram:{value}")]
    if template == "telegram-account" and relation == "phone":
        return [("phone", value)]
    if template == "coin-address" and relation in ("address", "address-crypto"):
        symbol = context.get("symbol")
        return [("crypto_wallet", f"{symbol}:{value}" if symbol else value)]
    if template == "bank-account" and relation == "account":
        bic = context.get("swift", "").strip().upper()
        if bic:
            return [("bank_account", f"{bic[4:6]}:{bic}:{value}")]
        institution = context.get("institution-code", "").strip()
        return [("bank_account", f"{institution}:{value}" if institution else value)]
    if kind_name in MISP_TYPES:
        return [(MISP_TYPES[kind_name], value)]
    if kind_name in _IP_TYPES:
        return [(_ip_kind(value), value)]
    if kind_name in _IP_PORT_TYPES:
        address = value.rpartition("|")[0] or value
        return [(_ip_kind(address), address)]
    if kind_name == "hostname|port":
        return [("domain", value.partition("|")[0])]
    if kind_name == "domain|ip":
        domain, bar, address = value.partition("|")
        if not bar:
            raise InputError("domain|ip value has no '|'")
        return [("domain", domain), (_ip_kind(address), address)]
    if kind_name == "twitter-id":
        return [("handle", f"x:{value}")]
    if kind_name in _REFUSED:
        raise InputError(_REFUSED[kind_name])
    raise InputError(f"unsupported MISP type {kind_name!r}")


def attribute_indicators(attribute: dict[str, Any]) -> list[tuple[str, str]]:
    """The (kind, raw value) pairs one attribute names on its own (its type alone, no object context).

    Raises:
        InputError: the type is not one Petanda ingests; the message says why.
    """
    return _attribute_pairs(attribute, {})


def _tags(holder: dict[str, Any]) -> list[str]:
    tags = holder.get("Tag")
    if not isinstance(tags, list):
        return []
    return [tag["name"].strip() for tag in tags if isinstance(tag, dict) and isinstance(tag.get("name"), str)]


def _tag_value(names: list[str], prefix: str) -> str | None:
    """The value of the first machine tag ``prefix"value"`` (case-insensitive namespace), if any."""
    for tag in names:
        if tag.lower().startswith(prefix):
            return tag[len(prefix) :].strip().strip('"')
    return None


def _tlp_levels(names: list[str]) -> list[str]:
    levels = []
    for tag in names:
        if tag.lower().startswith("tlp:"):
            try:
                levels.append(parse_tlp(tag))
            except InputError:
                continue  # e.g. tlp:ex:chr, a TLP extension that is not a level
    return levels


def _date_field(holder: dict[str, Any], field: str, label: str) -> date | None:
    text = holder.get(field)
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise InputError(f"{label}: expected a date string")
    try:
        return parse_date(text)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None


class _Event:
    """What an event gives every attribute: tags, date, and the file name for locations."""

    def __init__(self, event: dict[str, Any], name: str, builder: RecordBuilder) -> None:
        self.name = name
        self.builder = builder
        tags = _tags(event)
        self.tlp = _tlp_levels(tags)
        self.category = _tag_value(tags, _PETANDA_CATEGORY)
        self.confidence = _tag_value(tags, _PETANDA_CONFIDENCE)
        self.date = _date_field(event, "date", "event date")

    def attribute(
        self,
        attribute: dict[str, Any],
        location: str,
        context: dict[str, str],
        object_dates: tuple[date | None, date | None],
    ) -> Iterator[ParsedIndicator | Rejection]:
        try:
            pairs = _attribute_pairs(attribute, context)
            first_seen = _date_field(attribute, "first_seen", "first_seen") or object_dates[0]
            last_seen = _date_field(attribute, "last_seen", "last_seen") or object_dates[1]
            if first_seen is None and not (self.date and last_seen and last_seen < self.date):
                first_seen = self.date  # the event's date is a default that never contradicts last_seen
            tags = _tags(attribute)
            category_tag = _tag_value(tags, _PETANDA_CATEGORY) or self.category
            category = parse_category(category_tag) if category_tag else None
        except InputError as exc:
            yield Rejection(location, str(exc))
            return
        for kind, value in pairs:
            yield self.builder.build(
                location,
                kind=kind,
                value=value,
                category=category,
                first_seen=first_seen,
                last_seen=last_seen,
                confidence=_tag_value(tags, _PETANDA_CONFIDENCE) or self.confidence,
                tlp=most_restrictive_tlp(self.tlp + _tlp_levels(tags)),
            )


def _location(name: str, attribute: dict[str, Any], fallback: str) -> str:
    uuid = attribute.get("uuid")
    return f"{name}#{uuid}" if isinstance(uuid, str) and uuid else f"{name}#{fallback}"


def parse_misp_event(
    document: object, name: str, builder: RecordBuilder
) -> Iterator[ParsedIndicator | Rejection]:
    """Yield the indicators of a MISP event already loaded from JSON.

    Raises:
        ImportError_: (on the first iteration) ``document`` is not a MISP event, or its date is wrong.
    """
    if not isinstance(document, dict) or not isinstance(document.get("Event"), dict):
        raise ImportError_(name, 'not a MISP event (no "Event" object)')
    raw_event: dict[str, Any] = document["Event"]
    try:
        event = _Event(raw_event, name, builder)
    except InputError as exc:
        raise ImportError_(name, str(exc)) from None

    attributes = raw_event.get("Attribute", [])
    if not isinstance(attributes, list):
        raise ImportError_(name, 'the event\'s "Attribute" is not a list')
    for position, attribute in enumerate(attributes):
        fallback = f"Attribute[{position}]"
        if not isinstance(attribute, dict):
            yield Rejection(f"{name}#{fallback}", "not a MISP attribute object")
            continue
        if _truthy(attribute.get("deleted")):
            continue
        yield from event.attribute(attribute, _location(name, attribute, fallback), {}, (None, None))

    objects = raw_event.get("Object", [])
    if not isinstance(objects, list):
        raise ImportError_(name, 'the event\'s "Object" is not a list')
    for object_position, misp_object in enumerate(objects):
        if not isinstance(misp_object, dict):
            yield Rejection(f"{name}#Object[{object_position}]", "not a MISP object")
            continue
        if _truthy(misp_object.get("deleted")):
            continue
        yield from _object(event, misp_object, object_position)


def _object(
    event: _Event, misp_object: dict[str, Any], object_position: int
) -> Iterator[ParsedIndicator | Rejection]:
    name = event.name
    members = misp_object.get("Attribute", [])
    if not isinstance(members, list):
        yield Rejection(
            _location(name, misp_object, f"Object[{object_position}]"), '"Attribute" is not a list'
        )
        return
    live = [m for m in members if isinstance(m, dict) and not _truthy(m.get("deleted"))]
    template_name = misp_object.get("name")
    template = template_name if isinstance(template_name, str) else ""
    context: dict[str, str] = {"": template}
    for member in live:
        relation, value = member.get("object_relation"), member.get("value")
        if isinstance(relation, str) and isinstance(value, str) and relation not in context:
            context[relation] = value
    try:
        object_first = _date_field(misp_object, "first_seen", "object first_seen")
        object_first = object_first or _date_field(context, "first-seen", "object first-seen")
        object_last = _date_field(misp_object, "last_seen", "object last_seen")
        object_last = object_last or _date_field(context, "last-seen", "object last-seen")
    except InputError as exc:
        yield Rejection(_location(name, misp_object, f"Object[{object_position}]"), str(exc))
        return
    for position, member in enumerate(members):
        fallback = f"Object[{object_position}].Attribute[{position}]"
        if not isinstance(member, dict):
            yield Rejection(f"{name}#{fallback}", "not a MISP attribute object")
            continue
        if _truthy(member.get("deleted")) or _is_context(template, member):
            continue
        yield from event.attribute(
            member, _location(name, member, fallback), context, (object_first, object_last)
        )


# Relations of the known templates that are read as context of another attribute, or not read at all.
_INDICATOR_RELATIONS: Final[dict[str, frozenset[str]]] = {
    "telegram-account": frozenset({"username", "phone"}),
    "coin-address": frozenset({"address", "address-crypto", "address-xmr"}),
    "bank-account": frozenset({"account", "iban"}),
}


def _is_context(template: str, member: dict[str, Any]) -> bool:
    """True for an object attribute that describes the object's indicators rather than being one."""
    relations = _INDICATOR_RELATIONS.get(template)
    if relations is not None:
        return member.get("object_relation") not in relations
    return member.get("type") in _DESCRIPTIVE
