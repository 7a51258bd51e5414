"""The recovery statement's format and rules (client/protocol/recovery.py), without a network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.auditlog import LogFork, TreeHead, sign_tree_head, tree_head_bytes, verify_tree_head
from client.protocol.errors import EncodingError, InputError, SignatureError, WrongNodeError
from client.protocol.recovery import (
    REASON_MAX,
    RECOVERY_LABEL,
    RecoveryStatement,
    check_covers,
    is_before,
    sign_statement,
    statement_bytes,
    statement_hash,
    verify_statement,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OLD = sign_tree_head(TreeHead("SG", 40, b"\x01" * 32, 1_000), KEY)
NEW = sign_tree_head(TreeHead("SG", 31, b"\x02" * 32, 2_000), KEY)


def statement(**changes: object) -> RecoveryStatement:
    base = RecoveryStatement("SG", 1, 2_000, OLD, NEW, 7, b"\x03" * 32, "disk lost")
    return sign_statement(dataclasses.replace(base, **changes), KEY)  # type: ignore[arg-type]


def test_round_trip_and_verification() -> None:
    s = statement()
    data = s.to_bytes()
    assert data.startswith(RECOVERY_LABEL)
    assert RecoveryStatement.from_bytes(data) == s
    verify_statement(s, KEY.public_key(), expected_node="SG")
    assert len(statement_hash(s)) == 32


@given(st.integers(min_value=len(RECOVERY_LABEL), max_value=len(statement().to_bytes()) - 1))
def test_any_flipped_byte_is_refused(position: int) -> None:
    raw = bytearray(statement().to_bytes())
    raw[position] ^= 0x40
    try:
        parsed = RecoveryStatement.from_bytes(bytes(raw))
    except EncodingError:
        return
    with pytest.raises((SignatureError, WrongNodeError)):
        verify_statement(parsed, KEY.public_key(), expected_node="SG")


def test_truncated_or_padded_bytes_name_the_field() -> None:
    data = statement().to_bytes()
    with pytest.raises(EncodingError, match="signature: truncated"):
        RecoveryStatement.from_bytes(data[:-1])
    with pytest.raises(EncodingError, match="trailing"):
        RecoveryStatement.from_bytes(data + b"\x00")
    with pytest.raises(EncodingError, match="label"):
        RecoveryStatement.from_bytes(b"petanda/v2/manifest\x00" + data[len(RECOVERY_LABEL) :])


def test_another_key_or_node_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError):
        verify_statement(statement(), other.public_key(), expected_node="SG")
    with pytest.raises(WrongNodeError):
        verify_statement(statement(), KEY.public_key(), expected_node="MY")
    # Signed by the node, but naming an old head it never signed: refused.
    forged_head = dataclasses.replace(OLD, tree_size=99)
    with pytest.raises(SignatureError, match="old head"):
        verify_statement(statement(old_head=forged_head), KEY.public_key(), expected_node="SG")


def test_an_old_head_under_a_rolled_key_verifies() -> None:
    rolled = Ed25519PrivateKey.generate()
    s = sign_statement(
        dataclasses.replace(
            statement(), new_head=sign_tree_head(dataclasses.replace(NEW, signature=b""), rolled)
        ),
        rolled,
    )
    with pytest.raises(SignatureError):
        verify_statement(s, rolled.public_key(), expected_node="SG")
    verify_statement(s, rolled.public_key(), expected_node="SG", old_keys=(KEY.public_key(),))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sequence": 0}, "sequence"),
        ({"reason": ""}, "reason"),
        ({"reason": "x" * (REASON_MAX + 1)}, "reason"),
        ({"old_manifest_hash": b"short"}, "old_manifest_hash"),
        ({"new_head": dataclasses.replace(NEW, node_id="MY")}, "new_head"),
        ({"node_id": "sg"}, "node id"),
    ],
)
def test_bad_fields_are_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field):
        statement(**changes)


def test_covers_what_a_peer_holds_or_is_a_fork() -> None:
    s = statement()
    check_covers(s, held_head=None, held_manifest=None)
    check_covers(s, held_head=OLD, held_manifest=(7, b"\x03" * 32))
    check_covers(s, held_head=dataclasses.replace(OLD, tree_size=12), held_manifest=(5, b"\x09" * 32))
    with pytest.raises(LogFork, match="erased more than it says"):
        check_covers(s, held_head=dataclasses.replace(OLD, tree_size=41), held_manifest=None)
    with pytest.raises(LogFork, match="another root"):
        check_covers(s, held_head=dataclasses.replace(OLD, root_hash=b"\x09" * 32), held_manifest=None)
    with pytest.raises(LogFork, match="we hold version 8"):
        check_covers(s, held_head=None, held_manifest=(8, b"\x03" * 32))
    with pytest.raises(LogFork, match="another manifest of version 7"):
        check_covers(s, held_head=None, held_manifest=(7, b"\x04" * 32))


def test_heads_of_the_erased_history() -> None:
    s = statement()
    assert is_before(OLD, s)
    assert is_before(dataclasses.replace(OLD, tree_size=35, timestamp=1_999), s)
    assert not is_before(NEW, s)  # the head it continues from
    assert not is_before(dataclasses.replace(NEW, tree_size=33, timestamp=2_001), s)  # signed after
    assert not is_before(dataclasses.replace(OLD, tree_size=41), s)  # larger than what it erased


# --- vectors (tests/vectors/recovery.json, generator tests/vectors/gen_recovery.py) -------------------

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "recovery.json").read_text(encoding="utf-8")
)


def _vector_head(value: dict[str, Any]) -> TreeHead:
    return TreeHead.from_json({k: v for k, v in value.items() if k != "signed_bytes"})


def _by_the_spec(fields: dict[str, Any]) -> bytes:
    """The statement bytes laid out from PROTOCOL.md's table by hand, not by the code under test."""

    def head(h: dict[str, Any]) -> bytes:
        return (
            struct.pack(">Q", h["tree_size"])
            + bytes.fromhex(h["root_hash"])
            + struct.pack(">Q", h["timestamp"])
            + bytes.fromhex(h["signature"])
        )

    node = fields["node_id"].encode("ascii")
    reason = fields["reason"].encode("utf-8")
    return (
        b"petanda/v1/recovery\x00"
        + bytes([len(node)])
        + node
        + struct.pack(">IQ", fields["sequence"], fields["issued_at"])
        + head(fields["old_head"])
        + head(fields["new_head"])
        + struct.pack(">Q", fields["old_manifest_version"])
        + bytes.fromhex(fields["old_manifest_hash"])
        + struct.pack(">H", len(reason))
        + reason
    )


@pytest.mark.parametrize("case", VECTORS["statements"], ids=lambda c: f"sequence-{c['fields']['sequence']}")
def test_statement_vectors_are_recomputed_by_the_code(case: dict[str, Any]) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["seed"]))
    public = key.public_key()
    assert public.public_bytes_raw().hex() == VECTORS["public_key"]
    fields = case["fields"]
    heads = {name: _vector_head(fields[name]) for name in ("old_head", "new_head")}
    for name, head in heads.items():  # each head as the node signed it, over the bytes the vector shows
        assert tree_head_bytes(head).hex() == fields[name]["signed_bytes"]
        assert sign_tree_head(dataclasses.replace(head, signature=b""), key) == head
        verify_tree_head(head, public)
    unsigned = RecoveryStatement(
        node_id=fields["node_id"],
        sequence=fields["sequence"],
        issued_at=fields["issued_at"],
        old_head=heads["old_head"],
        new_head=heads["new_head"],
        old_manifest_version=fields["old_manifest_version"],
        old_manifest_hash=bytes.fromhex(fields["old_manifest_hash"]),
        reason=fields["reason"],
    )
    assert statement_bytes(unsigned).hex() == case["statement_bytes"]
    assert _by_the_spec(fields).hex() == case["statement_bytes"]
    signed = sign_statement(unsigned, key)
    assert signed.signature.hex() == case["signature"]
    assert signed.to_bytes().hex() == case["encoded"] == case["statement_bytes"] + case["signature"]
    assert statement_hash(signed).hex() == case["sha256"]
    assert hashlib.sha256(bytes.fromhex(case["encoded"])).hexdigest() == case["sha256"]
    decoded = RecoveryStatement.from_bytes(bytes.fromhex(case["encoded"]))
    assert decoded == signed
    verify_statement(decoded, public, expected_node=fields["node_id"])


def test_the_vectors_cover_a_first_and_a_later_recovery() -> None:
    first, second = (case["fields"] for case in VECTORS["statements"])
    assert first["sequence"] == 1 and first["old_manifest_version"] > 0
    assert second["sequence"] == 2 and second["old_manifest_hash"] == "00" * 32  # no manifest held
    assert not second["reason"].isascii() and second["new_head"]["tree_size"] == 1


@pytest.mark.parametrize("case", VECTORS["refusals"], ids=lambda c: c["field"])
def test_refusal_vectors_are_refused_naming_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(EncodingError, match=f"recovery statement: {case['field']}: "):
        RecoveryStatement.from_bytes(bytes.fromhex(case["encoded"]))
