"""Petanda's Bloom filter: a format specified to the bit, built and queried with numpy.

A node publishes one filter per (kind, tier, epoch) holding the digests of its indicators (HMAC-SHA256
outputs, 32 bytes, or OPRF outputs, 64 bytes). Digests are already uniformly random and keyed, so the
bit positions are taken from the digest itself, by Kirsch–Mitzenmacher double hashing::

    h1 = LE-uint64(digest[0:8])
    h2 = LE-uint64(digest[8:16]) | 1
    position_i = ((h1 + i * h2) mod 2**64) mod m        for i in 0 .. k-1

``docs/PROTOCOL.md`` specifies the serialised form byte by byte, and
``tests/vectors/bloom.json`` pins it with known answers. No pickling, no library-private layout: a
reimplementation in another language needs only that document.

Parsing (:meth:`BloomFilter.from_bytes`) validates every field and refuses with
:class:`~client.protocol.errors.EncodingError` naming the field. It also refuses a filter whose bits promise
more
matches than it could honestly hold (more set bits than ``n * k``, or an estimated false-positive rate
above ``max_fpr``): a saturated filter would make a client ask its publisher for the metadata of every
digest it tests, handing over outputs the publisher can brute-force with its own key.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from client.protocol.errors import EncodingError, InputError
from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF, kind_code

__all__ = [
    "CAPACITY_MIN",
    "DEFAULT_MAX_FPR",
    "DIGEST_LEN",
    "FORMAT_VERSION",
    "HEADER_FIXED_LEN",
    "K_MAX",
    "MAGIC",
    "M_MIN",
    "BloomBuilder",
    "BloomFilter",
    "CountingBloom",
    "Digests",
    "bloom_parameters",
    "bloom_positions",
    "filter_capacity",
    "splice",
]

#: The first four bytes of every serialised filter.
MAGIC: Final = b"PTBF"
#: Version of the serialised format described in ``docs/PROTOCOL.md``.
FORMAT_VERSION: Final = 1
#: Digest length in bytes of each tier: OPRF (ristretto255-SHA512) outputs and HMAC-SHA256 outputs.
DIGEST_LEN: Final[dict[int, int]] = {TIER_OPRF: 64, TIER_HMAC: 32}
#: Smallest bit array a filter may have (also the size of an empty filter's).
M_MIN: Final = 64
#: Largest number of bit positions per item (k = 64 is p ≈ 5e-20: anything above is a broken header).
K_MAX: Final = 64
#: Refuse, by default, a parsed filter whose estimated false-positive rate (fill ratio ** k) is above this.
DEFAULT_MAX_FPR: Final = 1e-3
#: Length of the header up to (not including) the node id.
HEADER_FIXED_LEN: Final = 30

#: Digests as a sequence of byte strings, one buffer of concatenated digests, or a 2-D uint8 array.
Digests: TypeAlias = "Sequence[bytes] | bytes | bytearray | memoryview | npt.NDArray[np.uint8]"

_HEADER: Final = struct.Struct("<4sBBBBBBIQQ")
assert _HEADER.size == HEADER_FIXED_LEN
_NODE_ID_RE: Final = re.compile(r"[A-Z0-9-]{1,16}")
_NODE_ID_MAX: Final = 16
_U32_MAX: Final = 2**32 - 1
_U64_MASK: Final = 2**64 - 1
_LN2: Final = math.log(2.0)
# Digests per chunk in the vectorised loops: the chunk's uint64 temporaries stay in the L2 cache.
_CHUNK: Final = 1 << 15
_POPCOUNT8: Final = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


#: The smallest capacity a publisher sizes a filter for.
CAPACITY_MIN: Final = 1024


def filter_capacity(n: int) -> int:
    """The capacity a publisher sizes a filter of ``n`` items for: the next power of two, at least
    :data:`CAPACITY_MIN`. The filter's size changes only when its count crosses a power of two (at the
    cost of up to twice the bits of an exact fit: the record set, ~62 bytes an item, dominates anyway)."""
    return max(CAPACITY_MIN, 1 << max(0, n - 1).bit_length())


def bloom_parameters(n: int, p: float) -> tuple[int, int]:
    """Return ``(m, k)``, the bit count and positions per item of a filter for ``n`` items at rate ``p``.

    ``m0 = ceil(-n' ln p / (ln 2)**2)`` and ``k = max(1, floor(m0 / n' * ln 2 + 0.5))`` with
    ``n' = max(n, 1)``; ``m`` is ``m0`` rounded up to a whole number of bytes and to at least
    :data:`M_MIN`. ``k`` comes from ``m0``, not the rounded ``m``, so tiny filters do not get absurd k.
    Readers never recompute these: they use the ``m`` and ``k`` written in the header.

    Raises:
        InputError: ``n`` is negative, ``p`` is not in (0, 1), or ``p`` is so small that ``k > K_MAX``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InputError(f"bloom filter n: must be a non-negative integer, got {n!r}")
    if not isinstance(p, float | int) or not 0.0 < p < 1.0:
        raise InputError(f"bloom filter p: must be a false-positive rate in (0, 1), got {p!r}")
    n_eff = max(n, 1)
    m0 = math.ceil(-n_eff * math.log(p) / (_LN2 * _LN2))
    k = max(1, math.floor(m0 / n_eff * _LN2 + 0.5))
    if k > K_MAX:
        raise InputError(f"bloom filter p: {p!r} needs k = {k} > {K_MAX} positions per item")
    m = max(M_MIN, -(-m0 // 8) * 8)
    return m, k


def bloom_positions(digest: bytes, m: int, k: int) -> list[int]:
    """Return the ``k`` bit positions of ``digest`` in a filter of ``m`` bits (the normative definition)."""
    if len(digest) < 16:
        raise InputError(f"bloom digest: needs at least 16 bytes, got {len(digest)}")
    h1 = int.from_bytes(digest[0:8], "little")
    h2 = int.from_bytes(digest[8:16], "little") | 1
    return [((h1 + i * h2) & _U64_MASK) % m for i in range(k)]


def _digest_matrix(digests: Digests, digest_len: int) -> npt.NDArray[np.uint64]:
    """View ``digests`` as an (N, 2) array of native uint64: the little-endian words h1 and h2 (unforced)."""
    words = digest_len // 8
    if isinstance(digests, np.ndarray):
        if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != digest_len:
            raise InputError(
                f"bloom digests: expected a uint8 array of shape (N, {digest_len}), "
                f"got {digests.dtype} {digests.shape}"
            )
        raw = np.ascontiguousarray(digests).view("<u8").reshape(-1, words)
    elif isinstance(digests, bytes | bytearray | memoryview):
        buf = memoryview(digests).cast("B")
        if len(buf) % digest_len:
            raise InputError(
                f"bloom digests: a buffer of {len(buf)} bytes is not a whole number of "
                f"{digest_len}-byte digests"
            )
        raw = np.frombuffer(buf, dtype="<u8").reshape(-1, words)
    else:
        if set(map(type, digests)) - {bytes} or set(map(len, digests)) - {digest_len}:
            for index, digest in enumerate(digests):
                if not isinstance(digest, bytes) or len(digest) != digest_len:
                    got = f"{len(digest)} bytes" if isinstance(digest, bytes) else type(digest).__name__
                    raise InputError(f"bloom digest #{index}: expected {digest_len} bytes, got {got}")
        raw = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, words)
    return raw[:, :2].astype(np.uint64)


def _positions(h: npt.NDArray[np.uint64], m: int, k: int) -> npt.NDArray[np.uint64]:
    """The ``k`` bit positions of each digest of ``h`` ((N, 2) words h1, h2), flat (position i of every
    digest, then i + 1)."""
    mm = np.uint64(m)
    x = h[:, 0].copy()
    h2 = h[:, 1] | np.uint64(1)
    positions = np.empty((k, x.shape[0]), dtype=np.uint64)
    for i in range(k):
        positions[i] = x % mm
        x += h2  # uint64 arithmetic wraps mod 2**64, as the format requires
    return positions.ravel()


def splice(data: bytes, bits: npt.NDArray[np.uint8], n: int) -> bytes:
    """A serialised filter ``data`` with its bit array replaced by ``bits`` and its count by ``n``, every
    other header field kept: a publisher updating its last filter, without parsing or counting its bits.

    Raises:
        InputError: ``data`` is not a filter's header and bit array, or ``bits`` is not ``m / 8`` bytes.
    """
    if len(data) < HEADER_FIXED_LEN or data[:4] != MAGIC:
        raise InputError("bloom filter to splice: not a serialised filter")
    magic, version, code, tier, digest_len, k, id_len, epoch, m, _ = _HEADER.unpack_from(data)
    bits_at = HEADER_FIXED_LEN + id_len
    if len(data) != bits_at + m // 8 or bits.dtype != np.uint8 or bits.shape != (m // 8,):
        raise InputError(f"bloom filter to splice: {bits.shape} bits for a filter of m = {m}")
    header = _HEADER.pack(magic, version, code, tier, digest_len, k, id_len, epoch, m, n)
    return header + data[HEADER_FIXED_LEN:bits_at] + bits.tobytes()


def _check_header(kind: str, tier: int, epoch: int, node_id: str) -> None:
    """Refuse header fields a filter cannot carry (the same checks for a builder and a whole build)."""
    kind_code(kind)
    if isinstance(tier, bool) or tier not in DIGEST_LEN:
        raise InputError(f"bloom filter tier: must be TIER_OPRF (1) or TIER_HMAC (2), got {tier!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _U32_MAX:
        raise InputError(f"bloom filter epoch: must be an integer in 0..2**32-1, got {epoch!r}")
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id):
        raise InputError(f"bloom filter node id: must be 1..16 characters of [A-Z0-9-], got {node_id!r}")


class BloomBuilder:
    """A filter built in chunks: :meth:`add` sets the bits of a batch of digests, :meth:`finish` returns
    the :class:`BloomFilter`. Memory is the bit array alone (``m / 8`` bytes) and one chunk, whatever the
    number of digests: a publisher streams millions of them from its store in batches. The result is
    the filter :meth:`BloomFilter.build` gives for the same digests and ``capacity``.
    """

    __slots__ = ("_bits", "_epoch", "_k", "_kind", "_m", "_n", "_node_id", "_tier")

    def __init__(self, *, capacity: int, p: float, kind: str, tier: int, epoch: int, node_id: str) -> None:
        _check_header(kind, tier, epoch, node_id)
        self._m, self._k = bloom_parameters(capacity, p)
        self._bits = np.zeros(self._m // 8, dtype=np.uint8)
        self._n = 0
        self._kind, self._tier, self._epoch, self._node_id = kind, tier, epoch, node_id

    def add(self, digests: Digests) -> None:
        """Set the bits of ``digests`` (each ``DIGEST_LEN[tier]`` bytes; duplicates count in n)."""
        self.add_words(_digest_matrix(digests, DIGEST_LEN[self._tier]))

    def add_words(self, h: npt.NDArray[np.uint64]) -> None:
        """Set the bits of digests given as their (N, 2) little-endian words h1, h2."""
        for start in range(0, h.shape[0], _CHUNK):
            flat = _positions(h[start : start + _CHUNK], self._m, self._k)
            masks = np.left_shift(np.uint8(1), (flat & np.uint64(7)).astype(np.uint8))
            np.bitwise_or.at(self._bits, flat >> np.uint64(3), masks)
        self._n += h.shape[0]

    @property
    def n(self) -> int:
        """How many digests were added."""
        return self._n

    def finish(self) -> BloomFilter:
        """The filter of every digest added (the builder must not be used after)."""
        bits, self._bits = self._bits, np.zeros(0, dtype=np.uint8)
        return BloomFilter(
            bits=bits, m=self._m, k=self._k, n=self._n, kind=self._kind, tier=self._tier,
            epoch=self._epoch, node_id=self._node_id,
        )  # fmt: skip


_NIBBLE: Final = 15
_KEEP: Final = {0: np.uint8(0xF0), 4: np.uint8(0x0F)}  # the other nibble of a byte


class CountingBloom:
    """How many digests set each bit of a filter of ``m`` bits and ``k`` positions: four bits a counter,
    two counters a byte (``m / 2`` bytes; counter j is the low nibble of byte j // 2 when j is even).

    A publisher keeps it beside its last filter so that the next filter is the previous one with the
    bits of added digests set and those of removed digests cleared where no other digest sets them:
    bit j is set iff counter j > 0, so the result is the filter a build from scratch gives for the same
    digests and ``m``, ``k`` (a test compares them). It is the publisher's own state, never sent.
    A counter above 15 (about 1e-8 likely for a whole filter at the sizes publishers choose) or below 0
    (counters not of the digests the caller thinks) is refused: the caller builds from scratch.
    """

    __slots__ = ("_c", "_k", "_m", "saturated")

    def __init__(self, m: int, k: int, counters: npt.NDArray[np.uint8] | None = None) -> None:
        if m < M_MIN or m % 8 or not 1 <= k <= K_MAX:
            raise InputError(
                f"counting bloom: m = {m} (a multiple of 8, >= {M_MIN}) and k = {k} (1..{K_MAX})"
            )
        if counters is not None and (counters.dtype != np.uint8 or counters.shape != (m // 2,)):
            raise InputError(f"counting bloom: expected {m // 2} counter bytes, got {counters.shape}")
        self._m, self._k = m, k
        self._c = np.zeros(m // 2, dtype=np.uint8) if counters is None else counters
        #: Whether a counter stopped at 15 (:meth:`update` with ``saturate``): the bits are still exact,
        #: the counters no longer are, so they must not be kept for a later update.
        self.saturated = False

    @staticmethod
    def words(digests: Digests, tier: int) -> npt.NDArray[np.uint64]:
        """Digests of ``tier`` as the (N, 2) words :meth:`update` takes (InputError for a bad length)."""
        return _digest_matrix(digests, DIGEST_LEN[tier])

    @property
    def counters(self) -> npt.NDArray[np.uint8]:
        """The packed counters (``m / 2`` bytes), as a publisher stores them."""
        return self._c

    def update(
        self,
        added: npt.NDArray[np.uint64],
        removed: npt.NDArray[np.uint64] | None = None,
        *,
        saturate: bool = False,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None:
        """Count the digests ``added`` and uncount ``removed`` (each as (N, 2) words h1, h2:
        :meth:`words`). Returns the positions whose counters changed (sorted) with whether their bit was
        set before and is set now; None, changing nothing, when a counter would leave 0..15 — unless
        ``saturate`` (a build from scratch, additions only), which stops such a counter at 15 and sets
        :attr:`saturated`."""
        parts = [_positions(added, self._m, self._k)]
        if removed is not None and removed.shape[0]:
            parts.append(_positions(removed, self._m, self._k))
        if len(parts) == 1:
            where, counts = np.unique(parts[0], return_counts=True)
            delta = counts.astype(np.int16)
        else:
            signs = np.concatenate([np.ones(parts[0].shape[0]), -np.ones(parts[1].shape[0])])
            where, inverse = np.unique(np.concatenate(parts), return_inverse=True)
            delta = np.rint(np.bincount(inverse, weights=signs, minlength=where.shape[0])).astype(np.int16)
            moved = delta != 0
            where, delta = where[moved], delta[moved]
        byte = (where >> np.uint64(1)).astype(np.intp)
        shift = ((where & np.uint64(1)) << np.uint64(2)).astype(np.uint8)
        old = ((self._c[byte] >> shift) & np.uint8(_NIBBLE)).astype(np.int16)
        new = old + delta
        if new.size and (int(new.min()) < 0 or int(new.max()) > _NIBBLE):
            if not saturate or removed is not None:
                return None
            self.saturated = True
            new = np.minimum(new, _NIBBLE)
        for parity, keep in _KEEP.items():
            sel = shift == parity
            at = byte[sel]
            self._c[at] = (self._c[at] & keep) | (new[sel].astype(np.uint8) << np.uint8(parity))
        return where, old > 0, new > 0

    def bits(self) -> npt.NDArray[np.uint8]:
        """The filter's packed bit array (``m / 8`` bytes, LSB first): bit j set iff counter j > 0."""
        out = np.empty(self._m // 8, dtype=np.uint8)
        step = 1 << 20  # counter bytes a pass: 2 Mi positions, whole output bytes
        for start in range(0, self._c.shape[0], step):
            chunk = self._c[start : start + step]
            nonzero = np.empty(2 * chunk.shape[0], dtype=np.bool_)
            nonzero[0::2] = (chunk & np.uint8(_NIBBLE)) != 0
            nonzero[1::2] = (chunk >> np.uint8(4)) != 0
            out[start // 4 : start // 4 + chunk.shape[0] // 4] = np.packbits(nonzero, bitorder="little")
        return out

    @staticmethod
    def patch(
        bits: npt.NDArray[np.uint8],
        where: npt.NDArray[np.uint64],
        before: npt.NDArray[np.bool_],
        after: npt.NDArray[np.bool_],
    ) -> bool:
        """Set or clear, in the packed ``bits`` of the previous filter, the bits :meth:`update` changed;
        False (``bits`` untouched) when a bit there was not what the counters said: the counters are
        not those of that filter."""
        byte = (where >> np.uint64(3)).astype(np.intp)
        mask = np.left_shift(np.uint8(1), (where & np.uint64(7)).astype(np.uint8))
        if not np.array_equal((bits[byte] & mask) != 0, before):
            return False
        np.bitwise_or.at(bits, byte[after], mask[after])
        np.bitwise_and.at(bits, byte[~after], ~mask[~after])
        return True


class BloomFilter:
    """An immutable Bloom filter of fixed-length digests, with its header (kind, tier, epoch, node id).

    Build one with :meth:`build`, parse one with :meth:`from_bytes`; the constructor is internal and
    trusts its arguments.
    """

    __slots__ = (
        "_bits",
        "_epoch",
        "_k",
        "_kind",
        "_m",
        "_n",
        "_node_id",
        "_popcount",
        "_serialised",
        "_tier",
        "_view",
        "_words_cache",
    )

    def __init__(
        self,
        *,
        bits: npt.NDArray[np.uint8],
        m: int,
        k: int,
        n: int,
        kind: str,
        tier: int,
        epoch: int,
        node_id: str,
    ) -> None:
        bits.flags.writeable = False
        self._bits = bits
        self._m = m
        self._k = k
        self._n = n
        self._kind = kind
        self._tier = tier
        self._epoch = epoch
        self._node_id = node_id
        self._popcount = int(_POPCOUNT8[bits].sum(dtype=np.uint64))
        self._serialised: bytes | None = None
        self._view = bits.data
        self._words_cache: npt.NDArray[np.uint64] | None = None

    # --- construction -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        digests: Digests,
        *,
        p: float,
        kind: str,
        tier: int,
        epoch: int,
        node_id: str,
        capacity: int = 0,
    ) -> BloomFilter:
        """Build a filter holding ``digests``, sized by :func:`bloom_parameters` for their count and ``p``
        (for ``capacity`` items when that is larger: a publisher sizes by :func:`filter_capacity`, so the
        filter keeps its size, and an incremental sync moves only the bits that changed).

        Args:
            digests: the items, each ``DIGEST_LEN[tier]`` bytes; duplicates are not removed and count in n.
            p: the target false-positive rate, in (0, 1).
            kind: the indicator kind name (one of :data:`client.protocol.kinds.KINDS`).
            tier: :data:`~client.protocol.kinds.TIER_OPRF` or :data:`~client.protocol.kinds.TIER_HMAC`.
            epoch: the key epoch the digests were computed under, 0 .. 2**32-1.
            node_id: the publishing node, 1..16 characters of ``[A-Z0-9-]`` (an ISO 3166-1 alpha-2 code).

        Raises:
            InputError: an argument or digest is malformed.
            UnknownKind: ``kind`` is not an indicator kind.
        """
        _check_header(kind, tier, epoch, node_id)
        h = _digest_matrix(digests, DIGEST_LEN[tier])
        builder = BloomBuilder(
            capacity=max(h.shape[0], capacity), p=p, kind=kind, tier=tier, epoch=epoch, node_id=node_id
        )
        builder.add_words(h)
        return builder.finish()

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, *, max_fpr: float = DEFAULT_MAX_FPR
    ) -> BloomFilter:
        """Parse and validate a serialised filter.

        Args:
            data: the exact bytes of one filter, nothing before or after.
            max_fpr: refuse a filter whose estimated false-positive rate (fill ratio ** k) exceeds this;
                1.0 accepts any fill.

        Raises:
            EncodingError: a field is malformed, inconsistent with another, or the filter is saturated;
                the message names the field.
        """
        data = bytes(data)
        if len(data) < HEADER_FIXED_LEN:
            raise EncodingError(f"bloom filter header: truncated, {len(data)} of {HEADER_FIXED_LEN} bytes")
        magic, version, code, tier, digest_len, k, id_len, epoch, m, n = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise EncodingError(f"bloom filter magic: expected {MAGIC!r}, got {magic!r}")
        if version != FORMAT_VERSION:
            raise EncodingError(f"bloom filter version: unsupported {version}, expected {FORMAT_VERSION}")
        if not 1 <= code <= len(KINDS):
            raise EncodingError(f"bloom filter kind: unknown code {code}")
        if tier not in DIGEST_LEN:
            raise EncodingError(f"bloom filter tier: unknown code {tier}")
        if digest_len != DIGEST_LEN[tier]:
            raise EncodingError(
                f"bloom filter digest length: {digest_len} does not match tier {tier} ({DIGEST_LEN[tier]})"
            )
        if not 1 <= k <= K_MAX:
            raise EncodingError(f"bloom filter k: {k} is outside 1..{K_MAX}")
        if not 1 <= id_len <= _NODE_ID_MAX:
            raise EncodingError(f"bloom filter node id length: {id_len} is outside 1..{_NODE_ID_MAX}")
        if m < M_MIN or m % 8:
            raise EncodingError(f"bloom filter m: {m} is not a multiple of 8 of at least {M_MIN}")
        bits_at = HEADER_FIXED_LEN + id_len
        if len(data) < bits_at:
            raise EncodingError(
                f"bloom filter node id: truncated, {len(data) - HEADER_FIXED_LEN} of {id_len} bytes"
            )
        raw_id = data[HEADER_FIXED_LEN:bits_at]
        node_id = raw_id.decode("ascii", errors="replace")
        if not _NODE_ID_RE.fullmatch(node_id):
            raise EncodingError(f"bloom filter node id: {raw_id!r} is not 1..16 characters of [A-Z0-9-]")
        have = len(data) - bits_at
        if have < m // 8:
            raise EncodingError(f"bloom filter bit array: truncated, {have} of m/8 = {m // 8} bytes")
        if have > m // 8:
            raise EncodingError(f"bloom filter: {have - m // 8} trailing bytes after the bit array (m = {m})")
        bits = np.frombuffer(data, dtype=np.uint8, offset=bits_at)
        bloom = cls(bits=bits, m=m, k=k, n=n, kind=KINDS[code - 1], tier=tier, epoch=epoch, node_id=node_id)
        if bloom._popcount > n * k:
            raise EncodingError(
                f"bloom filter bit array: {bloom._popcount} bits set, more than n*k = {n * k}"
            )
        if bloom.estimated_fpr > max_fpr:
            raise EncodingError(
                f"bloom filter bit array: estimated false-positive rate {bloom.estimated_fpr:.3g} "
                f"exceeds the limit {max_fpr:.3g} (saturated filter)"
            )
        bloom._serialised = data
        return bloom

    # --- serialisation ------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Return the serialised filter: the header of ``docs/PROTOCOL.md`` and the bit array."""
        if self._serialised is None:
            node_id = self._node_id.encode("ascii")
            header = _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                kind_code(self._kind),
                self._tier,
                DIGEST_LEN[self._tier],
                self._k,
                len(node_id),
                self._epoch,
                self._m,
                self._n,
            )
            self._serialised = header + node_id + self._bits.tobytes()
        return self._serialised

    def sha256(self) -> bytes:
        """Return SHA-256 of :meth:`to_bytes`, the value a manifest signs for this filter."""
        return hashlib.sha256(self.to_bytes()).digest()

    # --- membership ---------------------------------------------------------------------------------

    def contains(self, digest: bytes) -> bool:
        """Return whether ``digest`` may be in the filter (never False for a member)."""
        if not isinstance(digest, bytes) or len(digest) != self.digest_len:
            got = f"{len(digest)} bytes" if isinstance(digest, bytes) else type(digest).__name__
            raise InputError(f"bloom digest: expected {self.digest_len} bytes, got {got}")
        bits, m = self._view, self._m
        x = int.from_bytes(digest[0:8], "little")
        h2 = int.from_bytes(digest[8:16], "little") | 1
        for _ in range(self._k):
            position = x % m
            if not (bits[position >> 3] >> (position & 7)) & 1:
                return False
            x = (x + h2) & _U64_MASK
        return True

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, bytes) and len(digest) == self.digest_len and self.contains(digest)

    def contains_many(self, digests: Digests) -> npt.NDArray[np.bool_]:
        """Return, for each digest, whether it may be in the filter, as a boolean array (vectorised).

        Args:
            digests: a sequence of ``digest_len``-byte strings, their concatenation, or a uint8 array of
                shape (N, digest_len); the buffer and array forms avoid a copy.

        Raises:
            InputError: a digest has the wrong length.
        """
        h = _digest_matrix(digests, self.digest_len)
        out = np.zeros(h.shape[0], dtype=np.bool_)
        words = self._words()
        mm = np.uint64(self._m)
        six = np.uint64(6)
        low6 = np.uint64(63)
        one = np.uint64(1)
        for start in range(0, h.shape[0], _CHUNK):
            x = h[start : start + _CHUNK, 0].copy()
            h2 = h[start : start + _CHUNK, 1] | one
            alive = np.arange(start, start + x.shape[0])
            for _ in range(self._k):
                pos = x % mm
                keep = ((words[pos >> six] >> (pos & low6)) & one).astype(np.bool_)
                if not keep.all():
                    alive = alive[keep]
                    if not alive.size:
                        break
                    x = x[keep]
                    h2 = h2[keep]
                x += h2
            out[alive] = True
        return out

    def _words(self) -> npt.NDArray[np.uint64]:
        """Return the bit array as native uint64 words: bit j is bit j % 64 of word j // 64 (LSB-first)."""
        if self._words_cache is None:
            padded = np.zeros(-(-self._m // 64) * 8, dtype=np.uint8)
            padded[: self._bits.shape[0]] = self._bits
            self._words_cache = padded.view("<u8").astype(np.uint64)
        return self._words_cache

    # --- header and statistics ----------------------------------------------------------------------

    @property
    def m(self) -> int:
        """Number of bits in the bit array (a multiple of 8, at least :data:`M_MIN`)."""
        return self._m

    @property
    def k(self) -> int:
        """Number of bit positions per item."""
        return self._k

    @property
    def n(self) -> int:
        """Number of digests inserted, as the publisher declares it."""
        return self._n

    @property
    def kind(self) -> str:
        """Indicator kind name of the digests (one of :data:`client.protocol.kinds.KINDS`)."""
        return self._kind

    @property
    def tier(self) -> int:
        """Digest tier code: :data:`~client.protocol.kinds.TIER_OPRF` or
        :data:`~client.protocol.kinds.TIER_HMAC`."""
        return self._tier

    @property
    def epoch(self) -> int:
        """Key epoch the digests were computed under."""
        return self._epoch

    @property
    def node_id(self) -> str:
        """Identifier of the publishing node."""
        return self._node_id

    @property
    def digest_len(self) -> int:
        """Length in bytes of every digest of this filter's tier."""
        return DIGEST_LEN[self._tier]

    @property
    def popcount(self) -> int:
        """Number of bits set."""
        return self._popcount

    @property
    def fill_ratio(self) -> float:
        """Fraction of bits set."""
        return self._popcount / self._m

    @property
    def declared_fpr(self) -> float:
        """False-positive rate its header declares: ``(1 - e^(-k n / m)) ** k`` for its n, m and k."""
        return float((1 - math.exp(-self._k * self.n / self.m)) ** self._k) if self.n else 0.0

    def excess_fill(self) -> float:
        """How many standard deviations more bits are set than ``n`` distinct items set on average: an
        honest filter is near 0 or below; one holding more items than its header counts is far above."""
        m, kn = self.m, self._k * self.n
        p = 1 - (1 - 1 / m) ** kn
        sd = math.sqrt(max(m * p * (1 - p), 1.0))
        return (self.popcount - m * p) / sd

    @property
    def estimated_fpr(self) -> float:
        """False-positive rate of a random non-member given this filter's actual fill: ``fill ** k``."""
        return self.fill_ratio**self._k

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BloomFilter):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"BloomFilter(kind={self._kind!r}, tier={self._tier}, epoch={self._epoch}, "
            f"node_id={self._node_id!r}, n={self._n}, m={self._m}, k={self._k}, fill={self.fill_ratio:.4f})"
        )
