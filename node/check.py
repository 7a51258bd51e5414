"""Checking indicators against every peer.

A check canonicalises the indicators once and then, for every peer at once and within one deadline:
blinds them, has the peer evaluate them (VOPRF, proof verified), tests the peer's cached filter
locally, and only for a hit fetches the one metadata bucket its tag falls in and decrypts its record.
Kinds the peer publishes on the HMAC tier are tested offline. No raw indicator and no digest ever
leaves the node: only blinded elements, and for a hit a bucket number and, on request, a tag.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from client._proto.petanda.v1 import (
    investigator_pb2,
    peer_pb2,
)
from client.protocol import errors, oprf
from client.protocol.bloom import BloomFilter
from client.protocol.digest import derive_epoch_key, hmac_digest, oprf_input
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import (
    Manifest,
    SignedManifest,
    verify_bucket,
)
from client.protocol.metadata import IndicatorMeta, bucket_id, decode_bucket, open_match, tag_of
from client.transport.convert import kind_to_proto, tier_to_proto
from node.node import Node
from node.peers import Links, peer_error, printable

log = logging.getLogger(__name__)

__all__ = ["CheckedIndicator", "Checker", "PeerOutcome"]

MATCH, NO_MATCH, UNAVAILABLE, RATE_LIMITED, STALE = (
    "MATCH",
    "NO_MATCH",
    "UNAVAILABLE",
    "RATE_LIMITED",
    "STALE",
)
_STATUS_PROTO = {
    MATCH: investigator_pb2.PEER_STATUS_MATCH,
    NO_MATCH: investigator_pb2.PEER_STATUS_NO_MATCH,
    UNAVAILABLE: investigator_pb2.PEER_STATUS_UNAVAILABLE,
    RATE_LIMITED: investigator_pb2.PEER_STATUS_RATE_LIMITED,
    STALE: investigator_pb2.PEER_STATUS_STALE,
}


# --- check --------------------------------------------------------------------------------------------


@dataclass
class PeerOutcome:
    """One peer's answer for one indicator."""

    peer_id: str
    status: str
    meta: IndicatorMeta | None = None
    tag: bytes = b""
    tier: int = 0
    version: int = 0
    detail: str = ""


@dataclass
class CheckedIndicator:
    index: int
    kind: str
    canonical: str = ""
    error: str = ""
    peers: list[PeerOutcome] = field(default_factory=list)


class Checker:
    """Fans a batch of canonical indicators out to every peer within one deadline."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock
        self._lock = threading.Lock()
        self._filters: dict[tuple[str, str, int], tuple[int, BloomFilter]] = {}
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max(4, 2 * len(node.config.peers)), thread_name_prefix="check"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def check(self, items: Sequence[tuple[str, str]], *, deadline_s: float) -> list[list[PeerOutcome]]:
        """Per ``(kind, canonical)`` item, one :class:`PeerOutcome` per configured peer, in config order."""
        start = time.monotonic()
        peers = [p.id for p in self.node.config.peers]
        jobs = {peer: self._pool.submit(self._check_peer, peer, items, start + deadline_s) for peer in peers}
        futures.wait(jobs.values(), timeout=deadline_s)
        per_peer: dict[str, list[PeerOutcome]] = {}
        for peer, job in jobs.items():
            if job.done() and job.exception() is None:
                per_peer[peer] = job.result()
            else:
                detail = "deadline exceeded" if not job.done() else f"error: {job.exception()}"
                if not job.done():
                    job.cancel()
                per_peer[peer] = [PeerOutcome(peer, UNAVAILABLE, detail=detail) for _ in items]
        return [[per_peer[peer][i] for peer in peers] for i in range(len(items))]

    def _check_peer(
        self, peer_id: str, items: Sequence[tuple[str, str]], deadline: float
    ) -> list[PeerOutcome]:
        now = self.clock()
        cached = self.node.store.peer_manifest(peer_id)
        if cached is None:
            return [PeerOutcome(peer_id, STALE, detail="never synced") for _ in items]
        manifest = SignedManifest.from_bytes(cached).manifest
        if now > manifest.expires_at:
            return [PeerOutcome(peer_id, STALE, detail=f"manifest {manifest.version} expired") for _ in items]
        outcomes: list[PeerOutcome | None] = [None] * len(items)
        hmac_kinds = {e.kind for e in manifest.entries if e.tier == TIER_HMAC}
        by_kind: dict[str, list[int]] = {}
        for index, (kind, _canonical) in enumerate(items):
            if manifest.entry(kind, TIER_HMAC if kind in hmac_kinds else TIER_OPRF) is None:
                outcomes[index] = PeerOutcome(
                    peer_id, NO_MATCH, version=manifest.version, detail="kind not published"
                )
            else:
                by_kind.setdefault(kind, []).append(index)
        stub = self.links.get(peer_id).stub
        try:
            for kind, indices in by_kind.items():
                tier = TIER_HMAC if kind in hmac_kinds else TIER_OPRF
                inputs = [items[i][1] for i in indices]
                if tier == TIER_HMAC:
                    key = derive_epoch_key(self.node.federation_secret(), manifest.epoch)
                    digests = [hmac_digest(key, manifest.epoch, kind, c) for c in inputs]
                else:
                    digests = self._oprf(stub, manifest, kind, inputs, deadline)
                found = self._lookup(stub, peer_id, manifest, kind, tier, digests, deadline)
                for index, outcome in zip(indices, found, strict=True):
                    outcomes[index] = outcome
        except grpc.RpcError as error:
            failure = peer_error(peer_id, error)
            status = RATE_LIMITED if isinstance(failure, errors.RateLimited) else UNAVAILABLE
            return [
                o if o is not None else PeerOutcome(peer_id, status, detail=str(failure)) for o in outcomes
            ]
        except errors.PetandaError as error:
            detail = printable(str(error))
            log.warning("check against %s failed: %s", peer_id, detail)
            return [
                o if o is not None else PeerOutcome(peer_id, UNAVAILABLE, detail=detail) for o in outcomes
            ]
        return [o for o in outcomes if o is not None]

    def _oprf(
        self, stub: Any, manifest: Manifest, kind: str, canonicals: list[str], deadline: float
    ) -> list[bytes]:
        inputs = [oprf_input(kind, c) for c in canonicals]
        outputs: list[bytes] = []
        batch = self.node.config.limits.max_batch
        for start in range(0, len(inputs), batch):
            chunk = inputs[start : start + batch]
            blinds, blinded = oprf.blind(chunk, oprf.MODE_VOPRF)
            response = stub.EvaluateOprf(
                peer_pb2.EvaluateOprfRequest(
                    epoch=manifest.epoch, kind=kind_to_proto(kind), blinded_elements=blinded, verifiable=True
                ),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            outputs += oprf.finalize(
                chunk,
                blinds,
                list(response.evaluated_elements),
                oprf.MODE_VOPRF,
                blinded=blinded,
                pk=manifest.oprf_public_key,
                proof=response.proof,
            )
        return outputs

    def _filter(
        self, peer_id: str, manifest: Manifest, kind: str, tier: int
    ) -> tuple[BloomFilter | None, str]:
        """The peer's cached filter for the manifest's version, parsed once and kept in memory; else
        ``None`` and why.

        The manifest and the filter are read in two transactions: a filter whose SHA-256 is not the one
        the manifest signs was replaced by a sync in between, and is neither used nor cached.
        """
        key = (peer_id, kind, tier)
        with self._lock:
            cached = self._filters.get(key)
        if cached is not None and cached[0] == manifest.version:
            return cached[1], ""
        data = self.node.store.peer_filter(peer_id, kind, tier)
        entry = manifest.entry(kind, tier)
        if data is None or entry is None:
            return None, "filter not cached"
        if hashlib.sha256(data).digest() != entry.filter_sha256:
            return None, "filter changed during the check"
        bloom = BloomFilter.from_bytes(data)
        with self._lock:
            self._filters[key] = (manifest.version, bloom)
        return bloom, ""

    def _lookup(
        self,
        stub: Any,
        peer_id: str,
        manifest: Manifest,
        kind: str,
        tier: int,
        digests: list[bytes],
        deadline: float,
    ) -> list[PeerOutcome]:
        """Test ``digests`` against the peer's filter; open the records of the hits, one bucket fetch each."""
        bloom, why = self._filter(peer_id, manifest, kind, tier)
        if bloom is None:
            return [PeerOutcome(peer_id, STALE, detail=why) for _ in digests]
        outcomes = [PeerOutcome(peer_id, NO_MATCH, tier=tier, version=manifest.version) for _ in digests]
        entry = manifest.entry(kind, tier)
        assert entry is not None
        hits: dict[int, list[int]] = {}
        for index, hit in enumerate(bloom.contains_many(digests)):
            if hit:
                hits.setdefault(bucket_id(tag_of(digests[index]), entry.prefix_bits), []).append(index)
        for bucket, indices in hits.items():
            response = stub.GetMetadataBucket(
                peer_pb2.GetMetadataBucketRequest(
                    version=manifest.version,
                    kind=kind_to_proto(kind),
                    tier=tier_to_proto(tier),
                    bucket_id=bucket,
                ),
                timeout=max(0.001, deadline - time.monotonic()),
            )
            verify_bucket(manifest, kind, tier, bucket, response.bucket, list(response.proof))
            records = decode_bucket(response.bucket, bucket=bucket, prefix_bits=entry.prefix_bits)
            for index in indices:
                digest = digests[index]
                meta = open_match(
                    digest, records, node_id=peer_id, epoch=manifest.epoch, kind=kind, tier=tier
                )
                if meta is not None:  # None: a Bloom false positive
                    outcomes[index] = PeerOutcome(
                        peer_id, MATCH, meta=meta, tag=tag_of(digest), tier=tier, version=manifest.version
                    )
        return outcomes
