"""The audit log's offline verification: client.protocol.auditlog and ``petanda audit verify`` / ``fetch``.

The fetch tests at the end are CLIENT-SIDE UNIT TESTS: they run :func:`client.tools.audit.fetch_log`
against an in-process fake of the AuditorService stub (no network, no TLS, no node). The integration
test against the node's real AuditorService over mutual TLS lives with the node.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from client._proto.petanda.v1 import auditor_pb2, common_pb2
from client.protocol.auditlog import (
    LogBreak,
    LogFork,
    TreeHead,
    canonical_json,
    check_heads,
    decode_entry,
    make_entry,
    sign_tree_head,
    tree_head_bytes,
    verify_log,
)
from client.protocol.errors import (
    ConsistencyProofError,
    EncodingError,
    InputError,
    PetandaError,
    SignatureError,
    WrongNodeError,
)
from client.protocol.merkle import consistency_proof, leaf_hash, root_hash
from client.tools.audit import add_audit_commands, fetch_log, load_dir

NODE = "MY"
T0 = 1_714_521_600  # 2024-05-01T00:00:00Z
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- building logs ------------------------------------------------------------------------------------


def event(i: int) -> dict[str, Any]:
    """A plausible event for entry ``i`` (deterministic)."""
    peers = ("TH", "SG", "ID")
    if i % 3 == 0:
        return {
            "ts": T0 + 600 * i,
            "action": "peer.evaluate_oprf",
            "actor": peers[i % 2],
            "role": "peer",
            "result": "ok",
            "kind": "phone",
            "count": 1 + i % 5,
        }
    if i % 3 == 1:
        return {
            "ts": T0 + 600 * i,
            "action": "sync.pull",
            "actor": "node",
            "role": "node",
            "result": "ok",
            "peer": peers[i % 3],
            "version": i,
        }
    return {
        "ts": T0 + 600 * i,
        "action": "investigator.check",
        "actor": "MY/alice",
        "role": "investigator",
        "result": "ok",
        "kind": "email",
        "count": 1,
    }


def build_entries(n: int, first: int = 0, previous: bytes | None = None) -> list[bytes]:
    out: list[bytes] = []
    for i in range(first, first + n):
        entry = make_entry(i, previous, event(i))
        out.append(entry)
        previous = entry
    return out


def heads_for(entries: Sequence[bytes], sizes: Sequence[int], key: Ed25519PrivateKey = KEY) -> list[TreeHead]:
    return [sign_tree_head(TreeHead(NODE, s, root_hash(entries[:s]), T0 + 10 * s), key) for s in sizes]


def write_dir(
    path: Path, entries: Sequence[bytes], heads: Sequence[TreeHead], public: bytes = PUBLIC
) -> Path:
    """Write the fetched-directory layout of docs/auditors.md by hand (independently of audit_cli)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "node.json").write_text(
        json.dumps({"node_id": NODE, "public_key": public.hex(), "fetched_at": T0})
    )
    (path / "entries.jsonl").write_bytes(b"".join(e + b"\n" for e in entries))
    (path / "tree-heads.jsonl").write_text("".join(json.dumps(h.to_json()) + "\n" for h in heads))
    return path


def run(*argv: str) -> int:
    """Run ``petanda audit ...`` as client/tools/cli.py does (PetandaError -> exit 2)."""
    parser = argparse.ArgumentParser(prog="petanda")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    try:
        return int(args.handler(args))
    except PetandaError as error:
        print(f"petanda: {error}")
        return 2


N = 40
LAYOUTS = {"one-head": [N], "many-heads": [0, 1, 7, 14, 20, 21, 33, 39, N]}


def modified(entry: bytes) -> bytes:
    value = decode_entry(entry)
    value["count"] = int(value.get("count", 0)) + 1000
    return canonical_json(value)


def forged(entries: Sequence[bytes], i: int) -> bytes:
    """A well-formed entry claiming index ``i``, chained to entry i-1, with content the node never wrote."""
    fields = {**event(i), "action": "config.change", "reason": "forged"}
    return make_entry(i, entries[i - 1] if i else None, fields)


def tamper(entries: list[bytes], how: str, i: int) -> tuple[list[bytes], int]:
    """Apply one alteration at index ``i``; return the altered log and the first bad index expected."""
    e = list(entries)
    if how == "modify":
        e[i] = modified(e[i])
    elif how == "delete":
        del e[i]
    elif how == "reorder":
        j = min(i, len(e) - 2)
        e[j], e[j + 1] = e[j + 1], e[j]
        return e, j
    elif how == "insert":
        e.insert(i, forged(entries, i))
    elif how == "duplicate":
        e.insert(i + 1, e[i])
        return e, i + 1
    elif how == "truncate-entry":
        e[i] = e[i][: len(e[i]) // 2]
    elif how == "truncate-log":
        e = e[:i]
    elif how == "relink":
        value = decode_entry(e[i])
        value["prev"] = "00" * 32 if i else "ff"
        e[i] = canonical_json(value)
        if i == len(entries) - 1:
            pytest.skip("a re-linked last entry is indistinguishable from an altered entry before it")
    else:
        raise AssertionError(how)
    return e, i


TAMPERS = ["modify", "delete", "reorder", "insert", "duplicate", "truncate-entry", "truncate-log", "relink"]


# --- entries and tree heads ---------------------------------------------------------------------------


def test_entry_round_trip_and_chain() -> None:
    first = make_entry(0, None, event(0))
    second = make_entry(1, first, event(1))
    assert decode_entry(first)["prev"] == ""
    assert decode_entry(second)["i"] == 1
    assert decode_entry(second)["prev"] == leaf_hash(first).hex()
    assert first == canonical_json(json.loads(first))


@pytest.mark.parametrize(
    "data",
    [
        b'{"i":0,"prev":"","v":1, "ts":1}',  # white space
        b'{"v":1,"i":0,"prev":""}',  # keys not sorted
        b'{"i":0,"i":0,"prev":"","v":1}',  # duplicate key
        b'{"i":0,"prev":"","ts":1.5,"v":1}',  # float
        b'{"i":true,"prev":"","v":1}',  # bool index
        b'{"i":-1,"prev":"","v":1}',  # negative index
        b'{"i":0,"prev":"","v":true}',  # bool version
        b'{"i":0,"prev":"","v":2}',  # unknown version
        b'{"i":0,"prev":0,"v":1}',  # prev not a string
        b'{"i":0,"prev":"","s":"\\ud800","v":1}',  # lone surrogate
        b"[1]",
        b"\xff",
    ],
)
def test_decode_entry_refuses_non_canonical(data: bytes) -> None:
    with pytest.raises(EncodingError):
        decode_entry(data)


def test_make_entry_refuses_reserved_and_floats() -> None:
    with pytest.raises(EncodingError, match="reserved"):
        make_entry(0, None, {"i": 3})
    with pytest.raises(EncodingError, match="floats"):
        make_entry(0, None, {"ts": 1.0})
    with pytest.raises(EncodingError):
        make_entry(1, None, {})
    with pytest.raises(EncodingError):
        make_entry(-1, None, {})


def test_tree_head_bytes_vector() -> None:
    head = TreeHead("MY", 258, bytes(range(32)), 1_714_521_600)
    expected = (
        b"petanda/v1/tree-head\x00"
        + b"\x02MY"
        + (258).to_bytes(8, "big")
        + bytes(range(32))
        + (1_714_521_600).to_bytes(8, "big")
    )
    assert tree_head_bytes(head) == expected
    assert tree_head_bytes(head).hex() == (  # the vector printed in docs/auditors.md
        "706574616e64612f76312f747265652d68656164" "00" "02" "4d59" "0000000000000102"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" "0000000066318600"
    )  # fmt: skip
    signed = sign_tree_head(head, KEY)
    assert TreeHead.from_json(json.loads(json.dumps(signed.to_json()))) == signed


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("tree_size", 1.9),
        ("tree_size", "3"),
        ("tree_size", True),
        ("timestamp", -1),
        ("node_id", "MÝ"),
        ("node_id", ""),
        ("root_hash", "00"),
        ("signature", "zz"),
        ("tree_size", 2**64),
    ],
)
def test_tree_head_from_json_is_strict(name: str, value: object) -> None:
    good = sign_tree_head(TreeHead("MY", 3, bytes(32), T0), KEY).to_json()
    with pytest.raises(EncodingError):
        TreeHead.from_json({**good, name: value})
    with pytest.raises(EncodingError):
        TreeHead.from_json({k: v for k, v in good.items() if k != name})


def test_check_heads_finds_forks() -> None:
    entries = build_entries(10)
    a, b = heads_for(entries, [5, 10])
    check_heads([a, b])
    other = sign_tree_head(TreeHead(NODE, 10, bytes(32), b.timestamp + 1), KEY)
    with pytest.raises(LogFork, match="size 10 with different roots"):
        check_heads([a, b, other])
    shrunk = sign_tree_head(TreeHead(NODE, 5, a.root_hash, b.timestamp + 1), KEY)
    with pytest.raises(LogFork, match="shrank"):
        check_heads([a, b, shrunk])


# --- verify_log ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_valid_log_verifies(layout: str) -> None:
    entries = build_entries(N)
    verify_log(entries, heads_for(entries, LAYOUTS[layout]), KEY.public_key(), node_id=NODE)


def test_empty_log_verifies_and_uncovered_entries_do_not() -> None:
    verify_log([], heads_for([], [0]), KEY.public_key(), node_id=NODE)
    verify_log([], [], KEY.public_key(), node_id=NODE)
    entries = build_entries(3)
    with pytest.raises(LogBreak) as info:
        verify_log(entries, [], KEY.public_key(), node_id=NODE)
    assert info.value.index == 0


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("how", TAMPERS)
@pytest.mark.parametrize("i", [0, 1, 13, N - 2, N - 1])
def test_tampering_names_the_first_bad_index(layout: str, how: str, i: int) -> None:
    entries = build_entries(N)
    altered, expected = tamper(entries, how, i)
    with pytest.raises(LogBreak) as info:
        verify_log(altered, heads_for(entries, LAYOUTS[layout]), KEY.public_key(), node_id=NODE)
    assert info.value.index == expected, str(info.value)


def test_appended_entry_beyond_the_last_head_is_named() -> None:
    entries = build_entries(N)
    extra = [*entries, make_entry(N, entries[-1], event(N))]
    with pytest.raises(LogBreak, match="not covered") as info:
        verify_log(extra, heads_for(entries, [N]), KEY.public_key(), node_id=NODE)
    assert info.value.index == N


def test_rewritten_suffix_with_recomputed_chain_is_caught_by_the_roots() -> None:
    entries = build_entries(N)
    rewritten = entries[:20]
    previous = entries[19]
    for i in range(20, N):
        entry = make_entry(i, previous, {**event(i), "reason": "rewritten"})
        rewritten.append(entry)
        previous = entry
    with pytest.raises(LogBreak) as info:
        verify_log(rewritten, heads_for(entries, [10, 20, 30, N]), KEY.public_key(), node_id=NODE)
    assert info.value.index == 20


def test_signatures_and_node_are_checked() -> None:
    entries = build_entries(5)
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    with pytest.raises(SignatureError):
        verify_log(entries, heads_for(entries, [5], other), KEY.public_key(), node_id=NODE)
    with pytest.raises(SignatureError, match="names node"):
        verify_log(entries, heads_for(entries, [5]), KEY.public_key(), node_id="TH")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=30),
    data=st.data(),
)
def test_property_single_alteration_is_located(n: int, data: st.DataObject) -> None:
    entries = build_entries(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 1), label="index")
    how = data.draw(st.sampled_from([t for t in TAMPERS if t != "relink"]), label="how")
    sizes = sorted(set(data.draw(st.lists(st.integers(0, n), max_size=4), label="sizes")) | {n})
    heads = heads_for(entries, sizes)
    verify_log(entries, heads, KEY.public_key(), node_id=NODE)
    altered, expected = tamper(entries, how, i)
    with pytest.raises(LogBreak) as info:
        verify_log(altered, heads, KEY.public_key(), node_id=NODE)
    assert info.value.index == expected, str(info.value)


# --- petanda audit verify -----------------------------------------------------------------------------


def test_cli_verify_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = build_entries(N)
    heads = heads_for(entries, [10, N])
    assert run("verify", str(write_dir(tmp_path / "log", entries, heads))) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {N} entries, 2 tree heads, latest root {heads[-1].root_hash.hex()}")
    assert run("verify", str(tmp_path / "log"), "--public-key", PUBLIC.hex()) == 0


@pytest.mark.parametrize("how", TAMPERS)
@pytest.mark.parametrize("i", [0, 17, N - 1])
def test_cli_verify_names_the_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str, i: int
) -> None:
    entries = build_entries(N)
    altered, expected = tamper(entries, how, i)
    directory = write_dir(tmp_path / "log", altered, heads_for(entries, [N]))
    assert run("verify", str(directory)) == 1
    assert f"FAILED: first bad index {expected}:" in capsys.readouterr().out


@pytest.mark.parametrize("fork", ["same-size-other-root", "shrinks"])
def test_cli_verify_reports_forks(tmp_path: Path, capsys: pytest.CaptureFixture[str], fork: str) -> None:
    entries = build_entries(N)
    heads = heads_for(entries, [20, N])
    if fork == "same-size-other-root":
        bad = sign_tree_head(TreeHead(NODE, 20, root_hash([*build_entries(20)[:19], b"x"]), T0 + 99), KEY)
    else:
        bad = sign_tree_head(TreeHead(NODE, 20, heads[0].root_hash, heads[-1].timestamp + 60), KEY)
    assert run("verify", str(write_dir(tmp_path / "log", entries, [*heads, bad]))) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED: fork:")


def test_cli_verify_bad_signature_and_pinned_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = build_entries(N)
    head = heads_for(entries, [N])[0]
    forged_head = TreeHead(NODE, N, head.root_hash, head.timestamp + 1, head.signature)
    assert run("verify", str(write_dir(tmp_path / "a", entries, [forged_head]))) == 1
    assert "FAILED: signature:" in capsys.readouterr().out
    assert run("verify", str(write_dir(tmp_path / "b", entries, [head])), "--public-key", "00" * 32) == 1
    assert "FAILED: signature:" in capsys.readouterr().out


@pytest.mark.parametrize("breakage", ["missing-dir", "node-json", "head-line", "no-entries-file"])
def test_cli_verify_unreadable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: str
) -> None:
    entries = build_entries(5)
    directory = write_dir(tmp_path / "log", entries, heads_for(entries, [5]))
    if breakage == "missing-dir":
        directory = tmp_path / "nowhere"
    elif breakage == "node-json":
        (directory / "node.json").write_text('{"node_id": "MY", "public_key": "abc"}')
    elif breakage == "head-line":
        with (directory / "tree-heads.jsonl").open("a") as f:
            f.write('{"tree_size": "x"}\n')
    else:
        (directory / "entries.jsonl").unlink()
    assert run("verify", str(directory)) == 2
    assert capsys.readouterr().out.startswith("petanda: ")


# --- fetch: CLIENT-SIDE UNIT TESTS against an in-process fake stub (no network) -----------------------


@dataclass
class FakeAuditor:
    """A stand-in for AuditorServiceStub serving ``entries`` and ``heads`` (pages capped at ``cap``)."""

    entries: list[bytes]
    heads: list[TreeHead]
    public: bytes = PUBLIC
    cap: int = 1_000_000
    proofs: list[tuple[int, int]] = field(default_factory=list)
    served: list[bytes] | None = None

    def GetPublicKey(self, request: Any, *, timeout: float) -> auditor_pb2.GetPublicKeyResponse:
        return auditor_pb2.GetPublicKeyResponse(node_id=NODE, public_key=self.public)

    @staticmethod
    def _proto(head: TreeHead) -> common_pb2.SignedTreeHead:
        return common_pb2.SignedTreeHead(
            node_id=head.node_id,
            tree_size=head.tree_size,
            root_hash=head.root_hash,
            timestamp=head.timestamp,
            signature=head.signature,
        )

    def GetTreeHead(self, request: Any, *, timeout: float) -> common_pb2.SignedTreeHead:
        return self._proto(max(self.heads, key=lambda h: h.tree_size))

    def GetFreshTreeHead(self, request: Any, *, timeout: float) -> auditor_pb2.FreshTreeHead:
        """The latest head, as a node whose latest head already covers its whole log answers."""
        head = max(self.heads, key=lambda h: h.tree_size)
        return auditor_pb2.FreshTreeHead(head=self._proto(head), log_size=head.tree_size)

    def ListTreeHeads(self, request: Any, *, timeout: float) -> Iterator[common_pb2.SignedTreeHead]:
        return iter([self._proto(h) for h in self.heads])

    def GetEntries(self, request: Any, *, timeout: float) -> Iterator[auditor_pb2.AuditEntry]:
        source = self.served if self.served is not None else self.entries
        end = min(request.end, request.start + self.cap)
        return iter(auditor_pb2.AuditEntry(index=i, entry=source[i]) for i in range(request.start, end))

    def GetConsistencyProof(self, request: Any, *, timeout: float) -> auditor_pb2.ProofResponse:
        self.proofs.append((request.first, request.second))
        return auditor_pb2.ProofResponse(
            hashes=consistency_proof(self.entries[: request.second], request.first)
        )

    def ListRecoveries(self, request: Any, *, timeout: float) -> auditor_pb2.ListRecoveriesResponse:
        return auditor_pb2.ListRecoveriesResponse()  # a node never restored


def test_fetch_then_fetch_incrementally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = build_entries(60)
    fake = FakeAuditor(entries[:25], heads_for(entries, [10, 25]), cap=4)
    result = fetch_log(fake, tmp_path / "log", now=T0 + 1, page=7)
    assert (result.previous_size, result.tree_size) == (0, 25)
    assert (tmp_path / "log" / "entries.jsonl").read_bytes() == b"".join(e + b"\n" for e in entries[:25])
    assert run("verify", str(tmp_path / "log")) == 0

    fake.entries = entries
    fake.heads = heads_for(entries, [40, 60])  # the node no longer lists its old heads; we keep them
    result = fetch_log(fake, tmp_path / "log", now=T0 + 2, page=7)
    assert (result.previous_size, result.tree_size) == (25, 60)
    assert fake.proofs == [(25, 60)]
    log = load_dir(tmp_path / "log")
    assert log.entries == entries
    assert sorted(h.tree_size for h in log.heads) == [10, 25, 40, 60]
    assert log.fetched_at == T0 + 2
    assert run("verify", str(tmp_path / "log")) == 0
    assert "OK: 60 entries, 4 tree heads" in capsys.readouterr().out


def test_fetch_refuses_a_rewritten_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = build_entries(30)
    fetch_log(FakeAuditor(entries[:20], heads_for(entries, [20])), tmp_path / "log", now=T0 + 1)
    rewritten = [*entries[:5], forged(entries, 5)]
    previous = rewritten[-1]
    for i in range(6, 30):
        previous = make_entry(i, previous, event(i))
        rewritten.append(previous)
    fake = FakeAuditor(rewritten, heads_for(rewritten, [30]))
    with pytest.raises(ConsistencyProofError, match="does not extend"):
        fetch_log(fake, tmp_path / "log", now=T0 + 2)
    assert load_dir(tmp_path / "log").entries == entries[:20]  # untouched
    assert (tmp_path / "log" / f"rejected-{T0 + 2}" / "tree-heads.jsonl").exists()


def test_fetch_keeps_evidence_of_a_fork(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = build_entries(30)
    fetch_log(FakeAuditor(entries[:20], heads_for(entries, [20])), tmp_path / "log", now=T0 + 1)
    other = [*entries[:19], forged(entries, 19)]
    fake = FakeAuditor(other, heads_for(other, [20]))
    with pytest.raises(LogFork):
        fetch_log(fake, tmp_path / "log", now=T0 + 2)
    assert run("verify", str(tmp_path / "log" / f"rejected-{T0 + 2}")) == 1
    assert "FAILED: fork:" in capsys.readouterr().out


def test_fetch_refuses_entries_that_do_not_give_the_signed_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = build_entries(30)
    served = list(entries)
    served[12] = modified(served[12])
    fake = FakeAuditor(entries, heads_for(entries, [30]), served=served)
    with pytest.raises(LogBreak):
        fetch_log(fake, tmp_path / "log", now=T0 + 1)
    assert not (tmp_path / "log" / "entries.jsonl").exists()
    assert run("verify", str(tmp_path / "log" / f"rejected-{T0 + 1}")) == 1
    assert "first bad index 12:" in capsys.readouterr().out


def test_fetch_refuses_another_key_or_node(tmp_path: Path) -> None:
    entries = build_entries(10)
    fetch_log(FakeAuditor(entries, heads_for(entries, [10])), tmp_path / "log", now=T0 + 1)
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    other_public = other.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with pytest.raises(SignatureError, match="differs"):
        fetch_log(
            FakeAuditor(entries, heads_for(entries, [10], other), other_public), tmp_path / "log", now=T0 + 2
        )
    bad = FakeAuditor(entries, [TreeHead("TH", 10, root_hash(entries), T0)])
    with pytest.raises(WrongNodeError):
        fetch_log(bad, tmp_path / "fresh", now=T0 + 3)


def test_fetch_blames_a_damaged_local_copy_not_the_node(tmp_path: Path) -> None:
    entries = build_entries(20)
    fetch_log(FakeAuditor(entries[:10], heads_for(entries, [10])), tmp_path / "log", now=T0 + 1)
    lines = (tmp_path / "log" / "entries.jsonl").read_bytes().split(b"\n")
    lines[3] = modified(lines[3])
    (tmp_path / "log" / "entries.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match="its own latest tree head"):
        fetch_log(FakeAuditor(entries, heads_for(entries, [10, 20])), tmp_path / "log", now=T0 + 2)


def test_fetch_after_a_rejected_first_fetch(tmp_path: Path) -> None:
    entries = build_entries(12)
    served = [*entries[:5], modified(entries[5]), *entries[6:]]
    with pytest.raises(LogBreak):
        fetch_log(FakeAuditor(entries, heads_for(entries, [12]), served=served), tmp_path / "log", now=T0 + 1)
    result = fetch_log(FakeAuditor(entries, heads_for(entries, [12])), tmp_path / "log", now=T0 + 2)
    assert result.tree_size == 12
    assert load_dir(tmp_path / "log").entries == entries
