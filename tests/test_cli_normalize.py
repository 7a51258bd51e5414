"""``petanda normalize`` as a person runs it: the canonical form, or one line of reason and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.tools.cli", "normalize", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("phone", "+60 12-345 6789"), "+60123456789"),
        (("phone", "012.345.6789", "--region", "MY"), "+60123456789"),
        (("phone", "0060123456789"), "+60123456789"),
        (("email", "Scam@BÜCHER.example"), "scam@xn--bcher-kva.example"),
        (("url", "HTTP://Example.COM:80/a/./b#frag"), "http://example.com/a/b"),
        (
            ("crypto_wallet", "0x52908400098527886E0F7030069857D2E4169EE7"),
            "eth:0x52908400098527886e0f7030069857d2e4169ee7",
        ),
    ],
)
def test_prints_the_canonical_form(args: tuple[str, ...], expected: str) -> None:
    result = run(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("phone", "012-345 6789"), "needs a region"),
        (("phone", "+60 1"), "phone"),
        (("crypto_wallet", "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T"), "checksum"),
        (("url", "http:///path"), "host"),
        (("email", ""), "empty"),
        (("fax", "123"), "unknown kind"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(args: tuple[str, ...], reason: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petanda: ")
    assert reason in lines[0].lower()
