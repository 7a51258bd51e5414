"""The OPRF enumeration budget: per-peer, per-kind daily quotas and a holder-wide daily quota.

Every blinded element a peer has evaluated is one value it has tested against this node's indicators,
so the daily quotas are the budget of an enumeration (``docs/PROTOCOL.md``, "What a hostile member can
learn"). Three limits apply to a batch of ``n`` elements of one kind, all in the store's persistent
quotas (:meth:`node.store.base.Store.consume_quota`), per UTC day:

* the peer's token bucket (``limits.oprf_rate_per_s``, ``limits.oprf_burst``) and daily quota
  (``limits.oprf_daily_quota``, or the ``oprf_daily_quota`` of its ``[[peers]]`` entry), subject
  ``oprf:{peer}:{kind}``;
* the holder-wide daily quota of the kind across every peer on the default quota
  (``limits.oprf_holder_daily_quota``), subject ``oprf:*:{kind}``: ten colluding members share it
  instead of getting ten budgets. A peer with its own ``oprf_daily_quota`` (a bilateral agreement for
  bulk screening) draws on that budget only.

Both subjects are taken in one store transaction, all or nothing
(:meth:`node.store.base.Store.consume_quotas`), together with the audit entry of the call they pay for:
one durable commit per evaluated batch, atomic across threads and replicas sharing the database. The
holder-wide quota is decided first, so its refusal is the one named; a refused request consumes nothing
of either quota, and a refused peer cannot drain the holder-wide quota.

A refusal names the limit (``rate``, ``peer_daily`` or ``holder_daily``: the ``limit`` field of its
audit entry) and when it resets. The first refusal by the holder-wide quota of a kind in a UTC day
raises an alert: a ``quota.alert`` audit entry and a WARNING log line.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NoReturn, Protocol

from client.protocol.errors import RateLimited
from node.audit import event
from node.config import NodeConfig
from node.store.base import AuditEvent, QuotaDecision, QuotaRequest, Store

log = logging.getLogger(__name__)

__all__ = ["HOLDER", "LIMIT_HOLDER", "LIMIT_PEER", "LIMIT_RATE", "OprfQuotas", "QuotaTaken"]

#: The peer name of the holder-wide subject, ``oprf:*:{kind}``.
HOLDER: Final = "*"
LIMIT_RATE: Final = "rate"
LIMIT_PEER: Final = "peer_daily"
LIMIT_HOLDER: Final = "holder_daily"
_ALERT_META: Final = "quota.alert.{}"
_SECONDS_PER_DAY: Final = 86_400


def subject(peer_id: str, kind: str) -> str:
    """The store's quota subject of a peer (or :data:`HOLDER`) and kind."""
    return f"oprf:{peer_id}:{kind}"


def _midnight(now: float) -> float:
    return (math.floor(now / _SECONDS_PER_DAY) + 1) * _SECONDS_PER_DAY


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Node(Protocol):
    """What the quotas need of :class:`node.node.Node` (not imported: node.node imports this)."""

    id: str
    config: NodeConfig
    store: Store


@dataclass(frozen=True, slots=True)
class QuotaTaken:
    """What an allowed batch used: the peer's count today, its daily quota, the holder-wide count today
    (None for a peer outside the holder-wide quota)."""

    daily_used: int
    daily_quota: int
    holder_used: int | None


class OprfQuotas:
    """Takes a batch from a peer's quotas or refuses it (audited, :class:`RateLimited`)."""

    def __init__(self, node: _Node) -> None:
        self._node = node

    def daily_quota(self, peer_id: str) -> int:
        """The peer's daily quota per kind: its ``[[peers]]`` override, else ``limits.oprf_daily_quota``."""
        entry = self._node.config.peer(peer_id)
        override = None if entry is None else entry.oprf_daily_quota
        return self._node.config.limits.oprf_daily_quota if override is None else override

    def pooled(self, peer_id: str) -> bool:
        """Whether the peer draws on the holder-wide quota (it has no ``oprf_daily_quota`` of its own)."""
        entry = self._node.config.peer(peer_id)
        return entry is None or entry.oprf_daily_quota is None

    def _holder_args(self) -> dict[str, Any]:
        # The holder-wide subject is a daily counter only: its bucket never runs dry.
        limits = self._node.config.limits
        size = float(max(limits.oprf_holder_daily_quota, limits.max_batch, 1))
        return {"rate_per_s": size, "burst": size}

    def used_today(self, peer_id: str, kind: str, *, now: float) -> int:
        """How many evaluations of ``kind`` the peer (or :data:`HOLDER`) had today (reads only)."""
        limits = self._node.config.limits
        if peer_id == HOLDER:
            args = self._holder_args()
        else:
            args = {"rate_per_s": limits.oprf_rate_per_s, "burst": float(limits.oprf_burst)}
        # A request with daily_limit 0 is always refused, and a refused request consumes nothing.
        read = self._node.store.consume_quota(subject(peer_id, kind), 1, now=now, daily_limit=0, **args)
        return read.daily_used

    def take(
        self,
        peer_id: str,
        kind: str,
        count: int,
        *,
        now: float,
        fields: dict[str, Any],
        audit: Callable[[QuotaTaken], Sequence[AuditEvent]] = lambda _taken: (),
    ) -> QuotaTaken:
        """Take ``count`` evaluations of ``kind`` from the peer's quotas.

        ``fields`` are the audit fields of the call (``actor``, ``role``, ``now``, ``kind``, ``count``):
        a refusal is recorded with them as a ``rate_limited`` ``peer.evaluate_oprf`` entry. When the
        batch is allowed, ``audit(taken)`` is appended in the same store transaction as the quotas it
        took (:meth:`node.store.base.Store.consume_quotas`): one durable commit per call.

        Raises:
            RateLimited: refused, naming the limit and when it resets; nothing of this peer's or of the
                holder-wide quota was consumed.
        """
        limits = self._node.config.limits
        quota = self.daily_quota(peer_id)
        pooled = self.pooled(peer_id)
        holder = limits.oprf_holder_daily_quota
        requests = [
            QuotaRequest(subject(peer_id, kind), count, limits.oprf_rate_per_s, limits.oprf_burst, quota)
        ]
        if pooled:  # the holder-wide quota first: its refusal is the one named
            size = self._holder_args()
            requests.insert(
                0, QuotaRequest(subject(HOLDER, kind), count, size["rate_per_s"], size["burst"], holder)
            )

        def taken_of(decisions: Sequence[QuotaDecision]) -> QuotaTaken:
            return QuotaTaken(decisions[-1].daily_used, quota, decisions[0].daily_used if pooled else None)

        decisions = self._node.store.consume_quotas(
            requests, now=now, audit=lambda decisions: audit(taken_of(decisions))
        )
        refused = decisions[-1]
        if refused.allowed:
            return taken_of(decisions)
        if pooled and len(decisions) == 1:
            self._refuse_holder(peer_id, kind, count, refused.daily_used, now=now, fields=fields)
        self._refuse_peer(peer_id, kind, count, refused, quota, now=now, fields=fields)

    def _refuse_peer(
        self,
        peer_id: str,
        kind: str,
        count: int,
        decision: Any,
        quota: int,
        *,
        now: float,
        fields: dict[str, Any],
    ) -> NoReturn:
        limits = self._node.config.limits
        used = decision.daily_used
        if used + count > quota:
            limit = LIMIT_PEER
            if count > quota:
                when = f"a batch of {count} can never pass"
            else:
                when = f"it resets at {_iso(_midnight(now))} (in {decision.retry_after_s:.0f} s)"
            message = (
                f"daily OPRF quota of {peer_id} for {kind} used up ({used} of {quota} today, "
                f"{count} asked); {when}"
            )
        else:
            limit = LIMIT_RATE
            if math.isinf(decision.retry_after_s):
                when = f"a batch of {count} can never pass (burst {limits.oprf_burst})"
            else:
                when = f"retry in {decision.retry_after_s:.1f} s"
            message = (
                f"OPRF rate limit of {peer_id} for {kind} reached ({limits.oprf_rate_per_s:g}/s, "
                f"burst {limits.oprf_burst}); {when}"
            )
        self._node.store.append_audit(
            [
                event(
                    "peer.evaluate_oprf",
                    result="rate_limited",
                    limit=limit,
                    daily_used=used,
                    daily_quota=quota,
                    **fields,
                )
            ]
        )
        raise RateLimited(message, retry_after_s=decision.retry_after_s)

    def _refuse_holder(
        self, peer_id: str, kind: str, count: int, used: int, *, now: float, fields: dict[str, Any]
    ) -> NoReturn:
        holder = self._node.config.limits.oprf_holder_daily_quota
        midnight = _midnight(now)
        retry = math.inf if count > holder else midnight - now
        when = (
            f"a batch of {count} can never pass"
            if count > holder
            else f"it resets at {_iso(midnight)} (in {retry:.0f} s)"
        )
        message = (
            f"holder-wide daily OPRF quota of {self._node.id} for {kind} used up ({used} of {holder} "
            f"today across all peers, {count} asked); {when}"
        )
        audit = [
            event(
                "peer.evaluate_oprf",
                result="rate_limited",
                limit=LIMIT_HOLDER,
                holder_used=used,
                holder_quota=holder,
                **fields,
            )
        ]
        day = str(math.floor(now / _SECONDS_PER_DAY))
        key = _ALERT_META.format(kind)
        if self._node.store.get_meta(key) != day:
            log.warning(
                "OPRF quota alert: the holder-wide daily quota for %s (%d) is used up (%d today); "
                "refusing every peer on the default quota until %s",
                kind,
                holder,
                used,
                _iso(midnight),
                extra={"alert": "holder_quota", "kind": kind, "quota": holder, "used": used},
            )
            alert = event(
                "quota.alert",
                actor="node",
                role="node",
                now=now,
                result="alert",
                kind=kind,
                limit=LIMIT_HOLDER,
                quota=holder,
                used=used,
                trigger=peer_id,
            )
            self._node.store.set_meta(key, day, audit=[alert])
        self._node.store.append_audit(audit)
        raise RateLimited(message, retry_after_s=retry)
