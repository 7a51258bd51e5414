"""What a feed source hands the runner: one page's indicators, refusals and retractions, and its cursor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.ingest.parsers import ParsedIndicator, Rejection

__all__ = ["Batch", "Source", "json_size"]


@dataclass
class Batch:
    """One page of a feed, read and checked, and the source's cursor once it is durably stored.

    ``retractions`` are ``(kind, canonical)`` pairs; ``objects`` counts what the page held (STIX
    objects, MISP events), skipped ones included.
    """

    cursor: dict[str, Any]
    objects: int = 0
    indicators: list[ParsedIndicator] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    retractions: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item: ParsedIndicator | Rejection) -> None:
        """Add what a file reader yielded."""
        if isinstance(item, Rejection):
            self.rejections.append(item)
        else:
            self.indicators.append(item)


class Source(Protocol):
    """A feed's reader: pages from a cursor on; raises ``FeedError`` when the server cannot be read."""

    def batches(self, cursor: dict[str, Any]) -> Iterator[Batch]: ...

    def close(self) -> None: ...


def json_size(obj: object) -> int | None:
    """Bytes of an object as compact JSON (what ``max_object_bytes`` caps); None when it is nested too
    deeply to write."""
    try:
        return len(json.dumps(obj, separators=(",", ":")).encode("utf-8"))
    except RecursionError:
        return None
