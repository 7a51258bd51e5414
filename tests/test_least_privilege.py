"""Least privilege: a node directory others can enter is refused at startup, ``init`` makes it 0700, and
the HMAC tier takes no kind without the operator's acknowledgement of offline testing, kind by kind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from client.protocol.errors import ConfigError
from node.config import load_config, render_config_template
from node.keys import check_node_dir, init_node_dir
from node.node import Node
from node.testbed import build_federation

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def petanda_node(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the node directory -------------------------------------------------------------------------------


def test_init_creates_the_node_directory_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        init_node_dir(tmp_path / "fresh", "MY")
        (tmp_path / "existing").mkdir(mode=0o777)
        init_node_dir(tmp_path / "existing", "TH")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "fresh") == 0o700
    assert _mode(tmp_path / "existing") == 0o700
    assert _mode(tmp_path / "fresh" / "kek.key") == _mode(tmp_path / "fresh" / "signing.key") == 0o600
    check_node_dir(tmp_path / "fresh")


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o770])
def test_check_node_dir_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "node"
    directory.mkdir()
    os.chmod(directory, mode)
    with pytest.raises(ConfigError) as info:
        check_node_dir(directory)
    message = str(info.value)
    assert str(directory) in message and f"{mode:04o}" in message and f"chmod 700 {directory}" in message
    assert "\n" not in message


def test_a_node_directory_others_can_enter_is_refused_at_startup(tmp_path: Path) -> None:
    federation = build_federation(tmp_path / "fed", ["MY"])
    member = federation.members["MY"]
    assert _mode(member.dir) == 0o700
    config = load_config(member.config)
    Node.open(config).close()  # 0700: opens

    os.chmod(member.dir, 0o755)
    store = member.dir / "petanda.db"
    store.unlink()
    with pytest.raises(ConfigError, match=r"0755 are too open.*chmod 700"):
        Node.open(config)
    assert not store.exists()  # refused before the store created anything

    # The operator's commands refuse it too, with one line naming the directory, its mode and the fix.
    for command in (("serve", "--no-sync"), ("status",), ("publish",)):
        done = petanda_node(*command, "--config", member.config, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        line = done.stderr.strip()
        assert "\n" not in line
        assert str(member.dir) in line and "0755" in line and f"chmod 700 {member.dir}" in line


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_kek_file_others_may_read_is_refused_at_startup(tmp_path: Path, mode: int) -> None:
    federation = build_federation(tmp_path / "fed", ["MY"])
    member = federation.members["MY"]
    kek = member.dir / "kek.key"
    os.chmod(kek, mode)
    config = load_config(member.config)
    with pytest.raises(ConfigError, match=rf"kek\.key: permissions {mode:04o} are too open"):
        Node.open(config)
    assert not (member.dir / "petanda.db").exists()  # refused before the store created anything
    for command in (("status",), ("keys", "fingerprint")):
        done = petanda_node(*command, "--config", member.config, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and f"{kek}: permissions {mode:04o}" in done.stderr
    os.chmod(kek, 0o600)
    Node.open(config).close()


def test_the_cli_init_makes_a_private_directory(tmp_path: Path) -> None:
    done = petanda_node("init", "--id", "MY", "--dir", "my", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _mode(tmp_path / "my") == 0o700
    assert "(0700)" in done.stdout


# --- the HMAC tier ------------------------------------------------------------------------------------

MINIMAL = '[node]\nid = "MY"\n[tls]\nca = "ca.crt"\ncert = "MY.crt"\nkey = "MY.key"\n'


def _load(tmp_path: Path, hmac: str) -> object:
    path = tmp_path / "node.toml"
    path.write_text(MINIMAL + "[hmac]\n" + hmac)
    return load_config(path)


@pytest.mark.parametrize("kind", ["url", "crypto_wallet", "domain", "phone", "email", "bank_account"])
def test_every_hmac_kind_needs_its_own_acknowledgement(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, f'kinds = ["{kind}"]\n')
    error = info.value
    assert error.key == "hmac"
    assert f"{kind} on the HMAC tier is not acknowledged" in error.reason
    assert "offline" in error.reason and "acknowledge_offline_testing" in error.reason
    # Acknowledging another kind does not cover it.
    other = "url" if kind != "url" else "domain"
    with pytest.raises(ConfigError, match=kind):
        _load(tmp_path, f'kinds = ["{kind}"]\nacknowledge_offline_testing = ["{other}"]\n')
    # Its own acknowledgement does.
    config = _load(tmp_path, f'kinds = ["{kind}"]\nacknowledge_offline_testing = ["{kind}"]\n')
    assert config.hmac.kinds == [kind]  # type: ignore[attr-defined]


def test_crypto_wallet_is_not_exempt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"crypto_wallet on the HMAC tier is not acknowledged.*1e9"):
        _load(tmp_path, 'kinds = ["url", "crypto_wallet"]\nacknowledge_offline_testing = ["url"]\n')


def test_allow_low_entropy_is_refused_saying_what_replaced_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, 'kinds = ["phone"]\nallow_low_entropy = true\n')
    assert "allow_low_entropy was removed" in info.value.reason
    assert "acknowledge_offline_testing" in info.value.reason


def test_an_unknown_acknowledged_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown kind 'wallet'") as info:
        _load(tmp_path, 'acknowledge_offline_testing = ["wallet"]\n')
    assert info.value.key == "hmac.acknowledge_offline_testing"


def test_the_template_has_the_hmac_tier_off_and_no_acknowledgement(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(render_config_template("MY"))
    config = load_config(path)
    assert config.hmac.kinds == [] and config.hmac.acknowledge_offline_testing == []
    assert config.tls.crl is None
