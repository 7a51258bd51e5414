"""A check against every peer as a sans-I/O state machine: requests out, replies in, outcomes.

The asker holds, per peer, what the last verified sync brought (:class:`PeerView`: the signed
manifest, each filter and each record set). A :class:`Check` of some canonical indicators then:

1. blinds every OPRF-tier value once (RFC 9497 VOPRF, ristretto255-SHA512); the same blinded element
   serves every peer, each of which applies its own key;
2. emits :class:`Evaluation` work — (peer, kind, epoch, blinded elements) — one per peer and kind (and
   per ``max_batch`` values), the same whatever the answers will be: a value held, not held and a
   filter false positive cost the holder one and the same evaluation, and nothing else is ever asked;
3. takes each reply (:meth:`Check.receive`): verifies the batch's DLEQ proof against the key the peer's
   manifest signs, finalizes, tests the peer's filter, and opens the record of every hit from the
   peer's record set, locally. A hit whose record is absent is a false positive of the filter: it is
   counted (:attr:`Check.unopened`) so that a holder that stuffs its filter is caught by the rate of
   such hits against its filter's false-positive rate;
4. answers per value and peer (:meth:`Check.outcomes`) with the data model of
   :mod:`client.protocol.model`.

Kinds a peer publishes on the HMAC tier are tested offline with the federation key of the manifest's
epoch, and only when the manifest's HMAC fingerprint is ours (otherwise STALE, with the reason). The
machine sends nothing and reads no clock: the caller (the node) moves the bytes, within its deadline,
and feeds failures back with :meth:`Check.fail`. This is the shape of h11's connection object or
python-tuf's ``TrustedMetadataSet``: protocol decisions here, I/O elsewhere.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from client.protocol import oprf
from client.protocol.bloom import BloomFilter
from client.protocol.digest import hmac_digest, hmac_fingerprint, oprf_input
from client.protocol.errors import DecryptionError, EncodingError, InputError, ProofError
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import NO_HMAC, Manifest
from client.protocol.metadata import IndicatorMeta, RecordSet, tag_of
from client.protocol.model import Metadata, PeerOutcome, PeerStatus

__all__ = [
    "ALERT_P_VALUE",
    "TIER_NAMES",
    "Check",
    "Evaluation",
    "PeerView",
    "binomial_tail",
    "metadata_of",
]

#: A peer's hits that open no record are implausible when the chance of at least as many at the false-
#: positive rate its filter declares is below this (one in a billion: no false alarm in the life of a
#: federation; a stuffed filter is caught after a handful of its planted values were checked).
ALERT_P_VALUE: Final = 1e-9
#: The tier names of :class:`client.protocol.model.Metadata`.
TIER_NAMES: Final = {TIER_OPRF: "oprf", TIER_HMAC: "hmac"}

Blind = Callable[[Sequence[bytes], int], tuple[list[bytes], list[bytes]]]


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the asker holds of one peer from its last verified sync.

    Attributes:
        peer_id: the peer's node id.
        manifest: its latest verified manifest; ``None`` if it was never synced.
        filters: its filters by (kind, tier), parsed.
        records: its record sets by (kind, tier), parsed.
        problem: a reason the view may not be used (e.g. its artefacts changed during the check), which
            makes every answer STALE; empty when usable.
    """

    peer_id: str
    manifest: Manifest | None
    filters: Mapping[tuple[str, int], BloomFilter] = field(default_factory=dict)
    records: Mapping[tuple[str, int], RecordSet] = field(default_factory=dict)
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One ``EvaluateOprf`` call to make: ``blinded`` elements of ``kind`` for ``peer_id`` under ``epoch``,
    whose answer must prove the key ``public_key`` (the peer's manifest signs it).

    ``number`` identifies it to :meth:`Check.receive` and :meth:`Check.fail`. Evaluations of several checks
    to one peer, kind and epoch may be sent as one call (:mod:`node.scheduler`): they are mergeable.
    """

    number: int
    peer_id: str
    kind: str
    epoch: int
    blinded: tuple[bytes, ...]
    public_key: bytes = b""


@dataclass(slots=True)
class _Pending:
    evaluation: Evaluation
    indices: list[int]


def metadata_of(meta: IndicatorMeta, digest: bytes, *, tier: int, version: int) -> Metadata:
    """The investigator's view of an opened record (``tag`` names it for a sighting)."""

    def day(d: date) -> str:
        return d.isoformat()

    return Metadata(
        category=meta.category,
        first_seen=day(meta.first_seen),
        last_seen=day(meta.last_seen),
        confidence=meta.confidence,
        tlp=meta.tlp,
        reports=meta.reports,
        tag=tag_of(digest).hex(),
        tier=TIER_NAMES[tier],
        version=version,
    )


def binomial_tail(n: int, k: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p), summed in log space (exact to double precision)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        )
        total += term
        if term < total * 1e-17 and i > n * p:
            break
    return min(1.0, total)


class Check:
    """One check of ``items`` — ``(kind, canonical)`` pairs — against ``peers``.

    Args:
        items: canonical indicators (already normalised by :func:`client.protocol.canonical.normalize`).
        peers: one view per peer, in the order the outcomes list them.
        now: the current time (UTC seconds): a peer whose manifest expired is STALE.
        hmac_key: the federation's HMAC key of an epoch, or ``None`` when this node holds none.
        max_batch: the most values in one evaluation (the peers' batch limit).
        blind: :func:`client.protocol.oprf.blind` (a test injects fixed blinds).
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        peers: Sequence[PeerView],
        *,
        now: int,
        hmac_key: Callable[[int], bytes | None] | None = None,
        max_batch: int = 1000,
        blind: Blind = oprf.blind,
    ) -> None:
        if max_batch < 1:
            raise InputError("max_batch must be at least 1")
        self._items = list(items)
        self._peers = {view.peer_id: view for view in peers}
        if len(self._peers) != len(peers):
            raise InputError("two views of one peer")
        self._order = [view.peer_id for view in peers]
        self._results: dict[str, list[PeerOutcome | None]] = {
            p: [None] * len(self._items) for p in self._order
        }
        self._pending: dict[int, _Pending] = {}
        #: Filter hits that opened no record, by (peer, kind).
        self.unopened: dict[tuple[str, str], int] = {}
        #: Values tested against each (peer, kind) filter, the trials of :attr:`unopened`.
        self.tested: dict[tuple[str, str], int] = {}
        self._inputs: list[bytes] = []
        self._blinds: list[bytes] = []
        self._blinded: list[bytes] = []
        needs_oprf: dict[str, dict[str, list[int]]] = {}
        for peer_id in self._order:
            for kind, indices in self._plan(self._peers[peer_id], now, hmac_key).items():
                needs_oprf.setdefault(peer_id, {})[kind] = indices
        wanted = sorted({i for kinds in needs_oprf.values() for indices in kinds.values() for i in indices})
        if wanted:
            self._inputs = [b""] * len(self._items)
            self._blinds = [b""] * len(self._items)
            self._blinded = [b""] * len(self._items)
            inputs = [oprf_input(*self._items[i]) for i in wanted]
            blinds, blinded = blind(inputs, oprf.MODE_VOPRF)
            for i, x, r, c in zip(wanted, inputs, blinds, blinded, strict=True):
                self._inputs[i], self._blinds[i], self._blinded[i] = x, r, c
        number = 0
        for peer_id, kinds in needs_oprf.items():
            manifest = self._peers[peer_id].manifest
            assert manifest is not None
            for kind, indices in kinds.items():
                for start in range(0, len(indices), max_batch):
                    chunk = indices[start : start + max_batch]
                    evaluation = Evaluation(
                        number,
                        peer_id,
                        kind,
                        manifest.epoch,
                        tuple(self._blinded[i] for i in chunk),
                        manifest.oprf_public_key,
                    )
                    self._pending[number] = _Pending(evaluation, chunk)
                    number += 1

    # --- planning ---------------------------------------------------------------------------------

    def _set(self, peer_id: str, index: int, outcome: PeerOutcome) -> None:
        self._results[peer_id][index] = outcome

    def _plan(
        self, view: PeerView, now: int, hmac_key: Callable[[int], bytes | None] | None
    ) -> dict[str, list[int]]:
        """Answer what needs no evaluation (stale views, unpublished kinds, the HMAC tier); return the
        indices per kind that need the peer's OPRF."""
        peer_id, manifest = view.peer_id, view.manifest
        everything = range(len(self._items))
        if manifest is None or view.problem or now > manifest.expires_at:
            reason = (
                "never synced" if manifest is None else view.problem or f"manifest {manifest.version} expired"
            )
            for i in everything:
                self._set(peer_id, i, PeerOutcome(peer_id, PeerStatus.STALE, detail=reason))
            return {}
        by_kind: dict[str, list[int]] = {}
        for i, (kind, _value) in enumerate(self._items):
            by_kind.setdefault(kind, []).append(i)
        key = hmac_key(manifest.epoch) if hmac_key is not None else None
        hmac_problem = (
            "this node holds no federation HMAC key"
            if key is None
            else "HMAC key differs from the peer's (federation secret mismatch)"
            if manifest.hmac_fingerprint == NO_HMAC
            or not hmac.compare_digest(hmac_fingerprint(key), manifest.hmac_fingerprint)
            else ""
        )
        oprf_kinds: dict[str, list[int]] = {}
        for kind, indices in by_kind.items():
            has_hmac = manifest.entry(kind, TIER_HMAC) is not None
            has_oprf = manifest.entry(kind, TIER_OPRF) is not None
            # The HMAC tier when it can answer (offline, no evaluation), else the OPRF tier if published.
            tier = (
                TIER_HMAC if has_hmac and (not hmac_problem or not has_oprf) else TIER_OPRF if has_oprf else 0
            )
            if not tier:
                for i in indices:
                    self._set(
                        peer_id, i, PeerOutcome(peer_id, PeerStatus.NO_MATCH, detail="kind not published")
                    )
            elif (kind, tier) not in view.filters or (kind, tier) not in view.records:
                self._stale(peer_id, indices, "filter or records not cached")
            elif tier == TIER_OPRF:
                oprf_kinds[kind] = indices
            elif hmac_problem or key is None:
                self._stale(peer_id, indices, hmac_problem)
            else:
                digests = [hmac_digest(key, manifest.epoch, kind, self._items[i][1]) for i in indices]
                self._lookup(view, kind, TIER_HMAC, indices, digests)
        return oprf_kinds

    def _stale(self, peer_id: str, indices: Sequence[int], reason: str) -> None:
        for i in indices:
            self._set(peer_id, i, PeerOutcome(peer_id, PeerStatus.STALE, detail=reason))

    # --- the exchange -----------------------------------------------------------------------------

    @property
    def pending(self) -> list[Evaluation]:
        """The evaluations not yet answered, in a stable order."""
        return [p.evaluation for _, p in sorted(self._pending.items())]

    @property
    def done(self) -> bool:
        """True once every evaluation was answered or failed."""
        return not self._pending

    def _take(self, evaluation: Evaluation) -> _Pending:
        pending = self._pending.pop(evaluation.number, None)
        if pending is None or pending.evaluation != evaluation:
            raise InputError(f"evaluation {evaluation.number} is not pending")
        return pending

    def receive(self, evaluation: Evaluation, evaluated: Sequence[bytes], proof: bytes) -> None:
        """Take the peer's reply to ``evaluation``: verify, finalize, test the filter, open the hits.

        A reply that fails the protocol (wrong count, bad encoding, a proof that does not verify, a
        record that does not authenticate) makes the evaluation's values UNAVAILABLE from that peer,
        naming the fault, and is raised to the caller after being recorded.

        Raises:
            ProofError, EncodingError, DecryptionError, InputError: the peer's reply is invalid.
        """
        self._finish(evaluation, evaluated, proof)

    def receive_verified(self, evaluation: Evaluation, evaluated: Sequence[bytes]) -> None:
        """Take the peer's evaluated elements for ``evaluation`` when the caller has itself verified a
        batch DLEQ proof under ``evaluation.public_key`` covering exactly these pairs (a scheduler that
        sent several checks' evaluations as one call verifies its proof once, not once per check).

        Raises:
            EncodingError, DecryptionError, InputError: as :meth:`receive`.
        """
        self._finish(evaluation, evaluated, None)

    def _finish(self, evaluation: Evaluation, evaluated: Sequence[bytes], proof: bytes | None) -> None:
        """Finalize, verifying ``proof`` (None: verified by the caller under the evaluation's key, which
        must be the manifest's), then test the filter and open the hits."""
        pending = self._take(evaluation)
        view = self._peers[evaluation.peer_id]
        assert view.manifest is not None
        indices = pending.indices
        try:
            if len(evaluated) != len(indices):
                raise EncodingError(
                    f"{evaluation.peer_id} returned {len(evaluated)} evaluated elements for {len(indices)}"
                )
            inputs, blinds = [self._inputs[i] for i in indices], [self._blinds[i] for i in indices]
            if proof is None:
                if evaluation.public_key != view.manifest.oprf_public_key:
                    raise InputError("the evaluation was verified under another key than the manifest's")
                digests = oprf.finalize(inputs, blinds, list(evaluated), oprf.MODE_OPRF)
            else:
                digests = oprf.finalize(
                    inputs,
                    blinds,
                    list(evaluated),
                    oprf.MODE_VOPRF,
                    blinded=list(evaluation.blinded),
                    pk=view.manifest.oprf_public_key,
                    proof=proof,
                )
            self._lookup(view, evaluation.kind, TIER_OPRF, indices, digests)
        except (ProofError, EncodingError, DecryptionError, InputError) as error:
            self._fail(evaluation.peer_id, indices, PeerStatus.UNAVAILABLE, f"invalid answer: {error}")
            raise

    def fail(
        self, evaluation: Evaluation, status: PeerStatus, detail: str, *, retry_after_ms: int = 0
    ) -> None:
        """The evaluation could not be made: its values get ``status`` (UNAVAILABLE, RATE_LIMITED…);
        a peer's refusal passes on when it said to retry (``retry_after_ms``, 0: it did not say)."""
        pending = self._take(evaluation)
        self._fail(evaluation.peer_id, pending.indices, status, detail, retry_after_ms)

    def fail_all(self, status: PeerStatus, detail: str) -> None:
        """Give up every pending evaluation (the deadline passed)."""
        for pending in list(self._pending.values()):
            self.fail(pending.evaluation, status, detail)

    def _fail(
        self, peer_id: str, indices: Sequence[int], status: PeerStatus, detail: str, retry_after_ms: int = 0
    ) -> None:
        for i in indices:
            if self._results[peer_id][i] is None:
                self._set(
                    peer_id, i, PeerOutcome(peer_id, status, detail=detail, retry_after_ms=retry_after_ms)
                )

    def _lookup(
        self, view: PeerView, kind: str, tier: int, indices: Sequence[int], digests: Sequence[bytes]
    ) -> None:
        manifest = view.manifest
        assert manifest is not None
        bloom, records = view.filters[(kind, tier)], view.records[(kind, tier)]
        key = (view.peer_id, kind)
        self.tested[key] = self.tested.get(key, 0) + len(indices)
        hits = bloom.contains_many(list(digests))
        for i, digest, hit in zip(indices, digests, hits, strict=True):
            try:
                meta = (
                    records.open(digest, node_id=view.peer_id, epoch=manifest.epoch, kind=kind, tier=tier)
                    if hit
                    else None
                )
            except (DecryptionError, EncodingError):
                # A record under our tag that does not open: the peer planted it (anyone can compute a
                # tag on the HMAC tier). This value only is unanswered by this peer, and it counts with the
                # hits that opened no record; nothing is raised, so the check and its audit entry go on.
                self.unopened[key] = self.unopened.get(key, 0) + 1
                detail = "invalid record: its holder's record for this value does not open"
                self._set(view.peer_id, i, PeerOutcome(view.peer_id, PeerStatus.UNAVAILABLE, detail=detail))
                continue
            if meta is None:
                if hit:
                    self.unopened[key] = self.unopened.get(key, 0) + 1
                self._set(view.peer_id, i, PeerOutcome(view.peer_id, PeerStatus.NO_MATCH))
            else:
                metadata = metadata_of(meta, digest, tier=tier, version=manifest.version)
                self._set(view.peer_id, i, PeerOutcome(view.peer_id, PeerStatus.MATCH, metadata))

    # --- the answer -------------------------------------------------------------------------------

    def outcomes(self) -> list[tuple[PeerOutcome, ...]]:
        """Per item, one outcome per peer in the order of the views; what was never answered is
        UNAVAILABLE ("no answer")."""
        return [
            tuple(
                self._results[p][i] or PeerOutcome(p, PeerStatus.UNAVAILABLE, detail="no answer")
                for p in self._order
            )
            for i in range(len(self._items))
        ]
