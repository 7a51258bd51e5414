"""The node's Prometheus metrics: a ``/metrics`` endpoint on a port of its own (``[metrics]``).

Two sources, one registry of the node's own (never the process-wide default registry):

- counters and histograms of what this process did, incremented where it happens: OPRF evaluations
  served to peers (:meth:`Metrics.evaluated`), values checked for the node's own investigators and the
  checks' duration (:meth:`Metrics.checked`), syncs of each peer (:meth:`Metrics.synced`). They start at
  zero with the process; replicas each expose their own (Prometheus sums them).
- figures the node already keeps in its store, read at scrape time by :class:`StoreCollector`: each
  peer's last successful sync, its age, failures in a row and state (:mod:`node.health`), the OPRF
  quotas used today per peer and kind and holder-wide (:mod:`node.usage`), the audit log's size, and
  the alerts on record (forks, enumeration, plausibility, the holder-wide quota). They are the same in
  every replica sharing the store.

What the series may say: the holder side's evaluations carry the call's result (``ok``, ``invalid``,
``rate_limited``, ``unknown_epoch``), never a hit: a holder cannot know one. The asking side's checks
carry each peer's answer (match, no match, unavailable…): that is the node's own investigators' data,
which its audit log holds too; no label ever carries a value, a digest or an investigator's name.
The endpoint binds to 127.0.0.1 by default and serves plain HTTP: ``docs/operators.md`` ("Metrics")
says who should reach it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from client.protocol.kinds import KINDS
from client.protocol.model import PeerOutcome
from node import health
from node.config import NodeConfig, parse_address
from node.quotas import OprfQuotas
from node.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["CHECK_BUCKETS", "Metrics", "MetricsServer", "StoreCollector", "start_metrics_server"]

#: Buckets of a check's duration in seconds: a check is bounded by its deadline (5 s by default).
CHECK_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of one peer's sync in seconds (a delta is fast; a full download after a rotation is not).
SYNC_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SECONDS_PER_DAY: Final = 86_400


class _Node(Protocol):
    """What the collector reads of :class:`node.node.Node` (not imported: node.node imports this)."""

    id: str
    config: NodeConfig
    store: Store
    quotas: OprfQuotas

    @property
    def epoch(self) -> int: ...

    @property
    def usage(self) -> Any: ...

    @property
    def hits(self) -> Any: ...


class Metrics:
    """The node's registry, and the counters and histograms the node's parts increment."""

    def __init__(self, node: _Node, *, clock: Any = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.evaluations = Counter(
            "petanda_oprf_evaluations",
            "EvaluateOprf calls served to peers, by the call's result (ok, invalid, rate_limited, "
            "unknown_epoch); a holder never knows whether a value was held",
            ["peer", "kind", "result"],
            registry=self.registry,
        )
        self.evaluated_elements = Counter(
            "petanda_oprf_evaluated_elements",
            "Blinded elements in the EvaluateOprf calls served to peers, by the call's result",
            ["peer", "kind", "result"],
            registry=self.registry,
        )
        self.checks = Counter(
            "petanda_check_answers",
            "Answers of peers to the values this node's investigators checked, by peer, kind and answer "
            "(match, no_match, unavailable, rate_limited, stale): this node's own data",
            ["peer", "kind", "answer"],
            registry=self.registry,
        )
        self.check_seconds = Histogram(
            "petanda_check_duration_seconds",
            "Duration of one check of a batch of values against the peers (within its deadline)",
            buckets=CHECK_BUCKETS,
            registry=self.registry,
        )
        self.syncs = Counter(
            "petanda_syncs",
            "Syncs of each peer by outcome (ok, not_modified, error, refused)",
            ["peer", "outcome"],
            registry=self.registry,
        )
        self.sync_failures = Counter(
            "petanda_sync_failures",
            "Syncs of each peer that failed: unreachable or late (error), or invalid artefacts (refused)",
            ["peer"],
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "petanda_sync_duration_seconds",
            "Duration of one sync of a peer",
            ["peer"],
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        )
        for peer in node.config.peers:  # a peer never synced shows 0 failures, not no series
            self.sync_failures.labels(peer.id)
        self.registry.register(StoreCollector(node, clock=clock))

    def evaluated(self, peer: str, kind: str, result: str, elements: int) -> None:
        """One EvaluateOprf call served to ``peer`` ended with ``result``."""
        self.evaluations.labels(peer, kind, result).inc()
        self.evaluated_elements.labels(peer, kind, result).inc(elements)

    def checked(
        self, kinds: Sequence[str], outcomes: Iterable[Sequence[PeerOutcome]], seconds: float
    ) -> None:
        """One check ended: ``kinds[i]`` is the kind of item ``i``, ``outcomes[i]`` its answers."""
        self.check_seconds.observe(seconds)
        for kind, answers in zip(kinds, outcomes, strict=True):
            for answer in answers:
                self.checks.labels(answer.peer_id, kind, answer.status.value).inc()

    def synced(self, peer: str, outcome: str, seconds: float) -> None:
        """One sync of ``peer`` ended with ``outcome`` (``ok``, ``not_modified``, ``error``, ``refused``)."""
        self.syncs.labels(peer, outcome).inc()
        self.sync_seconds.labels(peer).observe(seconds)
        if outcome in ("error", "refused"):
            self.sync_failures.labels(peer).inc()


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class StoreCollector(Collector):
    """Figures the node keeps in its store, read at each scrape (the same in every replica)."""

    def __init__(self, node: _Node, *, clock: Any = time.time) -> None:
        self._node = node
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only: nothing is read at registration

    def collect(self) -> Iterator[Metric]:
        node, now = self._node, self._clock()
        store = node.store
        audit = _gauge("petanda_audit_log_entries", "Entries in the node's audit log")
        audit.add_metric([], store.audit_size())
        yield audit
        epoch = _gauge("petanda_oprf_epoch", "The node's current OPRF epoch")
        epoch.add_metric([], node.epoch)
        yield epoch
        yield from self._peers(now)
        yield from self._quotas(now)

    def _peers(self, now: float) -> Iterator[Metric]:
        node, config = self._node, self._node.config
        success = _gauge(
            "petanda_peer_last_sync_success_timestamp_seconds",
            "When the last successful sync of each peer ended (Unix time; absent before the first)",
            ["peer"],
        )
        age = _gauge(
            "petanda_peer_sync_age_seconds",
            "Seconds since the last successful sync of each peer (absent before the first)",
            ["peer"],
        )
        failing = _gauge(
            "petanda_peer_sync_consecutive_failures", "Syncs of each peer failed in a row", ["peer"]
        )
        state = _gauge(
            "petanda_peer_state",
            "Each peer's health (1 for its current state: fork, unreachable, stale, degraded, ok)",
            ["peer", "state"],
        )
        forks = CounterMetricFamily(
            "petanda_peer_forks", "Forks of each peer on record in the audit log", labels=["peer"]
        )
        recorded = health.forks(node.store)
        for entry in config.peers:
            kept = health.load(node.store, entry.id)
            if kept.last_success_at is not None:
                success.add_metric([entry.id], kept.last_success_at)
                age.add_metric([entry.id], max(0.0, now - kept.last_success_at))
            failing.add_metric([entry.id], kept.consecutive_failures)
            fork = recorded.get(entry.id)
            expires = self._manifest_expiry(entry.id)
            current, _ = health.assess(
                kept,
                now=now,
                interval_s=config.sync.interval_s,
                timeout_s=config.sync.timeout_s,
                manifest_expires_at=expires,
                fork=fork,
            )
            for name in health.STATES:
                state.add_metric([entry.id, name], 1.0 if name == current else 0.0)
            forks.add_metric([entry.id], fork.count if fork else 0)
        yield from (success, age, failing, state, forks)

    def _manifest_expiry(self, peer_id: str) -> float | None:
        from client.protocol.errors import EncodingError
        from client.protocol.manifest import SignedManifest

        cached = self._node.store.peer_manifest(peer_id)
        if cached is None:
            return None
        try:
            return float(SignedManifest.from_bytes(cached).manifest.expires_at)
        except EncodingError:
            return None

    def _quotas(self, now: float) -> Iterator[Metric]:
        node = self._node
        usage = node.usage.status(now=now)
        used = _gauge(
            "petanda_oprf_quota_used",
            "OPRF evaluations of each peer today (UTC) per kind, against its daily quota",
            ["peer", "kind"],
        )
        quota = _gauge("petanda_oprf_daily_quota", "Each peer's daily OPRF quota per kind", ["peer"])
        for peer, entry in usage["peers"].items():
            quota.add_metric([peer], entry["daily_quota"])
            for kind, row in entry["kinds"].items():
                used.add_metric([peer, kind], row["1d"])
        holder_used = _gauge(
            "petanda_oprf_holder_quota_used",
            "OPRF evaluations today (UTC) per kind across the peers on the holder-wide quota",
            ["kind"],
        )
        for kind, count in usage["holder_used_today"].items():
            holder_used.add_metric([kind], count)
        holder = _gauge("petanda_oprf_holder_daily_quota", "The holder-wide daily OPRF quota per kind")
        holder.add_metric([], usage["holder_daily_quota"])
        alerts = _gauge(
            "petanda_alerts",
            "Alerts in force: enumeration (today or yesterday), plausibility (a peer's filter hits that "
            "open no record), holder_quota (the holder-wide quota ran out today), fork (on record)",
            ["alert", "peer", "kind"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for alert in usage["alerts"]:
            key = ("enumeration", str(alert["peer"]), str(alert["kind"]))
            counts[key] = counts.get(key, 0) + 1
        for peer, kinds in node.hits.status().items():
            for kind, hits in kinds.items():
                if hits.get("alerted"):
                    counts[("plausibility", peer, kind)] = 1
        today = str(math.floor(now / _SECONDS_PER_DAY))
        for kind in KINDS:
            if node.store.get_meta(f"quota.alert.{kind}") == today:
                counts[("holder_quota", "", kind)] = 1
        for peer, fork in health.forks(node.store).items():
            if fork.count:
                counts[("fork", peer, "")] = fork.count
        for (name, peer, kind), count in sorted(counts.items()):
            alerts.add_metric([name, peer, kind], count)
        yield from (used, quota, holder_used, holder, alerts)


@dataclass
class MetricsServer:
    """The running ``/metrics`` HTTP server: its bound address, and how to stop it."""

    host: str
    port: int
    _server: Any
    _thread: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(metrics: Metrics, listen: str) -> MetricsServer:
    """Serve ``metrics`` over HTTP on ``listen`` (``host:port``; port 0 picks a free one) in a thread.

    Raises:
        ConfigError: the address cannot be bound (naming ``metrics.listen``).
    """
    from client.protocol.errors import ConfigError

    host, port = parse_address(listen, allow_port_zero=True)
    bare = host.strip("[]")
    try:
        server, thread = start_http_server(port, addr=bare, registry=metrics.registry)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(f"cannot listen on {listen}: {reason}", key="metrics.listen") from None
    bound = server.server_port
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return MetricsServer(host, bound, server, thread)
