"""Aggregated audit of repeated read-only peer calls, so that a peer cannot grow the audit log at will.

A peer polls: ``GetManifest`` answered ``not_modified``, a filter or record set of a (version, kind,
tier) it was already served, a CRL it already holds. Each such call is counted here, never written on
its own; on a fixed schedule (``audit.aggregate_interval_s``, from :meth:`node.node.Node.maintain`) and
at shutdown, :meth:`ReadLog.flush` writes ONE ``peer.reads`` entry per peer and method with the count and
the times of the first and last call. The first read of an artefact is audited normally by its caller:
:meth:`ReadLog.note` says which.

What counts as "already served" lives in this process's memory (per peer, the last
:data:`MAX_KEYS_PER_PEER` keys): after a restart, or on another replica, a peer's next read of an
artefact is audited in full once more. Counts not yet flushed are lost if the process is killed (not on
a drain): the log then under-reports repeated polls, never an artefact's first read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from node.audit import event

__all__ = ["ACTION", "MAX_KEYS_PER_PEER", "ReadLog"]

ACTION: Final = "peer.reads"
#: Artefact keys remembered per peer (a few versions of every kind and tier).
MAX_KEYS_PER_PEER: Final = 1024
#: Peers whose served keys are remembered (configured peers are far fewer).
_MAX_PEERS: Final = 4096


@dataclass
class _Tally:
    count: int
    first: int
    last: int


class ReadLog:
    """Counts repeated reads per (peer, method) and writes them as one entry each on :meth:`flush`.

    ``append`` takes a list of audit events and writes them (the store's ``append_audit``); ``clock``
    is the node's clock. Thread-safe.
    """

    def __init__(
        self,
        append: Callable[[Sequence[dict[str, Any]]], Any],
        *,
        clock: Callable[[], float],
    ) -> None:
        self._append = append
        self._clock = clock
        self._lock = threading.Lock()
        self._served: OrderedDict[str, OrderedDict[Hashable, None]] = OrderedDict()
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._last_flush = clock()

    def note(self, peer: str, method: str, key: Hashable | None) -> bool:
        """Note one read-only call of ``peer``; return whether it must be audited in full.

        ``key`` names the artefact served (``(version, kind, tier)``), or is None for an answer that
        served nothing new (``not_modified``). True: the first time this peer is served ``(method,
        key)``; the caller records it as usual. False: the call is counted here, and the caller writes
        nothing.
        """
        now = int(self._clock())
        with self._lock:
            if key is not None:
                served = self._served.get(peer)
                if served is None:
                    served = self._served[peer] = OrderedDict()
                    while len(self._served) > _MAX_PEERS:
                        self._served.popitem(last=False)
                else:
                    self._served.move_to_end(peer)
                full = (method, key)
                if full not in served:
                    served[full] = None
                    while len(served) > MAX_KEYS_PER_PEER:
                        served.popitem(last=False)
                    return True
                served.move_to_end(full)
            tally = self._tallies.get((peer, method))
            if tally is None:
                self._tallies[(peer, method)] = _Tally(1, now, now)
            else:
                tally.count += 1
                tally.first = min(tally.first, now)
                tally.last = max(tally.last, now)
            return False

    def pending(self) -> int:
        """Reads counted and not yet written."""
        with self._lock:
            return sum(t.count for t in self._tallies.values())

    def due(self, now: float, interval_s: float) -> bool:
        """Whether ``interval_s`` has passed since the last flush (or since this log was created)."""
        return now - self._last_flush >= interval_s

    def flush(self, *, now: float) -> int:
        """Write one ``peer.reads`` entry per (peer, method) counted since the last flush; return how many.

        The counts are taken before writing: should the write fail, they are put back.
        """
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            self._last_flush = now
        if not tallies:
            return 0
        events = [
            event(
                ACTION,
                actor=peer,
                role="peer",
                now=now,
                peer=peer,
                method=method,
                count=tally.count,
                first=tally.first,
                last=tally.last,
            )
            for (peer, method), tally in sorted(tallies.items())
        ]
        try:
            self._append(events)
        except BaseException:
            with self._lock:
                for key, tally in tallies.items():
                    current = self._tallies.get(key)
                    if current is None:
                        self._tallies[key] = tally
                    else:
                        current.count += tally.count
                        current.first = min(current.first, tally.first)
                        current.last = max(current.last, tally.last)
            raise
        return len(events)
