"""Signed manifests: what a node publishes in one version, signed with its Ed25519 key.

A manifest names the node, the OPRF key epoch, a monotonic version, its validity window, the hash of
the manifest before it, the node's OPRF public key, the fingerprint of the federation HMAC key of the
epoch, and for every published filter its SHA-256, its indicator count, the Merkle root of its metadata
buckets and the size of its record set. The signature covers canonical, domain-separated bytes of
manifest format 2 (protocol version 2, docs/PROTOCOL.md)::

    "petanda/v2/manifest" || 0x00
    u8 len || node_id (ASCII) || u32 epoch || u64 version || u64 issued_at || u64 expires_at
    previous_hash[32] || oprf_public_key[32] || hmac_fingerprint[32] || u16 entry_count
    entry_count x (u8 kind || u8 tier || filter_sha256[32] || u64 count || u8 bucket_bits
                   || buckets_root[32] || u64 records_size)
    u16 extension_count || extension_count x (u16 type || u16 length || value)

integers big-endian, entries strictly increasing by (kind code, tier), extensions strictly increasing
by type (room for what later versions add: a verifier checks the signature over unknown ones, which it
keeps with the manifest, and otherwise ignores them).
A signed manifest is those bytes followed by the 64-byte signature.

Reader-side plausibility (:func:`check_plausible`): a publisher may not cut its records into more
buckets than it has records, and the size of each record set follows from its count and buckets.

Chain rule (see the spec): a manifest whose version is the last accepted one plus one must name that
manifest's hash; a manifest that skips versions is accepted on its signature and a strictly greater
version alone, unless the caller asks for contiguity; :func:`verify_chain` checks a full run of
intermediate manifests when the caller has them.

One module of this size: one artefact's format, verification and plausibility rules.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.protocol._encoding import Reader, Writer, check_node_id
from client.protocol.errors import (
    ChainError,
    ExpiredError,
    FilterMismatchError,
    ImplausibleError,
    InclusionProofError,
    InputError,
    RollbackError,
    SignatureError,
    WrongNodeError,
)
from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF, kind_code
from client.protocol.merkle import verify_inclusion
from client.protocol.metadata import BUCKET_HEADER_SIZE, MAX_PREFIX_BITS, RECORD_SIZE, RecordSet

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "EXT_NEXT_SIGNING_KEY",
    "GENESIS_HASH",
    "MANIFEST_FORMAT",
    "MANIFEST_LABEL",
    "MAX_DECLARED_FPR",
    "MAX_EXCESS_FILL",
    "NO_HMAC",
    "SIGNATURE_SIZE",
    "FilterEntry",
    "FilterIdentity",
    "Manifest",
    "SignedManifest",
    "check_filter_header",
    "check_plausible",
    "expected_records_size",
    "key_after",
    "manifest_hash",
    "sign_manifest",
    "verify_bucket",
    "verify_chain",
    "verify_filter",
    "verify_manifest",
    "verify_records",
    "verify_signed_manifest",
]

#: The manifest format this code signs and reads (protocol versions 2 and 3 both use format 2; the
#: protocol version itself is :data:`client.protocol.versions.PROTOCOL_VERSION`).
MANIFEST_FORMAT: Final = 2
#: Domain-separation prefix of the canonical manifest bytes.
MANIFEST_LABEL: Final = b"petanda/v2/manifest\x00"
#: Extension type announcing the node's next manifest-signing key (32 raw Ed25519 bytes).
EXT_NEXT_SIGNING_KEY: Final = 1
#: ``hmac_fingerprint`` of a manifest that publishes no HMAC-tier filter.
NO_HMAC: Final = bytes(32)
#: Size of an Ed25519 signature.
SIGNATURE_SIZE: Final = 64
#: ``previous_hash`` of a node's first manifest.
GENESIS_HASH: Final = bytes(32)
#: Seconds a manifest's ``issued_at`` may lie ahead of the verifier's clock.
DEFAULT_CLOCK_SKEW: Final = 300


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_uint(value: object, bits: int, field: str) -> None:
    if not _is_int(value) or not 0 <= value < 1 << bits:  # type: ignore[operator]
        raise InputError(f"{field}: {value!r} is not an unsigned {bits}-bit integer")


def _check_hash(value: object, field: str) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise InputError(f"{field}: expected 32 bytes")


@dataclass(frozen=True, slots=True)
class FilterEntry:
    """One published filter: its kind and tier, SHA-256, indicator count and metadata buckets.

    Attributes:
        kind: an indicator kind.
        tier: :data:`~client.protocol.kinds.TIER_OPRF` or :data:`~client.protocol.kinds.TIER_HMAC`.
        filter_sha256: SHA-256 of the filter's bytes exactly as served.
        count: number of indicators in the filter (n).
        prefix_bits: bucket prefix length of its metadata (0..24): ``2**prefix_bits`` buckets
            (``bucket_bits`` in the specification).
        buckets_root: RFC 9162 root over the encoded buckets in bucket order.
        records_size: bytes of its record set (every bucket, in bucket order), as ``GetRecords`` serves it.
    """

    kind: str
    tier: int
    filter_sha256: bytes
    count: int
    prefix_bits: int
    buckets_root: bytes
    records_size: int = 0

    def __post_init__(self) -> None:
        kind_code(self.kind)
        if self.tier not in (TIER_OPRF, TIER_HMAC) or isinstance(self.tier, bool):
            raise InputError(f"tier {self.tier!r} is not {TIER_OPRF} (OPRF) or {TIER_HMAC} (HMAC)")
        _check_hash(self.filter_sha256, "filter_sha256")
        _check_uint(self.count, 64, "count")
        if not _is_int(self.prefix_bits) or not 0 <= self.prefix_bits <= MAX_PREFIX_BITS:
            raise InputError(f"prefix_bits {self.prefix_bits!r} is not from 0 to {MAX_PREFIX_BITS}")
        _check_hash(self.buckets_root, "buckets_root")
        _check_uint(self.records_size, 64, "records_size")

    @property
    def key(self) -> tuple[int, int]:
        """The sort key of entries: (kind code, tier)."""
        return (kind_code(self.kind), self.tier)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A node's published state at one version. Validated on construction; entries are kept sorted.

    Attributes:
        node_id: the node's id, 1 to 16 of ``A-Z0-9-`` as in the filter header (ISO 3166-1 alpha-2).
        epoch: the OPRF/HMAC key epoch (u32).
        version: monotonic version, 1 for the first manifest (u64).
        issued_at: UTC seconds since 1970 when it was signed.
        expires_at: UTC seconds after which it is refused (greater than ``issued_at``).
        previous_hash: :func:`manifest_hash` of the previous manifest, :data:`GENESIS_HASH` for the first.
        oprf_public_key: the epoch's ristretto255 OPRF public key (32 bytes).
        entries: one :class:`FilterEntry` per published (kind, tier), at most one each.
        hmac_fingerprint: :func:`client.protocol.digest.hmac_fingerprint` of the epoch's federation HMAC
            key when the publisher holds a federation secret (always when an HMAC-tier filter is
            published), else :data:`NO_HMAC`: a peer with another key
            learns that its HMAC digests cannot match, instead of a silent "no match".
        extensions: ``(type, value)`` pairs, types strictly increasing. Type 1
            (:data:`EXT_NEXT_SIGNING_KEY`, 32 bytes) announces the node's next Ed25519 signing key:
            every later manifest is signed with it (:func:`key_after`); others are kept and ignored.
    """

    node_id: str
    epoch: int
    version: int
    issued_at: int
    expires_at: int
    previous_hash: bytes
    oprf_public_key: bytes
    entries: tuple[FilterEntry, ...] = ()
    hmac_fingerprint: bytes = NO_HMAC
    extensions: tuple[tuple[int, bytes], ...] = ()

    def __post_init__(self) -> None:
        check_node_id(self.node_id)
        _check_uint(self.epoch, 32, "epoch")
        _check_uint(self.version, 64, "version")
        if self.version == 0:
            raise InputError("version must be at least 1 (0 is the cursor of a peer that has none)")
        _check_uint(self.issued_at, 64, "issued_at")
        _check_uint(self.expires_at, 64, "expires_at")
        if self.expires_at <= self.issued_at:
            raise InputError("expires_at must be later than issued_at")
        _check_hash(self.previous_hash, "previous_hash")
        _check_hash(self.oprf_public_key, "oprf_public_key")
        _check_hash(self.hmac_fingerprint, "hmac_fingerprint")
        extensions = tuple(self.extensions)
        if len(extensions) > 0xFFFF:
            raise InputError("too many extensions")
        for i, ext in enumerate(extensions):
            if (
                not isinstance(ext, tuple)
                or len(ext) != 2
                or not _is_int(ext[0])
                or not 0 <= ext[0] <= 0xFFFF
                or not isinstance(ext[1], bytes)
                or len(ext[1]) > 0xFFFF
            ):
                raise InputError(f"extension {i} is not a (u16 type, bytes of at most 65535) pair")
            if i and extensions[i - 1][0] >= ext[0]:
                raise InputError("extensions must be in strictly increasing type order")
            if ext[0] == EXT_NEXT_SIGNING_KEY and len(ext[1]) != 32:
                raise InputError("extension next_signing_key: expected 32 bytes")
        object.__setattr__(self, "extensions", extensions)
        entries = tuple(self.entries)
        if not all(isinstance(e, FilterEntry) for e in entries):
            raise InputError("entries must be FilterEntry values")
        if len(entries) > 0xFFFF:
            raise InputError("too many filter entries")
        ordered = tuple(sorted(entries, key=lambda e: e.key))
        for a, b in itertools.pairwise(ordered):
            if a.key == b.key:
                raise InputError(f"two filter entries for kind {a.kind} tier {a.tier}")
        object.__setattr__(self, "entries", ordered)

    def entry(self, kind: str, tier: int) -> FilterEntry | None:
        """The entry of (``kind``, ``tier``), or ``None``."""
        for e in self.entries:
            if e.kind == kind and e.tier == tier:
                return e
        return None

    @property
    def next_signing_key(self) -> bytes | None:
        """The signing key this manifest announces for every later one, if any."""
        for kind, value in self.extensions:
            if kind == EXT_NEXT_SIGNING_KEY:
                return value
        return None

    @property
    def total_count(self) -> int:
        """Number of indicators over all filters."""
        return sum(e.count for e in self.entries)

    def to_bytes(self) -> bytes:
        """The canonical, domain-separated bytes that are hashed and signed."""
        w = Writer(MANIFEST_LABEL)
        w.node_id(self.node_id)
        w.u32(self.epoch, "epoch")
        w.u64(self.version, "version")
        w.u64(self.issued_at, "issued_at")
        w.u64(self.expires_at, "expires_at")
        w.fixed(self.previous_hash, 32, "previous_hash")
        w.fixed(self.oprf_public_key, 32, "oprf_public_key")
        w.fixed(self.hmac_fingerprint, 32, "hmac_fingerprint")
        w.u16(len(self.entries), "entry_count")
        for e in self.entries:
            w.u8(kind_code(e.kind), "kind")
            w.u8(e.tier, "tier")
            w.fixed(e.filter_sha256, 32, "filter_sha256")
            w.u64(e.count, "count")
            w.u8(e.prefix_bits, "prefix_bits")
            w.fixed(e.buckets_root, 32, "buckets_root")
            w.u64(e.records_size, "records_size")
        w.u16(len(self.extensions), "extension_count")
        for kind, value in self.extensions:
            w.u16(kind, "extension type")
            w.blob16(value, "extension value")
        return w.getvalue()

    @classmethod
    def _read(cls, r: Reader) -> Manifest:
        if r.take(len(MANIFEST_LABEL), "label") != MANIFEST_LABEL:
            raise r.error("label", f"not a petanda/v{MANIFEST_FORMAT} manifest (format {MANIFEST_FORMAT})")
        node_id = r.node_id()
        epoch, version = r.u32("epoch"), r.u64("version")
        issued_at, expires_at = r.u64("issued_at"), r.u64("expires_at")
        previous_hash, oprf_key = r.take(32, "previous_hash"), r.take(32, "oprf_public_key")
        fingerprint = r.take(32, "hmac_fingerprint")
        entries: list[FilterEntry] = []
        last: tuple[int, int] = (0, 0)
        for i in range(r.u16("entry_count")):
            code, tier = r.u8(f"entry {i} kind"), r.u8(f"entry {i} tier")
            if not 1 <= code <= len(KINDS):
                raise r.error(f"entry {i} kind", f"unknown code {code}")
            if (code, tier) <= last:
                raise r.error(f"entry {i}", "entries not in strictly increasing (kind, tier) order")
            last = (code, tier)
            digest, count = r.take(32, f"entry {i} filter_sha256"), r.u64(f"entry {i} count")
            prefix_bits, root = r.u8(f"entry {i} bucket_bits"), r.take(32, f"entry {i} buckets_root")
            size = r.u64(f"entry {i} records_size")
            try:
                entries.append(FilterEntry(KINDS[code - 1], tier, digest, count, prefix_bits, root, size))
            except InputError as exc:
                raise r.error(f"entry {i}", str(exc)) from None
        extensions: list[tuple[int, bytes]] = []
        for i in range(r.u16("extension_count")):
            extensions.append((r.u16(f"extension {i} type"), r.blob16(f"extension {i} value")))
        try:
            return cls(
                node_id,
                epoch,
                version,
                issued_at,
                expires_at,
                previous_hash,
                oprf_key,
                tuple(entries),
                fingerprint,
                tuple(extensions),
            )
        except InputError as exc:
            raise r.error("manifest", str(exc)) from None

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Decode canonical bytes strictly (:class:`EncodingError` naming the field)."""
        r = Reader(data, "manifest")
        manifest = cls._read(r)
        r.end()
        return manifest


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A manifest and the node's Ed25519 signature over :meth:`Manifest.to_bytes`."""

    manifest: Manifest
    signature: bytes

    def to_bytes(self) -> bytes:
        """``canonical manifest bytes || signature (64 bytes)``."""
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_SIZE:
            raise InputError(f"signature must be {SIGNATURE_SIZE} bytes")
        return self.manifest.to_bytes() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """Decode strictly: a canonical manifest followed by exactly 64 signature bytes."""
        r = Reader(data, "signed manifest")
        manifest = Manifest._read(r)
        if r.remaining != SIGNATURE_SIZE:
            raise r.error("signature", f"{r.remaining} bytes, expected {SIGNATURE_SIZE}")
        return cls(manifest, r.take(SIGNATURE_SIZE, "signature"))


class FilterIdentity(NamedTuple):
    """What a filter's own header says it is (parsed by the caller's filter codec)."""

    node_id: str
    epoch: int
    kind: str
    tier: int


def manifest_hash(manifest: Manifest) -> bytes:
    """SHA-256 of the canonical manifest bytes: what the next manifest's ``previous_hash`` names."""
    return hashlib.sha256(manifest.to_bytes()).digest()


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """Sign the canonical bytes of ``manifest`` with the node's Ed25519 key."""
    if not isinstance(private_key, Ed25519PrivateKey):
        raise InputError("manifests are signed with an Ed25519 private key")
    return SignedManifest(manifest, private_key.sign(manifest.to_bytes()))


def _public_key(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes) and len(key) == 32:
        try:
            return Ed25519PublicKey.from_public_bytes(key)
        except ValueError:
            pass
    raise InputError("the node's public key must be an Ed25519 public key or its 32 raw bytes")


def _check_link(manifest: Manifest, previous: Manifest | None, *, contiguous: bool) -> bool:
    """Check ``manifest`` against the last accepted one; return True when it is that same manifest."""
    if previous is None:
        return False
    if previous.node_id != manifest.node_id:
        raise InputError(f"the previous manifest given belongs to {previous.node_id}, not {manifest.node_id}")
    if manifest.version < previous.version:
        raise RollbackError(
            f"manifest of {manifest.node_id} has version {manifest.version},"
            f" older than the accepted {previous.version}"
        )
    if manifest.version == previous.version:
        if manifest_hash(manifest) == manifest_hash(previous):
            return True
        raise RollbackError(
            f"{manifest.node_id} signed two different manifests with version {manifest.version}"
            " (equivocation)"
        )
    if manifest.epoch < previous.epoch:
        raise RollbackError(
            f"manifest of {manifest.node_id} goes back from epoch {previous.epoch} to {manifest.epoch}"
        )
    if manifest.issued_at < previous.issued_at:
        raise RollbackError(
            f"manifest {manifest.version} of {manifest.node_id} was issued before its predecessor"
        )
    if manifest.version == previous.version + 1:
        if not hmac.compare_digest(manifest.previous_hash, manifest_hash(previous)):
            raise ChainError(
                f"manifest {manifest.version} of {manifest.node_id} does not name manifest {previous.version}"
                " as its predecessor (fork)"
            )
    elif contiguous:
        raise ChainError(
            f"manifest of {manifest.node_id} skips from version {previous.version} to {manifest.version};"
            " fetch the manifests in between"
        )
    return False


def _check_signed(signed: SignedManifest, key: Ed25519PublicKey, expected_node: str) -> Manifest:
    if not isinstance(signed, SignedManifest):
        raise InputError("expected a SignedManifest")
    manifest = signed.manifest
    try:
        key.verify(signed.signature, manifest.to_bytes())
    except InvalidSignature:
        raise SignatureError(
            f"manifest {manifest.version} claiming node {manifest.node_id} has a bad signature"
        ) from None
    if manifest.node_id != expected_node:
        raise WrongNodeError(f"manifest belongs to node {manifest.node_id}, expected {expected_node}")
    return manifest


def verify_signed_manifest(
    signed: SignedManifest, public_key: Ed25519PublicKey | bytes, *, expected_node: str
) -> None:
    """Check only that ``expected_node`` signed ``signed`` with ``public_key`` (no time, no chain): the
    test a gossiped manifest must pass before it can show that node signed two manifests of one version.

    Raises:
        SignatureError: the signature does not verify.
        WrongNodeError: the manifest names another node.
    """
    _check_signed(signed, _public_key(public_key), expected_node)


def key_after(manifest: Manifest | None, key: bytes) -> bytes:
    """The key in force after ``manifest`` (verified under ``key``): the one it announces, else ``key``.

    The rollover rule: a node announces its next signing key in a manifest signed with the current one
    (extension :data:`EXT_NEXT_SIGNING_KEY`), and signs every later manifest and tree head with the new
    one. A verifier follows the announcements along the chain, so nobody but the holder of the current
    key can move the node to another.
    """
    announced = manifest.next_signing_key if manifest is not None else None
    return announced if announced is not None else key


def _check_time(manifest: Manifest, now: int, max_clock_skew: int) -> None:
    if not _is_int(now) or not _is_int(max_clock_skew) or max_clock_skew < 0:
        raise InputError("now and max_clock_skew must be integers (seconds), the skew non-negative")
    if now > manifest.expires_at:
        raise ExpiredError(
            f"manifest {manifest.version} of {manifest.node_id} expired {now - manifest.expires_at} s ago"
        )
    if manifest.issued_at > now + max_clock_skew:
        raise ExpiredError(
            f"manifest {manifest.version} of {manifest.node_id} is issued {manifest.issued_at - now} s in the"
            f" future (allowed clock skew {max_clock_skew} s)"
        )


def verify_manifest(
    signed: SignedManifest,
    public_key: Ed25519PublicKey | bytes,
    *,
    expected_node: str,
    previous: Manifest | None,
    now: int,
    max_clock_skew: int = DEFAULT_CLOCK_SKEW,
    require_contiguous: bool = False,
) -> None:
    """Accept or refuse a manifest received from ``expected_node``.

    Checks, in order: the signature; the node id; the validity window; and against ``previous`` (the
    last manifest accepted from that node, or ``None`` on first contact): no older version, no second
    manifest with the same version, no older epoch or issue time, and for the next version the
    previous-hash link. A manifest that skips versions is accepted on its signature and greater version
    unless ``require_contiguous`` (then use :func:`verify_chain` with the manifests in between). The
    same manifest as ``previous`` again is accepted.

    Raises:
        SignatureError: the signature does not verify under ``public_key``.
        WrongNodeError: the manifest names another node.
        ExpiredError: ``now > expires_at``, or ``issued_at`` beyond ``now + max_clock_skew``.
        RollbackError: an older version, epoch or issue time, or a different manifest of the same version.
        ChainError: the next version does not name ``previous``'s hash (or a gap when contiguity is required).
    """
    key = _public_key(public_key)
    if (
        previous is not None
        and previous.next_signing_key is not None
        and previous.version < signed.manifest.version
    ):
        key = _public_key(previous.next_signing_key)  # the previous manifest announced a rollover
    manifest = _check_signed(signed, key, expected_node)
    _check_time(manifest, now, max_clock_skew)
    _check_link(manifest, previous, contiguous=require_contiguous)


def verify_chain(
    chain: Sequence[SignedManifest],
    public_key: Ed25519PublicKey | bytes,
    *,
    expected_node: str,
    previous: Manifest | None,
    now: int,
    max_clock_skew: int = DEFAULT_CLOCK_SKEW,
) -> None:
    """Verify consecutive manifests that follow ``previous``, each naming the one before it.

    Every manifest's signature, node and link are checked; only the last must be within its validity
    window (the others are history). With ``previous=None`` the first manifest of the chain is trusted
    on its signature alone.

    Raises:
        The errors of :func:`verify_manifest`; ChainError for a gap or a broken link; InputError if
        ``chain`` is empty.
    """
    if not chain:
        raise InputError("an empty manifest chain proves nothing")
    raw = public_key if isinstance(public_key, bytes) else public_key.public_bytes_raw()
    raw = key_after(previous, raw)
    last = previous
    for signed in chain:
        manifest = _check_signed(signed, _public_key(raw), expected_node)
        _check_link(manifest, last, contiguous=True)
        raw = key_after(manifest, raw)  # a manifest may announce the key of those after it
        last = manifest
    _check_time(chain[-1].manifest, now, max_clock_skew)


def _entry(manifest: Manifest, kind: str, tier: int) -> FilterEntry:
    entry = manifest.entry(kind, tier)
    if entry is None:
        raise FilterMismatchError(
            f"manifest {manifest.version} of {manifest.node_id} lists no filter for {kind} tier {tier}"
        )
    return entry


def verify_filter(
    manifest: Manifest,
    kind: str,
    tier: int,
    filter_bytes: bytes,
    *,
    identify: Callable[[bytes], FilterIdentity] | None = None,
) -> None:
    """Check that ``filter_bytes`` is the filter the manifest signs for (``kind``, ``tier``).

    ``identify``, when given, parses the filter header (the filter codec's job) so that another node's
    filter is reported as such before its hash is compared.

    Raises:
        WrongNodeError: the filter header names another node.
        FilterMismatchError: no such entry, a header with another epoch, kind or tier, or another hash.
    """
    entry = _entry(manifest, kind, tier)
    if identify is not None:
        ident = identify(filter_bytes)
        if ident.node_id != manifest.node_id:
            raise WrongNodeError(f"filter belongs to node {ident.node_id}, manifest to {manifest.node_id}")
        if (ident.epoch, ident.kind, ident.tier) != (manifest.epoch, kind, tier):
            raise FilterMismatchError(
                f"filter header says epoch {ident.epoch} {ident.kind} tier {ident.tier}, manifest expects"
                f" epoch {manifest.epoch} {kind} tier {tier}"
            )
    if not hmac.compare_digest(hashlib.sha256(filter_bytes).digest(), entry.filter_sha256):
        raise FilterMismatchError(
            f"{kind} tier {tier} filter of {manifest.node_id} differs from manifest {manifest.version}"
        )


def verify_bucket(
    manifest: Manifest, kind: str, tier: int, bucket: int, bucket_bytes: bytes, proof: Sequence[bytes]
) -> None:
    """Check one encoded metadata bucket against the manifest's ``buckets_root`` with its inclusion proof.

    Raises:
        FilterMismatchError: no such entry, a bucket id out of range, or a proof that does not verify.
    """
    entry = _entry(manifest, kind, tier)
    size = 1 << entry.prefix_bits
    if not _is_int(bucket) or not 0 <= bucket < size:
        raise FilterMismatchError(f"bucket {bucket!r} is not one of the {size} buckets of {kind} tier {tier}")
    try:
        verify_inclusion(bucket_bytes, bucket, size, proof, entry.buckets_root)
    except InclusionProofError as exc:
        raise FilterMismatchError(
            f"metadata bucket {bucket} of {kind} tier {tier} does not match manifest {manifest.version}"
            f" of {manifest.node_id}: {exc}"
        ) from exc


def expected_records_size(count: int, prefix_bits: int) -> int:
    """The size of a record set of ``count`` records in ``2**prefix_bits`` buckets (record format 1:
    every record is 62 bytes, every bucket header 5)."""
    return (1 << prefix_bits) * BUCKET_HEADER_SIZE + count * RECORD_SIZE


def check_plausible(manifest: Manifest) -> None:
    """Refuse a manifest no honest publisher signs (docs/PROTOCOL.md, "Reader-side plausibility").

    Every entry must cut its records into at most as many buckets as it has records
    (``2**bucket_bits <= max(1, count)``): buckets sized for deltas, never a bucket per candidate value
    (in version 1, where a hit fetched its bucket, that let a holder name the value checked). And its
    ``records_size`` must be that of ``count`` records in those buckets, so the records a peer downloads
    are exactly one per indicator. The filter's own header is checked at sync (:func:`check_filter_header`).

    Raises:
        ImplausibleError: naming the entry and the rule it breaks.
    """
    for e in manifest.entries:
        if (1 << e.prefix_bits) > max(1, e.count):
            raise ImplausibleError(
                f"{manifest.node_id} manifest {manifest.version}: {e.kind} tier {e.tier} cuts {e.count} "
                f"records into 2^{e.prefix_bits} buckets, more buckets than records"
            )
        expected = expected_records_size(e.count, e.prefix_bits)
        if e.records_size != expected:
            raise ImplausibleError(
                f"{manifest.node_id} manifest {manifest.version}: {e.kind} tier {e.tier} announces "
                f"{e.records_size} bytes of records; {e.count} records in 2^{e.prefix_bits} buckets "
                f"are {expected}"
            )


def verify_records(manifest: Manifest, kind: str, tier: int, data: bytes) -> RecordSet:
    """Check a downloaded record set against the manifest and return it, ready for lookups.

    The set is parsed strictly (every bucket in order, every tag in its bucket), its size and number of
    records must be those the entry announces, and the Merkle root of its buckets the one it signs.

    Raises:
        FilterMismatchError: no such entry, another size, count or root.
        EncodingError: the bytes are not a record set.
    """
    entry = _entry(manifest, kind, tier)
    if len(data) != entry.records_size:
        raise FilterMismatchError(
            f"{kind} tier {tier} records of {manifest.node_id}: {len(data)} bytes, manifest "
            f"{manifest.version} announces {entry.records_size}"
        )
    records = RecordSet.from_bytes(data, entry.prefix_bits)
    if records.count != entry.count:
        raise FilterMismatchError(
            f"{kind} tier {tier} records of {manifest.node_id}: {records.count} records, manifest "
            f"{manifest.version} counts {entry.count}"
        )
    if not hmac.compare_digest(records.root(), entry.buckets_root):
        raise FilterMismatchError(
            f"{kind} tier {tier} records of {manifest.node_id} differ from manifest {manifest.version}"
        )
    return records


#: The highest false-positive rate a published filter may declare: above it, hits that open no record are
#: too common for the plausibility alert to tell a stuffed filter from chance.
MAX_DECLARED_FPR: Final = 1e-3


#: How many standard deviations more bits than its count explains a filter may have set.
MAX_EXCESS_FILL: Final = 8.0


def check_filter_header(
    manifest: Manifest, kind: str, tier: int, *, n: int, declared_fpr: float, excess_fill: float
) -> None:
    """Refuse a filter whose header does not count the manifest's indicators, that declares a
    false-positive rate above :data:`MAX_DECLARED_FPR` (which would hide a stuffed filter), or that has
    far more bits set than its count explains (:meth:`client.protocol.bloom.BloomFilter.excess_fill`:
    it holds values it does not count, and has no records for).

    Raises:
        ImplausibleError: naming the filter and the rule it breaks.
    """
    entry = _entry(manifest, kind, tier)
    if n != entry.count:
        raise ImplausibleError(
            f"{kind} tier {tier} filter of {manifest.node_id} counts {n} indicators, manifest "
            f"{manifest.version} {entry.count}"
        )
    if not declared_fpr <= MAX_DECLARED_FPR:
        raise ImplausibleError(
            f"{kind} tier {tier} filter of {manifest.node_id} declares a false-positive rate of "
            f"{declared_fpr:.3g}, above {MAX_DECLARED_FPR:g}"
        )
    if excess_fill > MAX_EXCESS_FILL:
        raise ImplausibleError(
            f"{kind} tier {tier} filter of {manifest.node_id} has {excess_fill:.0f} standard deviations "
            f"more bits set than {n} indicators set: it holds values it does not count"
        )
