"""A TAXII 2.1 collection as a live feed, read with ``taxii2-client``.

Each poll asks for the objects added since the cursor (``added_after``), page by page (``limit`` and
the server's ``next``), and hands every page to the STIX 2.1 file reader
(:func:`node.ingest.stix.parse_stix_bundle`), so a feed and a bundle file give the same rows. A revoked
``indicator`` withdraws what its pattern names (:func:`node.ingest.stix.pattern_indicators`, the reader's
own entry point), as ``petanda-node retract`` does.

The cursor after each page: ``added_after`` is the page's ``X-TAXII-Date-Added-Last`` and ``seen`` the
id and version of its objects (with those of earlier pages of the same date). TAXII sorts objects by
the date they were added and ``added_after`` is exclusive, while many objects may share one date (all
those of one POST do): so the next request asks from one microsecond before that date and skips what
``seen`` holds. A poll cut short anywhere resumes after its last stored page; no object is lost or
counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import requests
from taxii2client.common import _HTTPConnection
from taxii2client.exceptions import AccessError, TAXIIServiceException
from taxii2client.v21 import Collection, as_pages

from client.protocol.canonical import normalize
from client.protocol.errors import InputError
from node.config import FeedEntry
from node.feeds.batch import Batch, json_size
from node.feeds.http import BoundedAdapter, FeedError, describe_request_error, first_line, session_for
from node.ingest.parsers import RecordBuilder, Rejection
from node.ingest.stix import PatternError, parse_stix_bundle, pattern_indicators

__all__ = ["TaxiiFeed"]

#: Most object versions ``seen`` remembers (objects sharing one date beyond it may be read twice).
SEEN_MAX: Final = 10_000
#: Marking definitions remembered across pages and polls, and the largest one kept.
MARKINGS_MAX: Final = 200
MARKING_MAX_BYTES: Final = 4096
_DATE_ADDED_LAST: Final = "X-TAXII-Date-Added-Last"


def _version(obj: dict[str, Any]) -> str:
    """An object's id and version (``modified``, else ``created``; SCOs have neither)."""
    stamp = obj.get("modified") or obj.get("created") or ""
    return f"{obj.get('id')}|{stamp}"


def _remember_markings(objects: list[Any], markings: dict[str, Any]) -> None:
    """Keep the marking definitions of a page (small ones, the latest :data:`MARKINGS_MAX`)."""
    for obj in objects:
        if (
            isinstance(obj, dict)
            and obj.get("type") == "marking-definition"
            and isinstance(obj.get("id"), str)
            and (json_size(obj) or MARKING_MAX_BYTES + 1) <= MARKING_MAX_BYTES
        ):
            markings.pop(obj["id"], None)
            markings[obj["id"]] = obj
    for marking_id in list(markings)[:-MARKINGS_MAX]:
        del markings[marking_id]


def _before(timestamp: str) -> str:
    """The TAXII timestamp one microsecond before ``timestamp``."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        raise FeedError(f"the server sent {_DATE_ADDED_LAST} {timestamp[:40]!r}, not a timestamp") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    earlier = moment.astimezone(UTC) - timedelta(microseconds=1)
    return earlier.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TaxiiFeed:
    """Reads one ``[[feeds]]`` entry of type ``taxii``."""

    def __init__(self, entry: FeedEntry, builder: RecordBuilder, *, password: str | None) -> None:
        self.entry = entry
        self.builder = builder
        self.adapter = BoundedAdapter(timeout_s=entry.timeout_s, max_bytes=entry.max_response_bytes)
        cert = (str(entry.client_cert), str(entry.client_key)) if entry.client_cert else None
        self.session = session_for(self.adapter, verify=str(entry.ca) if entry.ca else True, cert=cert)
        if entry.username is not None and password is not None:
            self.session.auth = requests.auth.HTTPBasicAuth(entry.username, password)

    def close(self) -> None:
        self.session.close()

    def batches(self, cursor: dict[str, Any]) -> Iterator[Batch]:
        """Yield one :class:`Batch` per page from ``cursor`` on (``{}`` on a first poll).

        Raises:
            FeedError: the server could not be read, or did not answer TAXII 2.1; pages yielded before
                stand (their cursor is saved with them).
        """
        since: str | None = cursor.get("added_after")
        seen: list[str] = list(cursor.get("seen", []))
        markings: dict[str, Any] = dict(cursor.get("markings", {}))
        filters = {"added_after": _before(since)} if since else {}
        try:
            # The endpoints take a connection (documented as taxii2client's _HTTPConnection): ours, with
            # the bounded session, so the library's checks of TAXII 2.1 answers stay in force.
            conn = _HTTPConnection(version="2.1")
            conn.session.close()
            conn.session = self.session
            collection = Collection(self.entry.url, conn=conn)
            pages: list[tuple[str, list[str]]] = []
            for envelope in as_pages(collection.get_objects, per_request=self.entry.page_size, **filters):
                objects = self._objects(envelope)
                self._check_next(envelope, pages)
                skip = set(seen)
                fresh = [o for o in objects if not (isinstance(o, dict) and _version(o) in skip)]
                batch = Batch(cursor={}, objects=len(fresh))
                _remember_markings(objects, markings)
                self._read(fresh, batch, markings)
                versions = [_version(o) for o in objects if isinstance(o, dict)]
                stamp = self.adapter.last_headers.get(_DATE_ADDED_LAST)
                if objects and stamp and stamp != since:
                    since, seen = stamp, versions
                else:  # the same date (or a server that does not say): remember them all
                    seen = list(dict.fromkeys(seen + versions))
                batch.cursor = {"added_after": since, "seen": seen[-SEEN_MAX:], "markings": markings}
                yield batch
        except requests.RequestException as exc:
            raise FeedError(describe_request_error(exc, self.entry.timeout_s)) from None
        except AccessError as exc:
            raise FeedError(f"{self.entry.url}: {first_line(exc)}") from None
        except (TAXIIServiceException, ValueError) as exc:
            raise FeedError(f"{self.entry.url}: not a TAXII 2.1 answer: {first_line(exc)}") from None
        except RecursionError:
            raise FeedError(f"{self.entry.url}: not a TAXII 2.1 answer: JSON nested too deeply") from None

    def _check_next(self, envelope: dict[str, Any], pages: list[tuple[str, list[str]]]) -> None:
        """Refuse paging that would never end: ``more`` without ``next``, or the same page again.

        A server may keep one ``next`` for a whole session (medallion does); the same token with the
        same objects is a server going round.
        """
        if not envelope.get("more", False):
            return
        token = envelope.get("next")
        if not isinstance(token, str) or not token:
            raise FeedError(f'{self.entry.url}: the server says "more" but gives no "next" to ask for it')
        objects = envelope.get("objects")
        page = (
            token,
            [_version(o) for o in objects if isinstance(o, dict)] if isinstance(objects, list) else [],
        )
        if pages and pages[-1] == page:
            raise FeedError(
                f"{self.entry.url}: the server answered the same page again: its paging goes round"
            )
        pages[:] = [page]

    def _objects(self, envelope: object) -> list[Any]:
        if not isinstance(envelope, dict):
            raise FeedError(f"{self.entry.url}: the answer is not a TAXII envelope (a JSON object)")
        objects = envelope.get("objects", [])
        if not isinstance(objects, list):
            raise FeedError(f'{self.entry.url}: the envelope\'s "objects" is not a list')
        return objects

    def _read(self, objects: list[Any], batch: Batch, markings: dict[str, Any]) -> None:
        """Sort a page into indicators, refusals and retractions, in the STIX file reader's terms.

        The marking definitions of earlier pages go into the page's bundle too, so an indicator marked
        with a TLP defined pages before it keeps its TLP (never the feed's default, which may be laxer).
        """
        name = self.entry.name
        kept: list[Any] = []
        for position, obj in enumerate(objects):
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                batch.add(Rejection(f"{name}#objects[{position}]", "not a STIX object (no type or id)"))
                continue
            size = json_size(obj)
            if size is None:
                batch.add(Rejection(f"{name}#{obj['id'][:100]}", "the object is nested too deeply"))
            elif size > self.entry.max_object_bytes:
                limit = self.entry.max_object_bytes
                reason = f"the object is {size} bytes, over max_object_bytes ({limit})"
                batch.add(Rejection(f"{name}#{obj['id'][:100]}", reason))
            elif obj.get("type") == "indicator" and obj.get("revoked") is True:
                self._retract(obj, batch)
            else:
                kept.append(obj)
        if kept:
            here = {o["id"] for o in kept}
            earlier = [m for marking_id, m in markings.items() if marking_id not in here]
            bundle = {"type": "bundle", "objects": [*earlier, *kept]}
            for item in parse_stix_bundle(bundle, name, self.builder):
                batch.add(item)

    def _retract(self, obj: dict[str, Any], batch: Batch) -> None:
        location = f"{self.entry.name}#{obj['id'][:100]}"
        pattern = obj.get("pattern")
        if obj.get("pattern_type", "stix") != "stix" or not isinstance(pattern, str):
            batch.add(Rejection(location, "revoked, without a STIX pattern: nothing to retract"))
            return
        try:
            pairs = pattern_indicators(pattern)
        except PatternError as exc:
            batch.add(Rejection(location, f"revoked; pattern: {exc}"))
            return
        for kind, value in pairs:
            try:
                batch.retractions.append((kind, normalize(kind, value, self.builder.default_region)))
            except InputError as exc:
                batch.add(Rejection(location, f"revoked; value: {exc}"))
