"""The investigator's data model: queries, per-peer outcomes and their statuses, match metadata, sightings.

Defined once here and used by the node (which answers checks), by the tools (which render them) and by
:mod:`client.transport.convert` (the ``to_proto`` / ``from_proto`` pairs between these and the wire).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from client.protocol.errors import InputError, ProtocolError, UnknownKind
from client.protocol.kinds import KINDS

__all__ = [
    "Metadata",
    "Outcome",
    "PeerOutcome",
    "PeerStatus",
    "Query",
    "Sighting",
    "order_results",
]


# --- the investigator's data model
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One indicator to check, as the investigator has it; the node canonicalises it.

    Attributes:
        kind: one of :data:`client.protocol.kinds.KINDS`.
        value: the value as given.
        region: ISO 3166-1 alpha-2 region for national phone numbers and ``BANK:ACCOUNT``; empty means
            the node's own country.
    """

    kind: str
    value: str
    region: str = ""


class PeerStatus(enum.StrEnum):
    """What one peer said about one indicator (``PeerStatus`` of ``investigator.proto``)."""

    MATCH = "match"
    NO_MATCH = "no_match"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    STALE = "stale"
    #: A status this client does not know (a newer node) or none: counted as "incomplete".
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Metadata:
    """The metadata of a match, as the holding peer sealed it (``MatchMetadata``).

    ``tier``, ``version`` and ``tag`` identify the record for ``petanda sighting``.
    """

    category: str
    first_seen: str
    last_seen: str
    confidence: int
    tlp: str
    reports: int
    tag: str
    tier: str
    version: int

    def as_dict(self) -> dict[str, Any]:
        """The metadata as a JSON object, keys in the order of the proto fields."""
        return {
            "category": self.category,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "confidence": self.confidence,
            "tlp": self.tlp,
            "reports": self.reports,
            "tag": self.tag,
            "tier": self.tier,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class PeerOutcome:
    """One peer's answer for one indicator; ``metadata`` only for a match, ``detail`` a short reason.

    ``retry_after_ms``: for :attr:`PeerStatus.RATE_LIMITED`, when the peer said it would take the
    evaluation again (0: it did not say). Not part of :meth:`as_dict`: ``detail`` says it in words.
    """

    peer_id: str
    status: PeerStatus
    metadata: Metadata | None = None
    detail: str = ""
    retry_after_ms: int = 0

    @property
    def answered(self) -> bool:
        """Whether the peer answered (match or no match), as opposed to rate limited, unavailable…"""
        return self.status in (PeerStatus.MATCH, PeerStatus.NO_MATCH)

    def as_dict(self) -> dict[str, Any]:
        """The answer as a JSON object."""
        return {
            "peer_id": self.peer_id,
            "status": self.status.value,
            "metadata": None if self.metadata is None else self.metadata.as_dict(),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """The node's answer for one query: its canonical form, or the reason it was refused, and per peer."""

    canonical: str
    error: str = ""
    peers: tuple[PeerOutcome, ...] = ()

    @property
    def matches(self) -> tuple[PeerOutcome, ...]:
        """The peers that hold the indicator."""
        return tuple(p for p in self.peers if p.status is PeerStatus.MATCH)

    @property
    def fully_answered(self) -> bool:
        """Whether the node accepted the value and every peer answered it (there is at least one)."""
        return not self.error and bool(self.peers) and all(p.answered for p in self.peers)

    @property
    def unanswered(self) -> tuple[str, ...]:
        """The peers that did not answer (rate limited, unavailable, stale, unknown), in order."""
        return tuple(p.peer_id for p in self.peers if not p.answered)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A sighting of a match, reported to the peer that holds it (values from a match's metadata).

    Attributes:
        peer_id: the peer that reported the match (ISO 3166-1 alpha-2).
        kind: the indicator's kind.
        tier: ``oprf`` or ``hmac``.
        version: the record's version.
        tag: the record's tag, lower-case hex.
    """

    peer_id: str
    kind: str
    tier: str
    version: int
    tag: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]{2}", self.peer_id):
            raise InputError(f"peer {self.peer_id!r} is not a node id (two capital letters, e.g. SG)")
        if self.kind not in KINDS:
            raise UnknownKind(self.kind, KINDS)
        if self.tier not in ("oprf", "hmac"):
            raise InputError(f"tier {self.tier!r} is not oprf or hmac")
        if not 0 <= self.version < 2**64:
            raise InputError(f"version {self.version} is not an unsigned 64-bit number")
        if not re.fullmatch(r"(?:[0-9a-f]{2}){1,128}", self.tag):
            raise InputError("tag must be lower-case hexadecimal bytes, as in the match's metadata")


def order_results(count: int, results: Iterable[tuple[int, Outcome]]) -> list[Outcome]:
    """Put the node's ``(index, outcome)`` pairs in query order, checking there is exactly one per query.

    Raises:
        ProtocolError: an index out of range, repeated, or missing.
    """
    ordered: list[Outcome | None] = [None] * count
    for index, outcome in results:
        if not 0 <= index < count:
            raise ProtocolError(f"the node answered for query {index} of a batch of {count}")
        if ordered[index] is not None:
            raise ProtocolError(f"the node answered twice for query {index}")
        ordered[index] = outcome
    missing = [i for i, o in enumerate(ordered) if o is None]
    if missing:
        raise ProtocolError(
            f"the node gave no answer for {len(missing)} of {count} queries (first: {missing[0]})"
        )
    return [o for o in ordered if o is not None]
