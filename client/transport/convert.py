"""The ``to_proto`` / ``from_proto`` pairs between the protocol's values and the generated messages.

Node and tools both convert here and nowhere else: protobuf types do not leak into the protocol core.
Each ``*_from_proto`` refuses what the protocol cannot hold (naming the field), so a servicer that
calls it has validated its request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from client._proto.petanda.v1 import common_pb2, investigator_pb2
from client.protocol.auditlog import TreeHead
from client.protocol.errors import InputError
from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF, kind_code
from client.protocol.model import Metadata, Outcome, PeerOutcome, PeerStatus, Query, Sighting, order_results
from client.transport.status import MAX_RETRY_AFTER_MS

__all__ = [
    "check_peers_from_proto",
    "kind_from_proto",
    "kind_to_proto",
    "queries_from_proto",
    "queries_to_proto",
    "results_from_proto",
    "results_to_proto",
    "sighting_from_proto",
    "sighting_to_proto",
    "status_from_proto",
    "status_to_proto",
    "tier_from_proto",
    "tier_to_proto",
    "tree_head_from_proto",
    "tree_head_to_proto",
]

_STATUS_FROM_PROTO: Final = {
    investigator_pb2.PEER_STATUS_MATCH: PeerStatus.MATCH,
    investigator_pb2.PEER_STATUS_NO_MATCH: PeerStatus.NO_MATCH,
    investigator_pb2.PEER_STATUS_UNAVAILABLE: PeerStatus.UNAVAILABLE,
    investigator_pb2.PEER_STATUS_RATE_LIMITED: PeerStatus.RATE_LIMITED,
    investigator_pb2.PEER_STATUS_STALE: PeerStatus.STALE,
}
_STATUS_TO_PROTO: Final = {v: k for k, v in _STATUS_FROM_PROTO.items()}
_TIER_NAMES: Final = {common_pb2.TIER_OPRF: "oprf", common_pb2.TIER_HMAC: "hmac"}
_TIER_CODES: Final = {v: k for k, v in _TIER_NAMES.items()}


# --- kinds, tiers, statuses ---------------------------------------------------------------------------


def kind_to_proto(kind: str) -> common_pb2.Kind.ValueType:
    """The ``Kind`` enum value of a kind name."""
    return cast("common_pb2.Kind.ValueType", kind_code(kind))


def kind_from_proto(value: int) -> str:
    """The kind name of a ``Kind`` enum value, refusing ``KIND_UNSPECIFIED`` and unknown numbers."""
    if not 1 <= value <= len(KINDS):
        raise InputError(f"kind: {value} is not a known kind")
    return KINDS[value - 1]


def tier_to_proto(tier: int) -> common_pb2.Tier.ValueType:
    """The ``Tier`` enum value of a tier code."""
    return cast("common_pb2.Tier.ValueType", tier)


def tier_from_proto(value: int) -> int:
    """The tier code of a ``Tier`` enum value, refusing ``TIER_UNSPECIFIED``."""
    if value not in (TIER_OPRF, TIER_HMAC):
        raise InputError(f"tier: {value} is not TIER_OPRF or TIER_HMAC")
    return value


def status_to_proto(status: PeerStatus) -> investigator_pb2.PeerStatus.ValueType:
    """The ``PeerStatus`` enum value of a status (UNSPECIFIED for :attr:`PeerStatus.UNKNOWN`)."""
    return _STATUS_TO_PROTO.get(status, investigator_pb2.PEER_STATUS_UNSPECIFIED)


def status_from_proto(value: int) -> PeerStatus:
    """The status of a ``PeerStatus`` enum value; one this code does not know is
    :attr:`PeerStatus.UNKNOWN`."""
    return _STATUS_FROM_PROTO.get(cast("investigator_pb2.PeerStatus.ValueType", value), PeerStatus.UNKNOWN)


# --- tree heads ---------------------------------------------------------------------------------------


def tree_head_to_proto(head: TreeHead) -> common_pb2.SignedTreeHead:
    """The ``SignedTreeHead`` message of a signed tree head."""
    return common_pb2.SignedTreeHead(
        node_id=head.node_id,
        tree_size=head.tree_size,
        root_hash=head.root_hash,
        timestamp=head.timestamp,
        signature=head.signature,
    )


def tree_head_from_proto(message: common_pb2.SignedTreeHead) -> TreeHead:
    """The signed tree head a ``SignedTreeHead`` message carries (its signature is not checked here)."""
    return TreeHead(
        node_id=message.node_id,
        tree_size=message.tree_size,
        root_hash=message.root_hash,
        timestamp=message.timestamp,
        signature=message.signature,
    )


# --- the investigator's checks and sightings ----------------------------------------------------------


def queries_to_proto(
    queries: Sequence[Query], deadline_ms: int = 0, peers: Sequence[str] = ()
) -> investigator_pb2.CheckRequest:
    """Build the CheckRequest of a batch (``deadline_ms`` 0: the node's default; ``peers`` empty: ask
    every peer, else only those)."""
    return investigator_pb2.CheckRequest(
        queries=[
            investigator_pb2.IndicatorQuery(kind=q.kind, value=q.value, region=q.region) for q in queries
        ],
        deadline_ms=deadline_ms,
        peers=list(peers),
    )


def queries_from_proto(request: investigator_pb2.CheckRequest) -> tuple[list[Query], int]:
    """Read a CheckRequest back: its queries and its deadline in milliseconds."""
    return [Query(q.kind, q.value, q.region) for q in request.queries], request.deadline_ms


def check_peers_from_proto(request: investigator_pb2.CheckRequest) -> list[str]:
    """The peers a CheckRequest asks (empty: every peer), without repeats, in the order given."""
    return list(dict.fromkeys(request.peers))


def _metadata_from_proto(m: investigator_pb2.MatchMetadata) -> Metadata:
    return Metadata(
        category=m.category,
        first_seen=m.first_seen,
        last_seen=m.last_seen,
        confidence=m.confidence,
        tlp=m.tlp,
        reports=m.reports,
        tag=m.tag,
        tier=_TIER_NAMES.get(m.tier, ""),
        version=m.version,
    )


def _metadata_to_proto(m: Metadata) -> investigator_pb2.MatchMetadata:
    return investigator_pb2.MatchMetadata(
        category=m.category,
        first_seen=m.first_seen,
        last_seen=m.last_seen,
        confidence=m.confidence,
        tlp=m.tlp,
        reports=m.reports,
        tag=m.tag,
        tier=_TIER_CODES.get(m.tier, common_pb2.TIER_UNSPECIFIED),
        version=m.version,
    )


def results_from_proto(response: investigator_pb2.CheckResponse, count: int) -> list[Outcome]:
    """The node's answer to a batch of ``count`` queries, in query order.

    A status this client does not know becomes :attr:`PeerStatus.UNKNOWN`; metadata is kept only for
    a match.

    Raises:
        ProtocolError: a result's index is out of range or repeated, or a query has no result.
    """

    def outcome(r: investigator_pb2.IndicatorResult) -> Outcome:
        peers = tuple(
            PeerOutcome(
                peer_id=p.peer_id,
                status=(status := status_from_proto(p.status)),
                metadata=_metadata_from_proto(p.metadata)
                if status is PeerStatus.MATCH and p.HasField("metadata")
                else None,
                detail=p.detail,
                retry_after_ms=p.retry_after_ms if status is PeerStatus.RATE_LIMITED else 0,
            )
            for p in r.peers
        )
        return Outcome(canonical=r.canonical, error=r.error, peers=peers)

    return order_results(count, ((r.index, outcome(r)) for r in response.results))


def results_to_proto(outcomes: Sequence[Outcome]) -> investigator_pb2.CheckResponse:
    """Build the CheckResponse answering a batch, ``outcomes`` in query order (what a node sends)."""
    return investigator_pb2.CheckResponse(
        results=[
            investigator_pb2.IndicatorResult(
                index=index,
                canonical=o.canonical,
                error=o.error,
                peers=[
                    investigator_pb2.PeerResult(
                        peer_id=p.peer_id,
                        status=status_to_proto(p.status),
                        metadata=_metadata_to_proto(p.metadata) if p.metadata is not None else None,
                        detail=p.detail,
                        retry_after_ms=min(p.retry_after_ms, MAX_RETRY_AFTER_MS),
                    )
                    for p in o.peers
                ],
            )
            for index, o in enumerate(outcomes)
        ]
    )


def sighting_to_proto(s: Sighting) -> investigator_pb2.SightingRequest:
    """Build the SightingRequest of a sighting."""
    return investigator_pb2.SightingRequest(
        peer_id=s.peer_id, kind=s.kind, tier=_TIER_CODES[s.tier], version=s.version, tag=s.tag
    )


def sighting_from_proto(request: investigator_pb2.SightingRequest) -> Sighting:
    """Read a SightingRequest back.

    Raises:
        InputError: a field is invalid (bad peer id, kind, tier, or tag).
    """
    tier = _TIER_NAMES.get(request.tier)
    if tier is None:
        raise InputError(f"tier {request.tier} is not oprf or hmac")
    return Sighting(request.peer_id, request.kind, tier, request.version, request.tag)
