"""The house plan, enforced by package (docs/ARCHITECTURE.md).

- ``client.protocol`` is pure: it imports neither gRPC, protobuf, a database driver, the node, the
  transport or the tools, nor the process's files, terminal or clock (``rich``, ``tomllib``).
- ``client.transport`` imports the protocol and gRPC, never the tools or the node.
- ``client.tools`` imports protocol and transport, never the node.
- ``node`` imports protocol and transport, never the tools.
- ``integrations`` (the MISP module, the Cortex analyzer) import nothing of petanda: they run in their
  host's environment and call the ``petanda`` program (ADR 0017).
- No circle of imports between the modules of ``client`` and ``node``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in base.rglob("*.py")
        if "_proto" not in path.parts
    )


def _path(module: str) -> Path:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.exists() else ROOT / module.replace(".", "/") / "__init__.py"


def _imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``module``'s source, relative ones resolved."""
    path = _path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:  # `from client.protocol import oprf` imports a module too
                yield node.lineno, f"{base}.{alias.name}"


#: package → top-level names or package prefixes its sources must not import.
RULES = {
    "client.protocol": (
        "grpc",
        "google",
        "psycopg",
        "sqlite3",
        "node",
        "rich",
        "tomllib",
        "client.transport",
        "client.tools",
        "client._proto",
    ),
    "client.transport": ("node", "client.tools", "psycopg", "sqlite3", "rich"),
    "client.tools": ("node", "psycopg", "sqlite3"),
    "node": ("client.tools",),
    "integrations": ("client", "node", "grpc", "google", "psycopg", "sqlite3"),
}


def _forbidden(name: str, rules: tuple[str, ...]) -> str | None:
    for rule in rules:
        if name == rule or name.startswith(rule + "."):
            return rule
    return None


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_room_imports_only_what_it_may(package: str) -> None:
    bad = [
        f"{module}:{line} imports {name}"
        for module in _modules(package)
        for line, name in _imports(module)
        if _forbidden(name, RULES[package])
    ]
    assert bad == []


def test_protocol_pulls_in_no_io_at_runtime() -> None:
    code = (
        "import sys\n"
        f"for name in {_modules('client.protocol')!r}: __import__(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'grpc', 'google', 'psycopg', 'sqlite3', 'node', 'rich'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == ""


def test_the_core_is_the_protocol() -> None:
    core = set(_modules("client.protocol"))
    for required in ("oprf", "bloom", "merkle", "manifest", "canonical", "metadata", "auditlog", "model"):
        assert f"client.protocol.{required}" in core


def test_no_circle_of_imports() -> None:
    modules = set(_modules("client")) | set(_modules("node"))
    graph = {m: {n for _, n in _imports(m) if n in modules and n != m} for m in modules}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend([*stack[stack.index(n) :], m, n] if n in stack else [m, n])
                return True
            if n not in state and visit(n, [*stack, m]):
                return True
        state[m] = 2
        return False

    for m in sorted(modules):
        if m not in state and visit(m, []):
            break
    assert cycle == [], " -> ".join(cycle)
