"""The node: its configuration, store, keys and audit log, and the operations everything else calls.

The gRPC servicers (:mod:`node.server`) and the operator's CLI (:mod:`node.cli`) are thin layers over
:class:`Node`. Every method that changes state records an audit event in the same store transaction.
Time is always an argument (``now``), so tests control it.

One module of this size: the façade every servicer and command calls; the parts live in publish, quotas,
readlog, usage, plausibility, crl and the store, and this module wires them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.protocol import oprf
from client.protocol.auditlog import LogFork, TreeHead, check_heads, verify_tree_head
from client.protocol.canonical import normalize
from client.protocol.delta import make_delta
from client.protocol.digest import HmacDigester, derive_epoch_key, oprf_input
from client.protocol.errors import (
    ConfigError,
    EncodingError,
    InputError,
    NotFound,
    PetandaError,
    RateLimited,
)
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import EXT_NEXT_SIGNING_KEY, SignedManifest, manifest_hash
from client.protocol.metadata import RecordSet, bucket_id, decode_bucket, encode_bucket
from node import health, hmactier, keys, keystore
from node.audit import AuditLog, TileTree, event
from node.config import NodeConfig
from node.crl import CrlHolder
from node.ingest import ParsedIndicator, Rejection, file_ranges, parse_file
from node.ingest.pool import HMAC_LENGTH, RANGE_BYTES, Chunk, DigestKeys, IngestPool, row_fields
from node.ingest.retractions import Retraction, parse_retractions
from node.issuers import Issuers
from node.metrics import Metrics
from node.plausibility import HitMonitor
from node.publish import Publication, publish
from node.quotas import OprfQuotas, QuotaTaken
from node.readlog import ReadLog
from node.store import open_store
from node.store.base import AuditEvent, IndicatorRow, Store
from node.usage import UsageWatch

__all__ = ["RECOVERY_META", "IngestReport", "Node", "RetractReport", "oprf_key_info"]

log = logging.getLogger(__name__)

_EPOCH_META = "oprf.epoch"
_CONFIG_META = "config.sha256"
#: Meta key of the recovery statements kept of a node (node.recovery), its own included.
RECOVERY_META: Final = "recovery.{}"
_RETIRED_META = "oprf.epoch.{}.retired_at"
_STARTED_META = "oprf.epoch.{}.started_at"
_EXPIRED_META = "publish.expired_count"
#: The node directory's folder of what a publication keeps for the next (``node.pubcache``, ADR 0021).
PUBLISH_CACHE = "publish-cache"
_PURGE_DAY_META = "purge.day"
_INGEST_BATCH = 5000
_SECONDS_PER_DAY = 86_400
#: Record sets assembled for GetRecords, and deltas computed for GetDelta, kept in memory: at most this
#: many of each, least recently used first out ...
_RECORD_SETS = 32
#: ... and at most this many bytes of each together (the latest one is always kept).
_RECORD_SETS_BYTES = 256 * 2**20


def _remember(cache: OrderedDict[Any, bytes], key: Any, data: bytes) -> None:
    """Keep ``data`` in an LRU ``cache`` bounded by :data:`_RECORD_SETS` entries and
    :data:`_RECORD_SETS_BYTES` bytes (the caller holds the lock)."""
    cache[key] = data
    cache.move_to_end(key)
    while len(cache) > 1 and (
        len(cache) > _RECORD_SETS or sum(map(len, cache.values())) > _RECORD_SETS_BYTES
    ):
        cache.popitem(last=False)


#: Most intermediate manifests sent with one GetManifest answer (the caller asks again for more).
MANIFEST_CHAIN_MAX = 256


def oprf_key_info(node_id: str, epoch: int) -> bytes:
    """The public ``info`` string of the node's OPRF key for an epoch (RFC 9497 DeriveKeyPair)."""
    return f"petanda/v1/oprf-key/{node_id}/{epoch}".encode("ascii")


def _kind_counts(batch: Iterable[ParsedIndicator | IndicatorRow]) -> dict[str, int]:
    return dict(Counter(p.kind for p in batch))  # in order of first appearance, as the audit shows them


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


@dataclass
class RetractReport:
    """What a retraction file did: indicators retracted, listed but not held (or already retracted), and
    lines rejected (with where and why)."""

    retracted: int = 0
    not_held: int = 0
    rejections: list[Rejection] = field(default_factory=list)


@dataclass
class IngestReport:
    """What an ingest did: rows stored (new), updated (merged) and rejected (with where and why)."""

    stored: int = 0
    updated: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.rejections)


class Node:
    """One national node. Thread-safe: the gRPC server calls it from many threads."""

    def __init__(self, config: NodeConfig, store: Store, *, clock: Any = time.time) -> None:
        self.config = config
        self.store = store
        self.id = config.node.id
        self.dir = Path(config.node.dir)
        self.clock = clock
        keys.check_node_dir(self.dir)  # 0700: refused when group or others may enter it
        self.signing_key = keys.load_signing_key(self.dir)
        #: The OPRF keys and the federation secret, in the store, wrapped under this replica's KEK
        #: (node.keystore). A KEK other than the store's is refused here, before anything is written;
        #: then the seed files of the layout before (``oprf/epoch-NNNN.key``), if any, are wrapped into
        #: the store (``keys_imported``), and the federation secret file if the store holds no secret.
        kek = keystore.open_file_kek(config.keys.kek_file, store)
        self.keystore = keystore.KeyStore(store, kek, self.id)
        self.keystore.check_kek()
        self.keys_imported = self.keystore.import_files(
            self.dir, secret_file=config.hmac.federation_secret_file, now=clock()
        )
        self.audit = AuditLog(store, self.id, self.signing_key, clock=clock)
        #: The newest CA-signed CRL this node holds (``tls.crl``, and what peers pass on): node.crl.
        self.crl = CrlHolder.for_node(self)
        #: Who may have issued its callers' certificates (the people-CA of its state): node.issuers.
        self.issuers = Issuers.for_node(self)
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._oprf_keys: dict[int, oprf.KeyPair] = {}
        self._record_sets: OrderedDict[tuple[int, str, int], bytes] = OrderedDict()
        #: Deltas computed, by (from, to, kind, tier): the same for every peer that asks.
        self._deltas: OrderedDict[tuple[int, int, str, int], bytes] = OrderedDict()
        #: The federation secret's generation in the store and the secret: unwrapped again when a newer
        #: generation appears (``petanda-node hmac import`` on any replica while this one serves).
        self._federation_secret: tuple[int, bytes] | None = None
        #: Unopened filter hits per peer and kind, tested on the maintenance schedule.
        self.hits = HitMonitor(self)
        #: The OPRF quotas (per peer and kind, holder-wide), the evaluation volume and its alerts, and
        #: the aggregated audit of repeated read-only peer calls (``node.reads.note``).
        self.quotas = OprfQuotas(self)
        self.usage = UsageWatch(self)
        self.reads = ReadLog(store.append_audit, clock=clock)
        #: The Prometheus series (:mod:`node.metrics`), served when ``[metrics]`` is enabled.
        self.metrics = Metrics(self, clock=clock)
        # libsodium runs without the GIL: a batch split over the cores evaluates ~2x faster on two.
        self.workers = max(1, min(4, os.cpu_count() or 1))
        if store.get_meta(_EPOCH_META) is None:  # a new node (or replicas of one, racing): epoch 1
            epochs = self.keystore.epochs() or [1]
            if epochs == [1]:
                self.keystore.new_oprf_seed(1, now=clock(), actor="node")
            started = {_STARTED_META.format(epochs[-1]): str(int(clock()))}
            store.swap_meta(_EPOCH_META, None, str(epochs[-1]), also=started)
        try:
            self.oprf_key(self.epoch)  # the current key unwraps under this KEK, or the node does not start
            self._held_secret()  # and so does the federation secret, if the store holds one
        except NotFound:
            raise ConfigError(
                f"the store holds no OPRF key of its current epoch {self.epoch}: the node directory of this "
                "store (with its oprf/epoch-NNNN.key files, if it is older than keys in the store) is needed",
                path=str(self.dir),
            ) from None

    @classmethod
    def open(cls, config: NodeConfig, **kwargs: Any) -> Node:
        """Open the node's store (creating or migrating it), load its keys, and audit a changed config."""
        keys.check_node_dir(Path(config.node.dir))  # before the store creates anything in it
        if config.keys.kek_file.exists():
            keys.load_kek(config.keys.kek_file)  # a KEK too open or malformed, before the store too
        node = cls(config, open_store(config.store.url), **kwargs)
        node.record_config(now=node.clock())
        return node

    def record_config(self, *, now: float) -> bool:
        """Record ``config.loaded`` if the configuration differs from the one recorded last.

        ``config_sha256`` is the SHA-256 of the validated configuration (``model_dump_json()``: every
        setting after defaults and path resolution), not of the file's bytes: the node is not told its
        file, and comments or key order change nothing it does. ``previous`` is the hash recorded
        before (empty the first time). Returns whether an event was recorded.
        """
        digest = hashlib.sha256(self.config.model_dump_json().encode("utf-8")).hexdigest()
        previous = self.store.get_meta(_CONFIG_META)
        if previous == digest:
            return False
        fields = {"config_sha256": digest, "previous": previous or ""}
        audit = [event("config.loaded", actor="node", role="node", now=now, **fields)]
        self.store.set_meta(_CONFIG_META, digest, audit=audit)
        return True

    def close(self) -> None:
        try:
            self.reads.flush(now=self.clock())
        except PetandaError as error:  # e.g. the store is closing already: the counts are lost, say so
            log.warning("aggregated peer reads not written at close: %s", error)
        self.store.close()

    # --- keys ---------------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The current OPRF epoch."""
        value = self.store.get_meta(_EPOCH_META)
        assert value is not None
        return int(value)

    def oprf_key(self, epoch: int) -> oprf.KeyPair:
        """The OPRF key pair of ``epoch``, derived from its seed in the store (unwrapped under the KEK),
        cached: the key of an epoch never changes, and a new epoch's is read from the store at its
        first use, whichever replica rotated.

        Raises:
            NotFound: the store holds no key of ``epoch``.
            ConfigError, StoreError: the key is wrapped under another KEK, or does not unwrap.
        """
        key = self._oprf_keys.get(epoch)
        if key is None:
            seed = self.keystore.seed(keystore.OPRF, epoch)
            if seed is None:
                raise NotFound(f"the store holds no OPRF key of epoch {epoch}")
            key = oprf.derive_key_pair(seed, oprf_key_info(self.id, epoch), oprf.MODE_VOPRF)
            self._oprf_keys[epoch] = key  # a race derives the same key twice, harmlessly
        return key

    def answerable_epoch(self, epoch: int, *, now: float) -> oprf.KeyPair:
        """The key of ``epoch`` if it is current or retired less than the grace period ago."""
        current = self.epoch
        if epoch != current:
            retired = self.store.get_meta(_RETIRED_META.format(epoch))
            grace = self.config.oprf.grace_days * _SECONDS_PER_DAY
            if epoch > current or retired is None or now - int(retired) > grace:
                raise NotFound(f"OPRF epoch {epoch} is not answerable (current epoch is {current})")
        try:
            return self.oprf_key(epoch)
        except PetandaError as error:  # e.g. a key that does not unwrap: the reason is for the operator only
            log.error("OPRF key of epoch %d cannot be loaded: %s", epoch, error)
            raise NotFound(f"OPRF epoch {epoch} is not answerable") from None

    def oldest_answerable_epoch(self, *, now: float) -> int:
        """The oldest epoch :meth:`answerable_epoch` accepts at ``now`` (retired less than grace ago)."""
        oldest = self.epoch
        grace = self.config.oprf.grace_days * _SECONDS_PER_DAY
        while oldest > 1:
            retired = self.store.get_meta(_RETIRED_META.format(oldest - 1))
            if retired is None or now - int(retired) > grace:
                break
            oldest -= 1
        return oldest

    def federation_secret(self) -> bytes:
        """The federation-wide HMAC secret (needed only when the HMAC tier is on): the newest generation
        in the store, whichever replica imported it.

        Raises:
            ConfigError: the store holds no secret (naming the commands that fix it), or it does not
                unwrap under this replica's KEK.
        """
        secret = self._held_secret()
        if secret is None:
            raise ConfigError(
                "this node holds no federation secret (the HMAC tier needs the federation's one): import "
                "it with `petanda-node hmac import --config CONFIG FILE`, FILE written by another member's "
                "`petanda-node hmac export`",
                path=str(self.config.hmac.federation_secret_file),
            )
        return secret

    def _held_secret(self) -> bytes | None:
        """The newest federation secret in the store (one small read; unwrapped once per generation)."""
        generations = self.store.wrapped_key_epochs(keystore.HMAC)
        if not generations:
            return None
        cached = self._federation_secret
        if cached is not None and cached[0] == generations[-1]:
            return cached[1]
        held = self.keystore.federation_secret()
        assert held is not None  # a row is never deleted
        self._federation_secret = held
        return held[1]

    def install_federation_secret(
        self, secret: bytes, *, replace: bool, now: float, actor: str = "node"
    ) -> keystore.Installed:
        """Make ``secret`` the federation secret of every replica (a new generation in the store):
        :meth:`node.keystore.KeyStore.install_federation_secret`. The next publication computes the HMAC
        digests again under it (:mod:`node.hmactier`)."""
        return self.keystore.install_federation_secret(
            secret, replace=replace, now=now, actor=actor, source="import"
        )

    def hmac_key(self, epoch: int) -> bytes | None:
        """The federation HMAC key of ``epoch``, or ``None`` when this node holds no federation secret:
        checks then answer STALE for peers' HMAC-tier kinds, never "no match".

        Raises:
            ConfigError, StoreError: the secret does not unwrap under this replica's KEK.
        """
        secret = self._held_secret()
        return None if secret is None else derive_epoch_key(secret, epoch)

    # --- digests ------------------------------------------------------------------------------------

    def digests_for(self, items: Sequence[tuple[str, str]], epoch: int) -> list[dict[tuple[int, int], bytes]]:
        """Compute the digests of ``(kind, canonical)`` items for ``epoch``: OPRF always, HMAC where on."""
        key = self.oprf_key(epoch)
        outputs = oprf.evaluate(
            key.sk, [oprf_input(k, c) for k, c in items], oprf.MODE_VOPRF, workers=self.workers
        )
        result: list[dict[tuple[int, int], bytes]] = [{(epoch, TIER_OPRF): out} for out in outputs]
        hmac_kinds = set(self.config.hmac.kinds)
        if hmac_kinds:
            epoch_key = derive_epoch_key(self.federation_secret(), epoch)
            digesters: dict[str, HmacDigester] = {}
            for index, (kind, canonical) in enumerate(items):
                if kind in hmac_kinds:
                    digester = digesters.setdefault(kind, HmacDigester(epoch_key, epoch, kind))
                    result[index][(epoch, TIER_HMAC)] = digester.digest(canonical)
        return result

    # --- operator operations --------------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[Path],
        *,
        now: float,
        actor: str = "node",
        default_tlp: str = "AMBER",
        publish_after: bool = True,
        on_batch: Callable[[IngestReport], None] | None = None,
        fmt: str | None = None,
        workers: int | None = None,
    ) -> IngestReport:
        """Read files, store their indicators in acknowledged batches, then publish.

        Each batch (up to 5,000 indicators) is one transaction with its digests and its audit event: when
        this method has reported a batch (``on_batch`` is called after each commit), it is durable; a
        crash loses at most the batch being written, never part of one. ``fmt`` (``csv``, ``jsonl``,
        ``stix``, ``misp``) overrides the detection of every file's format.

        ``workers`` (default ``[ingest] workers``) processes read, check, canonicalise and digest the
        records of a CSV or JSON-lines file of more than one range (:mod:`node.ingest.pool`), each its
        own byte ranges; this process stores, in the same batches and with the same rows as with
        ``workers=1``, which does it all in process (as it does STIX and MISP documents).
        """
        report = IngestReport()
        today = datetime.fromtimestamp(now, UTC).date()
        epoch = self.epoch
        processes = self.config.ingest.processes() if workers is None else workers
        store = partial(self._store_rows, now=now, actor=actor, report=report, on_batch=on_batch)
        with ExitStack() as stack:
            pool: IngestPool | None = None
            for path in paths:
                ranged = file_ranges(path, fmt=fmt) if processes > 1 else None
                if ranged is not None and path.stat().st_size - ranged.start > RANGE_BYTES:
                    if pool is None:  # worth the processes
                        keys = self._digest_keys(epoch, today, default_tlp)
                        pool = stack.enter_context(IngestPool(keys, processes))
                    chunks = pool.read(ranged)
                    self._ingest_pooled(chunks, ranged.source, path.name, epoch, report, store)
                    continue
                self._ingest_in_process(path, today, default_tlp, fmt, epoch, report, store)
        if publish_after:
            self.publish(now=now, actor=actor)
        return report

    def _ingest_in_process(
        self,
        path: Path,
        today: date,
        default_tlp: str,
        fmt: str | None,
        epoch: int,
        report: IngestReport,
        store: Callable[[list[IndicatorRow], str], None],
    ) -> None:
        batch: list[ParsedIndicator] = []
        results = parse_file(
            path,
            default_region=self.config.node.country_region,
            today=today,
            default_tlp=default_tlp,
            fmt=fmt,
        )
        for item in results:
            if isinstance(item, Rejection):
                report.rejections.append(item)
                continue
            batch.append(item)
            if len(batch) >= _INGEST_BATCH:
                store(self._indicator_rows(batch, epoch), path.name)
                batch = []
        if batch:
            store(self._indicator_rows(batch, epoch), path.name)

    def _ingest_pooled(
        self,
        chunks: Iterator[Chunk],
        source: str,
        name: str,
        epoch: int,
        report: IngestReport,
        store: Callable[[list[IndicatorRow], str], None],
    ) -> None:
        """Store the chunks a pool checked and digested, in batches of :data:`_INGEST_BATCH` rows as
        in process (the same boundaries, so the same audit entries)."""
        hmac_kinds = set(self.config.hmac.kinds)
        on_oprf, on_hmac, size = (epoch, TIER_OPRF), (epoch, TIER_HMAC), oprf.OUTPUT_LENGTH
        rows: list[IndicatorRow] = []
        for chunk in chunks:
            report.rejections.extend(chunk.rejections)
            out = chunk.oprf
            outputs = [out[i : i + size] for i in range(0, len(out), size)]
            if not chunk.hmac:  # no row of a kind on the HMAC tier: the common case, in one pass
                rows += [
                    IndicatorRow(*f, source, {on_oprf: d}) for f, d in zip(chunk.rows, outputs, strict=True)
                ]
            else:
                at = 0
                for fields, digest in zip(chunk.rows, outputs, strict=True):
                    digests = {on_oprf: digest}
                    if fields[0] in hmac_kinds:
                        digests[on_hmac] = chunk.hmac[at : at + HMAC_LENGTH]
                        at += HMAC_LENGTH
                    rows.append(IndicatorRow(*fields, source, digests))
            while len(rows) >= _INGEST_BATCH:
                store(rows[:_INGEST_BATCH], name)
                del rows[:_INGEST_BATCH]
        if rows:
            store(rows, name)

    def _digest_keys(self, epoch: int, today: date, default_tlp: str) -> DigestKeys:
        """What the workers of an ingest pool get once: the epoch's OPRF seed, the HMAC key if on."""
        seed = self.keystore.seed(keystore.OPRF, epoch)
        if seed is None:
            raise NotFound(f"the store holds no OPRF key of epoch {epoch}")
        hmac_kinds = frozenset(self.config.hmac.kinds)
        return DigestKeys(
            epoch=epoch,
            oprf_seed=seed,
            oprf_info=oprf_key_info(self.id, epoch),
            hmac_key=derive_epoch_key(self.federation_secret(), epoch) if hmac_kinds else None,
            hmac_kinds=hmac_kinds,
            default_region=self.config.node.country_region,
            default_tlp=default_tlp,
            today=today,
        )

    def _store_rows(
        self,
        rows: list[IndicatorRow],
        file: str,
        *,
        now: float,
        actor: str,
        report: IngestReport,
        on_batch: Callable[[IngestReport], None] | None,
    ) -> None:
        """Store one batch of an ingest in one transaction with its audit event, then report it."""
        kinds = _kind_counts(rows)
        audit = [event("ingest", actor=actor, role="node", now=now, count=len(rows), kinds=kinds, file=file)]
        result = self.store.upsert_indicators(rows, now=int(now), audit=audit)
        report.stored += result.stored
        # Every row not stored as new was merged, into a stored indicator or an earlier row of the batch
        # (the store counts a repeated row once): stored + updated + rejected = the rows read.
        report.updated += len(rows) - result.stored
        self.audit.sign_head()  # a signed tree head after each batch of entries
        if on_batch is not None:
            on_batch(report)

    def _indicator_rows(self, batch: Sequence[ParsedIndicator], epoch: int) -> list[IndicatorRow]:
        """The store's rows of parsed indicators, with their digests of ``epoch``."""
        if not batch:
            return []
        digests = self.digests_for([(p.kind, p.canonical) for p in batch], epoch)
        return [
            IndicatorRow(*row_fields(p), source=p.source, digests=d)
            for p, d in zip(batch, digests, strict=True)
        ]

    def save_feed_batch(
        self,
        feed: str,
        parsed: Sequence[ParsedIndicator],
        retractions: Sequence[tuple[str, str]],
        *,
        key: str,
        expect: str | None,
        value: str,
        refused: int,
        now: float,
    ) -> tuple[int, int, int] | None:
        """Store one batch of a live feed (:mod:`node.feeds`) and move its cursor ``key`` from
        ``expect`` to ``value``, in one transaction with a ``feed`` audit entry (counts, never values).

        Returns (stored, updated, retracted), or None when the cursor had moved (another replica stored
        this batch first): then nothing was written. Publishing is the caller's.
        """
        rows = self._indicator_rows(parsed, self.epoch)
        audit = [
            event(
                "feed",
                actor="node",
                role="node",
                now=now,
                feed=feed,
                count=len(rows),
                kinds=_kind_counts(parsed),
                retractions=len(retractions),
                refused=refused,
            )
        ]
        done = self.store.save_feed_batch(
            rows, retractions, now=int(now), key=key, expect=expect, value=value, audit=audit
        )
        if done is None:
            return None
        self.audit.sign_head()
        result, retracted = done
        return result.stored, len(rows) - result.stored, retracted

    def publish(
        self, *, now: float, actor: str = "node", extensions: tuple[tuple[int, bytes], ...] = ()
    ) -> Publication:
        """Rebuild and sign the next publication; sign a tree head over the log afterwards."""
        self._follow_signing_key()
        epoch = self.epoch
        public_key = self.oprf_key(epoch).pk
        with self._publish_lock:
            # Kinds switched to or from the HMAC tier, a new epoch or a replaced federation secret: the
            # HMAC digests are brought in step before they are published (node.hmactier).
            hmactier.update_digests(self, now=now, actor=actor)
            publication = publish(
                self.store,
                node_id=self.id,
                epoch=epoch,
                oprf_public_key=public_key,
                signing_key=self.signing_key,
                now=int(now),
                false_positive_rate=self.config.publish.false_positive_rate,
                max_prefix_bits=self.config.publish.bucket_prefix_bits,
                validity_s=self.config.publish.manifest_validity_hours * 3600,
                hmac_key=self.hmac_key(epoch),
                hmac_kinds=self.config.hmac.kinds,
                extensions=extensions,
                audit=lambda counts, mhash: [
                    event("publish", actor=actor, role="node", now=now, filters=counts, manifest_hash=mhash)
                ],
                cache_dir=self.dir / PUBLISH_CACHE,
            )
        self._log_publication(publication, now=now)
        self.prune(now=now, actor=actor)
        self.audit.sign_head()
        return publication

    def roll_signing_key(self, *, now: float, actor: str = "node") -> tuple[bytes, bytes]:
        """Replace the node's Ed25519 signing key, announced under the old one.

        Publishes a manifest signed with the old key that announces the new one (extension
        ``EXT_NEXT_SIGNING_KEY``), then makes the new key the node's (the old file is kept as
        ``signing.key.retired-<time>``) and publishes again under it; tree heads from now on are signed
        with it. Peers follow the announcement along the manifest chain (``key_after``) and pin the new
        key; a peer that holds the old key in its config must be given the new one. Audited as
        ``signing_key.rolled``. Returns the old and the new raw public keys.
        """
        new = ed25519.Ed25519PrivateKey.generate()
        new_raw = new.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        old_raw = self.audit.public_key
        announced = self.publish(now=now, actor=actor, extensions=((EXT_NEXT_SIGNING_KEY, new_raw),))
        keys.replace_signing_key(self.dir, new, now=now)
        self.signing_key = new
        self.audit.use_key(new)
        self.record(
            "signing_key.rolled",
            actor=actor,
            role="node",
            old=old_raw.hex(),
            new=new_raw.hex(),
            version=announced.signed.manifest.version,
        )
        self.publish(now=now, actor=actor)
        return old_raw, new_raw

    def _log_publication(self, publication: Publication, *, now: float) -> None:
        manifest = publication.signed.manifest
        filters = ", ".join(
            f"{kind}/{'oprf' if tier == TIER_OPRF else 'hmac'} {n}"
            for (kind, tier), n in sorted(publication.counts.items())
        )
        withheld = self.store.withheld_counts(now=int(now)).values()
        log.info(
            "published version %d (epoch %d): %s; withheld RED %d, AMBER+STRICT %d; manifest %s",
            manifest.version,
            manifest.epoch,
            filters or "no filters",
            sum(k["RED"] for k in withheld),
            sum(k["AMBER+STRICT"] for k in withheld),
            manifest_hash(manifest).hex(),
        )

    def oldest_kept_version(self) -> int | None:
        """The oldest publication version whose artefacts are still served (older ones are pruned; their
        manifests are kept), or None if none."""
        return self.store.oldest_kept_version()

    def _prune_publications(self) -> None:
        self.store.prune_publications(self.config.publish.keep_versions)
        oldest = self.oldest_kept_version()
        with self._lock:
            for key in [k for k in self._record_sets if oldest is None or k[0] < oldest]:
                del self._record_sets[key]
            for gone in [k for k in self._deltas if oldest is None or k[0] < oldest]:
                del self._deltas[gone]

    def prune(self, *, now: float, actor: str = "node") -> int:
        """Drop what must no longer be kept: publications beyond ``publish.keep_versions``, digests of
        epochs no longer answerable, and, once per UTC day, indicators retracted or expired more than
        ``publish.purge_after_days`` ago (an audited ``purge``). Returns how many indicators were purged.
        """
        self._prune_publications()
        self.store.delete_digests(epoch_below=self.oldest_answerable_epoch(now=now))
        day = str(math.floor(now / _SECONDS_PER_DAY))
        if self.store.get_meta(_PURGE_DAY_META) == day:
            return 0
        days = self.config.publish.purge_after_days
        before = int(now) - days * _SECONDS_PER_DAY
        counts = self.store.counts(now=int(now))
        candidates = sum(c.expired + c.retracted for c in counts.values())
        purged = 0
        if candidates:
            audit = [event("purge", actor=actor, role="node", now=now, before=before, days=days)]
            purged = self.store.purge(before=before, audit=audit)
        self.store.set_meta(_PURGE_DAY_META, day)
        return purged

    def maintain(self, *, now: float) -> Publication | None:
        """Periodic duty of a serving node: rotate the OPRF key when the epoch is ``oprf.epoch_days``
        old (:meth:`rotation_due`; it publishes); otherwise republish when the manifest is a quarter of
        its validity old (so peers never see it expire) or when an indicator expired since the last
        publication (so expiries propagate). Then write the aggregated peer reads when they are due,
        record the alerts of peers' evaluation volumes, and sign a tree head over the log. Returns the
        publication, if any."""
        self._follow_signing_key()
        publication = self._rotate_on_schedule(now=now)
        latest = self.store.latest_manifest()
        validity = self.config.publish.manifest_validity_hours * 3600
        expired = self.store.expired(now=int(now))
        stale = latest is None or now - SignedManifest.from_bytes(latest).manifest.issued_at > validity / 4
        if publication is None and (stale or str(expired) != (self.store.get_meta(_EXPIRED_META) or "0")):
            publication = self.publish(now=now)
            self.store.set_meta(_EXPIRED_META, str(expired))
        elif publication is None:
            self.prune(now=now)
        self.hits.evaluate(now=now)
        if self.reads.due(now, self.config.audit.aggregate_interval_s):
            self.reads.flush(now=now)
        self.usage.check(now=now)
        self.audit.sign_head()
        return publication

    def epoch_started_at(self, *, now: float) -> int:
        """When the current epoch started: recorded at init and rotation; for a node whose store has no
        record (older than this record), the previous epoch's retirement, else ``now`` (then recorded,
        so the epoch's age counts from the first time it is asked)."""
        epoch = self.epoch
        started = self.store.get_meta(_STARTED_META.format(epoch))
        if started is None:
            started = self.store.get_meta(_RETIRED_META.format(epoch - 1)) or str(int(now))
            self.store.set_meta(_STARTED_META.format(epoch), started)
        return int(started)

    def rotation_due(self, *, now: float) -> bool:
        """Whether the current epoch is ``oprf.epoch_days`` old or older."""
        return now - self.epoch_started_at(now=now) >= self.config.oprf.epoch_days * _SECONDS_PER_DAY

    def rotate_if_due(self, *, now: float) -> Publication | None:
        """Rotate (and publish) if the epoch is due, as a serving node's maintenance does, taking the
        same one-off claim (so a timer and ``serve`` never rotate one epoch twice); None if not due."""
        return self._rotate_on_schedule(now=now)

    def _rotate_on_schedule(self, *, now: float) -> Publication | None:
        """Rotate if due (see :meth:`maintain`); replicas sharing a store rotate once: the first to take
        the one-off claim ``rotate:{epoch}`` from the store (atomic across replicas) does it."""
        if not self.rotation_due(now=now):
            return None
        epoch = self.epoch
        claim = self.store.consume_quota(
            f"rotate:{epoch}", 1, now=now, rate_per_s=0.0, burst=1.0, daily_limit=1
        )
        if not claim.allowed:
            return None
        log.info("OPRF epoch %d is %d days old: rotating", epoch, self.config.oprf.epoch_days)
        return self._rotate(now=now, actor="node", scheduled=True, old=epoch)[1]

    def retract(
        self, kind: str, value: str, *, now: float, region: str | None = None, actor: str = "node"
    ) -> bool:
        """Retract one indicator (it disappears from the next publication); publishes when it did."""
        canonical = normalize(kind, value, region or self.config.node.country_region)
        audit = [event("retract", actor=actor, role="node", now=now, kind=kind)]
        done = self.store.retract(kind, canonical, now=int(now), audit=audit)
        if done:
            self.publish(now=now, actor=actor)
        return done

    def retract_file(
        self, path: Path, *, now: float, fmt: str | None = None, actor: str = "node"
    ) -> RetractReport:
        """Retract the indicators a file lists (:mod:`node.ingest.retractions`), then publish once.

        Good lines are retracted in batches of up to 5,000, each one transaction with one ``retract``
        audit entry (``count``, ``kinds``, ``file``); bad lines are reported, never retracted.
        """
        report = RetractReport()
        batch: list[Retraction] = []

        def flush() -> None:
            kinds: dict[str, int] = {}
            for item in batch:
                kinds[item.kind] = kinds.get(item.kind, 0) + 1
            name = path.name
            audit = [
                event("retract", actor=actor, role="node", now=now, count=len(batch), kinds=kinds, file=name)
            ]
            done = self.store.retract_many([(r.kind, r.canonical) for r in batch], now=int(now), audit=audit)
            report.retracted += done
            report.not_held += len({(r.kind, r.canonical) for r in batch}) - done
            batch.clear()

        for item in parse_retractions(path, default_region=self.config.node.country_region, fmt=fmt):
            if isinstance(item, Rejection):
                report.rejections.append(item)
                continue
            batch.append(item)
            if len(batch) >= _INGEST_BATCH:
                flush()
        if batch:
            flush()
        if report.retracted:
            self.publish(now=now, actor=actor)
        return report

    def rotate(self, *, now: float, actor: str = "node", from_epoch: int | None = None) -> int:
        """Start a new OPRF epoch: new key, every live indicator digested again, then publish. Returns the
        current epoch afterwards.

        ``from_epoch`` (default: the current one) is the epoch to rotate away from: replicas asked at
        once to rotate from one epoch make exactly one new epoch, whichever gets there first (the others
        return it, changing nothing).
        """
        return self._rotate(now=now, actor=actor, scheduled=False, old=from_epoch)[0]

    def _rotate(
        self, *, now: float, actor: str, scheduled: bool, old: int | None = None
    ) -> tuple[int, Publication | None]:
        """Rotate from epoch ``old`` (default: the current one) to the next; replicas rotating from one
        epoch at once make exactly one new epoch.

        The new epoch's key is stored first (the first replica's key wins, the others use it), then the
        digests are computed, then the epoch is switched by a compare-and-swap that only one replica
        wins: it audits ``rotate`` and publishes; the others return ``(epoch, None)``. A rotation that
        stopped half-way is finished by the next one, with the key already stored.
        """
        if old is None:
            old = self.epoch
        elif old != self.epoch:
            return self.epoch, None  # rotated away from ``old`` already
        new = old + 1
        self.keystore.new_oprf_seed(new, now=now, actor=actor)
        pending = list(self.store.iter_needing_digest(new, TIER_OPRF, now=int(now)))
        from node.store.base import DigestItem

        for start in range(0, len(pending), _INGEST_BATCH):
            chunk = pending[start : start + _INGEST_BATCH]
            items = [
                DigestItem(kind, canonical, e, tier, digest)
                for (kind, canonical), digests in zip(chunk, self.digests_for(chunk, new), strict=True)
                for (e, tier), digest in digests.items()
            ]
            self.store.set_digests(items)
        rotated = event(
            "rotate", actor=actor, role="node", now=now, epoch=new, previous=old, scheduled=scheduled
        )
        times = {_RETIRED_META.format(old): str(int(now)), _STARTED_META.format(new): str(int(now))}
        if not self.store.swap_meta(_EPOCH_META, str(old), str(new), also=times, audit=[rotated]):
            log.info("another replica rotated from epoch %d first; epoch %d is current", old, self.epoch)
            return self.epoch, None
        return new, self.publish(now=now, actor=actor)

    def status(self, *, now: float) -> dict[str, Any]:
        """Counts (and those withheld from publication by their TLP), epoch, manifest version, each
        peer's health (:mod:`node.health`) and the store's integrity, as plain data."""
        latest = self.store.latest_manifest()
        started = self.epoch_started_at(now=now)
        sync = self.config.sync
        forks = health.forks(self.store)
        peers = []
        for entry in self.config.peers:
            cached = self.store.peer_manifest(entry.id)
            manifest = SignedManifest.from_bytes(cached).manifest if cached else None
            held = "never synced"
            if manifest is not None:
                held = "expired" if now > manifest.expires_at else "ok"
            kept = health.load(self.store, entry.id)
            fork = forks.get(entry.id)
            state, reason = health.assess(
                kept,
                now=now,
                interval_s=sync.interval_s,
                timeout_s=sync.timeout_s,
                manifest_expires_at=manifest.expires_at if manifest else None,
                fork=fork,
            )
            peers.append(
                {
                    "id": entry.id,
                    "address": entry.address,
                    "version": manifest.version if manifest else None,
                    "age_s": int(now - manifest.issued_at) if manifest else None,
                    "state": state,
                    "reason": reason,
                    "manifest": held,
                    "last_attempt_at": _whole(kept.last_attempt_at),
                    "last_success_at": _whole(kept.last_success_at),
                    "last_error": kept.last_error,
                    "last_error_at": _whole(kept.last_error_at),
                    "consecutive_failures": kept.consecutive_failures,
                    "latency_s": None if kept.latency_s is None else round(kept.latency_s, 3),
                    "protocol": kept.protocol,
                    "protocol_served": kept.served,
                    "fork": None if fork is None else dataclasses.asdict(fork),
                    "recoveries": self.recoveries(entry.id),
                }
            )
        withheld = self.store.withheld_counts(now=int(now))
        return {
            "node_id": self.id,
            "epoch": self.epoch,
            "manifest_version": SignedManifest.from_bytes(latest).manifest.version if latest else None,
            "audit_size": self.store.audit_size(),
            "recoveries": self.recoveries(self.id),
            "indicators": {
                kind: {"active": c.active, "expired": c.expired, "retracted": c.retracted}
                for kind, c in self.store.counts(now=int(now)).items()
            },
            "withheld": {
                "RED": sum(k["RED"] for k in withheld.values()),
                "AMBER+STRICT": sum(k["AMBER+STRICT"] for k in withheld.values()),
                "kinds": withheld,
            },
            "peers": peers,
            "sync": {
                "interval_s": sync.interval_s,
                "timeout_s": sync.timeout_s,
                "unreachable_after_failures": health.FAILURES_UNREACHABLE,
                "unreachable_after_s": health.SILENCE_INTERVALS * sync.interval_s,
                "slow_s": health.SLOW_FRACTION * sync.timeout_s,
            },
            "plausibility": self.hits.status(),
            "oprf_usage": self.usage.status(now=now),
            "rotation": {
                "epoch_days": self.config.oprf.epoch_days,
                "epoch_started_at": started,
                "next_rotation_at": started + self.config.oprf.epoch_days * _SECONDS_PER_DAY,
            },
            "integrity": self.store.integrity_check(),
        }

    def recoveries(self, node_id: str) -> int:
        """How many recovery statements of ``node_id`` (this node's own or a peer's) this node keeps."""
        return len(json.loads(self.store.get_meta(RECOVERY_META.format(node_id)) or "[]"))

    # --- what peers ask for ---------------------------------------------------------------------------

    def latest_manifest(self) -> SignedManifest:
        data = self.store.latest_manifest()
        if data is None:
            raise NotFound("this node has published nothing yet")
        signed = SignedManifest.from_bytes(data)
        self._follow_signing_key(signed)
        return signed

    def _follow_signing_key(self, latest: SignedManifest | None = None) -> None:
        """Sign with the key in force: after a rollover done by another process (the CLI while this one
        serves, or another replica), the key the latest manifest announces, or the one that signed it, is
        read from the node directory. A node never signs with a retired key.

        Raises:
            ConfigError: the key in force is not the one in the node directory.
        """
        if latest is None:
            data = self.store.latest_manifest()
            if data is None:
                return
            latest = SignedManifest.from_bytes(data)
        ours = self.audit.public_key
        wanted = latest.manifest.next_signing_key
        if wanted is None:
            try:
                Ed25519PublicKey.from_public_bytes(ours).verify(latest.signature, latest.manifest.to_bytes())
                return
            except InvalidSignature:
                pass
        elif wanted == ours:
            return
        key = keys.load_signing_key(self.dir)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        in_force = wanted
        if in_force is None:
            try:
                key.public_key().verify(latest.signature, latest.manifest.to_bytes())
                in_force = raw
            except InvalidSignature:
                in_force = None
        if raw != in_force:
            raise ConfigError(
                "the signing key in the node directory is not the one the latest manifest puts in force",
                path=str(self.dir / keys.SIGNING_KEY_FILE),
            )
        with self._lock:
            self.signing_key = key
            self.audit.use_key(key)
        log.info("now signing with the rolled signing key %s…", raw.hex()[:16])

    def manifest_chain(self, known: int, latest: int) -> list[bytes]:
        """The signed manifests after ``known`` and before ``latest``, oldest first, at most
        :data:`MANIFEST_CHAIN_MAX` (every manifest ever published is kept: they are small)."""
        limit = max(0, min(latest - known - 1, MANIFEST_CHAIN_MAX))
        return [data for version, data in self.store.manifests_after(known, limit=limit) if version < latest]

    def _check_kept(self, version: int) -> None:
        oldest = self.oldest_kept_version()
        if oldest is not None and version < oldest:
            raise NotFound(f"version {version} is no longer served (the oldest kept is {oldest})")

    def filter_bytes(self, version: int, kind: str, tier: int) -> bytes:
        """A published filter of a kept version (NotFound for an older or unknown one)."""
        self._check_kept(version)
        data = self.store.get_filter(version, kind, tier)
        if data is None:
            raise NotFound(f"no {kind} tier {tier} filter in version {version}")
        return data

    def delta_bytes(self, from_version: int, to_version: int, kind: str, tier: int) -> bytes:
        """The delta of (``kind``, ``tier``) from one kept version to a later one
        (:mod:`client.protocol.delta`); NotFound when either is not kept or lists no such filter."""
        if not from_version < to_version:
            raise InputError(f"from_version: {from_version} is not before to_version {to_version}")
        self._check_kept(from_version)  # a pruned version is NOT_FOUND, cached delta or not
        key = (from_version, to_version, kind, tier)
        with self._lock:
            cached = self._deltas.get(key)
            if cached is not None:  # every peer that holds the same version asks for the same delta
                self._deltas.move_to_end(key)
                return cached
        old_filter, new_filter = (self.filter_bytes(v, kind, tier) for v in (from_version, to_version))
        old_records, new_records = (
            RecordSet.from_bytes(self.records_bytes(v, kind, tier), self._bucket_bits(v, kind, tier))
            for v in (from_version, to_version)
        )
        delta = make_delta(
            from_version=from_version,
            to_version=to_version,
            kind=kind,
            tier=tier,
            old_filter=old_filter,
            new_filter=new_filter,
            old_records=old_records,
            new_records=new_records,
        )
        with self._lock:
            _remember(self._deltas, key, delta)
        return delta

    def _bucket_bits(self, version: int, kind: str, tier: int) -> int:
        stored = self.store.manifest(version)
        entry = SignedManifest.from_bytes(stored).manifest.entry(kind, tier) if stored else None
        if entry is None:
            raise NotFound(f"no {kind} tier {tier} filter in version {version}")
        return entry.prefix_bits

    def records_bytes(self, version: int, kind: str, tier: int) -> bytes:
        """The record set of a published filter of a kept version: every bucket in bucket order, as
        ``GetRecords`` serves it (NotFound for an older or unknown one). Assembled once per version."""
        self._check_kept(version)
        key = (version, kind, tier)
        with self._lock:
            cached = self._record_sets.get(key)
            if cached is not None:
                self._record_sets.move_to_end(key)
                return cached
        stored = self.store.manifest(version)
        if stored is None:
            raise NotFound(f"no version {version}")
        entry = SignedManifest.from_bytes(stored).manifest.entry(kind, tier)
        if entry is None:
            raise NotFound(f"no {kind} tier {tier} filter in version {version}")
        empty = encode_bucket([])
        data = b"".join(
            self.store.get_bucket(version, kind, tier, number) or empty
            for number in range(1 << entry.prefix_bits)
        )
        with self._lock:
            _remember(self._record_sets, key, data)
        return data

    def evaluate(
        self, peer_id: str, epoch: int, kind: str, blinded: Sequence[bytes], *, verifiable: bool, now: float
    ) -> tuple[list[bytes], bytes]:
        """Blindly evaluate a peer's batch under ``epoch``'s key, within its quotas (:mod:`node.quotas`).

        The batch and the epoch are checked before any quota is taken: an invalid batch (a blinded
        element that is not a canonical, non-identity ristretto255 encoding) consumes nothing.
        """
        try:
            result = self._evaluate(peer_id, epoch, kind, blinded, verifiable=verifiable, now=now)
        except RateLimited:
            self.metrics.evaluated(peer_id, kind, "rate_limited", len(blinded))
            raise
        except NotFound:
            self.metrics.evaluated(peer_id, kind, "unknown_epoch", len(blinded))
            raise
        except (InputError, EncodingError):  # an empty, too large or malformed batch
            self.metrics.evaluated(peer_id, kind, "invalid", len(blinded))
            raise
        self.metrics.evaluated(peer_id, kind, "ok", len(blinded))
        return result

    def _evaluate(
        self, peer_id: str, epoch: int, kind: str, blinded: Sequence[bytes], *, verifiable: bool, now: float
    ) -> tuple[list[bytes], bytes]:
        limits = self.config.limits
        if not blinded:
            raise InputError("blinded_elements: empty batch")
        if len(blinded) > limits.max_batch:
            raise InputError(
                f"blinded_elements: {len(blinded)} elements, more than the limit {limits.max_batch}"
            )
        key = self.answerable_epoch(epoch, now=now)
        base: dict[str, Any] = {
            "actor": peer_id,
            "role": "peer",
            "now": now,
            "kind": kind,
            "count": len(blinded),
        }
        try:
            for index, element in enumerate(blinded):  # RFC 9497 DeserializeElement, ~4 us each
                oprf._deserialize_element(element, f"blinded_elements[{index}]")
        except EncodingError as error:
            self.store.append_audit(
                [event("peer.evaluate_oprf", result="invalid", reason=str(error), **base)]
            )
            raise

        def audit(taken: QuotaTaken) -> list[AuditEvent]:
            used: dict[str, Any] = {"daily_used": taken.daily_used, "daily_quota": taken.daily_quota}
            if taken.holder_used is not None:
                used["holder_used"] = taken.holder_used
            return [event("peer.evaluate_oprf", **base, **used)]

        # The quotas and the audit entry in one durable commit, before the answer is computed: an
        # entry on disk for every batch evaluated (the elements were validated above, so it cannot fail).
        self.quotas.take(peer_id, kind, len(blinded), now=now, fields=base, audit=audit)
        if verifiable:
            evaluated, proof = oprf.blind_evaluate_verifiable(key, blinded, workers=self.workers)
        else:
            evaluated, proof = oprf.blind_evaluate(key.sk, blinded, workers=self.workers), b""
        return evaluated, proof

    def report_sighting(
        self, peer_id: str, kind: str, tier: int, version: int, tag: bytes, *, now: float
    ) -> bool:
        """Record a peer's sighting of one of our published records (by its tag).

        Only a tag in the published bucket of ``(version, kind, tier)`` of a kept version is recorded;
        another is refused (False, audited as ``unknown_tag``, nothing stored). At most
        ``limits.sightings_daily`` are recorded per peer per UTC day.

        Raises:
            RateLimited: the peer's daily number of sightings is used up.
        """
        base: dict[str, Any] = {
            "actor": peer_id,
            "role": "peer",
            "now": now,
            "kind": kind,
            "tier": tier,
            "version": version,
        }
        if not self.is_published_tag(version, kind, tier, tag):
            self.store.append_audit([event("peer.report_sighting", result="unknown_tag", **base)])
            return False
        daily = self.config.limits.sightings_daily
        decision = self.store.consume_quota(
            f"sighting:{peer_id}",
            1,
            now=now,
            rate_per_s=float(max(1, daily)),
            burst=max(1, daily),
            daily_limit=daily,
        )
        if not decision.allowed:
            self.store.append_audit(
                [event("peer.report_sighting", result="rate_limited", daily_used=decision.daily_used, **base)]
            )
            raise RateLimited(
                f"{peer_id} has reported {decision.daily_used} sightings today, the limit",
                retry_after_s=decision.retry_after_s,
            )
        audit = [event("peer.report_sighting", daily_used=decision.daily_used, **base)]
        self.store.record_sighting(peer_id, kind, tier, tag, now=int(now), audit=audit)
        return True

    def is_published_tag(self, version: int, kind: str, tier: int, tag: bytes) -> bool:
        """Whether a kept publication ``version`` holds a record with ``tag`` for ``(kind, tier)``."""
        oldest = self.oldest_kept_version()
        if oldest is None or version < oldest:
            return False
        stored = self.store.manifest(version)
        if stored is None:
            return False
        entry = SignedManifest.from_bytes(stored).manifest.entry(kind, tier)
        if entry is None:
            return False
        bucket = bucket_id(tag, entry.prefix_bits)
        data = self.store.get_bucket(version, kind, tier, bucket)
        if data is None:
            return False
        return any(record.tag == tag for record in decode_bucket(data))

    def accept_peer_tree_head(
        self, peer_id: str, head: TreeHead, *, now: float, proven: bool = True, key: bytes | None = None
    ) -> None:
        """Check a peer's signed tree head against the kept ones; keep it only if ``proven``.

        A shrinking log or a second root for one size is a fork (recorded). ``proven`` means the syncer
        verified a consistency proof from the last kept head to this one. A head a peer merely presents
        (``ExchangeTreeHead``) is checked but never kept: kept, it would become the base of the next
        consistency check, and a peer could launder a rewritten log through it.
        """
        if head.node_id != peer_id:
            raise InputError(f"head.node_id: {head.node_id!r} is not the caller {peer_id}")
        pinned = key or self.peer_signing_key(peer_id)  # ``key``: the one the peer's manifests put in force
        if pinned is not None:
            verify_tree_head(head, Ed25519PublicKey.from_public_bytes(pinned))
        known = [
            TreeHead(peer_id, h.size, h.root, h.timestamp, h.signature)
            for h in self.store.peer_tree_heads(peer_id)
        ]
        if proven:
            self.store.save_peer_tree_head(
                peer_id, head.tree_size, head.root_hash, head.timestamp, head.signature
            )
        try:
            check_heads([*known, head])
        except LogFork as fork:
            self.record_fork(peer_id, str(fork), now=now)

    def record_fork(self, peer_id: str, reason: str, *, now: float, subject: str = "log") -> None:
        """Record and alert that a peer showed two audit logs (``subject`` "log") or signed two manifests
        of one version ("manifest") that cannot both be true."""
        what = "audit logs" if subject == "log" else "manifests"
        log.error(
            "FORK: peer %s shows inconsistent %s: %s",
            peer_id,
            what,
            reason,
            extra={"alert": "fork", "peer": peer_id, "subject": subject},
        )
        extra = {} if subject == "log" else {"subject": subject}
        self.store.append_audit(
            [event("fork", actor=peer_id, role="peer", now=now, result="fork", reason=reason, **extra)]
        )

    def note_manifest(self, node_id: str, signed: SignedManifest, *, via: str, now: float) -> bool:
        """Remember the hash of a manifest of ``node_id`` that verified under its key, pulled from it
        (``via == node_id``) or gossiped by ``via``; a second, different manifest of one version is a
        fork of ``node_id`` (both are signed by it), recorded and alerted like a log fork, once per
        version. Both signed manifests are kept (``manifest.<node>.<version>`` in the store's meta): they
        are the evidence, which anyone holding ``node_id``'s key can check.

        Returns:
            True when this manifest forks ``node_id``.
        """
        manifest = signed.manifest
        digest = manifest_hash(manifest).hex()
        key = f"manifest.{node_id}.{manifest.version}"
        with self._lock:
            raw = self.store.get_meta(key)
            known = json.loads(raw) if raw else None
            if known is None:
                self.store.set_meta(key, json.dumps({"hash": digest, "via": via}, separators=(",", ":")))
                return False
            if known["hash"] == digest:
                return False
            if "other_hash" in known:  # the fork of this version is already on record, with evidence
                return True
            known.update(other_hash=digest, other_via=via, other=signed.to_bytes().hex())
            self.store.set_meta(key, json.dumps(known, separators=(",", ":")))
        self.record_fork(
            node_id,
            f"two manifests of version {manifest.version} both signed by {node_id}: {known['hash'][:16]}… "
            f"(from {known['via']}) and {digest[:16]}… (from {via})",
            now=now,
            subject="manifest",
        )
        return True

    def peer_signing_key(self, peer_id: str) -> bytes | None:
        """The Ed25519 key a peer signs with: from the config, else the one pinned on first contact."""
        entry = self.config.peer(peer_id)
        if entry is not None and entry.signing_key:
            return bytes.fromhex(entry.signing_key)
        pinned = self.store.get_meta(f"peer.{peer_id}.signing_key")
        return bytes.fromhex(pinned) if pinned else None

    def audit_tree(self, size: int) -> TileTree:
        return self.audit.tree(size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        if not 0 < first <= second:
            raise InputError(f"first: need 0 < first ({first}) <= second ({second})")
        return self.audit.tree(second).consistency_proof(first, second)

    def record(self, action: str, **fields: Any) -> None:
        """Append one audit event on its own (reads that change nothing else)."""
        self.store.append_audit([event(action, now=self.clock(), **fields)])

    def iter_entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        for page in range(start, end, 10_000):
            stop = min(end, page + 10_000)
            yield from enumerate(self.store.audit_entries(page, stop), start=page)
