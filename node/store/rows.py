"""Row types of the store: what its methods take and return (frozen dataclasses and named tuples).

:mod:`node.store.base` re-exports every name here; import them from there or from :mod:`node.store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

__all__ = [
    "DIGEST_LENGTHS",
    "AuditEvent",
    "ChangedRow",
    "DigestItem",
    "HeadRow",
    "IndicatorRecord",
    "IndicatorRow",
    "PublishRow",
    "QuotaDecision",
    "QuotaRequest",
    "QuotaState",
    "SealedItem",
    "SealingRow",
    "Sighting",
    "StateCounts",
    "UpsertResult",
    "WrappedKey",
    "record_from_row",
]

#: Digest lengths the store accepts: HMAC-SHA256 (32 bytes) and ristretto255-SHA512 OPRF output (64).
DIGEST_LENGTHS: Final = (32, 64)

#: The fields of one audit event (strings, integers, and lists or objects of them; never floats).
#: The store makes it an entry of the log (see ``node.store.sqlbase.chain_entries``) inside the event's
#: own transaction.
AuditEvent = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A key kept in the store, wrapped under a key-encryption key (:mod:`node.keystore`): its purpose
    (``oprf`` or ``hmac``), epoch (for ``hmac`` the federation secret's generation), the fingerprint
    (hex) of the KEK it is wrapped under, the wrapped bytes and when it was stored (Unix seconds)."""

    purpose: str
    epoch: int
    kek: str
    blob: bytes
    created_at: int


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    """One indicator as ingested: the canonical value, its metadata and optional digests.

    ``digests`` maps ``(epoch, tier)`` to the digest bytes (64-byte OPRF output or 32-byte HMAC).
    """

    kind: str
    canonical: str
    category: str
    first_seen: int
    last_seen: int
    confidence: int
    tlp: str
    reports: int = 1
    expires_at: int | None = None
    source: str = ""
    digests: Mapping[tuple[int, int], bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IndicatorRecord:
    """One stored indicator with its state, as :meth:`Store.get_indicator` returns it."""

    kind: str
    canonical: str
    category: str
    first_seen: int
    last_seen: int
    confidence: int
    tlp: str
    reports: int
    expires_at: int | None
    source: str
    retracted_at: int | None
    updated_at: int
    digests: Mapping[tuple[int, int], bytes]


def record_from_row(row: Sequence[Any], digests: Mapping[tuple[int, int], bytes]) -> IndicatorRecord:
    """Build an IndicatorRecord from the 12 indicator columns in schema order and its digests."""
    (kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, source,
     retracted_at, updated_at) = row  # fmt: skip
    return IndicatorRecord(
        kind, canonical, category, first_seen, last_seen, confidence, tlp, reports, expires_at, source,
        retracted_at, updated_at, digests,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """Outcome of a batch: ``stored`` new indicators, ``updated`` existing ones merged.

    Rows of one batch with the same ``(kind, canonical)`` are merged first and count once.
    """

    stored: int
    updated: int


class PublishRow(NamedTuple):
    """One digest to publish, with the metadata revealed to a peer on a match."""

    kind: str
    tier: int
    digest: bytes
    category: str
    first_seen: int
    last_seen: int
    confidence: int
    tlp: str
    reports: int
    expires_at: int | None


class SealingRow(NamedTuple):
    """A row to publish with what its sealed record needs: the digest row's indicator id, the metadata
    key it is sealed under now, and the record sealed for it before, if that key still matches."""

    row: PublishRow
    indicator_id: int
    sealed_key: str
    sealed: bytes | None


class ChangedRow(NamedTuple):
    """A digest row of an indicator that changed since a publication (:meth:`Store.iter_changed`):
    the :class:`SealingRow` fields, and whether the row is publishable now (``live``: neither retracted,
    expired nor TLP:RED)."""

    row: PublishRow
    indicator_id: int
    sealed_key: str
    sealed: bytes | None
    live: bool


class SealedItem(NamedTuple):
    """A sealed record to keep with its digest row (``epoch`` is the call's), as
    :meth:`Store.cache_sealed` takes it: the key is the one :class:`SealingRow` gave."""

    indicator_id: int
    tier: int
    sealed_key: str
    sealed: bytes


class RecordBatch(NamedTuple):
    """Rows of one (kind, tier) to publish, in tag order, as :meth:`Store.iter_records` streams them:
    ``digests`` and ``records`` are the rows' digests and sealed records concatenated in the same order,
    ``total`` the number of rows of the whole stream (the same in every batch of it)."""

    total: int
    digests: bytes
    records: bytes


class DigestItem(NamedTuple):
    """A digest of a stored indicator for ``(epoch, tier)``, as :meth:`Store.set_digests` takes it."""

    kind: str
    canonical: str
    epoch: int
    tier: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class StateCounts:
    """Indicators of one kind by state at a given time; the three states are disjoint."""

    active: int = 0
    expired: int = 0
    retracted: int = 0


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """Answer of :meth:`Store.consume_quota`.

    ``retry_after_s`` is 0 when allowed, ``math.inf`` when the request can never succeed (``amount``
    above ``burst`` or above ``daily_limit``, or a zero refill rate with too few tokens).
    """

    allowed: bool
    retry_after_s: float
    daily_used: int
    tokens_left: float


@dataclass(frozen=True, slots=True)
class QuotaRequest:
    """One subject's part of :meth:`Store.consume_quotas`: take ``amount`` under these limits."""

    subject: str
    amount: int
    rate_per_s: float
    burst: float
    daily_limit: int


@dataclass(frozen=True, slots=True)
class QuotaState:
    """Persistent state of one subject's token bucket and daily counter (``day`` = UTC days since epoch)."""

    tokens: float
    updated_at: float
    day: int
    daily_used: int


@dataclass(frozen=True, slots=True)
class HeadRow:
    """The stored columns of a signed tree head (``timestamp`` in the signer's unit, as given): whose head it
    is, the store's caller knows. :class:`client.protocol.auditlog.TreeHead` is the head itself, with its
    node id; :mod:`node.audit` and the servicers make one from the other."""

    size: int
    root: bytes
    timestamp: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Sighting:
    """A sighting a peer reported of one of our digests (``tag`` as received)."""

    peer_id: str
    kind: str
    tier: int
    tag: bytes
    at: int
