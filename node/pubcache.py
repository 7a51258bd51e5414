"""What a publication keeps beside the store so that the next one follows the change (ADR 0021).

For each filter of the last publication: the per-bit counters of its Bloom filter
(:class:`client.protocol.bloom.CountingBloom`, four bits a bit of the filter) and the leaf hashes of its
buckets, in one file per ``(kind, tier)`` in the node's cache directory. A file is a cache: it names the
filter it belongs to (SHA-256, count, bucket prefix and root, epoch, node) and carries a CRC-32 of its
body, and a publication uses it only when all of that matches the last manifest's entry; otherwise, or
when it is missing, the filter is built from scratch and the file written anew. It holds no digest:
counters and bucket hashes of what the node publishes anyway.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from client.protocol.bloom import CountingBloom
from client.protocol.manifest import FilterEntry

__all__ = ["FilterCache", "load", "save"]

_MAGIC: Final = b"PTCB1\n"
_LEAF: Final = 32


@dataclass(slots=True)
class FilterCache:
    """The counters of one filter and the leaf hashes of its buckets (``32 * 2**prefix_bits`` bytes)."""

    counting: CountingBloom
    leaves: bytearray


def _path(cache_dir: Path, kind: str, tier: int) -> Path:
    return cache_dir / f"{kind}-{tier}.counts"


def _header(entry: FilterEntry, *, epoch: int, node_id: str, m: int, k: int) -> dict[str, object]:
    return {
        "kind": entry.kind,
        "tier": entry.tier,
        "epoch": epoch,
        "node_id": node_id,
        "m": m,
        "k": k,
        "count": entry.count,
        "prefix_bits": entry.prefix_bits,
        "filter_sha256": entry.filter_sha256.hex(),
        "buckets_root": entry.buckets_root.hex(),
    }


def load(
    cache_dir: Path, entry: FilterEntry, *, epoch: int, node_id: str, m: int, k: int
) -> FilterCache | None:
    """The cache of the filter ``entry`` names, or None when it is missing, of another filter or damaged."""
    try:
        with open(_path(cache_dir, entry.kind, entry.tier), "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            header = json.loads(f.readline())
            crc = header.pop("crc32")
            if header != _header(entry, epoch=epoch, node_id=node_id, m=m, k=k):
                return None
            counters = np.fromfile(f, dtype=np.uint8, count=m // 2)
            leaves = bytearray(f.read(_LEAF << entry.prefix_bits))
            if counters.shape != (m // 2,) or len(leaves) != _LEAF << entry.prefix_bits or f.read(1):
                return None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    if zlib.crc32(leaves, zlib.crc32(counters.data)) != crc:
        return None
    return FilterCache(CountingBloom(m, k, counters), leaves)


def save(
    cache_dir: Path, entry: FilterEntry, cache: FilterCache, *, epoch: int, node_id: str, m: int, k: int
) -> None:
    """Write the cache of the filter ``entry`` names (private to the node's user; atomically replaced)."""
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    header = _header(entry, epoch=epoch, node_id=node_id, m=m, k=k)
    header["crc32"] = zlib.crc32(cache.leaves, zlib.crc32(cache.counting.counters.data))
    path = _path(cache_dir, entry.kind, entry.tier)
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
        f.write(cache.counting.counters.data)
        f.write(cache.leaves)
    os.replace(partial, path)


def drop(cache_dir: Path, kind: str, tier: int) -> None:
    """Forget the cache of ``(kind, tier)`` (a filter built without one, or gone)."""
    _path(cache_dir, kind, tier).unlink(missing_ok=True)
