"""Versioned schema migrations, one ``NNNN_name.sql`` file per version and backend.

Each backend applies, on open and in a transaction per file, every migration above the version
recorded in its ``schema_version`` table. A file is never edited once released: a change is a new file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from client.protocol.errors import StoreError

__all__ = ["Migration", "load_migrations"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema migration: its version (1, 2, ...), short name and SQL text."""

    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """Return the migrations of ``backend`` ("sqlite" or "postgres") in order, checking they are 1..N."""
    try:
        folder = resources.files(__name__).joinpath(backend)
        files = [(m, f) for f in folder.iterdir() if (m := _NAME.match(f.name))]
    except (FileNotFoundError, NotADirectoryError) as e:
        raise StoreError(f"schema migrations for {backend} are missing from the installation: {e}") from e
    out = [Migration(int(m.group(1)), m.group(2), f.read_text("utf-8")) for m, f in files]
    out.sort(key=lambda mig: mig.version)
    if [mig.version for mig in out] != list(range(1, len(out) + 1)):
        raise StoreError(f"schema migrations for {backend} are not numbered 1..N: {[m.version for m in out]}")
    return out
