"""``petanda-node``: the operator's command line (certificates, node setup, the federation secret, ingest,
publish, serve, status).

Exit status: 0 success, 1 ingest finished with rejected rows, 2 an error (one line on stderr naming the
file, key or value at fault). Only :class:`client.protocol.errors.PetandaError` is caught: a bug shows its
traceback.

One module of this size: every `petanda-node` subcommand is a few lines over the node; their argument
parsing and help live together so the commands read as one tool.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from client.protocol.errors import ConfigError, PetandaError
from client.protocol.kinds import KINDS

__all__ = ["main"]

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2

Command = Callable[[argparse.Namespace], int]


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from node.config import load_config
    from node.node import Node

    return Node.open(load_config(args.config))


def _cmd_ca_init(args: argparse.Namespace) -> int:
    from node.pki import init_ca

    path = init_ca(Path(args.dir), name=args.name, days=args.days)
    print(f"federation CA created: {path} (keep {Path(args.dir) / 'ca.key'} offline)")
    return EXIT_OK


def _cmd_ca_issue(args: argparse.Namespace) -> int:
    from node.pki import issue

    files = issue(
        Path(args.ca),
        role=args.role,
        id=args.id,
        out_dir=Path(args.out),
        hostnames=args.hostname or None,
        ips=args.ip or None,
        days=args.days,
    )
    print(f"issued {args.role} certificate for {args.id}: {files.cert} (key {files.key}, CA {files.ca})")
    return EXIT_OK


def _cmd_ca_renew(args: argparse.Namespace) -> int:
    from node.pki import renew

    done = renew(Path(args.ca), Path(args.cert), out_dir=Path(args.out), new_key=args.new_key, days=args.days)
    key = f"new key {done.key}" if done.key else "same key as before"
    print(
        f"renewed: {done.cert} (serial {done.serial:x}, {key}); the old certificate (serial "
        f"{done.old_serial:x}) stays valid until it expires: revoke it with --reason superseded once "
        "the new one is in use"
    )
    return EXIT_OK


def _print_crl(verb: str, done) -> None:  # type: ignore[no-untyped-def]
    print(
        f"{verb}; CRL number {done.number} with {done.revoked} revoked, next update "
        f"{done.next_update.isoformat()}: {done.path}. Give it to a node (tls.crl); peers pass it on at "
        "sync. Run `petanda-node ca crl` before the next update."
    )


def _cmd_ca_revoke(args: argparse.Namespace) -> int:
    from node.pki import parse_serial, revoke

    if (args.serial is None) == (args.cert is None):
        raise ConfigError("give --serial HEX or --cert FILE (one of them)", key="--serial")
    serial = parse_serial(args.serial) if args.serial is not None else None
    done = revoke(
        Path(args.ca),
        serial=serial,
        cert=Path(args.cert) if args.cert else None,
        reason=args.reason,
        days=args.days,
        force=args.force,
    )
    _print_crl(f"revoked ({args.reason})", done)
    return EXIT_OK


def _cmd_ca_crl(args: argparse.Namespace) -> int:
    from node.pki import sign_crl

    _print_crl("CRL signed again", sign_crl(Path(args.ca), days=args.days))
    return EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    from node.config import render_config_template
    from node.keys import FEDERATION_SECRET_FILE, init_federation_secret, init_node_dir

    directory = Path(args.dir)
    config_path = directory / "node.toml"
    if config_path.exists():  # checked first: a refused init must leave nothing behind
        raise ConfigError("exists already; not overwritten", path=str(config_path))
    init_node_dir(directory, args.id)
    peers = [tuple(p.split("=", 1)) for p in args.peer]
    for peer in peers:
        if len(peer) != 2:
            raise ConfigError("--peer takes ID=HOST:PORT", key="peer")
    text = render_config_template(args.id, ".", listen=args.listen, tls_dir=args.tls_dir, peers=peers)
    config_path.write_text(text)
    secret = directory / FEDERATION_SECRET_FILE
    from node.keys import format_fingerprint, load_federation_secret, secret_fingerprint

    if args.federation_secret:
        source = Path(args.federation_secret)
        from node.keys import write_private_file

        write_private_file(secret, load_federation_secret(source))
        origin = f"copied from {source}"
    elif not secret.exists():
        init_federation_secret(secret)
        origin = "a NEW random one"
    else:
        origin = "the one already there"
    fingerprint = format_fingerprint(secret_fingerprint(load_federation_secret(secret)))
    print(f"node {args.id} initialised in {directory} (0700): keys (0600) and {config_path}")
    print(f"federation HMAC secret {secret}: {origin}, fingerprint {fingerprint}")
    print(_SHARING_HOWTO.format(config=config_path))
    return EXIT_OK


#: How to share the federation secret (``init`` prints it).
_SHARING_HOWTO = (
    "The whole federation shares ONE federation secret (HMAC tier). If it has one already, take it: a "
    "member runs `petanda-node hmac export --config THEIR_CONFIG --out FILE` and sends FILE over an "
    "encrypted channel; you run `petanda-node hmac import --config {config} --replace FILE` and read the "
    "printed fingerprint back to them over the phone. If this is the federation's first node, send yours "
    "the same way. `petanda-node hmac fingerprint --config {config}` shows it and whether each peer's "
    "manifest signs the same."
)


def _hmac_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from node.config import load_config
    from node.keys import check_node_dir

    config = load_config(args.config)
    check_node_dir(config.node.dir)
    return config


def _cmd_hmac_generate(args: argparse.Namespace) -> int:
    from node.keys import format_fingerprint, init_federation_secret, secret_fingerprint

    secret = init_federation_secret(Path(args.out))
    fingerprint = format_fingerprint(secret_fingerprint(secret))
    print(f"new federation secret in {args.out} (0600), fingerprint {fingerprint}")
    print(
        "Send it to every member over an encrypted channel (you too import it): each runs `petanda-node "
        "hmac import --config CONFIG --replace FILE` and reads the fingerprint back to you; then delete FILE."
    )
    return EXIT_OK


def _cmd_hmac_export(args: argparse.Namespace) -> int:
    from node.keys import format_fingerprint, load_federation_secret, secret_fingerprint, write_private_file

    config = _hmac_config(args)
    path = config.hmac.federation_secret_file
    if not path.exists():
        raise ConfigError("this node holds no federation secret to export", path=str(path))
    secret = load_federation_secret(path)
    write_private_file(Path(args.out), secret)
    print(
        f"federation secret written to {args.out} (0600), fingerprint "
        f"{format_fingerprint(secret_fingerprint(secret))}"
    )
    print(
        "Send FILE over an encrypted channel; the receiver runs `petanda-node hmac import --config CONFIG "
        "--replace FILE` and reads the fingerprint it prints back to you. Then delete FILE."
    )
    return EXIT_OK


def _cmd_hmac_import(args: argparse.Namespace) -> int:
    from node.keys import (
        format_fingerprint,
        install_federation_secret,
        load_federation_secret,
        secret_fingerprint,
    )
    from node.node import Node

    config = _hmac_config(args)
    secret = load_federation_secret(Path(args.file))  # refused when group or others may read it
    fingerprint = format_fingerprint(secret_fingerprint(secret))
    path = config.hmac.federation_secret_file
    held = load_federation_secret(path) if path.exists() else None
    if held == secret:
        print(f"this node holds this federation secret already (fingerprint {fingerprint}); nothing changed")
        return EXIT_OK
    previous = install_federation_secret(path, secret, replace=args.replace)
    replaced = (
        f"; it replaces the one of fingerprint {format_fingerprint(secret_fingerprint(previous))}"
        if previous
        else ""
    )
    print(
        f"federation secret imported into {path} (0600), fingerprint {fingerprint}{replaced}: "
        "read it back to the member who sent it"
    )
    if args.no_publish:
        print("not published (--no-publish): `petanda-node publish` makes peers see it")
        return EXIT_OK
    node = Node.open(config)
    try:
        if node.store.latest_version() is None and not config.hmac.kinds:
            print("nothing published yet: the first publication signs its fingerprint")
            return EXIT_OK
        manifest = node.publish(now=time.time()).signed.manifest
    finally:
        node.close()
    kinds = ", ".join(config.hmac.kinds) or "none"
    print(
        f"published version {manifest.version} (epoch {manifest.epoch}) under the new secret, HMAC-tier "
        f"kinds: {kinds}; peers see it at their next sync"
    )
    return EXIT_OK


def _cmd_hmac_fingerprint(args: argparse.Namespace) -> int:
    from node.hmactier import fingerprints
    from node.keys import format_fingerprint

    node = _load(args)
    try:
        info = fingerprints(node)
    finally:
        node.close()
    mismatch = not info["held"] or any(p["state"] == "different" for p in info["peers"])
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_REJECTED if mismatch else EXIT_OK
    if info["held"]:
        secret = format_fingerprint(bytes.fromhex(info["secret_fingerprint"]))
        print(f"federation secret {info['secret_file']}: fingerprint {secret} (compare it with the members')")
        print(f"epoch {info['epoch']} key fingerprint: {info['epoch_key_fingerprint']}")
    else:
        print(f"federation secret {info['secret_file']}: NONE held (`petanda-node hmac import`)")
    signed = info["manifest_fingerprint"] or "no fingerprint"
    if info["manifest_version"] is not None:
        print(f"latest manifest, version {info['manifest_version']}, signs: {signed}")
    print(f"HMAC-tier kinds: {', '.join(info['kinds']) or 'none'}")
    for peer in info["peers"]:
        kinds = ", ".join(peer["hmac_kinds"]) or "none"
        if peer["state"] == "never synced":
            print(f"peer {peer['id']}: never synced")
        elif peer["state"] == "none":
            print(f"peer {peer['id']} (epoch {peer['epoch']}): signs no fingerprint (holds no secret)")
        elif peer["state"] == "same":
            print(f"peer {peer['id']} (epoch {peer['epoch']}): same secret; its HMAC-tier kinds: {kinds}")
        else:
            print(
                f"peer {peer['id']} (epoch {peer['epoch']}): DIFFERENT secret; its HMAC-tier kinds: {kinds}. "
                'Checks of those use its OPRF tier where it publishes one, else answer STALE "federation '
                "secret mismatch\"; the member on the wrong secret imports the federation's"
            )
    return EXIT_REJECTED if mismatch else EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    if os.environ.get("GRPC_VERBOSITY", "NONE").upper() != "NONE":
        from node.logbridge import route_grpc_core_logs

        route_grpc_core_logs()  # the operator asked for gRPC's own lines: in our log, in our format
    import threading

    from node.peers import Links
    from node.server import serve_forever, start_server
    from node.sync import Syncer, start_sync_loop

    node = _load(args)
    links = Links(node)
    running = start_server(node, links=links)
    stop = threading.Event()
    sync_thread = None
    if not args.no_sync:
        syncer = Syncer(node, links, clock=node.clock)
        sync_thread = start_sync_loop(syncer, stop, interval_s=node.config.sync.interval_s)

    def ready() -> None:  # only once SIGTERM drains: a supervisor may stop us as soon as it reads this
        print(f"node {node.id} serving on port {running.port}", flush=True)

    try:
        serve_forever(running, ready=ready)
    finally:
        # Order matters: no thread may use a channel or the store once they are closed.
        stop.set()
        links.close()  # cancels a sync still waiting on a peer, so the sync thread ends promptly
        if sync_thread is not None:
            sync_thread.join(timeout=node.config.sync.timeout_s * 2)
        running.investigator.checker.close()
        node.close()  # waits for any store operation still in progress
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace) -> int:
    from node.peers import Links
    from node.sync import Syncer

    node = _load(args)
    links = Links(node)
    try:
        results = Syncer(node, links, clock=node.clock).sync_all()
    finally:
        links.close()
        node.close()
    for result in results:
        state = f"version {result.version}" if result.ok else f"FAILED: {result.detail}"
        print(f"{result.peer_id}: {state}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_REJECTED


def _format(value: str | None, formats: Sequence[str]) -> str | None:
    """``--format``, checked before anything is opened; None when not given."""
    if value is None:
        return None
    if value.lower() not in formats:
        raise ConfigError(f"unknown format {value!r}; expected one of {', '.join(formats)}", key="--format")
    return value.lower()


def _print_rejections(rejections: Sequence[Any], max_errors: int) -> None:
    for rejection in rejections[:max_errors]:
        print(f"{rejection.location}: {rejection.reason}", file=sys.stderr)
    if len(rejections) > max_errors:
        print(f"... and {len(rejections) - max_errors} more rejected rows", file=sys.stderr)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from node.ingest import FORMATS

    fmt = _format(args.format, FORMATS)
    node = _load(args)
    try:
        report = node.ingest(
            [Path(p) for p in args.paths],
            now=time.time(),
            default_tlp=args.tlp,
            publish_after=not args.no_publish,
            on_batch=_print_ack if args.progress else None,
            fmt=fmt,
        )
    finally:
        node.close()
    _print_rejections(report.rejections, args.max_errors)
    print(f"stored {report.stored}, updated {report.updated}, rejected {report.rejected}")
    return EXIT_REJECTED if report.rejected else EXIT_OK


def _print_ack(report) -> None:  # type: ignore[no-untyped-def]
    print(f"acknowledged: stored {report.stored}, updated {report.updated}", flush=True)


def _cmd_publish(args: argparse.Namespace) -> int:
    node = _load(args)
    try:
        publication = node.publish(now=time.time())
    finally:
        node.close()
    manifest = publication.signed.manifest
    print(
        f"published version {manifest.version} (epoch {manifest.epoch}): "
        f"{sum(publication.counts.values())} digests in {len(publication.counts)} filters, "
        f"{publication.withheld} withheld (TLP RED / AMBER+STRICT)"
    )
    return EXIT_OK


def _cmd_retract(args: argparse.Namespace) -> int:
    if args.file is not None:
        return _retract_file(args)
    if args.kind is None or args.value is None:
        raise ConfigError("give KIND VALUE, or --file FILE", key="retract")
    if args.kind not in KINDS:
        raise ConfigError(f"unknown kind {args.kind!r}; expected one of {', '.join(KINDS)}", key="KIND")
    if args.format is not None:
        raise ConfigError("--format goes with --file", key="--format")
    node = _load(args)
    try:
        done = node.retract(args.kind, args.value, region=args.region, now=time.time())
    finally:
        node.close()
    print(
        "retracted; published a new version" if done else "not stored (or already retracted): nothing to do"
    )
    return EXIT_OK


def _retract_file(args: argparse.Namespace) -> int:
    from node.ingest.retractions import RETRACT_FORMATS

    if args.kind is not None or args.value is not None or args.region is not None:
        raise ConfigError("--file takes no KIND VALUE or --region (regions go in the file)", key="--file")
    fmt = _format(args.format, RETRACT_FORMATS)
    node = _load(args)
    try:
        report = node.retract_file(Path(args.file), now=time.time(), fmt=fmt)
        version = node.store.latest_version() if report.retracted else None
    finally:
        node.close()
    _print_rejections(report.rejections, args.max_errors)
    published = f"; published version {version}" if version is not None else "; nothing published"
    print(
        f"retracted {report.retracted}, not held {report.not_held}, rejected {len(report.rejections)}"
        + published
    )
    return EXIT_REJECTED if report.rejections else EXIT_OK


def _cmd_rotate(args: argparse.Namespace) -> int:
    node = _load(args)
    try:
        epoch = node.rotate(now=time.time())
    finally:
        node.close()
    print(
        f"OPRF epoch {epoch} is current; the previous one answers for {node.config.oprf.grace_days} more days"
    )
    return EXIT_OK


def _cmd_roll_signing_key(args: argparse.Namespace) -> int:
    node = _load(args)
    try:
        old, new = node.roll_signing_key(now=time.time())
    finally:
        node.close()
    print(
        f"signing key rolled: {old.hex()} -> {new.hex()}; announced under the old key in the manifest "
        "before the current one, so peers that pin the old key follow it; peers that set signing_key in "
        "their [[peers]] entry must be given the new key"
    )
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    node = _load(args)
    try:
        status = node.status(now=time.time())
        status["crl"] = node.crl.status(now=time.time())
    finally:
        node.close()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]node {status['node_id']}[/] epoch {status['epoch']}, "
        f"manifest version {status['manifest_version']}, audit log {status['audit_size']} entries, "
        f"store {'OK' if not status['integrity'] else 'PROBLEMS'}"
    )
    withheld = status["withheld"]
    table = Table("kind", "active", "expired", "retracted", "withheld RED", "withheld AMBER+STRICT")
    for kind, counts in sorted(status["indicators"].items()):
        held = withheld["kinds"].get(kind, {})
        table.add_row(
            kind,
            str(counts["active"]),
            str(counts["expired"]),
            str(counts["retracted"]),
            str(held.get("RED", 0)),
            str(held.get("AMBER+STRICT", 0)),
        )
    console.print(table)
    console.print(
        f"withheld from publication (active, by TLP): RED {withheld['RED']}, "
        f"AMBER+STRICT {withheld['AMBER+STRICT']}"
    )
    _print_peers(console, status)
    for peer_id, kinds in sorted(status["plausibility"].items()):
        for kind, hits in sorted(kinds.items()):
            if hits.get("alerted"):
                found = f"{hits['unopened']} of {hits['tested']} values hit its filter"
                console.print(
                    f"[bold red]plausibility alert[/] {peer_id} {kind}: {found} (version {hits['version']}) "
                    f"without a record, p = {hits['p_value']:.2g}"
                )
    _print_oprf_usage(console, status)
    crl = status["crl"]
    if crl["number"]:
        stale = " [red]STALE: past its next update, still enforced[/]" if crl["stale"] else ""
        console.print(
            f"CRL number {crl['number']}: {crl['revoked']} revoked, next update {crl['next_update']}{stale}"
        )
    else:
        console.print("CRL: none held (no certificate is refused as revoked)")
    for problem in status["integrity"]:
        console.print(f"[red]integrity: {problem}[/]")
    return EXIT_OK


#: How each peer state is shown in the table.
_STATE_STYLE = {
    "ok": "green",
    "degraded": "yellow",
    "stale": "yellow",
    "unreachable": "red",
    "fork": "bold red",
}


def _protocol_cell(peer: dict[str, Any]) -> str:
    """The protocol version used with a peer and the ones it serves: ``3 (serves 2,3)``; ``none (serves
    4)`` when they share none; ``-`` before a sync learnt them."""
    served = peer.get("protocol_served")
    if not served:
        return "-"
    used = "none" if peer.get("protocol") is None else str(peer["protocol"])
    return f"{used} (serves {','.join(map(str, served))})"


def _print_peers(console: Any, status: dict[str, Any]) -> None:
    """Each peer's health (``docs/operators.md``, "Peer health"), its last sync and its last error."""
    from rich.markup import escape
    from rich.table import Table

    now = time.time()

    def ago(at: int | None) -> str:
        return "-" if at is None else f"{max(0, int(now - at))} s ago"

    sync = status["sync"]
    rule = (
        f"sync every {sync['interval_s']} s; unreachable after {sync['unreachable_after_failures']} "
        f"failures or {sync['unreachable_after_s']} s without a success"
    )
    peers = Table(
        "peer",
        "address",
        "state",
        "protocol",
        "manifest version",
        "age (s)",
        "last success",
        "latency (s)",
        "failures",
        "last error",
        title=f"peers ({rule})",
        title_justify="left",
    )
    for peer in status["peers"]:
        state = peer["state"]
        error = "-" if peer["last_error"] is None else f"{ago(peer['last_error_at'])}: {peer['last_error']}"
        peers.add_row(
            peer["id"],
            peer["address"],
            f"[{_STATE_STYLE.get(state, 'default')}]{state}[/]",
            _protocol_cell(peer),
            str(peer["version"] or "-"),
            "-" if peer["age_s"] is None else str(peer["age_s"]),
            ago(peer["last_success_at"]),
            "-" if peer["latency_s"] is None else f"{peer['latency_s']:.3f}",
            str(peer["consecutive_failures"]),
            escape(error),
        )
    console.print(peers)
    for peer in status["peers"]:
        if peer["state"] != "ok" and peer["reason"]:
            console.print(f"{peer['id']} {peer['state']}: {escape(peer['reason'])}", highlight=False)


def _print_oprf_usage(console: Any, status: dict[str, Any]) -> None:
    """The OPRF quotas, each peer's evaluation volume, its enumeration alerts, the rotation schedule."""
    from datetime import UTC, datetime

    from rich.table import Table

    from client.protocol.enumeration import EXPOSURE_HEADERS

    usage = status["oprf_usage"]
    space = usage["numbering_space"]["mobile_and_fixed"]
    table = Table(
        *EXPOSURE_HEADERS,
        title=f"OPRF evaluations ({usage['day']} UTC); home numbering space of {usage['region']}: {space}",
        title_justify="left",
    )
    for peer, entry in usage["peers"].items():
        quota = f"{entry['daily_quota']}" + ("" if entry["holder_pool"] else " (own)")
        if not entry["kinds"]:
            table.add_row(peer, "-", "0", "0", "0", quota, "-", "-")
        for kind, row in entry["kinds"].items():
            used, share = row["quota_used_1d"], row.get("space_share_30d")
            table.add_row(
                peer,
                kind,
                str(row["1d"]),
                str(row["7d"]),
                str(row["30d"]),
                quota,
                "-" if used is None else f"{used:.0%}",
                "-" if share is None else f"{share:.4%}",
            )
    console.print(table)
    holder = ", ".join(f"{k} {n}" for k, n in usage["holder_used_today"].items()) or "none"
    console.print(f"holder-wide quota {usage['holder_daily_quota']} per kind a day; used today: {holder}")
    for alert in usage["alerts"]:
        console.print(
            f"[bold red]enumeration alert[/] {alert['peer']} {alert['kind']} ({alert['rule']}, "
            f"{alert['day']}): {alert['detail']}",
            highlight=False,
        )
    rotation = status["rotation"]
    due = datetime.fromtimestamp(rotation["next_rotation_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    console.print(f"OPRF epoch rotates every {rotation['epoch_days']} days; next rotation at {due}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petanda-node", description="Run a Petanda node (CERT operators).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ca = sub.add_parser("ca", help="the federation certificate authority").add_subparsers(
        dest="ca_command", required=True, metavar="CA_COMMAND"
    )
    p = ca.add_parser("init", help="create a federation CA")
    p.add_argument("--dir", required=True, help="directory for ca.crt and ca.key (must not hold them yet)")
    p.add_argument("--name", default="Petanda federation CA")
    p.add_argument("--days", type=int, default=3650)
    p.set_defaults(handler=_cmd_ca_init)
    p = ca.add_parser("issue", help="issue a certificate for a peer node, an investigator or an auditor")
    p.add_argument("--ca", required=True, help="the CA directory")
    p.add_argument("--role", required=True, choices=("peer", "investigator", "auditor"))
    p.add_argument("--id", required=True, help="node id (MY) for a peer; CC/name (MY/alice) for a person")
    p.add_argument("--out", required=True, help="directory for the certificate, key and a copy of ca.crt")
    p.add_argument("--hostname", action="append", default=[], help="DNS name of a peer's server (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address of a peer's server (repeatable)")
    p.add_argument(
        "--days", type=int, default=None, help="validity (default 90 for a peer, 365 for a person)"
    )
    p.set_defaults(handler=_cmd_ca_issue)
    p = ca.add_parser("renew", help="reissue a certificate: same identity and names, new serial and validity")
    p.add_argument("--ca", required=True, help="the CA directory")
    p.add_argument("--cert", required=True, help="the certificate to renew")
    p.add_argument("--out", required=True, help="directory for the new certificate (nothing is overwritten)")
    p.add_argument("--new-key", action="store_true", help="also make a new key (required after a compromise)")
    p.add_argument(
        "--days", type=int, default=None, help="validity (default 90 for a peer, 365 for a person)"
    )
    p.set_defaults(handler=_cmd_ca_renew)
    p = ca.add_parser("revoke", help="revoke a certificate: add it to the CA's CRL (crl.pem) and sign it")
    p.add_argument("--ca", required=True, help="the CA directory")
    p.add_argument("--serial", help="the certificate's serial number in hex")
    p.add_argument("--cert", help="the certificate file (instead of --serial)")
    p.add_argument(
        "--reason",
        required=True,
        help="RFC 5280 reason: keyCompromise, affiliationChanged, superseded, cessationOfOperation, "
        "privilegeWithdrawn or unspecified",
    )
    p.add_argument("--days", type=int, default=7, help="days until the CRL's next update (default 7)")
    p.add_argument("--force", action="store_true", help="revoke a serial that issued.jsonl does not list")
    p.set_defaults(handler=_cmd_ca_revoke)
    p = ca.add_parser("crl", help="sign the CA's CRL again with a new next-update time (weekly)")
    p.add_argument("--ca", required=True, help="the CA directory")
    p.add_argument("--days", type=int, default=7, help="days until the CRL's next update (default 7)")
    p.set_defaults(handler=_cmd_ca_crl)

    p = sub.add_parser("init", help="create a node's keys and a commented config file")
    p.add_argument("--id", required=True, help="ISO 3166-1 alpha-2 code of the member state")
    p.add_argument("--dir", required=True, help="the node directory")
    p.add_argument("--listen", default="0.0.0.0:7443")
    p.add_argument(
        "--tls-dir", default="tls", help="where the node's certificate files are (relative to DIR)"
    )
    p.add_argument("--peer", action="append", default=[], metavar="ID=HOST:PORT", help="a peer (repeatable)")
    p.add_argument("--federation-secret", help="copy the federation's HMAC secret from this file")
    p.set_defaults(handler=_cmd_init)

    hmac = sub.add_parser(
        "hmac", help="the federation secret of the HMAC tier: generate, export, import, fingerprint"
    ).add_subparsers(dest="hmac_command", required=True, metavar="HMAC_COMMAND")
    p = hmac.add_parser("generate", help="write a new random federation secret to a file (a rotation)")
    p.add_argument("--out", required=True, help="the file to write (0600; must not exist)")
    p.set_defaults(handler=_cmd_hmac_generate)
    p = hmac.add_parser("export", help="copy this node's federation secret to a file, to give a member")
    p.add_argument("--config", required=True, help="the node's config file")
    p.add_argument("--out", required=True, help="the file to write (0600; must not exist)")
    p.set_defaults(handler=_cmd_hmac_export)
    p = hmac.add_parser("import", help="make a file's federation secret this node's, then publish")
    p.add_argument("--config", required=True, help="the node's config file")
    p.add_argument("file", metavar="FILE", help="a secret from `hmac export` or `hmac generate` (0600)")
    p.add_argument("--replace", action="store_true", help="replace another secret this node holds")
    p.add_argument("--no-publish", action="store_true", help="do not publish under the new secret")
    p.set_defaults(handler=_cmd_hmac_import)
    p = hmac.add_parser(
        "fingerprint", help="the secret's and the epoch key's fingerprints; peers on the same secret or not"
    )
    p.add_argument("--config", required=True, help="the node's config file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_hmac_fingerprint)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", required=True, help="the node's config file")
        return p

    p = with_config(sub.add_parser("serve", help="run the node's gRPC server until SIGTERM"))
    p.add_argument("--no-sync", action="store_true", help="do not pull peers in the background")
    p.set_defaults(handler=_cmd_serve)
    p = with_config(sub.add_parser("sync", help="pull and verify every peer's manifest and filters once"))
    p.set_defaults(handler=_cmd_sync)
    p = with_config(
        sub.add_parser("ingest", help="store indicators from CSV, JSON lines, STIX 2.1 or MISP files")
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--tlp", default="AMBER", help="TLP of rows that give none (default AMBER)")
    p.add_argument("--no-publish", action="store_true", help="do not publish after ingesting")
    p.add_argument("--max-errors", type=int, default=50, help="rejections to print (all are counted)")
    p.add_argument("--progress", action="store_true", help="print a line as each batch is durably stored")
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="csv, jsonl, stix or misp: read every PATH as this (default: from the extension and content)",
    )
    p.set_defaults(handler=_cmd_ingest)
    p = with_config(sub.add_parser("publish", help="rebuild filters, buckets and the signed manifest"))
    p.set_defaults(handler=_cmd_publish)
    p = with_config(
        sub.add_parser("retract", help="withdraw one indicator, or every one a file lists, and publish")
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    p.add_argument("value", nargs="?", metavar="VALUE")
    p.add_argument("--region", help="region of a national phone number (default: the node's country)")
    p.add_argument(
        "--file", metavar="FILE", help="CSV or JSON lines, one indicator a line: kind,value[,region]"
    )
    p.add_argument("--format", metavar="FORMAT", help="csv or jsonl: how to read --file (default: extension)")
    p.add_argument("--max-errors", type=int, default=50, help="rejected lines to print (all are counted)")
    p.set_defaults(handler=_cmd_retract)
    p = with_config(sub.add_parser("rotate", help="start a new OPRF epoch and publish"))
    p.set_defaults(handler=_cmd_rotate)
    p = with_config(
        sub.add_parser(
            "roll-signing-key",
            help="replace the Ed25519 signing key, announced under the old one, and publish",
        )
    )
    p.set_defaults(handler=_cmd_roll_signing_key)
    p = with_config(sub.add_parser("status", help="counts, epoch, manifest version, peers, store health"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_status)
    return parser


def _setup_logging(*, verbose: bool) -> None:
    """Log to stderr at WARNING, or INFO with ``-v`` (every sync, publication and signed tree head).

    gRPC's C core logs on its own, straight to stderr (through absl, with no hook into Python logging),
    so it is silenced unless the operator sets ``GRPC_VERBOSITY``; then ``serve`` routes its lines into
    this log as the ``grpc.core`` logger (:mod:`node.logbridge`). What matters of it reaches our log
    anyway, as the status details of a failed call. Runs before anything imports grpc, which reads the
    variables once.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    os.environ.setdefault("GRPC_TRACE", "")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``petanda-node`` command line and return its exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(verbose=args.verbose)
    handler: Command = args.handler
    try:
        return handler(args)
    except PetandaError as error:
        for line in str(error).splitlines() or [""]:  # several problems: one line each (ConfigProblems)
            print(f"petanda-node: {line}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
