"""The sans-I/O core imports neither gRPC nor a database driver nor the node (DESIGN.md, "Layout")."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Modules of ``client`` that are adapters, not core: they may do I/O. Everything else is core.
ADAPTERS = {
    "client.cli",
    "client.rpc",
    "client.audit_cli",
    "client.demo",
    "client.tls",
    "client.check_cli",
    "client.connection",
}
CORE = sorted(
    name
    for path in (ROOT / "client").rglob("*.py")
    if "_proto" not in path.parts
    and (name := ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    not in ADAPTERS
)
FORBIDDEN = {"grpc", "psycopg", "psycopg2", "sqlite3", "node", "google"}


def test_core_modules_do_not_pull_in_io_at_runtime() -> None:
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == ""


def test_core_is_the_protocol() -> None:
    for required in ("client.canonical", "client.oprf", "client.bloom", "client.merkle", "client.manifest"):
        assert required in CORE


def test_core_sources_do_not_import_io() -> None:
    for name in CORE:
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, f"{path.name}:{node.lineno} imports {roots & FORBIDDEN}"
