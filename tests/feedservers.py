"""Servers the feed tests read: the OASIS TAXII 2.1 server (medallion) as a process, a small HTTPS
server with fixed answers (MISP's REST paths, or garbage, or a huge answer), and a socket that accepts
and never answers.

Every server speaks TLS with a certificate of a CA of its own (``feed_pki``) and asks the client for a
certificate of that CA, as a CERT's TAXII or MISP server behind mutual TLS would.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from node.pki import init_ca, issue
from node.testbed import free_ports

COLLECTION_IDS = [f"91a7b528-80eb-42ed-a74d-c6fbd5a2611{i}" for i in range(8)]
USER, PASSWORD = "petanda", "correct horse battery staple"
#: A header a route returns to send its body without a Content-Length.
OMIT_LENGTH = "X-Test-Omit-Length"


@dataclass
class FeedPki:
    """A CA of the CERT's own (not the federation's), its server certificate and a client certificate."""

    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]

    def server_context(self, *, require_client: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        context.load_cert_chain(str(self.server[0]), str(self.server[1]))
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
        return context


def feed_pki(root: Path) -> FeedPki:
    init_ca(root / "ca", name="A CERT's own CA")
    server = issue(root / "ca", role="peer", id="TH", out_dir=root / "server", ips=["127.0.0.1"])
    # a peer certificate serves as the client certificate (it carries clientAuth; this CA issues no people)
    client = issue(root / "ca", role="peer", id="MY", out_dir=root / "client")
    return FeedPki(root / "ca" / "ca.crt", (server.cert, server.key), (client.cert, client.key))


_LAUNCHER = """
import json, ssl, sys
from medallion import application_instance, register_blueprints, set_config
config_path, port, ca, cert, key = sys.argv[1:]
with open(config_path) as handle:
    config = json.load(handle)
for part in ("users", "taxii", "backend"):
    set_config(application_instance, part, config)
register_blueprints(application_instance)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
context.load_cert_chain(cert, key)
context.verify_mode = ssl.CERT_REQUIRED
application_instance.run(host="127.0.0.1", port=int(port), ssl_context=context, threaded=True)
"""


def _medallion_data(base: str) -> dict[str, Any]:
    collection = {
        "description": "",
        "can_read": True,
        "can_write": True,
        "media_types": ["application/stix+json;version=2.1"],
        "objects": [],
        "manifest": [],
    }
    return {
        "/discovery": {
            "title": "a CERT's TAXII server",
            "description": "",
            "contact": "",
            "default": f"{base}/api1/",
            "api_roots": [f"{base}/api1/"],
        },
        "api1": {
            "information": {
                "title": "scam indicators",
                "description": "",
                "versions": ["application/taxii+json;version=2.1"],
                "max_content_length": 100 * 2**20,
            },
            "status": [],
            "collections": [
                {**collection, "id": cid, "title": f"collection {n}"} for n, cid in enumerate(COLLECTION_IDS)
            ],
        },
    }


@dataclass
class Medallion:
    base: str
    process: subprocess.Popen[bytes]

    def collection_url(self, index: int) -> str:
        return f"{self.base}/api1/collections/{COLLECTION_IDS[index]}/"


@contextmanager
def medallion(root: Path, pki: FeedPki, *, max_page_size: int = 100) -> Iterator[Medallion]:
    """The medallion TAXII 2.1 server with its memory backend, over TLS with client certificates."""
    (port,) = free_ports(1)
    base = f"https://127.0.0.1:{port}"
    data = root / "medallion-data.json"
    data.write_text(json.dumps(_medallion_data(base)))
    config = root / "medallion.json"
    config.write_text(
        json.dumps(
            {
                "backend": {
                    "module": "medallion.backends.memory_backend",
                    "module_class": "MemoryBackend",
                    "filename": str(data),
                },
                "users": {USER: PASSWORD},
                "taxii": {"max_page_size": max_page_size},
            }
        )
    )
    args = [str(config), str(port), str(pki.ca), str(pki.server[0]), str(pki.server[1])]
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _wait_for_port(port, process)
        yield Medallion(base, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"medallion exited: {err[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"medallion did not listen on {port}")


Answer = tuple[int, dict[str, str], bytes]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        status, headers, payload = self.server.route(self.command, self.path, body)
        self.send_response(status)
        for name, value in headers.items():
            if name != OMIT_LENGTH:
                self.send_header(name, value)
        if OMIT_LENGTH not in headers:  # else the body ends when the connection closes (HTTP/1.0)
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, route: Callable[[str, str, bytes], Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.route = route
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up on a too large answer is what some tests do


@contextmanager
def https_server(pki: FeedPki, route: Callable[[str, str, bytes], Answer]) -> Iterator[_Server]:
    """A threaded HTTPS server on 127.0.0.1 answering every request with ``route(method, path, body)``."""
    server = _Server(route)
    server.socket = pki.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_socket() -> Iterator[int]:
    """A port that accepts connections and never sends a byte (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
