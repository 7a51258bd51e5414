"""Live feeds: TAXII 2.1 collections and MISP instances the node keeps in step with (``[[feeds]]``).

:func:`poll` reads one feed from its cursor on, page by page (:mod:`node.feeds.taxii`,
:mod:`node.feeds.misp`), with the file readers of :mod:`node.ingest`, so a feed and a file give the
same rows. Each page is ONE store transaction: its indicators, its retractions, a ``feed`` audit entry
and the feed's new cursor (``Store.save_feed_batch``, a compare-and-swap on the meta
``feed.<name>.cursor``), so the cursor never runs ahead of what is stored and a replica that polls the
same feed at the same moment stores nothing twice. A poll that stored anything publishes.

Each feed's outcomes are kept in the meta ``feed.<name>.health`` (as peers' are, :mod:`node.health`):
last attempt, last success, last error, failures in a row and when the next attempt is due, doubling
from ``retry_s`` up to ``max_backoff_s`` while it fails. ``petanda-node status`` and ``feed status``
show them; ``serve`` polls every due feed in a thread of its own (:func:`start_feed_loop`).
One bad object never stops a feed: it is refused with its id and the reason, and the page goes on.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from client.protocol.errors import ConfigError, PetandaError, StoreError
from node.config import FeedEntry
from node.feeds.batch import Batch, Source
from node.feeds.http import FeedError
from node.ingest.parsers import RecordBuilder, Rejection

if TYPE_CHECKING:
    from node.node import Node

__all__ = [
    "FeedError",
    "FeedHealth",
    "FeedRun",
    "FeedTotals",
    "load_health",
    "load_totals",
    "open_source",
    "poll",
    "start_feed_loop",
    "status",
]

log = logging.getLogger(__name__)

_CURSOR_KEY: Final = "feed.{}.cursor"
_HEALTH_KEY: Final = "feed.{}.health"
_ERROR_MAX: Final = 300
#: Refusals of the last poll kept for ``status`` (all are counted and logged).
REFUSALS_KEPT: Final = 5


@dataclass
class FeedTotals:
    """What a feed brought since it was first polled; saved with its cursor, in the same transaction."""

    cursor: dict[str, Any] = field(default_factory=dict)
    objects: int = 0
    indicators: int = 0
    retractions: int = 0
    refused: int = 0

    @classmethod
    def from_json(cls, raw: str | None) -> FeedTotals:
        if not raw:
            return cls()
        try:  # written only by to_json: unreadable is a broken store, never silently a fresh start
            value = json.loads(raw)
            return cls(**{k: v for k, v in value.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError):
            raise StoreError(f"the feed cursor in the store is unreadable: {raw[:80]!r}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)


@dataclass
class FeedHealth:
    """A feed's poll outcomes, as ``status`` shows them. Times are Unix seconds of the node's clock."""

    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    next_attempt_at: float | None = None
    last_refusals: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, raw: str | None) -> FeedHealth:
        try:
            value = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            value = {}  # an unreadable value is forgotten, never fatal to a poll or to status
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in known}) if isinstance(value, dict) else cls()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)


@dataclass
class FeedRun:
    """What one poll did."""

    name: str
    ok: bool = True
    error: str | None = None
    busy: bool = False
    pages: int = 0
    objects: int = 0
    stored: int = 0
    updated: int = 0
    retracted: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.stored or self.updated or self.retracted)


def load_totals(node: Node, name: str) -> FeedTotals:
    """The feed's cursor and totals as stored."""
    return FeedTotals.from_json(node.store.get_meta(_CURSOR_KEY.format(name)))


def load_health(node: Node, name: str) -> FeedHealth:
    """The feed's poll outcomes as stored."""
    return FeedHealth.from_json(node.store.get_meta(_HEALTH_KEY.format(name)))


def _secret(path: Path, what: str) -> str:
    """Read a secret file: private (0600), UTF-8, one line."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes().decode("utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", path=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} is not UTF-8 text", path=str(path)) from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the {what} may be read by others: chmod 600 it", path=str(path))
    if not text or "\n" in text:
        raise ConfigError(f"the {what} must hold one line", path=str(path))
    return text


def open_source(node: Node, entry: FeedEntry, *, now: float) -> Source:
    """The reader of one feed, with the node's defaults (region, the feed's TLP, today)."""
    builder = RecordBuilder(
        default_region=node.config.node.country_region,
        default_tlp=entry.tlp,
        today=datetime.fromtimestamp(now, UTC).date(),
        source=f"{entry.type}:{entry.name}",
    )
    if entry.type == "taxii":
        from node.feeds.taxii import TaxiiFeed

        password = _secret(entry.password_file, "password_file") if entry.password_file else None
        return TaxiiFeed(entry, builder, password=password)
    from node.feeds.misp import MispFeed

    assert entry.api_key_file is not None  # the config requires it of a misp feed
    return MispFeed(entry, builder, api_key=_secret(entry.api_key_file, "api_key_file"))


def _retry_delay(entry: FeedEntry, failures: int) -> float:
    return float(min(entry.retry_s * 2 ** min(failures - 1, 30), entry.max_backoff_s))


def poll(
    node: Node, entry: FeedEntry, *, publish: bool = True, stop: threading.Event | None = None
) -> FeedRun:
    """Read one feed from its cursor to its end, storing page by page; publish if anything changed.

    A failure (unreachable, too slow, too large, not the feed's format) ends the poll with the pages
    before it stored; it is recorded, with the next attempt after the backoff, and returned, not
    raised. Only a broken store raises. ``stop`` (the server shutting down) ends the poll after the page
    in hand; the next poll goes on from there.
    """
    run = FeedRun(entry.name)
    started = node.clock()
    key = _CURSOR_KEY.format(entry.name)
    health = load_health(node, entry.name)
    health.last_attempt_at = started
    node.store.set_meta(_HEALTH_KEY.format(entry.name), health.to_json())
    source: Source | None = None
    try:
        raw = node.store.get_meta(key)
        totals = FeedTotals.from_json(raw)
        source = open_source(node, entry, now=started)
        for batch in source.batches(totals.cursor):
            raw, totals = _store(node, entry, batch, raw, totals, run)
            if run.busy or (stop is not None and stop.is_set()):
                break
    except (FeedError, ConfigError) as exc:
        run.ok, run.error = False, str(exc)[:_ERROR_MAX]
    finally:
        if source is not None:
            source.close()
    now = node.clock()
    if run.ok:
        health.last_success_at = now
        health.consecutive_failures = 0
        health.next_attempt_at = now + entry.interval_s
    else:
        health.last_error, health.last_error_at = run.error, now
        health.consecutive_failures += 1
        health.next_attempt_at = now + _retry_delay(entry, health.consecutive_failures)
        log.warning("feed %s failed (%d in a row): %s", entry.name, health.consecutive_failures, run.error)
    if run.pages:
        health.last_refusals = [
            f"{r.location}: {r.reason}"[:_ERROR_MAX] for r in run.rejections[:REFUSALS_KEPT]
        ]
    node.store.set_meta(_HEALTH_KEY.format(entry.name), health.to_json())
    if publish and run.changed:
        node.publish(now=now)
    return run


def _store(
    node: Node, entry: FeedEntry, batch: Batch, raw: str | None, totals: FeedTotals, run: FeedRun
) -> tuple[str | None, FeedTotals]:
    """Store one page and its cursor; returns the stored cursor text and totals."""
    if not (batch.objects or batch.indicators or batch.rejections) and batch.cursor == totals.cursor:
        return raw, totals  # only what was stored already: nothing to write
    held = {(p.kind, p.canonical) for p in batch.indicators}
    retractions = [pair for pair in dict.fromkeys(batch.retractions) if pair not in held]
    # Saved with the cursor, so counted exactly once: what the pages held (the store's split into new
    # and merged rows is known only after the transaction; the poll's FeedRun has it).
    following = FeedTotals(
        cursor=batch.cursor,
        objects=totals.objects + batch.objects,
        indicators=totals.indicators + len(held),
        retractions=totals.retractions + len(retractions),
        refused=totals.refused + len(batch.rejections),
    )
    value = following.to_json()
    done = node.save_feed_batch(
        entry.name,
        batch.indicators,
        retractions,
        key=_CURSOR_KEY.format(entry.name),
        expect=raw,
        value=value,
        refused=len(batch.rejections),
        now=node.clock(),
    )
    if done is None:
        log.info("feed %s: another replica stored this page first; this poll stops", entry.name)
        run.busy = True
        return raw, totals
    stored, updated, retracted = done
    run.pages += 1
    run.objects += batch.objects
    run.stored += stored
    run.updated += updated
    run.retracted += retracted
    run.rejections += batch.rejections
    for rejection in batch.rejections[:REFUSALS_KEPT]:
        log.warning("feed %s refused %s: %s", entry.name, rejection.location, rejection.reason)
    return value, following


def status(node: Node, *, now: float) -> list[dict[str, Any]]:
    """Each configured feed's state for ``status``: ``ok``, ``failing``, ``never polled``, with totals."""
    out = []
    for entry in node.config.feeds:
        health = load_health(node, entry.name)
        totals = load_totals(node, entry.name)
        if health.consecutive_failures:
            state = "failing"
        elif health.last_success_at is None:
            state = "never polled"
        else:
            state = "ok"
        out.append(
            {
                "name": entry.name,
                "type": entry.type,
                "url": entry.url,
                "state": state,
                "last_attempt_at": _whole(health.last_attempt_at),
                "last_success_at": _whole(health.last_success_at),
                "last_error": health.last_error,
                "last_error_at": _whole(health.last_error_at),
                "consecutive_failures": health.consecutive_failures,
                "next_attempt_at": _whole(health.next_attempt_at),
                "objects": totals.objects,
                "indicators": totals.indicators,
                "retractions": totals.retractions,
                "refused": totals.refused,
                "last_refusals": health.last_refusals,
            }
        )
    return out


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def start_feed_loop(
    node: Node, stop: threading.Event, *, on_run: Callable[[FeedRun], None] | None = None
) -> threading.Thread | None:
    """Poll every configured feed when it is due, each in a thread of its own, until ``stop`` is set.

    A feed that hangs until its timeout delays no other. Returns a daemon thread that ends once every
    feed's has, or None when no feed is configured.
    """
    if not node.config.feeds:
        return None

    def loop(entry: FeedEntry) -> None:
        while not stop.is_set():
            due = load_health(node, entry.name).next_attempt_at
            wait = 0.0 if due is None else due - node.clock()
            if wait > 0:
                stop.wait(min(wait, entry.interval_s))
                continue
            try:
                run = poll(node, entry, stop=stop)
            except PetandaError:  # the store failed: retried at the next interval
                log.exception("feed %s", entry.name)
                stop.wait(entry.retry_s)
                continue
            except Exception:  # a bug must not kill the server; it is logged and retried
                log.exception("feed %s", entry.name)
                stop.wait(entry.retry_s)
                continue
            if on_run is not None:
                on_run(run)

    def run_all() -> None:
        threads = [
            threading.Thread(target=loop, args=(entry,), name=f"feed-{entry.name}", daemon=True)
            for entry in node.config.feeds
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    thread = threading.Thread(target=run_all, name="feeds", daemon=True)
    thread.start()
    return thread
