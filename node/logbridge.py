"""gRPC's C-core log lines through Python logging.

The C core of grpcio writes its log lines (``E1130 03:04:14.261076 16932 file.cc:123] message``) straight
to file descriptor 2, with no hook into Python. A serving node whose operator turned them on
(``GRPC_VERBOSITY`` other than ``NONE``) routes them: fd 2 becomes a pipe, a thread reads it, and each
C-core line becomes a record of the logger ``grpc.core`` at its own level (E error, W warning, I info,
D debug), formatted like every other line of the node's log. Anything else written to fd 2 passes
through unchanged, and Python's own log and messages keep the original stderr.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from typing import Final

__all__ = ["route_grpc_core_logs"]

_CORE: Final = re.compile(rb"^([EWID])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]]+)\] ?(.*)$")
_LEVELS: Final = {b"E": logging.ERROR, b"W": logging.WARNING, b"I": logging.INFO, b"D": logging.DEBUG}


def route_grpc_core_logs() -> None:
    """Send the C core's lines on fd 2 to the ``grpc.core`` logger from now on (see the module)."""
    original = io.TextIOWrapper(os.fdopen(os.dup(2), "wb", buffering=0), write_through=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.__stderr__):
            handler.setStream(original)
    sys.stderr = original
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    logger = logging.getLogger("grpc.core")

    def pump() -> None:
        with os.fdopen(read, "rb") as pipe:
            for raw in pipe:
                line = raw.rstrip(b"\r\n")
                match = _CORE.match(line)
                if match:
                    where = match[2].decode("utf-8", "replace").strip()
                    logger.log(_LEVELS[match[1]], "%s (%s)", match[3].decode("utf-8", "replace"), where)
                elif line:
                    original.write(line.decode("utf-8", "replace") + "\n")

    threading.Thread(target=pump, name="grpc-log", daemon=True).start()
