"""Per-peer OPRF evaluation volume, against the quota and the home numbering space, and its alerts.

The volume is folded from the node's own audit log (``ok`` ``peer.evaluate_oprf`` entries, by
:class:`client.protocol.enumeration.Volume`, exactly as the auditor's report folds it) and kept in the
store's meta value ``oprf.usage`` together with how many entries it has folded, so each maintenance run
reads only the entries written since the last one. The stored value is a function of a prefix of the
log: two replicas that fold concurrently write the same figures (the later write may be of a shorter
prefix; the next run catches up), and nothing is counted twice.

On the maintenance schedule :meth:`UsageWatch.check` applies the rules of
:class:`client.protocol.enumeration.Rules` (from ``[limits]``) to today and yesterday, and records each
rule a peer meets as a ``peer.enumeration_alert`` audit entry and a WARNING log line, once per peer,
kind, rule and UTC day (the alerts already written are folded from the log too).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final, Protocol

from client.protocol.auditlog import decode_entry
from client.protocol.enumeration import (
    ACTION_ALERT,
    HOME_SPACE_TYPES,
    Alert,
    Rules,
    Volume,
    assess,
    day_of,
    figures,
    iso_day,
    numbering_space,
)
from client.protocol.errors import EncodingError
from node.audit import event
from node.config import NodeConfig
from node.quotas import OprfQuotas
from node.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["SPACE_TYPES", "UsageWatch"]

_META: Final = "oprf.usage"
_PAGE: Final = 10_000
#: Days of volume kept (the longest window, 30 days, and the day before it).
_KEEP_DAYS: Final = 31
_SECONDS_PER_DAY: Final = 86_400
#: The numbering space an enumeration of phone numbers must cover: mobile and fixed-line numbers.
SPACE_TYPES: Final = HOME_SPACE_TYPES


class _Node(Protocol):
    """What the watch needs of :class:`node.node.Node` (not imported: node.node imports this)."""

    config: NodeConfig
    store: Store
    quotas: OprfQuotas


class UsageWatch:
    """The volume of every peer's evaluations, its alerts, and its figures for ``status``."""

    def __init__(self, node: _Node) -> None:
        self._node = node

    def rules(self) -> Rules:
        limits = self._node.config.limits
        return Rules(
            quota_share=limits.enumeration_alert_share,
            days=limits.enumeration_alert_days,
            space_share=limits.enumeration_alert_space_share,
        )

    def space(self) -> int:
        """National significant numbers of the node's own region (mobile and fixed line)."""
        return numbering_space(self._node.config.node.country_region, SPACE_TYPES)

    def _quota_of(self, peer: str, kind: str, day: int) -> int | None:
        return self._node.quotas.daily_quota(peer)

    def _first_recent_index(self, since: float) -> int:
        """The first entry of the log stamped at or after ``since`` (entries are in time order, within
        the second or so by which replicas' clocks may differ)."""
        store = self._node.store
        low, high = 0, store.audit_size()
        while low < high:
            middle = (low + high) // 2
            try:
                ts = decode_entry(store.audit_entries(middle, middle + 1)[0]).get("ts")
            except EncodingError:
                ts = None
            if type(ts) is int and ts < since:
                low = middle + 1
            else:
                high = middle
        return low

    def volume(self, *, now: float, save: bool) -> Volume:
        """The volume up to the log's current end (stored again when ``save``)."""
        store = self._node.store
        raw = store.get_meta(_META)
        volume = None
        if raw:
            try:
                volume = Volume.from_json(json.loads(raw))
            except (ValueError, TypeError, KeyError):
                log.warning("meta %s is unreadable: folding the last %d days of the log again", _META, 31)
        if volume is None:
            volume = Volume(entries=self._first_recent_index(now - _KEEP_DAYS * _SECONDS_PER_DAY))
        size = store.audit_size()
        for start in range(volume.entries, size, _PAGE):
            for data in store.audit_entries(start, min(size, start + _PAGE)):
                try:
                    volume.add(decode_entry(data))
                except EncodingError:
                    volume.entries += 1
        volume.prune(day_of(now) - _KEEP_DAYS)
        if save:
            store.set_meta(_META, json.dumps(volume.to_json(), separators=(",", ":"), sort_keys=True))
        return volume

    def check(self, *, now: float) -> list[Alert]:
        """Fold the new entries, and record every rule met today or yesterday not yet recorded."""
        volume = self.volume(now=now, save=True)
        today = day_of(now)
        space, rules = self.space(), self.rules()
        new = []
        for day in (today - 1, today):
            for alert in assess(volume, day=day, quota_of=self._quota_of, space=space, rules=rules):
                if (alert.peer, alert.kind, alert.rule, alert.day) not in volume.alerted:
                    new.append(alert)
        for alert in new:
            log.warning(
                "possible enumeration by peer %s on %s (%s, %s): %s",
                alert.peer,
                alert.kind,
                alert.rule,
                iso_day(alert.day),
                alert.detail,
                extra={"alert": "enumeration", "peer": alert.peer, "kind": alert.kind, "rule": alert.rule},
            )
        if new:
            self._node.store.append_audit(
                [
                    event(ACTION_ALERT, actor=a.peer, role="peer", now=now, result="alert", **a.fields())
                    for a in new
                ]
            )
        return new

    def status(self, *, now: float) -> dict[str, Any]:
        """Volumes per peer and kind over 1, 7 and 30 days, the quotas, and today's alerts."""
        config = self._node.config
        quotas = self._node.quotas
        volume = self.volume(now=now, save=False)
        today = day_of(now)
        space = self.space()
        rules = self.rules()
        table = figures(volume, day=today, quota_of=self._quota_of, space=space)
        holder_today: dict[str, int] = {}
        for peer, kinds in volume.daily.items():
            if quotas.pooled(peer):
                for kind, per_day in kinds.items():
                    if per_day.get(today):
                        holder_today[kind] = holder_today.get(kind, 0) + per_day[today]
        alerts = sorted(
            {
                (a.peer, a.kind, a.rule, a.day): a
                for day in (today - 1, today)
                for a in assess(volume, day=day, quota_of=self._quota_of, space=space, rules=rules)
            }.values(),
            key=lambda a: (a.peer, a.kind, a.rule, a.day),
        )
        peers = sorted({p.id for p in config.peers} | set(table))
        return {
            "day": iso_day(today),
            "region": config.node.country_region,
            "numbering_space": {
                "mobile": numbering_space(config.node.country_region, ("mobile",)),
                "mobile_and_fixed": space,
            },
            "holder_daily_quota": config.limits.oprf_holder_daily_quota,
            "holder_used_today": dict(sorted(holder_today.items())),
            "rules": {
                "quota_share": rules.quota_share,
                "days": rules.days,
                "space_share": rules.space_share,
            },
            "peers": {
                peer: {
                    "daily_quota": quotas.daily_quota(peer),
                    "holder_pool": quotas.pooled(peer),
                    "kinds": table.get(peer, {}),
                }
                for peer in peers
            },
            "alerts": [a.fields() for a in alerts],
        }
