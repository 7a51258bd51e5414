"""The node's log on stderr: one text line per event, or one JSON object per line (``--log-format json``).

A JSON line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message`` (the text line's
message), then the structured fields the event carries (``extra=`` of the logging call: a sync's
``peer``, ``outcome``, ``version``, ``bytes``, ``latency_s``…), and ``exc_info`` with a traceback. The
JSON is written by ``python-json-logger``. Neither format ever carries a raw indicator: no log call
of the node is given one.
"""

from __future__ import annotations

import logging
from typing import Final

from pythonjsonlogger.json import JsonFormatter

__all__ = ["FORMATS", "TEXT_FORMAT", "formatter", "set_format"]

FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def formatter(name: str) -> logging.Formatter:
    """The formatter of a log format (``text`` or ``json``)."""
    if name == "json":
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )
    if name == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {name!r}; expected one of {', '.join(FORMATS)}")


def set_format(name: str) -> None:
    """Format every handler of the root logger as ``name`` from now on."""
    chosen = formatter(name)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(chosen)
