"""Virtual environments of the investigators' other tools (misp-modules, Cortex's cortexutils), one each.

Such a tool runs beside petanda, not inside it, as it does at a CERT: the tests install it from PyPI
into its own environment, kept under ``$XDG_CACHE_HOME/petanda-tests`` (``~/.cache``) and reused while
its requirements are the same. It is built in a temporary directory and renamed into place once pip
succeeded, so a run that was interrupted never leaves half an environment behind; the scripts in its
``bin/`` name the temporary directory, so a tool is run as ``bin/python -m MODULE``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: Seconds pip may take to install one tool.
INSTALL_TIMEOUT_S = 600


class ToolUnavailable(Exception):
    """The tool could not be installed (no registry, a failed build); the message says why."""


def cache_dir() -> Path:
    """Where the environments are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "petanda-tests"


def tool_venv(name: str, requirements: Sequence[str]) -> Path:
    """The directory of a virtual environment holding ``requirements`` (built on first use).

    Raises:
        ToolUnavailable: the environment could not be created or pip failed (its last lines attached).
    """
    digest = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:12]
    home = cache_dir() / f"{name}-{digest}"
    if (home / "ready").exists():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=home.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, capture_output=True)
        done = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise ToolUnavailable(f"pip install {' '.join(requirements)} failed:\n{tail}")
        (building / "ready").write_text("\n".join(requirements) + "\n")
        # The scripts in bin/ name the temporary directory: run the tool as `bin/python -m ...`.
        if home.exists() and not (home / "ready").exists():
            shutil.rmtree(home)  # not ours: an environment never renamed into place has no "ready"
        try:
            building.rename(home)
        except OSError:
            if not (home / "ready").exists():
                raise
            # another test run finished the same environment first, and may be using it: keep it
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolUnavailable(f"cannot build the {name} environment: {exc}") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return home
