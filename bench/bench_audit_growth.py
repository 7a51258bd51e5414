"""The RSS of a serving node while its audit log grows (issue 9's target: 0 to 10M entries, grows <= 100 MB).

One node (MY, SQLite, its config from ``node.testbed``) is opened and its gRPC server started; then its
audit log is appended with ``--entries`` entries in batches (``--batch``, one ``append_audit``
transaction and one signed tree head each, as the node writes them after a batch of work). At each
tenth the script prints the entries, the RSS now and its peak since the server started (``VmRSS``,
``VmHWM``), SQLite's share of the peak (its page caches, capped at 64 MiB per connection by
``node/store/sqlite.py``), the CPU time and the load average. At the end the node's tree
(``node.audit.TileTree``) serves an inclusion and a consistency proof, which are verified against its
signed tree heads, and the growth of the peak RSS from the empty log to the last entry is set against
the target. The node runs in this process (no fork): its RSS is the node's.

Run from the repository root::

    PYTHONPATH=. python bench/bench_audit_growth.py                       # 1,000,000 entries (~1 min)
    PYTHONPATH=. python bench/bench_audit_growth.py --entries 10000000    # the target's 10M (~8 min)
    PYTHONPATH=. python bench/bench_audit_growth.py --quick               # smoke run: 20,000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported

from _common import machine_info, print_table  # bench/ is on sys.path when run as a script
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.protocol.auditlog import TreeHead, verify_tree_head
from client.protocol.merkle import verify_consistency, verify_inclusion
from node.audit import event
from node.config import load_config
from node.node import Node
from node.server import start_server
from node.testbed import build_federation, write_config
from tests.memchild import Probe, rss_bytes

NOW = 1_795_000_000.0
MB = 1_000_000
MIB = 1 << 20
TARGET_MB = 100
NATIONAL = 10_000_000
PEERS = ("TH", "SG", "ID", "PH", "VN", "KH", "LA", "MM", "BN", "TL")


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def _grow(node: Node, entries: int, batch: int) -> tuple[list[TreeHead], dict[str, float]]:
    """Append ``entries`` entries, printing a line at each tenth; return the heads then and the growth."""
    probe = Probe()  # the peaks from now: the node open and serving, its log as it starts
    start_size = node.store.audit_size()
    start = probe.mark(start_size)
    start_rss = rss_bytes()
    step = max(batch, entries // 10 // batch * batch)
    heads: list[TreeHead] = []
    clock, cpu = time.perf_counter(), time.process_time()
    written = 0
    while written < entries:
        n = min(batch, entries - written)
        node.store.append_audit(
            [
                event(
                    "peer.evaluate_oprf",
                    actor=PEERS[i % len(PEERS)],
                    role="peer",
                    now=NOW + i // 100,
                    kind="phone",
                    count=1 + i % 100,
                )
                for i in range(written, written + n)
            ]
        )
        written += n
        head = node.audit.sign_head()
        if written % step == 0 or written == entries:
            assert head is not None
            heads.append(head)
            mark = probe.mark(start_size + written)
            seconds = time.perf_counter() - clock
            row = (
                f"{written:,}",
                _mib(rss_bytes()),
                _mib(mark.peak),
                _mib(mark.sqlite),
                f"{(mark.peak - start.peak) / MB:+,.1f} MB",
                f"{(mark.own - start.own) / MB:+,.1f} MB",
                f"{seconds:,.0f} s, CPU {time.process_time() - cpu:,.0f} s ({written / seconds:,.0f}/s)",
                " ".join(f"{x:.1f}" for x in os.getloadavg()),
            )
            print("  ".join(row), flush=True)
    first, end = probe.marks[1], probe.marks[-1]
    growth: dict[str, float] = {
        "start_rss": start_rss,
        "peak": end.peak - start.peak,
        "own": end.own - start.own,
        "sqlite": end.sqlite,
        "size": end.n,
        # bytes per entry of the peak less SQLite's, from the first tenth (past the first batches' warm-up)
        "slope": Probe.slope(first, end) if end.n > first.n else 0.0,
    }
    return heads, growth


def _prove(node: Node, heads: list[TreeHead]) -> str:
    """Serve and verify an inclusion proof (a leaf of the first tenth) and a consistency proof."""
    key = Ed25519PublicKey.from_public_bytes(node.audit.public_key)
    first, last = heads[0], heads[-1]
    for head in (first, last):
        verify_tree_head(head, key)
    index = first.tree_size // 2
    tree = node.audit_tree(last.tree_size)
    entry = node.store.audit_entries(index, index + 1)[0]
    inclusion = tree.inclusion_proof(index, last.tree_size)
    verify_inclusion(entry, index, last.tree_size, inclusion, last.root_hash)
    consistency = node.consistency_proof(first.tree_size, last.tree_size)
    verify_consistency(first.tree_size, last.tree_size, first.root_hash, last.root_hash, consistency)
    return (
        f"inclusion of entry {index:,} in {last.tree_size:,} ({len(inclusion)} hashes) and consistency "
        f"{first.tree_size:,} -> {last.tree_size:,} ({len(consistency)} hashes): verified"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="entries to append (1,000,000)")
    ap.add_argument("--batch", type=int, default=2_000, help="entries per transaction and tree head (2,000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 entries")
    args = ap.parse_args(argv)
    entries = 20_000 if args.quick else args.entries
    if not 1_000 <= entries <= 100_000_000:
        ap.error(f"--entries: {entries} is outside 1,000..100,000,000")
    if not 1 <= args.batch <= 100_000:
        ap.error(f"--batch: {args.batch} is outside 1..100,000")
    print(
        f"bench_audit_growth: {entries:,} entries in batches of {args.batch:,}; {machine_info()}", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="petanda-audit-growth-") as tmp:
        root = Path(tmp)
        member = build_federation(root / "fed", ["MY"]).members["MY"]
        write_config(member, [], store_url=f"sqlite:///{root / 'my.db'}")
        node = Node.open(load_config(member.config), clock=lambda: NOW)
        server = start_server(node, max_workers=8)
        try:
            head = (
                "entries",
                "RSS now",
                "peak RSS",
                "of it SQLite",
                "peak growth",
                "less SQLite",
                "time (rate)",
                "load",
            )
            print("  ".join(head), flush=True)
            heads, growth = _grow(node, entries, args.batch)
            proved = _prove(node, heads)
            disk = sum(p.stat().st_size for p in root.glob("my.db*"))
        finally:
            server.server.stop(0).wait()
            node.close()
    print(proved)
    print(f"store on disk: {disk / MB:,.0f} MB ({disk / growth['size']:,.0f} B/entry)")
    grown = growth["peak"] / MB
    # Below 10M: what the node's own memory grew by, plus its slope past the first tenth carried on to
    # 10M, plus SQLite's page cache at its 64 MiB cap (one connection appends) if it is not there yet.
    at_10m = (
        growth["own"]
        + max(growth["slope"], 0.0) * (NATIONAL - growth["size"])
        + max(growth["sqlite"], 64 * MIB)
    ) / MB
    estimate = grown if entries >= NATIONAL else at_10m
    print_table(
        (
            "measure",
            f"at {entries:,}",
            "at 10M" if entries >= NATIONAL else "at 10M, estimated",
            "target",
            "verdict",
        ),
        [
            [
                "peak RSS growth of the serving node",
                f"{grown:+,.1f} MB (from {growth['start_rss'] / MB:,.0f} MB; SQLite's cache "
                f"{growth['sqlite'] / MB:,.0f} MB of it, capped; less SQLite {growth['own'] / MB:+,.1f} MB)",
                f"{estimate:+,.1f} MB",
                f"<= {TARGET_MB} MB",
                "met" if estimate <= TARGET_MB and grown <= TARGET_MB else "MISSED",
            ]
        ],
    )
    print(f"slope of the peak RSS less SQLite's past the first tenth: {growth['slope']:.2f} B/entry")
    if entries < NATIONAL:
        print("(below 10M the estimate carries that slope on to 10M and counts SQLite's cache at its cap)")


if __name__ == "__main__":
    main()
