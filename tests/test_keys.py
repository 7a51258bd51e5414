"""Key files of a node directory: created 0600, never overwritten, refused when too open; and the OPRF seed
files of the layout before the store held the seeds, which the node reads once to wrap them in."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.protocol.errors import ConfigError
from node.keys import (
    init_federation_secret,
    init_node_dir,
    list_epochs,
    load_federation_secret,
    load_kek,
    load_oprf_seed,
    load_signing_key,
    oprf_seed_path,
    read_node_id,
    write_private_file,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_node_dir_creates_private_keys(tmp_path: Path) -> None:
    init_node_dir(tmp_path / "n", "MY")
    assert _mode(tmp_path / "n" / "signing.key") == 0o600
    assert _mode(tmp_path / "n" / "kek.key") == 0o600
    assert read_node_id(tmp_path / "n") == "MY"
    assert isinstance(load_signing_key(tmp_path / "n"), ed25519.Ed25519PrivateKey)
    assert len(load_kek(tmp_path / "n" / "kek.key")) == 32
    assert list_epochs(tmp_path / "n") == []  # the OPRF keys are made in the store, at the first start
    assert sorted(p.name for p in (tmp_path / "n").rglob("*")) == [
        "kek.key",
        "node-id",
        "signing.key",
    ]  # no temporary file left behind


def test_init_node_dir_under_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        init_node_dir(tmp_path, "SG")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "signing.key") == 0o600


def test_init_node_dir_refuses_to_overwrite(tmp_path: Path) -> None:
    init_node_dir(tmp_path, "MY")
    before = (tmp_path / "signing.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_node_dir(tmp_path, "MY")
    assert (tmp_path / "signing.key").read_bytes() == before


def test_init_node_dir_refuses_bad_node_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node id 'MYS'"):
        init_node_dir(tmp_path, "MYS")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_open_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    init_node_dir(tmp_path, "MY")
    (tmp_path / "signing.key").chmod(mode)
    with pytest.raises(ConfigError, match=rf"signing\.key: permissions {mode:04o} are too open"):
        load_signing_key(tmp_path)
    (tmp_path / "kek.key").chmod(mode)
    with pytest.raises(ConfigError, match=rf"kek\.key: permissions {mode:04o} are too open"):
        load_kek(tmp_path / "kek.key")
    write_private_file(oprf_seed_path(tmp_path, 1), bytes(32))
    oprf_seed_path(tmp_path, 1).chmod(mode)
    with pytest.raises(ConfigError, match=r"epoch-0001\.key: permissions"):
        load_oprf_seed(tmp_path, 1)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    init_node_dir(tmp_path, "MY")
    (tmp_path / "signing.key").chmod(0o400)
    load_signing_key(tmp_path)


def test_seed_files_of_the_layout_before(tmp_path: Path) -> None:
    assert list_epochs(tmp_path) == []
    for epoch in (1, 2, 3):
        write_private_file(oprf_seed_path(tmp_path, epoch), bytes([epoch]) * 32)
    (tmp_path / "oprf" / "notes.txt").write_text("ignored")
    assert list_epochs(tmp_path) == [1, 2, 3]
    seeds = {load_oprf_seed(tmp_path, e) for e in (1, 2, 3)}
    assert len(seeds) == 3
    assert oprf_seed_path(tmp_path, 3).name == "epoch-0003.key"
    with pytest.raises(ConfigError, match=r"epoch-0004\.key: cannot read"):
        load_oprf_seed(tmp_path, 4)
    with pytest.raises(ConfigError, match=">= 1"):
        load_oprf_seed(tmp_path, 0)


def test_seed_of_wrong_length_is_refused(tmp_path: Path) -> None:
    write_private_file(oprf_seed_path(tmp_path, 1), b"\x00" * 31)
    with pytest.raises(ConfigError, match="exactly 32 bytes, this one 31"):
        load_oprf_seed(tmp_path, 1)


def test_signing_key_of_wrong_type_is_refused(tmp_path: Path) -> None:
    write_private_file(
        tmp_path / "signing.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError, match=r"signing\.key: not an unencrypted PEM private key"):
        load_signing_key(tmp_path)


def test_federation_secret(tmp_path: Path) -> None:
    path = tmp_path / "hmac" / "federation.key"
    secret = init_federation_secret(path)
    assert _mode(path) == 0o600
    assert load_federation_secret(path) == secret
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        init_federation_secret(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="too open"):
        load_federation_secret(path)


def test_node_id_file_is_checked(tmp_path: Path) -> None:
    (tmp_path / "node-id").write_text("xx\n")
    with pytest.raises(ConfigError, match=r"node-id: node id 'xx'"):
        read_node_id(tmp_path)
