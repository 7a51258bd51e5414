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

    config = load_config(args.config)
    if args.log_format is None and config.logging.format != "text":
        from node.logformat import set_format

        set_format(config.logging.format)  # the config's [logging] format, unless --log-format said
    return Node.open(config)


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


def _cmd_ca_people_init(args: argparse.Namespace) -> int:
    from node.pki import people_init

    csr = people_init(Path(args.dir), state=args.state)
    print(
        f"people-CA key and request for {args.state} written: {csr} (key {Path(args.dir) / 'people-ca.key'} "
        "stays here). Send the request to the federation CA operator (ca sign-people-ca) and put the "
        f"people-ca.crt and ca.crt that come back into {args.dir}"
    )
    return EXIT_OK


def _cmd_ca_sign_people_ca(args: argparse.Namespace) -> int:
    from node.pki import sign_people_ca

    done = sign_people_ca(Path(args.ca), Path(args.csr), out_dir=Path(args.out), days=args.days)
    print(
        f"signed the people-CA of {done.state} (serial {done.serial:x}): {done.cert} (with {done.ca}); "
        "return both to its operator"
    )
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


def _print_crl(verb: str, done, ca_dir: str) -> None:  # type: ignore[no-untyped-def]
    from node.pki import PEOPLE_CA_KEY_FILE

    where = (
        "Give it to your state's node (tls.people_crl); it stays in the state"
        if (Path(ca_dir) / PEOPLE_CA_KEY_FILE).exists()
        else "Give it to a node (tls.crl); peers pass it on at sync"
    )
    print(
        f"{verb}; CRL number {done.number} with {done.revoked} revoked, next update "
        f"{done.next_update.isoformat()}: {done.path}. {where}. Run `petanda-node ca crl --ca {ca_dir}` "
        "before the next update."
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
    _print_crl(f"revoked ({args.reason})", done, args.ca)
    return EXIT_OK


def _cmd_ca_crl(args: argparse.Namespace) -> int:
    from node.pki import sign_crl

    _print_crl("CRL signed again", sign_crl(Path(args.ca), days=args.days), args.ca)
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
    from node.keys import KEK_FILE, load_kek
    from node.keystore import kek_fingerprint

    kek = format_fingerprint(kek_fingerprint(load_kek(directory / KEK_FILE)))
    print(f"node {args.id} initialised in {directory} (0700): keys (0600) and {config_path}")
    print(
        f"key-encryption key {directory / KEK_FILE}: fingerprint {kek}; the OPRF keys live in the store, "
        "wrapped under it: give every replica a copy, and back it up apart from the store"
    )
    print(_publish_empty(config_path))
    print(f"federation HMAC secret {secret}: {origin}, fingerprint {fingerprint}")
    print(_SHARING_HOWTO.format(config=config_path))
    return EXIT_OK


def _publish_empty(config_path: Path) -> str:
    """Publish the new node's first manifest, of no indicators, so that no peer logs that this node
    "has published nothing yet"; or, when its certificates are not in place yet, say that ``serve``
    will. Returns the line to print."""
    from node.config import load_config
    from node.node import Node

    config = load_config(config_path)
    if not Path(config.tls.ca).exists():
        return (
            f"nothing published yet: no {config.tls.ca}; once the certificates are there, `serve` (or "
            "`publish`) publishes a first, empty manifest"
        )
    node = Node.open(config)
    try:
        version = node.publish(now=time.time()).signed.manifest.version
    finally:
        node.close()
    return (
        f"published version {version}, a signed manifest of no indicators: peers that sync this node "
        "see it up and holding nothing until the first ingest"
    )


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
    from node.keys import format_fingerprint, secret_fingerprint, write_private_file

    node = _load(args)
    try:
        secret = node.federation_secret()  # ConfigError when the store holds none
    finally:
        node.close()
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
    from node.keys import format_fingerprint, load_federation_secret, secret_fingerprint
    from node.node import Node

    config = _hmac_config(args)
    secret = load_federation_secret(Path(args.file))  # refused when group or others may read it
    fingerprint = format_fingerprint(secret_fingerprint(secret))
    node = Node.open(config)
    try:
        generation, new, previous = node.install_federation_secret(
            secret, replace=args.replace, now=time.time()
        )
        if not new:
            print(
                f"this node holds this federation secret already (fingerprint {fingerprint}); nothing changed"
            )
            return EXIT_OK
        replaced = (
            f"; it replaces the one of fingerprint {format_fingerprint(secret_fingerprint(previous))}"
            if previous
            else ""
        )
        print(
            f"federation secret imported into the store (generation {generation}, wrapped under the KEK; "
            f"every replica uses it from now on), fingerprint {fingerprint}{replaced}: read it back to the "
            "member who sent it"
        )
        if args.no_publish:
            print("not published (--no-publish): `petanda-node publish` makes peers see it")
            return EXIT_OK
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
        print(
            f"federation secret (generation {info['secret_generation']} in the store): fingerprint {secret} "
            "(compare it with the members')"
        )
        print(f"epoch {info['epoch']} key fingerprint: {info['epoch_key_fingerprint']}")
    else:
        print("federation secret: NONE held (`petanda-node hmac import`)")
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

    from node.feeds import start_feed_loop
    from node.peers import Links
    from node.server import serve_forever, start_server
    from node.sync import Syncer, start_sync_loop

    node = _load(args)
    if node.store.latest_version() is None:  # peers would log "has published nothing yet" at every sync
        node.publish(now=time.time())
    links = Links(node)
    running = start_server(node, links=links)
    metrics = None
    if node.config.metrics.enabled:
        from node.metrics import start_metrics_server

        try:
            metrics = start_metrics_server(node.metrics, node.config.metrics.listen)
        except PetandaError:
            running.server.stop(0)
            node.close()
            raise
    stop = threading.Event()
    sync_thread = feed_thread = None
    if not args.no_sync:
        syncer = Syncer(node, links, clock=node.clock)
        sync_thread = start_sync_loop(syncer, stop, interval_s=node.config.sync.interval_s)
    if not args.no_feeds:
        feed_thread = start_feed_loop(node, stop)

    def ready() -> None:  # only once SIGTERM drains: a supervisor may stop us as soon as it reads this
        where = "" if metrics is None else f"; metrics on http://{metrics.host}:{metrics.port}/metrics"
        print(f"node {node.id} serving on port {running.port}{where}", flush=True)

    try:
        serve_forever(running, ready=ready)
    finally:
        # Order matters: no thread may use a channel or the store once they are closed.
        stop.set()
        links.close()  # cancels a sync still waiting on a peer, so the sync thread ends promptly
        if sync_thread is not None:
            sync_thread.join(timeout=node.config.sync.timeout_s * 2)
        if feed_thread is not None:  # a poll stops after its page in hand, within 4 x timeout_s
            feed_thread.join(timeout=max(f.timeout_s for f in node.config.feeds) * 5)
        running.investigator.checker.close()
        if metrics is not None:
            metrics.close()
        node.close()  # waits for any store operation still in progress
    return EXIT_OK


def _cmd_config_check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from node.config import load_config
    from node.configcheck import check_files, check_peers

    if not args.timeout > 0:
        raise ConfigError(f"must be more than 0 seconds, got {args.timeout:g}", key="--timeout")
    config = load_config(args.config)  # an invalid config: every problem on stderr, exit 2
    findings = check_files(config)
    if not args.no_peers:
        findings += check_peers(config, timeout_s=args.timeout)
    failed = sum(not f.ok for f in findings)
    if args.json:
        print(
            json.dumps(
                {"config": str(args.config), "ok": not failed, "findings": [asdict(f) for f in findings]},
                indent=2,
            )
        )
        return EXIT_REJECTED if failed else EXIT_OK
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(
        "checked",
        "result",
        "detail",
        title=f"{args.config}: valid; its files and peers",
        title_justify="left",
    )
    for finding in findings:
        result = "[green]ok[/]" if finding.ok else "[bold red]FAILED[/]"
        table.add_row(escape(finding.what), result, escape(finding.detail))
    print_table(console, table, wide=args.wide)
    peers = len(config.peers)
    verdict = f"{failed} of {len(findings)} checks failed" if failed else f"all {len(findings)} checks passed"
    console.print(f"{verdict} ({peers} peer{'s' if peers != 1 else ''} configured)")
    return EXIT_REJECTED if failed else EXIT_OK


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


def _cmd_backup(args: argparse.Namespace) -> int:
    from node.backup import backup
    from node.config import load_config

    config = load_config(args.config)
    done = backup(config.store.url, Path(args.out))
    print(
        f"backed up the {done.backend} store to {done.path} ({done.size} bytes, mode 0600). Its OPRF keys "
        f"and federation secret are wrapped under the KEK {config.keys.kek_file}, which is not in it: "
        f"back up the node directory {config.node.dir} (KEK, signing key, TLS key) separately."
    )
    return EXIT_OK


def _cmd_restore(args: argparse.Namespace) -> int:
    from node.backup import check_not_serving, restore
    from node.config import load_config
    from node.node import Node
    from node.peers import Links
    from node.recovery import check_reason, recover

    check_reason(args.reason)
    config = load_config(args.config)
    check_not_serving(config.node.listen_host, config.node.listen_port, listen=config.node.listen)
    if args.backup is not None:
        restore(config.store.url, Path(args.backup))
        print(f"store restored from {args.backup}")
    node = Node.open(config)
    links = Links(node)
    try:
        now = time.time()
        done = recover(node, links, reason=args.reason, now=now, allow_unreachable=args.allow_unreachable)
        publication = node.publish(now=now) if done.statement is not None and not args.no_publish else None
    finally:
        links.close()
        node.close()
    for peer, why in sorted(done.unreachable.items()):
        print(f"{peer}: not asked ({why}); it records a fork if it holds more than the others")
    if done.statement is None and not done.answered and done.unreachable:
        print(
            "no peer was asked, so nothing is known of what they hold: no statement signed. A peer that "
            "holds more of this node than the restored store records a fork once the node serves; run "
            "`restore` again, without the file, when the peers answer"
        )
        return EXIT_OK
    if done.statement is None:
        print(
            f"asked {', '.join(done.answered) or 'no peer'}: they hold nothing this store lacks; no statement"
        )
        return EXIT_OK
    statement = done.statement
    print(
        f"recovery statement {statement.sequence} signed: audit log from size {statement.old_head.tree_size} "
        f"(held by peers) back to {statement.new_head.tree_size}; manifests continue above version "
        f"{statement.old_manifest_version}"
    )
    if publication is not None:
        print(f"published version {publication.signed.manifest.version}; now start the node (serve)")
    return EXIT_OK


def _feed_entries(node: Any, names: Sequence[str]) -> list[Any]:
    """The ``[[feeds]]`` entries named (all when none is), refusing an unknown name."""
    known = {entry.name: entry for entry in node.config.feeds}
    if not known:
        raise ConfigError("no [[feeds]] in the config: see docs/operators.md, Live feeds", key="feeds")
    for name in names:
        if name not in known:
            raise ConfigError(f"no feed named {name!r}; configured: {', '.join(known)}", key="NAME")
    return [known[name] for name in names] if names else list(known.values())


def _cmd_feed_run(args: argparse.Namespace) -> int:
    from node.feeds import poll

    node = _load(args)
    try:
        entries = _feed_entries(node, args.names)
        runs = [poll(node, entry, publish=False) for entry in entries]
        version = (
            node.publish(now=node.clock()).signed.manifest.version if any(r.changed for r in runs) else None
        )
    finally:
        node.close()
    for run in runs:
        _print_rejections(run.rejections, args.max_errors)
        counts = (
            f"{run.pages} pages, {run.objects} objects: stored {run.stored}, updated {run.updated}, "
            f"retracted {run.retracted}, refused {len(run.rejections)}"
        )
        if run.ok:
            print(f"feed {run.name}: {counts}")
        else:
            print(f"feed {run.name}: FAILED after {counts}: {run.error}")
    if version is not None:
        print(f"published version {version}")
    return EXIT_OK if all(r.ok and not r.rejections for r in runs) else EXIT_REJECTED


def _cmd_feed_status(args: argparse.Namespace) -> int:
    from node.feeds import status

    node = _load(args)
    try:
        _feed_entries(node, [])
        feeds = status(node, now=node.clock())
    finally:
        node.close()
    if args.json:
        print(json.dumps(feeds, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        _print_feeds(Console(), feeds)
    return EXIT_OK if all(f["state"] != "failing" for f in feeds) else EXIT_REJECTED


def _print_feeds(console: Any, feeds: Sequence[dict[str, Any]]) -> None:
    """Each live feed's state, totals, last success and error, and when it is polled next."""
    from rich.markup import escape
    from rich.table import Table

    now = time.time()

    def ago(at: int | None) -> str:
        return "-" if at is None else f"{max(0, int(now - at))} s ago"

    table = Table(
        "feed",
        "type",
        "state",
        "objects",
        "indicators",
        "retractions",
        "refused",
        "last success",
        "failures",
        "next poll",
        "last error",
        title="live feeds",
        title_justify="left",
    )
    for feed in feeds:
        style = {"ok": "green", "failing": "red"}.get(feed["state"], "yellow")
        due = feed["next_attempt_at"]
        error = "-" if feed["last_error"] is None else f"{ago(feed['last_error_at'])}: {feed['last_error']}"
        table.add_row(
            feed["name"],
            feed["type"],
            f"[{style}]{feed['state']}[/]",
            str(feed["objects"]),
            str(feed["indicators"]),
            str(feed["retractions"]),
            str(feed["refused"]),
            ago(feed["last_success_at"]),
            str(feed["consecutive_failures"]),
            "now" if due is None or due <= now else f"in {int(due - now)} s",
            escape(error),
        )
    console.print(table)
    for feed in feeds:
        for refusal in feed["last_refusals"]:
            console.print(f"{feed['name']} refused {escape(refusal)}", highlight=False)


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
        if args.if_due:
            now = time.time()
            publication = node.rotate_if_due(now=now)
            if publication is None:
                from datetime import UTC, datetime

                due = node.epoch_started_at(now=now) + node.config.oprf.epoch_days * 86_400
                print(
                    f"OPRF epoch {node.epoch} is not due: it rotates at "
                    f"{datetime.fromtimestamp(due, UTC):%Y-%m-%d %H:%M} UTC; nothing changed"
                )
                return EXIT_OK
            epoch = publication.signed.manifest.epoch
        else:
            epoch = node.rotate(now=time.time())
    finally:
        node.close()
    print(
        f"OPRF epoch {epoch} is current; the previous one answers for {node.config.oprf.grace_days} more days"
    )
    return EXIT_OK


def _cmd_keys_fingerprint(args: argparse.Namespace) -> int:
    from node.keys import format_fingerprint
    from node.keystore import kek_status

    info = kek_status(_hmac_config(args))
    ours, held = info["kek_fingerprint"], info["store_kek_fingerprint"]
    usable = info["same"] is not False and not (ours is None and held is not None)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK if usable else EXIT_REJECTED

    def shown(hex_fingerprint: str) -> str:
        return format_fingerprint(bytes.fromhex(hex_fingerprint))

    if ours is None:
        print(f"KEK {info['kek_file']}: NONE (copy the KEK file of a replica of this node here, mode 0600)")
    else:
        print(
            f"KEK {info['kek_file']}: fingerprint {shown(ours)} (every replica of this node shows the same)"
        )
    if held is None:
        print(
            "the store names no KEK yet: the node's first start (or `petanda-node keys migrate`) records it"
        )
    else:
        verdict = {True: ": the same KEK", False: ": a DIFFERENT KEK: this replica cannot read them"}
        print(f"the store's keys are wrapped under fingerprint {shown(held)}{verdict.get(info['same'], '')}")
    epochs = ", ".join(map(str, info["epochs"])) or "none"
    print(f"OPRF keys in the store: epochs {epochs}; current epoch {info['epoch']}")
    return EXIT_OK if usable else EXIT_REJECTED


def _cmd_keys_migrate(args: argparse.Namespace) -> int:
    from node.keys import OPRF_DIR, format_fingerprint, list_epochs

    node = _load(args)  # opening wraps the files in (creating the KEK if the store names none)
    try:
        imported, held = node.keys_imported, node.keystore.epochs()
        fingerprint = format_fingerprint(node.keystore.kek.fingerprint())
        generations = node.store.wrapped_key_epochs("hmac")
    finally:
        node.close()
    files = list_epochs(node.dir)
    kek = node.config.keys.kek_file
    if imported:
        print(
            f"wrapped the OPRF seeds of epochs {', '.join(map(str, imported))} from {node.dir / OPRF_DIR} "
            f"into the store under the KEK {kek} (fingerprint {fingerprint})"
        )
    else:
        print(f"nothing to wrap: the store holds the OPRF keys of epochs {', '.join(map(str, held))}")
    if files:
        print(
            f"{node.dir / OPRF_DIR} (epochs {', '.join(map(str, files))}) holds the same seeds as the "
            "store and is no longer read for keys: once every replica runs this version with a copy of "
            f"the KEK file and a backup holds {kek} apart from the store's, delete it"
        )
    secret = node.config.hmac.federation_secret_file
    if secret.exists() and generations:
        print(
            f"the federation secret is in the store (generation {generations[-1]}); {secret} is no longer "
            "read: delete it too (`petanda-node hmac export` writes a copy when a member needs one)"
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
        from node.feeds import status as feed_status

        status = node.status(now=time.time())
        status["crl"] = node.crl.status(now=time.time())
        status["people"] = node.issuers.status()
        status["feeds"] = feed_status(node, now=time.time())
    finally:
        node.close()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console()
    wide = args.wide
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
    print_table(console, table, wide=wide)
    console.print(
        f"withheld from publication (active, by TLP): RED {withheld['RED']}, "
        f"AMBER+STRICT {withheld['AMBER+STRICT']}"
    )
    _print_peers(console, status, wide=wide)
    if status["feeds"]:
        _print_feeds(console, status["feeds"])
    for peer_id, kinds in sorted(status["plausibility"].items()):
        for kind, hits in sorted(kinds.items()):
            if hits.get("alerted"):
                found = f"{hits['unopened']} of {hits['tested']} values hit its filter"
                console.print(
                    f"[bold red]plausibility alert[/] {peer_id} {kind}: {found} (version {hits['version']}) "
                    f"without a record, p = {hits['p_value']:.2g}"
                )
    _print_oprf_usage(console, status, wide=wide)
    crl = status["crl"]
    if crl["number"]:
        stale = " [red]STALE: past its next update, still enforced[/]" if crl["stale"] else ""
        console.print(
            f"CRL number {crl['number']}: {crl['revoked']} revoked, next update {crl['next_update']}{stale}"
        )
    else:
        console.print("CRL: none held (no certificate is refused as revoked)")
    _print_people(console, status["people"])
    for problem in status["integrity"]:
        console.print(f"[red]integrity: {problem}[/]")
    return EXIT_OK


def _print_people(console: Any, people: dict[str, Any]) -> None:
    """Who may issue the node's investigators and auditors, and the people-CA's CRL."""
    ca = people["people_ca"]
    if ca is None:
        console.print("people-CA: none (tls.people_ca): no people-CA person is served")
    else:
        crl = people["people_crl"]
        held = (
            "no CRL"
            if crl is None or not crl["number"]
            else f"CRL number {crl['number']}, {crl['revoked']} revoked"
        )
        stale = " [red]STALE[/]" if crl is not None and crl["stale"] else ""
        console.print(f"people-CA serial {ca['serial']} until {ca['not_after']}: {held}{stale}")
    if people["root_people"]:
        console.print(
            "[yellow]tls.root_people is on: people issued by the federation CA are served (migration)[/]"
        )


#: How each peer state is shown in the table.
_STATE_STYLE = {
    "ok": "green",
    "degraded": "yellow",
    "stale": "yellow",
    "unreachable": "red",
    "fork": "bold red",
}


def print_table(console: Any, table: Any, *, wide: bool = False) -> None:
    """Print a rich table fitted to a terminal, but whole (its natural width) when stdout is not a
    terminal or ``wide``: a cell cut to ``confid…`` in a pipe or a file is a wrong value."""
    from rich.console import Console

    if not console.is_terminal or wide:
        width = console.measure(table, options=console.options.update_width(100_000)).maximum
        if width > console.width:
            console = Console(file=console.file, width=width, force_terminal=console.is_terminal)
    console.print(table)


def _protocol_cell(peer: dict[str, Any]) -> str:
    """The protocol version used with a peer and the ones it serves: ``3 (serves 2,3)``; ``none (serves
    4)`` when they share none; ``-`` before a sync learnt them."""
    served = peer.get("protocol_served")
    if not served:
        return "-"
    used = "none" if peer.get("protocol") is None else str(peer["protocol"])
    return f"{used} (serves {','.join(map(str, served))})"


def _print_peers(console: Any, status: dict[str, Any], *, wide: bool) -> None:
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
    print_table(console, peers, wide=wide)
    for peer in status["peers"]:
        if peer["state"] != "ok" and peer["reason"]:
            console.print(f"{peer['id']} {peer['state']}: {escape(peer['reason'])}", highlight=False)
    for peer in status["peers"]:
        if peer["recoveries"]:
            console.print(
                f"[yellow]{peer['id']} restored from a backup {peer['recoveries']} time(s)[/] "
                "(recovery statements accepted: audit entries node.recovered)"
            )
    if status["recoveries"]:
        console.print(
            f"[yellow]this node was restored from a backup {status['recoveries']} time(s)[/] "
            "(audit entries node.restored)"
        )


def _print_oprf_usage(console: Any, status: dict[str, Any], *, wide: bool) -> None:
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
    print_table(console, table, wide=wide)
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
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="the log on stderr: text lines, or one JSON object per line (default: the config's "
        "logging.format, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ca = sub.add_parser("ca", help="the federation CA and the states' people-CAs").add_subparsers(
        dest="ca_command", required=True, metavar="CA_COMMAND"
    )
    p = ca.add_parser("init", help="create a federation CA")
    p.add_argument("--dir", required=True, help="directory for ca.crt and ca.key (must not hold them yet)")
    p.add_argument("--name", default="Petanda federation CA")
    p.add_argument("--days", type=int, default=3650)
    p.set_defaults(handler=_cmd_ca_init)
    p = ca.add_parser("issue", help="issue a certificate for a peer node, an investigator or an auditor")
    p.add_argument(
        "--ca",
        required=True,
        help="the CA directory: the federation CA for a peer, the people-CA for a person",
    )
    p.add_argument("--role", required=True, choices=("peer", "investigator", "auditor"))
    p.add_argument("--id", required=True, help="node id (MY) for a peer; CC/name (MY/alice) for a person")
    p.add_argument("--out", required=True, help="directory for the certificate, key and a copy of ca.crt")
    p.add_argument("--hostname", action="append", default=[], help="DNS name of a peer's server (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="IP address of a peer's server (repeatable)")
    p.add_argument(
        "--days", type=int, default=None, help="validity (default 90 for a peer, 365 for a person)"
    )
    p.set_defaults(handler=_cmd_ca_issue)
    p = ca.add_parser("people-init", help="make a state's people-CA key and its request to the federation CA")
    p.add_argument("--state", required=True, help="ISO 3166-1 alpha-2 code of the state (MY)")
    p.add_argument("--dir", required=True, help="the people-CA directory (must not hold a people-CA yet)")
    p.set_defaults(handler=_cmd_ca_people_init)
    p = ca.add_parser("sign-people-ca", help="sign a state's people-CA request at the federation CA")
    p.add_argument("--ca", required=True, help="the federation CA directory")
    p.add_argument("--csr", required=True, help="the state's people-ca.csr")
    p.add_argument("--out", required=True, help="directory for people-ca.crt and a copy of ca.crt")
    p.add_argument("--days", type=int, default=1825, help="validity (default 1825)")
    p.set_defaults(handler=_cmd_ca_sign_people_ca)
    p = ca.add_parser("renew", help="reissue a certificate: same identity and names, new serial and validity")
    p.add_argument("--ca", required=True, help="the CA directory (a people-CA's for a person)")
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

    keys = sub.add_parser(
        "keys", help="the key-encryption key of the OPRF keys in the store: fingerprint, migrate"
    ).add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    p = with_config(
        keys.add_parser("fingerprint", help="the KEK's fingerprint, the store's, and the epochs it holds")
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_keys_fingerprint)
    p = with_config(
        keys.add_parser("migrate", help="wrap the OPRF seed files of an older node into the store")
    )
    p.set_defaults(handler=_cmd_keys_migrate)

    p = with_config(sub.add_parser("serve", help="run the node's gRPC server until SIGTERM"))
    p.add_argument("--no-sync", action="store_true", help="do not pull peers in the background")
    p.add_argument("--no-feeds", action="store_true", help="do not poll the [[feeds]] in the background")
    p.set_defaults(handler=_cmd_serve)
    config = sub.add_parser("config", help="check a node's configuration").add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND"
    )
    p = config.add_parser(
        "check",
        help="validate the config, read every file it names, reach each peer (TLS and one call); "
        "exit 1 if anything fails",
    )
    p.add_argument("--config", default="node.toml", help="the node's config file (default: ./node.toml)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per peer (default 5)")
    p.add_argument("--no-peers", action="store_true", help="check the config and files only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wide", action="store_true", help="the table whole even on a terminal")
    p.set_defaults(handler=_cmd_config_check)
    feed = sub.add_parser(
        "feed", help="live feeds ([[feeds]]: TAXII 2.1 collections, MISP instances): run, status"
    ).add_subparsers(dest="feed_command", required=True, metavar="FEED_COMMAND")
    p = with_config(feed.add_parser("run", help="poll feeds now, from their cursors, then publish"))
    p.add_argument("names", nargs="*", metavar="NAME", help="feeds to poll (default: every one)")
    p.add_argument("--max-errors", type=int, default=50, help="refusals to print (all are counted)")
    p.set_defaults(handler=_cmd_feed_run)
    p = with_config(feed.add_parser("status", help="each feed's state, totals, last error and next poll"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_feed_status)
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
    p.add_argument(
        "--if-due",
        action="store_true",
        help="only if the epoch is oprf.epoch_days old (for a timer; serve rotates on the same schedule)",
    )
    p.set_defaults(handler=_cmd_rotate)
    p = with_config(
        sub.add_parser(
            "roll-signing-key",
            help="replace the Ed25519 signing key, announced under the old one, and publish",
        )
    )
    p.set_defaults(handler=_cmd_roll_signing_key)
    p = with_config(
        sub.add_parser(
            "backup", help="copy the store to a new 0600 file, consistently, while the node serves"
        )
    )
    p.add_argument("out", metavar="FILE", help="the backup file to create (never overwritten)")
    p.set_defaults(handler=_cmd_backup)
    p = with_config(
        sub.add_parser(
            "restore",
            help="put a backup back, learn from the peers what they hold of this node, sign a recovery "
            "statement and publish above them (the node must be stopped)",
        )
    )
    p.add_argument(
        "backup", nargs="?", metavar="FILE", help="a file of `backup`; omit it after restoring by other means"
    )
    p.add_argument("--reason", required=True, help="why the node was restored (signed, seen by every peer)")
    p.add_argument(
        "--allow-unreachable", action="store_true", help="sign the statement even if some peers do not answer"
    )
    p.add_argument("--no-publish", action="store_true", help="do not publish after the statement")
    p.set_defaults(handler=_cmd_restore)
    p = with_config(sub.add_parser("status", help="counts, epoch, manifest version, peers, store health"))
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--wide", action="store_true", help="tables whole even on a terminal (whole already in a pipe)"
    )
    p.set_defaults(handler=_cmd_status)
    return parser


def _setup_logging(*, verbose: bool, fmt: str | None = None) -> None:
    """Log to stderr at WARNING, or INFO with ``-v`` (every sync, publication and signed tree head).

    gRPC's C core logs on its own, straight to stderr (through absl, with no hook into Python logging),
    so it is silenced unless the operator sets ``GRPC_VERBOSITY``; then ``serve`` routes its lines into
    this log as the ``grpc.core`` logger (:mod:`node.logbridge`). What matters of it reaches our log
    anyway, as the status details of a failed call. Runs before anything imports grpc, which reads the
    variables once.
    """
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    os.environ.setdefault("GRPC_TRACE", "")
    from node.logformat import TEXT_FORMAT, set_format

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=TEXT_FORMAT)
    if fmt is not None:
        set_format(fmt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``petanda-node`` command line and return its exit status."""
    args = _parser().parse_args(argv)
    _setup_logging(verbose=args.verbose, fmt=args.log_format)
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
