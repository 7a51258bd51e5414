"""Run calls at the same moment, one thread each (replicas racing for one thing), and collect results."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["at_once"]

T = TypeVar("T")


def at_once(calls: Sequence[Callable[[], T]], *, timeout_s: float = 60) -> list[T]:
    """Start every call in its own thread behind one barrier; return their results in order, or raise the
    first call's error."""
    start = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = calls[index]()
        except BaseException as error:  # pragma: no cover - raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a call did not finish in time"
    return results  # type: ignore[return-value]  # every slot was filled
