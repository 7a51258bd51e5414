"""Sync: pulling every peer's signed artefacts (manifest, filters, record sets) and exchanging tree heads.

Sync pulls each peer's manifest incrementally (the cursor is the peer's manifest version), verifies it
(signature under the peer's pinned key, node id, version, the chain across any gap, expiry,
plausibility), downloads and verifies every filter and record set it lists, and only then replaces the
cached copy: a peer that serves something invalid keeps its last good copy, and the refusal is audited.
A peer's signing key is pinned on first contact only once a manifest and its artefacts verified under
it. Each filter may be at most as large as its manifest entry's count allows (:func:`filter_size_limit`),
each record set exactly its announced size, and one manifest's artefacts together at most
:data:`MANIFEST_FILTERS_MAX` and :data:`MANIFEST_RECORDS_MAX` bytes, so a peer cannot exhaust our memory.
Every verified manifest's hash is remembered and compared with what other members gossip of it.

Tree heads are exchanged on the way, and a peer whose log is not consistent with what it showed before
is recorded as a fork. Witness gossip extends this across parties: the peer also hands over its latest
proven head of every other node, which we compare with our own heads of that node and, at our next
sync with it, prove consistent with the log it shows us; a node that shows two members two logs is
recorded as a fork.

One module of this size: manifest pull, artefact downloads, tree-head exchange and both gossips are one
exchange with a peer and share its verification state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client._proto.petanda.v1 import (
    peer_pb2,
)
from client.protocol import errors
from client.protocol.auditlog import LogFork, TreeHead, verify_tree_head
from client.protocol.bloom import BloomFilter, bloom_parameters, filter_capacity
from client.protocol.delta import apply_delta, decode_delta
from client.protocol.kinds import kind_code
from client.protocol.manifest import (
    FilterIdentity,
    Manifest,
    SignedManifest,
    check_filter_header,
    check_plausible,
    key_after,
    manifest_hash,
    verify_chain,
    verify_filter,
    verify_manifest,
    verify_records,
    verify_signed_manifest,
)
from client.protocol.merkle import verify_consistency
from client.protocol.metadata import RecordSet
from client.protocol.recovery import RECOVERY_VERSION, RecoveryStatement, is_before
from client.transport.convert import kind_to_proto, tier_to_proto, tree_head_from_proto, tree_head_to_proto
from node import health, recovery
from node.audit import event, refuse_gossip
from node.crl import check_peer, fetch_crl
from node.node import Node
from node.peers import Links, peer_error, printable

log = logging.getLogger(__name__)

__all__ = [
    "FILTER_MAX",
    "MANIFEST_FILTERS_MAX",
    "MANIFEST_RECORDS_MAX",
    "SyncResult",
    "Syncer",
    "filter_size_limit",
    "start_sync_loop",
]

#: Absolute ceiling of one downloaded filter, whatever its manifest entry says.
FILTER_MAX: Final = 64 * 2**20
#: Ceiling of all the filters of one manifest together.
MANIFEST_FILTERS_MAX: Final = 256 * 2**20
#: Ceiling of all the record sets of one manifest together: a 10M-indicator node sends ~620 MB, and one
#: stored value may not exceed 1 GB in SQLite or PostgreSQL (about 16M records of one kind).
MANIFEST_RECORDS_MAX: Final = 2**30
#: Most intermediate manifests one GetManifest answer may carry (the publisher's MANIFEST_CHAIN_MAX).
_CHAIN_PER_ANSWER: Final = 256
#: Most intermediate manifests chain-checked in one sync (more: the sync refuses the gap).
_CHAIN_MAX: Final = 4096
#: Room for the filter header on top of the bit array.
_FILTER_HEADER_SLACK: Final = 1024
#: No publisher uses a false-positive rate below this: it bounds the size a count can justify.
_FILTER_MIN_RATE: Final = 1e-9
#: Witnessed heads of one node kept until a sync with it settles them.
_WITNESS_PENDING_MAX: Final = 16
_WITNESS_LOCK = threading.Lock()


def _download(chunks: Any, what: str, *, limit: int, budget: int, budget_name: str, count: int) -> bytes:
    """Join a stream of chunks, refusing it as soon as it announces or sends more than ``limit`` (what
    the manifest entry of ``count`` indicators allows) or than ``budget``, or arrives out of order."""
    parts: list[bytes] = []
    received = 0
    total = None
    for chunk in chunks:
        if chunk.offset != received or (total is not None and chunk.total_size != total):
            raise errors.EncodingError(f"{what}: chunk at {chunk.offset}, expected {received}")
        total = chunk.total_size
        if total > limit:
            raise errors.EncodingError(
                f"{what}: {total} bytes is more than the {limit} that {count} indicators allow"
            )
        if total > budget:
            raise errors.EncodingError(f"{what}: {budget_name}")
        if received + len(chunk.data) > total:
            raise errors.EncodingError(f"{what}: more bytes than the {total} announced")
        parts.append(chunk.data)
        received += len(chunk.data)
    if total is None or received != total:
        raise errors.EncodingError(f"{what}: incomplete ({received} of {total} bytes)")
    return b"".join(parts)


def filter_size_limit(count: int) -> int:
    """The most bytes a filter of ``count`` indicators may take: the size at a 1e-9 false-positive rate
    plus 1 KiB of header, and never more than :data:`FILTER_MAX`."""
    bits, _k = bloom_parameters(filter_capacity(max(count, 1)), _FILTER_MIN_RATE)
    return min(bits // 8 + _FILTER_HEADER_SLACK, FILTER_MAX)


def _identify(data: bytes) -> FilterIdentity:
    bloom = BloomFilter.from_bytes(data)
    return FilterIdentity(bloom.node_id, bloom.epoch, bloom.kind, bloom.tier)


# --- sync ---------------------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """How one peer's sync ended. ``outcome`` is ``ok``, ``not_modified``, ``error`` (the peer could not
    be reached or did not answer in time) or ``refused`` (it served something invalid); ``bytes`` were
    downloaded in ``latency_s`` seconds (the whole sync)."""

    peer_id: str
    ok: bool
    version: int | None = None
    detail: str = ""
    outcome: str = "ok"
    bytes: int = 0
    latency_s: float = 0.0


class Syncer:
    """Pulls and verifies every peer's artefacts; keeps the last good copy on any failure."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock
        #: Deltas refused in the sync in progress, per peer (counted into its audit entry).
        self._refused_deltas: dict[str, int] = {}

    def sync_all(self) -> list[SyncResult]:
        peers = [p.id for p in self.node.config.peers]
        with futures.ThreadPoolExecutor(max_workers=max(1, min(16, len(peers)))) as pool:
            return list(pool.map(self.sync_peer, peers))

    def _candidate_key(self, peer_id: str, served: bytes) -> tuple[bytes, bool, bytes | None]:
        """The key to verify the peer's artefacts with, whether it is new (to pin once they verify), and
        the key the peer now serves when it differs from the pinned one (a rollover, accepted only when
        the peer's own manifests announce it, see :func:`client.protocol.manifest.key_after`)."""
        known = self.node.peer_signing_key(peer_id)
        if known is None:
            if len(served) != 32:
                raise errors.SignatureError(f"{peer_id} served no signing key")
            return served, True, None
        if served and served != known:
            entry = self.node.config.peer(peer_id)
            if entry is not None and entry.signing_key:
                raise errors.SignatureError(
                    f"{peer_id} now serves another signing key than the one in its [[peers]] entry; "
                    "if its operators rolled it, put the new key in the config"
                )
            if len(served) != 32:
                raise errors.SignatureError(f"{peer_id} served no signing key")
            return known, False, served
        return known, False, None

    def _pin(self, peer_id: str, key: bytes) -> None:
        self.node.store.set_meta(
            f"peer.{peer_id}.signing_key",
            key.hex(),
            audit=[event("peer.key_pinned", actor=peer_id, role="peer", now=self.clock())],
        )

    def sync_peer(self, peer_id: str) -> SyncResult:
        """Pull one peer. Its outcome and latency are kept as the peer's health (:mod:`node.health`,
        what ``petanda-node status`` shows) and logged: INFO on success, WARNING on a failure."""
        started = time.monotonic()
        previous = health.begin(self.node.store, peer_id, now=self.clock())
        try:
            result = self._pull(peer_id, self.clock())
        except Exception as error:  # a bug: recorded as this sync's failure, then raised
            detail = f"internal error: {type(error).__name__}: {printable(str(error))}"
            self._note(SyncResult(peer_id, False, None, detail, outcome="error"), started)
            raise
        if not result.ok and self.links.closed:  # cut short by our own shutdown: not the peer's failure
            health.abandon(self.node.store, peer_id, previous=previous)
            return result
        return self._note(result, started)

    def _note(self, result: SyncResult, started: float) -> SyncResult:
        result.latency_s = time.monotonic() - started
        self.node.metrics.synced(result.peer_id, result.outcome, result.latency_s)
        versions = self.links.versions().get(result.peer_id)
        kept = health.record(
            self.node.store,
            result.peer_id,
            result="ok" if result.ok else result.outcome,
            now=self.clock(),
            latency_s=result.latency_s,
            detail=result.detail,
            version=result.version,
            size=result.bytes,
            served=None if versions is None else versions.served,
            protocol=None if versions is None else versions.negotiated,
        )
        fields = {
            "peer": result.peer_id,
            "outcome": result.outcome,
            "version": result.version,
            "bytes": result.bytes,
            "latency_s": round(result.latency_s, 6),
        }
        if result.ok:
            log.info(
                "sync %s: %s, version %s, %d bytes, %.3f s",
                result.peer_id,
                result.outcome.replace("_", " "),
                result.version,
                result.bytes,
                result.latency_s,
                extra=fields,
            )
        else:
            log.warning(
                "sync %s: %s after %.3f s (%d in a row): %s",
                result.peer_id,
                "failed" if result.outcome == "error" else "refused",
                result.latency_s,
                kept.consecutive_failures,
                result.detail,
                extra={**fields, "consecutive_failures": kept.consecutive_failures, "detail": result.detail},
            )
        return result

    def _pull(self, peer_id: str, now: float) -> SyncResult:
        timeout = self.node.config.sync.timeout_s
        previous = self._cached_manifest(peer_id)
        held = previous.version if previous else None
        try:
            stub = self.links.get(peer_id).stub
            if self.node.crl.number:  # a CRL is held: no pull from a member whose certificate it revokes
                check_peer(self.node, peer_id, timeout=timeout)
            # Without a key to check it with, the cached copy is no cursor: ask for the whole manifest.
            pinned = self.node.peer_signing_key(peer_id) is not None
            response = stub.GetManifest(
                peer_pb2.GetManifestRequest(known_version=previous.version if previous and pinned else 0),
                timeout=timeout,
            )
            key, fresh, rolled = self._candidate_key(peer_id, response.signing_public_key)
            # The key the peer signs with now: the pinned one, as the manifests we verified move it.
            in_force = key if fresh else key_after(previous, key)
            if response.not_modified and not fresh:
                self._check_served(peer_id, rolled, in_force)
                self._exchange_tree_heads(peer_id, stub, in_force, timeout=timeout, now=now)
                # Revocation travels over peer links: the newest CA-signed CRL any member holds
                # reaches every member within one sync interval.
                fetch_crl(stub, self.node.crl, timeout=timeout, peer_id=peer_id)
                if in_force != key:  # the cached manifest announced it: nothing else to wait for
                    self._pin_rolled(peer_id, key, in_force, now=now)
            if response.not_modified:
                if fresh or previous is None:
                    raise errors.ManifestError(f"{peer_id} answered 'not modified' to a request for all")
                if now > previous.expires_at:
                    raise errors.ExpiredError(
                        f"{peer_id}: manifest {previous.version} expired and not renewed"
                    )
                return SyncResult(peer_id, True, previous.version, "not modified", outcome="not_modified")
            signed = SignedManifest.from_bytes(response.signed_manifest)
            chain = self._chain(peer_id, stub, response, previous if pinned else None, timeout=timeout)
            if chain:
                try:
                    verify_chain(
                        [*chain, signed], key, expected_node=peer_id, previous=previous, now=int(now)
                    )
                except errors.ChainError as broken:
                    assert previous is not None  # a chain is asked for only from a held manifest
                    chain = self._across_recovery(
                        peer_id, stub, chain, signed, previous, key, broken, timeout=timeout, now=now
                    )
            else:
                verify_manifest(
                    signed,
                    key,
                    expected_node=peer_id,
                    previous=previous,
                    now=int(now),
                    require_contiguous=previous is not None and pinned,
                )
            manifest = signed.manifest
            if not fresh:
                for link in chain:
                    in_force = key_after(link.manifest, in_force)  # the key that signed the latest
                self._check_served(peer_id, rolled, in_force)
                self._exchange_tree_heads(peer_id, stub, in_force, timeout=timeout, now=now)
                fetch_crl(stub, self.node.crl, timeout=timeout, peer_id=peer_id)
            check_plausible(manifest)
            if sum(e.records_size for e in manifest.entries) > MANIFEST_RECORDS_MAX:
                raise errors.ImplausibleError(
                    f"{peer_id} manifest {manifest.version} announces more than {MANIFEST_RECORDS_MAX} "
                    "bytes of records"
                )
            for link in chain:
                self.node.note_manifest(peer_id, link, via=peer_id, now=now)
            self.node.note_manifest(peer_id, signed, via=peer_id, now=now)
            filters, records, stats = self._download(
                peer_id, stub, manifest, previous if pinned else None, timeout=timeout, now=now
            )
            if fresh:  # pinned only now that a manifest and its artefacts verified under it
                self._pin(peer_id, key)
                self._exchange_tree_heads(peer_id, stub, key, timeout=timeout, now=now)
        except grpc.RpcError as error:
            failure = peer_error(peer_id, error)
            self._audit_sync(peer_id, "error", now, reason=str(failure))
            # A peer that refuses our protocol version answered: it is not unreachable.
            outcome = "refused" if isinstance(failure, errors.UnsupportedVersion) else "error"
            return SyncResult(peer_id, False, held, str(failure), outcome=outcome)
        except errors.PetandaError as error:
            reason = printable(str(error))
            self._audit_sync(peer_id, "refused", now, reason=reason, action="artefact.refused")
            return SyncResult(peer_id, False, held, reason, outcome="refused")
        if not self.node.store.save_peer_state(
            peer_id, signed.to_bytes(), filters, records, version=manifest.version
        ):  # another replica of this node saved a later manifest of the peer meanwhile: it stays
            log.info("peer %s: manifest %d not saved, a later one is stored", peer_id, manifest.version)
        if not fresh and in_force != key:  # pinned with the manifests that put it in force, never before
            self._pin_rolled(peer_id, key, in_force, now=now)
        size = sum(map(len, filters.values())) + sum(map(len, records.values()))
        self._audit_sync(
            peer_id,
            "ok",
            now,
            version=manifest.version,
            count=manifest.total_count,
            manifest_hash=manifest_hash(manifest).hex(),
            size=size,
            bytes=stats["bytes"],
            reused=stats["reused"],
            deltas=stats["deltas"],
            deltas_refused=self._refused_deltas.pop(peer_id, 0),
        )
        return SyncResult(peer_id, True, manifest.version, bytes=stats["bytes"])

    def _across_recovery(
        self,
        peer_id: str,
        stub: Any,
        chain: list[SignedManifest],
        signed: SignedManifest,
        previous: Manifest,
        key: bytes,
        failure: errors.ChainError,
        *,
        timeout: float,
        now: float,
    ) -> list[SignedManifest]:
        """The part of a chain that a gap cannot break: a peer restored from a backup no longer holds
        the manifests between the one we hold and the latest its peers held (its recovery statement's
        old manifest, which it kept and serves in the chain). With a statement of it that covers our
        manifest (taken now from a tree-head exchange if we have none yet), the chain is verified from
        that manifest, whose hash the statement names.

        Raises:
            ChainError: ``failure`` (the chain's own) when no statement covers the gap, or the chain does
                not go through the statement's manifest.
        """
        statement = self._statement_covering(peer_id, previous)
        if statement is None:
            self._exchange_tree_heads(peer_id, stub, key, timeout=timeout, now=now)
            statement = self._statement_covering(peer_id, previous)
        if statement is None:
            raise failure
        for i, link in enumerate(chain):
            if (link.manifest.version, manifest_hash(link.manifest)) == (
                statement.old_manifest_version,
                statement.old_manifest_hash,
            ):
                verify_chain([*chain[i:], signed], key, expected_node=peer_id, previous=None, now=int(now))
                log.info("sync %s: manifest chain taken across its recovery %d", peer_id, statement.sequence)
                return chain[i:]
        raise failure

    def _statement_covering(self, peer_id: str, previous: Manifest) -> RecoveryStatement | None:
        """The peer's latest accepted recovery statement, if it covers the manifest we hold of it."""
        records = recovery.kept(self.node, peer_id)
        if not records:
            return None
        statement = RecoveryStatement.from_bytes(bytes.fromhex(records[-1]["statement"]))
        return statement if statement.old_manifest_version >= previous.version else None

    @staticmethod
    def _check_served(peer_id: str, served: bytes | None, in_force: bytes) -> None:
        """A peer that serves a key other than the pinned one must serve the key its manifests put in
        force (a rollover they announced).

        Raises:
            SignatureError: it serves a key nothing we verified announces.
        """
        if served is not None and served != in_force:
            raise errors.SignatureError(f"{peer_id} now serves another signing key than the one pinned")

    def _pin_rolled(self, peer_id: str, pinned: bytes, rolled: bytes, *, now: float) -> None:
        """Pin the key a peer's verified manifests put in force, in place of ``pinned``; the old key is
        kept in the peer's key history (gossiped manifests of older versions verify under it)."""
        history = json.loads(self.node.store.get_meta(f"peer.{peer_id}.key_history") or "[]")
        if pinned.hex() not in history:
            history.append(pinned.hex())
        self.node.store.set_meta(f"peer.{peer_id}.key_history", json.dumps(history[-16:]))
        self.node.store.set_meta(
            f"peer.{peer_id}.signing_key",
            rolled.hex(),
            audit=[
                event(
                    "peer.key_rolled", actor=peer_id, role="peer", now=now, old=pinned.hex(), new=rolled.hex()
                )
            ],
        )
        log.info("peer %s rolled its signing key to %s…", peer_id, rolled.hex()[:16])

    def _cached_manifest(self, peer_id: str) -> Manifest | None:
        """The peer's manifest we hold, or None; one of an older format (before an upgrade of this
        node) counts as none, so the next sync downloads everything again."""
        cached = self.node.store.peer_manifest(peer_id)
        if cached is None:
            return None
        try:
            return SignedManifest.from_bytes(cached).manifest
        except errors.EncodingError as error:
            log.warning("the cached manifest of %s is not of format 2 (%s): downloading anew", peer_id, error)
            return None

    def _chain(
        self, peer_id: str, stub: Any, response: Any, previous: Manifest | None, *, timeout: float
    ) -> list[SignedManifest]:
        """The manifests between ``previous`` and the one just served, as the peer sent them with it
        (asking again while it sends fewer than the gap): each is chain-checked by the caller.

        Raises:
            ManifestError: the peer sent more than the gap, or manifests out of order.
        """
        if previous is None:
            return []
        latest = SignedManifest.from_bytes(response.signed_manifest).manifest.version
        if len(response.chain) > _CHAIN_PER_ANSWER:
            raise errors.ManifestError(f"{peer_id} sent {len(response.chain)} manifests in one answer")
        chain = [SignedManifest.from_bytes(data) for data in response.chain]
        while chain and chain[-1].manifest.version < latest - 1 and len(chain) < _CHAIN_MAX:
            more = stub.GetManifest(
                peer_pb2.GetManifestRequest(known_version=chain[-1].manifest.version), timeout=timeout
            )
            if more.not_modified or not more.chain:
                break
            chain += [SignedManifest.from_bytes(data) for data in more.chain]
        if any(
            link.manifest.version <= previous.version or link.manifest.version >= latest for link in chain
        ):
            raise errors.ManifestError(f"{peer_id} sent manifests outside the gap it skipped")
        return chain

    def _download(
        self,
        peer_id: str,
        stub: Any,
        manifest: Manifest,
        previous: Manifest | None,
        *,
        timeout: float,
        now: float,
    ) -> tuple[dict[tuple[str, int], bytes], dict[tuple[str, int], bytes], dict[str, int]]:
        """Every filter and record set the manifest lists, each verified against it: kept from the copy we
        hold when the manifest signs the same bytes, else built from a delta to the version we hold, else
        downloaded whole (a delta that fails is audited and the whole artefacts fetched instead).
        Returns the artefacts and what it took (bytes received, entries reused, deltas applied)."""
        filters: dict[tuple[str, int], bytes] = {}
        records: dict[tuple[str, int], bytes] = {}
        stats = {"bytes": 0, "reused": 0, "deltas": 0}
        self._refused_deltas.pop(peer_id, None)
        budget = MANIFEST_FILTERS_MAX
        record_budget = MANIFEST_RECORDS_MAX
        for entry in manifest.entries:
            kind, tier = key = entry.kind, entry.tier
            held = self._held(peer_id, previous, kind, tier)
            old = previous.entry(kind, tier) if previous is not None else None
            got = None
            if held is not None and old is not None and previous is not None:
                same = (old.filter_sha256, old.buckets_root, old.records_size, old.count) == (
                    entry.filter_sha256,
                    entry.buckets_root,
                    entry.records_size,
                    entry.count,
                )
                if same and previous.epoch == manifest.epoch:
                    got = held
                    stats["reused"] += 1
                else:
                    got = self._delta(
                        peer_id,
                        stub,
                        manifest,
                        previous,
                        held,
                        kind,
                        tier,
                        timeout=timeout,
                        now=now,
                        budget=budget + record_budget,
                    )
                    if got is not None:
                        stats["deltas"] += 1
                        stats["bytes"] += got[2]
            if got is None:
                filter_bytes = _download(
                    stub.GetFilter(
                        peer_pb2.GetFilterRequest(
                            version=manifest.version, kind=kind_to_proto(kind), tier=tier_to_proto(tier)
                        ),
                        timeout=timeout,
                    ),
                    f"filter {kind}/{tier}",
                    limit=filter_size_limit(entry.count),
                    budget=budget,
                    budget_name=f"the manifest's filters exceed {MANIFEST_FILTERS_MAX} bytes",
                    count=entry.count,
                )
                self._check_filter(manifest, kind, tier, filter_bytes)
                record_bytes = _download(
                    stub.GetRecords(
                        peer_pb2.GetRecordsRequest(
                            version=manifest.version, kind=kind_to_proto(kind), tier=tier_to_proto(tier)
                        ),
                        timeout=timeout,
                    ),
                    f"records {kind}/{tier}",
                    limit=entry.records_size,
                    budget=record_budget,
                    budget_name=f"the manifest's records exceed {MANIFEST_RECORDS_MAX} bytes",
                    count=entry.count,
                )
                verify_records(manifest, kind, tier, record_bytes)
                stats["bytes"] += len(filter_bytes) + len(record_bytes)
                got = (filter_bytes, record_bytes, 0)
            filters[key], records[key] = got[0], got[1]
            budget -= len(got[0])
            record_budget -= len(got[1])
            if budget < 0 or record_budget < 0:
                raise errors.EncodingError("the manifest's artefacts exceed the sync's budget")
        return filters, records, stats

    def _held(
        self, peer_id: str, previous: Manifest | None, kind: str, tier: int
    ) -> tuple[bytes, bytes, int] | None:
        """The filter and record set of (kind, tier) we hold from ``previous``, if any."""
        if previous is None or previous.entry(kind, tier) is None:
            return None
        data = self.node.store.peer_filter(peer_id, kind, tier)
        blob = self.node.store.peer_records(peer_id, kind, tier)
        return None if data is None or blob is None else (data, blob, 0)

    def _check_filter(self, manifest: Manifest, kind: str, tier: int, data: bytes) -> None:
        verify_filter(manifest, kind, tier, data, identify=_identify)
        bloom = BloomFilter.from_bytes(data)
        check_filter_header(
            manifest, kind, tier, n=bloom.n, declared_fpr=bloom.declared_fpr, excess_fill=bloom.excess_fill()
        )

    def _delta(
        self,
        peer_id: str,
        stub: Any,
        manifest: Manifest,
        previous: Manifest,
        held: tuple[bytes, bytes, int],
        kind: str,
        tier: int,
        *,
        timeout: float,
        now: float,
        budget: int,
    ) -> tuple[bytes, bytes, int] | None:
        """The new artefacts from a delta applied to ``held`` and verified like a full download; None when
        the peer keeps no delta (NOT_FOUND) or the delta is refused (noted). A delta may be no larger than
        the artefacts it replaces could be, nor than what is left of the manifest's ``budget``."""
        old = previous.entry(kind, tier)
        entry = manifest.entry(kind, tier)
        assert old is not None and entry is not None
        limit = min(filter_size_limit(entry.count) + entry.records_size + 4096, budget)
        try:
            data = _download(
                stub.GetDelta(
                    peer_pb2.GetDeltaRequest(
                        from_version=previous.version,
                        to_version=manifest.version,
                        kind=kind_to_proto(kind),
                        tier=tier_to_proto(tier),
                    ),
                    timeout=timeout,
                ),
                f"delta {kind}/{tier}",
                limit=limit,
                budget=limit,
                budget_name="too large",
                count=entry.count,
            )
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                return None
            raise
        except errors.EncodingError as error:
            self._refuse_delta(peer_id, previous, manifest, kind, tier, error, now=now)
            return None
        try:
            delta = decode_delta(data)
            if (delta.from_version, delta.to_version, delta.kind_code, delta.tier) != (
                previous.version,
                manifest.version,
                kind_code(kind),
                tier,
            ):
                raise errors.EncodingError("delta: for another version, kind or tier than asked")
            filter_bytes, record_bytes = apply_delta(
                delta, held[0], RecordSet.from_bytes(held[1], old.prefix_bits)
            )
            self._check_filter(manifest, kind, tier, filter_bytes)
            verify_records(manifest, kind, tier, record_bytes)
        except errors.PetandaError as error:
            self._refuse_delta(peer_id, previous, manifest, kind, tier, error, now=now)
            return None
        except (IndexError, ValueError, OverflowError) as error:  # numbers a hostile delta made absurd
            failure = errors.EncodingError(f"delta: {type(error).__name__}: {error}")
            self._refuse_delta(peer_id, previous, manifest, kind, tier, failure, now=now)
            return None
        return filter_bytes, record_bytes, len(data)

    def _refuse_delta(
        self,
        peer_id: str,
        previous: Manifest,
        manifest: Manifest,
        kind: str,
        tier: int,
        error: errors.PetandaError,
        *,
        now: float,
    ) -> None:
        """Note a delta that could not be applied or verified (logged; the sync's own audit entry counts
        it as ``deltas_refused``); the caller downloads the artefacts whole instead."""
        reason = printable(f"delta {kind}/{tier} {previous.version}->{manifest.version}: {error}")
        log.warning("sync %s: %s; downloading whole", peer_id, reason)
        self._refused_deltas[peer_id] = self._refused_deltas.get(peer_id, 0) + 1

    def _audit_sync(
        self, peer_id: str, result: str, now: float, *, action: str = "sync.pull", **fields: Any
    ) -> None:
        self.node.store.append_audit(
            [event(action, actor="node", role="node", now=now, result=result, peer=peer_id, **fields)]
        )

    def _exchange_tree_heads(
        self, peer_id: str, stub: Any, key: bytes, *, timeout: float, now: float
    ) -> None:
        """Prove the peer's latest head consistent with the last we kept, settle what others witnessed of
        it, and take in what it witnessed of others.

        Raises:
            ChainError: the peer's log forked (recorded and alerted first).
        """
        mine = self.node.audit.latest()
        public_key = Ed25519PublicKey.from_public_bytes(key)
        # Recovery statements travel only where both speak version 3: towards a version-2 peer this
        # node sends none and reads none, as a version-2 node would.
        v3 = self.links.speaks(peer_id, RECOVERY_VERSION)
        last, response, theirs = self._ask_head(peer_id, stub, mine, public_key, timeout=timeout, v3=v3)
        # Recovery statements before the heads: the peer's own (a restored peer's shorter log is then
        # no fork) and those it accepted of others (before their witnessed heads are compared).
        items = list(response.recoveries) if v3 else []
        accepted = recovery.take_statements(self.node, items, via=peer_id, now=now)
        for statement in accepted:
            self._drop_pending_before(statement)
        if any(s.node_id == peer_id for s in accepted):  # our kept heads of it were replaced: prove anew
            last, response, theirs = self._ask_head(peer_id, stub, mine, public_key, timeout=timeout, v3=v3)
        try:
            if last is not None:
                if theirs.tree_size < last.size:
                    raise LogFork(f"log shrank from {last.size} to {theirs.tree_size}")
                verify_consistency(
                    last.size, theirs.tree_size, last.root, theirs.root_hash, list(response.consistency_proof)
                )
        except (LogFork, errors.ConsistencyProofError) as fork:
            self.node.record_fork(peer_id, str(fork), now=now)
            raise errors.ChainError(f"{peer_id} audit log fork: {fork}") from None
        self.node.accept_peer_tree_head(peer_id, theirs, now=now, key=key)
        self._settle_witnessed(peer_id, stub, public_key, mine, theirs, timeout=timeout, now=now)
        self._take_witnessed(peer_id, list(response.witnessed), now=now)
        self._take_gossiped_manifests(peer_id, list(response.witnessed_manifests), now=now)

    def _ask_head(
        self, peer_id: str, stub: Any, mine: TreeHead, key: Ed25519PublicKey, *, timeout: float, v3: bool
    ) -> tuple[Any, Any, TreeHead]:
        """One ``ExchangeTreeHead`` from the last head we kept of the peer (sending our own recovery
        statements when ``v3``, both speak version 3): that head, the answer and the peer's verified
        head."""
        known = self.node.store.peer_tree_heads(peer_id)
        last = max(known, key=lambda h: (h.size, h.timestamp)) if known else None
        response = stub.ExchangeTreeHead(
            peer_pb2.ExchangeTreeHeadRequest(
                head=tree_head_to_proto(mine),
                known_size=last.size if last else 0,
                recoveries=recovery.own_statements(self.node) if v3 else [],
            ),
            timeout=timeout,
        )
        theirs = tree_head_from_proto(response.head)
        if theirs.node_id != peer_id:
            raise errors.WrongNodeError(f"{peer_id} sent the tree head of {printable(theirs.node_id)}")
        verify_tree_head(theirs, key)
        return last, response, theirs

    def _drop_pending_before(self, statement: RecoveryStatement) -> None:
        """Forget the witnessed heads of a recovered node that belong to the history its statement
        erased (kept as evidence with the statement's superseded heads, not settled as forks)."""
        with _WITNESS_LOCK:
            pending = self._pending(statement.node_id)
            left = [(h, via) for h, via in pending if not is_before(h, statement)]
            if len(left) != len(pending):
                self._save_pending(statement.node_id, left)

    def _take_gossiped_manifests(self, via: str, items: list[bytes], *, now: float) -> None:
        """Compare the manifests ``via`` verified of other members with those we hold of them.

        Each must be signed by the member it names under the key we pinned for it; a second manifest of
        one version signed by that member is its fork (:meth:`Node.note_manifest`). An item that does not
        parse or verify is ignored and audited against ``via``, never against the member it names: a
        gossiper cannot frame another member.
        """
        configured = {p.id for p in self.node.config.peers}
        seen: set[str] = set()
        for data in items[: len(configured)]:
            try:
                signed = SignedManifest.from_bytes(data)
                node_id = signed.manifest.node_id
                if node_id in seen or node_id in (self.node.id, via) or node_id not in configured:
                    continue
                seen.add(node_id)
                pinned = self.node.peer_signing_key(node_id)
                if pinned is None:
                    continue
                if not self._verifies_under_a_known_key(signed, node_id, pinned):
                    held = self._cached_manifest(node_id)
                    if held is None or signed.manifest.version > held.version:
                        # Perhaps signed with a key the member rolled to since our last sync with it:
                        # neither its fork nor the gossiper's fault yet. Our own sync settles it.
                        log.info(
                            "gossiped manifest %d of %s not verifiable yet", signed.manifest.version, node_id
                        )
                        continue
                    verify_signed_manifest(signed, pinned, expected_node=node_id)  # raises: refused below
            except errors.PetandaError as error:
                reason = printable(str(error))
                refuse_gossip(
                    self.node.store, via=via, what="manifest", label="manifest gossip", reason=reason, now=now
                )
                continue
            self.node.note_manifest(node_id, signed, via=via, now=now)

    def _verifies_under_a_known_key(self, signed: SignedManifest, node_id: str, pinned: bytes) -> bool:
        """Whether ``node_id`` signed ``signed`` under its pinned key or a key it rolled from."""
        history = json.loads(self.node.store.get_meta(f"peer.{node_id}.key_history") or "[]")
        for key in [pinned, *(bytes.fromhex(k) for k in reversed(history))]:
            try:
                verify_signed_manifest(signed, key, expected_node=node_id)
                return True
            except errors.SignatureError:
                continue
        return False

    # witness gossip ----------------------------------------------------------------------------------

    def _take_witnessed(self, via: str, messages: list[Any], *, now: float) -> None:
        """Check the heads ``via`` proved of other nodes against ours; keep the undecided ones pending."""
        configured = {p.id for p in self.node.config.peers}
        seen: set[str] = set()
        for message in messages[: len(configured)]:
            head = tree_head_from_proto(message)
            node_id = head.node_id
            if node_id in seen or node_id in (self.node.id, via) or node_id not in configured:
                continue
            seen.add(node_id)
            pinned = self.node.peer_signing_key(node_id)
            if pinned is None:
                continue
            try:
                verify_tree_head(head, Ed25519PublicKey.from_public_bytes(pinned))
            except errors.SignatureError as error:
                log.warning("witnessed head of %s from %s ignored: %s", node_id, via, error)
                continue
            statements = recovery.kept(self.node, node_id)
            if statements and is_before(
                head, RecoveryStatement.from_bytes(bytes.fromhex(statements[-1]["statement"]))
            ):
                continue  # a head of the history its recovery statement erased: evidence, not a fork
            same_size = [h for h in self.node.store.peer_tree_heads(node_id) if h.size == head.tree_size]
            if any(h.root == head.root_hash for h in same_size):
                continue
            if same_size:
                self.node.record_fork(
                    node_id,
                    f"{via} witnessed a head of size {head.tree_size} with another root than the one "
                    f"{node_id} showed us",
                    now=now,
                )
                continue
            with _WITNESS_LOCK:
                pending = self._pending(node_id)
                if all((w.tree_size, w.root_hash) != (head.tree_size, head.root_hash) for w, _ in pending):
                    pending.append((head, via))
                    self._save_pending(node_id, pending[-_WITNESS_PENDING_MAX:])

    def _settle_witnessed(
        self,
        peer_id: str,
        stub: Any,
        key: Ed25519PublicKey,
        mine: TreeHead,
        theirs: TreeHead,
        *,
        timeout: float,
        now: float,
    ) -> None:
        """Prove every head others witnessed of ``peer_id`` consistent with ``theirs``, the head just proven.

        A witnessed head larger than ``theirs``, of its size with another root, or that the peer cannot
        prove to be a prefix of ``theirs`` is a fork. One the peer proves only to a newer head (it signed
        one meanwhile) stays pending for the next sync.

        Raises:
            ChainError: a witnessed head shows a fork (recorded and alerted first).
        """
        with _WITNESS_LOCK:
            pending = self._pending(peer_id)
        if not pending:
            return
        settled: list[TreeHead] = []
        forks: list[str] = []
        for head, via in pending:
            fork = ""
            if head.tree_size > theirs.tree_size:
                fork = f"its log shrank from size {head.tree_size}, witnessed by {via}, to {theirs.tree_size}"
            elif head.tree_size == theirs.tree_size:
                if head.root_hash != theirs.root_hash:
                    fork = f"{via} witnessed another root for size {head.tree_size}"
            else:
                response = stub.ExchangeTreeHead(
                    peer_pb2.ExchangeTreeHeadRequest(
                        head=tree_head_to_proto(mine), known_size=head.tree_size
                    ),
                    timeout=timeout,
                )
                latest = tree_head_from_proto(response.head)
                if latest.node_id != peer_id:
                    raise errors.WrongNodeError(
                        f"{peer_id} sent the tree head of {printable(latest.node_id)}"
                    )
                verify_tree_head(latest, key)
                if (latest.tree_size, latest.root_hash) != (theirs.tree_size, theirs.root_hash):
                    if latest.tree_size > theirs.tree_size:
                        continue  # a newer head: settled at the next sync
                    fork = f"two heads within one sync: size {theirs.tree_size}, then {latest.tree_size}"
                else:
                    try:
                        verify_consistency(
                            head.tree_size,
                            latest.tree_size,
                            head.root_hash,
                            latest.root_hash,
                            list(response.consistency_proof),
                        )
                    except errors.ConsistencyProofError as error:
                        fork = (
                            f"the head of size {head.tree_size} witnessed by {via} is not in its log: {error}"
                        )
            settled.append(head)
            if fork:
                forks.append(fork)
                self.node.record_fork(peer_id, fork, now=now)
        with _WITNESS_LOCK:
            done = {(h.tree_size, h.root_hash) for h in settled}
            left = [(h, v) for h, v in self._pending(peer_id) if (h.tree_size, h.root_hash) not in done]
            self._save_pending(peer_id, left)
        if forks:
            raise errors.ChainError(f"{peer_id} audit log fork: {forks[0]}")

    def _pending(self, node_id: str) -> list[tuple[TreeHead, str]]:
        raw = self.node.store.get_meta(f"peer.{node_id}.witnessed")
        return [
            (
                TreeHead(node_id, w["size"], bytes.fromhex(w["root"]), w["ts"], bytes.fromhex(w["sig"])),
                w["via"],
            )
            for w in (json.loads(raw) if raw else [])
        ]

    def _save_pending(self, node_id: str, pending: list[tuple[TreeHead, str]]) -> None:
        value = [
            {
                "size": h.tree_size,
                "root": h.root_hash.hex(),
                "ts": h.timestamp,
                "sig": h.signature.hex(),
                "via": via,
            }
            for h, via in pending
        ]
        self.node.store.set_meta(f"peer.{node_id}.witnessed", json.dumps(value, separators=(",", ":")))


def start_sync_loop(syncer: Syncer, stop: threading.Event, *, interval_s: float) -> threading.Thread:
    """Sync every peer now and then ``interval_s`` after each of its syncs ends, until ``stop`` is set.

    Each peer has a thread of its own, so a peer that hangs until the deadline delays no other peer's
    sync (nor makes it look unreachable). Returns a daemon thread that ends once every peer's has.
    """

    def loop(peer_id: str) -> None:
        while not stop.is_set():
            try:
                syncer.sync_peer(peer_id)  # logs and records its own outcome
            except Exception:  # a sync bug must not kill the server; it is logged and retried
                log.exception("sync %s", peer_id)
            stop.wait(interval_s)

    def run() -> None:
        threads = [
            threading.Thread(target=loop, args=(peer.id,), name=f"sync-{peer.id}", daemon=True)
            for peer in syncer.node.config.peers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    thread = threading.Thread(target=run, name="sync", daemon=True)
    thread.start()
    return thread
