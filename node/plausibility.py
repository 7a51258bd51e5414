"""Reader-side plausibility of peers' filters: hits that open no record, against the declared rate.

A hit in a peer's filter whose record set holds no record with its tag is, for an honest peer, a
false positive of the filter, which happens at the rate its header declares (m, k and n give it). A
peer that stuffs its filter with the digests of candidate values it does not hold (to see them being
checked, or to make foreign investigators' values look held) produces such hits far more often. Each
check counts them per peer and kind inside its own audit entry; this monitor adds them up per peer,
kind and OPRF epoch (not per manifest version: a peer that republishes often must not restart its
count each time), and on the node's fixed maintenance schedule runs a one-sided binomial
test of the count against the declared rate: a p-value below :data:`ALERT_P_VALUE` raises an alert
(audit event ``peer.fp_alert``, a WARNING log line, and ``status``), once per peer, kind and epoch.

The alert is written on a schedule and never within a check, so that no entry or log line exists or not
depending on a check's outcome (peers see the asker's log size in tree-head exchanges).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol

from client.protocol.bloom import BloomFilter
from client.protocol.check import ALERT_P_VALUE, binomial_tail
from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF
from client.protocol.manifest import SignedManifest
from node.config import NodeConfig
from node.store.base import Store


class _Node(Protocol):
    """What the monitor uses of :class:`node.node.Node` (which owns it)."""

    @property
    def store(self) -> Store: ...

    @property
    def config(self) -> NodeConfig: ...

    def record(self, action: str, **fields: Any) -> None: ...


log = logging.getLogger(__name__)

__all__ = ["HitMonitor"]

_META_PREFIX: Final = "hits."


class HitMonitor:
    """Counts values tested and unopened hits per peer and kind for the peer's current OPRF epoch."""

    def __init__(self, node: _Node) -> None:
        self._node = node
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], tuple[int, int]] = {}

    def add(self, tested: Mapping[tuple[str, str], int], unopened: Mapping[tuple[str, str], int]) -> None:
        """Add one check's counts (kept in memory until the next :meth:`evaluate`)."""
        with self._lock:
            for key, n in tested.items():
                t, u = self._pending.get(key, (0, 0))
                self._pending[key] = (t + n, u + unopened.get(key, 0))

    def evaluate(self, *, now: float) -> list[dict[str, Any]]:
        """Fold the counts into the stored totals of each peer's current OPRF epoch, test them,
        and record an alert for each newly implausible (peer, kind). Returns the new alerts."""
        with self._lock:
            pending, self._pending = self._pending, {}
        alerts = []
        for (peer_id, kind), (tested, unopened) in sorted(pending.items()):
            cached = self._node.store.peer_manifest(peer_id)
            if cached is None:
                continue
            manifest = SignedManifest.from_bytes(cached).manifest
            rate = self._declared_rate(peer_id, kind)
            if rate is None:
                continue
            key = f"{_META_PREFIX}{peer_id}.{kind}"
            raw = self._node.store.get_meta(key)
            state = json.loads(raw) if raw else {}
            if state.get("epoch") != manifest.epoch:
                state = {"epoch": manifest.epoch, "tested": 0, "unopened": 0, "alerted": False}
            state["version"] = manifest.version
            state["tested"] += tested
            state["unopened"] += unopened
            state["rate"] = rate
            p_value = binomial_tail(state["tested"], state["unopened"], rate)
            state["p_value"] = p_value
            alert = p_value < ALERT_P_VALUE and not state["alerted"]
            if alert:
                state["alerted"] = True
                fields = {
                    "kind": kind,
                    "version": manifest.version,
                    "tested": state["tested"],
                    "unopened": state["unopened"],
                    # audit entries hold strings and integers only
                    "expected": f"{state['tested'] * rate:.3g}",
                    "p_value": f"{p_value:.3g}",
                }
                log.warning(
                    "peer %s: %d of %d %s values hit its filter without a record (expected %s): "
                    "its filter holds values it does not publish",
                    peer_id,
                    state["unopened"],
                    state["tested"],
                    kind,
                    fields["expected"],
                )
                self._node.record("peer.fp_alert", actor=peer_id, role="peer", result="alert", **fields)
                alerts.append({"peer": peer_id, **fields})
            self._node.store.set_meta(key, json.dumps(state, separators=(",", ":"), sort_keys=True))
        return alerts

    def _declared_rate(self, peer_id: str, kind: str) -> float | None:
        """The false-positive rate the peer's current filter of ``kind`` declares (from its header)."""
        for tier in (TIER_OPRF, TIER_HMAC):
            data = self._node.store.peer_filter(peer_id, kind, tier)
            if data is not None:
                return max(1e-12, BloomFilter.from_bytes(data).declared_fpr)
        return None

    def status(self) -> dict[str, dict[str, Any]]:
        """Per peer and kind, the stored totals and p-value (for ``status``)."""
        out: dict[str, dict[str, Any]] = {}
        for peer in self._node.config.peers:
            for kind in KINDS:
                raw = self._node.store.get_meta(f"{_META_PREFIX}{peer.id}.{kind}")
                if raw:
                    out.setdefault(peer.id, {})[kind] = json.loads(raw)
        return out
