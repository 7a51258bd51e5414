"""The committed generated code is exactly what ``protos/generate.py`` produces from the ``.proto`` files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_kind_enum_matches_core_kind_codes() -> None:
    from client._proto.petanda.v1 import common_pb2
    from client.protocol.kinds import KINDS, TIER_HMAC, TIER_OPRF, kind_code

    for kind in KINDS:
        assert common_pb2.Kind.Value(f"KIND_{kind.upper()}") == kind_code(kind)
    assert common_pb2.Tier.Value("TIER_OPRF") == TIER_OPRF
    assert common_pb2.Tier.Value("TIER_HMAC") == TIER_HMAC
