"""``petanda demo``: an eleven-node ASEAN federation on loopback, end to end, with nothing to configure.

A fresh federation CA and certificates in a temporary directory; eleven nodes (BN, KH, ID, LA, MM, MY, PH,
SG, TH, TL, VN), each its own ``petanda-node serve`` process with its own SQLite store; generated
indicators in each country's formats with overlaps planted across countries; sync; investigator checks
through each country's own node; per-peer results and a summary; a clean shutdown (``--keep`` leaves it
running and prints the commands to use it).

The federation directory holds the federation CA's private key and every node's. Without ``--keep`` a
temporary one is removed when the demo ends, however it ends (done, an error, Ctrl-C or SIGTERM), once
the nodes have stopped; with ``--keep``, or a directory given with ``--dir``, it stays and the demo says
where it is and that it holds private keys.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc
from client.transport.tls import secure_channel
from node.cli import print_table
from node.config import load_config
from node.demodata import Planted, generate, write_csv
from node.node import Node
from node.store import open_store
from node.testbed import ASEAN, Federation, build_federation, free_ports

S = investigator_pb2
_STATUS = {
    S.PEER_STATUS_MATCH: "[bold red]MATCH[/]",
    S.PEER_STATUS_NO_MATCH: "[green]no match[/]",
    S.PEER_STATUS_UNAVAILABLE: "[yellow]unavailable[/]",
    S.PEER_STATUS_RATE_LIMITED: "[yellow]rate limited[/]",
    S.PEER_STATUS_STALE: "[yellow]stale[/]",
}

console = Console()


def _setup(root: Path, per_node: int) -> tuple[Federation, list[Planted]]:
    ports = free_ports(len(ASEAN))
    federation = build_federation(
        root, ASEAN, ports=dict(zip(ASEAN, ports, strict=True)), sync={"interval_s": 2, "timeout_s": 5.0}
    )
    today = datetime.now(UTC).date()
    rows, planted = generate(list(ASEAN), per_node=per_node, planted=33, today=today)
    with console.status("ingesting generated indicators into eleven stores"):
        for node_id, member in federation.members.items():
            path = member.dir / "indicators.csv"
            write_csv(path, rows[node_id])
            node = Node.open(load_config(member.config))
            try:
                report = node.ingest([path], now=time.time())
            finally:
                node.close()
            if report.rejections:
                raise SystemExit(f"{node_id}: {report.rejections[0].location}: {report.rejections[0].reason}")
    total = sum(len(r) for r in rows.values())
    console.print(f"[bold]{total}[/] indicators in 11 stores, {len(planted)} planted across countries")
    return federation, planted


def _start(federation: Federation, processes: dict[str, subprocess.Popen[bytes]], *, keep: bool) -> None:
    """Start every node, adding each process to ``processes`` as it starts (so that an interruption
    half-way still stops the ones already running)."""
    for node_id, member in federation.members.items():
        log = (member.dir / "node.log").open("wb")
        processes[node_id] = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(member.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=keep,  # with --keep the nodes outlive this command
        )


def _wait_synced(
    federation: Federation, processes: dict[str, subprocess.Popen[bytes]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    pending = set(federation.members)
    with console.status("nodes starting and syncing their peers' signed manifests and filters") as status:
        while pending and time.monotonic() < deadline:
            for node_id in sorted(pending):
                if processes[node_id].poll() is not None:
                    log = (federation.members[node_id].dir / "node.log").read_text()[-2000:]
                    raise SystemExit(f"node {node_id} exited:\n{log}")
                config = load_config(federation.members[node_id].config)
                store = open_store(config.store.url)
                try:
                    if all(store.peer_manifest(p.id) for p in config.peers):
                        pending.discard(node_id)
                finally:
                    store.close()
            status.update(f"syncing: {len(federation.members) - len(pending)}/11 nodes hold all ten peers")
            time.sleep(0.5)
    if pending:
        raise SystemExit(f"nodes not synced after {timeout:.0f} s: {', '.join(sorted(pending))}")
    console.print("all eleven nodes hold every peer's verified manifest and filters")


def _stub(federation: Federation, node_id: str) -> investigator_pb2_grpc.InvestigatorServiceStub:
    member = federation.members[node_id]
    cert, key = member.investigator
    channel = secure_channel(member.address, ca=federation.ca, cert=cert, key=key)
    return investigator_pb2_grpc.InvestigatorServiceStub(channel)


def _checks(federation: Federation, planted: list[Planted]) -> tuple[int, int]:
    """Check every planted indicator from one member that does not hold it; return (right, wrong)."""
    right = wrong = 0
    shown = 0
    for plant in planted:
        asker = next(n for n in ASEAN if n not in plant.holders)
        result = (
            _stub(federation, asker)
            .Check(
                S.CheckRequest(queries=[S.IndicatorQuery(kind=plant.kind, value=plant.canonical)]), timeout=20
            )
            .results[0]
        )
        found = {p.peer_id for p in result.peers if p.status == S.PEER_STATUS_MATCH}
        expected = set(plant.visible())
        ok = found == expected
        right, wrong = right + ok, wrong + (not ok)
        if shown < 4 or not ok:
            shown += 1
            table = Table(
                title=f"{asker}'s investigator checks {plant.kind} {plant.canonical}", title_justify="left"
            )
            for column in (
                "peer",
                "result",
                "category",
                "first seen",
                "last seen",
                "confidence",
                "TLP",
                "reports",
            ):
                table.add_column(column)
            for peer in result.peers:
                m = peer.metadata
                matched = peer.status == S.PEER_STATUS_MATCH
                cells = (m.category, m.first_seen, m.last_seen, str(m.confidence), m.tlp, str(m.reports))
                table.add_row(peer.peer_id, _STATUS[peer.status], *(cells if matched else [""] * 6))
            print_table(console, table)
    return right, wrong


def _extra_checks(federation: Federation) -> None:
    table = Table(title="MY's investigator: a value nobody holds, and bad input", title_justify="left")
    table.add_column("value")
    table.add_column("answer")
    queries = [
        ("phone", "+60 12-999 0000"),
        ("phone", "12345"),
        ("crypto_wallet", "TLE5ehK5a7nCJX6CVddZUSAf6VoPj6G8av"),
    ]
    response = _stub(federation, "MY").Check(
        S.CheckRequest(queries=[S.IndicatorQuery(kind=k, value=v) for k, v in queries]), timeout=20
    )
    for (_kind, value), result in zip(queries, response.results, strict=True):
        if result.error:
            table.add_row(value, f"[yellow]refused:[/] {result.error}")
        else:
            matches = sum(p.status == S.PEER_STATUS_MATCH for p in result.peers)
            table.add_row(value, f"{matches} matches among {len(result.peers)} peers")
    print_table(console, table)


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every node still running and wait for it (killed after 20 s); empties ``processes``."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for node_id, process in processes.items():
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code not in (0, -signal.SIGTERM):  # SIGTERM before its handler was in place: still starting
            console.print(f"[yellow]node {node_id} exited with {code}[/]")
    processes.clear()


def _run(args: argparse.Namespace, root: Path, processes: dict[str, subprocess.Popen[bytes]]) -> int:
    """The demo itself; with ``--keep`` the nodes are left running in ``processes``, else stopped."""
    started = time.monotonic()
    console.rule("[bold]Petanda demo: an ASEAN federation of eleven national CERT nodes on loopback")
    console.print(f"federation directory: {root}")
    federation, planted = _setup(root / "federation", args.per_node)
    _start(federation, processes, keep=args.keep)
    _wait_synced(federation, processes, timeout=90)
    right, wrong = _checks(federation, planted)
    _extra_checks(federation)
    console.rule("[bold]Summary")
    console.print(
        f"{len(planted)} planted overlaps checked from a member that does not hold them: "
        f"[bold green]{right} found exactly at their holders[/]"
        + (f", [bold red]{wrong} wrong[/]" if wrong else "")
        + " (RED and AMBER+STRICT holdings are never shared)."
        + f" Elapsed {time.monotonic() - started:.1f} s."
    )
    if args.keep:
        my = federation.members["MY"]
        (root / "federation.json").write_text(federation.describe())
        example = next(p for p in planted if p.visible() and "MY" not in p.holders)
        console.print("\nThe federation keeps running. As MY's investigator, check a planted match:")
        console.print(
            f"  petanda check '{example.canonical}' --kind {example.kind} --node {my.address} "
            f"--ca {federation.ca} --cert {my.investigator[0]} --key {my.investigator[1]}",
            soft_wrap=True,
        )
        console.print(f"Every node, certificate and config: {root / 'federation.json'}")
        pids = " ".join(str(p.pid) for p in processes.values())
        console.print(f"Stop it with:  kill {pids}", soft_wrap=True)
        return 0 if not wrong else 1
    _stop(processes)
    console.print("all nodes drained and stopped")
    return 0 if not wrong else 1


def _leave(root: Path, *, made: bool, keep: bool, running: bool) -> None:
    """Remove the temporary federation directory, or say where it stays and that it holds private keys."""
    if not keep and made:
        try:
            shutil.rmtree(root)
        except OSError as error:
            console.print(
                f"[bold red]could not remove {root} ({error}): delete it, it holds private keys[/]",
                soft_wrap=True,
            )
            return
        console.print(f"removed {root} and the CA and node private keys in it", soft_wrap=True)
        return
    why = "--keep" if keep else "--dir"
    then = "stop the nodes, then " if running else ""
    console.print(
        f"[bold]{root}[/] stays ({why}): it holds the federation CA's private key and every node's "
        f"(TLS, signing and OPRF keys). When done, {then}delete it: rm -r {root}",
        soft_wrap=True,
    )


def _interrupted(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C: the nodes are stopped and the temporary directory removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="petanda demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--dir")
    parser.add_argument("--per-node", type=int, default=400)
    args = parser.parse_args(argv)
    # Ctrl-C explicitly, not whatever was inherited: started from a background job SIGINT arrives ignored,
    # and `petanda demo` forwards the one it catches to this process, which must then stop.
    handlers = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _interrupted),
    }
    made = args.dir is None
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="petanda-demo-"))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    running = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        code = _run(args, root, processes)
        running = args.keep and bool(processes)  # --keep: left running on purpose
        return code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the nodes[/]")
        return 130
    finally:
        # Cleaning up is not interrupted by a second Ctrl-C or SIGTERM (the nodes are killed after 20 s).
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)
        try:
            if not running:
                _stop(processes)
            _leave(root, made=made, keep=args.keep, running=running)
        finally:
            for sig, handler in handlers.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    signal.signal(sig, handler)


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
