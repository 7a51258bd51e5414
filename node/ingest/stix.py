"""Ingest of STIX 2.1 bundles: ``indicator`` objects with simple STIX patterns, and observables (SCOs).

STIX has no phone-number, wallet or bank-account observable; the custom ones OpenCTI defines (and
exports) are accepted: ``phone-number:value``, ``cryptocurrency-wallet:value`` (``:address`` in the
cti-stix-common-objects extension), ``bank-account:iban`` / ``:account_number`` and ``hostname:value``.
Patterns are read with the OASIS STIX 2.1 pattern grammar (``stix2-patterns``, :func:`parse_pattern`):
every valid pattern is read or refused naming the construct Petanda does not read, with the object id.
``docs/operators.md`` lists what is read from each object.

One module of this size: the reading of STIX patterns and the mapping of objects are one format's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any, Final

from antlr4 import Token
from antlr4.tree.Tree import TerminalNode
from stix2patterns.exceptions import ParseException
from stix2patterns.v21.grammars.STIXPatternParser import STIXPatternParser as _P
from stix2patterns.v21.pattern import Pattern

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

__all__ = [
    "MAX_ALTERNATIVES",
    "PATH_KINDS",
    "TLP_MARKING_IDS",
    "PatternError",
    "parse_pattern",
    "parse_stix_bundle",
    "pattern_indicators",
]

#: The TLP marking-definition ids fixed by the STIX 2.1 specification (TLP 1.0, section 7.2.1.4) and by
#: the OASIS TLP 2.0 extension (cti-stix-common-objects, extension-definition--60a3c5c5-…).
TLP_MARKING_IDS: Final[dict[str, str]] = {
    # TLP 2.0
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": "CLEAR",
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "GREEN",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "AMBER",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": "AMBER+STRICT",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": "RED",
    # TLP 1.0 as predefined by STIX 2.1 (WHITE is read as CLEAR)
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "CLEAR",
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "GREEN",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "AMBER",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "RED",
}
_TLP2_EXTENSION: Final = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"

#: Object paths that name one indicator on their own, with its kind.
PATH_KINDS: Final[dict[str, str]] = {
    "email-addr:value": "email",
    "email-message:from_ref.value": "email",
    "email-message:sender_ref.value": "email",
    "url:value": "url",
    "domain-name:value": "domain",
    "hostname:value": "domain",
    "ipv4-addr:value": "ipv4",
    "ipv6-addr:value": "ipv6",
    "phone-number:value": "phone",
    "cryptocurrency-wallet:value": "crypto_wallet",
    "cryptocurrency-wallet:address": "crypto_wallet",
    "bank-account:iban": "bank_account",
}
# Objects whose indicator is spelt by several properties AND-ed together (platform + name, BIC + number).
_COMPOSITE_TYPES: Final = frozenset({"user-account", "bank-account"})

# Observable (SCO) type -> (kind, property holding the value); composite ones are read by _composite().
_SCO_VALUE: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "email-addr": ("email", ("value",)),
    "url": ("url", ("value",)),
    "domain-name": ("domain", ("value",)),
    "hostname": ("domain", ("value",)),
    "ipv4-addr": ("ipv4", ("value",)),
    "ipv6-addr": ("ipv6", ("value",)),
    "phone-number": ("phone", ("value",)),
    "cryptocurrency-wallet": ("crypto_wallet", ("value", "address")),
}
# Observable types that carry no indicator of ours: rejected (never dropped silently). Other object
# types (SDOs, relationships, markings, reports…) describe rather than carry indicators and are skipped.
_UNSUPPORTED_SCOS: Final = frozenset(
    {
        "artifact",
        "autonomous-system",
        "directory",
        "email-message",
        "file",
        "mac-addr",
        "mutex",
        "network-traffic",
        "process",
        "software",
        "windows-registry-key",
        "x509-certificate",
        # OpenCTI custom observables
        "bank-card",
        "credential",
        "media-content",
        "payment-card",
        "text",
        "tracking-number",
        "user-agent",
    }
)


class PatternError(InputError):
    """A STIX pattern that is invalid, or uses a construct Petanda does not read (the message names it)."""


# --- patterns, read through the OASIS grammar ------------------------------------------------------

#: (object path, string) comparisons AND-ed together: one indicator.
_Conjunction = tuple[tuple[str, str], ...]
#: Most alternatives one observation may expand to (an AND of ORs is multiplied out).
MAX_ALTERNATIVES: Final = 1000
_STRING_ESCAPE: Final = re.compile(r"\\(['\\])")
_OPERATORS: Final[dict[type, str]] = {
    _P.PropTestLikeContext: "LIKE",
    _P.PropTestRegexContext: "MATCHES",
    _P.PropTestIsSubsetContext: "ISSUBSET",
    _P.PropTestIsSupersetContext: "ISSUPERSET",
    _P.PropTestExistsContext: "EXISTS",
}
_QUALIFIERS: Final[dict[type, str]] = {
    _P.ObservationExpressionWithinContext: "WITHIN",
    _P.ObservationExpressionStartStopContext: "START/STOP",
    _P.ObservationExpressionRepeatedContext: "REPEATS",
}


def parse_pattern(pattern: str) -> list[list[_Conjunction]]:
    """Read a STIX 2.1 pattern with the OASIS grammar (``stix2-patterns``) into what Petanda holds.

    Every valid pattern is either read or refused naming the construct: observations joined by ``OR``
    (parentheses allowed); inside one, comparisons ``object-path = 'string'`` or ``object-path IN
    ('string', ...)`` joined by ``AND`` and ``OR`` with parentheses, multiplied out into alternatives
    (at most :data:`MAX_ALTERNATIVES`). Refused: ``AND`` or ``FOLLOWEDBY`` between observations, the
    qualifiers ``WITHIN``, ``START``/``STOP`` and ``REPEATS``, ``NOT``, operators other than ``=`` and
    ``IN``, constants other than strings, and list indexes in an object path.

    Returns:
        One list per observation of its alternatives, each a tuple of AND-ed ``(object path, value)``.

    Raises:
        PatternError: not a valid pattern (the grammar's message, with line and column), or a construct
            Petanda does not read (named).
    """
    try:
        compiled = Pattern(pattern)
    except ParseException as exc:
        raise PatternError(f"not a valid STIX 2.1 pattern: {exc}") from None
    observations: list[list[_Conjunction]] = compiled.visit(_Reader())
    return observations


class _Reader:
    """Takes the parse tree from :meth:`stix2patterns.v21.pattern.Pattern.visit`."""

    def visit(self, tree: Any) -> list[list[_Conjunction]]:
        return _observations(tree)


def _observations(ctx: Any) -> list[list[_Conjunction]]:
    """The observations under a pattern, an OR, AND or FOLLOWEDBY of observations, or one observation."""
    if isinstance(ctx, _P.ObservationExpressionSimpleContext):
        return [_alternatives(ctx.comparisonExpression())]
    if isinstance(ctx, _P.ObservationExpressionCompoundContext):
        return _observations(ctx.observationExpressions())
    for qualified, name in _QUALIFIERS.items():
        if isinstance(ctx, qualified):
            raise PatternError(
                f"qualifier {name} is not supported (Petanda reads which values a pattern names, "
                "not when or how often they are observed)"
            )
    found: list[list[_Conjunction]] = []
    for child in ctx.getChildren():
        if isinstance(child, TerminalNode):
            word = child.getText()
            if child.getSymbol().type == Token.EOF or word == "OR":
                continue
            raise PatternError(f"{word} between observations is not supported (only OR)")
        found.extend(_observations(child))
    return found


def _alternatives(ctx: Any) -> list[_Conjunction]:
    """A comparison expression multiplied out: the alternatives (OR) of AND-ed comparisons."""
    if isinstance(ctx, _P.ComparisonExpressionContext):
        return [
            c
            for child in ctx.comparisonExpression() or [ctx.comparisonExpressionAnd()]
            for c in _alternatives(child)
        ]
    if isinstance(ctx, _P.ComparisonExpressionAndContext):
        parts = ctx.comparisonExpressionAnd() or [ctx.propTest()]
        product: list[_Conjunction] = [()]
        for part in parts:
            product = [left + right for left in product for right in _alternatives(part)]
            if len(product) > MAX_ALTERNATIVES:
                raise PatternError(f"an observation expands to more than {MAX_ALTERNATIVES} alternatives")
        return product
    if isinstance(ctx, _P.PropTestParenContext):
        return _alternatives(ctx.comparisonExpression())
    return [((_path(ctx), value),) for value in _compared(ctx)]


def _path(ctx: Any) -> str:
    """The object path of a comparison, as written (``email-message:from_ref.value``)."""
    path = ctx.objectPath()
    text: str = path.getText()
    if any(isinstance(node, _P.IndexPathStepContext) for node in _descendants(path)):
        raise PatternError(f"{text}: list indexes in an object path are not supported")
    return text


def _descendants(ctx: Any) -> Iterator[Any]:
    for child in ctx.getChildren():
        yield child
        if not isinstance(child, TerminalNode):
            yield from _descendants(child)


def _compared(ctx: Any) -> list[str]:
    """The string(s) one comparison tests for equality with (``=`` one, ``IN`` several)."""
    if ctx.NOT() is not None:
        raise PatternError("NOT is not supported")
    for operator, name in _OPERATORS.items():
        if isinstance(ctx, operator):
            raise PatternError(f"operator {name} is not supported (only = and IN)")
    if isinstance(ctx, _P.PropTestOrderContext):
        name = (ctx.GT() or ctx.LT() or ctx.GE() or ctx.LE()).getText()
        raise PatternError(f"operator {name} is not supported (only = and IN)")
    if isinstance(ctx, _P.PropTestSetContext):
        literals = ctx.setLiteral().primitiveLiteral()
    else:
        assert isinstance(ctx, _P.PropTestEqualContext), type(ctx).__name__
        if ctx.NEQ() is not None:
            raise PatternError("operator != is not supported (only = and IN)")
        literals = [ctx.primitiveLiteral()]
    values = []
    for literal in literals:
        text: str = literal.getText()
        if not text.startswith("'"):
            raise PatternError(
                f"{ctx.objectPath().getText()} must be compared with a quoted string, found {text}"
            )
        values.append(_STRING_ESCAPE.sub(r"\1", text[1:-1]))
    return values


def _composite(object_type: str, properties: dict[str, str]) -> tuple[str, str]:
    """The (kind, value) of an account or bank account spelt by several properties."""
    if object_type == "user-account":
        platform = properties.get("account_type")
        name = properties.get("account_login") or properties.get("user_id")
        if not platform:
            raise PatternError("user-account needs account_type (the platform, e.g. 'telegram')")
        if not name:
            raise PatternError("user-account needs account_login or user_id")
        return "handle", f"{platform}:{name}"
    iban = properties.get("iban")
    if iban:
        return "bank_account", iban
    number = properties.get("account_number")
    bic = properties.get("bic") or properties.get("swift")
    if not number:
        raise PatternError("bank-account needs iban, or account_number with bic")
    if not bic:
        raise PatternError("bank-account:account_number needs bank-account:bic to name the bank and country")
    bic = bic.strip().upper()
    if len(bic) not in (8, 11):
        raise PatternError(f"{bic!r} is not a BIC (8 or 11 characters)")
    return "bank_account", f"{bic[4:6]}:{bic}:{number}"


def pattern_indicators(pattern: str) -> list[tuple[str, str]]:
    """Return the (kind, value) pairs a pattern names, in order and without repeats.

    Raises:
        PatternError: outside the subset, or naming something that is not one of our kinds.
    """
    found: list[tuple[str, str]] = []
    for observation in parse_pattern(pattern):
        for comparisons in observation:
            if len(comparisons) > 1:
                object_types = {path.partition(":")[0] for path, _ in comparisons}
                object_type = object_types.pop()
                if object_types or object_type not in _COMPOSITE_TYPES:
                    raise PatternError(
                        "AND of comparisons is supported only within one user-account or bank-account"
                    )
                properties = {path.partition(":")[2]: value for path, value in comparisons}
                found.append(_composite(object_type, properties))
                continue
            ((path, value),) = comparisons
            kind = PATH_KINDS.get(path)
            if kind is not None:
                found.append((kind, value))
            elif path.partition(":")[0] in _COMPOSITE_TYPES:
                found.append(_composite(path.partition(":")[0], {path.partition(":")[2]: value}))
            else:
                raise PatternError(f"{path} is not an indicator kind Petanda holds")
    return list(dict.fromkeys(found))


# --- the bundle ---------------------------------------------------------------------------------------


def _bundle_markings(objects: list[Any]) -> dict[str, str]:
    """TLP levels of marking definitions: the fixed ids, and TLP definitions the bundle itself carries."""
    markings = dict(TLP_MARKING_IDS)
    for obj in objects:
        if not isinstance(obj, dict) or obj.get("type") != "marking-definition":
            continue
        marking_id = obj.get("id")
        if not isinstance(marking_id, str) or marking_id in TLP_MARKING_IDS:
            continue  # the fixed ids cannot be redefined by a file
        level: object = None
        extension = (
            obj.get("extensions", {}).get(_TLP2_EXTENSION)
            if isinstance(obj.get("extensions"), dict)
            else None
        )
        if isinstance(extension, dict):
            level = extension.get("tlp_2_0")
        elif obj.get("definition_type") == "tlp" and isinstance(obj.get("definition"), dict):
            level = obj["definition"].get("tlp")
        if isinstance(level, str):
            try:
                markings[marking_id] = parse_tlp(level)
            except InputError:
                pass  # not a TLP level: some other marking, which carries no TLP
    return markings


def _tlp(obj: dict[str, Any], markings: dict[str, str]) -> str | None:
    refs = obj.get("object_marking_refs")
    if not isinstance(refs, list):
        return None
    return most_restrictive_tlp([markings[ref] for ref in refs if isinstance(ref, str) and ref in markings])


def _category(obj: dict[str, Any]) -> str | None:
    """The first label that names a category (``investment``, ``job-task``, ``money mule``…), if any."""
    labels = obj.get("labels")
    if not isinstance(labels, list):
        return None
    for label in labels:
        if isinstance(label, str):
            try:
                return parse_category(label)
            except InputError:
                continue
    return None


def _timestamp(obj: dict[str, Any], field: str) -> date | None:
    text = obj.get(field)
    if text is None:
        return None
    if not isinstance(text, str):
        raise InputError(f"{field}: expected a timestamp string")
    try:
        return parse_date(text)
    except InputError as exc:
        raise InputError(f"{field}: {exc}") from None


def _modified(obj: dict[str, Any]) -> datetime:
    text = obj.get("modified")
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else datetime.min
    except ValueError:
        return datetime.min


def _latest_versions(objects: list[Any], name: str) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Keep the latest version (greatest ``modified``) of each object id; reject malformed entries."""
    latest: dict[str, dict[str, Any]] = {}
    bad: list[Rejection] = []
    for position, obj in enumerate(objects):
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("type"), str)
            or not isinstance(obj.get("id"), str)
        ):
            bad.append(Rejection(f"{name}#objects[{position}]", "not a STIX object (no type or id)"))
            continue
        previous = latest.get(obj["id"])
        if previous is None or _modified(obj) >= _modified(previous):
            latest[obj["id"]] = obj
    return list(latest.values()), bad


def parse_stix_bundle(
    document: object, name: str, builder: RecordBuilder
) -> Iterator[ParsedIndicator | Rejection]:
    """Yield the indicators of a STIX 2.1 bundle already loaded from JSON.

    Indicators come first, then observables that no indicator of the bundle already gave (an
    observable carries no dates or confidence, so the indicator's metadata wins).

    Raises:
        ImportError_: (on the first iteration) ``document`` is not a STIX bundle.
    """
    if not isinstance(document, dict) or document.get("type") != "bundle":
        raise ImportError_(name, 'not a STIX bundle (no "type": "bundle")')
    raw_objects = document.get("objects", [])
    if not isinstance(raw_objects, list):
        raise ImportError_(name, 'the bundle\'s "objects" is not a list')
    objects, malformed = _latest_versions(raw_objects, name)
    yield from malformed
    markings = _bundle_markings(objects)
    seen: set[tuple[str, str]] = set()
    for obj in objects:
        if obj["type"] == "indicator":
            for result in _indicator(obj, name, builder, markings):
                if isinstance(result, ParsedIndicator):
                    seen.add((result.kind, result.canonical))
                yield result
    for obj in objects:
        object_type = obj["type"]
        if object_type in _SCO_VALUE or object_type in _COMPOSITE_TYPES:
            result = _observable(obj, name, builder, markings)
            if isinstance(result, ParsedIndicator):
                if (result.kind, result.canonical) in seen:
                    continue
                seen.add((result.kind, result.canonical))
            yield result
        elif object_type in _UNSUPPORTED_SCOS:
            yield Rejection(
                f"{name}#{obj['id']}",
                f"observable type {object_type!r} is not an indicator kind Petanda holds",
            )


def _indicator(
    obj: dict[str, Any], name: str, builder: RecordBuilder, markings: dict[str, str]
) -> Iterator[ParsedIndicator | Rejection]:
    location = f"{name}#{obj['id']}"
    if obj.get("revoked") is True:
        yield Rejection(location, "the indicator is revoked")
        return
    pattern_type = obj.get("pattern_type", "stix")
    if pattern_type != "stix":
        yield Rejection(location, f"pattern_type {pattern_type!r} is not supported (only stix)")
        return
    pattern = obj.get("pattern")
    if not isinstance(pattern, str):
        yield Rejection(location, "no pattern")
        return
    try:
        pairs = pattern_indicators(pattern)
        first_seen = _timestamp(obj, "valid_from")
        expires_at = _timestamp(obj, "valid_until")
    except InputError as exc:
        reason = f"pattern: {exc}" if isinstance(exc, PatternError) else str(exc)
        yield Rejection(location, reason)
        return
    confidence = obj.get("confidence")
    for kind, value in pairs:
        yield builder.build(
            location,
            kind=kind,
            value=value,
            category=_category(obj),
            first_seen=first_seen,
            confidence=confidence
            if confidence is None or isinstance(confidence, int | str)
            else repr(confidence),
            tlp=_tlp(obj, markings),
            expires_at=expires_at,
        )


def _observable(
    obj: dict[str, Any], name: str, builder: RecordBuilder, markings: dict[str, str]
) -> ParsedIndicator | Rejection:
    location = f"{name}#{obj['id']}"
    object_type = obj["type"]
    try:
        if object_type in _COMPOSITE_TYPES:
            properties = {key: item for key, item in obj.items() if isinstance(item, str)}
            kind, value = _composite(object_type, properties)
        else:
            kind, keys = _SCO_VALUE[object_type]
            found = next((obj[key] for key in keys if isinstance(obj.get(key), str)), None)
            if found is None:
                raise InputError(f"{object_type} has no {' or '.join(keys)} string")
            value = found
    except InputError as exc:
        return Rejection(location, str(exc))
    return builder.build(location, kind=kind, value=value, category=_category(obj), tlp=_tlp(obj, markings))
