"""MISP expansion module: check an attribute against the Petanda federation through your own node.

Loaded by the ``misp-modules`` service as a custom module (``misp-modules -c integrations/misp_modules``)
and run when an analyst asks for it (the enrichment button of an attribute): it is an expansion module
only, never a hover module, because every check spends the node's and the peers' daily quotas.

It is a thin adapter over ``petanda check``: it runs the investigator's ``petanda`` program with
the certificate of the MISP service's own person (an investigator certificate issued for it, e.g.
``MY/misp``) and turns the per-peer answer into MISP attributes. The raw value goes to the national node
only, over mutual TLS, exactly as ``petanda check`` sends it. Running the command rather than importing
petanda keeps petanda's dependencies out of the misp-modules environment (its pins move with
misp-modules, not with petanda): see ``docs/adr/0017-investigator-tools-call-the-petanda-cli.md``.

Every result is marked for this organisation only: MISP distribution 0 ("Your organisation only"), the
tag ``tlp:amber+strict`` and a comment saying so. ``docs/investigators.md`` ("MISP") is the user's guide.

Standard library only: this file runs in the misp-modules environment.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from typing import Any, Final

#: MISP attribute type -> Petanda kind (None: the kind is told by the value, as ``petanda check`` guesses).
MISP_KINDS: Final[dict[str, str | None]] = {
    "phone-number": "phone",
    "whois-registrant-phone": "phone",
    "email": "email",
    "email-src": "email",
    "email-dst": "email",
    "email-reply-to": "email",
    "whois-registrant-email": "email",
    "url": "url",
    "link": "url",
    "domain": "domain",
    "hostname": "domain",
    "hostname|port": "domain",
    "ip-src": None,
    "ip-dst": None,
    "ip-src|port": None,
    "ip-dst|port": None,
    "iban": "bank_account",
    "bank-account-nr": "bank_account",
    "btc": "crypto_wallet",
    "twitter-id": "handle",
}
#: Composite types: the part of ``a|b`` that is checked.
_FIRST_PART: Final = frozenset({"hostname|port", "ip-src|port", "ip-dst|port"})

#: What MISP shows in a result's comment: the federation's answers are for this organisation only.
ORG_ONLY: Final = "Petanda result, this organisation only: do not share it outside your organisation"
#: MISP's distribution level "Your organisation only".
DISTRIBUTION_ORG_ONLY: Final = "0"
#: The TLP 2.0 marking of "this organisation only".
TLP_ORG_ONLY: Final = "tlp:amber+strict"

#: ``petanda check`` of one JSON line on stdin (so the value is on no command line), answered by one JSON
#: line: the ``check --json`` document. ``--max-wait 0``: a rate-limited peer is reported, not waited for.
CHECK_ARGS: Final = (
    "check", "--file", "-", "--input-format", "jsonl", "--format", "jsonl", "--quiet", "--max-wait", "0",
)  # fmt: skip
#: Seconds a query may take when the config gives no ``timeout_s``.
DEFAULT_TIMEOUT_S: Final = 30.0
#: Seconds ``petanda check`` itself allows its node beyond the fan-out deadline (client.tools.check).
_CALL_MARGIN_S: Final = 11.0
_MAX_VALUE: Final = 4096
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

misperrors = {"error": "Error"}
mispattributes = {"input": sorted(MISP_KINDS), "output": ["text"], "format": "misp_standard"}
moduleinfo = {
    "version": "1.0",
    "author": "Petanda",
    "description": "Check an attribute against the Petanda federation of CERTs, through your own node.",
    "module-type": ["expansion"],
    "name": "Petanda check",
    "logo": "",
    "requirements": ["the petanda program and an investigator certificate of the MISP service's own"],
    "features": (
        "Sends the attribute's value to your national Petanda node, which asks every peer without the value "
        "leaving it; returns one text attribute per peer (match with its category, dates, confidence, "
        "TLP and report count; no match; or why the peer did not answer), each for your organisation only."
    ),
    "references": ["docs/investigators.md"],
    "input": "phone numbers, e-mail addresses, URLs, domains, IP addresses, IBANs, bank accounts, wallets",
    "output": "text attributes, one per peer, distribution 'Your organisation only', tag tlp:amber+strict",
}
#: Settings of the module in MISP (Plugin.Enrichment_petanda_*): the petanda program, and the connection
#: settings of ``petanda check`` (an unset one comes from the service's PETANDA_* environment or config).
moduleconfig = ["petanda", "config", "node", "ca", "cert", "key", "server_name", "timeout_s"]


class QueryError(Exception):
    """A query this module cannot answer; the message is the one-line reason MISP shows."""


def _attribute(request: dict[str, Any]) -> tuple[str, str]:
    """The (MISP type, value) of a query: ``attribute`` (MISP 2.4/2.5) or the older ``"<type>": value``."""
    attribute = request.get("attribute")
    if attribute is not None:
        if not isinstance(attribute, dict):
            raise QueryError("'attribute' must be a JSON object with 'type' and 'value'")
        misp_type, value = attribute.get("type"), attribute.get("value")
        if not isinstance(misp_type, str) or not misp_type:
            raise QueryError("'attribute.type' is missing or not a string")
        if not isinstance(value, str):
            raise QueryError("'attribute.value' is missing or not a string")
        return misp_type, value
    given = [name for name in MISP_KINDS if name in request]
    if len(given) != 1:
        raise QueryError(
            "the query has no 'attribute' object (type and value) nor one '<type>': value field "
            f"of a supported type ({', '.join(sorted(MISP_KINDS))})"
        )
    value = request[given[0]]
    if not isinstance(value, str):
        raise QueryError(f"{given[0]!r} must be a string")
    return given[0], value


def _query(request: dict[str, Any]) -> tuple[str | None, str]:
    """The (Petanda kind or None to guess, value) to check."""
    misp_type, value = _attribute(request)
    if misp_type not in MISP_KINDS:
        raise QueryError(
            f"attribute type {misp_type!r} is not checked; supported: {', '.join(sorted(MISP_KINDS))}"
        )
    value = value.strip()
    if misp_type in _FIRST_PART:
        value = value.rpartition("|")[0].strip() or value
    if misp_type == "twitter-id" and ":" not in value:
        value = "x:" + value.lstrip("@")
    if not value:
        raise QueryError("the attribute's value is empty")
    if len(value) > _MAX_VALUE:
        raise QueryError(f"the attribute's value is longer than {_MAX_VALUE} characters")
    return MISP_KINDS[misp_type], value


def _settings(config: object) -> tuple[list[str], float]:
    """The program and connection flags of ``petanda check``, and the timeout, from the module config."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise QueryError("'config' must be a JSON object")
    settings = {key: config.get(key) or "" for key in moduleconfig}
    if isinstance(settings["timeout_s"], (int, float)) and not isinstance(settings["timeout_s"], bool):
        settings["timeout_s"] = str(settings["timeout_s"])  # MISP sends strings; a person may not
    for key, item in settings.items():
        if not isinstance(item, str):
            raise QueryError(f"config {key!r} must be a string")
    argv = [settings["petanda"] or "petanda", *CHECK_ARGS]
    for key in ("config", "node", "ca", "cert", "key", "server_name"):
        if settings[key]:
            argv += ["--" + key.replace("_", "-"), settings[key]]
    try:
        timeout = float(settings["timeout_s"] or DEFAULT_TIMEOUT_S)
    except ValueError:
        raise QueryError(
            f"config 'timeout_s' must be a number of seconds, not {settings['timeout_s']!r}"
        ) from None
    if not 1 <= timeout <= 600:
        raise QueryError("config 'timeout_s' must be between 1 and 600 seconds")
    return argv, timeout


def _check(argv: list[str], kind: str | None, value: str, timeout: float) -> dict[str, Any]:
    """Check one value with ``petanda check``: its JSON document, or QueryError with the reason it gave."""
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
        raise QueryError(f"the petanda program {argv[0]!r} cannot be run (config 'petanda')") from None
    except subprocess.TimeoutExpired:
        raise QueryError(f"no answer from petanda check within {timeout:g} s (config 'timeout_s')") from None
    try:
        doc = json.loads(done.stdout.partition("\n")[0])
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        last = done.stderr.strip().splitlines()[-1:] or [f"petanda check exited {done.returncode}"]
        raise QueryError(_clean(last[0]))
    if doc.get("error"):
        raise QueryError(f"petanda: {_clean(str(doc['error']))}")
    return doc


def _clean(text: str, limit: int = 500) -> str:
    """Text from the node or a peer on one line, without control characters."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tag_value(item: object) -> str:
    """A short value of a machine tag: one line, no quotes."""
    return _clean(str(item), 16).replace('"', "")


def _peer_text(peer: dict[str, Any]) -> tuple[str, str]:
    """(status, the sentence MISP shows) of one peer's answer."""
    peer_id = _clean(str(peer.get("peer_id", "?")), 16)
    status = str(peer.get("status", "unknown"))
    meta = peer.get("metadata")
    if status == "match" and isinstance(meta, dict):
        facts = ", ".join(
            f"{label} {_clean(str(meta[key]), 40)}"
            for label, key in (
                ("category", "category"),
                ("first seen", "first_seen"),
                ("last seen", "last_seen"),
                ("confidence", "confidence"),
                ("TLP", "tlp"),
                ("reports", "reports"),
            )
            if meta.get(key) not in (None, "")
        )
        return status, f"Petanda: MATCH at {peer_id} ({facts})"
    if status == "no_match":
        return status, f"Petanda: no match at {peer_id}"
    detail = _clean(str(peer.get("detail") or status))
    return status, f"Petanda: {peer_id} did not answer ({status}: {detail})"


def results(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``misp_standard`` results of one ``petanda check --json`` document: one attribute per peer."""
    kind = _clean(str(doc.get("kind", "")), 32)
    canonical = _clean(str(doc.get("canonical", "")))
    comment = f"{ORG_ONLY}. Checked as {kind} {canonical} (verdict: {_clean(str(doc.get('verdict')), 16)})"
    attributes = []
    for peer in doc.get("peers") or []:
        if not isinstance(peer, dict):
            continue
        status, text = _peer_text(peer)
        attributes.append(
            {
                "uuid": str(uuid.uuid4()),
                "type": "text",
                "category": "Other",
                "value": text,
                "comment": comment,
                "to_ids": False,
                "distribution": DISTRIBUTION_ORG_ONLY,
                "Tag": [
                    {"name": TLP_ORG_ONLY},
                    {"name": f'petanda:peer="{_tag_value(peer.get("peer_id", "?"))}"'},
                    {"name": f'petanda:status="{_tag_value(status)}"'},
                ],
            }
        )
    if not attributes:
        raise QueryError("the node knows no peer to ask (it has synced none yet)")
    return {"Attribute": attributes, "Object": []}


def handler(q: str | bytes | bool = False) -> dict[str, Any] | bool:
    """Answer one query of the misp-modules service (``q``: the JSON body MISP posted)."""
    if q is False:
        return False
    try:
        request = json.loads(q) if isinstance(q, (str, bytes)) else None
    except ValueError as exc:
        return {"error": f"the query is not JSON: {exc}"}
    if not isinstance(request, dict):
        return {"error": "the query must be a JSON object"}
    try:
        kind, value = _query(request)
        argv, timeout = _settings(request.get("config"))
        return {"results": results(_check(argv, kind, value, timeout))}
    except QueryError as error:
        return {"error": str(error)}


def introspection() -> dict[str, Any]:
    """The attribute types MISP offers this module for, and its result format."""
    return mispattributes


def version() -> dict[str, Any]:
    """The module's description and settings, as misp-modules lists them."""
    moduleinfo["config"] = moduleconfig
    return moduleinfo
