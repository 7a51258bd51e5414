"""The documentation points at things that exist: README.md and every docs/**/*.md.

- every relative link resolves to a file or directory of the repository, and a ``#anchor`` into a
  markdown file to one of its headings (GitHub's slugs) or explicit anchors;
- every file named in prose (``PROTOCOL.md``) or in code (```node/sync.py```, ```protos/*.proto```)
  exists;
- every dotted name of our code in code spans (```client.transport.tls.secure_channel```) imports.
"""

from __future__ import annotations

import glob
import importlib
import re
import unicodedata
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HREF = re.compile(r"""<a\s[^>]*href=["']([^"']+)["']""", re.IGNORECASE)
_EXPLICIT_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)=["']([^"']+)["']""", re.IGNORECASE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
_REPO_PATH = re.compile(r"^(?:\.ci|bench|client|docs|integrations|node|protos|tests)/[^\s]*$")
_DOTTED = re.compile(r"^(client|node)((?:\.[A-Za-z_]\w*)+)(?:\(\))?$")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the prose of ``path``: fenced code blocks left out."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _code_spans(line: str) -> list[str]:
    return [m.group(2).strip() for m in _CODE_SPAN.finditer(line)]


def _without_code(line: str) -> str:
    return _CODE_SPAN.sub("", line)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, punctuation dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = "".join(
        c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of the markdown file ``path``: its headings' slugs (``-1``, ``-2`` … on repeats)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _lines(path):
        found.update(_EXPLICIT_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def _links(line: str) -> list[str]:
    prose = _without_code(line)
    targets = [m.group(1) for m in _INLINE_LINK.finditer(prose)]
    targets += _HREF.findall(prose)
    ref = _REF_DEF.match(prose)
    if ref:
        targets.append(ref.group(1))
    return targets


def _broken_link(doc: Path, target: str) -> str | None:
    """Why ``target``, a link in ``doc``, points at nothing; None when it resolves (or is not local)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("//"):
        return None  # https:, mailto: …: not a file of ours
    path_part, _, anchor = target.partition("#")
    resolved = (doc.parent / path_part).resolve() if path_part else doc
    if not resolved.exists():
        return "no such file"
    if not resolved.is_relative_to(ROOT):
        return "outside the repository"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"no heading #{anchor} in {_rel(resolved)}"
    return None


def _exists(pattern: str) -> bool:
    """Whether the repository path (or glob) ``pattern`` names something."""
    if any(c in pattern for c in "*?["):
        return bool(glob.glob(str(ROOT / pattern)))
    return (ROOT / pattern).exists()


def _missing_md(doc: Path, name: str) -> bool:
    """Whether a markdown file named in ``doc``'s prose exists beside it, in docs/ or at the root."""
    return not any((base / name).exists() for base in (doc.parent, ROOT / "docs", ROOT))


def _module_problem(dotted: str, *, called: bool = False) -> str | None:
    """Why a dotted name of our code does not import; None when it does, or when it does not look like
    code (``node.toml``, ``node.listen``, ``node.my.example``: files, configuration keys, host names).
    A name looks like code when its second part is a module of ours, when it is called (``()``), or when
    its third part is a class or a snake_case name (``node.federation.Syncer``)."""
    parts = dotted.split(".")
    package_dir = ROOT / parts[0]
    is_module = (package_dir / parts[1]).is_dir() or (package_dir / f"{parts[1]}.py").exists()
    looks_like_code = called or (len(parts) > 2 and (parts[2][:1].isupper() or "_" in parts[2]))
    if not is_module:
        return f"no module {parts[0]}.{parts[1]}" if looks_like_code else None
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return f"{module_name} has no {'.'.join(parts[cut:])}"
            obj = getattr(obj, attr)
        home = getattr(obj, "__module__", None)
        if cut < len(parts) and isinstance(home, str) and not (home + ".").startswith(module_name + "."):
            return f"defined in {home}, not in {module_name}"  # only imported there: name its home
        return None
    return "no such module"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = [
        f"{_rel(doc)}:{number}: ({target}): {why}"
        for number, line in _lines(doc)
        for target in _links(line)
        if (why := _broken_link(doc, target))
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_file_named_exists(doc: Path) -> None:
    missing = []
    for number, line in _lines(doc):
        for span in _code_spans(line):
            path = span.split("::")[0].rstrip(",.;:")  # tests/test_x.py::test_y names a file too
            if _REPO_PATH.match(path) and not any(c in path for c in "{<…") and not _exists(path):
                missing.append(f"{_rel(doc)}:{number}: `{span}`")
        for name in _MD_NAME.findall(_without_code(line)) + [
            n for span in _code_spans(line) if not _REPO_PATH.match(span) for n in _MD_NAME.findall(span)
        ]:
            if _missing_md(doc, name):
                missing.append(f"{_rel(doc)}:{number}: {name}")
    assert not missing, "\n".join(missing)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_dotted_name_of_our_code_imports(doc: Path) -> None:
    problems = [
        f"{_rel(doc)}:{number}: `{span}`: {why}"
        for number, line in _lines(doc)
        for span in _code_spans(line)
        if (match := _DOTTED.match(span))
        and (why := _module_problem(match.group(1) + match.group(2), called=span.endswith("()")))
    ]
    assert not problems, "\n".join(problems)


def test_slugs_follow_github() -> None:
    assert slug("Sync (`node/sync.py`, `Syncer`)") == "sync-nodesyncpy-syncer"
    assert slug("Layout (issue 9) — the rooms") == "layout-issue-9--the-rooms"
    assert slug("[Protocol](PROTOCOL.md) & vectors") == "protocol--vectors"
    assert slug("max_batch: 10") == "max_batch-10"
