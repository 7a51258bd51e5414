"""RFC 9497 OPRF/VOPRF on ristretto255-SHA512 (client/protocol/oprf.py): the RFC's vectors, refusals,
properties."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pysodium
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.protocol import oprf
from client.protocol.errors import EncodingError, InputError, ProofError
from client.protocol.kinds import indicator_bytes
from client.protocol.oprf import MODE_OPRF, MODE_VOPRF

VECTORS = Path(__file__).parent / "vectors" / "rfc9497-ristretto255-sha512.json"
ORDER = 2**252 + 27742317777372353535851937790883648493
FIELD_PRIME = 2**255 - 19


def _suites() -> list[Any]:
    data: list[dict[str, Any]] = json.loads(VECTORS.read_text())
    params = []
    for suite in data:
        assert suite["identifier"] == "ristretto255-SHA512"
        for i, vector in enumerate(suite["vectors"]):
            marks = []
            if suite["mode"] == 2:
                marks.append(pytest.mark.skip(reason="mode 0x02 (POPRF) is not implemented"))
            params.append(
                pytest.param(suite, vector, id=f"mode{suite['mode']}-{i}-batch{vector['Batch']}", marks=marks)
            )
    return params


def _hexes(value: str) -> list[bytes]:
    return [bytes.fromhex(v) for v in value.split(",")]


def test_vector_file_covers_both_modes_and_batches() -> None:
    data = json.loads(VECTORS.read_text())
    modes = {s["mode"] for s in data}
    assert {0, 1} <= modes
    assert any(v["Batch"] > 1 for s in data if s["mode"] == 1 for v in s["vectors"])


@pytest.mark.parametrize(("suite", "vector"), _suites())
@pytest.mark.parametrize("workers", [1, 2])
def test_rfc9497_vector(suite: dict[str, Any], vector: dict[str, Any], workers: int) -> None:
    mode = suite["mode"]
    assert bytes.fromhex(suite["groupDST"]) == b"HashToGroup-" + oprf.context_string(mode)
    key = oprf.derive_key_pair(bytes.fromhex(suite["seed"]), bytes.fromhex(suite["keyInfo"]), mode)
    assert key.sk.hex() == suite["skSm"]
    if "pkSm" in suite:
        assert key.pk.hex() == suite["pkSm"]
    assert oprf.public_key(key.sk) == key.pk

    inputs, blinds = _hexes(vector["Input"]), _hexes(vector["Blind"])
    assert len(inputs) == vector["Batch"]
    got_blinds, blinded = oprf.blind(inputs, mode, blinds, workers=workers)
    assert got_blinds == blinds
    assert blinded == _hexes(vector["BlindedElement"])

    if mode == MODE_OPRF:
        evaluated = oprf.blind_evaluate(key.sk, blinded, workers=workers)
        outputs = oprf.finalize(inputs, blinds, evaluated, mode, workers=workers)
    else:
        r = bytes.fromhex(vector["Proof"]["r"])
        evaluated, proof = oprf.blind_evaluate_verifiable(key, blinded, r, workers=workers)
        assert proof.hex() == vector["Proof"]["proof"]
        assert oprf.generate_proof(key.sk, key.pk, blinded, evaluated, r, workers=workers) == proof
        oprf.verify_proof(key.pk, blinded, evaluated, proof, workers=workers)
        outputs = oprf.finalize(
            inputs, blinds, evaluated, mode, blinded=blinded, pk=key.pk, proof=proof, workers=workers
        )
    assert evaluated == _hexes(vector["EvaluationElement"])
    assert outputs == _hexes(vector["Output"])
    assert oprf.evaluate(key.sk, inputs, mode, workers=workers) == outputs


# --- encodings refused -------------------------------------------------------------------------------

IDENTITY = bytes(32)
#: The field prime p as 32 little-endian bytes: s = p is not a reduced field element.
NON_CANONICAL_P = FIELD_PRIME.to_bytes(32, "little")
#: s = 1 is "negative" (odd), which the ristretto255 decoding refuses (RFC 9496 §4.3.1).
NEGATIVE_S = (1).to_bytes(32, "little")
#: s = p + 2: even, above p, below 2^255.
NON_CANONICAL_P2 = (FIELD_PRIME + 2).to_bytes(32, "little")
#: A valid element (the generator) with bit 255 set: s >= 2^255 > p.
GENERATOR = pysodium.crypto_scalarmult_ristretto255_base((1).to_bytes(32, "little"))
HIGH_BIT = GENERATOR[:31] + bytes([GENERATOR[31] | 0x80])
BAD_ELEMENTS = [
    pytest.param(NON_CANONICAL_P, id="field-prime"),
    pytest.param(NON_CANONICAL_P2, id="field-prime+2"),
    pytest.param(NEGATIVE_S, id="negative-s"),
    pytest.param(HIGH_BIT, id="generator-with-bit-255"),
    pytest.param(bytes(31) + b"\x80", id="identity-with-bit-255"),
    pytest.param(b"\x01" * 31, id="short"),
]


def test_libsodium_decoder_gaps_that_client_oprf_closes() -> None:
    """Pins why DeserializeElement does more than libsodium 1.0.18's ``is_valid_point``.

    It refuses s >= p below 2^255 and negative s, but accepts the identity and ignores bit 255.
    """
    assert pysodium.crypto_core_ristretto255_is_valid_point(NON_CANONICAL_P) is False
    assert pysodium.crypto_core_ristretto255_is_valid_point(NON_CANONICAL_P2) is False
    assert pysodium.crypto_core_ristretto255_is_valid_point(NEGATIVE_S) is False
    assert pysodium.crypto_core_ristretto255_is_valid_point(IDENTITY) is True
    assert pysodium.crypto_core_ristretto255_is_valid_point(HIGH_BIT) is True
    k = (5).to_bytes(32, "little")
    assert pysodium.crypto_scalarmult_ristretto255(k, HIGH_BIT) == pysodium.crypto_scalarmult_ristretto255(
        k, GENERATOR
    )


@pytest.fixture(scope="module")
def key() -> oprf.KeyPair:
    return oprf.derive_key_pair(bytes(range(32)), b"petanda test", MODE_VOPRF)


@pytest.fixture(scope="module")
def batch(key: oprf.KeyPair) -> dict[str, Any]:
    inputs = [indicator_bytes("phone", f"+6012345{i:04d}") for i in range(70)]
    blinds, blinded = oprf.blind(inputs, MODE_VOPRF)
    evaluated, proof = oprf.blind_evaluate_verifiable(key, blinded)
    return {"inputs": inputs, "blinds": blinds, "blinded": blinded, "evaluated": evaluated, "proof": proof}


@pytest.mark.parametrize("bad", [pytest.param(IDENTITY, id="identity"), *BAD_ELEMENTS])
def test_blind_evaluate_refuses_bad_element(key: oprf.KeyPair, bad: bytes) -> None:
    good = oprf.hash_to_group(b"x", MODE_OPRF)
    for fn in (
        lambda cs: oprf.blind_evaluate(key.sk, cs),
        lambda cs: oprf.blind_evaluate_verifiable(key, cs),
        lambda cs: oprf.blind_evaluate(key.sk, cs, workers=2),
    ):
        with pytest.raises(EncodingError, match=r"blinded elements\[40\]"):
            fn([good] * 40 + [bad] + [good] * 40)


@pytest.mark.parametrize("bad", [pytest.param(IDENTITY, id="identity"), *BAD_ELEMENTS])
def test_finalize_refuses_bad_evaluated_element(key: oprf.KeyPair, batch: dict[str, Any], bad: bytes) -> None:
    evaluated = list(batch["evaluated"])
    evaluated[3] = bad
    with pytest.raises(EncodingError):
        oprf.finalize(batch["inputs"], batch["blinds"], evaluated, MODE_OPRF)
    with pytest.raises(EncodingError):
        oprf.verify_proof(key.pk, batch["blinded"], evaluated, batch["proof"])


@pytest.mark.parametrize("bad", [pytest.param(IDENTITY, id="identity"), *BAD_ELEMENTS])
def test_public_key_must_be_valid_non_identity(batch: dict[str, Any], bad: bytes) -> None:
    with pytest.raises(EncodingError, match="public key"):
        oprf.finalize(
            batch["inputs"],
            batch["blinds"],
            batch["evaluated"],
            MODE_VOPRF,
            blinded=batch["blinded"],
            pk=bad,
            proof=batch["proof"],
        )


def test_identity_error_message_names_identity(key: oprf.KeyPair) -> None:
    with pytest.raises(EncodingError, match="identity"):
        oprf.blind_evaluate(key.sk, [IDENTITY])
    with pytest.raises(EncodingError, match="canonical"):
        oprf.blind_evaluate(key.sk, [NON_CANONICAL_P])
    with pytest.raises(EncodingError, match="bit 255"):
        oprf.blind_evaluate(key.sk, [HIGH_BIT])


@pytest.mark.parametrize(
    "scalar",
    [
        pytest.param(bytes(32), id="zero"),
        pytest.param(ORDER.to_bytes(32, "little"), id="order"),
        pytest.param((ORDER + 1).to_bytes(32, "little"), id="order+1"),
        pytest.param(b"\xff" * 32, id="all-ones"),
        pytest.param(b"\x01" * 31, id="short"),
    ],
)
def test_keys_and_blinds_refuse_zero_and_non_canonical(key: oprf.KeyPair, scalar: bytes) -> None:
    c = oprf.hash_to_group(b"x", MODE_OPRF)
    with pytest.raises(InputError, match="secret key"):
        oprf.blind_evaluate(scalar, [c])
    with pytest.raises(InputError, match="secret key"):
        oprf.evaluate(scalar, [b"x"], MODE_OPRF)
    with pytest.raises(InputError, match="secret key"):
        oprf.public_key(scalar)
    with pytest.raises(InputError, match="secret key"):
        oprf.blind_evaluate_verifiable(oprf.KeyPair(scalar, key.pk), [c])
    with pytest.raises(InputError, match=r"blinds\[0\]"):
        oprf.blind([b"x"], MODE_OPRF, [scalar])
    with pytest.raises(InputError, match=r"blinds\[0\]"):
        oprf.finalize([b"x"], [scalar], [c], MODE_OPRF)
    with pytest.raises(InputError, match="proof randomness"):
        oprf.blind_evaluate_verifiable(key, [c], scalar)


def test_largest_scalar_is_accepted() -> None:
    top = (ORDER - 1).to_bytes(32, "little")
    assert oprf.public_key(top) == pysodium.crypto_scalarmult_ristretto255_base(top)
    [c] = oprf.blind([b"x"], MODE_OPRF, [top])[1]
    assert oprf.blind_evaluate(top, [c])


# --- proofs ----------------------------------------------------------------------------------------


def _finalize_v(batch: dict[str, Any], **overrides: Any) -> list[bytes]:
    args = {k: batch[k] for k in ("inputs", "blinds", "evaluated", "blinded", "proof")}
    args.update(overrides)
    return oprf.finalize(
        args["inputs"],
        args["blinds"],
        args["evaluated"],
        MODE_VOPRF,
        blinded=args["blinded"],
        pk=args.get("pk"),
        proof=args["proof"],
    )


def test_good_batch_verifies(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    oprf.verify_proof(key.pk, batch["blinded"], batch["evaluated"], batch["proof"])
    assert _finalize_v(batch, pk=key.pk) == oprf.evaluate(key.sk, batch["inputs"], MODE_VOPRF)


def test_proof_refused_under_another_key(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    other = oprf.generate_key_pair()
    with pytest.raises(ProofError):
        _finalize_v(batch, pk=other.pk)


def test_proof_refused_when_evaluated_with_another_key(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    """A server that evaluates one element of the batch with another key is caught."""
    other = oprf.generate_key_pair()
    evaluated = list(batch["evaluated"])
    evaluated[5] = oprf.blind_evaluate(other.sk, [batch["blinded"][5]])[0]
    with pytest.raises(ProofError):
        _finalize_v(batch, pk=key.pk, evaluated=evaluated)


def test_proof_refused_when_elements_are_swapped(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    evaluated = list(batch["evaluated"])
    evaluated[0], evaluated[1] = evaluated[1], evaluated[0]
    with pytest.raises(ProofError):
        oprf.verify_proof(key.pk, batch["blinded"], evaluated, batch["proof"])


def test_proof_refused_for_a_sub_batch(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        oprf.verify_proof(key.pk, batch["blinded"][:-1], batch["evaluated"][:-1], batch["proof"])


@pytest.mark.parametrize("byte", [0, 31, 32, 63])
def test_proof_refused_when_tampered(key: oprf.KeyPair, batch: dict[str, Any], byte: int) -> None:
    proof = bytearray(batch["proof"])
    proof[byte] ^= 0x01
    with pytest.raises((ProofError, EncodingError)):
        oprf.verify_proof(key.pk, batch["blinded"], batch["evaluated"], bytes(proof))


def test_proof_with_non_canonical_scalar_is_an_encoding_error(
    key: oprf.KeyPair, batch: dict[str, Any]
) -> None:
    c = batch["proof"][:32]
    for proof in (c + ORDER.to_bytes(32, "little"), ORDER.to_bytes(32, "little") + c, c, b""):
        with pytest.raises(EncodingError, match="proof"):
            oprf.verify_proof(key.pk, batch["blinded"], batch["evaluated"], proof)


def test_proof_with_zero_scalar_is_refused(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    for proof in (bytes(32) + batch["proof"][32:], batch["proof"][:32] + bytes(32)):
        with pytest.raises(ProofError):
            oprf.verify_proof(key.pk, batch["blinded"], batch["evaluated"], proof)


def test_proofs_are_randomised_but_both_verify(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    e1, p1 = oprf.blind_evaluate_verifiable(key, batch["blinded"])
    e2, p2 = oprf.blind_evaluate_verifiable(key, batch["blinded"], workers=2)
    assert e1 == e2 == batch["evaluated"]
    assert p1 != p2
    for p in (p1, p2):
        oprf.verify_proof(key.pk, batch["blinded"], e1, p, workers=2)


# --- argument checks ---------------------------------------------------------------------------------


def test_mode_2_and_others_are_refused() -> None:
    for mode in (2, -1, 256, True):
        with pytest.raises(InputError, match="mode"):
            oprf.context_string(mode)
        with pytest.raises(InputError, match="mode"):
            oprf.blind([b"x"], mode)


def test_input_length_limit() -> None:
    longest = b"a" * oprf.MAX_INPUT_LENGTH
    sk = oprf.generate_key_pair().sk
    assert len(oprf.evaluate(sk, [longest], MODE_OPRF)[0]) == oprf.OUTPUT_LENGTH
    with pytest.raises(InputError, match="longer"):
        oprf.evaluate(sk, [longest + b"a"], MODE_OPRF)
    with pytest.raises(InputError, match="longer"):
        oprf.blind([longest + b"a"], MODE_OPRF)


def test_batch_shape_checks(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="batch"):
        oprf.blind([], MODE_OPRF)
    with pytest.raises(InputError, match="batch"):
        oprf.blind_evaluate(key.sk, [])
    with pytest.raises(InputError, match="blinds"):
        oprf.finalize(batch["inputs"], batch["blinds"][:-1], batch["evaluated"], MODE_OPRF)
    with pytest.raises(InputError, match="evaluated"):
        oprf.finalize(batch["inputs"], batch["blinds"], batch["evaluated"][:-1], MODE_OPRF)
    with pytest.raises(InputError, match="VOPRF"):
        oprf.finalize(batch["inputs"], batch["blinds"], batch["evaluated"], MODE_VOPRF)
    with pytest.raises(InputError, match="OPRF"):
        oprf.finalize(batch["inputs"], batch["blinds"], batch["evaluated"], MODE_OPRF, pk=key.pk)
    with pytest.raises(InputError, match="workers"):
        oprf.blind_evaluate(key.sk, batch["blinded"], workers=0)
    with pytest.raises(InputError, match="seed"):
        oprf.derive_key_pair(bytes(31), b"", MODE_OPRF)


def test_mismatched_key_pair_is_refused(key: oprf.KeyPair, batch: dict[str, Any]) -> None:
    other = oprf.generate_key_pair()
    with pytest.raises(InputError, match="does not match"):
        oprf.blind_evaluate_verifiable(oprf.KeyPair(key.sk, other.pk), batch["blinded"])
    with pytest.raises(InputError, match="does not match"):
        oprf.generate_proof(key.sk, other.pk, batch["blinded"], batch["evaluated"])


def test_key_pair_repr_hides_the_secret(key: oprf.KeyPair) -> None:
    assert "sk=" not in repr(key)
    assert repr(key.sk) not in repr(key)
    assert repr(key.pk) in repr(key)


# --- building blocks -------------------------------------------------------------------------------


def test_expand_message_xmd_sha512_rfc9380_vector() -> None:
    """The 64-byte fast path equals a plain RFC 9380 §5.3.1 implementation checked on RFC 9380 K.3."""
    dst = b"QUUX-V01-CS02-with-expander-SHA512-256"

    def reference(msg: bytes, length: int) -> bytes:
        dst_prime = dst + bytes([len(dst)])
        b0 = hashlib.sha512(bytes(128) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
        out, b = b"", b"\x00" * 64
        for i in range(1, -(-length // 64) + 1):
            b = hashlib.sha512(
                bytes(x ^ y for x, y in zip(b0, b, strict=True)) + bytes([i]) + dst_prime
            ).digest()
            out += b
        return out[:length]

    # RFC 9380 Appendix K.3, len_in_bytes 0x20, messages "" and "abc":
    assert reference(b"", 0x20).hex() == "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"
    assert reference(b"abc", 0x20).hex() == "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"
    xmd = oprf._Xmd64(dst)
    for msg in (b"", b"abc", b"abcdef0123456789", b"a" * 512):
        assert xmd(msg) == reference(msg, 64)


def test_hash_to_scalar_is_reduced_little_endian() -> None:
    msg = b"petanda"
    wide = oprf._SUITES[MODE_OPRF].hash_to_scalar(msg)
    expected = (int.from_bytes(wide, "little") % ORDER).to_bytes(32, "little")
    assert oprf.hash_to_scalar(msg, MODE_OPRF) == expected
    assert oprf.hash_to_scalar(msg, MODE_OPRF) != oprf.hash_to_scalar(msg, MODE_VOPRF)


def test_modes_give_different_outputs() -> None:
    sk = oprf.generate_key_pair().sk
    x = indicator_bytes("email", "a@example.com")
    assert oprf.evaluate(sk, [x], MODE_OPRF) != oprf.evaluate(sk, [x], MODE_VOPRF)


# --- properties ------------------------------------------------------------------------------------

inputs_st = st.lists(st.binary(max_size=80), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None)
@given(inputs=inputs_st, mode=st.sampled_from([MODE_OPRF, MODE_VOPRF]), workers=st.sampled_from([1, 2]))
def test_blind_round_trip_equals_evaluate(inputs: list[bytes], mode: int, workers: int) -> None:
    key = oprf.generate_key_pair()
    blinds, blinded = oprf.blind(inputs, mode, workers=workers)
    if mode == MODE_OPRF:
        outputs = oprf.finalize(inputs, blinds, oprf.blind_evaluate(key.sk, blinded, workers=workers), mode)
    else:
        evaluated, proof = oprf.blind_evaluate_verifiable(key, blinded, workers=workers)
        outputs = oprf.finalize(
            inputs, blinds, evaluated, mode, blinded=blinded, pk=key.pk, proof=proof, workers=workers
        )
    assert outputs == oprf.evaluate(key.sk, inputs, mode, workers=workers)
    assert all(len(o) == oprf.OUTPUT_LENGTH for o in outputs)


@settings(max_examples=25, deadline=None)
@given(inputs=inputs_st)
def test_blinded_elements_do_not_depend_on_the_key_and_unlink_inputs(inputs: list[bytes]) -> None:
    """Blinding the same input twice gives unrelated elements (fresh blinds), both of which unblind."""
    _, first = oprf.blind(inputs, MODE_OPRF)
    _, second = oprf.blind(inputs, MODE_OPRF)
    assert all(a != b for a, b in zip(first, second, strict=True))
