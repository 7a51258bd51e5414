"""Ingest parsers: CSV, JSON lines, STIX 2.1 bundles and MISP events (sample files in tests/data/)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.errors import ImportError_, InputError
from node.ingest import ParsedIndicator, Rejection, detect_format, parse_file
from node.ingest.parsers import parse_category, parse_date, parse_tlp
from node.ingest.stix import MAX_ALTERNATIVES, PatternError, parse_pattern, pattern_indicators

DATA = Path(__file__).parent / "data"
TODAY = date(2024, 6, 1)


def _parse(path: Path, **kwargs: object) -> tuple[dict[str, list[ParsedIndicator]], dict[str, str]]:
    """Parse a file; return indicators by location and rejection reasons by location."""
    good: dict[str, list[ParsedIndicator]] = {}
    bad: dict[str, str] = {}
    options: dict[str, object] = {"default_region": "MY", "today": TODAY, **kwargs}
    for result in parse_file(path, **options):  # type: ignore[arg-type]
        if isinstance(result, ParsedIndicator):
            good.setdefault(result.location, []).append(result)
        else:
            assert isinstance(result, Rejection)
            assert result.location not in bad, f"two rejections at {result.location}"
            bad[result.location] = result.reason
    return good, bad


def _one(good: dict[str, list[ParsedIndicator]], location: str) -> ParsedIndicator:
    (found,) = good[location]
    return found


# --- CSV ----------------------------------------------------------------------------------------------


def test_csv_good_rows_are_normalised_with_their_metadata() -> None:
    good, _ = _parse(DATA / "indicators.csv")
    first = _one(good, "indicators.csv:2")
    assert first == ParsedIndicator(
        kind="phone",
        canonical="+60123456789",
        category="investment",
        first_seen=date(2024, 3, 1),
        last_seen=date(2024, 5, 20),
        confidence=80,
        tlp="AMBER",
        reports=12,
        expires_at=None,
        source="csv:indicators.csv",
        location="indicators.csv:2",
    )
    thai = _one(good, "indicators.csv:4")  # national number read with the row's region TH
    assert (thai.canonical, thai.category, thai.tlp) == ("+66812345678", "job_task", "GREEN")
    ph = _one(
        good, "indicators.csv:5"
    )  # date-time with +08:00 taken in UTC; amber+strict spelt in lower case
    assert (ph.canonical, ph.first_seen, ph.tlp, ph.expires_at) == (
        "+639171234567",
        date(2024, 1, 15),
        "AMBER+STRICT",
        date(2025, 1, 15),
    )
    sg = _one(good, "indicators.csv:7")
    assert (sg.canonical, sg.category, sg.tlp, sg.last_seen) == (
        "+6591234567",
        "impersonation_bank",
        "RED",
        date(2024, 5, 10),
    )
    assert _one(good, "indicators.csv:9").canonical == "http://mybank-secure-login.example/my/login?ref=sms"
    assert _one(good, "indicators.csv:10").canonical == "shopee-refund.example"
    assert _one(good, "indicators.csv:12").canonical == "2001:db8::bad:1"
    mule = _one(good, "indicators.csv:13")  # BANK:ACCOUNT with the row's region
    assert (mule.canonical, mule.category, mule.reports) == ("MY:MBBE:514012345678", "money_mule", 9)
    assert _one(good, "indicators.csv:14").canonical == "TH:KASI:1234567890"
    tron = _one(good, "indicators.csv:15")  # quoted field with a line break: located at its first line
    assert (tron.canonical, tron.confidence, tron.reports) == (
        "trx:TRTmvZ2YsWRTaYEMxdLToRYzdsAC2DxfwP",
        88,
        21,
    )
    assert _one(good, "indicators.csv:17").canonical == "eth:0x785aefe1e9cd4878eded5532fedc31b8f69ae912"
    assert _one(good, "indicators.csv:19").canonical == "telegram:thaijobs_agent"
    assert _one(good, "indicators.csv:20").canonical == "whatsapp:+60123456789"


def test_csv_defaults_apply_to_empty_fields() -> None:
    good, _ = _parse(DATA / "indicators.csv", default_tlp="tlp:green")
    ipv6 = _one(good, "indicators.csv:12")
    assert (ipv6.first_seen, ipv6.last_seen, ipv6.confidence, ipv6.reports, ipv6.tlp) == (
        TODAY,
        TODAY,
        50,
        1,
        "GREEN",
    )
    only_first = _one(good, "indicators.csv:3")  # last_seen defaults to first_seen, not to today
    assert (only_first.first_seen, only_first.last_seen) == (date(2024, 4, 2), date(2024, 4, 2))


def test_csv_bad_rows_are_rejected_with_line_and_reason() -> None:
    good, bad = _parse(DATA / "indicators.csv")
    expected = {
        "indicators.csv:23": "value: invalid phone",
        "indicators.csv:24": "kind: unknown kind 'fax'",
        "indicators.csv:25": "value: invalid email",
        "indicators.csv:26": "last_seen: 2024-05-01 is before first_seen 2024-05-10",
        "indicators.csv:27": "confidence: 150 is out of range",
        "indicators.csv:28": "tlp: unknown TLP level 'purple'",
        "indicators.csv:29": "checksum",
        "indicators.csv:30": "region: 'XX' is not an ISO 3166",
        "indicators.csv:31": "first_seen: '2024-13-01' is not an ISO 8601 date",
        "indicators.csv:32": "the row has 2 fields but the header has 11",
        "indicators.csv:33": "value: missing",
        "indicators.csv:34": "expires_at: 2024-01-01 is not after today",
        "indicators.csv:35": "category: unknown category 'crypto'",
        "indicators.csv:36": "reports: 0 is out of range",
    }
    assert set(bad) == set(expected)
    for location, fragment in expected.items():
        assert fragment in bad[location], (location, bad[location])
    assert len(good) == 19  # lines 2-21, less the continuation line 16 of the quoted field


def test_csv_header_must_name_required_columns(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_text("kind,indicator\nphone,+60123456789\n", encoding="utf-8")
    with pytest.raises(ImportError_, match=r"feed\.csv:1: the header has no 'value' column"):
        list(parse_file(path, default_region="MY", today=TODAY))
    path.write_text("kind,value,Value\n", encoding="utf-8")
    with pytest.raises(ImportError_, match="appears twice"):
        list(parse_file(path, default_region="MY", today=TODAY))


def test_csv_semicolon_delimiter_and_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"id;value;kind;note\r\n1;+60 12-345 6789;phone;a;b\r\n2;Scam@Example.com;email;x\r\n")
    good, bad = _parse(path)
    assert bad == {"excel.csv:2": "the row has 5 fields but the header has 4"}
    assert _one(good, "excel.csv:3").canonical == "scam@example.com"


def test_csv_bad_encoding_and_bad_quoting_are_row_rejections(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(b'kind,value\nphone,+6012\xff3456789\nphone,"+60 12"3\ndomain,ok.example\n')
    good, bad = _parse(path)
    assert bad["mixed.csv:2"] == "the row is not valid UTF-8"
    assert bad["mixed.csv:3"].startswith("not valid CSV")
    assert _one(good, "mixed.csv:4").canonical == "ok.example"


def test_csv_utf16_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "utf16.csv"
    path.write_bytes("kind,value\nphone,+60123456789\n".encode("utf-16"))
    with pytest.raises(ImportError_, match=r"utf16\.csv: the file is UTF-16"):
        list(parse_file(path, default_region="MY", today=TODAY))


@pytest.mark.slow
def test_csv_streams_a_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    rows = 200_000
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("kind,value,category,first_seen,confidence\n")
        for i in range(rows):
            if i % 4 == 0:
                handle.write(f"phone,+6012{i % 10_000_000:07d},investment,2024-05-01,70\n")
            elif i % 4 == 1:
                handle.write(f"domain,scam-{i}.example,phishing,2024-05-01,60\n")
            elif i % 4 == 2:
                handle.write(f"ipv4,10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},phishing,,\n")
            else:
                handle.write(f"email,user{i}@mule-{i % 97}.example,money_mule,2024-05-01,90\n")
    results = parse_file(path, default_region="MY", today=TODAY)
    first = next(results)  # available before the rest of the file is read
    assert isinstance(first, ParsedIndicator) and first.location == "big.csv:2"
    count = 1 + sum(1 for _ in results)
    assert count == rows


# --- JSON lines ---------------------------------------------------------------------------------------


def test_jsonl_good_and_bad_lines() -> None:
    good, bad = _parse(DATA / "indicators.jsonl")
    indonesia = _one(good, "indicators.jsonl:1")
    assert (indonesia.canonical, indonesia.category, indonesia.first_seen, indonesia.last_seen) == (
        "+6281234567890",
        "impersonation_courier",
        date(2024, 5, 5),
        date(2024, 5, 28),
    )
    assert (indonesia.confidence, indonesia.reports, indonesia.source) == (72, 4, "jsonl:indicators.jsonl")
    assert _one(good, "indicators.jsonl:2").confidence == 60  # confidence as a JSON string
    assert _one(good, "indicators.jsonl:3").category == "scam_compound"
    assert _one(good, "indicators.jsonl:7").canonical == "xn----zwft7cf1detq5bxa5cb1fyg7e.example"
    assert _one(good, "indicators.jsonl:8").first_seen == date(
        2024, 5, 30
    )  # first_seen defaults to last_seen
    assert _one(good, "indicators.jsonl:9").canonical == "SG:DBSS:0721234567"
    assert _one(good, "indicators.jsonl:10").canonical == "GB:WEST:12345698765432"
    assert _one(good, "indicators.jsonl:11").canonical == "trx:TPo3jLZ3Ndq798c8wJB1TEm8w6YbwdzmWq"
    assert _one(good, "indicators.jsonl:14").canonical == "telegram:invest_guru_my"
    assert "indicators.jsonl:4" not in good and "indicators.jsonl:4" not in bad  # blank line
    assert bad["indicators.jsonl:16"].startswith("not valid JSON: Expecting property name")
    assert bad["indicators.jsonl:17"] == "expected a JSON object, got a JSON array"
    assert bad["indicators.jsonl:18"] == "confidence: 'high' is not an integer"
    assert bad["indicators.jsonl:19"].startswith("reports: 0 is out of range")
    assert bad["indicators.jsonl:20"] == "confidence: expected an integer or a string, got a JSON number"
    assert bad["indicators.jsonl:21"].startswith("value: invalid ipv4")
    assert bad["indicators.jsonl:22"].startswith("value: invalid handle")
    assert bad["indicators.jsonl:23"] == "kind: missing"
    assert "EIP-55" in bad["indicators.jsonl:24"]
    assert bad["indicators.jsonl:25"] == "first_seen: 2024-07-15 is in the future (today is 2024-06-01)"
    assert bad["indicators.jsonl:26"] == "tlp: expected a string, got a JSON boolean"
    assert len(good) == 14 and len(bad) == 11


def test_jsonl_overlong_line_is_rejected_and_skipped(tmp_path: Path) -> None:
    from node.ingest.csvjson import MAX_LINE_BYTES

    path = tmp_path / "long.ndjson"
    long_value = "a" * (MAX_LINE_BYTES + 10)
    path.write_text(
        json.dumps({"kind": "domain", "value": long_value})
        + "\n"
        + '{"kind": "domain", "value": "ok.example"}\n',
        encoding="utf-8",
    )
    good, bad = _parse(path)
    assert bad == {"long.ndjson:1": f"line longer than {MAX_LINE_BYTES} bytes"}
    assert _one(good, "long.ndjson:2").canonical == "ok.example"


# --- STIX 2.1 -----------------------------------------------------------------------------------------

_STIX = "stix_bundle.json#indicator--0e1c8a52-3d4b-4f0a-9d8e-0000000000"


def test_stix_indicators_with_their_metadata() -> None:
    good, _ = _parse(DATA / "stix_bundle.json")
    phone = _one(good, _STIX + "01")  # the latest version of the object wins
    assert (phone.canonical, phone.confidence, phone.tlp, phone.category, phone.first_seen) == (
        "+60123456789",
        85,
        "AMBER+STRICT",
        "investment",
        date(2024, 3, 1),
    )
    url, domain = good[_STIX + "02"]  # [..] OR [..]: two indicators
    assert (url.kind, url.canonical, url.tlp, url.expires_at) == (
        "url",
        "http://mybank-secure-login.example/my/login?ref=sms",
        "GREEN",
        date(2025, 1, 1),
    )
    assert (domain.kind, domain.canonical, domain.category) == ("domain", "shopee-refund.example", "phishing")
    assert [i.canonical for i in good[_STIX + "03"]] == [
        "cs@lazada-refunds.example",
        "refund-team@lazada-refunds.example",
    ]
    assert _one(good, _STIX + "04").canonical == "telegram:thaijobs_agent"
    wallet = _one(good, _STIX + "05")  # AMBER and RED markings: the most restrictive applies
    assert (wallet.canonical, wallet.category, wallet.tlp) == (
        "trx:TRTmvZ2YsWRTaYEMxdLToRYzdsAC2DxfwP",
        "investment",
        "RED",
    )
    assert _one(good, _STIX + "06").canonical == "MY:MBBE:514012345678"
    assert _one(good, _STIX + "07").canonical == "http://promo.example/o'reilly-lucky-draw"
    ipv4 = _one(good, _STIX + "08")  # TLP from a marking definition carried in the bundle
    assert (ipv4.canonical, ipv4.tlp, ipv4.category) == ("203.0.113.45", "GREEN", "other")


def test_stix_observables_and_duplicates() -> None:
    good, bad = _parse(DATA / "stix_bundle.json")
    assert _one(good, "stix_bundle.json#domain-name--6a5f0d47-aa0c-5b7c-9d43-3c1ef8d1b001").canonical == (
        "lazada-refunds.example"
    )
    assert _one(good, "stix_bundle.json#ipv4-addr--2c0d7a31-4e5f-5a6b-8c7d-9e0f1a2b3c01").tlp == "GREEN"
    assert (
        _one(good, "stix_bundle.json#phone-number--7b1e2d3c-4a5b-5c6d-8e9f-0a1b2c3d4e01").canonical
        == "+66812345678"
    )
    assert (
        _one(good, "stix_bundle.json#user-account--9f8e7d6c-5b4a-5c3d-8e2f-1a0b9c8d7e01").canonical
        == "line:shopdeal88"
    )
    # the e-mail observable repeats an indicator of the bundle: it is not yielded twice
    assert "stix_bundle.json#email-addr--1a2b3c4d-5e6f-5a7b-8c9d-0e1f2a3b4c01" not in good
    assert "file" in bad["stix_bundle.json#file--3c2b1a09-8f7e-5d6c-9b5a-4e3d2c1b0a01"]
    assert (
        "ranges are not indicators" in bad["stix_bundle.json#ipv4-addr--2c0d7a31-4e5f-5a6b-8c7d-9e0f1a2b3c02"]
    )
    assert bad["stix_bundle.json#objects[28]"] == "not a STIX object (no type or id)"


def test_stix_unusable_indicators_are_rejected_with_their_id() -> None:
    _, bad = _parse(DATA / "stix_bundle.json")
    assert bad[_STIX + "09"] == "pattern: file:name is not an indicator kind Petanda holds"
    assert bad[_STIX + "0a"].startswith("pattern: qualifier WITHIN is not supported (Petanda reads which")
    assert bad[_STIX + "0b"] == "pattern: operator LIKE is not supported (only = and IN)"
    assert bad[_STIX + "0c"] == "pattern_type 'sigma' is not supported (only stix)"
    assert bad[_STIX + "0d"].startswith("value: invalid phone")
    assert bad[_STIX + "0e"] == "the indicator is revoked"
    assert "AND of comparisons" in bad[_STIX + "0f"]
    assert bad[_STIX + "10"] == (  # the grammar's own message, with line and column
        "pattern: not a valid STIX 2.1 pattern: 1:21: no viable alternative at input '''"
    )


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("[url:value = 'http://a.example/']", [("url", "http://a.example/")]),
        ("[url:value='a' OR url:value='b']", [("url", "a"), ("url", "b")]),
        ("([domain-name:value = 'a'] OR ([ipv4-addr:value = 'b']))", [("domain", "a"), ("ipv4", "b")]),
        ("[email-addr:value = 'x'] OR [email-addr:value = 'x']", [("email", "x")]),
        (r"[url:value = 'it\'s \\ ok']", [("url", "it's \\ ok")]),
        ("[email-message:from_ref.value = 'boss@ceo.example']", [("email", "boss@ceo.example")]),
        (
            "[user-account:user_id = 'kelly' AND user-account:account_type = 'wechat']",
            [("handle", "wechat:kelly")],
        ),
        ("[bank-account:iban = 'GB82WEST12345698765432']", [("bank_account", "GB82WEST12345698765432")]),
        ("[cryptocurrency-wallet:address = 'T1']", [("crypto_wallet", "T1")]),
        # read through the OASIS grammar: IN, AND over OR, parentheses inside an observation
        ("[url:value IN ('a', 'b')]", [("url", "a"), ("url", "b")]),
        ("[email-addr:value IN ('x', 'y')] OR [email-addr:value = 'x']", [("email", "x"), ("email", "y")]),
        (
            "[user-account:account_type = 'line' AND "
            "(user-account:user_id = 'a' OR user-account:user_id = 'b')]",
            [("handle", "line:a"), ("handle", "line:b")],
        ),
        (
            "[bank-account:bic = 'MBBEMYKL' AND bank-account:account_number = '1' OR url:value = 'u']",
            [("bank_account", "MY:MBBEMYKL:1"), ("url", "u")],
        ),
        ("(([url:value = 'a']) OR [domain-name:value = 'b'])", [("url", "a"), ("domain", "b")]),
        (
            "[url:value = 'a' OR (url:value = 'b' OR url:value = 'c')]",
            [("url", "a"), ("url", "b"), ("url", "c")],
        ),
        ("[phone-number:value='+60123456789']", [("phone", "+60123456789")]),
    ],
)
def test_pattern_reads(pattern: str, expected: list[tuple[str, str]]) -> None:
    assert pattern_indicators(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        # valid patterns with a construct Petanda does not read: refused, the construct named
        ("[url:value != 'a']", "operator != is not supported (only = and IN)"),
        ("[url:value MATCHES 'a.*']", "operator MATCHES is not supported"),
        ("[url:value LIKE 'a%']", "operator LIKE is not supported"),
        ("[ipv4-addr:value ISSUBSET '198.51.100.0/24']", "operator ISSUBSET is not supported"),
        ("[ipv4-addr:value ISSUPERSET '198.51.100.7']", "operator ISSUPERSET is not supported"),
        ("[EXISTS url:value]", "operator EXISTS is not supported"),
        ("[file:size > 10]", "operator > is not supported"),
        ("[file:size <= 10]", "operator <= is not supported"),
        ("[url:value NOT = 'a']", "NOT is not supported"),
        ("[url:value NOT IN ('a', 'b')]", "NOT is not supported"),
        ("[url:value NOT LIKE 'a%']", "NOT is not supported"),
        ("[url:value = 'a'] AND [url:value = 'b']", "AND between observations is not supported (only OR)"),
        ("[url:value = 'a'] FOLLOWEDBY [url:value = 'b']", "FOLLOWEDBY between observations"),
        ("([url:value = 'a'] OR [url:value = 'b']) FOLLOWEDBY [url:value = 'c']", "FOLLOWEDBY between"),
        ("[url:value = 'a'] REPEATS 5 TIMES", "qualifier REPEATS is not supported"),
        ("[url:value = 'a'] WITHIN 300 SECONDS", "qualifier WITHIN is not supported"),
        (
            "[url:value = 'a'] START t'2024-01-01T00:00:00Z' STOP t'2024-02-01T00:00:00Z'",
            "qualifier START/STOP is not supported",
        ),
        ("([url:value = 'a'] OR [url:value = 'b']) WITHIN 5 SECONDS", "qualifier WITHIN"),
        ("[url:value = 'a' AND url:value = 'b' OR url:value = 'c']", "AND of comparisons is supported only"),
        ("[url:value = 'a' AND domain-name:value = 'a']", "AND of comparisons is supported only"),
        ("[ipv4-addr:value = 5]", "ipv4-addr:value must be compared with a quoted string, found 5"),
        ("[url:value = true]", "must be compared with a quoted string, found true"),
        ("[url:value = b'YQ==']", "must be compared with a quoted string, found b'YQ=='"),
        ("[url:value = h'00ff']", "must be compared with a quoted string, found h'00ff'"),
        ("[url:value IN ('a', 2)]", "must be compared with a quoted string, found 2"),
        ("[network-traffic:dst_ref[0].value = 'a']", "list indexes in an object path are not supported"),
        ("[network-traffic:dst_ref[*].value = 'a']", "list indexes"),
        ("[file:hashes.'SHA-256' = 'ab']", "file:hashes.'SHA-256' is not an indicator kind Petanda holds"),
        ("[x-acme-thing:value = 'a']", "x-acme-thing:value is not an indicator kind Petanda holds"),
        ("[user-account:account_login = 'x']", "user-account needs account_type"),
        ("[bank-account:account_number = '123']", "needs bank-account:bic"),
        # invalid patterns: the grammar's message, with line and column
        ("[url:value = 'a'", "not a valid STIX 2.1 pattern: 1:16: mismatched input '<EOF>' expecting ']'"),
        ("[url:value = 'a\\n']", "not a valid STIX 2.1 pattern: 1:13:"),
        ("[url:value = 'a'] OR", "not a valid STIX 2.1 pattern: 1:20:"),
        ("", "not a valid STIX 2.1 pattern: 1:0:"),
        ("([url:value = 'a']", "not a valid STIX 2.1 pattern"),
        ("[NOT url:value = 'a']", "not a valid STIX 2.1 pattern"),
        ('title:"Scam Domain"', "not a valid STIX 2.1 pattern"),
        ("[URL:value = 'a']", "URL:value is not an indicator kind Petanda holds"),  # types are lower case
    ],
)
def test_pattern_refusals(pattern: str, reason: str) -> None:
    with pytest.raises(PatternError, match=re.escape(reason)):
        pattern_indicators(pattern)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_pattern_strings_round_trip(text: str) -> None:
    quoted = text.replace("\\", "\\\\").replace("'", "\\'")
    assert parse_pattern(f"[url:value = '{quoted}']") == [[(("url:value", text),)]]


def test_an_observation_that_multiplies_out_too_far_is_refused() -> None:
    group = "(" + " OR ".join(f"user-account:user_id = 'u{i}'" for i in range(40)) + ")"
    assert len(pattern_indicators(f"[user-account:account_type = 'x' AND {group}]")) == 40
    with pytest.raises(PatternError, match=f"more than {MAX_ALTERNATIVES} alternatives"):
        pattern_indicators(f"[user-account:account_type = 'x' AND {group} AND {group}]")


# --- MISP ---------------------------------------------------------------------------------------------

_MISP = "misp_event.json#5f0c6a1e-2b3d-4c5e-8f9a-000000000"


def test_misp_attributes_with_event_defaults() -> None:
    good, _ = _parse(DATA / "misp_event.json")
    phone = _one(good, _MISP + "001")  # to_ids false is still ingested; dates from the attribute
    assert (
        phone.canonical,
        phone.first_seen,
        phone.last_seen,
        phone.category,
        phone.confidence,
        phone.tlp,
    ) == (
        "+66812345678",
        date(2024, 4, 1),
        date(2024, 5, 15),
        "job_task",
        70,
        "AMBER",
    )
    email = _one(good, _MISP + "002")  # no attribute dates: the event's date
    assert (email.canonical, email.first_seen, email.source) == (
        "recruit@jobs-my.example",
        date(2024, 4, 10),
        "misp:misp_event.json",
    )
    assert (
        _one(good, _MISP + "004").tlp == "AMBER"
    )  # tlp:green on the attribute cannot loosen the event's amber
    assert _one(good, _MISP + "005").tlp == "RED"
    assert _one(good, _MISP + "006").kind == "ipv6"
    assert _one(good, _MISP + "007").kind == "ipv4"
    assert [(i.kind, i.canonical) for i in good[_MISP + "008"]] == [
        ("domain", "task-portal.example"),
        ("ipv4", "198.51.100.77"),
    ]
    assert _one(good, _MISP + "009").canonical == "GB:WEST:12345698765432"
    assert _one(good, _MISP + "011").canonical == "MY:MBBE:514012345678"  # BANK:ACCOUNT in the default region
    twitter = _one(good, _MISP + "012")
    assert (twitter.canonical, twitter.category) == ("x:my_policehelp", "impersonation_authority")
    assert _one(good, _MISP + "013").canonical == "198.51.100.23"


def test_misp_objects() -> None:
    good, bad = _parse(DATA / "misp_event.json")
    assert _one(good, _MISP + "101").canonical == "telegram:thaijobs_agent"
    assert _one(good, _MISP + "102").canonical == "+60123456789"
    for context in ("103", "104", "202", "203", "204", "302", "402", "403", "503"):
        assert _MISP + context not in good and _MISP + context not in bad
    wallet = _one(good, _MISP + "201")  # symbol USDT-TRC20 names the chain; first/last-seen from the object
    assert (wallet.canonical, wallet.first_seen, wallet.last_seen) == (
        "trx:TRTmvZ2YsWRTaYEMxdLToRYzdsAC2DxfwP",
        date(2024, 3, 20),
        date(2024, 5, 29),
    )
    assert _one(good, _MISP + "401").canonical == "TH:KASI:1234567890"  # account + swift
    assert _one(good, _MISP + "501").first_seen == date(2024, 4, 5)  # the object's first_seen
    assert bad[_MISP + "301"].startswith("Monero")
    assert bad[_MISP + "504"] == "unsupported MISP type 'AS'"


def test_misp_rejections_and_deletions() -> None:
    good, bad = _parse(DATA / "misp_event.json")
    assert bad[_MISP + "014"] == "unsupported MISP type 'sha256'"
    assert bad[_MISP + "015"].startswith("email-dst is a recipient")
    assert bad[_MISP + "016"].startswith("value: invalid phone")
    assert bad[_MISP + "018"].startswith("a MISP link points to a report")
    assert bad[_MISP + "019"].startswith("first_seen: 'yesterday'")
    assert bad[_MISP + "021"] == "unsupported MISP type 'comment'"
    for deleted in ("017", "601"):  # a deleted attribute, and an attribute of a deleted object
        assert _MISP + deleted not in good and _MISP + deleted not in bad


# --- files and fields ---------------------------------------------------------------------------------


def test_format_detection(tmp_path: Path) -> None:
    assert detect_format(DATA / "indicators.csv") == "csv"
    assert detect_format(DATA / "stix_bundle.json") == "stix"
    assert detect_format(DATA / "misp_event.json") == "misp"
    unknown = tmp_path / "feed.xlsx"
    unknown.write_bytes(b"PK")
    with pytest.raises(ImportError_, match=r"feed\.xlsx: unknown file format '\.xlsx'"):
        parse_file(unknown, default_region="MY", today=TODAY)
    neither = tmp_path / "other.json"
    neither.write_text('{"objects": []}', encoding="utf-8")
    with pytest.raises(ImportError_, match=r"other\.json: JSON file is neither"):
        parse_file(neither, default_region="MY", today=TODAY)
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "bundle",\n "objects": [}', encoding="utf-8")
    with pytest.raises(ImportError_, match=r"broken\.json:2: not valid JSON"):
        parse_file(broken, default_region="MY", today=TODAY)
    renamed = tmp_path / "export.txt"
    renamed.write_text('{"kind": "domain", "value": "a.example"}\n', encoding="utf-8")
    assert [r.location for r in parse_file(renamed, default_region="MY", today=TODAY, fmt="jsonl")] == [
        "export.txt:1"
    ]


def test_bad_defaults_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="default region"):
        parse_file(DATA / "indicators.csv", default_region="Malaysia", today=TODAY)
    with pytest.raises(InputError, match="default TLP"):
        parse_file(DATA / "indicators.csv", default_region="MY", today=TODAY, default_tlp="orange")


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("AMBER", "AMBER"),
        ("TLP:AMBER", "AMBER"),
        ("tlp: amber+strict", "AMBER+STRICT"),
        ("White", "CLEAR"),
        ("red", "RED"),
    ],
)
def test_tlp_spellings(text: str, level: str) -> None:
    assert parse_tlp(text) == level


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Job", "job_task"),
        ("task scam", "job_task"),
        ("Job/Task", "job_task"),
        ("mule", "money_mule"),
        ("Money Mule", "money_mule"),
        ("e-commerce", "ecommerce"),
        ("Bank impersonation", "impersonation_bank"),
        ("scam compound", "scam_compound"),
        ("INVESTMENT", "investment"),
    ],
)
def test_category_synonyms(text: str, category: str) -> None:
    assert parse_category(text) == category


def test_dates() -> None:
    assert parse_date("2024-03-01") == date(2024, 3, 1)
    assert parse_date("2024-03-01T23:30:00-05:00") == date(2024, 3, 2)  # the UTC day
    assert parse_date("2024-03-01 10:00:00") == date(2024, 3, 1)
    with pytest.raises(InputError):
        parse_date("01/03/2024")
