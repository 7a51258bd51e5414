"""RFC 9497 OPRF (mode 0x00) and VOPRF (mode 0x01), ciphersuite ristretto255-SHA512, on libsodium.

Pure functions over bytes, batch first (a node evaluates batches of thousands). Group elements and
scalars are their 32-byte RFC 9496 / little-endian encodings; outputs are 64-byte SHA-512 digests.
Names follow RFC 9497: :func:`blind`, :func:`blind_evaluate`, :func:`blind_evaluate_verifiable`,
:func:`finalize`, :func:`evaluate`, :func:`derive_key_pair`, :func:`generate_proof`,
:func:`verify_proof`. ``docs/PROTOCOL.md`` is the specification and
``tests/vectors/rfc9497-ristretto255-sha512.json`` pins every function to the RFC's test vectors.

Group operations run in libsodium (>= 1.0.18) through the ``ctypes`` handle that ``pysodium`` loads.
The hot paths call that handle directly with one preallocated output buffer per batch instead of
pysodium's wrappers (which allocate a buffer and check lengths on every call). Measured by
``bench/bench_oprf.py``, the direct call is faster but only by about 1 µs of a 57 µs scalar
multiplication (2 %); the larger gain is that a failed decoding surfaces as our own
:class:`~client.protocol.errors.EncodingError` naming the batch index, not pysodium's ``ValueError``.
``ctypes`` releases the GIL during each libsodium call, so ``workers=2`` splits a batch over threads
and runs on two cores.

Errors: a wrong local value (key, blind, mode, input length, argument shape) raises
:class:`~client.protocol.errors.InputError`; bytes received from another party that are not a valid,
non-identity
element or a canonical scalar raise :class:`~client.protocol.errors.EncodingError`; a DLEQ proof that does not
verify raises :class:`~client.protocol.errors.ProofError`.

One module of this size: RFC 9497's client, server and proof over one binding of libsodium, which stays
private to it.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pysodium

from client.protocol.errors import EncodingError, InputError, ProofError

__all__ = [
    "ELEMENT_LENGTH",
    "MAX_BATCH",
    "MAX_INPUT_LENGTH",
    "MODE_OPRF",
    "MODE_VOPRF",
    "OUTPUT_LENGTH",
    "PROOF_LENGTH",
    "SCALAR_LENGTH",
    "SUITE",
    "KeyPair",
    "blind",
    "blind_evaluate",
    "blind_evaluate_verifiable",
    "context_string",
    "derive_key_pair",
    "evaluate",
    "finalize",
    "generate_key_pair",
    "generate_proof",
    "hash_to_group",
    "hash_to_scalar",
    "public_key",
    "verify_proof",
]

#: RFC 9497 mode identifiers. Mode 0x02 (POPRF) is not implemented.
MODE_OPRF: Final = 0x00
MODE_VOPRF: Final = 0x01

#: The ciphersuite identifier of RFC 9497 §4.1.
SUITE: Final = b"ristretto255-SHA512"

#: Noe, Ns, Nh of the suite, and the length of a serialised proof (c || s).
ELEMENT_LENGTH: Final = 32
SCALAR_LENGTH: Final = 32
OUTPUT_LENGTH: Final = 64
PROOF_LENGTH: Final = 2 * SCALAR_LENGTH

#: Inputs are length-prefixed with I2OSP(len, 2); composites index elements with I2OSP(i, 2).
MAX_INPUT_LENGTH: Final = 0xFFFF
MAX_BATCH: Final = 0x10000

#: The order of the ristretto255 group.
_ORDER: Final = 2**252 + 27742317777372353535851937790883648493
_IDENTITY: Final = bytes(ELEMENT_LENGTH)
_LEN_ELEMENT: Final = ELEMENT_LENGTH.to_bytes(2, "big")
#: Below this many elements per thread, splitting a batch costs more than it saves.
_MIN_CHUNK: Final = 32

_sodium: Any = pysodium.sodium
if not hasattr(_sodium, "crypto_core_ristretto255_from_hash"):  # pragma: no cover - depends on the host
    raise RuntimeError("libsodium >= 1.0.18 with ristretto255 is required for the OPRF")
# Bound once to module names for the hot loops. No argtypes are set on these shared function objects
# (pysodium uses them too); every argument is checked to be ``bytes`` of the right length before it
# reaches C.
_scalarmult: Final = _sodium.crypto_scalarmult_ristretto255
_scalarmult_base: Final = _sodium.crypto_scalarmult_ristretto255_base
_from_hash: Final = _sodium.crypto_core_ristretto255_from_hash
_is_valid_point: Final = _sodium.crypto_core_ristretto255_is_valid_point
_point_add: Final = _sodium.crypto_core_ristretto255_add
_scalar_reduce: Final = _sodium.crypto_core_ristretto255_scalar_reduce
_scalar_random: Final = _sodium.crypto_core_ristretto255_scalar_random
_scalar_invert: Final = _sodium.crypto_core_ristretto255_scalar_invert
_scalar_mul: Final = _sodium.crypto_core_ristretto255_scalar_mul
_scalar_sub: Final = _sodium.crypto_core_ristretto255_scalar_sub


# --- suite constants -------------------------------------------------------------------------------


def _check_mode(mode: int) -> int:
    if type(mode) is int and mode in (MODE_OPRF, MODE_VOPRF):
        return mode
    raise InputError(f"OPRF mode must be 0x00 (OPRF) or 0x01 (VOPRF), not {mode!r}")


def context_string(mode: int) -> bytes:
    """Return ``"OPRFV1-" || I2OSP(mode, 1) || "-" || "ristretto255-SHA512"`` (RFC 9497 §3.1)."""
    return b"OPRFV1-" + bytes([_check_mode(mode)]) + b"-" + SUITE


class _Xmd64:
    """``expand_message_xmd`` (RFC 9380 §5.3.1) with SHA-512 and 64 output bytes, for one DST.

    With ``len_in_bytes == b_in_bytes == 64`` the output is ``b_1`` alone. The zero block ``Z_pad`` is
    absorbed once and the hash state copied per message.
    """

    __slots__ = ("_dst_prime", "_prefix", "_suffix")

    def __init__(self, dst: bytes) -> None:
        if len(dst) > 255:  # pragma: no cover - every DST of this suite is short
            raise InputError("expand_message_xmd: DST longer than 255 bytes")
        self._dst_prime = dst + bytes([len(dst)])
        self._prefix = hashlib.sha512(bytes(128))
        self._suffix = (64).to_bytes(2, "big") + b"\x00" + self._dst_prime

    def __call__(self, msg: bytes) -> bytes:
        h = self._prefix.copy()
        h.update(msg + self._suffix)
        return hashlib.sha512(h.digest() + b"\x01" + self._dst_prime).digest()


@dataclass(frozen=True, slots=True)
class _Suite:
    """Per-mode constants: context string, the three DSTs and the transcript prefixes."""

    mode: int
    context: bytes
    hash_to_group: _Xmd64
    hash_to_scalar: _Xmd64
    derive_key_pair: _Xmd64
    seed_dst: bytes


def _make_suite(mode: int) -> _Suite:
    ctx = context_string(mode)
    return _Suite(
        mode=mode,
        context=ctx,
        hash_to_group=_Xmd64(b"HashToGroup-" + ctx),
        hash_to_scalar=_Xmd64(b"HashToScalar-" + ctx),
        derive_key_pair=_Xmd64(b"DeriveKeyPair" + ctx),
        seed_dst=b"Seed-" + ctx,
    )


_SUITES: Final = {mode: _make_suite(mode) for mode in (MODE_OPRF, MODE_VOPRF)}


# --- encodings ---------------------------------------------------------------------------------------


def _i2osp2(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _scalar_is_canonical(s: bytes) -> bool:
    return int.from_bytes(s, "little") < _ORDER


def _check_secret_scalar(value: object, what: str) -> bytes:
    """A key or blind: 32 bytes, canonical (< group order) and not zero (RFC 9497 §2.1, §3.2)."""
    if type(value) is not bytes or len(value) != SCALAR_LENGTH:
        raise InputError(f"{what} must be {SCALAR_LENGTH} bytes")
    if not _scalar_is_canonical(value):
        raise InputError(f"{what} is not a canonical scalar (>= group order)")
    if value == bytes(SCALAR_LENGTH):
        raise InputError(f"{what} is zero")
    return value


def _deserialize_element(value: object, what: str) -> bytes:
    """DeserializeElement: a canonical ristretto255 encoding that is not the identity."""
    if type(value) is not bytes or len(value) != ELEMENT_LENGTH:
        raise EncodingError(f"{what} must be {ELEMENT_LENGTH} bytes")
    # libsodium 1.0.18's decoder accepts the identity (all zero bytes, its only encoding), which
    # RFC 9497 §2.1 requires us to refuse, and ignores bit 255 instead of refusing it (RFC 9496 §4.3.1:
    # s >= p is not canonical), so that two byte strings would decode to one element.
    if value[31] & 0x80:
        raise EncodingError(f"{what} is not a canonical ristretto255 encoding (bit 255 set)")
    if value == _IDENTITY:
        raise EncodingError(f"{what} is the identity element")
    if _is_valid_point(value) != 1:
        raise EncodingError(f"{what} is not a canonical ristretto255 encoding")
    return value


def _deserialize_scalar(value: bytes, what: str) -> bytes:
    if not _scalar_is_canonical(value):
        raise EncodingError(f"{what} is not a canonical scalar (>= group order)")
    return value


def _element_error(value: object, what: str) -> EncodingError:
    """Explain why ``value`` failed a scalar multiplication, which decodes and refuses identities."""
    try:
        _deserialize_element(value, what)
    except EncodingError as e:
        return e
    return EncodingError(f"{what}: scalar multiplication gave the identity")  # pragma: no cover


def _check_elements(values: Sequence[bytes], what: str) -> list[bytes]:
    """First half of DeserializeElement for a batch: type, length and bit 255 (which libsodium ignores).

    The second half, a canonical non-identity encoding, is left to the scalar multiplication that every
    element goes through next (see :func:`_mult_chunk`), which saves a decoding per element.
    """
    out = list(values)
    if not 0 < len(out) <= MAX_BATCH:
        raise InputError(f"{what}: a batch holds 1 to {MAX_BATCH} elements, not {len(out)}")
    for i, v in enumerate(out):
        if type(v) is not bytes or len(v) != ELEMENT_LENGTH or v[31] & 0x80:
            raise _element_error(v, f"{what}[{i}]")
    return out


def _check_inputs(inputs: Sequence[bytes]) -> list[bytes]:
    out = list(inputs)
    if not 0 < len(out) <= MAX_BATCH:
        raise InputError(f"inputs: a batch holds 1 to {MAX_BATCH} inputs, not {len(out)}")
    for i, x in enumerate(out):
        if type(x) is not bytes:
            raise InputError(f"inputs[{i}] must be bytes")
        if len(x) > MAX_INPUT_LENGTH:
            raise InputError(f"inputs[{i}] is longer than {MAX_INPUT_LENGTH} bytes")
    return out


def _check_same_length(n: int, other: Sequence[bytes], what: str) -> None:
    if len(other) != n:
        raise InputError(f"{what}: {len(other)} given for {n} inputs")


# --- threads ---------------------------------------------------------------------------------------

_T = TypeVar("_T")
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="petanda-oprf")
        return pool


def _split(n: int, workers: int) -> list[tuple[int, int]]:
    if type(workers) is not int or workers < 1:
        raise InputError(f"workers must be a positive integer, not {workers!r}")
    parts = max(1, min(workers, n // _MIN_CHUNK))
    step, extra = divmod(n, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + step + (p < extra)
        bounds.append((start, end))
        start = end
    return bounds


def _map_chunks(n: int, workers: int, task: Callable[[int, int], _T]) -> list[_T]:
    """Run ``task(start, end)`` over ``[0, n)`` split into up to ``workers`` chunks, in order."""
    bounds = _split(n, workers)
    if len(bounds) == 1:
        return [task(0, n)]
    pool = _pool(workers)
    futures = [pool.submit(task, start, end) for start, end in bounds]
    return [f.result() for f in futures]


def _flatten(parts: list[list[bytes]]) -> list[bytes]:
    return parts[0] if len(parts) == 1 else [x for part in parts for x in part]


# --- group and hashing ---------------------------------------------------------------------------


def hash_to_group(x: bytes, mode: int) -> bytes:
    """HashToGroup: hash_to_ristretto255 (RFC 9380) with DST ``"HashToGroup-" || contextString``."""
    suite = _SUITES[_check_mode(mode)]
    if type(x) is not bytes:
        raise InputError("HashToGroup input must be bytes")
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    _from_hash(out, suite.hash_to_group(x))
    return out.raw


def hash_to_scalar(msg: bytes, mode: int) -> bytes:
    """HashToScalar: expand_message_xmd to 64 bytes, read little-endian and reduced mod the order."""
    suite = _SUITES[_check_mode(mode)]
    if type(msg) is not bytes:
        raise InputError("HashToScalar input must be bytes")
    return _reduce(suite.hash_to_scalar(msg))


def _reduce(wide: bytes) -> bytes:
    out = ctypes.create_string_buffer(SCALAR_LENGTH)
    _scalar_reduce(out, wide)
    return out.raw


def _mult(k: bytes, element: bytes) -> bytes:
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    if _scalarmult(out, k, element) != 0:
        raise _element_error(element, "element")
    return out.raw


def _mult_base(k: bytes) -> bytes:
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    if _scalarmult_base(out, k) != 0:  # pragma: no cover - k is never zero here
        raise InputError("scalar multiplication of the generator gave the identity")
    return out.raw


def _add(a: bytes, b: bytes) -> bytes:
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    if _point_add(out, a, b) != 0:  # pragma: no cover - a and b were produced by libsodium
        raise EncodingError("point addition failed on an invalid element")
    return out.raw


def _scalar_op(op: Any, a: bytes, b: bytes) -> bytes:
    out = ctypes.create_string_buffer(SCALAR_LENGTH)
    op(out, a, b)
    return out.raw


def _random_scalar() -> bytes:
    """RandomScalar: uniform in [1, order - 1] (libsodium's scalar_random never returns zero)."""
    out = ctypes.create_string_buffer(SCALAR_LENGTH)
    _scalar_random(out)
    return out.raw


def _invert_all(scalars: list[bytes]) -> list[bytes]:
    """Invert non-zero scalars with one inversion and 3(n - 1) multiplications (Montgomery's trick)."""
    buf = ctypes.create_string_buffer(SCALAR_LENGTH)
    prefix = [scalars[0]]
    for s in scalars[1:]:
        _scalar_mul(buf, prefix[-1], s)
        prefix.append(buf.raw)
    _scalar_invert(buf, prefix[-1])
    acc = buf.raw
    out = [b""] * len(scalars)
    for i in range(len(scalars) - 1, 0, -1):
        _scalar_mul(buf, acc, prefix[i - 1])
        out[i] = buf.raw
        _scalar_mul(buf, acc, scalars[i])
        acc = buf.raw
    out[0] = acc
    return out


def _finalize_hash(x: bytes, element: bytes) -> bytes:
    return hashlib.sha512(
        _i2osp2(len(x)) + x + _LEN_ELEMENT + element + b"Finalize",
    ).digest()


# --- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A server key pair: secret scalar ``sk`` and public element ``pk = sk * G`` (32 bytes each)."""

    sk: bytes = field(repr=False)
    pk: bytes


#: Digests of the key pairs found matching, so a server pays the check once per key, not per call.
_checked_pairs: set[bytes] = set()
_CHECKED_PAIRS_MAX: Final = 64


def _check_key_pair(sk: bytes, pk: bytes) -> bytes:
    """Return ``sk`` after checking it and that ``pk = sk * G``: a mismatched pair makes proofs no
    client can verify, so it is refused here, locally, at the cost of one fixed-base multiplication
    the first time a pair is seen (a hash of the pair is remembered, never the key)."""
    k = _check_secret_scalar(sk, "secret key")
    if type(pk) is not bytes:
        raise InputError("the public key does not match the secret key")
    pair = hashlib.sha512(b"petanda key pair checked" + k + pk).digest()
    if pair in _checked_pairs:
        return k
    if not hmac.compare_digest(_mult_base(k), pk):
        raise InputError("the public key does not match the secret key")
    if len(_checked_pairs) >= _CHECKED_PAIRS_MAX:
        _checked_pairs.clear()
    _checked_pairs.add(pair)
    return k


def public_key(sk: bytes) -> bytes:
    """Return ``pk = sk * G`` for a secret key, refusing a zero or non-canonical scalar."""
    return _mult_base(_check_secret_scalar(sk, "secret key"))


def generate_key_pair() -> KeyPair:
    """GenerateKeyPair (RFC 9497 §3.2): a uniformly random non-zero secret key and its public key."""
    sk = _random_scalar()
    return KeyPair(sk, _mult_base(sk))


def derive_key_pair(seed: bytes, info: bytes, mode: int) -> KeyPair:
    """DeriveKeyPair (RFC 9497 §3.2.1): a key pair from a secret 32-byte seed and a public info string."""
    suite = _SUITES[_check_mode(mode)]
    if type(seed) is not bytes or len(seed) != 32:
        raise InputError("DeriveKeyPair: seed must be 32 bytes")
    if type(info) is not bytes or len(info) > MAX_INPUT_LENGTH:
        raise InputError(f"DeriveKeyPair: info must be bytes of at most {MAX_INPUT_LENGTH} bytes")
    derive_input = seed + _i2osp2(len(info)) + info
    for counter in range(256):
        sk = _reduce(suite.derive_key_pair(derive_input + bytes([counter])))
        if sk != bytes(SCALAR_LENGTH):
            return KeyPair(sk, _mult_base(sk))
    raise InputError("DeriveKeyPair: no non-zero scalar in 256 attempts")  # pragma: no cover


# --- client ----------------------------------------------------------------------------------------


def blind(
    inputs: Sequence[bytes],
    mode: int,
    blinds: Sequence[bytes] | None = None,
    *,
    workers: int = 1,
) -> tuple[list[bytes], list[bytes]]:
    """Blind (RFC 9497 §3.3.1): return ``(blinds, blinded_elements)`` for a batch of inputs.

    Args:
        inputs: the private inputs (``client.protocol.kinds.indicator_bytes``), each at most 65535 bytes.
        mode: :data:`MODE_OPRF` or :data:`MODE_VOPRF` (the context string enters HashToGroup).
        blinds: fixed blinds, for test vectors only; by default fresh random scalars.
        workers: threads to split the batch over.

    Raises:
        InputError: a bad mode, input, or given blind (zero or not canonical).
    """
    suite = _SUITES[_check_mode(mode)]
    xs = _check_inputs(inputs)
    if blinds is None:
        rs = [_random_scalar() for _ in xs]
    else:
        rs = list(blinds)
        _check_same_length(len(xs), rs, "blinds")
        for i, r in enumerate(rs):
            _check_secret_scalar(r, f"blinds[{i}]")
    h2g = suite.hash_to_group

    def task(start: int, end: int) -> list[bytes]:
        point = ctypes.create_string_buffer(ELEMENT_LENGTH)
        out = ctypes.create_string_buffer(ELEMENT_LENGTH)
        blinded = []
        for i in range(start, end):
            _from_hash(point, h2g(xs[i]))
            # The identity has probability ~2^-252 out of hash_to_ristretto255; the multiplication
            # refuses it, as Blind must (RFC 9497 §3.3.1, InvalidInputError).
            if _scalarmult(out, rs[i], point) != 0:  # pragma: no cover
                raise InputError(f"inputs[{i}] hashes to the identity element")
            blinded.append(out.raw)
        return blinded

    return rs, _flatten(_map_chunks(len(xs), workers, task))


def finalize(
    inputs: Sequence[bytes],
    blinds: Sequence[bytes],
    evaluated: Sequence[bytes],
    mode: int,
    *,
    blinded: Sequence[bytes] | None = None,
    pk: bytes | None = None,
    proof: bytes | None = None,
    workers: int = 1,
) -> list[bytes]:
    """Finalize (RFC 9497 §3.3.1, §3.3.2): unblind the evaluated elements and hash to 64-byte outputs.

    In :data:`MODE_VOPRF` the batch's DLEQ proof is verified first against ``pk``, which needs the
    ``blinded`` elements the client sent; nothing is returned if it fails.

    Raises:
        InputError: a bad mode, mismatched lengths, or VOPRF arguments missing.
        EncodingError: an evaluated element, the public key or the proof is not a valid encoding.
        ProofError: the proof does not verify (the server did not use the key ``pk``).
    """
    _check_mode(mode)
    xs = _check_inputs(inputs)
    rs = list(blinds)
    _check_same_length(len(xs), rs, "blinds")
    for i, r in enumerate(rs):
        _check_secret_scalar(r, f"blinds[{i}]")
    ds = _check_elements(evaluated, "evaluated elements")
    _check_same_length(len(xs), ds, "evaluated elements")
    if mode == MODE_VOPRF:
        if blinded is None or pk is None or proof is None:
            raise InputError("VOPRF finalize needs the blinded elements, the public key and the proof")
        cs = _check_elements(blinded, "blinded elements")
        _check_same_length(len(xs), cs, "blinded elements")
        verify_proof(pk, cs, ds, proof, workers=workers)
    elif blinded is not None or pk is not None or proof is not None:
        raise InputError("OPRF (mode 0x00) finalize takes no blinded elements, public key or proof")
    inverses = _invert_all(rs)

    def task(start: int, end: int) -> list[bytes]:
        out = ctypes.create_string_buffer(ELEMENT_LENGTH)
        outputs = []
        for i in range(start, end):
            if _scalarmult(out, inverses[i], ds[i]) != 0:
                raise _element_error(ds[i], f"evaluated elements[{i}]")
            outputs.append(_finalize_hash(xs[i], out.raw))
        return outputs

    return _flatten(_map_chunks(len(xs), workers, task))


# --- server ----------------------------------------------------------------------------------------


def blind_evaluate(sk: bytes, blinded: Sequence[bytes], *, workers: int = 1) -> list[bytes]:
    """BlindEvaluate of mode 0x00 (RFC 9497 §3.3.1): ``sk * C`` for every blinded element ``C``.

    Raises:
        InputError: the key is not a canonical non-zero scalar.
        EncodingError: a blinded element is not a canonical, non-identity ristretto255 encoding.
    """
    k = _check_secret_scalar(sk, "secret key")
    cs = _check_elements(blinded, "blinded elements")
    return _flatten(_map_chunks(len(cs), workers, lambda s, e: _mult_chunk(k, cs, s, e)))


def _mult_chunk(k: bytes, cs: list[bytes], start: int, end: int) -> list[bytes]:
    """``k * C[i]`` for ``i`` in ``[start, end)``: the decoding inside libsodium's scalar multiplication
    rejects non-canonical encodings, and its identity check on the product rejects the identity (k is
    non-zero in a group of prime order), so no separate validity check is needed on the hot path."""
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    mult = _scalarmult
    evaluated = []
    for i in range(start, end):
        if mult(out, k, cs[i]) != 0:
            raise _element_error(cs[i], f"blinded elements[{i}]")
        evaluated.append(out.raw)
    return evaluated


def blind_evaluate_verifiable(
    key: KeyPair,
    blinded: Sequence[bytes],
    r: bytes | None = None,
    *,
    workers: int = 1,
) -> tuple[list[bytes], bytes]:
    """BlindEvaluate of mode 0x01 (RFC 9497 §3.3.2): evaluated elements and one batched DLEQ proof.

    Args:
        key: the server's key pair; ``key.pk`` is what clients verify against.
        blinded: the client's blinded elements.
        r: the proof's randomness, for test vectors only; by default a fresh random scalar.
        workers: threads to split the batch over.

    Raises:
        InputError: the key or ``r`` is not a canonical non-zero scalar, or ``key.pk`` is not ``sk * G``.
        EncodingError: a blinded element is not a canonical, non-identity ristretto255 encoding.
    """
    k = _check_key_pair(key.sk, key.pk)
    cs = _check_elements(blinded, "blinded elements")
    suite = _SUITES[MODE_VOPRF]
    seed = _composite_seed(suite, key.pk)

    def task(start: int, end: int) -> tuple[list[bytes], bytes]:
        evaluated = _mult_chunk(k, cs, start, end)
        return evaluated, _composite_sum(suite, seed, cs, evaluated, start)[0]

    parts = _map_chunks(len(cs), workers, task)
    ds = _flatten([p[0] for p in parts])
    m = _sum_points([p[1] for p in parts])
    return ds, _prove(suite, k, key.pk, m, _mult(k, m), r)


def evaluate(sk: bytes, inputs: Sequence[bytes], mode: int, *, workers: int = 1) -> list[bytes]:
    """Evaluate (RFC 9497 §3.3.1): ``F(sk, x)`` computed directly by the key holder, 64 bytes each.

    A node runs this over its own indicators to build the filter it publishes.

    Raises:
        InputError: a bad mode, key or input.
    """
    suite = _SUITES[_check_mode(mode)]
    k = _check_secret_scalar(sk, "secret key")
    xs = _check_inputs(inputs)
    h2g = suite.hash_to_group

    def task(start: int, end: int) -> list[bytes]:
        point = ctypes.create_string_buffer(ELEMENT_LENGTH)
        out = ctypes.create_string_buffer(ELEMENT_LENGTH)
        outputs = []
        for i in range(start, end):
            x = xs[i]
            _from_hash(point, h2g(x))
            if _scalarmult(out, k, point) != 0:  # pragma: no cover - see blind()
                raise InputError(f"inputs[{i}] hashes to the identity element")
            outputs.append(_finalize_hash(x, out.raw))
        return outputs

    return _flatten(_map_chunks(len(xs), workers, task))


# --- DLEQ proofs (RFC 9497 §2.2) -----------------------------------------------------------------


def _composite_seed(suite: _Suite, pk: bytes) -> bytes:
    """``seed = Hash(I2OSP(len(Bm), 2) || Bm || I2OSP(len(seedDST), 2) || seedDST)``."""
    return hashlib.sha512(
        _LEN_ELEMENT + pk + _i2osp2(len(suite.seed_dst)) + suite.seed_dst,
    ).digest()


def _composite_sum(
    suite: _Suite,
    seed: bytes,
    cs: list[bytes],
    ds: list[bytes],
    start: int,
    ds_too: bool = False,
) -> tuple[bytes, bytes]:
    """Sum ``d_i * C[i]`` (and ``d_i * D[i]`` if ``ds_too``, else ``b""``) over ``[start, start + len(ds))``.

    ``d_i = HashToScalar(I2OSP(len(seed), 2) || seed || I2OSP(i, 2) || I2OSP(len(Ci), 2) || Ci ||
    I2OSP(len(Di), 2) || Di || "Composite")``. ``cs`` is the whole batch, ``ds`` this chunk's part.
    A partial sum is never the identity except with negligible probability, which fails loudly.
    """
    h2s = suite.hash_to_scalar
    head = _i2osp2(len(seed)) + seed
    d = ctypes.create_string_buffer(SCALAR_LENGTH)
    term = ctypes.create_string_buffer(ELEMENT_LENGTH)
    m = ctypes.create_string_buffer(ELEMENT_LENGTH)
    z = ctypes.create_string_buffer(ELEMENT_LENGTH)
    for j, di in enumerate(ds):
        i = start + j
        ci = cs[i]
        _scalar_reduce(d, h2s(head + _i2osp2(i) + _LEN_ELEMENT + ci + _LEN_ELEMENT + di + b"Composite"))
        if _scalarmult(term, d, ci) != 0:
            raise _element_error(ci, f"blinded elements[{i}]")
        if j == 0:
            m.raw = term.raw
        else:
            _point_add(m, m.raw, term.raw)
        if ds_too:
            if _scalarmult(term, d, di) != 0:
                raise _element_error(di, f"evaluated elements[{i}]")
            if j == 0:
                z.raw = term.raw
            else:
                _point_add(z, z.raw, term.raw)
    return m.raw, z.raw if ds_too else b""


def _sum_points(points: list[bytes]) -> bytes:
    total = points[0]
    for p in points[1:]:
        total = _add(total, p)
    return total


def _challenge(suite: _Suite, pk: bytes, m: bytes, z: bytes, t2: bytes, t3: bytes) -> bytes:
    transcript = b"".join(_LEN_ELEMENT + e for e in (pk, m, z, t2, t3)) + b"Challenge"
    return _reduce(suite.hash_to_scalar(transcript))


def _prove(suite: _Suite, k: bytes, pk: bytes, m: bytes, z: bytes, r: bytes | None) -> bytes:
    r = _random_scalar() if r is None else _check_secret_scalar(r, "proof randomness r")
    t2 = _mult_base(r)
    t3 = _mult(r, m)
    c = _challenge(suite, pk, m, z, t2, t3)
    s = _scalar_op(_scalar_sub, r, _scalar_op(_scalar_mul, c, k))
    return c + s


def generate_proof(
    sk: bytes,
    pk: bytes,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    r: bytes | None = None,
    *,
    workers: int = 1,
) -> bytes:
    """GenerateProof (RFC 9497 §2.2.1) with ComputeCompositesFast: ``c || s``, 64 bytes.

    :func:`blind_evaluate_verifiable` does this in the same pass as the evaluation; this stand-alone
    form is for a server that evaluated already.
    """
    k = _check_key_pair(sk, pk)
    cs = _check_elements(blinded, "blinded elements")
    ds = _check_elements(evaluated, "evaluated elements")
    _check_same_length(len(cs), ds, "evaluated elements")
    suite = _SUITES[MODE_VOPRF]
    seed = _composite_seed(suite, pk)
    parts = _map_chunks(len(cs), workers, lambda s, e: _composite_sum(suite, seed, cs, ds[s:e], s)[0])
    m = _sum_points(parts)
    return _prove(suite, k, pk, m, _mult(k, m), r)


def verify_proof(
    pk: bytes,
    blinded: Sequence[bytes],
    evaluated: Sequence[bytes],
    proof: bytes,
    *,
    workers: int = 1,
) -> None:
    """VerifyProof (RFC 9497 §2.2.2) with ComputeComposites: return None or raise.

    Raises:
        EncodingError: ``pk``, an element or the proof is not a valid encoding.
        ProofError: the proof does not show that ``evaluated[i] = k * blinded[i]`` with ``pk = k * G``.
    """
    b = _deserialize_element(pk, "public key")
    cs = _check_elements(blinded, "blinded elements")
    ds = _check_elements(evaluated, "evaluated elements")
    _check_same_length(len(cs), ds, "evaluated elements")
    if type(proof) is not bytes or len(proof) != PROOF_LENGTH:
        raise EncodingError(f"proof must be {PROOF_LENGTH} bytes")
    c = _deserialize_scalar(proof[:SCALAR_LENGTH], "proof scalar c")
    s = _deserialize_scalar(proof[SCALAR_LENGTH:], "proof scalar s")
    suite = _SUITES[MODE_VOPRF]
    seed = _composite_seed(suite, b)
    parts = _map_chunks(
        len(cs), workers, lambda lo, hi: _composite_sum(suite, seed, cs, ds[lo:hi], lo, ds_too=True)
    )
    m = _sum_points([p[0] for p in parts])
    z = _sum_points([p[1] for p in parts])
    out = ctypes.create_string_buffer(ELEMENT_LENGTH)
    # A zero c or s makes a product the identity, which libsodium reports as failure: such a proof is
    # refused (an honest one has them zero with probability 2^-252).
    terms = []
    for scalar, base in ((s, None), (c, b), (s, m), (c, z)):
        rc = _scalarmult_base(out, scalar) if base is None else _scalarmult(out, scalar, base)
        if rc != 0:
            raise ProofError("VOPRF proof does not verify: a proof scalar is zero")
        terms.append(out.raw)
    t2 = _add(terms[0], terms[1])
    t3 = _add(terms[2], terms[3])
    if not hmac.compare_digest(_challenge(suite, b, m, z, t2, t3), c):
        raise ProofError("VOPRF proof does not verify under the server's public key")
