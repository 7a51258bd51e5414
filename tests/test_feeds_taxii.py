"""Live TAXII 2.1 feeds against the OASIS server, medallion, started by the test as a real process.

medallion runs with its memory backend over TLS, asks for a client certificate of the CERT's own CA and
for HTTP basic authentication, as a CERT's TAXII server would. Objects are added with the TAXII API
(``taxii2-client``'s ``add_objects``), so the server dates them itself. Bad servers (garbage, a huge
answer, one that never answers) are the small servers of ``tests/feedservers.py``.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from taxii2client.v21 import Collection

from client.protocol.canonical import normalize
from client.protocol.errors import StoreError
from node import feeds
from node.config import load_config
from node.node import Node
from node.testbed import build_federation
from tests.feedservers import (
    OMIT_LENGTH,
    PASSWORD,
    USER,
    FeedPki,
    Medallion,
    feed_pki,
    https_server,
    medallion,
    silent_socket,
)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

VALID_FROM = "2026-11-01T00:00:00Z"
AMBER_STRICT = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def indicator(n: int, pattern: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{n:08d}-0000-4000-8000-000000000000",
        "created": "2026-11-01T00:00:00.000Z",
        "modified": "2026-11-01T00:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": VALID_FROM,
        **extra,
    }


def phones(first: int, count: int) -> list[dict[str, Any]]:
    return [
        indicator(n, f"[phone-number:value = '+6012345{n:04d}']", labels=["investment scam"])
        for n in range(first, first + count)
    ]


@dataclass
class Site:
    """One node (MY) and the files a feed needs."""

    root: Path
    config: Path
    pki: FeedPki
    password_file: Path

    def add_feed(self, url: str, name: str = "th-taxii", **keys: object) -> None:
        settings: dict[str, object] = {
            "name": name,
            "type": "taxii",
            "url": url,
            "username": USER,
            "password_file": str(self.password_file),
            "ca": str(self.pki.ca),
            "client_cert": str(self.pki.client[0]),
            "client_key": str(self.pki.client[1]),
            "retry_s": 30,
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: FeedPki) -> Iterator[Medallion]:
    with medallion(tmp_path_factory.mktemp("medallion"), pki) as running:
        yield running


@pytest.fixture
def site(tmp_path: Path, pki: FeedPki) -> Site:
    federation = build_federation(tmp_path / "fed", ["MY"])
    password = tmp_path / "taxii.password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    return Site(tmp_path, federation.members["MY"].config, pki, password)


_used: set[int] = set()


def fresh_collection(server: Medallion) -> int:
    """A collection no other test of the module wrote to."""
    index = next(i for i in range(8) if i not in _used)
    _used.add(index)
    return index


def publish_objects(server: Medallion, pki: FeedPki, index: int, objects: list[dict[str, Any]]) -> None:
    """Add objects to a collection with the TAXII API, as the CERT's own tools would."""
    collection = Collection(
        server.collection_url(index),
        user=USER,
        password=PASSWORD,
        verify=str(pki.ca),
        cert=(str(pki.client[0]), str(pki.client[1])),
    )
    collection._conn.session.trust_env = False  # the test's CA, not one from the environment
    status = collection.add_objects({"objects": objects})
    assert status.status == "complete" and status.success_count == len(objects), status


def row(node: Node, kind: str, value: str) -> Any:
    return node.store.get_indicator(kind, normalize(kind, value, "MY"))


def test_medallion_feeds_a_node_added_paged_then_revoked(server: Medallion, site: Site) -> None:
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, phones(0, 5))
    site.add_feed(server.collection_url(index), page_size=2)
    node = site.node()
    try:
        entry = node.config.feeds[0]
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert (run.pages, run.objects, run.stored, run.updated, run.retracted) == (3, 5, 5, 0, 0)
        held = row(node, "phone", "+60123450003")
        assert held.category == "investment" and held.retracted_at is None and held.source == "taxii:th-taxii"
        version = node.store.latest_version()
        assert version is not None  # the poll published

        # A new version of indicator 2, revoked, and one more indicator: the next poll reads only them.
        revoked = copy.deepcopy(phones(2, 1)[0]) | {"modified": "2026-11-02T00:00:00.000Z", "revoked": True}
        publish_objects(server, site.pki, index, [revoked, *phones(5, 1)])
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert (run.objects, run.stored, run.updated, run.retracted) == (2, 1, 0, 1)
        assert row(node, "phone", "+60123450002").retracted_at is not None
        assert row(node, "phone", "+60123450005").retracted_at is None
        assert node.store.latest_version() == version + 1
        assert node.store.counts(now=int(time.time()))["phone"].active == 5

        # Nothing new: nothing read twice, nothing stored, nothing published.
        run = feeds.poll(node, entry)
        assert run.ok and (run.stored, run.updated, run.retracted) == (0, 0, 0)
        assert node.store.latest_version() == version + 1
        totals = feeds.load_totals(node, entry.name)
        assert (totals.objects, totals.indicators, totals.retractions) == (7, 6, 1)
        audited = [json.loads(e) for e in node.store.audit_entries(0, node.store.audit_size())]
        entries = [e for e in audited if e["action"] == "feed"]
        assert [e["count"] for e in entries] == [2, 2, 1, 1]
        assert all("+6012" not in json.dumps(e) for e in entries)  # counts, never values
    finally:
        node.close()


def test_a_feed_and_a_bundle_file_give_the_same_rows(server: Medallion, site: Site, tmp_path: Path) -> None:
    objects = [
        indicator(
            20,
            "[url:value = 'HTTP://Pay.Scam.example/Login?x=1']",
            labels=["phishing"],
            confidence=85,
            object_marking_refs=[AMBER_STRICT],
            valid_until="2027-06-01T00:00:00Z",
        ),
        indicator(
            21,
            "[user-account:account_type = 'telegram' AND user-account:account_login = 'scam_support']",
            labels=["job", "task"],
            object_marking_refs=[GREEN],
        ),
        indicator(22, "[bank-account:iban = 'GB82 WEST 1234 5698 7654 32']", labels=["money mule"]),
        {"type": "domain-name", "spec_version": "2.1", "value": "scam-shop.example",
         "id": "domain-name--5e2f4c3a-1b2d-4c8e-9f00-000000000023", "object_marking_refs": [GREEN]},
        indicator(24, "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']"),
        {"type": "artifact", "spec_version": "2.1", "id": "artifact--5e2f4c3a-1b2d-4c8e-9f00-000000000025",
         "url": "https://x.example/a.bin"},
    ]  # fmt: skip
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, objects)
    site.add_feed(server.collection_url(index), tlp="GREEN")
    bundle = tmp_path / "same.json"
    bundle.write_text(json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects}))
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
        assert run.ok, run.error
        fed = {
            (k, c): node.store.get_indicator(k, c)
            for k, c in [("url", "http://pay.scam.example/Login?x=1"), ("handle", "telegram:scam_support")]
        }
        rows = _rows(node)
        reasons = sorted(r.reason for r in run.rejections)
    finally:
        node.close()
    assert fed and all(r is not None for r in fed.values())
    other = tmp_path / "other"
    federation = build_federation(other, ["MY"])
    filed = Node.open(load_config(federation.members["MY"].config))
    try:
        report = filed.ingest([bundle], now=time.time(), default_tlp="GREEN")
        assert sorted(r.reason for r in report.rejections) == reasons
        assert _rows(filed) == rows
    finally:
        filed.close()
    assert len(rows) == 4 and len(reasons) == 2


def _rows(node: Node) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every stored indicator's metadata (digests differ between nodes; the source names the feed)."""
    rows = node.store._query(  # type: ignore[attr-defined]
        "SELECT kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at "
        "FROM indicators ORDER BY kind, canonical"
    )
    return {(kind, canonical): tuple(meta) for kind, canonical, *meta in rows}


def test_a_tlp_defined_pages_or_polls_earlier_still_marks_an_indicator(server: Medallion, site: Site) -> None:
    strict = {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": "marking-definition--3f0a7c1e-5b2d-4e8f-9a6b-0c1d2e3f4a5b",
        "created": "2026-11-01T00:00:00.000Z",
        "name": "TLP:AMBER+STRICT (the CERT's own definition)",
        "extensions": {
            "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
                "extension_type": "property-extension",
                "tlp_2_0": "amber+strict",
            }
        },
    }
    marked = {"object_marking_refs": [strict["id"]]}
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, [strict, phones(900, 1)[0] | marked, *phones(901, 1)])
    site.add_feed(server.collection_url(index), page_size=1, tlp="GREEN")
    node = site.node()
    try:
        entry = node.config.feeds[0]
        assert feeds.poll(node, entry).ok
        publish_objects(server, site.pki, index, [phones(902, 1)[0] | marked])
        assert feeds.poll(node, entry).ok
        tlps = [row(node, "phone", f"+6012345{n:04d}").tlp for n in (900, 901, 902)]
        assert tlps == ["AMBER+STRICT", "GREEN", "AMBER+STRICT"]
        assert node.store.withheld_counts(now=int(time.time()))["phone"]["AMBER+STRICT"] == 2
    finally:
        node.close()


def test_a_poll_cut_short_loses_nothing_and_counts_nothing_twice(server: Medallion, site: Site) -> None:
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, phones(100, 7))  # one POST: all seven share one date_added
    site.add_feed(server.collection_url(index), page_size=2)
    node = site.node()
    try:
        entry = node.config.feeds[0]
        save = node.save_feed_batch
        calls = 0

        def crash_on_the_second_page(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise StoreError("the store went away (a crash between two pages)")
            return save(*args, **kwargs)

        node.save_feed_batch = crash_on_the_second_page  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            feeds.poll(node, entry)
        assert node.store.counts(now=int(time.time()))["phone"].active == 2
        node.save_feed_batch = save  # type: ignore[method-assign]
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert (run.stored, run.updated) == (5, 0)
        totals = feeds.load_totals(node, entry.name)
        assert (totals.objects, totals.indicators) == (7, 7)
        assert node.store.counts(now=int(time.time()))["phone"].active == 7
    finally:
        node.close()


def test_one_bad_object_never_stops_a_feed(server: Medallion, site: Site) -> None:
    huge = indicator(300, "[phone-number:value = '+60123450300']", description="x" * (2 * 2**20))
    bad_pattern = indicator(301, "[phone-number:value = '+60123450301'] FOLLOWEDBY [url:value = 'x']")
    not_ours = indicator(302, "[phone-number:value = 'not a number']")
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, [huge, bad_pattern, not_ours, *phones(303, 2)])
    site.add_feed(server.collection_url(index), page_size=2)
    node = site.node()
    try:
        entry = node.config.feeds[0]
        run = feeds.poll(node, entry)
        assert run.ok, run.error
        assert run.stored == 2
        reasons = {r.location.partition("#")[2]: r.reason for r in run.rejections}
        assert (
            reasons[huge["id"]].startswith("the object is ")
            and "over max_object_bytes (1048576)" in (reasons[huge["id"]])
        )
        assert reasons[bad_pattern["id"]].startswith("pattern: ")
        assert reasons[not_ours["id"]].startswith("value: ")
        shown = feeds.status(node, now=time.time())[0]
        assert shown["state"] == "ok" and shown["refused"] == 3 and len(shown["last_refusals"]) == 3
    finally:
        node.close()


def test_an_answer_over_max_response_bytes_fails_the_poll_and_stores_nothing(
    server: Medallion, site: Site
) -> None:
    index = fresh_collection(server)
    big = [indicator(400 + n, f"[phone-number:value = '+6012345{400 + n:04d}']", description="y" * 30_000)
           for n in range(4)]  # fmt: skip
    publish_objects(server, site.pki, index, big)
    site.add_feed(server.collection_url(index), max_response_bytes=65536)
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
        assert not run.ok and run.pages == 0
        assert "over 65536 (max_response_bytes); lower page_size" in (run.error or "")
        assert node.store.counts(now=int(time.time())) == {}
        assert feeds.load_totals(node, "th-taxii").cursor == {}
    finally:
        node.close()


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"\x00\xffnot json at all", "application/taxii+json;version=2.1", "not a TAXII 2.1 answer"),
        (b"<html>login</html>", "text/html", "not a TAXII 2.1 answer"),
        (b'{"objects": {"not": "a list"}}', "application/taxii+json;version=2.1", '"objects" is not a list'),
        (b"[1, 2, 3]", "application/taxii+json;version=2.1", "not a TAXII envelope"),
        (b'{"more": true, "objects": []}', "application/taxii+json;version=2.1", 'gives no "next"'),
        (b'{"objects": ' + b"[" * 100_000, "application/taxii+json;version=2.1", "nested too deeply"),
    ],
)
def test_a_server_that_serves_garbage_gets_a_clear_error_and_a_backoff(
    site: Site, body: bytes, content_type: str, expected: str
) -> None:
    collection = json.dumps({"id": "c", "title": "c", "can_read": True, "can_write": False,
                             "media_types": ["application/stix+json;version=2.1"]}).encode()  # fmt: skip

    def route(method: str, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        if "/objects/" in path:
            return 200, {"Content-Type": content_type}, body
        return 200, {"Content-Type": "application/taxii+json;version=2.1"}, collection

    with https_server(site.pki, route) as garbage:
        site.add_feed(f"https://127.0.0.1:{garbage.server_address[1]}/api1/collections/c/")
        node = site.node()
        try:
            entry = node.config.feeds[0]
            first = feeds.poll(node, entry)
            health = feeds.load_health(node, entry.name)
            assert not first.ok and expected in (first.error or "")
            assert health.consecutive_failures == 1 and health.last_error == first.error
            assert health.next_attempt_at == pytest.approx(health.last_error_at + 30)  # retry_s
            second = feeds.poll(node, entry)
            health = feeds.load_health(node, entry.name)
            assert not second.ok and health.consecutive_failures == 2
            assert health.next_attempt_at == pytest.approx(health.last_error_at + 60)  # doubled
            assert feeds.status(node, now=time.time())[0]["state"] == "failing"
            assert node.store.counts(now=int(time.time())) == {}
        finally:
            node.close()
        assert all(h.get("Authorization", "").startswith("Basic ") for _, _, h, _ in garbage.requests)


def test_an_answer_without_a_length_is_cut_at_max_response_bytes(site: Site) -> None:
    collection = json.dumps({"id": "c", "title": "c", "can_read": True, "can_write": False,
                             "media_types": ["application/stix+json;version=2.1"]}).encode()  # fmt: skip
    endless = json.dumps({"objects": phones(500, 2000)}).encode()

    def route(method: str, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        taxii = {"Content-Type": "application/taxii+json;version=2.1"}
        return (200, taxii | {OMIT_LENGTH: "1"}, endless) if "/objects/" in path else (200, taxii, collection)

    with https_server(site.pki, route) as big:
        site.add_feed(
            f"https://127.0.0.1:{big.server_address[1]}/api1/collections/c/", max_response_bytes=65536
        )
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
            assert node.store.counts(now=int(time.time())) == {}
        finally:
            node.close()
    assert len(endless) > 65536 and not run.ok
    assert "the answer is over 65536 (max_response_bytes)" in (run.error or ""), run.error


def test_paging_that_goes_round_is_stopped(site: Site) -> None:
    collection = json.dumps({"id": "c", "title": "c", "can_read": True, "can_write": False,
                             "media_types": ["application/stix+json;version=2.1"]}).encode()  # fmt: skip
    page = json.dumps({"more": True, "next": "again", "objects": phones(800, 1)}).encode()

    def route(method: str, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        taxii = {"Content-Type": "application/taxii+json;version=2.1"}
        return (200, taxii, page) if "/objects/" in path else (200, taxii, collection)

    with https_server(site.pki, route) as loop:
        site.add_feed(f"https://127.0.0.1:{loop.server_address[1]}/api1/collections/c/")
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
        finally:
            node.close()
    assert not run.ok and "answered the same page again" in (run.error or ""), run.error
    assert (run.pages, run.stored) == (1, 1)  # the first page stands


def test_a_server_that_never_answers_times_out(site: Site) -> None:
    with silent_socket() as port:
        site.add_feed(f"https://127.0.0.1:{port}/api1/collections/c/", timeout_s=0.5)
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
        finally:
            node.close()
    assert not run.ok
    assert "no answer within 0.5 s (timeout_s)" in (run.error or ""), run.error


def test_a_server_that_stalls_mid_answer_times_out(site: Site) -> None:
    def route(method: str, path: str, payload: bytes) -> tuple[int, dict[str, str], bytes]:
        time.sleep(3)
        return 200, {"Content-Type": "application/taxii+json;version=2.1"}, b"{}"

    with https_server(site.pki, route) as slow:
        site.add_feed(f"https://127.0.0.1:{slow.server_address[1]}/api1/collections/c/", timeout_s=0.5)
        node = site.node()
        try:
            run = feeds.poll(node, node.config.feeds[0])
        finally:
            node.close()
    assert not run.ok and "no answer within 0.5 s (timeout_s)" in (run.error or ""), run.error


def test_a_wrong_password_names_the_settings(server: Medallion, site: Site) -> None:
    site.password_file.write_text("wrong\n")
    site.add_feed(server.collection_url(0))
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
    finally:
        node.close()
    assert not run.ok and "HTTP 401" in (run.error or "") and "password_file" in (run.error or "")


def test_a_password_file_others_may_read_is_refused(server: Medallion, site: Site) -> None:
    site.password_file.chmod(0o644)
    site.add_feed(server.collection_url(0))
    node = site.node()
    try:
        run = feeds.poll(node, node.config.feeds[0])
    finally:
        node.close()
    assert not run.ok and "chmod 600" in (run.error or "")


def petanda_node(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_operator_commands(server: Medallion, site: Site) -> None:
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, [*phones(600, 3), indicator(603, "[x-thing:value = 'a']")])
    site.add_feed(server.collection_url(index))
    done = petanda_node("feed", "run", "--config", site.config)
    assert done.returncode == 1, done.stderr  # one object refused
    assert "feed th-taxii: 1 pages, 4 objects: stored 3, updated 0, retracted 0, refused 1" in done.stdout
    assert "published version 1" in done.stdout
    assert "th-taxii#indicator--00000603-0000-4000-8000-000000000000: pattern:" in done.stderr
    shown = json.loads(petanda_node("feed", "status", "--config", site.config, "--json").stdout)
    assert [(f["name"], f["state"], f["indicators"], f["refused"]) for f in shown] == [
        ("th-taxii", "ok", 3, 1)
    ]
    status = json.loads(petanda_node("status", "--config", site.config, "--json").stdout)
    assert status["feeds"] == shown
    table = petanda_node("status", "--config", site.config)
    assert table.returncode == 0 and "live feeds" in table.stdout and "th-taxii" in table.stdout
    unknown = petanda_node("feed", "run", "nope", "--config", site.config)
    assert unknown.returncode == 2 and "no feed named 'nope'; configured: th-taxii" in unknown.stderr


def test_serve_polls_its_feeds(server: Medallion, site: Site) -> None:
    index = fresh_collection(server)
    publish_objects(server, site.pki, index, phones(700, 2))
    site.add_feed(server.collection_url(index), interval_s=10)
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--no-sync", "--config", str(site.config)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and "serving on port" in process.stdout.readline()
        deadline = time.monotonic() + 60
        shown: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            shown = json.loads(petanda_node("feed", "status", "--config", site.config, "--json").stdout)
            if shown[0]["state"] == "ok":
                break
            time.sleep(0.5)
        assert shown[0]["state"] == "ok" and shown[0]["indicators"] == 2, shown
        # while it serves, the next poll waits for its interval
        assert shown[0]["next_attempt_at"] > shown[0]["last_success_at"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
