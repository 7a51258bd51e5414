"""A peer's full sync now that sealed records travel with the filters: bytes and time by size.

Two real nodes in this process (``tests.fednet``: gRPC over mutual TLS on 127.0.0.1, SQLite stores).
The holder (TH) publishes one phone filter of N indicators with its record set: the digests are random
64-byte strings standing in for OPRF outputs (computing 1M real ones would time the OPRF, not the sync),
every record is sealed as a node seals it. The asker (MY) then runs one real sync: GetManifest, the
filter and the record set streamed in chunks, every check of docs/PROTOCOL.md (manifest, plausibility,
filter hash, record-set parse, Merkle root of the buckets), and the store write.

Beside it, what the check reads from that copy: parsing the record set once per version
(``RecordSet.from_bytes``), and opening one record.

Run from the repository root::

    PYTHONPATH=. python bench/bench_sync.py [--sizes 1000,100000,1000000]
    PYTHONPATH=. python bench/bench_sync.py --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

from _common import machine_info, print_table  # bench/ is on sys.path when run as a script

from client.protocol.bloom import BloomFilter, filter_capacity
from client.protocol.kinds import TIER_OPRF
from client.protocol.manifest import (
    GENESIS_HASH,
    FilterEntry,
    Manifest,
    SignedManifest,
    manifest_hash,
    sign_manifest,
)
from client.protocol.metadata import (
    IndicatorMeta,
    RecordSet,
    buckets_root,
    build_buckets,
    choose_prefix_bits,
    seal,
)
from node.node import Node
from tests.fednet import start_net

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp()
META = IndicatorMeta("investment", date(2026, 1, 1), date(2026, 11, 1), 80, "AMBER", 1)


def _publish(th: Node, digests: list[bytes]) -> tuple[int, int, float]:
    """Save the next publication of ``digests`` at ``th`` as a node does (filter sized for its capacity,
    records sealed with synthetic nonces); return filter bytes, records bytes, seconds."""
    start = time.perf_counter()
    epoch = th.epoch
    n = len(digests)
    records = [seal(d, META, node_id="TH", epoch=epoch, kind="phone", tier=TIER_OPRF) for d in digests]
    bits = choose_prefix_bits(n)
    buckets = build_buckets(records, bits)
    bloom = BloomFilter.build(
        digests, p=1e-6, kind="phone", tier=TIER_OPRF, epoch=epoch, node_id="TH", capacity=filter_capacity(n)
    )
    latest = th.store.latest_manifest()
    previous = SignedManifest.from_bytes(latest).manifest if latest else None
    manifest = Manifest(
        node_id="TH",
        epoch=epoch,
        version=previous.version + 1 if previous else 1,
        issued_at=int(NOW),
        expires_at=int(NOW) + 86_400,
        previous_hash=manifest_hash(previous) if previous else GENESIS_HASH,
        oprf_public_key=th.oprf_key(epoch).pk,
        entries=(
            FilterEntry(
                "phone", TIER_OPRF, bloom.sha256(), n, bits, buckets_root(buckets), sum(map(len, buckets))
            ),
        ),
    )
    filter_bytes = bloom.to_bytes()
    th.store.save_publication(
        manifest.version,
        sign_manifest(manifest, th.signing_key).to_bytes(),
        {("phone", TIER_OPRF): filter_bytes},
        {("phone", TIER_OPRF, b): data for b, data in enumerate(buckets)},
    )
    return len(filter_bytes), sum(map(len, buckets)), time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000,1000000", help="indicators per publication")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 and 10,000")
    args = ap.parse_args(argv)
    sizes = [1000, 10_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print("bench_sync: one full sync of a phone filter and its sealed records between two real nodes")
    print(f"machine: {machine_info()}")
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="petanda-bench-") as tmp:
            net = start_net(Path(tmp) / "net", ["MY", "TH"], now=NOW, limits={"max_message_bytes": 8 * 2**20})
            try:
                digests = [os.urandom(64) for _ in range(n)]
                filter_bytes, records_bytes, build_s = _publish(net.node("TH"), digests)
                start = time.perf_counter()
                (result,) = net.sync("MY")
                sync_s = time.perf_counter() - start
                assert result.ok, result
                # 1 % more, 0.1 % retracted: the next version, fetched as a delta
                changed = digests[n // 1000 :] + [os.urandom(64) for _ in range(n // 100)]
                _publish(net.node("TH"), changed)
                start = time.perf_counter()
                (result,) = net.sync("MY")
                delta_s = time.perf_counter() - start
                assert result.ok and result.bytes, result
                delta_bytes = result.bytes
                my = net.node("MY")
                blob = my.store.peer_records("TH", "phone", TIER_OPRF) or b""
                bits = (
                    SignedManifest.from_bytes(my.store.peer_manifest("TH") or b"")
                    .manifest.entries[0]
                    .prefix_bits
                )
                start = time.perf_counter()
                parsed = RecordSet.from_bytes(blob, bits)
                parse_s = time.perf_counter() - start
                tag = parsed.buckets()[0][5:21] if parsed.count else bytes(16)
                start = time.perf_counter()
                for _ in range(1000):
                    parsed.find(tag)
                find_us = (time.perf_counter() - start) * 1000
            finally:
                net.close()
        total = filter_bytes + records_bytes
        rows.append(
            (
                f"{n:,}",
                f"{filter_bytes / 2**20:,.2f}",
                f"{records_bytes / 2**20:,.2f}",
                f"{total / 2**20:,.2f}",
                f"{records_bytes / n:.1f}",
                f"{sync_s:.2f}",
                f"{total / 2**20 / sync_s:,.1f}",
                f"{parse_s * 1000:,.1f}",
                f"{find_us:.1f}",
                f"{delta_bytes / 2**20:,.2f} ({100 * delta_bytes / total:.1f} %)",
                f"{delta_s:.2f}",
                f"{build_s:.1f}",
            )
        )
    print()
    print_table(
        (
            "records",
            "filter MiB",
            "records MiB",
            "total MiB",
            "B/record",
            "sync s",
            "MiB/s",
            "parse ms",
            "find us",
            "delta MiB (of full)",
            "delta s",
            "(publish s)",
        ),
        rows,
    )
    print(
        "\nsync s: GetManifest, filter and record set streamed and verified, tree heads exchanged, store"
        "\nwritten; parse ms: RecordSet.from_bytes once per version at the first check; find us: one"
        "\nlookup by tag; delta: the next version after 1 % added and 0.1 % retracted, fetched as a delta"
        "\n(GetDelta) and verified like a full download. A key rotation re-sends everything."
    )


if __name__ == "__main__":
    main()
