"""Visibility of the enumeration budget: the home numbering space from phonenumbers' metadata, each peer's
evaluation volume over 1, 7 and 30 days against its quota and that space, the ``peer.enumeration_alert``
rules, and the same figures in ``petanda-node status`` and ``petanda audit report`` (real servers)."""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client._proto.petanda.v1 import peer_pb2
from client.protocol import oprf
from client.protocol.auditlog import decode_entry
from client.protocol.enumeration import (
    RULE_QUOTA,
    RULE_SPACE,
    Rules,
    Volume,
    assess,
    count_matches,
    day_of,
    numbering_space,
)
from client.protocol.kinds import kind_code
from client.tools.audit import fetch_log
from client.tools.report import exposure, summarise
from node.cli import main as node_main
from node.config import load_config
from node.usage import SPACE_TYPES
from tests.fednet import Net, start_net
from tests.test_audit_verify import run as audit_run

pytestmark = pytest.mark.timeout(120)

DAY = 86_400

# --- the numbering space ------------------------------------------------------------------------------


def _brute(patterns: list[str], length: int) -> int:
    compiled = [re.compile(p) for p in patterns]
    return sum(
        1
        for digits in itertools.product("0123456789", repeat=length)
        if any(c.fullmatch("".join(digits)) for c in compiled)
    )


_ATOMS = st.sampled_from(["\\d", "[2-5]", "[0-46-9]", "7", "(?:1|2\\d)", "(?:[13]\\d?)", "(?:8|9[01])"])
_PIECES = st.builds(
    lambda atom, quantifier: atom + quantifier, _ATOMS, st.sampled_from(["", "?", "{2}", "{1,2}", "{0,3}"])
)
_PATTERNS = st.builds("".join, st.lists(_PIECES, min_size=1, max_size=3))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.builds(lambda a, b: f"{a}|{b}", _PATTERNS, _PATTERNS), min_size=1, max_size=2))
def test_counting_matches_agrees_with_brute_force(patterns: list[str]) -> None:
    for length in range(1, 5):
        assert count_matches(patterns, length) == _brute(patterns, length), (patterns, length)


def test_numbering_spaces_of_known_plans() -> None:
    # SG mobile: 80[1-9]\d{5} | (?:8[1-9]|9[0-8])\d{6}; TL mobile: 7[2-8]\d{6}; TL fixed: 7 digits.
    assert numbering_space("SG") == 9 * 10**5 + 18 * 10**6
    assert numbering_space("TL") == 7 * 10**6
    assert numbering_space("TL", SPACE_TYPES) == 7 * 10**6 + (5 + 9 + 4) * 10**5
    assert numbering_space("XX") == 0
    for region in ("BN", "KH", "ID", "LA", "MY", "MM", "PH", "SG", "TH", "TL", "VN"):
        assert 10**6 < numbering_space(region) <= numbering_space(region, SPACE_TYPES) < 10**12


# --- volumes and rules ----------------------------------------------------------------------------------


def _ok(ts: int, peer: str, count: int, kind: str = "phone", quota: int = 20) -> dict[str, Any]:
    return {
        "ts": ts,
        "action": "peer.evaluate_oprf",
        "actor": peer,
        "role": "peer",
        "result": "ok",
        "kind": kind,
        "count": count,
        "daily_quota": quota,
    }


D0 = 19_875  # 2024-06-01


def test_volume_counts_only_evaluated_batches_and_round_trips() -> None:
    entries = [
        _ok(D0 * DAY + 5, "TH", 7),
        _ok(D0 * DAY + 9, "TH", 4, kind="email"),
        {**_ok(D0 * DAY + 10, "TH", 100), "result": "rate_limited"},
        {**_ok(D0 * DAY + 11, "TH", 100), "result": "invalid"},
        _ok((D0 + 1) * DAY, "SG", 3),
        {"ts": "bad", "action": "peer.evaluate_oprf", "actor": "TH", "count": 5},
    ]
    volume = Volume().extend(entries)
    assert volume.entries == 6
    assert (volume.on("TH", "phone", D0), volume.on("TH", "email", D0), volume.on("SG", "phone", D0 + 1)) == (
        7,
        4,
        3,
    )
    assert volume.total("TH", "phone", last_day=D0 + 6, days=7) == 7
    assert volume.total("TH", "phone", last_day=D0 + 7, days=7) == 0
    assert volume.quota_seen("TH", "phone", D0 + 3) == 20
    again = Volume.from_json(json.loads(json.dumps(volume.to_json())))
    assert again == volume
    volume.prune(D0 + 1)
    assert volume.on("TH", "phone", D0) == 0 and volume.on("SG", "phone", D0 + 1) == 3


def test_quota_rule_needs_consecutive_days_above_the_share() -> None:
    def quota_of(peer: str, kind: str, day: int) -> int:
        return 20

    rules = Rules(quota_share=0.5, days=3, space_share=0.01)
    volume = Volume().extend(
        [_ok(d * DAY, "TH", n) for d, n in ((D0, 11), (D0 + 1, 11), (D0 + 2, 10), (D0 + 3, 11), (D0 + 4, 11))]
    )
    found = {d: assess(volume, day=d, quota_of=quota_of, space=0, rules=rules) for d in range(D0, D0 + 7)}
    assert all(not alerts for alerts in found.values())  # 10 is not more than half of 20: the run breaks
    volume.add(_ok((D0 + 5) * DAY, "TH", 12))
    [alert] = assess(volume, day=D0 + 5, quota_of=quota_of, space=0, rules=rules)
    assert (alert.peer, alert.kind, alert.rule, alert.volume, alert.threshold) == (
        "TH",
        "phone",
        RULE_QUOTA,
        12,
        10,
    )
    assert alert.fields()["day"] == "2024-06-06"


def test_space_rule_counts_thirty_days_of_phone_evaluations() -> None:
    rules = Rules(space_share=0.01)
    volume = Volume().extend([_ok((D0 + d) * DAY, "TH", 40, quota=10**6) for d in range(30)])
    volume.add(_ok(D0 * DAY, "TH", 10**6, kind="email", quota=10**6))  # not a phone number

    def quota_of(peer: str, kind: str, day: int) -> int:
        return 10**6

    space = 120_000  # 1 %: 1200, exactly the 30 days' volume, which is not above it
    assert not assess(volume, day=D0 + 29, quota_of=quota_of, space=space, rules=rules)
    volume.add(_ok((D0 + 29) * DAY, "TH", 1))
    [alert] = assess(volume, day=D0 + 29, quota_of=quota_of, space=space, rules=rules)
    assert (alert.kind, alert.rule, alert.volume, alert.threshold) == ("phone", RULE_SPACE, 1201, 1200)
    # A month later the window has moved on; without a known space the rule is off.
    assert not assess(volume, day=D0 + 59, quota_of=quota_of, space=space, rules=rules)
    assert not assess(volume, day=D0 + 29, quota_of=quota_of, space=0, rules=rules)


# --- on a node, in status and in the report ---------------------------------------------------------------

#: MY's home space (mobile and fixed) is ~3.4e8: a space share of 1e-7 makes the threshold 34.
LIMITS: dict[str, object] = {
    "max_batch": 20,
    "oprf_burst": 100,
    "oprf_rate_per_s": 100.0,
    "oprf_daily_quota": 20,
    "enumeration_alert_space_share": 1e-7,
    "peer_rpc_rate_per_s": 1000.0,
    "peer_rpc_burst": 1000,
}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """MY, TH and SG; the clock starts at 01:00 UTC three days before the real today, so that the last
    day of the test is the real today (``petanda-node status`` reads the real clock)."""
    today = day_of(time.time())
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG"], now=(today - 3) * DAY + 3600, limits=LIMITS)
    try:
        yield net
    finally:
        net.close()


def _evaluate(net: Net, peer: str, n: int, kind: str = "phone") -> None:
    stub = net.peer_stub("MY", as_member=peer)
    elements = oprf.blind([f"v{i}".encode() for i in range(n)], oprf.MODE_VOPRF)[1]
    request = peer_pb2.EvaluateOprfRequest(
        epoch=net.node("MY").epoch, kind=kind_code(kind), blinded_elements=elements, verifiable=True
    )
    assert len(stub.EvaluateOprf(request, timeout=10).evaluated_elements) == n


def _alerts(net: Net) -> list[dict[str, Any]]:
    store = net.node("MY").store
    entries = [decode_entry(e) for e in store.audit_entries(0, store.audit_size())]
    return [e for e in entries if e["action"] == "peer.enumeration_alert"]


def test_status_and_report_show_volumes_and_alert_on_an_enumeration_pattern(
    net: Net, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    my = net.node("MY")
    space = numbering_space("MY", SPACE_TYPES)
    assert 34 <= space * 1e-7 < 35
    with caplog.at_level(logging.WARNING, logger="node.usage"):
        for day in range(3):  # TH takes 11 of its 20 a day, three days running; SG 5; TH also 3 e-mails
            _evaluate(net, "TH", 11)
            _evaluate(net, "SG", 5)
            _evaluate(net, "TH", 3, kind="email")
            my.maintain(now=net.clock.now)
            assert len(_alerts(net)) == (1 if day == 2 else 0)
            net.clock.now += DAY
        # Day 4 (today): 44 phone numbers in 30 days, above 1e-7 of the space (34).
        _evaluate(net, "TH", 11)
        my.maintain(now=net.clock.now)
        my.maintain(now=net.clock.now + 60)  # once per peer, kind, rule and day
    alerts = _alerts(net)
    assert [(a["peer"], a["kind"], a["rule"], a["volume"], a["threshold"]) for a in alerts] == [
        ("TH", "phone", "quota_share", 11, 10),
        ("TH", "phone", "quota_share", 11, 10),
        ("TH", "phone", "numbering_space", 44, 34),
    ]
    warnings = [r for r in caplog.records if "possible enumeration by peer TH" in r.getMessage()]
    assert len(warnings) == 3

    status = my.status(now=net.clock.now)["oprf_usage"]
    th = status["peers"]["TH"]
    assert th["daily_quota"] == 20 and th["holder_pool"] is True
    phone = th["kinds"]["phone"]
    assert (phone["1d"], phone["7d"], phone["30d"]) == (11, 44, 44)
    assert phone["quota_used_1d"] == 0.55 and phone["space_share_30d"] == round(44 / space, 6)
    assert th["kinds"]["email"]["30d"] == 9 and "space_share_30d" not in th["kinds"]["email"]
    assert status["peers"]["SG"]["kinds"]["phone"]["30d"] == 15
    assert status["numbering_space"] == {"mobile": numbering_space("MY"), "mobile_and_fixed": space}
    assert status["holder_used_today"] == {"phone": 11}
    assert {(a["rule"], a["day"]) for a in status["alerts"]} >= {("quota_share", status["day"])}

    # petanda-node status --json (its own process view: a second Node on the store, the real clock).
    config = str(net.running["MY"].member.config)
    assert node_main(["status", "--config", config, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["oprf_usage"]["peers"]["TH"]["kinds"]["phone"]["30d"] == 44
    assert printed["rotation"]["epoch_days"] == 30
    assert node_main(["status", "--config", config]) == 0
    table = capsys.readouterr().out
    assert "OPRF evaluations" in table and "enumeration alert" in table and "next rotation" in table

    # petanda audit fetch + report: the same figures, from the log alone.
    directory = tmp_path / "audit"
    fetch_log(net.auditor("MY"), directory, now=int(net.clock.now))
    lines = (directory / "entries.jsonl").read_bytes().splitlines()
    summary = summarise(decode_entry(line) for line in lines)
    assert {(f["peer"], f["rule"]) for f in exposure(summary, "MY")["found"]} == {("TH", "quota_share")}
    report = exposure(summary, "MY", rules=Rules(space_share=1e-7))  # as MY's limits say
    assert report["figures"]["TH"]["phone"] == {**phone, "daily_quota": 20}
    assert {(f["peer"], f["rule"], f["days"]) for f in report["found"]} == {
        ("TH", "quota_share", 2),
        ("TH", "numbering_space", 1),
    }
    html = tmp_path / "report.html"
    assert audit_run("report", str(directory), "--html", str(html), "--alert-space-share", "1e-7") == 0
    out = capsys.readouterr().out
    assert "enumeration pattern TH phone: quota_share met on 2 day(s)" in out
    assert "peer.enumeration_alert TH phone" in out
    page = html.read_text()
    assert 'id="exposure"' in page and 'id="enumeration-found"' in page and "numbering_space" in page


def test_the_volume_is_folded_incrementally_and_survives_a_restart(net: Net) -> None:
    my = net.node("MY")
    _evaluate(net, "TH", 7)
    my.maintain(now=net.clock.now)
    folded = json.loads(my.store.get_meta("oprf.usage") or "{}")["entries"]
    assert folded > 0
    _evaluate(net, "TH", 5)
    again = type(my)(load_config(net.running["MY"].member.config), my.store, clock=net.clock)
    assert again.status(now=net.clock.now)["oprf_usage"]["peers"]["TH"]["kinds"]["phone"]["1d"] == 12
