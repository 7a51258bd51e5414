"""Peer health: each peer's sync outcomes kept in the store, and the state ``petanda-node status`` shows.

The syncer (:mod:`node.sync`) writes one JSON value per peer in the store's meta
(``peer.<id>.health``) when a sync of that peer starts (:func:`begin`) and when it ends
(:func:`record`), so a separate ``petanda-node status`` process, or another replica sharing a
PostgreSQL store, reads what the serving node's sync thread saw. Forks are read from the audit log
itself (:func:`forks`: entries ``fork`` whose actor is the peer), scanned incrementally.

:func:`assess` turns that data into one state, the first of these that applies:

``fork``
    a fork of the peer is on record (two audit logs, or two manifests of one version, both signed
    by it); it stays until the federation has dealt with it.
``unreachable``
    the last sync that ended could not reach the peer (no answer, or none in time), or one has been
    waiting since its last success (and the last that ended was no refusal); and either
    :data:`FAILURES_UNREACHABLE` syncs failed in a row or none succeeded for more than
    :data:`SILENCE_INTERVALS` sync intervals. A frozen peer, whose sync hangs until its deadline, is
    caught by the second rule before any sync of it fails.
``stale``
    the peer's latest verified manifest has expired, or it was never synced.
``degraded``
    the last sync failed (a failure that is not yet ``unreachable``, or a refusal of what the peer
    served), or the last sync that downloaded nothing new took more than :data:`SLOW_FRACTION` of
    ``sync.timeout_s``.
``ok``
    none of the above.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Final

from node.store.base import Store

__all__ = [
    "FAILURES_UNREACHABLE",
    "SILENCE_INTERVALS",
    "SLOW_FRACTION",
    "STATES",
    "ForkRecord",
    "PeerHealth",
    "abandon",
    "assess",
    "begin",
    "forks",
    "load",
    "record",
]

#: Syncs failed in a row that make a peer ``unreachable``.
FAILURES_UNREACHABLE: Final = 3
#: Sync intervals without a successful sync (while syncs are tried) that make a peer ``unreachable``.
SILENCE_INTERVALS: Final = 2
#: A sync that downloaded nothing and took longer than this share of ``sync.timeout_s`` is slow.
SLOW_FRACTION: Final = 0.5
#: Every state, most severe first (the order in which :func:`assess` tests them).
STATES: Final = ("fork", "unreachable", "stale", "degraded", "ok")

_KEY = "peer.{}.health"
_FORKS_KEY = "health.forks"
_FORK_MARK = b'"action":"fork"'
_SCAN_PAGE = 10_000
_ERROR_MAX = 300


@dataclass
class PeerHealth:
    """What the syncs of one peer did, as kept in the store. Times are Unix seconds of the node's clock.

    ``last_result`` is ``ok`` (including "not modified"), ``error`` (the peer could not be reached or
    did not answer in time) or ``refused`` (it answered with something invalid); ``None`` before any
    sync ended. ``latency_s`` and ``bytes`` are those of the last sync that ended.
    """

    last_attempt_at: float | None = None
    last_result: str | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    consecutive_failures: int = 0
    failing_since: float | None = None
    latency_s: float | None = None
    bytes: int = 0
    version: int | None = None
    #: The protocol versions the peer said it serves, and the one this node's calls to it use (the
    #: highest both speak; None when they share none), as of the last sync.
    served: list[int] | None = None
    protocol: int | None = None

    @classmethod
    def from_json(cls, raw: str | None) -> PeerHealth:
        if not raw:
            return cls()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return cls()  # an unreadable value is forgotten, never fatal to a sync or to status
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in value.items() if k in known}) if isinstance(value, dict) else cls()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)


@dataclass
class ForkRecord:
    """The forks of one peer on record in the audit log: how many, and the latest."""

    count: int = 0
    last_at: int | None = None
    reason: str = ""
    subject: str = "log"


@dataclass
class _ForkScan:
    scanned: int = 0
    peers: dict[str, ForkRecord] = field(default_factory=dict)


def load(store: Store, peer_id: str) -> PeerHealth:
    """The health kept for ``peer_id`` (empty when its syncs never started)."""
    return PeerHealth.from_json(store.get_meta(_KEY.format(peer_id)))


def begin(store: Store, peer_id: str, *, now: float) -> float | None:
    """Note that a sync of ``peer_id`` starts at ``now``; returns when the previous one started."""
    health = load(store, peer_id)
    previous, health.last_attempt_at = health.last_attempt_at, now
    store.set_meta(_KEY.format(peer_id), health.to_json())
    return previous


def abandon(store: Store, peer_id: str, *, previous: float | None) -> None:
    """Forget a sync that our own shutdown cut short (:func:`begin` returned ``previous``): it says
    nothing about the peer."""
    health = load(store, peer_id)
    health.last_attempt_at = previous
    store.set_meta(_KEY.format(peer_id), health.to_json())


def record(
    store: Store,
    peer_id: str,
    *,
    result: str,
    now: float,
    latency_s: float,
    detail: str = "",
    version: int | None = None,
    size: int = 0,
    served: Iterable[int] | None = None,
    protocol: int | None = None,
) -> PeerHealth:
    """Record how a sync of ``peer_id`` ended at ``now``: ``result`` is ``ok``, ``error`` or
    ``refused``, ``detail`` the reason of a failure; ``served`` and ``protocol`` what the sync
    learnt of the peer's protocol versions (None: nothing, the kept value stays). Returns the
    updated health."""
    if result not in ("ok", "error", "refused"):
        raise ValueError(f"result: {result!r}")
    health = load(store, peer_id)
    health.last_result = result
    health.latency_s = round(latency_s, 6)
    health.bytes = size
    if version is not None:
        health.version = version
    if served is not None:
        health.served = sorted(served)
        health.protocol = protocol
    if result == "ok":
        health.last_success_at = now
        health.consecutive_failures = 0
        health.failing_since = None
    else:
        health.last_error = detail[:_ERROR_MAX]
        health.last_error_at = now
        health.consecutive_failures += 1
        if health.failing_since is None:
            health.failing_since = health.last_attempt_at if health.last_attempt_at is not None else now
    store.set_meta(_KEY.format(peer_id), health.to_json())
    return health


def forks(store: Store) -> dict[str, ForkRecord]:
    """The forks on record per peer: every audit entry ``fork`` (its actor is the forking peer).

    The log is scanned from where the previous call stopped (kept in the meta ``health.forks``), so
    only the first call on a long log reads all of it.
    """
    raw = store.get_meta(_FORKS_KEY)
    scan = _ForkScan()
    if raw:
        try:
            value = json.loads(raw)
            peers = {p: ForkRecord(**r) for p, r in value["peers"].items()}
            scan = _ForkScan(int(value["scanned"]), peers)
        except (ValueError, KeyError, TypeError):
            scan = _ForkScan()  # unreadable: scanned again from the start
    size = store.audit_size()
    if scan.scanned > size:  # another store restored in its place: start again
        scan = _ForkScan()
    if scan.scanned == size:
        return scan.peers
    for start in range(scan.scanned, size, _SCAN_PAGE):
        for entry in store.audit_entries(start, min(size, start + _SCAN_PAGE)):
            if _FORK_MARK not in entry:
                continue
            fields = json.loads(entry)
            if fields.get("action") != "fork":
                continue
            found = scan.peers.setdefault(str(fields.get("actor")), ForkRecord())
            found.count += 1
            found.last_at = int(fields.get("ts", 0))
            found.reason = str(fields.get("reason", ""))[:_ERROR_MAX]
            found.subject = str(fields.get("subject", "log"))
    value = {"scanned": size, "peers": {p: asdict(r) for p, r in scan.peers.items()}}
    store.set_meta(_FORKS_KEY, json.dumps(value, separators=(",", ":"), sort_keys=True))
    return scan.peers


def assess(
    health: PeerHealth,
    *,
    now: float,
    interval_s: float,
    timeout_s: float,
    manifest_expires_at: float | None,
    fork: ForkRecord | None = None,
) -> tuple[str, str]:
    """The state of a peer (one of :data:`STATES`) and a short reason for it; see the module's text."""
    if fork is not None and fork.count:
        return "fork", f"{fork.count} fork(s) on record ({fork.subject}): {fork.reason}"
    waiting = health.last_attempt_at is not None and (
        health.last_success_at is None or health.last_attempt_at > health.last_success_at
    )
    if health.last_result == "error" or (waiting and health.last_result != "refused"):
        since = health.last_success_at
        if since is None:
            since = health.failing_since if health.failing_since is not None else health.last_attempt_at
        assert since is not None
        silent = now - since
        if health.consecutive_failures >= FAILURES_UNREACHABLE:
            return "unreachable", f"{health.consecutive_failures} syncs failed in a row: {health.last_error}"
        if silent > SILENCE_INTERVALS * interval_s:
            what = "no successful sync" if health.last_success_at is not None else "never reached"
            why = f": {health.last_error}" if health.consecutive_failures else ": a sync is still waiting"
            return "unreachable", f"{what} for {silent:.0f} s{why}"
    if manifest_expires_at is None:
        return "stale", "never synced"
    if now > manifest_expires_at:
        return "stale", f"its manifest expired {now - manifest_expires_at:.0f} s ago"
    if health.consecutive_failures:
        return "degraded", f"last sync {health.last_result}: {health.last_error}"
    slow = SLOW_FRACTION * timeout_s
    if health.latency_s is not None and health.bytes == 0 and health.latency_s > slow:
        return "degraded", f"last sync took {health.latency_s:.1f} s (slow: over {slow:.1f} s)"
    return "ok", ""
