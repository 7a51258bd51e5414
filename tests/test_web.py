"""``petanda web``: the console against a real three-node federation, in headless Chromium and over HTTP.

MY, TH and SG run on real servers with real mutual TLS (``tests/fednet.py``); TH holds a planted phone
number. The console runs in this process (``client.tools.web.start_console``) with MY's investigator
certificate, or its auditor's. The browser tests drive Debian's ``chromium`` through Playwright
(``executable_path``; no browser is downloaded) and assert on the page's content, then keep a
screenshot. The HTTP tests check the gate (token, Host, Origin), the upload cap and bad files.
"""

from __future__ import annotations

import csv
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.tools.cli import main
from client.tools.connection import Connection
from client.tools.web import RunningConsole, start_console
from tests.fednet import Net, start_net
from tests.limitednet import T0

PLANTED = "+60 12-987 6543"  # TH holds it
PLANTED_CANONICAL = "+60129876543"
CLEAN = "+60 13-555 0101"  # nobody holds it
CAP = 20_000_000


def _ingest(net: Net, node_id: str, rows: list[list[str]], tmp: Path) -> None:
    path = tmp / f"{node_id}-held.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "value", "category", "first_seen", "last_seen", "confidence", "tlp", "reports"])
        w.writerows(rows)
    assert net.node(node_id).ingest([path], now=T0).stored == len(rows)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("web")
    net = start_net(root / "fed", ["MY", "TH", "SG"], now=T0)
    try:
        _ingest(
            net,
            "TH",
            [["phone", PLANTED, "investment", "2024-01-02", "2024-03-04", "80", "AMBER", "3"]],
            root,
        )
        _ingest(
            net,
            "SG",
            [["domain", "scam-shop.example", "shopping", "2024-02-01", "", "60", "GREEN", "1"]],
            root,
        )
        _ingest(
            net,
            "MY",
            [["phone", "+60321234567", "impersonation_bank", "2024-01-01", "", "50", "GREEN", "1"]],
            root,
        )
        net.sync_all()
        yield net
    finally:
        net.close()


def _connection(net: Net, role: str = "investigator") -> Connection:
    member = net.federation.members["MY"]
    cert, key = member.investigator if role == "investigator" else member.auditor
    return Connection(member.address, net.federation.ca, cert, key)


@pytest.fixture(scope="module")
def console(net: Net) -> Iterator[RunningConsole]:
    running = start_console(_connection(net), max_upload=CAP)
    yield running
    running.close()


# --- a small HTTP client that passes the gate ------------------------------------------------------------


class Session:
    """Requests to a console with its cookie, Host and Origin set as a browser on it would."""

    def __init__(self, running: RunningConsole) -> None:
        self.port = running.console.port
        self.token = running.console.token
        self.cookie = ""

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        sent = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookie:
            sent["Cookie"] = self.cookie
        if method == "POST":
            sent["Origin"] = f"http://127.0.0.1:{self.port}"
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v}
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def login(self) -> None:
        status, headers, _ = self.request("GET", f"/?token={self.token}")
        assert status == 303 and headers["location"] == "/"
        self.cookie = headers["set-cookie"].split(";")[0]

    def json(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Any]:
        status, _, raw = self.request(method, path, body, headers)
        return status, json.loads(raw)

    def check(self, name: str, body: bytes, **query: str) -> dict[str, Any]:
        """Upload, wait for the job to end, return its status with every row."""
        params = urllib.parse.urlencode({"name": name, **query})
        status, doc = self.json("POST", f"/api/jobs?{params}", body)
        assert status == 202, doc
        for _ in range(600):
            status, job = self.json("GET", f"/api/jobs/{doc['id']}")
            assert status == 200
            if job["state"] not in ("queued", "running"):
                return dict(job)
            time.sleep(0.1)
        raise AssertionError(f"job {doc['id']} did not end: {job}")


@pytest.fixture
def session(console: RunningConsole) -> Session:
    s = Session(console)
    s.login()
    return s


# --- the gate -----------------------------------------------------------------------------------------------


def test_the_token_becomes_an_httponly_strict_cookie_of_this_port(console: RunningConsole) -> None:
    s = Session(console)
    status, headers, _ = s.request("GET", f"/?token={s.token}")
    assert status == 303
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"petanda_web_{s.port}={s.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    s.cookie = cookie.split(";")[0]
    status, headers, body = s.request("GET", "/")
    assert status == 200 and b"Petanda console" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    status, doc = s.json("GET", "/api/session")
    assert status == 200 and doc["role"] == "investigator" and doc["identity"] == "MY/investigator"


def test_a_request_without_the_right_token_is_refused(console: RunningConsole) -> None:
    s = Session(console)
    for path in ("/", "/api/session", "/static/console.js", "/?token=wrong", "/api/session?token=" + s.token):
        status, _, body = s.request("GET", path)
        assert status == 403, path
        assert "token" in json.loads(body)["error"]
    s.cookie = f"petanda_web_{s.port}={'x' * len(s.token)}"
    assert s.request("GET", "/api/session")[0] == 403
    s.cookie = f"petanda_web_{s.port + 1}={s.token}"  # another console's cookie
    assert s.request("GET", "/api/session")[0] == 403


def test_a_foreign_host_is_refused_even_with_the_token(session: Session) -> None:
    """DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 sends Host evil.example."""
    for host in (f"evil.example:{session.port}", "127.0.0.1", f"127.0.0.1:{session.port + 1}", "localhost"):
        status, doc = session.json("GET", "/api/session", Host=host)
        assert status == 403 and "is not this console" in doc["error"], host
    assert session.json("GET", "/api/session", Host=f"localhost:{session.port}")[0] == 200


def test_a_cross_origin_post_is_refused_and_checks_nothing(session: Session, console: RunningConsole) -> None:
    before = len(console.console.jobs)
    for origin in ("http://evil.example", f"http://127.0.0.1:{session.port + 1}", "null", ""):
        status, doc = session.json(
            "POST", "/api/jobs?name=x.csv", f"phone,{PLANTED}\n".encode(), Origin=origin
        )
        assert status == 403 and "cross-origin" in doc["error"], origin
        status, doc = session.json("POST", "/api/sighting", b"{}", Origin=origin)
        assert status == 403, origin
    assert len(console.console.jobs) == before
    # the connection was left in step: a good request still works
    assert session.json("GET", "/api/session")[0] == 200


# --- checks over HTTP -------------------------------------------------------------------------------------


def test_a_file_finds_the_planted_match_and_exports_as_check_file_does(
    session: Session, net: Net, tmp_path: Path
) -> None:
    text = f"case,value\nC1,{PLANTED}\nC2,{CLEAN}\nC3,scam-shop.example\n"
    job = session.check("leads.csv", text.encode())
    assert job["state"] == "done" and job["error"] == ""
    assert job["peers"] == ["SG", "TH"]
    rows = {r["line"]: r for r in job["rows"]}
    assert rows[2]["canonical"] == PLANTED_CANONICAL and rows[2]["verdict"] == "match"
    th = next(p for p in rows[2]["peers"] if p["peer_id"] == "TH")
    assert th["status"] == "match" and th["metadata"]["category"] == "investment"
    assert th["metadata"]["tlp"] == "AMBER" and th["metadata"]["reports"] == 3
    assert rows[3]["verdict"] == "no_match"
    assert rows[4]["verdict"] == "match" and [p["peer_id"] for p in rows[4]["peers"] if p["metadata"]] == [
        "SG"
    ]
    assert job["counts"] == {"match": 2, "no_match": 1, "incomplete": 0, "error": 0}
    assert job["unit"] == "bytes" and job["done"] == job["total"] == len(text.encode())

    source = tmp_path / "leads.csv"
    source.write_text(text)
    member = net.federation.members["MY"]
    cert, key = member.investigator
    flags = ["--node", member.address, "--ca", str(net.federation.ca), "--cert", str(cert), "--key", str(key)]
    for fmt, export in (("csv", "results.csv"), ("jsonl", "results.jsonl")):
        reference = tmp_path / f"reference.{fmt}"
        argv = ["check", "--file", str(source), "--out", str(reference), "--format", fmt, "--quiet", *flags]
        assert main(argv) == 1
        status, headers, body = session.request("GET", f"/api/jobs/{job['id']}/{export}")
        assert status == 200
        assert headers["content-disposition"] == f'attachment; filename="leads-{export}"'
        assert body.decode() == reference.read_text()


def test_pasted_values_are_one_value_a_line_with_their_line_numbers(session: Session) -> None:
    job = session.check("pasted values", f"{PLANTED}\n\nhello\n{CLEAN}\n".encode(), source="paste")
    rows = {r["line"]: r for r in job["rows"]}
    assert sorted(rows) == [1, 3, 4]
    assert rows[1]["verdict"] == "match" and rows[4]["verdict"] == "no_match"
    assert rows[3]["verdict"] == "error" and "cannot tell the kind" in rows[3]["error"]


def test_a_malformed_csv_gets_line_numbered_errors_and_its_good_rows_are_checked(session: Session) -> None:
    text = f'phone,{PLANTED}\nphone,"+60 1\nfax,123\nphone\n\nphone,{CLEAN},MY,extra\nphone,{CLEAN}\n'
    job = session.check("bad.csv", text.encode())
    assert job["state"] == "done"
    rows = {r["line"]: r for r in job["rows"]}
    assert rows[1]["verdict"] == "match" and rows[7]["verdict"] == "no_match"
    assert "unparseable CSV" in rows[2]["error"]
    assert rows[3]["error"] == "unknown kind 'fax'"
    assert "missing column" in rows[4]["error"]
    assert "4 columns" in rows[6]["error"]
    assert "4 errors" in job["summary"] and "lines 2, 3, 4, 6" in job["summary"]


def test_a_binary_or_empty_upload_is_a_clear_error_naming_it(session: Session) -> None:
    job = session.check("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(500))
    assert job["state"] == "failed"
    assert job["error"].startswith("photo.csv: not a text file (it holds NUL bytes")
    job = session.check("empty.csv", b"value\n\n")
    assert job["state"] == "failed" and job["error"].startswith("empty.csv: no rows to check")
    job = session.check("broken.xlsx", b"PK\x03\x04 this is no workbook")
    assert job["state"] == "failed" and job["error"].startswith("broken.xlsx: not a readable XLSX workbook")


def test_an_xlsx_workbook_is_read_from_its_first_sheet(session: Session, tmp_path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(["Case", "Kind", "Value"])
    sheet.append(["C1", "phone", PLANTED])
    sheet.append(["C2", "domain", "scam-shop.example"])
    sheet.append(["C3", "phone", 60135550101])  # a number cell: no '+', read as the digits
    book.create_sheet("ignored").append(["kind", "value"])
    path = tmp_path / "leads.xlsx"
    book.save(path)
    job = session.check("leads.xlsx", path.read_bytes())
    assert job["state"] == "done" and job["unit"] == "rows", job["error"]
    rows = {r["line"]: r for r in job["rows"]}
    assert sorted(rows) == [2, 3, 4]
    assert rows[2]["verdict"] == "match" and rows[3]["verdict"] == "match"
    assert rows[4]["value"] == "60135550101" and rows[4]["verdict"] in ("no_match", "error")


def test_a_100_mb_upload_is_refused_at_once_without_reading_it_and_nothing_is_lost(
    session: Session, console: RunningConsole
) -> None:
    earlier = session.check("before.csv", f"phone,{PLANTED}\n".encode())
    files_before = sorted(p.name for p in console.console.workdir.iterdir())
    size = 100_000_000
    head = (
        f"POST /api/jobs?name=big.csv HTTP/1.1\r\nHost: 127.0.0.1:{session.port}\r\n"
        f"Origin: http://127.0.0.1:{session.port}\r\nCookie: {session.cookie}\r\n"
        f"Content-Type: text/csv\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", session.port), timeout=30) as sock:
        sock.sendall(head + b"phone,+60123456789\n" * 50_000)  # ~1 MB of the 100 MB
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < 40:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"\r\nConnection: close\r\n" in rest.partition(b"\r\n\r\n")[0] + b"\r\n"
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error.startswith("big.csv is 100.0 MB; this console takes at most 20 MB")
    # nothing was stored of it, the console still answers, and the earlier job is whole
    assert sorted(p.name for p in console.console.workdir.iterdir()) == files_before
    status, job = session.json("GET", f"/api/jobs/{earlier['id']}")
    assert status == 200 and job["rows"] == earlier["rows"] and job["state"] == "done"
    status, _, body = session.request("GET", f"/api/jobs/{earlier['id']}/results.csv")
    assert status == 200 and PLANTED_CANONICAL in body.decode()


def test_a_stalled_upload_holds_up_nothing_and_leaves_nothing(
    session: Session, console: RunningConsole
) -> None:
    files_before = sorted(p.name for p in console.console.workdir.iterdir())
    head = (
        f"POST /api/jobs?name=slow.csv HTTP/1.1\r\nHost: 127.0.0.1:{session.port}\r\n"
        f"Origin: http://127.0.0.1:{session.port}\r\nCookie: {session.cookie}\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", session.port), timeout=30) as sock:
        sock.sendall(head + f"phone,{PLANTED}\n".encode())
        for _ in range(3):  # the console answers others meanwhile
            assert session.json("GET", "/api/session")[0] == 200
        job = session.check("meanwhile.csv", f"phone,{PLANTED}\n".encode())
        assert job["counts"]["match"] == 1
    meanwhile = console.console.jobs[job["id"]]
    expected = sorted(
        [*files_before, *(p.name for p in (meanwhile.path, meanwhile.csv_path, meanwhile.jsonl_path))]
    )
    for _ in range(100):  # the stalled upload's client went away: what it sent is thrown away
        names = sorted(p.name for p in console.console.workdir.iterdir())
        if names == expected:
            break
        time.sleep(0.05)
    assert names == expected


def test_an_unreachable_node_fails_the_job_with_the_reason_and_the_console_goes_on(net: Net) -> None:
    with socket.socket() as placeholder:  # a port nobody listens on
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    connection = _connection(net)
    running = start_console(Connection(f"127.0.0.1:{port}", connection.ca, connection.cert, connection.key))
    try:
        s = Session(running)
        s.login()
        job = s.check("leads.csv", f"phone,{PLANTED}\n".encode())
        assert job["state"] == "failed"
        assert job["error"].startswith(f"node 127.0.0.1:{port} unreachable")
        assert s.json("GET", "/api/session")[0] == 200
    finally:
        running.close()


def test_an_upload_without_a_length_is_refused(session: Session) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", session.port, timeout=30)
    conn.putrequest("POST", "/api/jobs?name=x.csv", skip_host=True)
    for name, value in (
        ("Host", f"127.0.0.1:{session.port}"),
        ("Origin", f"http://127.0.0.1:{session.port}"),
        ("Cookie", session.cookie),
        ("Transfer-Encoding", "chunked"),
    ):
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()


def test_a_bad_sighting_names_the_field(session: Session) -> None:
    body = json.dumps({"peer_id": "th", "kind": "phone", "tier": "oprf", "version": 1, "tag": "ab"}).encode()
    status, doc = session.json("POST", "/api/sighting", body)
    assert status == 400 and "peer 'th' is not a node id" in doc["error"]
    body = json.dumps(
        {"peer_id": "TH", "kind": "phone", "tier": "oprf", "version": "x", "tag": "ab"}
    ).encode()
    assert session.json("POST", "/api/sighting", body) == (400, {"error": "version must be a whole number"})
    assert session.json("POST", "/api/sighting", b"[1]") == (
        400,
        {"error": "the request is not a JSON object"},
    )


# --- the auditor ------------------------------------------------------------------------------------------


def test_an_auditor_console_fetches_verifies_and_reports_the_log(net: Net) -> None:
    running = start_console(_connection(net, "auditor"))
    try:
        s = Session(running)
        s.login()
        assert s.json("GET", "/api/session")[1]["role"] == "auditor"
        assert s.json("POST", "/api/jobs?name=x.csv", b"phone,+60123456789\n")[0] == 404
        status, doc = s.json("GET", "/audit/report")
        assert status == 404 and "fetch it first" in doc["error"]
        status, doc = s.json("POST", "/api/audit/fetch", b"{}")
        assert status == 200, doc
        assert doc["node_id"] == "MY" and doc["verified"] is True and doc["entries"] > 0
        status, headers, body = s.request("GET", "/audit/report")
        assert status == 200 and "frame-ancestors 'self'" in headers["content-security-policy"]
        page = body.decode()
        assert "Audit report of node MY" in page and 'data-status="ok"' in page
    finally:
        running.close()
    assert not running.console.workdir.exists()


def test_a_node_certificate_is_refused(net: Net) -> None:
    member = net.federation.members["MY"]
    tls = member.dir / "tls"
    connection = Connection(member.address, net.federation.ca, tls / "MY.crt", tls / "MY.key")
    with pytest.raises(Exception, match="is a peer certificate: the console takes an investigator's"):
        start_console(connection)


def test_the_petanda_web_command_prints_its_url_and_cleans_up_when_stopped(net: Net, tmp_path: Path) -> None:
    member = net.federation.members["MY"]
    cert, key = member.investigator
    flags = ["--node", member.address, "--ca", str(net.federation.ca), "--cert", str(cert), "--key", str(key)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETANDA_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-config")
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "client.tools.cli", "web"]

    bad = subprocess.run(
        [*command, "--max-upload-mb", "0", *flags], cwd=root, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr == "petanda: --max-upload-mb must be more than 0\n"
    bad = subprocess.run(
        [*command, *flags[:-1], str(tmp_path / "absent.key")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "absent.key" in bad.stderr and "Traceback" not in bad.stderr

    for signum in (signal.SIGINT, signal.SIGTERM):
        child = subprocess.Popen([*command, *flags], cwd=root, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            lines = [child.stdout.readline() for _ in range(3)]
            assert lines[0] == "petanda web: investigator MY/investigator, node " + member.address + "\n"
            workdir = Path(lines[1].split(" kept in ")[1].split(" until ")[0])
            assert workdir.is_dir() and (workdir.stat().st_mode & 0o777) == 0o700
            url = urllib.parse.urlsplit(lines[2].removeprefix("open ").strip())
            assert url.hostname == "127.0.0.1" and url.query.startswith("token=")
            conn = http.client.HTTPConnection("127.0.0.1", url.port, timeout=30)
            conn.request("GET", f"/?{url.query}")
            assert conn.getresponse().status == 303
            conn.close()
            child.send_signal(signum)
            assert child.wait(timeout=30) == 0
            assert not workdir.exists()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()


# --- in a real browser -------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = None
    if not os.path.exists(CHROMIUM) and shutil.which("chromium") is None:
        missing = "chromium is not installed (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
        )
        context.set_default_timeout(60_000)
        yield context
        context.close()


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 1000 and height >= 600 and len(data) > 20_000, (width, height, len(data))


def test_in_chromium_a_file_finds_the_planted_match_and_opens_its_metadata(
    browser_context: Any, console: RunningConsole, tmp_path: Path
) -> None:
    page = browser_context.new_page()
    page.goto(console.url)
    assert page.url == f"http://127.0.0.1:{console.console.port}/"  # the token left the address bar
    page.wait_for_selector("#investigator:not([hidden])")
    assert "investigator MY/investigator" in page.inner_text("#who")

    leads = tmp_path / "leads.csv"
    leads.write_text(f"case,kind,value\nC1,phone,{PLANTED}\nC2,phone,{CLEAN}\nC3,fax,123\n")
    page.set_input_files("#file", str(leads))
    page.wait_for_selector("#job-state[data-state=done]")
    assert page.inner_text("#job-title") == "leads.csv"
    size = leads.stat().st_size
    assert page.eval_on_selector("#progress", "p => [p.value, p.max]") == [size, size]
    headers = page.locator("#results thead th").all_inner_texts()
    assert headers == ["line", "kind", "value", "canonical", "verdict", "SG", "TH"]
    planted = page.locator("#results tbody tr[data-line='2']")
    assert planted.locator("td.canonical").inner_text() == PLANTED_CANONICAL
    assert planted.get_attribute("data-verdict") == "match"
    assert planted.locator("td[data-peer=TH]").inner_text() == "MATCH"
    assert planted.locator("td[data-peer=SG]").inner_text() == "no match"
    assert page.locator("#results tbody tr[data-line='3']").get_attribute("data-verdict") == "no_match"
    assert (
        page.locator("#results tbody tr[data-line='4'] td.reason").inner_text()
        == "line 4: unknown kind 'fax'"
    )
    assert "3 rows: 1 match, 1 no match, 0 incomplete, 1 error" in page.inner_text("#job-summary")

    planted.locator("td[data-peer=TH] button").click()
    dialog = page.locator("dialog#metadata")
    dialog.wait_for(state="visible")
    field = {
        name: dialog.locator(f"dd[data-field='{name}']").inner_text()
        for name in ("peer", "category", "first seen", "last seen", "confidence", "TLP", "reports", "tier")
    }
    assert field == {
        "peer": "TH",
        "category": "investment",
        "first seen": "2024-01-02",
        "last seen": "2024-03-04",
        "confidence": "80",
        "TLP": "AMBER",
        "reports": "3",
        "tier": "oprf",
    }
    shot = tmp_path / "console-match.png"
    page.screenshot(path=str(shot), full_page=True)
    _assert_png(shot)
    page.click("#sighting")
    page.wait_for_selector("#sighting-result:not(:empty)")
    assert page.inner_text("#sighting-result") == "recorded"
    page.click("#metadata-close")

    with page.expect_download() as download:
        page.click("#export-csv")
    exported = download.value.path().read_text()
    assert exported.splitlines()[0].startswith("line,kind,value,region,canonical,verdict,matched_peers")
    assert f"2,phone,{PLANTED},,{PLANTED_CANONICAL},match,TH,SG=no_match;TH=match," in exported

    # a 100 MB file: a clear error, nothing sent, the table above kept
    big = tmp_path / "huge.csv"
    with big.open("wb") as f:
        f.truncate(100_000_000)
    jobs = len(console.console.jobs)
    page.set_input_files("#file", str(big))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == (
        "huge.csv is 100.0 MB; this console takes at most 20.0 MB (petanda web --max-upload-mb N), "
        "or check it with petanda check --file. Nothing was sent."
    )
    assert len(console.console.jobs) == jobs
    assert planted.locator("td[data-peer=TH]").inner_text() == "MATCH"
    page.screenshot(path=str(tmp_path / "console-too-large.png"))
    _assert_png(tmp_path / "console-too-large.png")
    page.close()


def test_in_chromium_the_servers_own_refusal_of_a_100_mb_upload_is_shown(
    browser_context: Any, console: RunningConsole, tmp_path: Path
) -> None:
    """The page's own size check is lifted (its session answer is rewritten in the browser), so Chromium
    really sends 100 MB: the console answers 413 from the Content-Length and the page shows its words."""
    page = browser_context.new_page()

    def unlimited(route: Any) -> None:
        response = route.fetch()
        session = response.json()
        route.fulfill(response=response, json={**session, "max_upload": 10**12})

    page.route("**/api/session", unlimited)
    page.goto(console.url)
    page.wait_for_selector("#investigator:not([hidden])")
    assert page.inner_text("#limit") == "files up to 1000000.0 MB"
    page.unroute("**/api/session")  # the upload itself must not pass through Playwright's interception
    big = tmp_path / "huge.csv"
    with big.open("wb") as f:
        f.truncate(100_000_000)
    jobs = len(console.console.jobs)
    page.set_input_files("#file", str(big))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == (
        "huge.csv was not checked: huge.csv is 100.0 MB; this console takes at most 20 MB "
        "(petanda web --max-upload-mb N), or check it with petanda check --file"
    )
    assert len(console.console.jobs) == jobs
    assert not any(
        p.name.startswith("upload-") and p.stat().st_size > CAP for p in console.console.workdir.iterdir()
    )
    page.close()


def test_in_chromium_pasted_values_and_a_dropped_file_fill_the_table(
    browser_context: Any, console: RunningConsole
) -> None:
    page = browser_context.new_page()
    page.goto(console.url)
    page.wait_for_selector("#investigator:not([hidden])")
    page.fill("#paste", f"{CLEAN}\nscam-shop.example\n")
    page.click("#paste-check")
    page.wait_for_selector("#job-state[data-state=done]")
    rows = page.locator("#results tbody tr")
    assert rows.count() == 2
    assert rows.nth(1).locator("td[data-peer=SG]").inner_text() == "MATCH"
    assert rows.nth(0).get_attribute("data-verdict") == "no_match"

    # a file dropped on the drop zone
    dropped = page.evaluate_handle(
        """(text) => { const dt = new DataTransfer();
                       dt.items.add(new File([text], 'dropped.jsonl', {type: 'application/jsonl'}));
                       return dt; }""",
        json.dumps({"kind": "phone", "value": PLANTED}) + "\n",
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    page.wait_for_selector("#job-title:text-is('dropped.jsonl')")
    page.wait_for_selector("#job-state[data-state=done]")
    assert rows.count() == 1
    assert rows.nth(0).locator("td[data-peer=TH]").inner_text() == "MATCH"
    page.close()


def test_in_chromium_the_auditor_sees_the_verified_report(
    browser_context: Any, net: Net, tmp_path: Path
) -> None:
    running = start_console(_connection(net, "auditor"))
    try:
        page = browser_context.new_page()
        page.goto(running.url)
        page.wait_for_selector("#auditor:not([hidden])")
        page.click("#audit-fetch")
        page.wait_for_selector("#audit-status[data-verified=true]")
        frame = page.frame_locator("#audit-report")
        assert frame.locator("#status").get_attribute("data-status") == "ok"
        assert frame.locator("h1").inner_text() == "Audit report of node MY"
        shot = tmp_path / "console-audit.png"
        page.screenshot(path=str(shot))
        _assert_png(shot)
        page.close()
    finally:
        running.close()
