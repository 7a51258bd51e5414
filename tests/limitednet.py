"""MY, TH and SG on real servers (``tests/fednet.py``) under small limits, MY holding the sample CSV,
published: the federation of the rate limit, sighting, pruning, RPC error and auditor read tests, and
the helpers they share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client._proto.petanda.v1 import peer_pb2
from client.protocol.auditlog import decode_entry
from client.protocol.kinds import kind_code
from client.protocol.manifest import SignedManifest
from client.protocol.metadata import decode_bucket
from tests.fednet import Net, start_net

DAY = 86_400
#: 2024-06-01T01:00:00Z: one hour into a UTC day.
T0 = 19_875 * DAY + 3600
DATA = Path(__file__).parent / "data"

LIMITS: dict[str, object] = {
    "max_batch": 10,
    "oprf_burst": 10,
    "oprf_rate_per_s": 1.0,
    "oprf_daily_quota": 8,
    "peer_rpc_rate_per_s": 1.0,
    "peer_rpc_burst": 5,
    "sightings_daily": 2,
    "check_rate_per_s": 1.0,
    "check_burst": 10,
    "check_daily_quota": 25,
    "check_deadline_ms": 1000,
    "max_check_deadline_ms": 2000,
}


def start_limited(root: Path) -> Net:
    """MY, TH and SG, every one a peer of the others, under :data:`LIMITS`; MY holds the sample CSV."""
    net = start_net(root / "fed", ["MY", "TH", "SG"], now=T0, limits=LIMITS)
    try:
        net.node("MY").ingest([DATA / "indicators.csv"], now=T0)
    except BaseException:
        net.close()
        raise
    return net


@pytest.fixture(name="net")
def limited_net(tmp_path: Path) -> Iterator[Net]:
    """The fixture ``net``: :func:`start_limited` in the test's directory, closed after the test
    (a test module imports it: ``from tests.limitednet import limited_net``)."""
    net = start_limited(tmp_path)
    yield net
    net.close()


def rpc_error(call: Any) -> grpc.RpcError:
    """Run ``call`` (which must fail, a stream included) and return its error."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return info.value


def retry_ms(error: grpc.RpcError) -> int | None:
    """The ``retry-after-ms`` trailer of ``error``, if any."""
    value = dict(error.trailing_metadata() or ()).get("retry-after-ms")
    return None if value is None else int(value)


def audit_entries(net: Net, node_id: str) -> list[dict[str, Any]]:
    store = net.node(node_id).store
    return [decode_entry(e) for e in store.audit_entries(0, store.audit_size())]


def audit_actions(net: Net, node_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_entries(net, node_id) if e.get("action") == action]


def manifest_request(known: int = 0) -> Any:
    return peer_pb2.GetManifestRequest(known_version=known)


def published_tag(net: Net, node_id: str) -> tuple[int, str, int, bytes]:
    """``(version, kind, tier, tag)`` of one record in ``node_id``'s latest publication."""
    node = net.node(node_id)
    manifest = SignedManifest.from_bytes(node.store.latest_manifest() or b"").manifest
    for entry in manifest.entries:
        for bucket in range(1 << entry.prefix_bits):
            data = node.store.get_bucket(manifest.version, entry.kind, entry.tier, bucket)
            records = decode_bucket(data) if data else []
            if records:
                return manifest.version, entry.kind, entry.tier, records[0].tag
    raise AssertionError("nothing published")


def report_sighting(stub: Any, version: int, kind: str, tier: int, tag: bytes, net: Net | None = None) -> Any:
    if net is not None:
        net.clock.now += 1  # keep the per-peer call rate limit out of the way
    request = peer_pb2.ReportSightingRequest(
        kind=kind_code(kind), tier=tier, version=version, tag=tag, seen_at=T0
    )
    return stub.ReportSighting(request, timeout=5)
