"""Group commit: the store writes of checks that start or finish together go in one transaction.

Every check appends one ``investigator.check`` entry, whatever its answers, and answers only once that
entry is durable (DESIGN: no observable may exist or not depending on a check's outcome). One transaction
per entry is one durable commit (an fsync under SQLite's ``synchronous=FULL``) per check; twenty
investigators' checks finishing within a millisecond would queue on the store's write lock, one commit
each. :class:`GroupCommit` appends them together instead: the first caller to find no commit in progress
commits at once (a lone check never waits for others); the callers that arrive while it commits queue,
and the first of them commits all the queued entries in one transaction when the commit in progress
ends. Each caller returns only after the transaction holding its entry committed.

A failure stays with the entry that caused it: an event the store refuses (:class:`InputError`, checked
before its transaction starts, nothing written) makes the batch's entries go one by one, so only that
caller gets the error and the others' entries are appended.
The same goes for the quota each check takes before it starts (:meth:`Store.consume_quota_each
<node.store.base.Store.consume_quota_each>`): each decided on its own, in the order they came, one
transaction for those waiting together. A store failure (:class:`StoreError`: the
disk, the database) fails every caller of that transaction, as each would have failed alone; nothing of
it was written. The order of entries in the log is the order the calls arrived, as it was with one
transaction each; an entry's existence and content never depend on the others in its batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from client.protocol.errors import InputError

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class _Slot(Generic[T, R]):
    item: T
    done: threading.Event = field(default_factory=threading.Event)
    #: Set with ``done`` when this caller is to commit the queue (the previous commit ended).
    lead: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[T, R]):
    """Runs ``commit`` over the items of concurrent callers, those waiting together in one call.

    Args:
        commit: one store transaction over a batch of items, returning one result per item in order
            (:meth:`Store.append_audit <node.store.base.Store.append_audit>` or
            :meth:`Store.consume_quota_each <node.store.base.Store.consume_quota_each>`).
    """

    def __init__(self, commit: Callable[[list[T]], Sequence[R]]) -> None:
        self._run = commit
        self._lock = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._committing = False
        #: Transactions and items committed, for measurement.
        self.commits = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Callers queued behind the commit in progress (they go together in the next)."""
        with self._lock:
            return len(self._queue)

    def submit(self, item: T) -> R:
        """Commit ``item``; return its result once the transaction holding it committed.

        Raises:
            InputError: the store refuses this item (nothing of it written; the others go on).
            StoreError: the transaction failed (nothing of it written).
        """
        slot: _Slot[T, R] = _Slot(item)
        with self._lock:
            self._queue.append(slot)
            lead = not self._committing
            self._committing = True
        if not lead:
            slot.done.wait()
        if lead or slot.lead:
            self._commit_queue()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _commit_queue(self) -> None:
        """Commit everything queued (this caller's own slot among it), then hand over to the first caller
        that queued meanwhile, or let go."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        finally:
            with self._lock:
                if self._queue:
                    following = self._queue[0]
                    following.lead = True
                    following.done.set()
                else:
                    self._committing = False

    def _commit(self, batch: list[_Slot[T, R]]) -> None:
        """One transaction for ``batch``; if the store refuses an item, one each (the others go on)."""
        commits = 0
        try:
            try:
                results = self._results([slot.item for slot in batch])
                for slot, result in zip(batch, results, strict=True):
                    slot.result = result
                commits = 1
            except InputError:
                if len(batch) == 1:
                    raise
                for slot in batch:
                    try:
                        (slot.result,) = self._results([slot.item])
                        commits += 1
                    except Exception as own:
                        slot.error = own
        except BaseException as error:
            for slot in batch:
                if slot.error is None:
                    slot.error = error
        finally:
            with self._lock:
                self.commits += commits
                self.items += sum(slot.error is None for slot in batch)
            for slot in batch:
                slot.done.set()

    def _results(self, items: list[T]) -> list[R]:
        results = list(self._run(items))
        if len(results) != len(items):
            raise AssertionError(f"group commit: {len(results)} results for {len(items)} items")
        return results
