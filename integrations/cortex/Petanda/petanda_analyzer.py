#!/usr/bin/env python3
"""Cortex analyzer ``Petanda_Check``: check an observable against the Petanda federation, via your node.

Cortex runs it as ``petanda_analyzer.py JOB_DIR`` (``JOB_DIR/input/input.json`` in,
``JOB_DIR/output/output.json`` out; without a job directory the job comes on stdin and the report goes to
stdout), through ``cortexutils``. It is a thin adapter over ``petanda check``: it runs the
investigator's ``petanda`` program with the certificate of the Cortex service's own person and reports
the check's JSON document as the full report, with a summary taxonomy (``Petanda:Match`` malicious at
the peers that hold it, else info). The raw value goes to the national node only, over mutual TLS.
Running the command rather than importing petanda keeps petanda's dependencies out of the environment
Cortex shares between its analyzers: see ``docs/adr/0017-investigator-tools-call-the-petanda-cli.md``.
``docs/investigators.md`` ("TheHive and Cortex") is the user's guide.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Final

from cortexutils.analyzer import Analyzer

#: Cortex data type -> Petanda kind (None: the kind is told by the value, as ``petanda check`` guesses).
CORTEX_KINDS: Final[dict[str, str | None]] = {
    "ip": None,
    "domain": "domain",
    "fqdn": "domain",
    "url": "url",
    "mail": "email",
    "phone_number": "phone",
    "phone": "phone",
    "iban": "bank_account",
    "bank_account": "bank_account",
    "crypto_wallet": "crypto_wallet",
    "handle": "handle",
    "other": None,
}
#: What the report says of its use: the federation's answers are for this organisation only.
ORG_ONLY: Final = "this organisation only: do not share it outside your organisation (TLP:AMBER+STRICT)"
#: ``petanda check`` of one JSON line on stdin (so the value is on no command line), answered by one JSON
#: line: the ``check --json`` document. ``--max-wait 0``: a rate-limited peer is reported, not waited for.
CHECK_ARGS: Final = (
    "check", "--file", "-", "--input-format", "jsonl", "--format", "jsonl", "--quiet", "--max-wait", "0",
)  # fmt: skip
#: Seconds a job may take when the config gives no ``timeout_s``.
DEFAULT_TIMEOUT_S: Final = 30.0
#: Seconds ``petanda check`` itself allows its node beyond the fan-out deadline (client.tools.check).
_CALL_MARGIN_S: Final = 11.0
_MAX_VALUE: Final = 4096
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONNECTION: Final = ("config", "node", "ca", "cert", "key", "server_name")


class JobError(Exception):
    """A job this analyzer cannot do; the message is the one-line reason Cortex shows."""


def query(data_type: object, data: object) -> tuple[str | None, str]:
    """The (Petanda kind or None to guess, value) of an observable."""
    if data_type not in CORTEX_KINDS:
        raise JobError(f"dataType {data_type!r} is not checked; supported: {', '.join(CORTEX_KINDS)}")
    if not isinstance(data, str) or not data.strip():
        raise JobError("'data' must be the observable's value, a non-empty string")
    if len(data) > _MAX_VALUE:
        raise JobError(f"'data' is longer than {_MAX_VALUE} characters")
    return CORTEX_KINDS[str(data_type)], data.strip()


def command(config: object) -> tuple[list[str], float]:
    """The ``petanda check`` command line (program, connection flags) and the timeout, from the config."""
    if not isinstance(config, dict):
        raise JobError("'config' must be a JSON object")
    program = config.get("petanda") or "petanda"
    if not isinstance(program, str):
        raise JobError("config 'petanda' must be a string")
    argv = [program, *CHECK_ARGS]
    for key in _CONNECTION:
        item = config.get(key)
        if item in (None, ""):
            continue
        if not isinstance(item, str):
            raise JobError(f"config {key!r} must be a string")
        argv += ["--" + key.replace("_", "-"), item]
    timeout = config.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 600:
        raise JobError(f"config 'timeout_s' must be a number of seconds from 1 to 600, not {timeout!r}")
    return argv, float(timeout)


def run_check(argv: list[str], kind: str | None, value: str, timeout: float) -> dict[str, Any]:
    """Check one value with ``petanda check``: its JSON document, or JobError with the reason it gave."""
    deadline_ms = max(100, int((timeout - _CALL_MARGIN_S) * 1000))
    row = {"value": value, **({"kind": kind} if kind else {})}
    try:
        done = subprocess.run(
            [*argv, "--deadline-ms", str(deadline_ms)],
            input=json.dumps(row) + "\n",  # ASCII: a lone surrogate is petanda's to refuse
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (FileNotFoundError, PermissionError):
        raise JobError(f"the petanda program {argv[0]!r} cannot be run (config 'petanda')") from None
    except subprocess.TimeoutExpired:
        raise JobError(f"no answer from petanda check within {timeout:g} s (config 'timeout_s')") from None
    try:
        doc = json.loads(done.stdout.partition("\n")[0])
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        last = done.stderr.strip().splitlines()[-1:] or [f"petanda check exited {done.returncode}"]
        raise JobError(clean(last[0]))
    if doc.get("error"):
        raise JobError(f"petanda: {clean(str(doc['error']))}")
    return doc


def clean(text: str, limit: int = 500) -> str:
    """Text from the node or a peer on one line, without control characters."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def taxonomies(report: dict[str, Any]) -> list[dict[str, str]]:
    """Cortex's short report: the peers that hold the value (malicious), else none did (info); and the
    peers that did not answer, if any (suspicious: the check is incomplete)."""
    peers = [p for p in report.get("peers") or [] if isinstance(p, dict)]
    held = sorted(clean(str(p.get("peer_id")), 16) for p in peers if p.get("status") == "match")
    silent = sorted(
        clean(str(p.get("peer_id")), 16) for p in peers if p.get("status") not in ("match", "no_match")
    )
    found = [
        {"level": "malicious", "namespace": "Petanda", "predicate": "Match", "value": ", ".join(held)}
        if held
        else {"level": "info", "namespace": "Petanda", "predicate": "Match", "value": f"0/{len(peers)} peers"}
    ]
    if silent:
        found.append(
            {
                "level": "suspicious",
                "namespace": "Petanda",
                "predicate": "Unanswered",
                "value": ", ".join(silent),
            }
        )
    return found


class PetandaAnalyzer(Analyzer):  # type: ignore[misc]
    """The Cortex side: the job's observable and config in, the check's document out."""

    def run(self) -> None:
        try:
            kind, value = query(self.data_type, self.get_param("data"))
            argv, timeout = command(self.get_param("config", {}))
            report = run_check(argv, kind, value, timeout)
        except JobError as error:
            self.error(str(error))  # writes success false and exits
            return
        report["use"] = ORG_ONLY
        self.report(report)

    def summary(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {"taxonomies": taxonomies(raw)}

    def artifacts(self, raw: dict[str, Any]) -> list[dict[str, Any]]:
        return []  # a check finds no new observable: the peers' records carry no indicator


def _unreadable_job(job_directory: str | None, why: str) -> None:
    """Report a job cortexutils cannot read (not a JSON object) as Cortex expects a failure: success false."""
    output = {"success": False, "input": None, "errorMessage": f"the job is not a JSON object: {why}"}
    if job_directory and os.path.isdir(os.path.join(job_directory, "input")):
        os.makedirs(os.path.join(job_directory, "output"), exist_ok=True)
        with open(os.path.join(job_directory, "output", "output.json"), "w", encoding="utf-8") as f:
            json.dump(output, f)
    else:
        json.dump(output, sys.stdout)
    sys.exit(1)


def main() -> None:
    try:
        analyzer = PetandaAnalyzer()
    except (ValueError, AttributeError, TypeError) as exc:  # not JSON, not UTF-8, not an object
        _unreadable_job(sys.argv[1] if len(sys.argv) > 1 else None, str(exc))
        return
    analyzer.run()


if __name__ == "__main__":
    main()
