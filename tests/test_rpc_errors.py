"""Status codes of the node's RPCs, over real servers (``tests/limitednet.py``): INVALID_ARGUMENT naming
the field for values the store cannot hold, INTERNAL with no detail for unexpected exceptions, and no
server path in the NOT_FOUND of an epoch whose key cannot be loaded (its wrapped row in the store was
altered).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import auditor_pb2, common_pb2, peer_pb2
from client.protocol import oprf
from client.protocol.digest import oprf_input
from client.protocol.kinds import kind_code
from tests.fednet import Net
from tests.keyrows import tamper_wrapped_key
from tests.limitednet import (
    limited_net,  # noqa: F401 - the fixture net
    manifest_request,
    rpc_error,
)

pytestmark = pytest.mark.timeout(60)


def test_values_the_store_cannot_hold_are_invalid_arguments_naming_the_field(net: Net) -> None:
    stub = net.peer_stub("MY", as_member="TH")
    phone, oprf_tier = kind_code("phone"), common_pb2.TIER_OPRF
    huge = 1 << 63
    calls = {
        "version": lambda: stub.GetFilter(
            peer_pb2.GetFilterRequest(version=huge, kind=phone, tier=oprf_tier), timeout=5
        ),
        "known_version": lambda: stub.GetManifest(manifest_request(huge), timeout=5),
    }
    auditor = net.auditor("MY")
    calls["tree_size"] = lambda: auditor.GetInclusionProof(
        auditor_pb2.GetInclusionProofRequest(index=0, tree_size=(1 << 64) - 1), timeout=5
    )
    calls["second"] = lambda: auditor.GetConsistencyProof(
        auditor_pb2.GetConsistencyProofRequest(first=1, second=huge), timeout=5
    )
    for field, call in calls.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error)
        assert (error.details() or "").startswith(f"{field}: "), error.details()


def test_an_unexpected_exception_is_internal_with_no_detail(
    net: Net, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    my = net.node("MY")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("/srv/petanda/secret.db is on fire")

    monkeypatch.setattr(my, "latest_manifest", boom)
    monkeypatch.setattr(my, "filter_bytes", boom)
    stub = net.peer_stub("MY", as_member="TH")
    request = peer_pb2.GetFilterRequest(version=1, kind=kind_code("phone"), tier=common_pb2.TIER_OPRF)
    with caplog.at_level(logging.ERROR, logger="node.rpc"):
        for call in (
            lambda: stub.GetManifest(manifest_request(), timeout=5),
            lambda: stub.GetFilter(request, timeout=5),
        ):
            error = rpc_error(call)
            assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")
    assert sum("on fire" in r.getMessage() or "on fire" in (r.exc_text or "") for r in caplog.records) >= 2


def test_an_epoch_whose_key_cannot_be_loaded_is_not_found_without_a_path(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    my = net.node("MY")
    my.rotate(now=net.clock.now)
    tamper_wrapped_key(my.config.store.url, 1)
    my._oprf_keys.clear()  # the key was read before the row was altered: another replica's first read
    stub = net.peer_stub("MY", as_member="TH")
    _, elements = oprf.blind([oprf_input("phone", "+6591000000")], oprf.MODE_VOPRF)
    request = peer_pb2.EvaluateOprfRequest(
        epoch=1, kind=kind_code("phone"), blinded_elements=elements, verifiable=True
    )
    with caplog.at_level(logging.ERROR, logger="node.node"):
        error = rpc_error(lambda: stub.EvaluateOprf(request, timeout=5))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert str(my.dir) not in (error.details() or "") and "unwrap" not in (error.details() or "")
    assert any("key of epoch 1 of MY does not unwrap" in r.getMessage() for r in caplog.records)
