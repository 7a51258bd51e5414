"""``petanda web``: a local web console over the investigator's and auditor's commands (an adapter: HTTP).

The console is a page on ``http://127.0.0.1:PORT`` for one person, who calls their own national node with
their own certificate, as the CLI does. It is a thin layer: a file or pasted values are read by
:func:`client.tools.results.read_rows` (an XLSX workbook's first sheet is turned into CSV lines first),
checked by :class:`client.tools.batch.BatchRun` through :class:`client.tools.check.InvestigatorClient`
(pacing and retries included), and written by :class:`client.tools.batch.Writer` in both formats of
``petanda check --file`` (the exports); a sighting is :meth:`InvestigatorClient.report_sighting`; the
auditor's view is :func:`client.tools.audit.fetch_log` and :func:`client.tools.report.render_html`.

The process holds the person's private key, so every request must prove it comes from the person's
browser (docs/adr/0016-web-console.md):

- the server binds 127.0.0.1 only;
- a per-run token (random, in the URL printed at start) becomes an HttpOnly, SameSite=Strict cookie named
  after the port; every request without it is refused (403);
- the Host header must be ``127.0.0.1:PORT`` or ``localhost:PORT`` (DNS rebinding: a page of another
  site whose name resolves to 127.0.0.1 sends its own name);
- a request that changes anything (POST) must carry an Origin of this console (CSRF);
- an upload's size is checked from its Content-Length before a byte of it is read (413 past the cap).

Uploads and results stay in a private temporary directory that is removed when the console stops.
``docs/investigators.md`` ("The web console") is the user's guide.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hmac
import http.cookies
import http.server
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Final, Literal, TextIO

import grpc

from client.protocol.errors import InputError, PetandaError, UnknownKind
from client.protocol.kinds import KINDS
from client.protocol.model import Outcome, Sighting
from client.tools.audit import fetch_log, load_dir, summarise_dir
from client.tools.batch import BatchRun, Writer
from client.tools.check import InvestigatorClient, open_input
from client.tools.connection import Connection, add_connection_arguments, open_channel, resolve_connection
from client.tools.report import render_html
from client.tools.results import (
    EXIT_OK,
    InputFormat,
    InputRow,
    Tally,
    outcome_document,
    read_rows,
    short_detail,
)
from client.transport.status import error_from_rpc
from client.transport.tls import identity_from_certificate

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "RunningConsole", "add_web_command", "start_console"]

#: Largest upload taken by default, in MB (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB: Final = 20
#: Rows shown in the page whatever their verdict; past them, only matches, incomplete rows and errors.
SHOWN_ALL: Final = 1000
#: Most rows the page is sent in all (the exports hold every row).
SHOWN_MAX: Final = 10_000
#: Seconds a connection may stay silent (a stalled upload) before its thread gives up on it.
SOCKET_TIMEOUT_S: Final = 60.0
#: After refusing an upload, what is read and thrown away so the refusal reaches the browser before the
#: connection closes (a close with unread data resets it); never the whole upload.
DRAIN_BYTES: Final = 1 << 20
DRAIN_S: Final = 1.0
_XLSX_MAGIC: Final = b"PK\x03\x04"
_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
}
_PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
#: The audit report is self-contained: inline styles and SVG, no script.
_REPORT_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"

Role = Literal["investigator", "auditor"]
Source = Literal["csv", "jsonl", "xlsx"]


# --- reading an upload --------------------------------------------------------------------------------


def _cell(value: object) -> str:
    """A spreadsheet cell as the text a CSV export of it would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


@contextlib.contextmanager
def _xlsx_lines(path: Path, name: str) -> Iterator[tuple[Iterator[str], Callable[[], int], int | None]]:
    """The first sheet of an XLSX workbook as CSV lines, one per sheet row (line N is row N), the rows
    read so far, and the sheet's row count (None if the workbook does not say).

    Raises:
        InputError: it is no workbook openpyxl can read.
    """
    import csv
    import io

    from openpyxl import load_workbook

    stream = path.open("rb")  # a stream: given a path, openpyxl insists on an .xlsx name
    try:
        book = load_workbook(stream, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError, its own and XML errors alike
        stream.close()
        raise InputError(
            f"{name}: not a readable XLSX workbook ({type(exc).__name__}: {exc}); save it as CSV UTF-8"
        ) from None
    try:
        if not book.worksheets:
            raise InputError(f"{name}: the workbook has no sheet")
        sheet = book.worksheets[0]
        done = 0

        def lines() -> Iterator[str]:
            nonlocal done
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            try:
                for row in sheet.iter_rows(values_only=True):
                    done += 1
                    buffer.seek(0)
                    buffer.truncate()
                    writer.writerow([_cell(c) for c in row])
                    yield buffer.getvalue()
            except (KeyError, ValueError, OSError) as exc:
                raise InputError(f"{name}: row {done + 1} of the workbook cannot be read: {exc}") from None

        yield lines(), lambda: done, sheet.max_row
    finally:
        book.close()
        stream.close()


@contextlib.contextmanager
def _open_upload(
    path: Path, source: Source, name: str
) -> Iterator[tuple[Iterator[str] | TextIO, Callable[[], int], int | None]]:
    """An upload's lines for :func:`read_rows`, how far they are read and out of how much."""
    if source == "xlsx":
        with _xlsx_lines(path, name) as opened:
            yield opened
    else:
        with open_input(str(path), name=name) as opened:
            yield opened


def _source(name: str, head: bytes, paste: bool) -> Source:
    """How to read an upload: pasted values are JSON lines; a ZIP is a workbook; else by extension."""
    if paste:
        return "jsonl"
    if head.startswith(_XLSX_MAGIC):
        return "xlsx"
    return "jsonl" if Path(name).suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"


# --- jobs ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One checked file (or paste): its state, the rows shown, the counts, and the two exports."""

    id: str
    name: str
    path: Path
    source: Source
    kind: str | None
    region: str
    state: str = "queued"
    error: str = ""
    waiting: str = ""
    done: int = 0
    total: int | None = None
    tally: Tally = field(default_factory=Tally)
    #: The tally as the page sees it, copied by the worker after each window (the run mutates ``tally``).
    counts: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    hidden: int = 0
    peers: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def csv_path(self) -> Path:
        return self.path.with_name(self.path.name + ".results.csv")

    @property
    def jsonl_path(self) -> Path:
        return self.path.with_name(self.path.name + ".results.jsonl")

    def add(self, row: InputRow, outcome: Outcome | None) -> None:
        """Remember a written row for the page (all of the first :data:`SHOWN_ALL`, then only those that
        are not a plain no match, up to :data:`SHOWN_MAX`)."""
        doc = outcome_document(row.query, outcome, line=row.line, error=row.error or "")
        if row.error is None and outcome is not None:
            for shown, peer in zip(doc["peers"], outcome.peers, strict=True):
                if not peer.answered:
                    shown["short"] = short_detail(peer.status, peer.detail, peer.peer_id)
        with self.lock:
            self.peers.update(p["peer_id"] for p in doc["peers"])
            if len(self.rows) < SHOWN_ALL or (doc["verdict"] != "no_match" and len(self.rows) < SHOWN_MAX):
                self.rows.append(doc)
            else:
                self.hidden += 1

    def counted(self) -> None:
        """Copy the tally for the page (called by the thread that runs the job)."""
        counts = {
            "counts": dict(self.tally.counts),
            "summary": self.tally.summary() if self.tally.rows else "",
            "peer_lines": self.tally.peer_lines(),
            "stopped": self.tally.stopped,
        }
        with self.lock:
            self.counts = counts

    def status(self, since: int) -> dict[str, Any]:
        """The job as the page polls it: its state, progress and counts, and the rows from ``since``."""
        with self.lock:
            return {
                "id": self.id,
                "name": self.name,
                "state": self.state,
                "error": self.error,
                "waiting": self.waiting,
                "done": self.done,
                "total": self.total,
                "unit": "rows" if self.source == "xlsx" else "bytes",
                "counts": self.counts.get("counts", dict.fromkeys(self.tally.counts, 0)),
                "summary": self.counts.get("summary", ""),
                "peer_lines": self.counts.get("peer_lines", []),
                "stopped": self.counts.get("stopped", ""),
                "peers": sorted(self.peers),
                "rows": self.rows[since:],
                "next": len(self.rows),
                "hidden": self.hidden,
            }


class _Sink(Writer):
    """The writer of a job: ``--format csv`` and ``--format jsonl`` output at once, and the page's rows."""

    def __init__(self, csv_stream: TextIO, jsonl_stream: TextIO, job: Job) -> None:
        super().__init__(csv_stream, "csv")
        self._jsonl = Writer(jsonl_stream, "jsonl")
        self._job = job

    def write(self, row: InputRow, outcome: Outcome | None) -> None:
        super().write(row, outcome)
        self._jsonl.write(row, outcome)
        self._job.add(row, outcome)

    def flush(self) -> None:
        super().flush()
        self._jsonl.flush()


# --- the console --------------------------------------------------------------------------------------


class _Refused(Exception):
    """A request the console answers with an error status and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Answered(Exception):
    """A request already answered (and its connection closed) while it was being read."""


@dataclass
class Console:
    """The state of one ``petanda web`` run: who is calling which node, the jobs, the files."""

    connection: Connection
    role: Role
    identity: str
    channel: grpc.Channel
    workdir: Path
    audit_dir: Path
    max_upload: int
    deadline_ms: int = 0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    port: int = 0
    jobs: dict[str, Job] = field(default_factory=dict)
    queue: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    audit_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def client(self) -> InvestigatorClient:
        return InvestigatorClient(self.channel, self.connection.target)

    # --- jobs -------------------------------------------------------------------------------------

    def submit(self, name: str, path: Path, *, paste: bool, kind: str | None, region: str) -> Job:
        if kind is not None and kind not in KINDS:
            raise UnknownKind(kind, KINDS)
        with path.open("rb") as f:
            head = f.read(len(_XLSX_MAGIC))
        job = Job(secrets.token_hex(8), name, path, _source(name, head, paste), kind, region)
        self.jobs[job.id] = job
        self.queue.put(job)
        return job

    def work(self) -> None:
        """The worker: one job at a time, in order (two runs would race for the same limits)."""
        while (job := self.queue.get()) is not None:
            try:
                self._run(job)
            except PetandaError as error:
                job.error = str(error)
            except Exception as error:  # a bug: said in the page, not a dead worker
                job.error = f"internal error: {type(error).__name__}: {error}"
            finally:
                job.counted()
                with job.lock:
                    job.waiting = ""
                    job.state = "failed" if job.error else ("stopped" if job.tally.stopped else "done")

    def _run(self, job: Job) -> None:
        job.state = "running"
        with contextlib.ExitStack() as stack:
            lines, position, size = stack.enter_context(_open_upload(job.path, job.source, job.name))
            job.total = size
            csv_out = stack.enter_context(job.csv_path.open("w", encoding="utf-8", newline=""))
            jsonl_out = stack.enter_context(job.jsonl_path.open("w", encoding="utf-8", newline=""))

            def waiting(seconds: float, why: str) -> None:
                job.waiting = f"waiting {seconds:.0f} s for {why}"

            def written() -> None:
                job.waiting = ""
                job.done = position()
                job.counted()

            client = self.client
            run = BatchRun(
                call=lambda queries, peers: client.check(queries, self.deadline_ms, peers),
                writer=_Sink(csv_out, jsonl_out, job),
                tally=job.tally,
                clock=time.monotonic,
                sleep=time.sleep,
                on_wait=waiting,
                on_written=written,
            )
            try:
                fmt: InputFormat = "jsonl" if job.source == "jsonl" else "csv"
                run.run(read_rows(lines, fmt, kind=job.kind, region=job.region))
            except BaseException:
                run.salvage()
                raise
            job.done = job.total or position()
        if job.tally.rows == 0:
            raise InputError(f"{job.name}: no rows to check (empty, or only blank lines or a header)")

    # --- sightings and the audit log --------------------------------------------------------------

    def sighting(self, doc: dict[str, Any]) -> bool:
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise InputError("version must be a whole number")
        sighting = Sighting(
            str(doc.get("peer_id", "")),
            str(doc.get("kind", "")),
            str(doc.get("tier", "")),
            version,
            str(doc.get("tag", "")).lower(),
        )
        return self.client.report_sighting(sighting)

    def fetch_audit(self) -> dict[str, Any]:
        from client._proto.petanda.v1 import auditor_pb2_grpc

        with self.audit_lock:
            try:
                result = fetch_log(
                    auditor_pb2_grpc.AuditorServiceStub(self.channel), self.audit_dir, now=int(time.time())
                )
            except grpc.RpcError as error:
                raise error_from_rpc(error, self.connection.target) from None
            _, verification = summarise_dir(load_dir(self.audit_dir), directory=self.audit_dir)
        return {
            "node_id": result.node_id,
            "entries": result.tree_size,
            "new": result.tree_size - result.previous_size,
            "verified": verification.ok,
            "message": verification.message,
        }

    def audit_report(self) -> str:
        with self.audit_lock:
            if not (self.audit_dir / "node.json").exists():
                raise _Refused(404, "no audit log fetched yet: fetch it first")
            summary, verification = summarise_dir(load_dir(self.audit_dir), directory=self.audit_dir)
        return render_html(summary, verification, generated_at=int(time.time()))


# --- HTTP ---------------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    console: Console

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that went away (a closed tab, a cancelled upload) is no error; anything else is."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    server_version = "petanda-web"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Say nothing per request (a URL may hold the token or a value)."""

    _body_read = False

    def do_GET(self) -> None:
        self._body_read = False
        self._handle("GET")

    def do_POST(self) -> None:
        self._body_read = False
        self._handle("POST")

    # --- the gate ---------------------------------------------------------------------------------

    @property
    def console(self) -> Console:
        return self.server.console

    @property
    def _cookie_name(self) -> str:
        return f"petanda_web_{self.console.port}"  # cookies are shared across the ports of one host

    def _gate(self, method: str, url: urllib.parse.SplitResult) -> bool:
        """Check Host, the token and (for POST) Origin; True when the request entered with the token in
        its URL (then it is answered by a redirect that sets the cookie)."""
        port = self.console.port
        host = self.headers.get("Host", "")
        if host not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            raise _Refused(403, f"Host {host!r} is not this console (127.0.0.1:{port})")
        given = urllib.parse.parse_qs(url.query).get("token", [""])[0]
        if method == "GET" and url.path == "/" and given:
            if not hmac.compare_digest(given.encode(), self.console.token.encode()):
                raise _Refused(403, "wrong token: open the URL that petanda web printed")
            return True
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(self.headers.get("Cookie", ""))
        morsel = cookies.get(self._cookie_name)
        if morsel is None or not hmac.compare_digest(morsel.value.encode(), self.console.token.encode()):
            raise _Refused(403, "no valid token: open the URL that petanda web printed (it holds the token)")
        if method == "POST":
            origin = self.headers.get("Origin", "")
            if origin not in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                raise _Refused(403, f"cross-origin request refused (Origin {origin!r})")
        return False

    def _handle(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        try:
            if self._gate(method, url):
                self.send_response(303)
                self.send_header(
                    "Set-Cookie",
                    f"{self._cookie_name}={self.console.token}; HttpOnly; SameSite=Strict; Path=/",
                )
                self.send_header("Location", "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._route(method, url)
        except _Answered:
            return
        except _Refused as refusal:
            self._discard_body(method)
            self._error(refusal.status, str(refusal))
        except PetandaError as error:
            self._discard_body(method)
            self._error(400, str(error))

    def _discard_body(self, method: str) -> None:
        """Before an error answer to a POST, read what is left of its (capped) body, or close after the
        answer: the next request on the connection must not start inside it."""
        if method != "POST" or self.close_connection or self._body_read:
            return
        text = self.headers.get("Content-Length", "")
        if text.isdigit() and int(text) <= self.console.max_upload:
            with contextlib.suppress(OSError):
                self.rfile.read(int(text))
                return
        self.close_connection = True

    def _route(self, method: str, url: urllib.parse.SplitResult) -> None:
        path, query = url.path, urllib.parse.parse_qs(url.query)
        role = self.console.role
        if method == "GET" and path in _STATIC:
            name, content_type = _STATIC[path]
            body = resources.files("client.tools").joinpath("webstatic", name).read_bytes()
            self._send(200, body, content_type, csp=_PAGE_CSP)
        elif method == "GET" and path == "/api/session":
            self._json(
                200,
                {
                    "role": role,
                    "identity": self.console.identity,
                    "node": self.console.connection.target,
                    "max_upload": self.console.max_upload,
                    "kinds": list(KINDS),
                },
            )
        elif role == "investigator" and method == "POST" and path == "/api/jobs":
            self._upload(query)
        elif role == "investigator" and method == "GET" and path.startswith("/api/jobs/"):
            self._job(path.removeprefix("/api/jobs/"), query)
        elif role == "investigator" and method == "POST" and path == "/api/sighting":
            recorded = self.console.sighting(self._read_json())
            self._json(200, {"recorded": recorded})
        elif role == "auditor" and method == "POST" and path == "/api/audit/fetch":
            self._read_json()
            self._json(200, self.console.fetch_audit())
        elif role == "auditor" and method == "GET" and path == "/audit/report":
            self._send(200, self.console.audit_report().encode(), "text/html; charset=utf-8", csp=_REPORT_CSP)
        else:
            raise _Refused(404, f"no {method} {path} for an {role}'s console")

    # --- requests with a body ---------------------------------------------------------------------

    def _length(self) -> int:
        """The body's length from Content-Length, refused past the cap before anything is read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _Refused(411, "send the upload with a Content-Length (no chunked transfer encoding)")
        text = self.headers.get("Content-Length", "")
        if not text.isdigit():
            self.close_connection = True
            raise _Refused(411, "a Content-Length is required")
        length = int(text)
        cap = self.console.max_upload
        if length > cap:
            self._refuse_body(length, cap)
        return length

    def _refuse_body(self, length: int, cap: int) -> None:
        """Answer 413 without reading the body, then close; read a little of it so that the browser sees
        the answer rather than a connection reset."""
        name = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("name", ["the upload"])[0]
        self.close_connection = True
        self._error(
            413,
            f"{name} is {length / 1e6:.1f} MB; this console takes at most {cap / 1e6:.0f} MB "
            "(petanda web --max-upload-mb N), or check it with petanda check --file",
        )
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(DRAIN_S)
            drained, until = 0, time.monotonic() + DRAIN_S
            while drained < DRAIN_BYTES and time.monotonic() < until:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        raise _Answered

    def _read_body(self, into: BinaryIO, length: int) -> None:
        left = length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                self.close_connection = True
                raise _Refused(400, f"the upload ended after {length - left} of {length} bytes")
            into.write(chunk)
            left -= len(chunk)
        self._body_read = True

    def _read_json(self) -> dict[str, Any]:
        length = self._length()
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) != length:
            self.close_connection = True
            raise _Refused(400, "the request ended early")
        if not raw:
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise _Refused(400, f"the request is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _Refused(400, "the request is not a JSON object")
        return doc

    def _upload(self, query: dict[str, list[str]]) -> None:
        name = query.get("name", ["upload"])[0][:200] or "upload"
        paste = query.get("source", ["file"])[0] == "paste"
        kind = query.get("kind", [""])[0] or None
        region = query.get("region", [""])[0].strip()
        length = self._length()  # refused past the cap before anything is read or stored
        fd, tmp = tempfile.mkstemp(dir=self.console.workdir, prefix="upload-")
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                self._read_body(f, length)
            if paste:
                path = _paste_to_jsonl(path)
            job = self.console.submit(name, path, paste=paste, kind=kind, region=region)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._json(202, {"id": job.id})

    # --- jobs -------------------------------------------------------------------------------------

    def _job(self, rest: str, query: dict[str, list[str]]) -> None:
        job_id, _, export = rest.partition("/")
        job = self.console.jobs.get(job_id)
        if job is None:
            raise _Refused(404, f"no job {job_id!r}")
        if not export:
            since = query.get("since", ["0"])[0]
            self._json(200, job.status(int(since) if since.isdigit() else 0))
            return
        if export not in ("results.csv", "results.jsonl"):
            raise _Refused(404, f"no export {export!r}: results.csv or results.jsonl")
        if job.state in ("queued", "running"):
            raise _Refused(409, "the job is still running: export it when it ends")
        path = job.csv_path if export == "results.csv" else job.jsonl_path
        if not path.exists():
            raise _Refused(404, "this job wrote no results")
        stem = Path(job.name).stem or "petanda"
        suffix = export.removeprefix("results")
        content_type = "text/csv; charset=utf-8" if suffix == ".csv" else "application/jsonl; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(path.stat().st_size))
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        self.send_header("Content-Disposition", f'attachment; filename="{safe}-results{suffix}"')
        self._security_headers(None)
        self.end_headers()
        with path.open("rb") as f:
            shutil.copyfileobj(f, self.wfile)

    # --- responses --------------------------------------------------------------------------------

    def _security_headers(self, csp: str | None) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Content-Security-Policy", csp or "default-src 'none'; frame-ancestors 'none'")

    def _send(self, status: int, body: bytes, content_type: str, *, csp: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._security_headers(csp)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc, ensure_ascii=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        if status:
            self._json(status, {"error": message})


def _paste_to_jsonl(path: Path) -> Path:
    """Pasted text, one value a line, as JSON lines ``{"value": ...}`` (line N stays line N)."""
    target = path.with_name(path.name + ".jsonl")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the pasted text is not UTF-8: {exc}") from None
    finally:
        path.unlink()
    with target.open("w", encoding="utf-8") as f:
        for line in text.splitlines():
            f.write(json.dumps({"value": line.strip()}) + "\n" if line.strip() else "\n")
    return target


# --- running ------------------------------------------------------------------------------------------


@dataclass
class RunningConsole:
    """A console serving on 127.0.0.1: its URL (with the token) until :meth:`close`."""

    console: Console
    server: _Server
    threads: list[threading.Thread]
    own_workdir: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.console.port}/?token={self.console.token}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.console.queue.put(None)
        self.console.channel.close()
        if self.own_workdir:
            shutil.rmtree(self.console.workdir, ignore_errors=True)


def start_console(
    connection: Connection,
    *,
    port: int = 0,
    max_upload: int = DEFAULT_MAX_UPLOAD_MB * 1_000_000,
    audit_dir: Path | None = None,
    deadline_ms: int = 0,
) -> RunningConsole:
    """Open the channel to the node and serve the console on ``127.0.0.1:port`` (0: any free port).

    Raises:
        ConfigError: the certificate or key cannot be used, or it is a node's certificate.
        InputError: the port cannot be bound.
    """
    try:
        pem = connection.cert.read_bytes()
    except OSError as exc:
        raise InputError(f"{connection.cert}: cannot read: {exc.strerror or exc}") from None
    identity = identity_from_certificate(pem, source=str(connection.cert))
    if identity.role not in ("investigator", "auditor"):
        raise InputError(
            f"{connection.cert} is a {identity.role} certificate: the console takes an investigator's "
            "or an auditor's"
        )
    role: Role = "investigator" if identity.role == "investigator" else "auditor"
    channel = open_channel(connection)
    workdir = Path(tempfile.mkdtemp(prefix="petanda-web-"))  # mode 0700: uploads hold raw indicators
    try:
        console = Console(
            connection,
            role,
            identity.id,
            channel,
            workdir,
            audit_dir or workdir / "audit",
            max_upload,
            deadline_ms,
        )
        try:
            server = _Server(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise InputError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    except BaseException:
        channel.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    server.console = console
    console.port = server.server_address[1]
    threads = [
        threading.Thread(target=server.serve_forever, name="petanda-web", daemon=True),
        threading.Thread(target=console.work, name="petanda-web-jobs", daemon=True),
    ]
    for thread in threads:
        thread.start()
    return RunningConsole(console, server, threads, own_workdir=True)


def run_web(args: argparse.Namespace) -> int:
    """Handler of ``petanda web``: serve until interrupted."""
    if not 0 <= args.port < 65536:
        raise InputError(f"--port {args.port} is not a port number")
    if not 0 <= args.deadline_ms < 2**32:
        raise InputError(f"--deadline-ms {args.deadline_ms} is out of range")
    if args.max_upload_mb <= 0:
        raise InputError("--max-upload-mb must be more than 0")
    running = start_console(
        resolve_connection(args),
        port=args.port,
        max_upload=int(args.max_upload_mb * 1_000_000),
        audit_dir=Path(args.audit_dir) if args.audit_dir else None,
        deadline_ms=args.deadline_ms,
    )
    console = running.console

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # a `kill` removes the uploads too
    try:
        print(f"petanda web: {console.role} {console.identity}, node {console.connection.target}")
        print(f"uploads and results are kept in {console.workdir} until the console stops")
        print(f"open {running.url}")
        print("(the link holds this run's token: do not share it; Ctrl-C stops the console)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("petanda web: stopped; its uploads and results are removed", file=sys.stderr)
        return EXIT_OK
    finally:
        running.close()
        signal.signal(signal.SIGTERM, previous)


def add_web_command(subparsers: Any) -> None:
    """Register ``petanda web`` on the ``petanda`` parser's subparsers."""
    p = subparsers.add_parser(
        "web",
        help="a local web console on 127.0.0.1: check files and values, report sightings; audit report",
        description="Serve a web console on 127.0.0.1 that calls your national node with your certificate. "
        "It prints a URL holding a per-run token; open it in your browser. See docs/investigators.md.",
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest file taken (default {DEFAULT_MAX_UPLOAD_MB} MB; larger: petanda check --file)",
    )
    p.add_argument(
        "--deadline-ms", type=int, default=0, metavar="N", help="fan-out deadline (0: node default)"
    )
    p.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="auditors: fetched directory to fetch into and report on (default: a new one for this run)",
    )
    add_connection_arguments(p)
    p.set_defaults(handler=run_web)
