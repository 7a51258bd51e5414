"""A MISP instance as a live feed, read over its REST API with PyMISP.

Each poll asks ``events/restSearch`` for the events changed since the cursor (``timestamp``, MISP's
last-edit time, inclusive), page by page (``limit``, ``page``), deleted attributes included, and hands
each event to the MISP file reader (:func:`node.ingest.misp.parse_misp_event`), so a feed and an event
file give the same rows. The feed honours ``to_ids``: with ``to_ids_only`` (the default) only
attributes with the IDS flag are read (objects with at least one). A deleted attribute edited since the
last poll (its timestamp after the cursor) withdraws what it names, as ``petanda-node retract`` does; a
first poll retracts nothing.

The cursor: ``since`` is the latest event timestamp of the last complete poll; ``seen`` the events
(uuid and timestamp) already stored at or after it. MISP does not promise an order by timestamp, so a
poll keeps ``since`` until its last page, and a poll cut short starts again from ``since``, skipping
what ``seen`` holds: no event is lost or counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import requests
from pymisp import PyMISP
from pymisp.exceptions import PyMISPError

from client.protocol.canonical import normalize
from client.protocol.errors import InputError
from node.config import FeedEntry
from node.feeds.batch import Batch, json_size
from node.feeds.http import BoundedAdapter, FeedError, describe_request_error, first_line
from node.ingest.misp import attribute_indicators, parse_misp_event
from node.ingest.parsers import RecordBuilder, Rejection

__all__ = ["MispFeed"]

#: Most events ``seen`` remembers (beyond it, a poll cut short may read some events twice).
SEEN_MAX: Final = 10_000


def _truthy(item: object) -> bool:
    """MISP writes flags as true, 1 or "1"."""
    return item is True or item == 1 or item == "1"


def _timestamp(holder: dict[str, Any]) -> int:
    stamp = holder.get("timestamp")
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        return stamp
    if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit():
        return int(stamp)
    return 0


class MispFeed:
    """Reads one ``[[feeds]]`` entry of type ``misp``."""

    def __init__(self, entry: FeedEntry, builder: RecordBuilder, *, api_key: str) -> None:
        self.entry = entry
        self.builder = builder
        self.api_key = api_key
        self.adapter = BoundedAdapter(timeout_s=entry.timeout_s, max_bytes=entry.max_response_bytes)

    def close(self) -> None:
        self.adapter.close()

    def _client(self) -> PyMISP:
        entry = self.entry
        try:
            return PyMISP(
                entry.url,
                self.api_key,
                ssl=str(entry.ca) if entry.ca else True,
                cert=(str(entry.client_cert), str(entry.client_key)) if entry.client_cert else None,
                timeout=(entry.timeout_s, entry.timeout_s),
                https_adapter=self.adapter,  # every request: bounded (the URL is https, config checks)
                tool="petanda",
            )
        except PyMISPError as exc:
            raise FeedError(f"{entry.url}: {first_line(exc)}") from None

    def batches(self, cursor: dict[str, Any]) -> Iterator[Batch]:
        """Yield one :class:`Batch` per page of events from ``cursor`` on (``{}`` on a first poll).

        Raises:
            FeedError: the instance could not be read, or answered something else than events.
        """
        since: int | None = cursor.get("since")
        seen: list[str] = list(cursor.get("seen", []))
        latest: int = cursor.get("latest", since or 0)
        try:
            misp = self._client()
            page = 1
            previous: list[str] | None = None
            while True:
                found = misp.search(
                    controller="events",
                    timestamp=since,
                    deleted=[0, 1],
                    limit=self.entry.page_size,
                    page=page,
                    pythonify=False,
                )
                events = self._events(found)
                keys = [f"{json_size(e)}:{str(e)[:200]}" for e in events]
                if events and keys == previous:
                    raise FeedError(
                        f"{self.entry.url}: events/restSearch answered page {page} as page {page - 1}: "
                        "the server does not honour page"
                    )
                previous = keys
                batch = Batch(cursor={})
                skip = set(seen)
                for position, document in enumerate(events):
                    key = self._read(document, position, since, skip, batch)
                    if key is not None:
                        batch.objects += 1
                        seen.append(key)
                        latest = max(latest, int(key.rpartition("@")[2]))
                last_page = len(events) < self.entry.page_size
                if last_page:
                    at_latest = [k for k in dict.fromkeys(seen) if k.endswith(f"@{latest}")]
                    batch.cursor = {"since": latest or since, "seen": at_latest[-SEEN_MAX:]}
                else:
                    batch.cursor = {"since": since, "seen": seen[-SEEN_MAX:], "latest": latest}
                yield batch
                if last_page:
                    return
                page += 1
        except requests.RequestException as exc:
            raise FeedError(describe_request_error(exc, self.entry.timeout_s)) from None
        except PyMISPError as exc:
            raise FeedError(f"{self.entry.url}: {first_line(exc)}") from None

    def _events(self, found: object) -> list[Any]:
        if isinstance(found, dict) and "errors" in found:
            raise FeedError(f"{self.entry.url}: MISP refused the search: {str(found['errors'])[:300]}")
        if not isinstance(found, list):
            raise FeedError(f"{self.entry.url}: events/restSearch did not answer a list of events")
        return found

    def _read(
        self, document: object, position: int, since: int | None, skip: set[str], batch: Batch
    ) -> str | None:
        """Read one event into ``batch``; return its ``uuid@timestamp`` (None: skipped or refused)."""
        name = self.entry.name
        event = document.get("Event") if isinstance(document, dict) else None
        if not isinstance(event, dict):
            batch.add(Rejection(f"{name}#events[{position}]", 'not a MISP event (no "Event" object)'))
            return None
        found = event.get("uuid")
        uuid = found if isinstance(found, str) else f"events[{position}]"
        key = f"{uuid}@{_timestamp(event)}"
        if key in skip:
            return None
        size = json_size(document)
        if size is None:
            batch.add(Rejection(f"{name}#{uuid[:100]}", "the event is nested too deeply"))
            return key
        if size > self.entry.max_object_bytes:
            limit = self.entry.max_object_bytes
            reason = f"the event is {size} bytes, over max_object_bytes ({limit})"
            batch.add(Rejection(f"{name}#{uuid[:100]}", reason))
            return key
        if since is not None:
            self._deletions(event, since, batch)
        try:
            for item in parse_misp_event({"Event": self._ids_only(event)}, f"{name}#{uuid}", self.builder):
                batch.add(item)
        except InputError as exc:
            batch.add(Rejection(f"{name}#{uuid[:100]}", str(exc)))
        return key

    def _ids_only(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with only its IDS attributes (and objects holding one), when ``to_ids_only``."""
        if not self.entry.to_ids_only:
            return event
        attributes = event.get("Attribute", [])
        objects = event.get("Object", [])
        if isinstance(attributes, list):
            attributes = [a for a in attributes if not isinstance(a, dict) or _truthy(a.get("to_ids"))]
        if isinstance(objects, list):
            objects = [
                o
                for o in objects
                if not isinstance(o, dict)
                or not isinstance(o.get("Attribute"), list)
                or any(isinstance(m, dict) and _truthy(m.get("to_ids")) for m in o["Attribute"])
            ]
        return {**event, "Attribute": attributes, "Object": objects}

    def _deletions(self, event: dict[str, Any], since: int, batch: Batch) -> None:
        """Retract what attributes deleted since ``since`` name (those of a type Petanda reads)."""
        members: list[Any] = list(event.get("Attribute") or [])
        for misp_object in event.get("Object") or []:
            if isinstance(misp_object, dict) and isinstance(misp_object.get("Attribute"), list):
                gone = _truthy(misp_object.get("deleted"))
                members += [
                    m | {"deleted": True} if gone and isinstance(m, dict) else m
                    for m in misp_object["Attribute"]
                ]
        for attribute in members:
            if not isinstance(attribute, dict) or not _truthy(attribute.get("deleted")):
                continue
            if _timestamp(attribute) <= since:
                continue  # deleted by the time of the last poll's latest event: handled then
            try:
                pairs = attribute_indicators(attribute)
            except InputError:
                continue  # a type Petanda never reads: nothing of it is held
            for kind, value in pairs:
                try:
                    batch.retractions.append((kind, normalize(kind, value, self.builder.default_region)))
                except InputError:
                    continue  # a value that never parsed was never stored
