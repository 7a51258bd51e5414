"""Every read of the auditor service is audited, over real servers (``tests/limitednet.py``)."""

from __future__ import annotations

import pytest

from client._proto.petanda.v1 import auditor_pb2
from tests.fednet import Net
from tests.limitednet import (
    audit_entries,
    limited_net,  # noqa: F401 - the fixture net
)

pytestmark = pytest.mark.timeout(60)


def test_every_auditor_read_is_audited(net: Net) -> None:
    auditor = net.auditor("MY")
    size = net.node("MY").store.audit_size()
    list(auditor.ListTreeHeads(auditor_pb2.ListTreeHeadsRequest(), timeout=5))
    auditor.GetInclusionProof(auditor_pb2.GetInclusionProofRequest(index=0, tree_size=size), timeout=5)
    auditor.GetConsistencyProof(auditor_pb2.GetConsistencyProofRequest(first=1, second=size), timeout=5)
    auditor.GetPublicKey(auditor_pb2.GetPublicKeyRequest(), timeout=5)
    actions = [e["action"] for e in audit_entries(net, "MY")[size:]]
    assert actions == [
        "auditor.list_tree_heads",
        "auditor.get_inclusion_proof",
        "auditor.get_consistency_proof",
        "auditor.get_public_key",
    ]
    assert all(e["actor"] == "MY/auditor" for e in audit_entries(net, "MY")[size:])
