"""Checking indicators against every peer: the I/O around :class:`client.protocol.check.Check`.

The protocol decides (blinding once per value, one evaluation per peer and kind, proof verification,
filter tests, opening records locally); this module only moves bytes: it builds each peer's
:class:`~client.protocol.check.PeerView` from the store (filters and record sets parsed once per
manifest version), sends the machine's evaluations to the peers concurrently within one deadline, and
feeds the replies and failures back. What a peer receives during a check is one ``EvaluateOprf`` per
kind (and per ``max_batch`` values), whatever the answers: no raw indicator, no digest, no bucket
number, no follow-up call on a hit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from client._proto.petanda.v1 import peer_pb2
from client.protocol import errors
from client.protocol.bloom import BloomFilter
from client.protocol.check import Check, Evaluation, PeerView
from client.protocol.manifest import SignedManifest
from client.protocol.metadata import RecordSet
from client.protocol.model import PeerOutcome, PeerStatus
from client.transport.convert import kind_to_proto
from node.node import Node
from node.peers import Links, peer_error, printable

log = logging.getLogger(__name__)

__all__ = ["CheckReport", "Checker"]


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What one check found: per item, one outcome per peer in config order; and per peer and kind the
    values tested against its filter and the hits that opened no record (for the plausibility alert)."""

    outcomes: list[tuple[PeerOutcome, ...]]
    tested: dict[tuple[str, str], int]
    unopened: dict[tuple[str, str], int]


class Checker:
    """Runs checks of canonical indicators against every configured peer within one deadline."""

    def __init__(self, node: Node, links: Links, *, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.links = links
        self.clock = clock
        self._lock = threading.Lock()
        self._views: dict[str, tuple[bytes, PeerView]] = {}
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max(4, 2 * len(node.config.peers)), thread_name_prefix="check"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- views ------------------------------------------------------------------------------------

    def view(self, peer_id: str) -> PeerView:
        """The peer's view from its last verified sync, parsed once per manifest and kept in memory.

        The manifest and each artefact are read in separate transactions: an artefact whose hash is not
        the one the manifest signs was replaced by a sync in between, and the view says so (STALE).
        """
        cached = self.node.store.peer_manifest(peer_id)
        if cached is None:
            return PeerView(peer_id, None)
        with self._lock:
            known = self._views.get(peer_id)
        if known is not None and known[0] == cached:
            return known[1]
        manifest = SignedManifest.from_bytes(cached).manifest
        filters: dict[tuple[str, int], BloomFilter] = {}
        records: dict[tuple[str, int], RecordSet] = {}
        problem = ""
        for entry in manifest.entries:
            key = (entry.kind, entry.tier)
            data = self.node.store.peer_filter(peer_id, *key)
            blob = self.node.store.peer_records(peer_id, *key)
            if data is None or blob is None:
                problem = "filter or records not cached"
                break
            if hashlib.sha256(data).digest() != entry.filter_sha256 or len(blob) != entry.records_size:
                problem = "artefacts changed during the check"
                break
            filters[key] = BloomFilter.from_bytes(data)
            records[key] = RecordSet.from_bytes(blob, entry.prefix_bits)
        view = PeerView(peer_id, manifest, filters, records, problem)
        if not problem:
            with self._lock:
                self._views[peer_id] = (cached, view)
        return view

    # --- the check --------------------------------------------------------------------------------

    def check(self, items: Sequence[tuple[str, str]], *, deadline_s: float) -> CheckReport:
        """Check ``(kind, canonical)`` items against every configured peer within ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        peers = [p.id for p in self.node.config.peers]
        machine = Check(
            items,
            [self.view(p) for p in peers],
            now=int(self.clock()),
            hmac_key=self.node.hmac_key,
            max_batch=self.node.config.limits.max_batch,
        )
        jobs = {self._pool.submit(self._evaluate, e, deadline): e for e in machine.pending}
        finished, _late = futures.wait(jobs, timeout=max(0.0, deadline - time.monotonic()))
        for job in finished:
            evaluation = jobs[job]
            try:
                evaluated, proof = job.result()
            except grpc.RpcError as error:
                failure = peer_error(evaluation.peer_id, error)
                status = (
                    PeerStatus.RATE_LIMITED
                    if isinstance(failure, errors.RateLimited)
                    else (PeerStatus.UNAVAILABLE)
                )
                machine.fail(evaluation, status, str(failure))
                continue
            except errors.PetandaError as error:
                machine.fail(evaluation, PeerStatus.UNAVAILABLE, printable(str(error)))
                continue
            try:
                machine.receive(evaluation, evaluated, proof)
            except errors.PetandaError as error:
                log.warning("check against %s failed: %s", evaluation.peer_id, printable(str(error)))
        for job in jobs:
            job.cancel()
        machine.fail_all(PeerStatus.UNAVAILABLE, "deadline exceeded")
        return CheckReport(machine.outcomes(), dict(machine.tested), dict(machine.unopened))

    def _evaluate(self, evaluation: Evaluation, deadline: float) -> tuple[list[bytes], bytes]:
        stub: Any = self.links.get(evaluation.peer_id).stub
        response = stub.EvaluateOprf(
            peer_pb2.EvaluateOprfRequest(
                epoch=evaluation.epoch,
                kind=kind_to_proto(evaluation.kind),
                blinded_elements=list(evaluation.blinded),
                verifiable=True,
            ),
            timeout=max(0.001, deadline - time.monotonic()),
        )
        return list(response.evaluated_elements), response.proof
