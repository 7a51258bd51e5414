"""Group commit of the checks' store writes (node/groupcommit.py), on a real store of each backend.

The entries of callers that wait together go in one transaction; each caller returns only once its own
entry is committed; a refused entry fails only its caller; a failed transaction fails its callers and
writes nothing; the quota takes of concurrent checks are decided each on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from client.protocol.auditlog import decode_entry
from client.protocol.errors import InputError, StoreError
from node.groupcommit import GroupCommit
from node.store import Store, open_store
from node.store.base import AuditEvent, QuotaDecision, QuotaRequest

NOW = 1_700_000_000


def ev(n: int) -> AuditEvent:
    return {"ts": NOW, "action": "investigator.check", "actor": f"MY/person-{n}", "role": "investigator"}


class Gated:
    """``store.append_audit`` whose first transaction waits until ``queued`` callers wait behind it, so
    that what follows is surely one batch; records what each transaction committed."""

    def __init__(self, store: Store, queued: Callable[[], int], behind: int) -> None:
        self.store, self.queued, self.behind = store, queued, behind
        self.committed: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[AuditEvent]) -> list[None]:
        if not self.committed:
            deadline = time.monotonic() + 30
            while self.queued() < self.behind and time.monotonic() < deadline:
                time.sleep(0.001)
        self.store.append_audit(events)
        with self.lock:
            self.committed.append([str(e["actor"]) for e in events])
        return [None] * len(events)


def run(callers: int, submit: Callable[[int], Any]) -> dict[int, BaseException | None]:
    """``submit(n)`` from ``callers`` threads at once; each one's error (None: it returned)."""
    errors: dict[int, BaseException | None] = {}
    start = threading.Barrier(callers)

    def one(n: int) -> None:
        start.wait()
        try:
            submit(n)
            errors[n] = None
        except BaseException as error:
            errors[n] = error

    threads = [threading.Thread(target=one, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def actors(store: Store) -> list[str]:
    return [str(decode_entry(e)["actor"]) for e in store.audit_entries(0, store.audit_size())]


def test_entries_of_callers_waiting_together_go_in_one_transaction_each_durable_on_return(
    store: Store, store_url: str
) -> None:
    store.append_audit([ev(99)])
    group: GroupCommit[AuditEvent, None] = GroupCommit(lambda events: gated(events))
    gated = Gated(store, lambda: group.waiting, behind=9)
    durable_on_return: dict[int, bool] = {}

    def submit(n: int) -> None:
        group.submit(ev(n))
        with gated.lock:  # this caller's entry was in a transaction that had committed
            durable_on_return[n] = any(f"MY/person-{n}" in batch for batch in gated.committed)

    assert run(10, submit) == dict.fromkeys(range(10))
    assert durable_on_return == dict.fromkeys(range(10), True)
    # The first caller committed alone; the nine that queued behind it, together.
    assert sorted(len(batch) for batch in gated.committed) == [1, 9]
    assert (group.commits, group.items) == (2, 10)
    with open_store(store_url) as fresh:  # on disk, seen by another connection
        logged = actors(fresh)
    assert logged[0] == "MY/person-99" and sorted(logged[1:]) == sorted(f"MY/person-{n}" for n in range(10))
    # The order in the log is the order of the transactions: the lone first, then the batch in arrival.
    assert logged[1:] == [a for batch in gated.committed for a in batch]


def test_an_entry_the_store_refuses_fails_only_its_caller(store: Store) -> None:
    group: GroupCommit[AuditEvent, None] = GroupCommit(lambda events: gated(events))
    gated = Gated(store, lambda: group.waiting, behind=5)

    def submit(n: int) -> None:
        event = ev(n)
        if n == 3:
            event["score"] = 0.5  # floats are refused: an entry holds strings and integers
        group.submit(event)

    errors = run(6, submit)
    assert isinstance(errors.pop(3), InputError)
    assert errors == dict.fromkeys([0, 1, 2, 4, 5])
    assert sorted(actors(store)) == sorted(f"MY/person-{n}" for n in (0, 1, 2, 4, 5))
    # Nothing is left waiting and the next caller commits at once.
    group.submit(ev(7))
    assert actors(store)[-1] == "MY/person-7" and group.waiting == 0


def test_a_failed_transaction_fails_its_callers_and_writes_nothing(store: Store) -> None:
    failing = threading.Event()
    failing.set()

    def append(events: list[AuditEvent]) -> list[None]:
        if failing.is_set():
            raise StoreError("disk full")
        store.append_audit(events)
        return [None] * len(events)

    group: GroupCommit[AuditEvent, None] = GroupCommit(append)
    errors = run(5, lambda n: group.submit(ev(n)))
    assert all(isinstance(e, StoreError) for e in errors.values()) and len(errors) == 5
    assert store.audit_size() == 0 and group.items == 0
    failing.clear()
    group.submit(ev(8))  # the group let go: the next caller commits
    assert actors(store) == ["MY/person-8"]


def test_quota_takes_of_concurrent_checks_are_each_decided_on_their_own(store: Store) -> None:
    def take(requests: Sequence[QuotaRequest]) -> list[QuotaDecision]:
        return store.consume_quota_each(requests, now=float(NOW))

    group: GroupCommit[QuotaRequest, QuotaDecision] = GroupCommit(lambda r: take(r))
    decisions: dict[int, QuotaDecision] = {}
    lock = threading.Lock()

    def submit(n: int) -> None:
        # Twelve checks of one investigator whose bucket holds ten, beside another's.
        subject = "check:MY/ana" if n < 12 else "check:MY/ben"
        decision = group.submit(QuotaRequest(subject, 1, 0.0, 10.0, 1000))
        with lock:
            decisions[n] = decision

    assert run(16, submit) == dict.fromkeys(range(16))
    ana = [decisions[n] for n in range(12)]
    assert sum(d.allowed for d in ana) == 10  # exactly the bucket, however the takes were batched
    assert all(decisions[n].allowed for n in range(12, 16))
    refused = [d for d in ana if not d.allowed]
    assert all(d.daily_used == 10 for d in refused)


@pytest.mark.parametrize("callers", [1, 3])
def test_the_results_come_back_to_their_own_callers(store: Store, callers: int) -> None:
    def take(requests: Sequence[QuotaRequest]) -> list[QuotaDecision]:
        return store.consume_quota_each(requests, now=float(NOW))

    group: GroupCommit[QuotaRequest, QuotaDecision] = GroupCommit(take)
    got: dict[int, int] = {}

    def submit(n: int) -> None:
        got[n] = group.submit(QuotaRequest(f"check:MY/p{n}", n + 1, 1.0, 100.0, 1000)).daily_used

    assert run(callers, submit) == dict.fromkeys(range(callers))
    assert got == {n: n + 1 for n in range(callers)}
