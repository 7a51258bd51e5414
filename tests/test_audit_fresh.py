"""What ``petanda audit fetch`` says about how far the fetched log reaches (CLIENT-SIDE UNIT TESTS against
the fake AuditorService stub of tests/test_audit_verify.py; the real node is in test_audit_integration)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import auditor_pb2
from client.tools.audit import _freshness, fetch_log
from tests.test_audit_verify import T0, FakeAuditor, build_entries, heads_for, run


class _Unimplemented(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNIMPLEMENTED


class OlderNode(FakeAuditor):
    """A node from before GetFreshTreeHead."""

    def GetFreshTreeHead(self, request: Any, *, timeout: float) -> auditor_pb2.FreshTreeHead:
        raise _Unimplemented()


@dataclass
class RateLimited(FakeAuditor):
    """A node whose latest head leaves ``unsigned`` entries out, refusing a new one for 42.5 s."""

    unsigned: int = 0

    def GetFreshTreeHead(self, request: Any, *, timeout: float) -> auditor_pb2.FreshTreeHead:
        head = max(self.heads, key=lambda h: h.tree_size)
        return auditor_pb2.FreshTreeHead(
            head=self._proto(head), log_size=head.tree_size + self.unsigned, retry_after_ms=42_500
        )


def test_a_rate_limited_fetch_says_what_it_left_out(tmp_path: Path) -> None:
    entries = build_entries(30)
    result = fetch_log(
        RateLimited(entries[:30], heads_for(entries, [20]), unsigned=10), tmp_path / "log", now=T0
    )
    assert (result.tree_size, result.log_size, result.unsigned, result.signed_now) == (20, 30, 10, False)
    line = _freshness(result)
    assert line.startswith("note: 10 entries the node wrote after its latest head") and "in 43 s" in line
    assert run("verify", str(tmp_path / "log")) == 0


def test_a_node_without_fresh_heads_is_still_fetched(tmp_path: Path) -> None:
    entries = build_entries(12)
    result = fetch_log(OlderNode(entries, heads_for(entries, [12])), tmp_path / "log", now=T0)
    assert (result.tree_size, result.log_size, result.unsigned) == (12, None, 0)
    assert _freshness(result).startswith("note: the node is too old to sign a head on demand")
    assert run("verify", str(tmp_path / "log")) == 0


def test_a_complete_fetch_says_so(tmp_path: Path) -> None:
    entries = build_entries(12)
    result = fetch_log(FakeAuditor(entries, heads_for(entries, [5, 12])), tmp_path / "log", now=T0)
    assert (result.tree_size, result.unsigned) == (12, 0)
    assert _freshness(result).startswith("complete: the node's whole log as of 2024-05-01T00:02:00Z")


def test_other_errors_of_the_fresh_head_call_are_not_hidden(tmp_path: Path) -> None:
    class Denied(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.PERMISSION_DENIED

    class Refusing(FakeAuditor):
        def GetFreshTreeHead(self, request: Any, *, timeout: float) -> auditor_pb2.FreshTreeHead:
            raise Denied()

    entries = build_entries(5)
    with pytest.raises(Denied):
        fetch_log(Refusing(entries, heads_for(entries, [5])), tmp_path / "log", now=T0)
