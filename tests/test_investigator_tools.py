"""The investigators' other tools, run as their hosts run them, against a live federation.

- MISP: the real ``misp-modules`` service (installed from PyPI into its own environment,
  ``tests/toolvenv.py``) loads ``integrations/misp_modules/expansion/petanda.py`` as a custom module;
  the tests POST ``/query`` as MISP does and read what MISP would show.
- Cortex: ``integrations/cortex/Petanda/petanda_analyzer.py`` runs in an environment holding only
  ``cortexutils``, as Cortex 3 runs an analyzer: ``JOB_DIR/input/input.json`` in, ``output/output.json`` out.

Both call ``petanda check --json`` of this checkout with an investigator certificate of their own person
(``MY/misp``, ``MY/cortex``) against MY's node; SG holds the planted indicators, TH holds one of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from node.demodata import write_csv
from node.pki import issue
from tests.fednet import Net, start_net
from tests.toolvenv import ToolUnavailable, tool_venv

ROOT = Path(__file__).resolve().parent.parent
MISP_MODULES = ROOT / "integrations" / "misp_modules"
ANALYZER = ROOT / "integrations" / "cortex" / "Petanda" / "petanda_analyzer.py"
PETANDA = str(Path(sys.executable).parent / "petanda")
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()

PHONE = "+65 9123 4567"  # SG holds it
WALLET = "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"  # SG holds it
DOMAIN = "parcel-fee.example"  # TH holds it
NOBODY_IP = "198.51.100.20"  # nobody holds it


def _row(kind: str, value: str, region: str, category: str, tlp: str = "AMBER") -> dict[str, str]:
    return {
        "kind": kind,
        "value": value,
        "region": region,
        "category": category,
        "first_seen": "2026-03-02",
        "last_seen": "2026-10-15",
        "confidence": "85",
        "tlp": tlp,
        "reports": "7",
    }


HOLDINGS = {
    "MY": [_row("domain", "my-own.example", "MY", "phishing")],
    "SG": [
        _row("phone", PHONE, "SG", "investment"),
        _row("crypto_wallet", WALLET, "SG", "investment", tlp="GREEN"),
    ],
    "TH": [_row("domain", DOMAIN, "TH", "impersonation_courier")],
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Net, dict[str, list[str]]]]:
    """MY, SG and TH synced; the connection flags of the MISP's and the Cortex's own people at MY."""
    root = tmp_path_factory.mktemp("tools")
    net = start_net(root / "net", list(HOLDINGS), now=NOW)
    try:
        for node_id, rows in HOLDINGS.items():
            path = root / f"{node_id}.csv"
            write_csv(path, rows)
            assert net.node(node_id).ingest([path], now=NOW).rejections == []
        net.sync_all()
        flags = {}
        for person in ("misp", "cortex"):
            issued = issue(_people_ca(net), role="investigator", id=f"MY/{person}", out_dir=root)
            flags[person] = _flags(net, issued.cert, issued.key)
        yield net, flags
    finally:
        net.close()


def _people_ca(net: Net) -> Path:
    """MY's people-CA, which issues MY's people (the federation CA issues none: ADR 0013)."""
    people_ca = net.federation.members["MY"].people_ca
    assert people_ca is not None
    return people_ca


@pytest.fixture(scope="module")
def fed_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[str]]]:
    """MY and SG synced, then SG stopped: the connection flags of MY's MISP and Cortex people."""
    root = tmp_path_factory.mktemp("down")
    net = start_net(root / "net", ["MY", "SG"], now=NOW)
    try:
        for node_id in ("MY", "SG"):
            write_csv(root / f"{node_id}.csv", HOLDINGS[node_id])
            assert net.node(node_id).ingest([root / f"{node_id}.csv"], now=NOW).rejections == []
        net.sync_all()
        net.stop("SG")
        flags = {}
        for person in ("misp", "cortex"):
            issued = issue(_people_ca(net), role="investigator", id=f"MY/{person}", out_dir=root)
            flags[person] = _flags(net, issued.cert, issued.key)
        yield flags
    finally:
        net.close()


def _flags(net: Net, cert: Path, key: Path) -> list[str]:
    """The connection flags of a person of MY with ``cert`` and ``key``."""
    member = net.federation.members["MY"]
    return ["--node", member.address, "--ca", str(net.federation.ca), "--cert", str(cert), "--key", str(key)]


def _config(flags: list[str], **more: Any) -> dict[str, Any]:
    """The module or analyzer config of a person's connection flags (``--node X`` -> ``node: X``)."""
    config: dict[str, Any] = {"petanda": PETANDA}
    config.update({flags[i][2:]: flags[i + 1] for i in range(0, len(flags), 2)})
    config.update(more)
    return config


def _clean_env(tmp: Path) -> dict[str, str]:
    """The environment of a tool: no PETANDA_* settings and no client.toml of the person running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETANDA_")}
    env["XDG_CONFIG_HOME"] = str(tmp / "no-config")
    return env


def _venv(name: str, requirements: list[str]) -> Path:
    try:
        return tool_venv(name, requirements)
    except ToolUnavailable as exc:
        pytest.skip(f"{name} could not be installed from PyPI into its own environment: {exc}")


@contextlib.contextmanager
def _silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says a word (a node that hangs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# --- MISP ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def misp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The misp-modules service with the petanda module loaded, on 127.0.0.1: its base URL."""
    venv = _venv("misp-modules", ["misp-modules>=3,<4"])
    tmp = tmp_path_factory.mktemp("misp")
    port = int(_closed_port().rpartition(":")[2])
    log = (tmp / "misp-modules.log").open("w")
    process = subprocess.Popen(
        [str(venv / "bin" / "python"), "-m", "misp_modules", "-l", "127.0.0.1", "-p", str(port),
         "-c", str(MISP_MODULES)],
        stdout=log, stderr=subprocess.STDOUT, env=_clean_env(tmp), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(
                    f"misp-modules exited {process.returncode}: {(tmp / 'misp-modules.log').read_text()}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/healthcheck", timeout=2) as answer:
                    if json.load(answer) == {"status": True}:
                        break
            time.sleep(0.1)
        else:
            pytest.fail("misp-modules did not answer /healthcheck within 60 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _post(url: str, body: bytes | dict[str, Any]) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/query", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        doc: dict[str, Any] = json.load(answer)
    return doc


def _attribute(misp_type: str, value: str) -> dict[str, Any]:
    """An attribute as MISP 2.4/2.5 sends it to a misp_standard module."""
    return {
        "id": "42",
        "event_id": "7",
        "object_id": "0",
        "category": "Network activity" if misp_type != "phone-number" else "Person",
        "type": misp_type,
        "value": value,
        "to_ids": True,
        "uuid": str(uuid.uuid4()),
        "timestamp": "1764400000",
        "distribution": "5",
        "sharing_group_id": "0",
        "comment": "",
        "deleted": False,
        "disable_correlation": False,
        "first_seen": None,
        "last_seen": None,
    }


def _by_peer(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert "error" not in answer, answer
    attributes = answer["results"]["Attribute"]
    by_peer = {}
    for attribute in attributes:
        tags = [t["name"] for t in attribute["Tag"]]
        # every result: this organisation only, three ways
        assert attribute["distribution"] == "0" and "tlp:amber+strict" in tags
        assert "this organisation only" in attribute["comment"]
        assert attribute["type"] == "text" and attribute["to_ids"] is False
        (peer,) = [t.split('"')[1] for t in tags if t.startswith("petanda:peer=")]
        by_peer[peer] = attribute
    return by_peer


def test_misp_modules_lists_petanda_as_an_expansion_module_only(misp: str) -> None:
    with urllib.request.urlopen(misp + "/modules", timeout=10) as answer:
        modules = {m["name"]: m for m in json.load(answer)}
    module = modules["petanda"]
    assert module["type"] == "expansion"
    assert module["meta"]["module-type"] == ["expansion"]  # never hover: a hover would spend quota
    assert {"phone-number", "ip-src", "domain", "url", "email-src", "iban", "btc"} <= set(
        module["mispattributes"]["input"]
    )
    assert module["mispattributes"]["format"] == "misp_standard"
    assert {"petanda", "node", "ca", "cert", "key", "timeout_s"} <= set(module["meta"]["config"])


def test_misp_query_answers_per_peer_with_the_match_marked_for_this_organisation_only(
    misp: str, fed: tuple[Net, dict[str, list[str]]]
) -> None:
    _net, flags = fed
    query = {
        "module": "petanda",
        "event_id": "7",
        "attribute_uuid": "",
        "attribute": _attribute("phone-number", PHONE),
        "config": _config(flags["misp"]),
    }
    by_peer = _by_peer(_post(misp, query))
    assert set(by_peer) == {"SG", "TH"}
    sg, th = by_peer["SG"], by_peer["TH"]
    assert sg["value"] == (
        "Petanda: MATCH at SG (category investment, first seen 2026-03-02, last seen 2026-10-15, "
        "confidence 85, TLP AMBER, reports 7)"
    )
    assert 'petanda:status="match"' in [t["name"] for t in sg["Tag"]]
    assert th["value"] == "Petanda: no match at TH"
    assert "phone +6591234567" in sg["comment"]  # the canonical form the node checked


def test_misp_value_travels_on_stdin_never_on_a_command_line(
    misp: str, fed: tuple[Net, dict[str, list[str]]], tmp_path: Path
) -> None:
    """Another user of the MISP host can read command lines (``ps``), not a process's standard input."""
    _net, flags = fed
    wrapper = tmp_path / "petanda-logged"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\nexec {PETANDA} "$@"\n')
    wrapper.chmod(0o755)
    query = {"module": "petanda", "attribute": _attribute("phone-number", PHONE)}
    by_peer = _by_peer(_post(misp, {**query, "config": _config(flags["misp"], petanda=str(wrapper))}))
    assert by_peer["SG"]["value"].startswith("Petanda: MATCH at SG")
    argv = (tmp_path / "argv").read_text()
    assert argv.startswith("check\n--file\n-\n") and "9123" not in argv and "+65" not in argv


def test_misp_older_query_style_and_other_types(misp: str, fed: tuple[Net, dict[str, list[str]]]) -> None:
    _net, flags = fed
    config = _config(flags["misp"])
    older = _by_peer(_post(misp, {"module": "petanda", "btc": WALLET, "config": {**config, "timeout_s": 20}}))
    assert older["SG"]["value"].startswith("Petanda: MATCH at SG (category investment")
    assert "TLP GREEN" in older["SG"]["value"]
    hostname = _by_peer(
        _post(
            misp, {"module": "petanda", "attribute": _attribute("hostname", DOMAIN.upper()), "config": config}
        )
    )
    assert hostname["TH"]["value"].startswith("Petanda: MATCH at TH (category impersonation_courier")
    assert hostname["SG"]["value"] == "Petanda: no match at SG"
    ip = _by_peer(
        _post(misp, {"module": "petanda", "attribute": _attribute("ip-dst", NOBODY_IP), "config": config})
    )
    assert {p: a["value"] for p, a in ip.items()} == {
        "SG": "Petanda: no match at SG",
        "TH": "Petanda: no match at TH",
    }


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"module": "petanda"}, "no 'attribute' object"),
        ({"module": "petanda", "attribute": "+6591234567"}, "'attribute' must be a JSON object"),
        ({"module": "petanda", "attribute": {"type": "phone-number"}}, "'attribute.value' is missing"),
        ({"module": "petanda", "attribute": {"value": PHONE}}, "'attribute.type' is missing"),
        (
            {"module": "petanda", "attribute": {"type": "md5", "value": "d41d8cd9"}},
            "type 'md5' is not checked",
        ),
        ({"module": "petanda", "attribute": {"type": "domain", "value": "  "}}, "value is empty"),
        ({"module": "petanda", "phone-number": 6591234567}, "'phone-number' must be a string"),
        ({"module": "petanda", "attribute": {"type": "url", "value": "x"}, "config": []}, "'config' must be"),
        (
            {
                "module": "petanda",
                "attribute": {"type": "url", "value": "x"},
                "config": {"timeout_s": "soon"},
            },
            "'timeout_s' must be a number of seconds, not 'soon'",
        ),
        (
            {
                "module": "petanda",
                "attribute": {"type": "url", "value": "x"},
                "config": {"petanda": "/nowhere"},
            },
            "the petanda program '/nowhere' cannot be run (config 'petanda')",
        ),
    ],
)
def test_misp_malformed_query_gets_a_clear_error(misp: str, query: dict[str, Any], reason: str) -> None:
    answer = _post(misp, query)
    assert set(answer) == {"error"} and reason in answer["error"], answer


def test_misp_value_the_node_refuses_and_missing_settings_get_petandas_reason(
    misp: str, fed: tuple[Net, dict[str, list[str]]]
) -> None:
    _net, flags = fed
    refused = _post(
        misp,
        {
            "module": "petanda",
            "attribute": _attribute("phone-number", "12"),
            "config": _config(flags["misp"]),
        },
    )
    assert refused["error"].startswith("petanda: ") and "12" in refused["error"], refused
    config = _config(flags["misp"])
    del config["cert"]
    missing = _post(misp, {"module": "petanda", "attribute": _attribute("domain", DOMAIN), "config": config})
    assert "missing setting cert" in missing["error"] and "PETANDA_CERT" in missing["error"], missing


def test_misp_unreachable_or_silent_node_is_an_error_not_a_hang(
    misp: str, fed: tuple[Net, dict[str, list[str]]]
) -> None:
    _net, flags = fed
    query = {"module": "petanda", "attribute": _attribute("domain", DOMAIN)}
    nobody = _closed_port()
    closed = _post(misp, {**query, "config": _config(flags["misp"], node=nobody)})
    assert closed["error"].startswith(f"petanda: node {nobody} unreachable: "), closed
    with _silent_listener() as silent:
        hung = _post(misp, {**query, "config": _config(flags["misp"], node=silent, timeout_s="3")})
    assert hung == {"error": "no answer from petanda check within 3 s (config 'timeout_s')"}


def test_misp_peer_that_does_not_answer_is_named_with_its_reason(
    misp: str, fed_down: dict[str, list[str]]
) -> None:
    query = {"module": "petanda", "attribute": _attribute("phone-number", PHONE)}
    (sg,) = _by_peer(_post(misp, {**query, "config": _config(fed_down["misp"])})).values()
    assert sg["value"].startswith("Petanda: SG did not answer (unavailable: "), sg
    assert 'petanda:status="unavailable"' in [t["name"] for t in sg["Tag"]]


def test_misp_modules_itself_refuses_a_body_that_is_not_json(misp: str) -> None:
    """Not the module's doing, but what MISP meets: the service answers, and goes on serving."""
    with pytest.raises(urllib.error.HTTPError) as raised:
        _post(misp, b"{not json")
    assert raised.value.code == 500
    with urllib.request.urlopen(misp + "/healthcheck", timeout=10) as answer:
        assert json.load(answer) == {"status": True}


# --- Cortex -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cortex_python() -> Path:
    """The Python of an environment holding only cortexutils (petanda is not importable there)."""
    return _venv("cortexutils", ["cortexutils>=2.2,<3"]) / "bin" / "python"


def _run_job(
    python: Path, job_dir: Path, job: bytes | dict[str, Any], tmp: Path
) -> tuple[int, dict[str, Any]]:
    """Run the analyzer as Cortex 3 does: the job in JOB_DIR/input/input.json, its report from output/."""
    (job_dir / "input").mkdir(parents=True)
    (job_dir / "input" / "input.json").write_bytes(
        job if isinstance(job, bytes) else json.dumps(job).encode()
    )
    done = subprocess.run(
        [str(python), str(ANALYZER), str(job_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(tmp),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    report: dict[str, Any] = json.loads((job_dir / "output" / "output.json").read_text())
    return done.returncode, report


def _job(data_type: str, data: str, config: dict[str, Any]) -> dict[str, Any]:
    """A job as Cortex writes it for an analyzer."""
    return {
        "data": data,
        "dataType": data_type,
        "tlp": 2,
        "pap": 2,
        "message": "case #12",
        "parameters": {},
        "config": {**config, "service": "check", "check_tlp": False, "auto_extract": False},
    }


def test_cortex_analyzer_reports_each_peer_with_a_summary_taxonomy(
    cortex_python: Path, fed: tuple[Net, dict[str, list[str]]], tmp_path: Path
) -> None:
    _net, flags = fed
    code, report = _run_job(
        cortex_python, tmp_path / "job", _job("phone_number", PHONE, _config(flags["cortex"])), tmp_path
    )
    assert code == 0 and report["success"] is True, report
    full = report["full"]
    assert (full["kind"], full["canonical"], full["verdict"]) == ("phone", "+6591234567", "match")
    assert "this organisation only" in full["use"]
    peers = {p["peer_id"]: p for p in full["peers"]}
    assert peers["TH"]["status"] == "no_match"
    assert peers["SG"]["status"] == "match"
    meta = peers["SG"]["metadata"]
    assert (meta["category"], meta["confidence"], meta["tlp"], meta["reports"]) == (
        "investment",
        85,
        "AMBER",
        7,
    )
    assert report["summary"] == {
        "taxonomies": [{"level": "malicious", "namespace": "Petanda", "predicate": "Match", "value": "SG"}]
    }
    assert report["artifacts"] == []


def test_cortex_analyzer_no_match(
    cortex_python: Path, fed: tuple[Net, dict[str, list[str]]], tmp_path: Path
) -> None:
    _net, flags = fed
    code, report = _run_job(
        cortex_python, tmp_path / "ip", _job("ip", NOBODY_IP, _config(flags["cortex"])), tmp_path
    )
    assert code == 0 and report["full"]["kind"] == "ipv4" and report["full"]["verdict"] == "no_match"
    assert report["summary"]["taxonomies"] == [
        {"level": "info", "namespace": "Petanda", "predicate": "Match", "value": "0/2 peers"}
    ]


def test_cortex_analyzer_names_a_peer_that_does_not_answer(
    cortex_python: Path, fed_down: dict[str, list[str]], tmp_path: Path
) -> None:
    code, report = _run_job(
        cortex_python, tmp_path / "job", _job("other", PHONE, _config(fed_down["cortex"])), tmp_path
    )
    assert code == 0 and report["success"] is True, report
    assert report["full"]["kind"] == "phone" and report["full"]["verdict"] == "incomplete"
    assert report["summary"]["taxonomies"] == [
        {"level": "info", "namespace": "Petanda", "predicate": "Match", "value": "0/1 peers"},
        {"level": "suspicious", "namespace": "Petanda", "predicate": "Unanswered", "value": "SG"},
    ]


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (b"{not json", "the job is not a JSON object"),
        (b"[1, 2]", "the job is not a JSON object"),
        ({"data": PHONE, "config": {}}, "Missing dataType field"),
        ({"dataType": "hash", "data": "d41d8cd9", "config": {}}, "dataType 'hash' is not checked"),
        (
            {"dataType": "mail", "data": ["a@b.example"], "config": {}},
            "'data' must be the observable's value",
        ),
        ({"dataType": "mail", "data": "a@b.example", "config": {"timeout_s": 0}}, "'timeout_s' must be"),
        (
            {"dataType": "mail", "data": "a@b.example", "config": {"node": 7}},
            "config 'node' must be a string",
        ),
    ],
)
def test_cortex_bad_job_is_success_false_with_an_error_message(
    cortex_python: Path, tmp_path: Path, job: bytes | dict[str, Any], reason: str
) -> None:
    code, report = _run_job(cortex_python, tmp_path / "job", job, tmp_path)
    assert code == 1 and report["success"] is False and reason in report["errorMessage"], report


def test_cortex_unreachable_node_fails_the_job_and_hides_the_key_path(
    cortex_python: Path, fed: tuple[Net, dict[str, list[str]]], tmp_path: Path
) -> None:
    _net, flags = fed
    nobody = _closed_port()
    config = _config(flags["cortex"], node=nobody)
    code, report = _run_job(cortex_python, tmp_path / "job", _job("domain", DOMAIN, config), tmp_path)
    assert code == 1 and report["success"] is False
    assert report["errorMessage"].startswith(f"petanda: node {nobody} unreachable: "), report
    assert report["input"]["config"]["key"] == "REMOVED"  # cortexutils hides settings named like secrets


def test_cortex_job_on_stdin_report_on_stdout_with_a_client_toml(
    cortex_python: Path, fed: tuple[Net, dict[str, list[str]]], tmp_path: Path
) -> None:
    """The older way Cortex ran analyzers (and a quick manual try): no job directory. The connection
    settings come from the person's client.toml (config item ``config``) instead of four items."""
    _net, flags = fed
    settings = {flags["cortex"][i][2:]: flags["cortex"][i + 1] for i in range(0, len(flags["cortex"]), 2)}
    toml = tmp_path / "cortex.toml"
    toml.write_text("".join(f'{key} = "{value}"\n' for key, value in settings.items()))
    done = subprocess.run(
        [str(cortex_python), str(ANALYZER)],
        input=json.dumps(_job("fqdn", DOMAIN, {"petanda": PETANDA, "config": str(toml)})),
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(tmp_path),
        cwd=tmp_path,
        check=False,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["success"] is True
    assert report["summary"]["taxonomies"][0]["value"] == "TH"
