"""``petanda``: the command-line tool of investigators and auditors.

Exit status: 0 success (for ``check``: no match), 1 at least one match (``check``), a sighting not
recorded (``sighting``) or a failed verification (``audit verify``), 2 an error (bad input, bad
configuration, unreachable node). Every error
is one line on stderr naming what is wrong; only :class:`client.protocol.errors.PetandaError` is caught, so
a bug
still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from client.protocol.errors import PetandaError
from client.protocol.kinds import KINDS

__all__ = ["main"]

EXIT_OK = 0
EXIT_MATCH = 1
EXIT_ERROR = 2

Command = Callable[[argparse.Namespace], int]


def _cmd_normalize(args: argparse.Namespace) -> int:
    from client.protocol.canonical import normalize

    print(normalize(args.kind, args.value, args.region))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo federation; it lives in the node package, which the client never imports.

    The demo runs in a session of its own and this process forwards SIGINT and SIGTERM to it, so that one
    Ctrl-C reaches it exactly once and it has all the time it needs to stop its nodes and remove its
    temporary directory (which holds private keys). ``subprocess.run`` would kill it 0.25 s after Ctrl-C.
    """
    import signal
    import subprocess
    from types import FrameType

    command = [sys.executable, "-m", "node.demo", "--per-node", str(args.per_node)]
    if args.keep:
        command.append("--keep")
    if args.dir:
        command += ["--dir", args.dir]
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's 128 + N


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petanda",
        description="Check scam indicators against the federation through your national node; audit its log.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("normalize", help="print the canonical form of an indicator")
    p.add_argument("kind", metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    p.add_argument("value", metavar="VALUE", help="the indicator as you have it")
    p.add_argument("--region", metavar="CC", help="ISO 3166-1 alpha-2 region for national phone numbers")
    p.set_defaults(handler=_cmd_normalize)

    from client.tools.audit import add_audit_commands
    from client.tools.check import add_check_commands
    from client.tools.web import add_web_command

    add_check_commands(sub)
    add_audit_commands(sub)
    add_web_command(sub)

    p = sub.add_parser("demo", help="run an eleven-node ASEAN federation on loopback and check it")
    p.add_argument("--keep", action="store_true", help="leave the federation running and print how to use it")
    p.add_argument("--dir", help="where to put the federation (default: a new temporary directory)")
    p.add_argument("--per-node", type=int, default=400, help="indicators generated per member (default 400)")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``petanda`` command line and return its exit status."""
    args = _parser().parse_args(argv)
    handler: Command = args.handler
    try:
        return handler(args)
    except PetandaError as error:
        print(f"petanda: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("petanda: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
