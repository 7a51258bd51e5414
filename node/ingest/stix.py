"""Ingest of STIX 2.1 bundles: ``indicator`` objects with simple STIX patterns, and observables (SCOs).

STIX has no phone-number, wallet or bank-account observable; the custom ones OpenCTI defines (and
exports) are accepted: ``phone-number:value``, ``cryptocurrency-wallet:value`` (``:address`` in the
cti-stix-common-objects extension), ``bank-account:iban`` / ``:account_number`` and ``hostname:value``.
Patterns are read by a small parser of the subset in :func:`parse_pattern`; anything else is refused with
the object id and the reason. ``docs/operators.md`` lists what is read from each object.

One module of this size: the STIX pattern reader and the mapping of objects are one format's rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime
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

__all__ = [
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
    """A STIX pattern outside the supported subset (the message says what was met)."""


# --- the pattern subset -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<path>[a-z0-9][a-z0-9-]*:[a-z0-9_]+(?:\.[a-z0-9_]+)*)
  | (?P<string>')
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
  | (?P<op>!=|<=|>=|=|<|>)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[\[\](),])
    """,
    re.VERBOSE,
)


def _string(pattern: str, start: int) -> tuple[str, int]:
    """Read a quoted string whose opening quote is at ``start``; only ``\\'`` and ``\\\\`` are escapes."""
    out: list[str] = []
    index = start + 1
    while index < len(pattern):
        char = pattern[index]
        if char == "'":
            return "".join(out), index + 1
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if following not in ("'", "\\"):
                raise PatternError(f"unsupported escape \\{following} in a string (only \\' and \\\\)")
            out.append(following)
            index += 2
            continue
        out.append(char)
        index += 1
    raise PatternError("unterminated string")


def _tokens(pattern: str) -> list[tuple[str, str]]:
    """Split a pattern into (kind, text) tokens: path, string, number, op, word, punct."""
    tokens: list[tuple[str, str]] = []
    index = 0
    while index < len(pattern):
        match = _TOKEN.match(pattern, index)
        if match is None:
            raise PatternError(f"unexpected character {pattern[index]!r} at position {index + 1}")
        group = match.lastgroup
        assert group is not None
        if group == "string":
            text, index = _string(pattern, index)
            tokens.append(("string", text))
            continue
        if group != "space":
            tokens.append((group, match.group()))
        index = match.end()
    return tokens


_QUALIFIERS: Final = frozenset({"WITHIN", "START", "STOP", "REPEATS"})
_Comparison = tuple[str, str]  # (object path, string value)


def parse_pattern(pattern: str) -> list[tuple[str, list[_Comparison]]]:
    """Parse the supported subset of STIX 2.1 patterning into observations.

    The subset: observation expressions ``[...]`` joined by ``OR`` (parentheses allowed around them);
    inside one, comparisons ``object-type:property = 'string'`` joined all by ``AND`` or all by ``OR``.
    Strings escape only ``\\'`` and ``\\\\``. Anything else (other operators, ``NOT``, qualifiers such as
    ``WITHIN``, ``FOLLOWEDBY``, observation ``AND``, non-string constants, list indexes) is refused.

    Returns:
        One ``(joiner, comparisons)`` per observation, joiner being ``"AND"`` or ``"OR"``.

    Raises:
        PatternError: the pattern is outside the subset; its message says where.
    """
    tokens = _tokens(pattern)
    observations: list[tuple[str, list[_Comparison]]] = []
    depth = 0
    index = 0
    expect_observation = True
    while index < len(tokens):
        kind, text = tokens[index]
        if expect_observation:
            if (kind, text) == ("punct", "("):
                depth += 1
                index += 1
                continue
            if (kind, text) != ("punct", "["):
                raise PatternError(f"expected '[' to open an observation, found {text!r}")
            joiner, comparisons, index = _observation(tokens, index + 1)
            observations.append((joiner, comparisons))
            expect_observation = False
            continue
        if (kind, text) == ("punct", ")"):
            depth -= 1
            if depth < 0:
                raise PatternError("unbalanced ')'")
            index += 1
            continue
        if kind == "word" and text == "OR":
            expect_observation = True
            index += 1
            continue
        if kind == "word" and text in _QUALIFIERS:
            raise PatternError(f"qualifier {text} is not supported")
        if kind == "word":
            raise PatternError(f"{text} between observations is not supported (only OR)")
        raise PatternError(f"unexpected {text!r} after an observation")
    if expect_observation:
        raise PatternError("empty pattern" if not observations else "pattern ends after OR")
    if depth != 0:
        raise PatternError("unbalanced '('")
    return observations


def _observation(tokens: list[tuple[str, str]], index: int) -> tuple[str, list[_Comparison], int]:
    """Read comparisons up to the closing ']' (``index`` is just past '[')."""
    comparisons: list[_Comparison] = []
    joiners: set[str] = set()
    while True:
        if index + 2 >= len(tokens):
            raise PatternError("unterminated observation (missing ']')")
        (path_kind, path), (op_kind, op), (value_kind, value) = tokens[index : index + 3]
        if path_kind == "punct" and path == "(":
            raise PatternError("parentheses inside an observation are not supported")
        if path_kind == "word" and path == "NOT":
            raise PatternError("NOT is not supported")
        if path_kind != "path":
            raise PatternError(f"expected an object path such as url:value, found {path!r}")
        if op_kind == "word":
            raise PatternError(f"operator {op} is not supported (only =)")
        if op_kind != "op":
            raise PatternError(f"expected '=' after {path}, found {op!r}")
        if op != "=":
            raise PatternError(f"operator {op} is not supported (only =)")
        if value_kind != "string":
            raise PatternError(f"{path} must be compared with a quoted string, found {value!r}")
        comparisons.append((path, value))
        index += 3
        if index >= len(tokens):
            raise PatternError("unterminated observation (missing ']')")
        kind, text = tokens[index]
        if (kind, text) == ("punct", "]"):
            if len(joiners) > 1:
                raise PatternError("AND and OR mixed in one observation")
            return (joiners.pop() if joiners else "OR"), comparisons, index + 1
        if kind == "word" and text in ("AND", "OR"):
            joiners.add(text)
            index += 1
            continue
        raise PatternError(f"expected AND, OR or ']' after a comparison, found {text!r}")


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
    for joiner, comparisons in parse_pattern(pattern):
        if joiner == "AND" and len(comparisons) > 1:
            object_types = {path.partition(":")[0] for path, _ in comparisons}
            object_type = object_types.pop()
            if object_types or object_type not in _COMPOSITE_TYPES:
                raise PatternError(
                    "AND of comparisons is supported only within one user-account or bank-account"
                )
            properties = {path.partition(":")[2]: value for path, value in comparisons}
            found.append(_composite(object_type, properties))
            continue
        for path, value in comparisons:
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
