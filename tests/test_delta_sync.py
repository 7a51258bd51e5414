"""Incremental sync: a peer that holds version v fetches only what changed, and ends with the same bytes.

PROTOCOL UNIT TESTS of client/protocol/delta.py, then INTEGRATION TESTS on two real nodes
(tests/fednet.py): after additions, a retraction, an expiry and a key rotation at TH, MY's copy of every
filter and record set equals, byte for byte, what a full download of TH's version gives; a corrupted or
reordered delta is refused and the artefacts are downloaded whole instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

import node.node as node_module
from client.protocol.auditlog import decode_entry
from client.protocol.delta import apply_delta, decode_delta, make_delta
from client.protocol.errors import EncodingError
from client.protocol.kinds import TIER_OPRF
from client.protocol.manifest import SignedManifest
from client.protocol.metadata import IndicatorMeta, RecordSet, build_record_set, choose_prefix_bits, seal
from node.servicers import PeerServicer
from tests.fednet import Net, start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
META = IndicatorMeta("investment", date(2026, 1, 1), date(2026, 11, 1), 80, "AMBER", 1)


def _records(digests: list[bytes], bits: int | None = None) -> RecordSet:
    sealed = [seal(d, META, node_id="TH", epoch=1, kind="phone", tier=TIER_OPRF) for d in digests]
    bits = choose_prefix_bits(len(sealed)) if bits is None else bits
    data, _ = build_record_set(sealed, bits)
    return RecordSet.from_bytes(data, bits)


def test_a_delta_rebuilds_the_new_artefacts_exactly() -> None:
    digests = [bytes([i % 256, i // 256]) * 32 for i in range(200)]
    old, new = _records(digests[:150], 2), _records(digests[:149] + digests[150:160], 2)
    old_filter = bytes(range(256)) * 5
    new_filter = bytearray(old_filter)
    new_filter[0] ^= 0x80  # bit 0
    new_filter[10] ^= 0x01
    new_filter[-1] ^= 0x11  # the last byte
    new_filter = bytes(new_filter)
    delta = make_delta(
        from_version=3,
        to_version=4,
        kind="phone",
        tier=TIER_OPRF,
        old_filter=old_filter,
        new_filter=new_filter,
        old_records=old,
        new_records=new,
    )
    decoded = decode_delta(delta)
    assert (decoded.from_version, decoded.to_version) == (3, 4)
    assert decoded.filter_part == [0, 87, len(old_filter) * 8 - 8 + 3, len(old_filter) * 8 - 1]
    assert isinstance(decoded.records_part, list)
    assert apply_delta(decoded, old_filter, old) == (new_filter, new.to_bytes())
    assert len(delta) < len(new_filter) + len(new.to_bytes())
    # another filter size or bucket count: the delta carries those artefacts whole
    bigger = _records(digests, 3)
    whole = decode_delta(
        make_delta(
            from_version=3,
            to_version=4,
            kind="phone",
            tier=TIER_OPRF,
            old_filter=old_filter,
            new_filter=new_filter + b"x",
            old_records=old,
            new_records=bigger,
        )
    )
    assert apply_delta(whole, old_filter, old) == (new_filter + b"x", bigger.to_bytes())


def test_a_corrupted_or_reordered_delta_is_refused() -> None:
    old = _records([bytes([i]) * 64 for i in range(40)], 2)
    new = _records([bytes([i]) * 64 for i in range(1, 41)], 2)
    delta = make_delta(
        from_version=1,
        to_version=2,
        kind="phone",
        tier=TIER_OPRF,
        old_filter=bytes(64),
        new_filter=bytes(63) + b"\x01",
        old_records=old,
        new_records=new,
    )
    with pytest.raises(EncodingError, match="label"):
        decode_delta(b"x" + delta[1:])
    with pytest.raises(EncodingError):
        decode_delta(delta[:-1])
    with pytest.raises(EncodingError, match="strictly increasing"):
        decode_delta(_reordered(delta))
    decoded = decode_delta(delta)
    decoded.records_part = [(99, [], [])]  # a bucket past the end cannot be applied
    with pytest.raises(EncodingError, match="past the"):
        apply_delta(decoded, bytes(64), old)


# --- two real nodes -----------------------------------------------------------------------------------


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    installed: dict[str, Any] = {}
    original = PeerServicer.GetDelta

    def wrapper(self: PeerServicer, request: Any, context: Any) -> Any:
        hook = installed.get("GetDelta")
        return hook(original, self, request, context) if hook else original(self, request, context)

    monkeypatch.setattr(PeerServicer, "GetDelta", wrapper)
    return installed


@pytest.fixture
def net(tmp_path: Path, hooks: dict[str, Any]) -> Iterator[Net]:
    net = start_net(tmp_path / "net", ["MY", "TH"], now=NOW, limits={"max_batch": 1000})
    for node_id in ("MY", "TH"):
        node = net.node(node_id)
        node.config = node.config.model_copy(
            update={"publish": node.config.publish.model_copy(update={"keep_versions": 5})}
        )
    _ingest(net, tmp_path, "th-1", range(300))
    _ingest(net, tmp_path, "my", range(1), node_id="MY")
    net.sync("MY")
    yield net
    net.close()


def _ingest(net: Net, root: Path, name: str, numbers: Any, *, node_id: str = "TH", expires: str = "") -> None:
    path = root / f"{name}.csv"
    path.write_text(
        "kind,value,category,first_seen,last_seen,confidence,tlp,expires_at\n"
        + "".join(
            f"phone,+6681{n:07d},investment,2026-01-01,2026-11-01,80,AMBER,{expires}\n" for n in numbers
        )
        + "".join(
            f"domain,scam-{n}.example,phishing,2026-01-01,2026-11-01,60,GREEN,{expires}\n" for n in numbers
        )
    )
    report = net.node(node_id).ingest([path], now=net.clock.now)
    assert report.rejections == []


def _last_pull(net: Net) -> dict[str, Any]:
    my = net.node("MY")
    entries = [decode_entry(raw) for raw in my.store.audit_entries(0, my.store.audit_size())]
    return [
        e for e in entries if e["action"] == "sync.pull" and e.get("peer") == "TH" and e["result"] == "ok"
    ][-1]


def _same_as_full(net: Net) -> int:
    """MY's copy of TH equals TH's artefacts of its latest version byte for byte; return their size."""
    my, th = net.node("MY"), net.node("TH")
    manifest = SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"").manifest
    assert manifest.version == th.latest_manifest().manifest.version
    size = 0
    for entry in manifest.entries:
        full_filter = th.filter_bytes(manifest.version, entry.kind, entry.tier)
        full_records = th.records_bytes(manifest.version, entry.kind, entry.tier)
        assert my.store.peer_filter("TH", entry.kind, entry.tier) == full_filter
        assert my.store.peer_records("TH", entry.kind, entry.tier) == full_records
        size += len(full_filter) + len(full_records)
    return size


def _sync(net: Net) -> dict[str, Any]:
    (result,) = net.sync("MY")
    assert result.ok, result
    return _last_pull(net)


def test_delta_sync_equals_full_sync_across_additions_retractions_expiries_and_rotation(
    net: Net, tmp_path: Path
) -> None:
    net.clock.now += 60
    _ingest(net, tmp_path, "th-2", range(300, 303))  # 1 % more
    pulled = _sync(net)
    full = _same_as_full(net)
    assert pulled["deltas"] == 2 and pulled["bytes"] < full * 0.2, (pulled, full)

    net.clock.now += 60
    th = net.node("TH")
    th.retract("phone", "+66810000007", now=net.clock.now)
    pulled = _sync(net)
    _same_as_full(net)
    assert pulled["deltas"] == 1 and pulled["reused"] == 1  # the domains did not change: nothing fetched

    net.clock.now += 60
    _ingest(net, tmp_path, "th-3", range(400, 402), expires="2026-11-30")
    _sync(net)
    net.clock.now = NOW + 26 * 3600  # past their expiry (the next UTC day)
    assert th.maintain(now=net.clock.now) is not None  # the expiry republishes
    pulled = _sync(net)
    _same_as_full(net)
    assert pulled["deltas"] == 2

    net.clock.now += 60
    th.rotate(now=net.clock.now)
    th.publish(now=net.clock.now)
    pulled = _sync(net)
    _same_as_full(net)
    assert pulled["deltas"] + pulled["reused"] <= 2 and pulled["deltas_refused"] == 0


@pytest.mark.parametrize("damage", ["corrupt", "reorder"])
def test_a_bad_delta_is_refused_and_the_artefacts_fetched_whole(
    net: Net, tmp_path: Path, hooks: dict[str, Any], damage: str
) -> None:
    from client._proto.petanda.v1 import common_pb2

    def bad(original: Any, self: PeerServicer, request: Any, context: Any) -> Any:
        data = b"".join(c.data for c in original(self, request, context))
        if damage == "corrupt":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        else:
            data = _reordered(data)
        return iter([common_pb2.Chunk(offset=0, total_size=len(data), data=data)])

    hooks["GetDelta"] = bad
    net.clock.now += 60
    _ingest(net, tmp_path, "th-2", range(300, 310))
    pulled = _sync(net)
    assert pulled["deltas"] == 0 and pulled["deltas_refused"] == 2
    _same_as_full(net)


def _entry(bucket: int, removed: list[bytes], added: list[bytes]) -> bytes:
    return (
        bucket.to_bytes(4, "big")
        + len(removed).to_bytes(4, "big")
        + b"".join(removed)
        + len(added).to_bytes(4, "big")
        + b"".join(added)
    )


def _reordered(data: bytes) -> bytes:
    """The same delta with its first two bucket entries swapped."""
    decoded = decode_delta(data)
    assert isinstance(decoded.records_part, list) and len(decoded.records_part) >= 2
    parts = decoded.records_part
    tail = b"".join(_entry(*p) for p in parts)
    new_tail = b"".join(_entry(*p) for p in [parts[1], parts[0], *parts[2:]])
    assert data.endswith(tail)
    return data[: len(data) - len(tail)] + new_tail


def test_served_record_sets_and_deltas_are_kept_in_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GetRecords and GetDelta caches of a serving node: least recently used out first, bounded by
    # count and by bytes, and the newest entry kept even when it alone is over the byte bound.
    monkeypatch.setattr(node_module, "_RECORD_SETS", 3)
    monkeypatch.setattr(node_module, "_RECORD_SETS_BYTES", 100)
    cache: OrderedDict[Any, bytes] = OrderedDict()
    for key in "abc":
        node_module._remember(cache, key, b"x" * 10)
    cache.move_to_end("a")  # a hit
    node_module._remember(cache, "d", b"x" * 10)
    assert list(cache) == ["c", "a", "d"]  # b, the least recently used, went out
    node_module._remember(cache, "e", b"x" * 85)
    assert list(cache) == ["d", "e"] and sum(map(len, cache.values())) <= 100
    node_module._remember(cache, "f", b"x" * 500)
    assert list(cache) == ["f"]
