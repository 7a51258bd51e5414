"""Canonical forms of indicators: the one spelling of each value that every node hashes.

Two member states' digests match only if their canonical forms are equal byte for byte, so every
equivalent spelling of an indicator ("+60 12-345 6789", "012-345 6789" in Malaysia, "0060123456789")
must map to one string, and anything that does not parse is refused with a reason, never hashed as is.
``docs/PROTOCOL.md`` specifies each kind; ``tests/vectors/canonical.json`` pins them.

>>> normalize("phone", "012-345 6789", region="MY")
'+60123456789'
>>> normalize("email", "Scam@BÜCHER.example")
'scam@xn--bcher-kva.example'

One module of this size: nine kinds' canonical forms are one table of the specification, applied identically
by every node.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import phonenumbers
import pycountry
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber
from schwifty import IBAN
from schwifty.domain import Component
from schwifty.exceptions import SchwiftyException
from schwifty.registry import get_iban_spec

from client.protocol._urls import canonical_domain, canonical_host, canonical_url, format_ipv6
from client.protocol._wallets import CHAIN_ALIASES, CHAINS, canonical_wallet
from client.protocol.errors import InvalidIndicator, UnknownKind
from client.protocol.kinds import KINDS

__all__ = ["CHAINS", "CHAIN_ALIASES", "MAX_INPUT_LENGTH", "PLATFORMS", "PLATFORM_ALIASES", "normalize"]

#: Longest input accepted, in characters (bounds the work spent on one value).
MAX_INPUT_LENGTH: Final = 8192

# --- phone ---------------------------------------------------------------------------------------------

# Separators people write inside phone numbers; they carry no meaning and are deleted.
_PHONE_SEPARATORS: Final = str.maketrans("", "", " \t\u00a0-.()/")
_CC_TO_REGIONS: Final = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
_E164_MAX_DIGITS: Final = 15
# Country calling code -> compiled national_prefix_for_parsing of its main region (None if it has none).
_NATIONAL_PREFIX: dict[int, re.Pattern[str] | None] = {}
_PARSE_ERRORS: Final = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country calling code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


def _region(kind: str, region: str | None) -> str | None:
    if region is None:
        return None
    upper = region.upper()
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidIndicator(kind, f"region {region!r} is not an ISO 3166 alpha-2 country code")
    return upper


def _ascii_phone(text: str) -> str:
    """Map Unicode decimal digits to ASCII and drop Unicode spaces and dashes; keep anything else."""
    out = []
    for char in text:
        if char.isascii():
            out.append(char)
        elif (digit := unicodedata.decimal(char, None)) is not None:
            out.append(str(digit))
        elif char == "\uff0b":  # FULLWIDTH PLUS SIGN
            out.append("+")
        elif not (char.isspace() or unicodedata.category(char) == "Pd"):
            out.append(char)
    return "".join(out)


def _national_prefix(country_code: int) -> re.Pattern[str] | None:
    try:
        return _NATIONAL_PREFIX[country_code]
    except KeyError:
        region = phonenumbers.region_code_for_country_code(country_code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        prefix = metadata.national_prefix_for_parsing if metadata is not None else None
        pattern = re.compile(prefix) if prefix else None
        _NATIONAL_PREFIX[country_code] = pattern
        return pattern


def _e164_fast(digits: str, kind: str) -> str | None:
    """Validate international digits without ``phonenumbers.parse`` when parse would not alter them.

    Returns the E.164 form, or None when the slow path must decide (unknown calling code, a national
    number starting with 0 or with the region's national prefix, which ``parse`` would strip).
    ``tests/test_canonical.py`` checks that this agrees with the slow path.
    """
    if not 3 <= len(digits) <= _E164_MAX_DIGITS or digits[0] == "0":
        return None
    for length in (1, 2, 3):
        country_code = int(digits[:length])
        if country_code in _CC_TO_REGIONS:
            break
    else:
        return None
    national = digits[length:]
    if not national or national[0] == "0":
        return None
    prefix = _national_prefix(country_code)
    if prefix is not None and prefix.match(national):
        return None
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    if not phonenumbers.is_valid_number(number):
        raise InvalidIndicator(kind, f"+{digits} is not a valid number in its country")
    return "+" + digits


@dataclass(frozen=True, slots=True)
class _NationalRules:
    """What reading a national number of one region needs, when the region's rules are simple."""

    country_code: int
    international_prefix: re.Pattern[str]
    national_prefix: re.Pattern[str] | None


_NATIONAL_RULES: dict[str, _NationalRules | None] = {}


def _national_rules(region: str) -> _NationalRules | None:
    """The region's rules for the fast national path, or None when ``parse`` must decide: a national
    prefix with a carrier-code group or a transform rule, or a leading zero that belongs to the number."""
    try:
        return _NATIONAL_RULES[region]
    except KeyError:
        pass
    metadata = PhoneMetadata.metadata_for_region(region)
    rules = None
    if metadata is not None and metadata.country_code and metadata.international_prefix:
        prefix = metadata.national_prefix_for_parsing
        pattern = re.compile(prefix) if prefix else None
        simple = (
            metadata.national_prefix_transform_rule is None
            and (pattern is None or pattern.groups == 0)
            and not metadata.leading_zero_possible
        )
        if simple:
            rules = _NationalRules(metadata.country_code, re.compile(metadata.international_prefix), pattern)
    _NATIONAL_RULES[region] = rules
    return rules


def _national_fast(text: str, region: str) -> str | None:
    """E.164 of a national number without ``phonenumbers.parse``, or None for the slow path to decide.

    Only a number this path finds *valid* is returned: the national prefix stripped as ``parse`` strips
    it (a valid remainder is always viable, so ``parse`` strips it too), the region's calling code put
    in front. Anything else (an international prefix, an invalid result) goes to ``parse``.
    ``tests/test_canonical.py`` checks that both paths agree on random numbers of many regions.
    """
    rules = _national_rules(region)
    if rules is None or rules.international_prefix.match(text):
        return None
    national = text
    if rules.national_prefix is not None:
        match = rules.national_prefix.match(text)
        if match is not None:
            national = text[match.end() :]
    if not national or national[0] == "0" or len(national) > _E164_MAX_DIGITS:
        return None
    number = PhoneNumber(country_code=rules.country_code, national_number=int(national))
    if not phonenumbers.is_valid_number_for_region(number, region):
        return None
    return f"+{rules.country_code}{national}"


def canonical_phone(value: str, region: str | None, kind: str = "phone") -> str:
    """Return the E.164 form of a phone number; national numbers need ``region``.

    Accepted: ``+`` and international digits; with ``region``, a national number or one dialled with the
    region's international prefix; ``00`` and international digits (if the region's reading is not valid).
    """
    text = value if value.isascii() else _ascii_phone(value)
    text = text.translate(_PHONE_SEPARATORS)
    if text.startswith("+"):
        digits = text[1:]
    elif text.startswith("00") and region is None:
        digits = text[2:]
    else:
        digits = ""
    check = digits or text
    if not (check.isdigit() and check.isascii()):
        raise InvalidIndicator(kind, "only digits, a leading '+' and separators ' -.()/' are allowed")
    if digits:
        fast = _e164_fast(digits, kind)
        if fast is not None:
            return fast
        return _parse_phone(kind, "+" + digits, None)
    parse_region = _region(kind, region)
    if parse_region is None:
        raise InvalidIndicator(kind, "a national number needs a region (or write it with +country code)")
    if not text.startswith("00"):
        return _national_fast(text, parse_region) or _parse_phone(kind, text, parse_region)
    try:
        # The region's own international prefix first (Thailand's "001 60 ..."), then "00" as "+".
        return _parse_phone(kind, text, parse_region)
    except InvalidIndicator as region_error:
        try:
            return canonical_phone("+" + text[2:], None, kind)
        except InvalidIndicator:
            raise region_error from None


def _parse_phone(kind: str, text: str, region: str | None) -> str:
    """The slow path: ``phonenumbers.parse``, then the validity check."""
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidIndicator(kind, _PARSE_ERRORS.get(exc.error_type, "not a phone number")) from None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(number):
        raise InvalidIndicator(kind, f"{e164} is not a valid number in its country")
    return e164


# --- e-mail --------------------------------------------------------------------------------------------

_LOCAL_FORBIDDEN = re.compile(r'[\x00-\x20\x7f"(),:;<>\[\]\\@]')
_MAX_LOCAL_OCTETS: Final = 64


def canonical_email(value: str) -> str:
    """Return ``local@host``: local part NFC and lower-cased, host as IDNA A-labels."""
    if value[:7].lower() == "mailto:":
        value = value[7:]
    local, at, host = value.rpartition("@")
    if not at:
        raise InvalidIndicator("email", "no '@'")
    if not local:
        raise InvalidIndicator("email", "empty local part")
    if not host:
        raise InvalidIndicator("email", "empty host")
    local = unicodedata.normalize("NFC", local).lower()
    if _LOCAL_FORBIDDEN.search(local):
        raise InvalidIndicator(
            "email", "local part has a space, control or special character (quoted forms are refused)"
        )
    if len(local.encode("utf-8")) > _MAX_LOCAL_OCTETS:
        raise InvalidIndicator("email", f"local part longer than {_MAX_LOCAL_OCTETS} octets")
    if host.startswith("["):
        raise InvalidIndicator("email", "address literals ([...]) are not supported")
    if any(c in host for c in "/:?#% \t"):
        raise InvalidIndicator("email", "host is not a domain name")
    return f"{local}@{canonical_host('email', host)}"


# --- IP addresses --------------------------------------------------------------------------------------


def canonical_ipv4(value: str) -> str:
    """Return the dotted-decimal form of one IPv4 address (no leading zeros, no ranges)."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        if ":" in value:
            raise InvalidIndicator("ipv4", "this is an IPv6 address: use kind ipv6") from None
        if "/" in value:
            raise InvalidIndicator("ipv4", "ranges are not indicators; give one address") from None
        raise InvalidIndicator("ipv4", str(exc)) from None


def canonical_ipv6(value: str) -> str:
    """Return the RFC 5952 form of one IPv6 address (brackets accepted, zone identifiers refused)."""
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        address = ipaddress.IPv6Address(value)
    except ValueError as exc:
        if "/" in value:
            raise InvalidIndicator("ipv6", "ranges are not indicators; give one address") from None
        raise InvalidIndicator("ipv6", str(exc)) from None
    if address.scope_id is not None:
        raise InvalidIndicator("ipv6", "zone identifiers (%...) are not allowed")
    return format_ipv6(address)


# --- bank accounts -------------------------------------------------------------------------------------

_BANK_SEPARATORS: Final = str.maketrans("", "", " \t\u00a0-./")
_IBAN_SHAPE = re.compile(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{8,30}")
_ACCOUNT_DIGITS = re.compile(r"[0-9]{5,30}")
_BIC_INSTITUTION = re.compile(r"[A-Z]{4}")
_BIC = re.compile(r"[A-Z]{4}([A-Z]{2})[A-Z0-9]{2}(?:[A-Z0-9]{3})?")


def _iban_form(iban: IBAN) -> str:
    """Split an IBAN into ``CC:BANK:REST`` where REST is the BBAN with the bank code removed."""
    span = iban.spec.positions[Component.BANK_CODE]
    if span.end <= span.start:
        raise InvalidIndicator("bank_account", f"IBANs of {iban.country_code} carry no bank code")
    bban = iban.bban
    return f"{iban.country_code}:{bban[span.start : span.end]}:{bban[: span.start]}{bban[span.end :]}"


def _parse_iban(compact: str) -> IBAN:
    try:
        return IBAN(compact, validate_bban=True)
    except SchwiftyException as exc:
        raise InvalidIndicator("bank_account", f"invalid IBAN: {exc}") from None


def canonical_bank_account(value: str, region: str | None) -> str:
    """Return ``CC:BANK:ACCOUNT`` from that syntax, from ``BANK:ACCOUNT`` with a region, or from an IBAN."""
    parts = value.split(":")
    if len(parts) == 1:
        compact = value.translate(_BANK_SEPARATORS).upper()
        if compact.startswith("IBAN"):
            compact = compact[4:]
        if not _IBAN_SHAPE.fullmatch(compact):
            raise InvalidIndicator("bank_account", "expected COUNTRY:BANK:ACCOUNT or an IBAN")
        return _iban_form(_parse_iban(compact))
    if len(parts) == 2:
        if region is None:
            raise InvalidIndicator("bank_account", "BANK:ACCOUNT needs a region; write COUNTRY:BANK:ACCOUNT")
        parts.insert(0, region)
    if len(parts) != 3:
        raise InvalidIndicator("bank_account", "expected COUNTRY:BANK:ACCOUNT or an IBAN")
    country, bank, account = (p.translate(_BANK_SEPARATORS).upper() for p in parts)
    if len(country) != 2 or not country.isalpha() or pycountry.countries.get(alpha_2=country) is None:
        raise InvalidIndicator("bank_account", f"unknown country code {parts[0].strip()!r}")
    if not bank:
        raise InvalidIndicator("bank_account", "empty bank identifier")
    if not account:
        raise InvalidIndicator("bank_account", "empty account number")
    try:
        spec = get_iban_spec(country)
    except SchwiftyException:
        spec = None
    if spec is not None:
        # An IBAN country: rebuild the BBAN and validate it as an IBAN, so both spellings meet.
        span = spec.positions[Component.BANK_CODE]
        if len(bank) != span.end - span.start:
            raise InvalidIndicator(
                "bank_account", f"{country} bank codes have {span.end - span.start} characters"
            )
        bban = account[: span.start] + bank + account[span.start :]
        return _iban_form(_parse_iban(_iban_with_check_digits(country, bban)))
    if _BIC.fullmatch(bank):
        if bank[4:6] != country:
            raise InvalidIndicator(
                "bank_account", f"BIC {bank} belongs to country {bank[4:6]}, not {country}"
            )
        bank = bank[:4]
    elif not _BIC_INSTITUTION.fullmatch(bank):
        raise InvalidIndicator(
            "bank_account", "bank must be a BIC (8 or 11) or its 4-letter institution code"
        )
    if not _ACCOUNT_DIGITS.fullmatch(account):
        raise InvalidIndicator("bank_account", "account must be 5 to 30 digits (separators ' -./' allowed)")
    return f"{country}:{bank}:{account}"


def _iban_with_check_digits(country: str, bban: str) -> str:
    """Compute ISO 13616 check digits (mod 97-10) for a BBAN and return the compact IBAN."""
    if not bban.isalnum() or not bban.isascii():
        raise InvalidIndicator("bank_account", "account has characters other than letters and digits")
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


# --- messaging and social-media handles ----------------------------------------------------------------

#: Canonical platform names, each with the pattern of a (lower-cased) user name on it.
PLATFORMS: Final[dict[str, re.Pattern[str]]] = {
    "facebook": re.compile(r"[a-z0-9.]{1,50}"),
    "instagram": re.compile(r"[a-z0-9._]{1,30}"),
    "line": re.compile(r"[a-z0-9._-]{1,20}"),
    "signal": re.compile(r"[a-z0-9_.]{3,40}"),
    "telegram": re.compile(r"[a-z][a-z0-9_]{3,31}"),
    "tiktok": re.compile(r"[a-z0-9._]{1,24}"),
    "viber": re.compile(r"[a-z0-9._-]{1,64}"),
    "wechat": re.compile(r"[a-z0-9_-]{1,32}"),
    "whatsapp": re.compile(r"[a-z0-9._-]{1,64}"),
    "x": re.compile(r"[a-z0-9_]{1,15}"),
    "zalo": re.compile(r"[a-z0-9._-]{1,64}"),
}

#: Accepted spellings of each platform (lower case).
PLATFORM_ALIASES: Final[dict[str, str]] = {
    **{name: name for name in PLATFORMS},
    "fb": "facebook",
    "ig": "instagram",
    "tg": "telegram",
    "twitter": "x",
    "wa": "whatsapp",
    "weixin": "wechat",
}

# Platforms whose accounts are phone numbers: a phone-like name is normalised as E.164.
_PHONE_PLATFORMS: Final = frozenset({"signal", "viber", "whatsapp", "zalo"})
_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 ().\-/]{4,}")

# Host of a profile URL -> platform.
_PROFILE_HOSTS: Final = {
    "t.me": "telegram",
    "telegram.me": "telegram",
    "telegram.dog": "telegram",
    "wa.me": "whatsapp",
    "api.whatsapp.com": "whatsapp",
    "line.me": "line",
    "facebook.com": "facebook",
    "fb.com": "facebook",
    "instagram.com": "instagram",
    "x.com": "x",
    "twitter.com": "x",
    "tiktok.com": "tiktok",
    "signal.me": "signal",
    "zalo.me": "zalo",
}
_HOST_PREFIXES: Final = ("www.", "m.", "mobile.", "web.")


def _handle_from_url(value: str) -> tuple[str, str] | None:
    """Read ``(platform, name)`` from a profile URL, or None if ``value`` is not a known profile URL."""
    url = value if "://" in value else "https://" + value
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    for prefix in _HOST_PREFIXES:
        if host.startswith(prefix):
            host = host[len(prefix) :]
            break
    platform = _PROFILE_HOSTS.get(host)
    if platform is None:
        return None
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    query = urllib.parse.parse_qs(parts.query)
    name: str | None = None
    if platform == "telegram":
        if segments and segments[0] == "s":
            segments = segments[1:]
        if segments and (segments[0].startswith("+") or segments[0] == "joinchat"):
            raise InvalidIndicator("handle", "a Telegram invite link is not an account")
        name = segments[0] if segments else None
    elif platform == "whatsapp":
        phones = query.get("phone", []) if host == "api.whatsapp.com" else segments[:1]
        name = "+" + phones[0].lstrip("+") if phones else None
    elif platform == "line":
        name = segments[-1].lstrip("~") if segments else None
    elif platform == "facebook" and segments[:1] == ["profile.php"]:
        name = query.get("id", [""])[0]
    elif platform == "signal":
        fragment = urllib.parse.unquote(parts.fragment)
        if not fragment.startswith("p/"):
            raise InvalidIndicator("handle", "only signal.me/#p/<phone> links can be read")
        name = fragment[2:]
    elif platform == "tiktok":
        name = segments[0] if segments and segments[0].startswith("@") else None
    else:
        name = segments[0] if segments else None
    if not name:
        raise InvalidIndicator("handle", f"no account name in this {platform} link")
    return platform, name


def canonical_handle(value: str, region: str | None) -> str:
    """Return ``platform:name`` for ``platform:name`` or a profile URL; names lower-cased, phones E.164."""
    from_url = _handle_from_url(value) if "/" in value else None
    if from_url is not None:
        platform, name = from_url
    else:
        platform_text, colon, name = value.partition(":")
        if not colon:
            raise InvalidIndicator(
                "handle", "expected platform:name or a profile URL (a bare @name needs a platform)"
            )
        found = PLATFORM_ALIASES.get(platform_text.strip().lower())
        if found is None:
            raise InvalidIndicator(
                "handle",
                f"unknown platform {platform_text.strip()!r}; known: {', '.join(sorted(PLATFORM_ALIASES))}",
            )
        platform = found
    name = name.strip()
    if name.startswith("@"):
        name = name[1:]
    if platform in _PHONE_PLATFORMS and _PHONE_LIKE.fullmatch(name):
        return f"{platform}:{_handle_phone(name, region)}"
    name = name.lower()
    if not PLATFORMS[platform].fullmatch(name):
        raise InvalidIndicator("handle", f"{name!r} is not a valid {platform} account name")
    return f"{platform}:{name}"


def _handle_phone(name: str, region: str | None) -> str:
    """A phone-like account name: international with + or 00; otherwise national first if a region is given,
    then international digits without the '+' (as in ``wa.me`` links)."""
    if name.startswith(("+", "00")) or (region is None and name.startswith("0")):
        return canonical_phone(name, region, "handle")
    if region is None:
        return canonical_phone("+" + name, None, "handle")
    try:
        return canonical_phone(name, region, "handle")
    except InvalidIndicator as national_error:
        if name.startswith("0"):
            raise
        try:
            return canonical_phone("+" + name, None, "handle")
        except InvalidIndicator:
            raise national_error from None


# --- dispatch ------------------------------------------------------------------------------------------


def _phone(value: str, region: str | None) -> str:
    return canonical_phone(value, region)


_NORMALIZERS: Final[dict[str, Callable[[str, str | None], str]]] = {
    "phone": _phone,
    "email": lambda value, _region: canonical_email(value),
    "url": lambda value, _region: canonical_url(value),
    "domain": lambda value, _region: canonical_domain(value),
    "ipv4": lambda value, _region: canonical_ipv4(value),
    "ipv6": lambda value, _region: canonical_ipv6(value),
    "bank_account": canonical_bank_account,
    "crypto_wallet": lambda value, _region: canonical_wallet(value),
    "handle": canonical_handle,
}


def normalize(kind: str, value: str, region: str | None = None) -> str:
    """Return the one canonical form of an indicator.

    Args:
        kind: One of :data:`client.protocol.kinds.KINDS`.
        value: The indicator as written; surrounding white space is ignored.
        region: ISO 3166 alpha-2 country used to read national phone numbers (kinds ``phone`` and
            ``handle``) and ``BANK:ACCOUNT`` bank accounts; a node passes its own country.

    Returns:
        The canonical form, never empty; ``normalize(kind, normalize(kind, v)) == normalize(kind, v)``.

    Raises:
        UnknownKind: ``kind`` is not an indicator kind.
        InvalidIndicator: ``value`` does not parse as ``kind``; its ``reason`` says why.
    """
    normalizer = _NORMALIZERS.get(kind)
    if normalizer is None:
        raise UnknownKind(kind, KINDS)
    if len(value) > MAX_INPUT_LENGTH:
        raise InvalidIndicator(kind, f"longer than {MAX_INPUT_LENGTH} characters")
    text = value.strip()
    if not text:
        raise InvalidIndicator(kind, "empty value")
    return normalizer(text, region)
