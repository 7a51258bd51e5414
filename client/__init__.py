"""Petanda's protocol library: the sans-I/O core every party uses, and the investigators' client.

The core (normalisation, digests, OPRF, Bloom filters, match metadata, manifests, Merkle proofs)
imports neither ``grpc`` nor a database driver; ``tests/test_core_purity.py`` keeps it so.
"""

from __future__ import annotations

from client.protocol.canonical import normalize
from client.protocol.errors import PetandaError
from client.protocol.kinds import KINDS

__all__ = ["KINDS", "PetandaError", "normalize"]
