"""The node's key files: manifest signing key, key-encryption key, HMAC-tier federation secret.

Layout of a node directory (``docs/operators.md``, "Key files")::

    <dir>/node-id               the node id, one line ("MY\\n"), 0644
    <dir>/signing.key           Ed25519 private key, PKCS#8 PEM, unencrypted, 0600
    <dir>/kek.key               32 random bytes: the key-encryption key of the store's keys, 0600
    <dir>/hmac/federation.key   32 bytes shared by the federation (HMAC tier), 0600, optional

The OPRF seeds and the federation secret themselves live in the store, wrapped under the KEK
(:mod:`node.keystore`). ``init`` writes the federation secret to its file (the store is not opened at
init), and the node wraps it into the store at its first start. Nodes made before that kept the OPRF
seeds as files, ``<dir>/oprf/epoch-0001.key`` (32 bytes, 0600): :func:`list_epochs` and
:func:`load_oprf_seed` read that layout so that the node can wrap them into the store on its first
start (``docs/operators.md``, "Keys in the store").

Key files are written atomically (a complete file appears under its name or none does), never
overwritten, and refused on load when group or others may access them, as ssh does. The node directory
itself is created 0700 and refused (:func:`check_node_dir`) when group or others may enter it.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from client.protocol.digest import derive_epoch_key, hmac_fingerprint
from client.protocol.errors import ConfigError
from client.transport.tls import check_country_code, read_private_file

__all__ = [
    "FEDERATION_SECRET_FILE",
    "KEK_FILE",
    "NODE_ID_FILE",
    "OPRF_DIR",
    "SEED_BYTES",
    "SIGNING_KEY_FILE",
    "check_node_dir",
    "format_fingerprint",
    "init_federation_secret",
    "init_kek",
    "init_node_dir",
    "list_epochs",
    "load_federation_secret",
    "load_kek",
    "load_oprf_seed",
    "load_signing_key",
    "oprf_seed_path",
    "read_node_id",
    "replace_public_file",
    "replace_signing_key",
    "secret_fingerprint",
    "write_private_file",
    "write_public_file",
]

NODE_ID_FILE: Final = "node-id"
SIGNING_KEY_FILE: Final = "signing.key"
OPRF_DIR: Final = "oprf"
#: Default place of the key-encryption key of the store's OPRF keys, relative to the node directory.
KEK_FILE: Final = "kek.key"
#: Default place of the HMAC-tier federation secret, relative to the node directory.
FEDERATION_SECRET_FILE: Final = "hmac/federation.key"  # noqa: S105 - a file name, not a secret
#: Length of an OPRF seed and of the federation secret.
SEED_BYTES: Final = 32

_EPOCH_RE: Final = re.compile(r"epoch-(\d{4,})\.key")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file ``path`` atomically with ``mode``; refuse if ``path`` exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise ConfigError("refusing to overwrite an existing file", path=str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # umask may only have narrowed it; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if the name exists: no overwrite, even under a race
        except FileExistsError:
            raise ConfigError("refusing to overwrite an existing file", path=str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret to a new file with mode 0600, atomically; raise ConfigError if it exists."""
    _write_new(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a public file (certificate, node id), mode 0644, atomically; raise ConfigError if it exists."""
    _write_new(path, data, 0o644)


def replace_public_file(path: Path, data: bytes) -> None:
    """Write a public file (a CRL), mode 0644, atomically, replacing any file of that name.

    Readers see the old file or the new one, never part of either (write, fsync, rename, fsync the
    directory). Only for public data that is meant to change; keys are never replaced.
    """
    _replace(Path(path), data, 0o644)


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` atomically, replacing any file of that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def check_node_dir(dir: Path) -> None:
    """Refuse a node directory that group or others may access (it holds the node's keys and store).

    Raises:
        ConfigError: the directory is missing, not a directory, or its mode grants group/other access;
            the message names the directory, its mode and the ``chmod 700`` that fixes it.
    """
    dir = Path(dir)
    try:
        st = os.stat(dir)
    except OSError as exc:
        raise ConfigError(f"cannot use the node directory: {exc.strerror or exc}", path=str(dir)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError("the node directory is not a directory", path=str(dir))
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(
            f"node directory permissions {stat.S_IMODE(st.st_mode):04o} are too open: group and others "
            f"must have no access to the node's keys and store (chmod 700 {dir})",
            path=str(dir),
        )


def init_node_dir(dir: Path, node_id: str) -> None:
    """Create a node directory (mode 0700, also when it existed) and its keys: the node id, the signing
    key and the key-encryption key (the OPRF key of epoch 1 is made in the store at the first start).

    Raises:
        ConfigError: ``node_id`` is not an ISO 3166-1 alpha-2 code, or a file already exists.
    """
    check_country_code(node_id, what="node id")
    dir = Path(dir)
    for name in (NODE_ID_FILE, SIGNING_KEY_FILE, KEK_FILE):
        if (dir / name).exists():
            raise ConfigError("refusing to overwrite an existing file", path=str(dir / name))
    dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dir, 0o700)  # mkdir's mode is narrowed by the umask only, and an existing dir keeps its own
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(dir / SIGNING_KEY_FILE, pem)
    write_private_file(dir / KEK_FILE, secrets.token_bytes(SEED_BYTES))
    write_public_file(dir / NODE_ID_FILE, f"{node_id}\n".encode("ascii"))


def read_node_id(dir: Path) -> str:
    """Return the node id recorded in ``dir`` by :func:`init_node_dir`, raising ConfigError."""
    path = Path(dir) / NODE_ID_FILE
    try:
        text = path.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the node id: {exc}", path=str(path)) from None
    try:
        return check_country_code(text, what="node id")
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=str(path)) from None


def replace_signing_key(dir: Path, key: ed25519.Ed25519PrivateKey, *, now: float) -> Path:
    """Make ``key`` the node's signing key; the old file is kept as ``signing.key.retired-<unix time>``
    (0600). Returns the retired file's path."""
    dir = Path(dir)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    staged = dir / (SIGNING_KEY_FILE + ".new")
    write_private_file(staged, pem)
    retired = dir / f"{SIGNING_KEY_FILE}.retired-{int(now)}"
    os.replace(dir / SIGNING_KEY_FILE, retired)
    os.replace(staged, dir / SIGNING_KEY_FILE)
    return retired


def load_signing_key(dir: Path) -> ed25519.Ed25519PrivateKey:
    """Load the node's Ed25519 manifest signing key, refusing a file readable by group or others."""
    path = Path(dir) / SIGNING_KEY_FILE
    data = read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an unencrypted PEM private key ({exc})", path=str(path)) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError("the signing key must be an Ed25519 key", path=str(path))
    return key


def oprf_seed_path(dir: Path, epoch: int) -> Path:
    """Path of the OPRF seed file of ``epoch`` (1-based) in a node directory of the file layout."""
    if epoch < 1:
        raise ConfigError(f"OPRF epoch must be >= 1, got {epoch}")
    return Path(dir) / OPRF_DIR / f"epoch-{epoch:04d}.key"


def list_epochs(dir: Path) -> list[int]:
    """Epochs whose OPRF seed file exists in ``dir`` (the file layout), ascending."""
    try:
        names = os.listdir(Path(dir) / OPRF_DIR)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _EPOCH_RE.fullmatch(n)))


def _load_seed(path: Path) -> bytes:
    data = read_private_file(path)
    if len(data) != SEED_BYTES:
        raise ConfigError(
            f"a seed file holds exactly {SEED_BYTES} bytes, this one {len(data)}", path=str(path)
        )
    return data


def load_oprf_seed(dir: Path, epoch: int) -> bytes:
    """The 32-byte seed of the OPRF key of ``epoch`` from its file (the layout before the store held
    them); the key pair is derived from it (client.protocol.oprf).

    Raises:
        ConfigError: missing, wrong length, or accessible by group or others (names the file).
    """
    return _load_seed(oprf_seed_path(dir, epoch))


def load_kek(path: Path) -> bytes:
    """Load the 32-byte key-encryption key (:mod:`node.keystore`), refusing a file readable by group or
    others, or of another length."""
    return _load_seed(Path(path))


def init_kek(path: Path) -> bytes:
    """Create a new random 32-byte key-encryption key at ``path`` (0600, never over an existing file)."""
    kek = secrets.token_bytes(SEED_BYTES)
    write_private_file(Path(path), kek)
    return kek


def init_federation_secret(path: Path) -> bytes:
    """Create a new 32-byte HMAC-tier federation secret (one member does, then shares it out of band)."""
    secret = secrets.token_bytes(SEED_BYTES)
    write_private_file(Path(path), secret)
    return secret


def load_federation_secret(path: Path) -> bytes:
    """Load the 32-byte HMAC-tier federation secret, refusing a file readable by group or others."""
    return _load_seed(Path(path))


def secret_fingerprint(secret: bytes) -> bytes:
    """The fingerprint of a federation secret itself, the same whatever a node's epoch: the key
    fingerprint (:func:`client.protocol.digest.hmac_fingerprint`) of its epoch-0 key. Epochs start at 1,
    so no manifest carries it; operators compare it to know they hold the same secret."""
    return hmac_fingerprint(derive_epoch_key(secret, 0))


def format_fingerprint(fingerprint: bytes) -> str:
    """The first 16 bytes of a fingerprint as eight groups of four hex digits, to read over the phone."""
    text = fingerprint[:16].hex()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))
