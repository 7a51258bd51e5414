"""Live MISP feeds over the REST API (PyMISP), against a small local HTTPS server serving real events.

No MISP server runs here. The mapping is tested on real event JSON: PyMISP's own test event
(``tests/data/misp/pymisp_existing_event.json``, from PyMISP's sdist ``tests/mispevent_testfiles/``) and
the project's scam event in MISP's core format (``tests/data/misp_event.json``). PyMISP's HTTP client is
tested against ``tests/feedservers.py``'s HTTPS server (with client certificates), which answers the
REST paths PyMISP calls — ``servers/getVersion``, ``users/view/me``, ``attributes/describeTypes.json``
and ``events/restSearch`` — filtering by ``timestamp`` and paging by ``limit``/``page`` as MISP does.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymisp
import pytest

from client.protocol.canonical import normalize
from node import feeds
from node.config import load_config
from node.node import Node
from node.testbed import build_federation
from tests.feedservers import OMIT_LENGTH, FeedPki, feed_pki, https_server, silent_socket

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).resolve().parent / "data"
API_KEY = "b" * 40
DESCRIBE_TYPES = (Path(pymisp.__file__).parent / "data" / "describeTypes.json").read_bytes()
JSON = {"Content-Type": "application/json"}


def pymisp_event() -> dict[str, Any]:
    """PyMISP's test event (APT28 domains, tlp:white), as MISP's restSearch wraps it."""
    return {"Event": json.loads((DATA / "misp" / "pymisp_existing_event.json").read_text())}


def scam_event(timestamp: int = 1_714_521_600) -> dict[str, Any]:
    """The project's scam event in MISP's core format, with its last-edit time."""
    document = json.loads((DATA / "misp_event.json").read_text())
    document["Event"]["timestamp"] = str(timestamp)
    return document


@dataclass
class FakeMisp:
    """What the local server holds: events, and the searches PyMISP sent."""

    events: list[dict[str, Any]]
    searches: list[dict[str, Any]] = field(default_factory=list)
    garbage: bytes | None = None
    honour_page: bool = True

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/servers/getVersion"):
            version = {"version": "2.5.0", "pymisp_recommended_version": pymisp.__version__}
            return 200, JSON, json.dumps(version).encode()
        if path.startswith("/users/view/me"):
            user = {"User": {"id": "7", "email": "feeds@cert.example", "org_id": "1", "role_id": "3"},
                    "Role": {"id": "3", "name": "User", "perm_auth": True}, "UserSetting": {}}  # fmt: skip
            return 200, JSON, json.dumps(user).encode()
        if path.startswith("/attributes/describeTypes.json"):
            return 200, JSON, DESCRIBE_TYPES
        if path.startswith("/events/restSearch") and method == "POST":
            query = json.loads(body)
            self.searches.append(query)
            if self.garbage is not None:
                return 200, JSON | {OMIT_LENGTH: "1"}, self.garbage
            since = int(query.get("timestamp") or 0)
            found = [e for e in self.events if _timestamp(e) >= since]
            limit, page = int(query["limit"]), int(query["page"]) if self.honour_page else 1
            answer = {"response": found[(page - 1) * limit : page * limit]}
            return 200, JSON, json.dumps(answer).encode()
        return 404, JSON, b'{"name": "Not Found", "message": "Not Found", "url": "/"}'


def _timestamp(document: dict[str, Any]) -> int:
    event = document.get("Event")
    return int(event.get("timestamp", 0)) if isinstance(event, dict) else 0


@dataclass
class Site:
    config: Path
    pki: FeedPki
    key_file: Path

    def add_feed(self, port: int, name: str = "my-misp", **keys: object) -> None:
        settings: dict[str, object] = {
            "name": name,
            "type": "misp",
            "url": f"https://127.0.0.1:{port}/",
            "api_key_file": str(self.key_file),
            "ca": str(self.pki.ca),
            "client_cert": str(self.pki.client[0]),
            "client_key": str(self.pki.client[1]),
            **keys,
        }
        lines = ["[[feeds]]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
        with self.config.open("a") as handle:
            handle.write("\n".join(lines) + "\n")

    def node(self) -> Node:
        return Node.open(load_config(self.config))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FeedPki:
    return feed_pki(tmp_path_factory.mktemp("feed-pki"))


@pytest.fixture
def site(tmp_path: Path, pki: FeedPki) -> Site:
    federation = build_federation(tmp_path / "fed", ["MY"])
    key = tmp_path / "misp.key"
    key.write_text(API_KEY + "\n")
    key.chmod(0o600)
    return Site(federation.members["MY"].config, pki, key)


@pytest.fixture
def misp(pki: FeedPki) -> Iterator[tuple[FakeMisp, int]]:
    fake = FakeMisp([])
    with https_server(pki, fake.route) as server:
        yield fake, server.server_address[1]


def _rows(node: Node) -> dict[tuple[str, str], tuple[Any, ...]]:
    rows = node.store._query(  # type: ignore[attr-defined]
        "SELECT kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, "
        "retracted_at IS NOT NULL FROM indicators ORDER BY kind, canonical"
    )
    return {(kind, canonical): (*meta[:-1], bool(meta[-1])) for kind, canonical, *meta in rows}


def test_a_misp_feed_and_event_files_give_the_same_rows(
    site: Site, misp: tuple[FakeMisp, int], tmp_path: Path
) -> None:
    fake, port = misp
    fake.events = [pymisp_event(), scam_event()]
    site.add_feed(port, to_ids_only=False)
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
        assert run.ok, run.error
        fed = _rows(node)
        fed_reasons = sorted(r.reason for r in run.rejections)
    finally:
        node.close()
    files = []
    for n, document in enumerate(fake.events):
        path = tmp_path / f"event-{n}.json"
        path.write_text(json.dumps(document))
        files.append(path)
    other = build_federation(tmp_path / "other", ["MY"])
    filed = Node.open(load_config(other.members["MY"].config))
    try:
        report = filed.ingest(files, now=time.time())
        assert _rows(filed) == fed
        assert sorted(r.reason for r in report.rejections) == fed_reasons
    finally:
        filed.close()
    # PyMISP's event: seven to_ids domains of APT28 and the domain-ip objects' domains, tlp:white
    assert fed[("domain", "movieultimate.com")][4] == "CLEAR"
    # the scam event: its own category and confidence tags, tlp:amber
    assert fed[("email", "recruit@jobs-my.example")][:1] == ("job_task",)
    assert all(not meta[-1] for meta in fed.values())  # nothing retracted
    assert run.objects == 2


def test_a_misp_feed_is_incremental_and_honours_to_ids_and_deletions(
    site: Site, misp: tuple[FakeMisp, int]
) -> None:
    fake, port = misp
    first = scam_event(1_714_521_600)
    fake.events = [pymisp_event() | {}, first]
    fake.events[0]["Event"]["timestamp"] = "1513948642"
    site.add_feed(port, page_size=1)
    node = site.node()
    try:
        entry = node.config.feeds[0]
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert run.pages == 3 and run.objects == 2  # one event a page, then an empty page
        held = _rows(node)
        recruiter = ("phone", normalize("phone", "+66 81 234 5678", "MY"))
        assert recruiter not in held  # to_ids false: not read
        assert ("email", "recruit@jobs-my.example") in held
        assert all(query.get("timestamp") is None for query in fake.searches)
        assert all(query["deleted"] == [0, 1] for query in fake.searches)

        # The event is edited: its iban attribute deleted, a new phone added, a newer timestamp.
        edited = copy.deepcopy(first)
        edited["Event"]["timestamp"] = "1714608000"
        iban = next(a for a in edited["Event"]["Attribute"] if a["type"] == "iban")
        iban.update(deleted=True, timestamp="1714608000")
        edited["Event"]["Attribute"].append(
            {"uuid": "5f0c6a1e-2b3d-4c5e-8f9a-000000000099", "type": "phone-number", "category": "Person",
             "value": "+60 12-999 8888", "to_ids": True, "deleted": False, "timestamp": "1714608000"}
        )  # fmt: skip
        fake.events[1] = edited
        fake.searches.clear()
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert fake.searches[0]["timestamp"] == 1_714_521_600  # from the latest event seen, inclusive
        assert run.objects == 1 and run.stored == 1 and run.retracted == 1
        rows = _rows(node)
        assert rows[("phone", "+60129998888")][-1] is False
        assert rows[("bank_account", "GB:WEST:12345698765432")][-1] is True  # retracted

        # Nothing edited since: the next poll reads the same last event and skips it.
        fake.searches.clear()
        run = feeds.poll(node, entry)
        assert run.ok and (run.objects, run.stored, run.updated, run.retracted) == (0, 0, 0, 0)
        assert fake.searches[0]["timestamp"] == 1_714_608_000
        shown = feeds.status(node, now=time.time())[0]
        assert shown["state"] == "ok" and shown["objects"] == 3 and shown["retractions"] == 1
    finally:
        node.close()


def test_the_api_key_and_client_certificate_are_sent(site: Site, misp: tuple[FakeMisp, int]) -> None:
    fake, port = misp
    site.add_feed(port)
    node = site.node()
    try:
        assert feeds.poll(node, node.config.feeds[0]).ok
    finally:
        node.close()
    assert fake.searches  # the TLS server asks for a client certificate of its CA: it was given one


def test_a_wrong_api_key_gets_a_clear_error(site: Site, pki: FeedPki) -> None:
    def route(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 403, JSON, b'{"name": "Authentication failed.", "message": "Authentication failed."}'

    with https_server(pki, route) as server:
        site.add_feed(server.server_address[1])
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
        finally:
            node.close()
    assert not run.ok and "Authentication failed" in (run.error or ""), run.error


def test_a_misp_that_serves_garbage_or_too_much_stores_nothing(
    site: Site, misp: tuple[FakeMisp, int]
) -> None:
    fake, port = misp
    fake.events = [scam_event()]
    site.add_feed(port, name="garbage")
    site.add_feed(port, name="too-much", max_response_bytes=65536)
    node = site.node()
    try:
        garbage, too_much = node.config.feeds
        fake.garbage = b"<html><body>Maintenance</body></html>"
        run = feeds.poll(node, garbage)
        assert not run.ok and "Unexpected response" in (run.error or ""), run.error
        fake.garbage = b'{"response": [' + b'{"Event": {"Attribute": []}},' * 10_000 + b"{}]}"
        run = feeds.poll(node, too_much)
        assert not run.ok and "(max_response_bytes)" in (run.error or ""), run.error
        assert node.store.counts(now=int(time.time())) == {}
        assert [f["state"] for f in feeds.status(node, now=time.time())] == ["failing", "failing"]
    finally:
        node.close()


def test_a_huge_or_malformed_event_is_refused_and_the_rest_stored(
    site: Site, misp: tuple[FakeMisp, int]
) -> None:
    fake, port = misp
    huge = scam_event()
    huge["Event"]["uuid"] = "5f0c6a1e-0000-4000-8000-00000000beef"
    huge["Event"]["info"] = "x" * 2_000_000
    fake.events = [huge, {"Event": "not an object"}, pymisp_event()]
    site.add_feed(port)
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
        assert run.ok, run.error
        reasons = {r.location: r.reason for r in run.rejections}
        assert "over max_object_bytes (1048576)" in reasons["my-misp#5f0c6a1e-0000-4000-8000-00000000beef"]
        assert reasons["my-misp#events[1]"] == 'not a MISP event (no "Event" object)'
        assert ("domain", "movieultimate.com") in _rows(node)
    finally:
        node.close()


def test_a_misp_that_ignores_page_is_stopped(site: Site, misp: tuple[FakeMisp, int]) -> None:
    fake, port = misp
    fake.events, fake.honour_page = [pymisp_event(), scam_event()], False
    site.add_feed(port, page_size=1)
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
    finally:
        node.close()
    assert not run.ok and "does not honour page" in (run.error or ""), run.error
    assert run.pages == 1 and run.objects == 1


def test_a_misp_that_never_answers_times_out(site: Site) -> None:
    with silent_socket() as port:
        site.add_feed(port, timeout_s=0.5)
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
        finally:
            node.close()
    assert not run.ok and "0.5" in (run.error or "") and "timed out" in (run.error or "").lower(), run.error
