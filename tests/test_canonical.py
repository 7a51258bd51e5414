"""Canonical forms: vectors, hand-checked values, refusals, properties (idempotence, fast = slow path)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import string
from pathlib import Path
from types import ModuleType
from typing import Any

import base58
import bech32
import phonenumbers
import pytest
from Crypto.Hash import keccak
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client import normalize
from client.protocol.canonical import canonical_phone
from client.protocol.errors import InvalidIndicator, UnknownKind
from client.protocol.kinds import KINDS

VECTORS = Path(__file__).parent / "vectors"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_canonical", VECTORS / "gen_canonical.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILE: dict[str, Any] = json.loads((VECTORS / "canonical.json").read_text(encoding="utf-8"))


# --- the vector file ---------------------------------------------------------------------------------


def test_vector_file_is_what_the_generator_writes_now() -> None:
    generator = _load_generator()
    assert (VECTORS / "canonical.json").read_text(encoding="utf-8") == generator.render(generator.build())


def test_vector_file_covers_every_kind() -> None:
    assert {v["kind"] for v in FILE["vectors"]} == set(KINDS)
    assert {v["kind"] for v in FILE["invalid"]} == set(KINDS)


@pytest.mark.parametrize("vector", FILE["vectors"], ids=lambda v: f"{v['kind']}:{v['input'][:40]}")
def test_vector(vector: dict[str, Any]) -> None:
    canonical = normalize(vector["kind"], vector["input"], vector["region"])
    assert canonical == vector["canonical"]
    assert normalize(vector["kind"], canonical, vector["region"]) == canonical


@pytest.mark.parametrize("vector", FILE["invalid"], ids=lambda v: f"{v['kind']}:{v['input'][:40]}")
def test_invalid_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidIndicator) as info:
        normalize(vector["kind"], vector["input"], vector["region"])
    assert vector["reason_contains"] in str(info.value)
    assert info.value.kind == vector["kind"]
    assert "\n" not in str(info.value)


# --- hand-checked values (not taken from the generator, so a regenerated bug still fails here) --------

HAND_CHECKED = [
    ("phone", "+60 12-345 6789", None, "+60123456789"),
    ("phone", "012-345 6789", "MY", "+60123456789"),
    ("phone", "0060123456789", None, "+60123456789"),
    ("phone", "+60.12.345.6789", None, "+60123456789"),
    ("phone", "081 234 5678", "TH", "+66812345678"),
    ("phone", "001 60 12 345 6789", "TH", "+60123456789"),
    ("phone", "+39 06 1234 5678", None, "+390612345678"),
    ("email", "Scam@BÜCHER.example", None, "scam@xn--bcher-kva.example"),
    ("email", "John.Doe+promo@Gmail.com.", None, "john.doe+promo@gmail.com"),
    ("domain", "faß.de", None, "xn--fa-hia.de"),
    ("domain", "bücher。example.", None, "xn--bcher-kva.example"),
    ("url", "HTTP://WWW.Scam.Example:80/a/./b/../c#frag", None, "http://www.scam.example/a/c"),
    ("url", "scam.example", None, "http://scam.example/"),
    ("url", "https://scam.example:443//x//y?a=1//2", None, "https://scam.example/x/y?a=1//2"),
    ("url", "https://scam.example:8443/", None, "https://scam.example:8443/"),
    ("url", "http://3279880203/blah", None, "http://195.127.0.11/blah"),
    ("url", "http://scam.example/%25%32%35", None, "http://scam.example/%25"),
    ("url", "http://scam.example/ab%23cd", None, "http://scam.example/ab%23cd"),
    ("url", "https://bücher.example/ü ü", None, "https://xn--bcher-kva.example/%C3%BC%20%C3%BC"),
    ("ipv4", "203.0.113.7", None, "203.0.113.7"),
    ("ipv6", "2001:DB8:0:0:0:0:0:1", None, "2001:db8::1"),
    ("ipv6", "::ffff:cb00:7107", None, "::ffff:203.0.113.7"),
    ("bank_account", "MY:MBBEMYKL:1234-5678-9012", None, "MY:MBBE:123456789012"),
    ("bank_account", "DE89 3704 0044 0532 0130 00", None, "DE:37040044:0532013000"),
    ("bank_account", "GB29 NWBK 6016 1331 9268 19", None, "GB:NWBK:60161331926819"),
    ("crypto_wallet", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", None, "trx:TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"),
    (
        "crypto_wallet",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        None,
        "eth:0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
    ),
    (
        "crypto_wallet",
        "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
        None,
        "btc:bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
    ),
    ("crypto_wallet", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", None, "btc:1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"),
    ("handle", "https://t.me/ScamBot", None, "telegram:scambot"),
    ("handle", "twitter:@ScamAlert", None, "x:scamalert"),
    ("handle", "https://wa.me/60123456789", None, "whatsapp:+60123456789"),
    ("handle", "zalo:0912 345 678", "VN", "zalo:+84912345678"),
]


@pytest.mark.parametrize(("kind", "value", "region", "expected"), HAND_CHECKED)
def test_hand_checked(kind: str, value: str, region: str | None, expected: str) -> None:
    assert normalize(kind, value, region) == expected


def test_hand_checked_values_are_in_the_vector_file_or_agree_with_it() -> None:
    recorded = {(v["kind"], v["input"], v["region"]): v["canonical"] for v in FILE["vectors"]}
    for kind, value, region, expected in HAND_CHECKED:
        assert recorded.get((kind, value, region), expected) == expected


def test_equivalent_malaysian_spellings_meet() -> None:
    spellings = [
        ("+60 12-345 6789", None),
        ("012-345 6789", "MY"),
        ("0060123456789", None),
        ("+60.12.345.6789", None),
    ]
    assert {normalize("phone", v, r) for v, r in spellings} == {"+60123456789"}


def test_unknown_kind() -> None:
    with pytest.raises(UnknownKind):
        normalize("iban", "DE89370400440532013000")


def test_too_long_input_is_refused() -> None:
    with pytest.raises(InvalidIndicator, match="longer than"):
        normalize("url", "http://scam.example/" + "a" * 9000)


def test_wrongly_cased_tron_address_is_refused_in_every_single_flip() -> None:
    address = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
    for i, char in enumerate(address):
        flipped = char.swapcase()
        if flipped == char or flipped not in base58.alphabet.decode():
            continue
        with pytest.raises(InvalidIndicator):
            normalize("crypto_wallet", "trx:" + address[:i] + flipped + address[i + 1 :])


# --- properties ----------------------------------------------------------------------------------------

# PETANDA_PROPERTY_EXAMPLES raises the example count for a longer hunt; the default keeps the file fast.
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("PETANDA_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ASEAN = ["MY", "SG", "TH", "PH", "ID", "VN", "KH", "LA", "MM", "BN", "TL"]
EXAMPLE_E164 = [
    phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
    if (n := phonenumbers.example_number_for_type(region, kind)) is not None
]


def _reference_e164(digits: str) -> str | None:
    """What phonenumbers alone says about '+digits' (parse, validate, format): the slow path's contract."""
    try:
        number = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _ours(digits: str) -> str | None:
    try:
        return canonical_phone("+" + digits, None)
    except InvalidIndicator:
        return None


@st.composite
def near_valid_digits(draw: st.DrawFn) -> str:
    """Digits of a known-valid number with a few digits replaced, inserted or removed."""
    digits = list(draw(st.sampled_from(EXAMPLE_E164))[1:])
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(digits) - 1))
        action = draw(st.sampled_from(["replace", "insert", "delete"]))
        digit = draw(st.sampled_from(string.digits))
        if action == "replace":
            digits[position] = digit
        elif action == "insert":
            digits.insert(position, digit)
        elif len(digits) > 2:
            del digits[position]
    return "".join(digits)


@PROPERTY_SETTINGS
@given(st.one_of(near_valid_digits(), st.text(string.digits, min_size=1, max_size=17)))
def test_phone_fast_path_agrees_with_phonenumbers(digits: str) -> None:
    assert _ours(digits) == _reference_e164(digits)


def test_every_example_number_is_its_own_canonical_form() -> None:
    for e164 in EXAMPLE_E164:
        if _reference_e164(e164[1:]) == e164:
            assert normalize("phone", e164) == e164


@PROPERTY_SETTINGS
@given(st.sampled_from(ASEAN), st.sampled_from(list(phonenumbers.PhoneNumberFormat.__dict__)), st.data())
def test_phone_formats_round_trip(region: str, format_name: str, data: st.DataObject) -> None:
    number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assume(number is not None and format_name in ("E164", "INTERNATIONAL", "NATIONAL", "RFC3966"))
    written = phonenumbers.format_number(number, getattr(phonenumbers.PhoneNumberFormat, format_name))
    written = written.removeprefix("tel:")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    canonical = normalize("phone", written, region)
    assert canonical == e164 == normalize("phone", canonical)
    assert normalize("handle", "whatsapp:" + written, region) == "whatsapp:" + e164


_LABEL = st.text(alphabet=string.ascii_letters + string.digits + "-_äöüßçéñ한국ไทย", min_size=1, max_size=12)


@PROPERTY_SETTINGS
@given(st.lists(_LABEL, min_size=2, max_size=4), st.booleans())
def test_domain_idempotent(labels: list[str], trailing_dot: bool) -> None:
    value = ".".join(labels) + ("." if trailing_dot else "")
    try:
        canonical = normalize("domain", value)
    except InvalidIndicator:
        assume(False)
        return
    assert canonical and canonical.isascii() and canonical == canonical.lower()
    assert normalize("domain", canonical) == canonical
    assert normalize("email", f"Abuse@{value}") == f"abuse@{canonical}"


@PROPERTY_SETTINGS
@given(
    st.text(alphabet=string.ascii_letters + string.digits + ".+_-ÄäÖ", min_size=1, max_size=20),
    st.sampled_from(["scam.example", "BÜCHER.example", "xn--bcher-kva.example", "Gmail.COM."]),
)
def test_email_idempotent(local: str, host: str) -> None:
    canonical = normalize("email", f"{local}@{host}")
    assert canonical and normalize("email", canonical) == canonical


_URL_CHARS = string.ascii_letters + string.digits + "/?#%&=.:;@~!$'()*+,-_ \t%25%2e%2F%23%3f%00ü😀"


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["", "http://", "HTTPS://", "https://user:pw@"]),
    st.sampled_from(["scam.example", "WWW.Scam.Example.", "bücher.example", "3279880203", "[2001:db8::1]"]),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.text(alphabet=_URL_CHARS, max_size=40),
)
def test_url_idempotent(prefix: str, host: str, port: str, tail: str) -> None:
    try:
        canonical = normalize("url", f"{prefix}{host}{port}/{tail}")
    except InvalidIndicator:
        assume(False)
        return
    assert canonical.isascii() and canonical.startswith(("http://", "https://"))
    assert "#" not in canonical and not any(c <= " " for c in canonical)
    assert normalize("url", canonical) == canonical


@PROPERTY_SETTINGS
@given(st.ip_addresses(v=4))
def test_ipv4_idempotent(address: ipaddress.IPv4Address) -> None:
    assert (
        normalize("ipv4", str(address)) == str(address) == normalize("ipv4", normalize("ipv4", str(address)))
    )


@PROPERTY_SETTINGS
@given(st.ip_addresses(v=6))
def test_ipv6_any_spelling(address: ipaddress.IPv6Address) -> None:
    canonical = normalize("ipv6", address.exploded.upper())
    assert ipaddress.IPv6Address(canonical) == address
    assert normalize("ipv6", canonical) == canonical == canonical.lower()


def _eip55(hex40: str) -> str:
    digest = keccak.new(digest_bits=256, data=hex40.encode("ascii")).hexdigest()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(d, 16) >= 8 else c for c, d in zip(hex40, digest[:40], strict=True)
    )


@PROPERTY_SETTINGS
@given(
    st.binary(min_size=20, max_size=20), st.sampled_from(["trx", "btc", "btc-p2sh", "eth", "bech32", "ltc"])
)
def test_wallet_idempotent_and_case_rules(payload: bytes, chain: str) -> None:
    if chain == "trx":
        address = base58.b58encode_check(b"\x41" + payload).decode()
        expected = f"trx:{address}"
    elif chain in ("btc", "btc-p2sh"):
        address = base58.b58encode_check((b"\x00" if chain == "btc" else b"\x05") + payload).decode()
        expected = f"btc:{address}"
    elif chain == "ltc":
        address = base58.b58encode_check(b"\x30" + payload).decode()
        expected = f"ltc:{address}"
    elif chain == "bech32":
        encoded = bech32.encode("bc", 0, list(payload))
        assert encoded is not None
        address = encoded.upper()
        expected = f"btc:{encoded}"
    else:
        address = _eip55(payload.hex())
        expected = f"eth:0x{payload.hex()}"
    canonical = normalize("crypto_wallet", address)
    assert canonical == expected
    assert normalize("crypto_wallet", canonical) == canonical


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["MY", "SG", "TH", "PH", "ID", "VN"]),
    st.text(string.ascii_uppercase, min_size=4, max_size=4),
    st.lists(st.text(string.digits, min_size=1, max_size=6), min_size=1, max_size=5),
)
def test_bank_account_idempotent(country: str, bank: str, groups: list[str]) -> None:
    account = "".join(groups)
    assume(5 <= len(account) <= 30)
    canonical = normalize("bank_account", f"{country.lower()}:{bank}:{'-'.join(groups)}")
    assert canonical == f"{country}:{bank}:{account}"
    assert normalize("bank_account", canonical) == canonical


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["telegram", "x", "instagram", "tiktok", "line", "wechat", "facebook"]),
    st.text(string.ascii_letters + string.digits + "_", min_size=5, max_size=15),
)
def test_handle_idempotent(platform: str, name: str) -> None:
    try:
        canonical = normalize("handle", f"{platform.upper()}:@{name}")
    except InvalidIndicator:
        assume(False)
        return
    assert canonical == f"{platform}:{name.lower()}"
    assert normalize("handle", canonical) == canonical


_FAST_REGIONS = ["BN", "ID", "KH", "LA", "MM", "MY", "PH", "SG", "TH", "TL", "VN",
                 "GB", "DE", "IT", "US", "CA", "AR", "BR", "JP", "IN", "AU", "FR", "MX", "CN"]  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(
    region=st.sampled_from(_FAST_REGIONS),
    prefix=st.sampled_from(["", "0", "1", "8", "9"]),
    keep=st.integers(min_value=0, max_value=12),
    tail=st.text(alphabet="0123456789", min_size=0, max_size=6),
)
def test_national_fast_path_agrees_with_phonenumbers_parse(
    region: str, prefix: str, keep: int, tail: str
) -> None:
    """Numbers near a real one of the region: whenever the fast path answers, parse gives the same."""
    import phonenumbers

    from client.protocol import canonical

    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = phonenumbers.national_significant_number(example) if example else "2012345678"
    text = prefix + national[:keep] + tail
    if not text or text.startswith("00"):
        return
    fast = canonical._national_fast(text, region)
    if fast is not None:
        assert fast == canonical._parse_phone("phone", text, region), (region, text)


def test_national_fast_path_is_taken_for_the_common_asean_formats() -> None:
    from client.protocol import canonical

    for text, region, expected in [
        ("0123456789", "MY", "+60123456789"),
        ("0812345678", "TH", "+66812345678"),
        ("09051234567", "PH", "+639051234567"),
        ("81234567", "SG", "+6581234567"),
        ("0912345678", "VN", "+84912345678"),
    ]:
        assert canonical._national_fast(text, region) == expected
        assert normalize("phone", text, region) == expected
