"""The recovery statement's format and rules (client/protocol/recovery.py), without a network."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from client.protocol.auditlog import LogFork, TreeHead, sign_tree_head
from client.protocol.errors import EncodingError, InputError, SignatureError, WrongNodeError
from client.protocol.recovery import (
    REASON_MAX,
    RECOVERY_LABEL,
    RecoveryStatement,
    check_covers,
    is_before,
    sign_statement,
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
