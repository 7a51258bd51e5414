"""One sender per peer: the evaluations of concurrent checks to a peer coalesce while a call is in flight.

Every investigator's check emits mergeable work, (peer, kind, epoch, blinded elements)
(:class:`client.protocol.check.Evaluation`). :class:`PeerScheduler` sends it:

- when no call to that peer is in flight, at once (a sender thread of the peer starts): a lone check never
  waits;
- while a call to that peer is in flight, the work queues; when the call returns, the peer's sender sends
  everything queued for the peer, merged per (kind, epoch) into calls of at most ``max_batch`` elements,
  before it lets go of the peer. Callers only wait on their tickets.

So the peer's per-caller call limit bounds calls, not investigators: twenty concurrent single checks
cost a peer a handful of calls.

While more than one check runs (:meth:`PeerScheduler.checking`), a peer gets at most one *round* of calls
per merge window (:meth:`PeerScheduler.window`: the pace its call limit allows, 56 ms at the default
20 calls/s), counted from its last round: what comes meanwhile waits and goes in the next round, one call
per (kind, epoch) and ``max_batch``, the round's calls side by side. So under load a call carries the
checks of a whole window (≥ 11 at 200 checks/s) instead of spending the peer's burst on calls of one or
two, and the per-call costs (gRPC, the holder's commit, the proof's fixed scalar multiplications) are
shared. A check running alone never waits for a window (ADR 0023).

Each peer's sender also paces itself under the peer-RPC limit (``call_rate``: the federation's
``limits.peer_rpc_rate_per_s`` and ``peer_rpc_burst``, this node's own, which members share by default),
at nine tenths of the rate and burst, leaving the rest to the sync's calls. While the sender has a token,
a call goes at once (a lone check still never waits); once the burst is spent, the sender waits for the
next token, and the checks that arrive meanwhile merge into that call (a check whose deadline comes
before the token is refused at once, RATE_LIMITED with when to retry). A peer's own refusal (its call
limit or an OPRF quota) still fails only the evaluations of that call. So a load beyond the peer's call rate
makes calls larger, never refused: the merge follows the load, not the answers.

A merged answer's DLEQ proof is verified once, over the whole call,
under the key the peer's manifest signs; each check then takes its own elements
(:meth:`client.protocol.check.Check.receive_verified`). A failed merged call fails every evaluation in it
the same way, so what a peer receives still never depends on any check's answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from client._proto.petanda.v1 import peer_pb2
from client.protocol import errors, oprf
from client.protocol.check import Evaluation
from client.transport.convert import kind_to_proto
from node.peers import Links, peer_error

__all__ = ["MAX_WINDOW_S", "PeerScheduler", "Ticket"]

#: The longest merge window (:meth:`PeerScheduler.window`), whatever the peer's call rate.
MAX_WINDOW_S = 0.1


@dataclass(slots=True)
class Ticket:
    """One evaluation waiting for its answer: the evaluated elements (proof verified), or an error."""

    evaluation: Evaluation
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    evaluated: list[bytes] | None = None
    error: errors.PetandaError | None = None
    #: How many evaluations (of any checks) the call that answered this one carried.
    merged: int = 0

    def wait(self) -> list[bytes]:
        """The evaluated elements, once answered.

        Raises:
            PetandaError: the call failed (:func:`node.peers.peer_error`), its proof did not verify, or
                the deadline passed first (PeerUnavailable "deadline exceeded").
        """
        if not self.done.wait(timeout=max(0.0, self.deadline - time.monotonic())):
            raise errors.PeerUnavailable(f"{self.evaluation.peer_id}: deadline exceeded")
        if self.error is not None:
            raise self.error
        assert self.evaluated is not None
        return self.evaluated


@dataclass(slots=True)
class _Peer:
    busy: bool = False
    queue: list[Ticket] = field(default_factory=list)
    #: When (``time.monotonic()``) the last round of calls to this peer went, for the merge window.
    last_round: float | None = None
    #: Whether the merge window was skipped for that round: the only check running asked.
    last_alone: bool = False
    #: The sender's own token bucket of calls to this peer (None: full).
    tokens: float | None = None
    refilled: float = 0.0

    def wait(self, now: float, rate: float, burst: float) -> float:
        """Take a call token if there is one (0.0), else the seconds until the next (nothing taken)."""
        tokens = burst if self.tokens is None else min(burst, self.tokens + (now - self.refilled) * rate)
        self.tokens, self.refilled = tokens, now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        return (1.0 - tokens) / rate


class PeerScheduler:
    """Sends evaluations to peers, one call at a time per peer, merging what waits (thread-safe)."""

    def __init__(
        self,
        links: Links,
        *,
        max_batch: Callable[[], int],
        workers: int = 1,
        senders: int = 16,
        on_call: Callable[[str, int], None] | None = None,
        call_rate: Callable[[], tuple[float, int]] | None = None,
    ) -> None:
        self._links = links
        #: (calls per second, burst) a peer allows this node; None: no pacing.
        self._call_rate = call_rate
        #: One sender at a time per peer; at most ``senders`` peers' calls in flight at once.
        self._pool = futures.ThreadPoolExecutor(max_workers=max(1, senders), thread_name_prefix="send")
        #: A round's calls to one peer beyond its first (one per kind): they go side by side.
        self._round_pool = futures.ThreadPoolExecutor(
            max_workers=max(1, senders), thread_name_prefix="send-kind"
        )
        self._max_batch = max_batch
        self._workers = workers
        self._on_call = on_call
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        #: Checks running now (:meth:`checking`): above one, a peer's calls go once per merge window.
        self._active = 0
        #: Calls sent and evaluations carried, for measurement.
        self.calls = 0
        self.evaluations = 0

    @contextmanager
    def checking(self) -> Iterator[None]:
        """Counts one check as running for its duration (:meth:`window`: concurrent checks merge)."""
        with self._lock:
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def window(self) -> float:
        """The merge window in seconds while checks run concurrently: the pace of calls the peer allows
        (one per ``1 / (0.9 × peer_rpc_rate_per_s)`` s, 55 ms at the default 20/s), at most
        :data:`MAX_WINDOW_S`; 0.0 without pacing."""
        if self._call_rate is None:
            return 0.0
        rate, _ = self._call_rate()
        return min(MAX_WINDOW_S, 1.0 / (0.9 * rate))

    def submit(self, evaluation: Evaluation, *, deadline: float) -> Ticket:
        """Queue ``evaluation`` for its peer, starting the peer's sender if it is idle (then the call goes
        at once). Returns its ticket at once; :meth:`Ticket.wait` waits for the answer."""
        ticket = Ticket(evaluation, deadline)
        with self._lock:
            peer = self._peers.setdefault(evaluation.peer_id, _Peer())
            peer.queue.append(ticket)
            if peer.busy:
                return ticket
            peer.busy = True
        try:
            self._pool.submit(self._drain, evaluation.peer_id)
        except RuntimeError:  # shut down: nothing is sent any more
            with self._lock:
                peer.busy = False
                peer.queue.remove(ticket)
            ticket.error = errors.PeerUnavailable(f"{evaluation.peer_id}: the node is shutting down")
            ticket.done.set()
        return ticket

    def close(self) -> None:
        """Stop sending; calls in flight finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._round_pool.shutdown(wait=True, cancel_futures=True)

    def _drain(self, peer_id: str) -> None:
        """Send everything queued for ``peer_id`` until its queue is empty, then let go of the peer.

        Whatever happens (a bug, a channel closed under us at shutdown), the peer is let go and every
        ticket still queued is failed, never left to expire."""
        try:
            self._send_all(peer_id)
        except BaseException as error:
            with self._lock:
                peer = self._peers[peer_id]
                stranded, peer.queue, peer.busy = peer.queue, [], False
            failure = errors.PeerUnavailable(f"{peer_id}: {type(error).__name__}")
            for ticket in stranded:
                if not ticket.done.is_set():
                    ticket.error = failure
                    ticket.done.set()
            raise

    def _send_all(self, peer_id: str) -> None:
        while True:
            with self._lock:
                peer = self._peers[peer_id]
                if not peer.queue:
                    peer.busy = False
                    return
                waiting, peer.queue = peer.queue, []
            now = time.monotonic()
            live = [t for t in waiting if t.deadline > now]
            for late in (t for t in waiting if t.deadline <= now):
                late.error = errors.PeerUnavailable(f"{peer_id}: deadline exceeded")
                late.done.set()
            delay = self._merge_delay(peer, now)
            if delay > 0 and all(t.deadline > now + delay for t in live):
                with self._lock:  # wait for the next window, merging what arrives meanwhile
                    peer.queue[:0] = live
                time.sleep(delay)
                continue
            peer.last_round = now
            groups = self._groups(live)
            going: list[list[Ticket]] = []
            pause = 0.0
            for group in groups:
                pause = self._pace(peer)
                if pause > 0:  # over the peer's call rate: keep the rest, to merge with what comes
                    break
                going.append(group)
            self._round(peer_id, going)
            if pause > 0:
                self._hold(peer_id, peer, [t for g in groups[len(going) :] for t in g], pause)

    def _round(self, peer_id: str, groups: list[list[Ticket]]) -> None:
        """The calls of one round (one per kind and epoch, and per ``max_batch``) at once: this thread
        makes the first, the round's pool the others; returns when all returned."""
        if not groups:
            return
        others: list[futures.Future[None]] = []
        for group in groups[1:]:
            try:
                others.append(self._round_pool.submit(self._call, peer_id, group))
            except RuntimeError:  # shut down: nothing is sent any more
                self._answer(group, error=errors.PeerUnavailable(f"{peer_id}: the node is shutting down"))
        try:
            self._call(peer_id, groups[0])
        finally:
            futures.wait(others)
        for other in others:
            other.result()  # a bug or shutdown in one of them: _drain fails what is left

    def _hold(self, peer_id: str, peer: _Peer, tickets: list[Ticket], pause: float) -> None:
        """Put ``tickets`` back in the peer's queue and wait ``pause`` seconds for its next call token;
        a ticket whose deadline comes first is refused now, as the peer would (RATE_LIMITED, with when
        to retry), instead of being sent to be refused or left to expire."""
        ready = time.monotonic() + pause
        waiting = [t for t in tickets if t.deadline > ready]
        refusal = errors.RateLimited(
            f"{peer_id}: this node's calls to it are at its rate limit; retry in {pause:.1f} s",
            retry_after_s=pause,
        )
        self._answer([t for t in tickets if t.deadline <= ready], error=refusal)
        if not waiting:
            return
        with self._lock:
            peer.queue[:0] = waiting
        time.sleep(pause)

    def _merge_delay(self, peer: _Peer, now: float) -> float:
        """Seconds until the next round of calls to ``peer`` may go: 0.0 when this is the only check
        running (a lone check never waits) or the last round went at least a merge window ago; else
        until then. Concurrent checks reach all their peers at once, so the peers' rounds stay in step."""
        window = self.window()
        with self._lock:
            peer.last_alone = self._active <= 1
            if window <= 0 or peer.last_alone or peer.last_round is None:
                return 0.0
        return max(0.0, peer.last_round + window - now)

    def _pace(self, peer: _Peer) -> float:
        """0.0 if a call to ``peer`` may go now (its token taken), else the seconds to wait first."""
        if self._call_rate is None:
            return 0.0
        rate, burst = self._call_rate()
        with self._lock:
            return peer.wait(time.monotonic(), 0.9 * rate, max(1.0, burst - burst // 10))

    def _groups(self, tickets: list[Ticket]) -> list[list[Ticket]]:
        """Tickets merged per (kind, epoch, key) into calls of at most ``max_batch`` elements."""
        limit = max(1, self._max_batch())
        by_key: dict[tuple[str, int, bytes], list[list[Ticket]]] = {}
        for ticket in tickets:
            e = ticket.evaluation
            calls = by_key.setdefault((e.kind, e.epoch, e.public_key), [[]])
            if calls[-1] and sum(len(t.evaluation.blinded) for t in calls[-1]) + len(e.blinded) > limit:
                calls.append([])
            calls[-1].append(ticket)
        return [call for calls in by_key.values() for call in calls]

    def _call(self, peer_id: str, group: Sequence[Ticket]) -> None:
        try:
            self._call_once(peer_id, group)
        except BaseException as error:  # not the peer's answer: fail this group, then let _drain see it
            self._answer(group, error=errors.PeerUnavailable(f"{peer_id}: {type(error).__name__}"))
            raise

    def _call_once(self, peer_id: str, group: Sequence[Ticket]) -> None:
        first = group[0].evaluation
        blinded = [b for t in group for b in t.evaluation.blinded]
        deadline = max(t.deadline for t in group)
        try:
            stub: Any = self._links.get(peer_id).stub
            response = stub.EvaluateOprf(
                peer_pb2.EvaluateOprfRequest(
                    epoch=first.epoch,
                    kind=kind_to_proto(first.kind),
                    blinded_elements=blinded,
                    verifiable=True,
                ),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            evaluated = list(response.evaluated_elements)
            if len(evaluated) != len(blinded):
                raise errors.EncodingError(
                    f"{peer_id} returned {len(evaluated)} evaluated elements for {len(blinded)}"
                )
            oprf.verify_proof(first.public_key, blinded, evaluated, response.proof, workers=self._workers)
        except grpc.RpcError as error:
            self._answer(group, error=peer_error(peer_id, error))
            return
        except errors.PetandaError as error:
            self._answer(group, error=error)
            return
        finally:
            with self._lock:
                self.calls += 1
                self.evaluations += len(group)
            if self._on_call is not None:
                self._on_call(peer_id, len(group))
        start = 0
        for ticket in group:
            n = len(ticket.evaluation.blinded)
            ticket.evaluated, ticket.merged = evaluated[start : start + n], len(group)
            start += n
            ticket.done.set()

    @staticmethod
    def _answer(group: Sequence[Ticket], *, error: errors.PetandaError) -> None:
        for ticket in group:
            ticket.error, ticket.merged = error, len(group)
            ticket.done.set()
