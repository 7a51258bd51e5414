"""``petanda check`` / ``petanda sighting``, client side.

The pure parts (kind guessing, batch files, batching, verdicts and exit status, rendering, protobuf
conversions, connection settings) are tested directly. The gRPC path is a CLIENT-SIDE test of the CLI:
it runs the real handlers against a small stand-in InvestigatorService on 127.0.0.1:0 behind real mutual
TLS (certificates made here with ``cryptography``); it is not the node. The end-to-end test against
real nodes lives elsewhere.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import ipaddress
import itertools
import json
import os
import random
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from client.protocol.errors import (
    ConfigError,
    InputError,
    PeerError,
    PeerUnavailable,
    PermissionDenied,
    PetandaError,
    ProtocolError,
    RateLimited,
    UnknownKind,
)
from client.tools import check as check_cli
from client.tools.connection import (
    Connection,
    add_connection_arguments,
    resolve_connection,
)
from client.tools.results import (
    CSV_COLUMNS,
    InputRow,
    Metadata,
    Outcome,
    PeerOutcome,
    PeerStatus,
    Query,
    Sighting,
    Tally,
    csv_row,
    guess_kind,
    order_results,
    outcome_document,
    plan_batches,
    printable,
    read_rows,
    short_detail,
    summary_line,
    table_rows,
    verdict,
)
from client.transport import convert
from client.transport.status import error_from_rpc

META = Metadata("investment", "2024-01-02", "2024-03-04", 80, "AMBER", 3, "ab" * 16, "oprf", 7)


def match(peer: str = "SG", meta: Metadata = META) -> PeerOutcome:
    return PeerOutcome(peer, PeerStatus.MATCH, meta)


def no(peer: str) -> PeerOutcome:
    return PeerOutcome(peer, PeerStatus.NO_MATCH)


# --- kind guessing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("+60 12-345 6789", "phone"),
        ("012-345 6789", "phone"),  # national: the node reads it with its own country
        ("0060123456789", "phone"),
        ("(03) 1234 5678", "phone"),
        ("scam@example.com", "email"),
        ("Scam@BÜCHER.example", "email"),
        ("https://evil.example/login", "url"),
        ("HTTP://Example.COM", "url"),
        ("example.com/login", "url"),
        ("example.com:8080", "url"),
        ("example.com", "domain"),
        ("bücher.example", "domain"),
        ("123.example", "domain"),
        ("192.0.2.1", "ipv4"),
        ("2001:db8::1", "ipv6"),
        ("::1", "ipv6"),
        ("0x52908400098527886E0F7030069857D2E4169EE7", "crypto_wallet"),
        ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T", "crypto_wallet"),
        ("bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "crypto_wallet"),
        ("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "crypto_wallet"),
        ("tron:TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T", "crypto_wallet"),
        ("usdt-trc20:TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T", "crypto_wallet"),
        ("telegram:@scam_boss", "handle"),
        ("WA:+60123456789", "handle"),
        ("MY:MBBEMYKL:1234567890", "bank_account"),
        ("GB82 WEST 1234 5698 7654 32", "bank_account"),
        ("  +6012345678  ", "phone"),
        ("012.345.6789", "phone"),  # dotted, but three groups: no IPv4 look-alike
    ],
)
def test_guess_kind(value: str, kind: str) -> None:
    assert guess_kind(value) == kind


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("@scam_boss", "needs its platform"),
        ("hello", "none of the kinds"),
        ("1234", "too few digits"),
        ("", "empty"),
        ("   ", "empty"),
        ("a@b@c", "needs its platform"),
        ("999.1.1.1", "looks like an IPv4 address but is not one"),  # never a phone
        ("01.2.3.4", "looks like an IPv4 address but is not one"),
    ],
)
def test_guess_kind_refuses_ambiguous_values_and_asks_for_kind(value: str, reason: str) -> None:
    with pytest.raises(InputError, match=reason) as info:
        guess_kind(value)
    assert "\n" not in str(info.value)
    if value.strip():
        assert "--kind" in str(info.value)


@given(st.text(max_size=80))
def test_guess_kind_returns_a_kind_or_raises_input_error(value: str) -> None:
    try:
        kind = guess_kind(value)
    except InputError:
        return
    assert kind in {
        "phone",
        "email",
        "url",
        "domain",
        "ipv4",
        "ipv6",
        "bank_account",
        "crypto_wallet",
        "handle",
    }


# --- reading batch files ------------------------------------------------------------------------------


def rows(text: str, fmt: str = "csv", **kw: Any) -> list[InputRow]:
    return list(read_rows(io.StringIO(text, newline=""), fmt, **kw))  # type: ignore[arg-type]


def test_csv_positional_columns_and_line_numbers_across_blank_lines() -> None:
    got = rows("phone,+60123456789\n\nemail,a@b.example,\ndomain,x.example,SG\n")
    assert [(r.line, r.kind, r.value, r.region, r.error) for r in got] == [
        (1, "phone", "+60123456789", "", None),
        (3, "email", "a@b.example", "", None),
        (4, "domain", "x.example", "SG", None),
    ]


def test_csv_header_in_any_order_with_extra_columns() -> None:
    got = rows("case_id,Value,REGION,kind\nC1,012-345 6789,MY,phone\nC2,x.example,,domain\n")
    assert [(r.line, r.kind, r.value, r.region) for r in got] == [
        (2, "phone", "012-345 6789", "MY"),
        (3, "domain", "x.example", ""),
    ]


def test_csv_header_without_kind_uses_default_or_guesses() -> None:
    got = rows("value\n+60123456789\nscam@example.com\nhello\n")
    assert [(r.kind, r.error is None) for r in got] == [("phone", True), ("email", True), ("", False)]
    assert "cannot tell the kind" in (got[2].error or "")
    got = rows("value\n+60123456789\n", kind="phone", region="MY")
    assert (got[0].kind, got[0].region) == ("phone", "MY")


def test_csv_one_column_needs_default_kind() -> None:
    assert [(r.kind, r.value, r.error) for r in rows("+60123456789\n", kind="phone")] == [
        ("phone", "+60123456789", None)
    ]
    (bad,) = rows("+60123456789\n")
    assert bad.line == 1 and "missing column" in (bad.error or "")


def test_csv_the_file_kind_and_region_win_over_the_defaults() -> None:
    (row,) = rows("email,a@b.example,SG\n", kind="phone", region="MY")
    assert (row.kind, row.region) == ("email", "SG")
    (row,) = rows(",+60123456789,\n", kind="phone", region="MY")
    assert (row.kind, row.region) == ("phone", "MY")


def test_csv_bad_rows_keep_their_line_numbers_and_reading_goes_on() -> None:
    text = (
        "phone,+60123456789\n"  # 1 good
        'email,"a,b@example.com"\n'  # 2: quoted comma
        'email,"a\n'  # 3: a record is one line: an unbalanced quote spoils only its own line
        "fax,123456\n"  # 4 unknown kind
        "phone,\n"  # 5 empty value
        "phone,1,MY,extra\n"  # 6 too many columns
        'phone,"unterminated\n'  # 7: strict CSV error
        "domain,ok.example\n"  # 8 good
        "phone,\udcff\udcfe\n"  # 9 not UTF-8 (surrogate-escaped bytes)
        "url," + "x" * 9000 + "\n"  # 10 too long
    )
    got = rows(text)
    by_line = {r.line: r for r in got}
    assert by_line[1].error is None
    assert by_line[2].error is None and by_line[2].value == "a,b@example.com"
    assert "unparseable CSV" in (by_line[3].error or "") and by_line[3].value == 'email,"a'
    assert "unparseable CSV" in (by_line[7].error or "")
    assert "unknown kind" in (by_line[4].error or "")
    assert "empty value" in (by_line[5].error or "")
    assert "4 columns" in (by_line[6].error or "")
    assert by_line[10].error and "longer than" in by_line[10].error
    assert by_line[8].error is None and by_line[8].value == "ok.example"
    assert by_line[9].error == "not valid UTF-8"
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_csv_invalid_utf8_from_a_real_file_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"phone,+60123456789\nemail,\xff\xfe@x.example\ndomain,a.example\n")
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        got = list(read_rows(f, "csv"))
    assert [(r.line, r.error) for r in got] == [(1, None), (2, "not valid UTF-8"), (3, None)]


def test_jsonl_rows_and_bad_lines() -> None:
    text = "\n".join(
        [
            '{"kind": "phone", "value": "+60123456789", "region": "MY"}',
            "",
            '{"value": "scam@example.com"}',
            "{not json",
            "[1, 2]",
            '{"kind": "phone"}',
            '{"kind": "phone", "value": 60123456789}',
            '{"kind": "fax", "value": "1"}',
            '{"value": "+60123456789", "case": 17}',
        ]
    )
    got = rows(text, "jsonl", kind="phone")
    assert [(r.line, r.kind, r.error is None) for r in got] == [
        (1, "phone", True),
        (3, "phone", True),  # --kind is the default for a record without kind
        (4, "phone", False),
        (5, "phone", False),
        (6, "phone", False),
        (7, "phone", False),
        (8, "fax", False),
        (9, "phone", True),
    ]
    errors = {r.line: r.error for r in got}
    assert "not JSON" in (errors[4] or "")
    assert "not a JSON object" in (errors[5] or "")
    assert "missing 'value'" in (errors[6] or "")
    assert "must be a string" in (errors[7] or "")


def test_read_rows_refuses_an_unknown_default_kind() -> None:
    with pytest.raises(UnknownKind):
        rows("x\n", kind="fax")


def test_reading_and_batching_stream() -> None:
    """An endless file yields its first batches: nothing reads the whole file."""
    consumed = 0

    def endless() -> Iterator[str]:
        nonlocal consumed
        for i in itertools.count():
            consumed += 1
            yield f"phone,+601234{i:05d}\n" if i % 7 else "fax,1\n"

    batches = plan_batches(read_rows(endless(), "csv"), max_queries=1000)
    first, second = next(batches), next(batches)
    assert sum(r.error is None for r in first) == 1000 and sum(r.error is None for r in second) == 1000
    assert consumed < 2400
    assert [r.line for r in first + second] == list(range(1, len(first) + len(second) + 1))


# --- batching -----------------------------------------------------------------------------------------


def test_plan_batches_caps_good_rows_keeps_order_and_carries_bad_rows() -> None:
    source = [
        InputRow(i, "phone", f"+6012345{i:04d}", error="bad" if i % 3 == 0 else None) for i in range(1, 2501)
    ]
    batches = list(plan_batches(source, max_queries=1000))
    assert [r for b in batches for r in b] == source
    assert [sum(r.error is None for r in b) for b in batches] == [1000, 667]
    assert all(b for b in batches)
    assert list(plan_batches([], max_queries=5)) == []


def test_plan_batches_splits_on_bytes() -> None:
    source = [InputRow(i, "url", "x" * 100) for i in range(10)]
    batches = list(plan_batches(source, max_queries=1000, max_bytes=350))
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_plan_batches_refuses_zero() -> None:
    with pytest.raises(InputError):
        list(plan_batches([], max_queries=0))


def test_order_results_puts_answers_in_query_order_and_checks_them() -> None:
    a, b, c = Outcome("a"), Outcome("b"), Outcome("c")
    assert order_results(3, [(2, c), (0, a), (1, b)]) == [a, b, c]
    with pytest.raises(ProtocolError, match="twice"):
        order_results(2, [(0, a), (0, b)])
    with pytest.raises(ProtocolError, match="no answer for 1 of 2"):
        order_results(2, [(1, a)])
    with pytest.raises(ProtocolError, match="query 5"):
        order_results(2, [(0, a), (1, b), (5, c)])


# --- verdicts, exit status, rendering -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (Outcome("x", peers=(no("LA"), match("SG"))), "match"),
        (Outcome("x", peers=(no("LA"), no("SG"))), "no_match"),
        (
            Outcome("x", peers=(no("LA"), PeerOutcome("SG", PeerStatus.UNAVAILABLE, detail="timeout"))),
            "incomplete",
        ),
        (Outcome("x", peers=(PeerOutcome("SG", PeerStatus.UNKNOWN),)), "incomplete"),
        (Outcome("x", peers=()), "incomplete"),
        (Outcome("", error="invalid phone: too short"), "error"),
        (None, "error"),
    ],
)
def test_verdict(outcome: Outcome | None, expected: str) -> None:
    assert verdict(outcome) == expected


def test_exit_status_rule_incomplete_beats_error_beats_match_beats_no_match() -> None:
    tally = Tally()
    assert tally.exit_status == 0
    tally.add("no_match", 1)
    assert tally.exit_status == 0
    tally.add("match", 3)
    assert tally.exit_status == 1
    tally.add("error", 4, "malformed")
    assert tally.exit_status == 2
    assert tally.summary() == "3 rows: 1 match, 1 no match, 0 incomplete, 1 error (1 malformed; line 4)"
    tally.add("incomplete", 2, "rate_limited")  # not answered by every peer: run it again with --resume
    assert tally.exit_status == 3
    assert tally.summary() == (
        "4 rows: 1 match, 1 no match, 1 incomplete, 1 error (1 malformed; line 4); "
        "1 not answered by every peer (1 rate limited)"
    )
    stopped = Tally()
    stopped.add("no_match", 1)
    stopped.stopped = "TH: daily OPRF quota of MY for phone used up"
    assert stopped.exit_status == 3


def test_tally_names_the_first_ten_error_lines() -> None:
    tally = Tally()
    for line in range(1, 13):
        tally.add("error", line)
    assert tally.summary().endswith("12 errors (lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...)")
    tally.add("error", 13, "refused")
    assert tally.summary().endswith(
        "13 errors (1 refused by the node; lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...)"
    )


def test_summary_line() -> None:
    outcome = Outcome(
        "+60123456789",
        peers=(
            match("TH"),
            no("ID"),
            match("SG"),
            PeerOutcome("LA", PeerStatus.UNAVAILABLE),
            PeerOutcome("VN", PeerStatus.RATE_LIMITED),
        ),
    )
    assert summary_line(outcome) == "MATCH at 2 of 5 peers (SG, TH); 1 unavailable (LA); 1 rate limited (VN)"
    assert summary_line(Outcome("x", peers=(no("A"), no("B")))) == "no match at any of 2 peers"
    assert summary_line(Outcome("x", peers=(no("A"), PeerOutcome("B", PeerStatus.STALE)))) == (
        "no match at 1 of 2 peers; 1 stale (B)"
    )
    assert summary_line(Outcome("", error="bad")) == "refused by the node: bad"


def test_table_rows_put_matches_first_and_neutralise_terminal_escapes() -> None:
    evil = Metadata(
        "\x1b[2J\x1b]0;owned\x07phish\u202e", "2024-01-01", "2024-01-02", 5, "RED", 1, "00", "hmac", 1
    )
    outcome = Outcome(
        "x",
        peers=(no("ID"), PeerOutcome("LA", PeerStatus.STALE, detail="filter\nexpired"), match("SG", evil)),
    )
    got = table_rows(outcome)
    assert [(s, cells[0], cells[1]) for s, cells in got] == [
        (PeerStatus.MATCH, "SG", "MATCH"),
        (PeerStatus.NO_MATCH, "ID", "no match"),
        (PeerStatus.STALE, "LA", "stale"),
    ]
    category = got[0][1][2]
    assert "\x1b" not in category and "\x07" not in category and "\u202e" not in category
    assert category == "\\u001b[2J\\u001b]0;owned\\u0007phish\\u202e"
    assert got[2][1][2] == "filter\\u000aexpired"
    assert got[0][1][3:] == ("2024-01-01", "2024-01-02", "5", "RED", "1")
    assert printable("bücher ok") == "bücher ok"


def test_json_document_carries_what_a_sighting_needs() -> None:
    outcome = Outcome("+60123456789", peers=(match("SG"), no("TH")))
    doc = outcome_document(Query("phone", "012-345 6789"), outcome, kind_guessed=True)
    assert json.loads(json.dumps(doc)) == {
        "kind_guessed": True,
        "kind": "phone",
        "value": "012-345 6789",
        "region": "",
        "canonical": "+60123456789",
        "verdict": "match",
        "error": "",
        "peers": [
            {
                "peer_id": "SG",
                "status": "match",
                "metadata": {
                    "category": "investment",
                    "first_seen": "2024-01-02",
                    "last_seen": "2024-03-04",
                    "confidence": 80,
                    "tlp": "AMBER",
                    "reports": 3,
                    "tag": "ab" * 16,
                    "tier": "oprf",
                    "version": 7,
                },
                "detail": "",
            },
            {"peer_id": "TH", "status": "no_match", "metadata": None, "detail": ""},
        ],
    }
    bad = outcome_document(Query("fax", "1"), None, line=4, error="unknown kind 'fax'")
    assert (bad["line"], bad["verdict"], bad["error"], bad["peers"]) == (4, "error", "unknown kind 'fax'", [])


def test_csv_row_one_per_input_with_matches_as_json() -> None:
    outcome = Outcome(
        "+60123456789", peers=(no("TH"), match("SG"), PeerOutcome("LA", PeerStatus.UNAVAILABLE))
    )
    row = dict(zip(CSV_COLUMNS, csv_row(InputRow(7, "phone", "012-345 6789", "MY"), outcome), strict=True))
    assert row["line"] == "7" and row["value"] == "012-345 6789" and row["region"] == "MY"
    assert row["verdict"] == "match" and row["matched_peers"] == "SG"
    assert row["peers"] == "LA=unavailable;SG=match;TH=no_match"
    assert json.loads(row["matches"]) == [{"peer_id": "SG", **META.as_dict()}]
    assert row["matches"].startswith("[") and row["error"] == ""
    bad = dict(
        zip(CSV_COLUMNS, csv_row(InputRow(9, "fax", "1", error="unknown kind 'fax'"), None), strict=True)
    )
    assert (bad["verdict"], bad["matches"], bad["error"], bad["peers"]) == (
        "error",
        "",
        "unknown kind 'fax'",
        "",
    )
    refused = dict(
        zip(CSV_COLUMNS, csv_row(InputRow(2, "phone", "1"), Outcome("", error="too short")), strict=True)
    )
    assert (refused["verdict"], refused["error"]) == ("error", "too short")


def test_sighting_validates_its_fields() -> None:
    Sighting("SG", "phone", "oprf", 3, "ab01")
    for args, reason in [
        (("sg", "phone", "oprf", 3, "ab"), "node id"),
        (("SG", "fax", "oprf", 3, "ab"), "unknown kind"),
        (("SG", "phone", "rsa", 3, "ab"), "tier"),
        (("SG", "phone", "oprf", -1, "ab"), "version"),
        (("SG", "phone", "oprf", 3, "abc"), "hexadecimal"),
        (("SG", "phone", "oprf", 3, "AB"), "hexadecimal"),
    ]:
        with pytest.raises(InputError, match=reason):
            Sighting(*args)  # type: ignore[arg-type]


# --- protobuf conversions -----------------------------------------------------------------------------

metadata_st = st.builds(
    Metadata,
    category=st.sampled_from(["investment", "romance", ""]),
    first_seen=st.just("2024-01-02"),
    last_seen=st.just("2024-02-03"),
    confidence=st.integers(0, 100),
    tlp=st.sampled_from(["CLEAR", "GREEN", "AMBER", "AMBER+STRICT"]),
    reports=st.integers(0, 2**32 - 1),
    tag=st.binary(min_size=1, max_size=32).map(bytes.hex),
    tier=st.sampled_from(["oprf", "hmac"]),
    version=st.integers(0, 2**64 - 1),
)
peer_st = st.one_of(
    st.builds(PeerOutcome, st.sampled_from(["SG", "TH", "LA"]), st.just(PeerStatus.MATCH), metadata_st),
    st.builds(
        PeerOutcome,
        st.sampled_from(["SG", "TH", "LA"]),
        st.sampled_from([s for s in PeerStatus if s not in (PeerStatus.MATCH, PeerStatus.UNKNOWN)]),
        st.none(),
        st.text(max_size=20),
    ),
)
outcome_st = st.builds(
    Outcome, st.text(max_size=30), st.text(max_size=30), st.lists(peer_st, max_size=4).map(tuple)
)


@given(st.lists(outcome_st, max_size=5))
def test_results_round_trip_through_protobuf(outcomes: list[Outcome]) -> None:
    wire = convert.results_to_proto(outcomes).SerializeToString()
    back = convert.results_from_proto(investigator_pb2.CheckResponse.FromString(wire), len(outcomes))
    assert back == outcomes


@given(
    st.lists(st.builds(Query, st.sampled_from(["phone", "url"]), st.text(), st.text(max_size=3)), max_size=5),
    st.integers(0, 2**32 - 1),
)
def test_queries_round_trip_through_protobuf(queries: list[Query], deadline: int) -> None:
    request = investigator_pb2.CheckRequest.FromString(
        convert.queries_to_proto(queries, deadline).SerializeToString()
    )
    assert convert.queries_from_proto(request) == (queries, deadline)


def test_results_from_proto_reads_unknown_statuses_and_drops_stray_metadata() -> None:
    response = investigator_pb2.CheckResponse(
        results=[
            investigator_pb2.IndicatorResult(
                index=0,
                canonical="x",
                peers=[
                    investigator_pb2.PeerResult(peer_id="SG", status=0),
                    investigator_pb2.PeerResult(peer_id="TH", status=99, detail="new"),
                    investigator_pb2.PeerResult(
                        peer_id="LA",
                        status=investigator_pb2.PEER_STATUS_NO_MATCH,
                        metadata=investigator_pb2.MatchMetadata(category="x"),
                    ),
                    investigator_pb2.PeerResult(peer_id="ID", status=investigator_pb2.PEER_STATUS_MATCH),
                ],
            )
        ]
    )
    (outcome,) = convert.results_from_proto(response, 1)
    assert [(p.status, p.metadata) for p in outcome.peers] == [
        (PeerStatus.UNKNOWN, None),
        (PeerStatus.UNKNOWN, None),
        (PeerStatus.NO_MATCH, None),
        (PeerStatus.MATCH, None),
    ]
    with pytest.raises(ProtocolError):
        convert.results_from_proto(response, 2)


def test_sighting_round_trip_through_protobuf() -> None:
    s = Sighting("SG", "crypto_wallet", "hmac", 2**63, "00ff")
    request = convert.sighting_to_proto(s)
    assert request.tier == 2
    assert convert.sighting_from_proto(request) == s
    with pytest.raises(InputError, match="tier"):
        convert.sighting_from_proto(investigator_pb2.SightingRequest(peer_id="SG", kind="phone", tag="00"))


# --- connection settings ------------------------------------------------------------------------------


def conn_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return parser.parse_args(argv)


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_connection_precedence_flags_then_env_then_file(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "etc" / "client.toml",
        'node = "file.example:1"\nca = "pki/ca.crt"\ncert = "/abs/me.crt"\nkey = "me.key"\n'
        'server_name = "node.my"\n',
    )
    env = {"PETANDA_CERT": "/env/me.crt", "PETANDA_NODE": "env.example:2"}
    conn = resolve_connection(conn_args("--config", str(cfg), "--node", "flag.example:3"), env)
    assert conn == Connection(
        target="flag.example:3",
        ca=tmp_path / "etc" / "pki" / "ca.crt",  # relative to the file
        cert=Path("/env/me.crt"),
        key=tmp_path / "etc" / "me.key",
        server_name="node.my",
    )
    conn = resolve_connection(conn_args("--config", str(cfg)), env)
    assert conn.target == "env.example:2"
    conn = resolve_connection(conn_args("--config", str(cfg)), {})
    assert (conn.target, conn.cert) == ("file.example:1", Path("/abs/me.crt"))


def test_connection_default_file_and_petanda_config(tmp_path: Path) -> None:
    write_config(
        tmp_path / "xdg" / "petanda" / "client.toml",
        'node = "a.example:1"\nca = "c"\ncert = "d"\nkey = "e"\n',
    )
    conn = resolve_connection(conn_args(), {"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert conn.target == "a.example:1" and conn.key == tmp_path / "xdg" / "petanda" / "e"
    other = write_config(tmp_path / "other.toml", 'node = "b.example:2"\nca = "c"\ncert = "d"\nkey = "e"\n')
    conn = resolve_connection(
        conn_args(), {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PETANDA_CONFIG": str(other)}
    )
    assert conn.target == "b.example:2"


def test_connection_missing_settings_are_named_with_their_sources(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "none"), "PETANDA_CA": "/ca.crt"}
    with pytest.raises(ConfigError) as info:
        resolve_connection(conn_args("--node", "n.example:1"), env)
    message = str(info.value)
    assert "missing settings cert, key" in message
    assert "--cert or PETANDA_CERT" in message and "--key or PETANDA_KEY" in message
    assert str(tmp_path / "none" / "petanda" / "client.toml") in message
    assert "node" not in message.split(":")[0] and "\n" not in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('node = "a:1"\ncerts = "x"\n', "certs: unknown setting"),
        ("node = 7\n", "node: must be a non-empty string"),
        ('node = "a:1\n', "not valid TOML"),
        ("[client]\nnode = 'a:1'\n", "client: unknown setting"),
    ],
)
def test_connection_bad_config_file_names_file_and_key(tmp_path: Path, text: str, reason: str) -> None:
    cfg = write_config(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        resolve_connection(conn_args("--config", str(cfg)), {})
    assert str(cfg) in str(info.value) and reason in str(info.value)


def test_connection_explicit_config_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_connection(conn_args("--config", str(tmp_path / "nope.toml")), {})


@pytest.mark.parametrize("node", ["localhost", "host:0", "host:70000", "host:x", ":7443", "::1:7443"])
def test_connection_refuses_a_bad_node_address_naming_its_source(node: str) -> None:
    with pytest.raises(ConfigError, match=r"PETANDA_NODE: .* is not HOST:PORT"):
        resolve_connection(
            conn_args("--ca", "a", "--cert", "b", "--key", "c"),
            {"PETANDA_NODE": node, "XDG_CONFIG_HOME": "/nonexistent"},
        )


@pytest.mark.parametrize("node", ["localhost:7443", "[::1]:7443", "192.0.2.1:1", "node.my.example:443"])
def test_connection_accepts_host_port(node: str) -> None:
    args = conn_args("--node", node, "--ca", "a", "--cert", "b", "--key", "c")
    assert resolve_connection(args, {"XDG_CONFIG_HOME": "/nonexistent"}).target == node


@dataclass
class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    status: grpc.StatusCode
    text: str

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.text


@pytest.mark.parametrize(
    ("code", "cls", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, PeerUnavailable, "node n:1 unreachable: failed to connect"),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            PeerUnavailable,
            "node n:1 did not answer in time: failed to connect",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            PermissionDenied,
            "the node refused your certificate: failed to connect",
        ),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            PermissionDenied,
            "the node refused your certificate: failed to connect",
        ),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, RateLimited, "rate limit or quota exhausted: failed to connect"),
        (grpc.StatusCode.INVALID_ARGUMENT, InputError, "failed to connect"),
        (grpc.StatusCode.INTERNAL, PeerError, "node n:1 failed: INTERNAL: failed to connect"),
    ],
)
def test_grpc_errors_become_one_line_petanda_errors(code: grpc.StatusCode, cls: type, message: str) -> None:
    error = error_from_rpc(FakeRpcError(code, "failed\n  to connect"), "n:1")
    assert type(error) is cls
    assert str(error).endswith(message) and "\n" not in str(error)


# --- CLIENT-SIDE gRPC test of the CLI: a stand-in InvestigatorService over real mutual TLS ---------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    san: list[x509.GeneralName] | None = None,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.BasicConstraints(ca=issuer is None, path_length=0 if issuer is None else None), critical=True
        )
    )
    if issuer is not None:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        builder = builder.add_extension(x509.SubjectAlternativeName(san or []), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    server_cert: bytes
    server_key: bytes
    ca_pem: bytes


def make_pki(directory: Path, uri: str = "urn:petanda:investigator:MY:alice") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Petanda test CA", ca_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "MY",
        server_key,
        (ca, ca_key),
        san=[
            x509.UniformResourceIdentifier("urn:petanda:peer:MY"),
            x509.DNSName("my.peer.petanda"),  # the name the CLI verifies for an MY person by default
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        server=True,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("MY/alice", client_key, (ca, ca_key), san=[x509.UniformResourceIdentifier(uri)])
    (directory / "ca.crt").write_bytes(_pem(ca))
    (directory / "me.crt").write_bytes(_pem(client))
    key_path = directory / "me.key"
    key_path.write_bytes(_key_pem(client_key))
    key_path.chmod(0o600)
    return Pki(
        directory / "ca.crt", directory / "me.crt", key_path, _pem(server), _key_pem(server_key), _pem(ca)
    )


#: What a node says of a peer whose port is closed (gRPC's own words).
DEAD = (
    "LA: UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:39481: "
    "Failed to connect to remote host: connect: Connection refused (111)"
)

HOLDINGS = {
    "+60123456789": META,
    "scam@example.com": Metadata(
        "phishing", "2023-05-05", "2024-05-05", 40, "GREEN", 9, "cd" * 16, "hmac", 2
    ),
}


@dataclass
class StandIn(investigator_pb2_grpc.InvestigatorServiceServicer):  # type: ignore[misc]
    """A stand-in node: SG holds HOLDINGS, TH holds nothing, LA is down for values containing 'down'."""

    batches: list[list[Query]] = field(default_factory=list)
    callers: list[str] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)
    fail_on_batch: int | None = None
    #: From this batch on, refuse as the node's daily check quota does (retry-after-ms: 20 hours).
    exhaust_from_batch: int | None = None
    abort: tuple[grpc.StatusCode, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.abort:
            context.abort(*self.abort)
        san = context.auth_context().get("x509_subject_alternative_name", [])
        queries, _ = convert.queries_from_proto(request)
        with self.lock:
            self.callers.extend(s.decode() for s in san)
            self.batches.append(queries)
            if self.fail_on_batch is not None and len(self.batches) == self.fail_on_batch:
                context.abort(grpc.StatusCode.UNAVAILABLE, "store down")
            if self.exhaust_from_batch is not None and len(self.batches) >= self.exhaust_from_batch:
                context.set_trailing_metadata((("retry-after-ms", "72000000"),))
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "daily check quota of MY/alice used up (20 of 25 today, 10 asked); it resets at "
                    "00:00 UTC (2024-06-02T00:00:00Z, in 72000 s)",
                )
        outcomes = []
        for q in queries:
            value = q.value.strip().lower()
            if q.kind == "phone" and value.startswith("0") and not q.region:
                value = "+6" + value.replace("-", "").replace(" ", "")  # node's own country: MY
            if value == "refuse-me":
                outcomes.append(Outcome("", error="invalid phone: too short"))
                continue
            meta = HOLDINGS.get(value)
            peers = (
                PeerOutcome("SG", PeerStatus.MATCH, meta) if meta else PeerOutcome("SG", PeerStatus.NO_MATCH),
                PeerOutcome("TH", PeerStatus.NO_MATCH),
                PeerOutcome("LA", PeerStatus.UNAVAILABLE, detail="deadline")
                if "down" in value
                else PeerOutcome("LA", PeerStatus.UNAVAILABLE, detail=DEAD)
                if "dead" in value
                else PeerOutcome("LA", PeerStatus.NO_MATCH),
            )
            outcomes.append(Outcome(value, peers=peers))
        return convert.results_to_proto(outcomes)

    def ReportSighting(self, request: Any, context: grpc.ServicerContext) -> Any:
        sighting = convert.sighting_from_proto(request)
        self.sightings.append(sighting)
        return investigator_pb2.SightingResponse(recorded=sighting.tag == META.tag)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def node(pki: Pki) -> Iterator[tuple[StandIn, int]]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    investigator_pb2_grpc.add_InvestigatorServiceServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield servicer, port
    server.stop(None)


def petanda(*argv: str) -> int:
    """Run a command as client/tools/cli.py will: parse, call the handler, map PetandaError to exit 2."""
    parser = argparse.ArgumentParser(prog="petanda")
    check_cli.add_check_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except PetandaError as error:
        print(f"petanda: {error}")
        return 2


@pytest.fixture
def conn(pki: Pki, node: tuple[StandIn, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("COLUMNS", "160")
    for var in (
        "PETANDA_NODE",
        "PETANDA_CA",
        "PETANDA_CERT",
        "PETANDA_KEY",
        "PETANDA_CONFIG",
        "PETANDA_SERVER_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    return [
        "--node",
        f"127.0.0.1:{node[1]}",
        "--ca",
        str(pki.ca),
        "--cert",
        str(pki.cert),
        "--key",
        str(pki.key),
    ]


def test_check_one_value_prints_a_table_and_exits_1_on_match(
    conn: list[str], node: tuple[StandIn, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "012-345 6789", *conn) == 1
    out = capsys.readouterr().out
    servicer = node[0]
    assert servicer.batches == [[Query("phone", "012-345 6789", "")]]  # guessed; region left to the node
    assert servicer.callers == ["urn:petanda:investigator:MY:alice"]  # our certificate went over mTLS
    lines = out.splitlines()
    assert lines[0].startswith("phone (guessed") and lines[0].endswith("012-345 6789 → +60123456789")
    sg = next(line for line in lines if line.strip().startswith("SG"))
    assert "MATCH" in sg and "investment" in sg and "2024-01-02" in sg and "AMBER" in sg and "80" in sg
    assert lines[-1] == "MATCH at 1 of 3 peers (SG)"


def test_check_one_value_not_answered_by_every_peer_exits_3_and_json_is_one_document(
    conn: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "down.example", "--kind", "domain", "--json", *conn) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "domain" and doc["kind_guessed"] is False
    assert doc["verdict"] == "incomplete"
    assert [(p["peer_id"], p["status"], p["detail"]) for p in doc["peers"]] == [
        ("SG", "no_match", ""),
        ("TH", "no_match", ""),
        ("LA", "unavailable", "deadline"),
    ]


def test_check_json_then_sighting_from_its_metadata(
    conn: list[str], node: tuple[StandIn, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "+60123456789", "--json", *conn) == 1
    doc = json.loads(capsys.readouterr().out)
    (hit,) = [p for p in doc["peers"] if p["status"] == "match"]
    m = hit["metadata"]
    argv = [
        "sighting",
        "--peer",
        hit["peer_id"],
        "--kind",
        doc["kind"],
        "--tier",
        m["tier"],
        "--version",
        str(m["version"]),
        "--tag",
        m["tag"].upper(),
    ]
    assert petanda(*argv, *conn) == 0
    assert capsys.readouterr().out == "recorded\n"
    assert node[0].sightings == [Sighting("SG", "phone", "oprf", 7, "ab" * 16)]
    argv[-1] = "ee"
    assert petanda(*argv, *conn) == 1
    assert capsys.readouterr().out == "not recorded\n"


def test_check_refused_value_is_exit_2_with_the_node_reason(
    conn: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "refuse-me", "--kind", "phone", *conn) == 2
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == "petanda: the node refused phone 'refuse-me': invalid phone: too short"
    )
    assert petanda("check", "refuse-me", "--kind", "phone", "--json", *conn) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "invalid phone: too short"


def test_check_ambiguous_value_asks_for_kind_before_calling(
    conn: list[str], node: tuple[StandIn, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "hello", *conn) == 2
    assert "give --kind" in capsys.readouterr().out
    assert node[0].batches == []


def test_check_file_batches_of_1000_one_output_row_per_input_row(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "leads.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "kind", "value"])
        for i in range(2300):
            if i == 5:
                w.writerow(["C5", "fax", "123"])
            elif i == 1500:
                w.writerow(["C1500", "phone", "+60123456789"])
            else:
                w.writerow([f"C{i}", "domain", f"d{i}.example"])
        f.write("C-bad\n")  # too few columns, line 2302
    out = tmp_path / "results.csv"
    assert petanda("check", "--file", str(src), "--out", str(out), *conn) == 2
    assert [len(b) for b in node[0].batches] == [1000, 1000, 299]
    with out.open(newline="") as f:
        result = list(csv.DictReader(f))
    assert len(result) == 2301 and list(result[0]) == list(CSV_COLUMNS)
    assert [int(r["line"]) for r in result] == list(range(2, 2303))
    assert result[5]["error"] == "unknown kind 'fax'" and result[5]["line"] == "7"
    assert result[1500]["verdict"] == "match" and json.loads(result[1500]["matches"])[0]["tag"] == "ab" * 16
    assert result[-1]["line"] == "2302" and "columns" in result[-1]["error"]
    assert not (tmp_path / "results.csv.partial").exists()
    err = capsys.readouterr()
    assert (
        err.err.strip().splitlines()[-1]
        == "2301 rows: 1 match, 2298 no match, 0 incomplete, 2 errors (2 malformed; lines 7, 2302)"
    )


def test_check_file_jsonl_to_stdout_exit_1(
    conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "leads.jsonl"
    src.write_text('{"value": "scam@example.com"}\n\n{"kind": "phone", "value": "0199999999"}\n')
    assert petanda("check", "--file", str(src), "--format", "jsonl", "--quiet", *conn) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    docs = [json.loads(line) for line in captured.out.splitlines()]
    assert [(d["line"], d["kind"], d["verdict"]) for d in docs] == [
        (1, "email", "match"),
        (3, "phone", "no_match"),
    ]
    assert docs[0]["peers"][0]["metadata"]["tier"] == "hmac"


def test_check_file_failure_keeps_partial_results(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node[0].fail_on_batch = 2
    src = tmp_path / "in.csv"
    src.write_text("".join(f"domain,d{i}.example\n" for i in range(15)))
    out = tmp_path / "out.csv"
    assert petanda("check", "--file", str(src), "--out", str(out), "--batch-size", "10", *conn) == 2
    assert "unreachable: store down" in capsys.readouterr().out
    assert not out.exists()
    assert len((tmp_path / "out.csv.partial").read_text().splitlines()) == 11  # header + first batch


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "petanda: the node refused your certificate: auditors may not check",
        ),
        (grpc.StatusCode.INVALID_ARGUMENT, "petanda: at most 1000 queries"),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "petanda: the node refused: rate limit or quota exhausted: daily quota",
        ),
    ],
)
def test_node_errors_are_one_line(
    conn: list[str],
    node: tuple[StandIn, int],
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    message: str,
) -> None:
    node[0].abort = (code, message.rsplit(": ", 1)[-1])
    assert petanda("check", "x.example", *conn) == 2
    assert capsys.readouterr().out == message + "\n"


def test_untrusted_certificate_or_closed_port_is_unreachable(
    conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_pki(tmp_path / "other")  # another CA: the handshake fails both ways
    argv = [*conn[:2], "--ca", str(other.ca), "--cert", str(other.cert), "--key", str(other.key)]
    assert petanda("check", "x.example", "--deadline-ms", "1", *argv) == 2
    assert capsys.readouterr().out.startswith(f"petanda: node {conn[1]} unreachable: ")
    port = closed_port()
    assert petanda("check", "x.example", *["--node", f"127.0.0.1:{port}", *conn[2:]]) == 2
    assert capsys.readouterr().out.startswith(f"petanda: node 127.0.0.1:{port} unreachable: ")


def test_missing_connection_settings_are_one_line(
    conn: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "x.example", *conn[:4]) == 2
    out = capsys.readouterr().out
    assert out.startswith("petanda: missing settings cert, key: give cert") and out.count("\n") == 1


def test_check_usage_errors(conn: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv, reason in [
        (("check",), "nothing to check"),
        (("check", "x.example", "--file", "f.csv"), "not both"),
        (("check", "x.example", "--out", "o.csv"), "--out is for --file"),
        (("check", "x.example", "--kind", "fax"), "unknown kind 'fax'"),
        (("check", "--file", str(tmp_path / "nope.csv")), "cannot read"),
    ]:
        assert petanda(*argv, *conn) == 2
        assert reason in capsys.readouterr().out


def test_help_epilog_documents_exit_status() -> None:
    parser = argparse.ArgumentParser(prog="petanda")
    sub = parser.add_subparsers()
    check_cli.add_check_commands(sub)
    text = sub.choices["check"].format_help()
    assert (
        "exit status:" in text
        and "0  no peer holds" in text
        and "1  at least one" in text
        and "2  an error" in text
    )


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_key_file_mode_is_enforced(
    conn: list[str], pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(pki.key.read_bytes())
    os.chmod(loose, 0o644)
    assert petanda("check", "x.example", *conn[:6], "--key", str(loose)) == 2
    assert "too open" in capsys.readouterr().out


# --- frictions of check --file and of the table --------------------------------------------------------


def test_a_binary_file_is_refused_once_as_not_text(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "leads.xlsx"
    src.write_bytes(random.Random(7).randbytes(20_000))  # a spreadsheet, an archive: binary
    out = tmp_path / "results.csv"
    assert petanda("check", "--file", str(src), "--out", str(out), *conn) == 2
    assert capsys.readouterr().out == (
        f"petanda: {src}: not a text file (it holds NUL bytes in its first 8192 bytes); give CSV or JSON "
        "lines in UTF-8 (a spreadsheet: save it as CSV UTF-8)\n"
    )
    assert node[0].batches == [] and not out.exists() and not (tmp_path / "results.csv.partial").exists()
    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("kind,value\nphone,+60123456789\n", encoding="utf-16")
    assert petanda("check", "--file", str(utf16), *conn) == 2
    assert "not a text file (it holds NUL bytes" in capsys.readouterr().out
    latin1 = tmp_path / "latin1.csv"  # a stray byte of another encoding stays a bad row of its own
    latin1.write_bytes(b"kind,value,case\nphone,+60123456789,Jos\xe9\ndomain,x.example,ok\n")
    assert petanda("check", "--file", str(latin1), "--quiet", *conn) == 1
    assert capsys.readouterr().out.count("\n") == 3


@pytest.mark.parametrize("text", ["", "\n\n  \n", "kind,value\n", "case,value\n\n"])
def test_a_file_without_rows_says_so_and_exits_2(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    src = tmp_path / "empty.csv"
    src.write_text(text)
    out = tmp_path / "results.csv"
    assert petanda("check", "--file", str(src), "--out", str(out), *conn) == 2
    assert capsys.readouterr().out.endswith(
        f"petanda: {src}: no rows to check (it is empty, or holds only blank lines, a header)\n"
    )
    assert node[0].batches == [] and not out.exists() and not (tmp_path / "results.csv.partial").exists()


def test_a_dead_peer_is_one_short_line_in_the_table_and_whole_in_json_and_csv(
    conn: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert petanda("check", "dead.example", "--kind", "domain", *conn) == 3  # LA did not answer
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7  # title, header, rule, three peers, summary: no wrapped lines
    (la,) = [line for line in lines if line.startswith("LA")]
    assert "unreachable (connection refused)" in la and "failed to connect" not in la
    assert petanda("check", "dead.example", "--kind", "domain", "--json", *conn) == 3
    (peer,) = [p for p in json.loads(capsys.readouterr().out)["peers"] if p["peer_id"] == "LA"]
    assert peer["detail"] == DEAD
    src = tmp_path / "in.csv"
    src.write_text("domain,dead.example\n")
    assert petanda("check", "--file", str(src), *conn) == 3
    captured = capsys.readouterr()
    (row,) = csv.DictReader(io.StringIO(captured.out))
    assert json.loads(row["details"]) == {"LA": DEAD} and row["verdict"] == "incomplete"
    assert captured.err.splitlines()[-2:] == [
        "LA: 1 row unavailable: unreachable (connection refused)",
        "1 rows: 0 match, 0 no match, 1 incomplete, 0 errors; 1 not answered by every peer (1 unavailable)",
    ]


@pytest.mark.parametrize(
    ("status", "detail", "short"),
    [
        (PeerStatus.UNAVAILABLE, DEAD, "unreachable (connection refused)"),
        (PeerStatus.UNAVAILABLE, "LA: DEADLINE_EXCEEDED: Deadline Exceeded", "no answer in time"),
        (PeerStatus.UNAVAILABLE, "deadline exceeded", "no answer in time"),
        (PeerStatus.UNAVAILABLE, "LA: UNAVAILABLE: Ssl handshake failed: CERTIFICATE_VERIFY_FAILED",
         "unreachable (TLS handshake failed)"),
        (PeerStatus.UNAVAILABLE, "invalid answer: the DLEQ proof does not verify", "invalid answer"),
        (PeerStatus.RATE_LIMITED,
         "TH: OPRF rate limit of MY for phone reached (100/s, burst 2000); retry in 9.2 s",
         "rate limit, retry in 10 s"),
        (PeerStatus.RATE_LIMITED,
         "TH: daily OPRF quota of MY for phone used up (20000 of 20000 today, 1000 asked); it resets at "
         "2026-11-30T00:00:00Z (in 75600 s)", "daily quota, resets 00:00 UTC"),
        (PeerStatus.RATE_LIMITED,
         "TH: holder-wide daily OPRF quota of TH for phone used up (100000 of 100000 today across all "
         "peers, 1000 asked); it resets at 2026-11-30T00:00:00Z (in 75600 s)",
         "holder-wide daily quota, resets 00:00 UTC"),
        (PeerStatus.RATE_LIMITED, "TH: too many calls from MY; retry in 1.0 s",
         "call rate limit, retry in 1 s"),
        (PeerStatus.STALE, "HMAC key differs from the peer's (federation secret mismatch)",
         "HMAC key differs (federation secret mismatch)"),
        (PeerStatus.STALE, "filter or records not cached " * 3,
         "filter or records not cached filter or records\u2026"),
        (PeerStatus.STALE, "never synced", "never synced"),
    ],
)  # fmt: skip
def test_short_detail_names_the_limit_or_the_fault_in_one_short_line(
    status: PeerStatus, detail: str, short: str
) -> None:
    got = short_detail(status, detail, detail[:2])
    assert got == short and len(got) <= 48 and "\n" not in got


def test_table_rows_show_the_short_detail() -> None:
    outcome = Outcome("x", peers=(PeerOutcome("LA", PeerStatus.UNAVAILABLE, detail=DEAD),))
    ((_, cells),) = table_rows(outcome)
    assert cells[2] == "unreachable (connection refused)"


def test_resume_needs_out_and_an_unfinished_run_is_not_overwritten(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("".join(f"domain,d{i}.example\n" for i in range(25)))
    out = tmp_path / "out.csv"
    assert petanda("check", "--file", str(src), "--resume", *conn) == 2
    assert "--resume needs --out" in capsys.readouterr().out
    assert petanda("check", "x.example", "--resume", *conn) == 2
    assert "--resume is for --file" in capsys.readouterr().out

    node[0].exhaust_from_batch = 3  # the node's daily quota runs out after two batches of 10
    assert petanda("check", "--file", str(src), "--out", str(out), "--batch-size", "10", *conn) == 3
    err = capsys.readouterr().err
    assert (
        f"petanda: stopped before the end of {src}: the node refused: rate limit or quota exhausted: " in err
    )
    assert "daily check quota of MY/alice used up (20 of 25 today, 10 asked); it resets at 00:00 UTC" in err
    partial = tmp_path / "out.csv.partial"
    assert f"the results so far are in {partial}: run the same command with --resume" in err
    assert len(partial.read_text().splitlines()) == 21 and not out.exists()

    assert petanda("check", "--file", str(src), "--out", str(out), *conn) == 2  # would lose them
    assert "give --resume to go on with it" in capsys.readouterr().out
    kept = partial.read_bytes()
    argv = ("check", "--file", str(src), "--out", str(out), "--resume", "--format", "jsonl", *conn)
    assert petanda(*argv) == 2
    assert f"{partial} is not a JSON-lines output of petanda check" in capsys.readouterr().out
    assert partial.read_bytes() == kept  # a refused resume leaves the earlier results as they were

    node[0].exhaust_from_batch = None
    node[0].batches.clear()
    assert petanda("check", "--file", str(src), "--out", str(out), "--resume", "--quiet", *conn) == 0
    assert [len(b) for b in node[0].batches] == [5]  # only the rows not answered yet
    assert not partial.exists() and not (tmp_path / "out.csv.resuming").exists()
    assert [r["line"] for r in csv.DictReader(out.open())] == [str(i) for i in range(1, 26)]
    # A complete output can be resumed too: nothing is asked, nothing changes.
    before = out.read_bytes()
    node[0].batches.clear()
    assert petanda("check", "--file", str(src), "--out", str(out), "--resume", "--quiet", *conn) == 0
    assert node[0].batches == [] and out.read_bytes() == before


def test_a_resume_killed_half_way_is_merged_on_the_next_one(
    conn: list[str], node: tuple[StandIn, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill while resuming leaves OUT.resuming (newer) beside OUT.partial: the next --resume merges them."""
    src = tmp_path / "in.csv"
    src.write_text("".join(f"domain,d{i}.example\n" for i in range(30)))
    whole = tmp_path / "whole.csv"
    assert petanda("check", "--file", str(src), "--out", str(whole), "--quiet", *conn) == 0
    records = whole.read_text().splitlines(keepends=True)
    out = tmp_path / "out.csv"
    (tmp_path / "out.csv.partial").write_text("".join(records[:11]))  # rows 1-10 of a killed run
    (tmp_path / "out.csv.resuming").write_text("".join(records[:21]) + records[21][:9])  # 1-20, torn
    node[0].batches.clear()
    assert petanda("check", "--file", str(src), "--out", str(out), "--resume", "--quiet", *conn) == 0
    assert [len(b) for b in node[0].batches] == [10]  # rows 21-30 only
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.csv"]
