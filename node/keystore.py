"""The node's OPRF keys and HMAC-tier federation secret kept in the store, wrapped under a key-encryption
key (KEK) every replica holds.

Any replica sharing a store can rotate the OPRF key or import a new federation secret, and every replica
uses the new key at once: the seed of each OPRF epoch, and each generation of the federation secret, is
one row of the store (``wrapped_keys``), wrapped with AES-256-GCM-SIV under the KEK, whose associated
data names the node, the purpose (``oprf``, ``hmac``) and the epoch or generation, so a row moved to
another epoch or another node's store, or altered, does not unwrap (``docs/adr/0011``)::

    blob = 0x01 || nonce (12 bytes) || AES-256-GCM-SIV(KEK, nonce, seed, ad)    (61 bytes for a seed)
    ad   = "petanda/v1/wrapped-key" 0x00 || node id || 0x00 || purpose || 0x00 || epoch (8 bytes, BE)

The KEK comes from a :class:`KekProvider`: a file of 32 random bytes today (:class:`FileKek`,
``keys.kek_file``, mode 0600); a KMS or PKCS#11 token implements the same three operations later, with
the KEK never leaving it. The store records the fingerprint of the KEK its keys are wrapped under (meta
``keys.kek``), so a replica holding another KEK is refused at start, before it writes anything, with an
error naming its KEK file and both fingerprints.

Nodes made before this kept each seed in a file (``oprf/epoch-NNNN.key``) and the federation secret in
``hmac.federation_secret_file``; :meth:`KeyStore.import_files` wraps them into the store on the first
start (or ``petanda-node keys migrate``) and leaves the files for the operator to remove. A new node's
``init`` still writes the federation secret to that file (the store is not opened at init): it is
wrapped in at the first start the same way.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import struct
from pathlib import Path
from typing import Any, Final, NamedTuple, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from client.protocol.errors import ConfigError, StoreError
from node import keys
from node.audit import event
from node.config import NodeConfig
from node.store import open_store
from node.store.base import Store

__all__ = [
    "HMAC",
    "KEK_META",
    "OPRF",
    "FileKek",
    "Installed",
    "KekProvider",
    "KeyStore",
    "UnwrapError",
    "kek_fingerprint",
    "kek_status",
    "open_file_kek",
    "wrapping_ad",
]

log = logging.getLogger(__name__)

#: Purpose of the OPRF seeds' rows (one per epoch).
OPRF: Final = "oprf"
#: Purpose of the federation secret's rows (one per generation: a replaced secret is a new row).
HMAC: Final = "hmac"
#: Store meta key: the fingerprint (hex) of the KEK the store's keys are wrapped under.
KEK_META: Final = "keys.kek"
_FORMAT: Final = b"\x01"
_NONCE_BYTES: Final = 12
_AD_PREFIX: Final = b"petanda/v1/wrapped-key\x00"
_FINGERPRINT_PREFIX: Final = b"petanda/v1/kek-fingerprint\x00"


class Installed(NamedTuple):
    """What installing a federation secret did: its generation in the store, whether it is new (False:
    the store held it already), and the secret it replaced (None when none)."""

    generation: int
    new: bool
    previous: bytes | None


class UnwrapError(StoreError):
    """A wrapped key that does not unwrap: altered, moved from another epoch or node, or wrapped under
    another KEK than the one its row names."""


def kek_fingerprint(kek: bytes) -> bytes:
    """SHA-256 of a domain-separated KEK: what replicas compare to know they hold the same KEK."""
    return hashlib.sha256(_FINGERPRINT_PREFIX + kek).digest()


def wrapping_ad(node_id: str, purpose: str, epoch: int) -> bytes:
    """The associated data binding a wrapped key to its node, purpose and epoch."""
    return _AD_PREFIX + f"{node_id}\x00{purpose}\x00".encode("ascii") + struct.pack(">Q", epoch)


class KekProvider(Protocol):
    """Where the KEK is and what it does; the KEK itself need never leave it (a KMS, a PKCS#11 token)."""

    def describe(self) -> str:
        """Where the KEK is, for messages (a file's path, a KMS key's name)."""

    def fingerprint(self) -> bytes:
        """The 32-byte fingerprint of the KEK (:func:`kek_fingerprint` for a KEK held in memory)."""

    def wrap(self, key: bytes, ad: bytes) -> bytes:
        """``key`` encrypted and authenticated under the KEK with associated data ``ad``."""

    def unwrap(self, blob: bytes, ad: bytes) -> bytes:
        """The key :meth:`wrap` made ``blob`` of with ``ad``; :class:`UnwrapError` if it is not one."""


class FileKek:
    """A KEK of 32 random bytes in a file (mode 0600, refused when group or others may read it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        kek = keys.load_kek(self.path)
        self._aead = AESGCMSIV(kek)
        self._fingerprint = kek_fingerprint(kek)

    def describe(self) -> str:
        return f"KEK file {self.path}"

    def fingerprint(self) -> bytes:
        return self._fingerprint

    def wrap(self, key: bytes, ad: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, key, ad)

    def unwrap(self, blob: bytes, ad: bytes) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT:
            raise UnwrapError("not a wrapped key of format 1")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise UnwrapError("its authentication tag does not verify") from None


class KeyStore:
    """The OPRF seeds of one node in its store, wrapped under ``kek``."""

    def __init__(self, store: Store, kek: KekProvider, node_id: str) -> None:
        self.store = store
        self.kek = kek
        self.node_id = node_id
        self.fingerprint = kek.fingerprint().hex()

    def check_kek(self) -> None:
        """Refuse a KEK other than the one the store's keys are wrapped under; record ours if the store
        names none yet. Reads only, unless it records.

        Raises:
            ConfigError: the store's keys are wrapped under another KEK (naming our KEK and both
                fingerprints).
        """
        held = self.store.get_meta(KEK_META)
        if held is None and self.store.swap_meta(KEK_META, None, self.fingerprint):
            return
        held = self.store.get_meta(KEK_META)
        if held != self.fingerprint:
            raise self._other_kek(str(held))

    def _other_kek(self, held: str) -> ConfigError:
        path = getattr(self.kek, "path", None)
        return ConfigError(
            f"this replica's KEK (fingerprint {keys.format_fingerprint(bytes.fromhex(self.fingerprint))}) "
            "is not the one the store's keys are wrapped under (fingerprint "
            f"{keys.format_fingerprint(bytes.fromhex(held))}): give every replica a copy of the same KEK "
            "file; nothing was changed",
            path=str(path) if path is not None else self.kek.describe(),
        )

    def seed(self, purpose: str, epoch: int) -> bytes | None:
        """The unwrapped key of ``(purpose, epoch)``, or None when the store holds none.

        Raises:
            ConfigError: the row is wrapped under another KEK than ours.
            UnwrapError: the row does not unwrap (altered, or moved from another epoch or node).
        """
        row = self.store.wrapped_key(purpose, epoch)
        if row is None:
            return None
        if row.kek != self.fingerprint:
            raise self._other_kek(row.kek)
        try:
            return self.kek.unwrap(row.blob, wrapping_ad(self.node_id, purpose, epoch))
        except UnwrapError as error:
            which = (
                f"{purpose} key of epoch {epoch}"
                if purpose == OPRF
                else f"{purpose} secret generation {epoch}"
            )
            raise UnwrapError(
                f"the wrapped {which} of {self.node_id} does not unwrap under the "
                f"{self.kek.describe()} ({error}): the row was altered, or moved from another epoch or node"
            ) from None

    def add(self, purpose: str, epoch: int, seed: bytes, *, now: float, actor: str, source: str) -> bytes:
        """Store ``seed`` as the key of ``(purpose, epoch)`` unless one is there; return the stored one
        (ours, or the one another replica stored first). Audited as ``key.stored`` when ours is."""
        blob = self.kek.wrap(seed, wrapping_ad(self.node_id, purpose, epoch))
        audit = [
            event(
                "key.stored",
                actor=actor,
                role="node",
                now=now,
                purpose=purpose,
                epoch=epoch,
                kek=self.fingerprint,
                source=source,
            )
        ]
        self.store.add_wrapped_key(purpose, epoch, self.fingerprint, blob, now=int(now), audit=audit)
        stored = self.seed(purpose, epoch)
        if stored is None:  # pragma: no cover - a row is never deleted
            raise StoreError(f"the {purpose} key of epoch {epoch} vanished from the store")
        return stored

    def new_oprf_seed(self, epoch: int, *, now: float, actor: str) -> bytes:
        """A new random OPRF seed for ``epoch``, or the one a replica stored for it first."""
        return self.add(OPRF, epoch, secrets.token_bytes(keys.SEED_BYTES), now=now, actor=actor, source="new")

    def epochs(self) -> list[int]:
        """The epochs whose OPRF seed the store holds, ascending."""
        return self.store.wrapped_key_epochs(OPRF)

    def federation_secret(self) -> tuple[int, bytes] | None:
        """The newest generation of the federation secret and the secret, or None when the store holds
        none (raising as :meth:`seed` does)."""
        generations = self.store.wrapped_key_epochs(HMAC)
        if not generations:
            return None
        secret = self.seed(HMAC, generations[-1])
        assert secret is not None  # a row is never deleted
        return generations[-1], secret

    def install_federation_secret(
        self, secret: bytes, *, replace: bool, now: float, actor: str, source: str
    ) -> Installed:
        """Make ``secret`` the node's federation secret: a new generation in the store, which every
        replica uses from its next use on; a secret the store holds already changes nothing.

        Raises:
            ConfigError: ``secret`` is not 32 bytes; or the store holds another secret and ``replace`` is
                false (the message gives both fingerprints); or another replica installed a secret at
                the same moment (run again).
        """
        if len(secret) != keys.SEED_BYTES:
            raise ConfigError(
                f"a federation secret is exactly {keys.SEED_BYTES} bytes, this one {len(secret)}"
            )
        current = self.federation_secret()
        if current is not None and current[1] == secret:
            return Installed(current[0], False, None)
        if current is not None and not replace:
            held, new = (keys.format_fingerprint(keys.secret_fingerprint(s)) for s in (current[1], secret))
            raise ConfigError(
                f"this node holds another federation secret (fingerprint {held}, the new one {new}); "
                "replacing it is a rotation: add --replace"
            )
        generation = current[0] + 1 if current is not None else 1
        if self.add(HMAC, generation, secret, now=now, actor=actor, source=source) != secret:
            raise ConfigError("another replica installed a federation secret at the same moment: run again")
        return Installed(generation, True, current[1] if current is not None else None)

    def import_files(
        self, dir: Path, *, secret_file: Path | None = None, now: float, actor: str = "node"
    ) -> list[int]:
        """Wrap the OPRF seed files of ``dir`` (``oprf/epoch-NNNN.key``, the layout before the store held
        them) into the store, and the federation secret of ``secret_file`` when the store holds none;
        return the OPRF epochs added. A seed file whose epoch the store holds already must hold the same
        seed; a secret file is not read once the store holds a secret (it may be an older one). The files
        are left in place.

        Raises:
            ConfigError: a seed or secret file is unreadable, too open or malformed, or a seed file holds
                another seed than the store does for its epoch (naming the file).
        """
        if secret_file is not None and Path(secret_file).exists() and not self.store.wrapped_key_epochs(HMAC):
            secret = keys.load_federation_secret(Path(secret_file))
            self.install_federation_secret(
                secret, replace=False, now=now, actor=actor, source=f"file {Path(secret_file).name}"
            )
            log.info("federation secret wrapped into the store from %s", secret_file)
        added = []
        held = set(self.epochs())
        for epoch in keys.list_epochs(dir):
            seed = keys.load_oprf_seed(dir, epoch)
            path = keys.oprf_seed_path(dir, epoch)
            if epoch in held:
                stored = self.seed(OPRF, epoch)
            else:
                stored = self.add(OPRF, epoch, seed, now=now, actor=actor, source=f"file {path.name}")
                added.append(epoch)
                log.info("OPRF seed of epoch %d wrapped into the store from %s", epoch, path)
            if stored != seed:
                raise ConfigError(
                    f"holds another OPRF seed than the store does for epoch {epoch}: the store's is the one "
                    "in use; move this file away",
                    path=str(path),
                )
        return added


def open_file_kek(path: Path, store: Store) -> FileKek:
    """The KEK of ``path``; on the first start of a node whose store holds no key and names no KEK yet (a
    node made before keys were kept in the store), a new random KEK is written there first (0600).

    Raises:
        ConfigError: the file is missing while the store's keys are wrapped under a KEK (naming the file
            and that KEK's fingerprint), or it is unreadable, too open or not 32 bytes.
    """
    path = Path(path)
    if not path.exists():
        held = store.get_meta(KEK_META)
        if held is not None or store.wrapped_key_epochs(OPRF):
            shown = keys.format_fingerprint(bytes.fromhex(held)) if held else "unknown"
            raise ConfigError(
                f"no KEK file, and the store's keys are wrapped under the KEK of fingerprint {shown}: copy "
                "that KEK file (mode 0600) from a replica of this node here",
                path=str(path),
            )
        keys.init_kek(path)
        log.warning("created a new key-encryption key %s: back it up apart from the store", path)
    return FileKek(path)


def kek_status(config: NodeConfig) -> dict[str, Any]:
    """What ``petanda-node keys fingerprint`` shows, read without opening the node (so it also works on a
    replica the node refuses): the KEK file and its fingerprint (None when missing), the fingerprint the
    store names (None before the first start), whether they are the same (None when either is
    missing), the epochs whose OPRF key the store holds, and the current epoch.

    Raises:
        ConfigError: the KEK file exists but is unreadable, too open or not 32 bytes.
    """
    path = config.keys.kek_file
    ours = kek_fingerprint(keys.load_kek(path)).hex() if path.exists() else None
    with open_store(config.store.url) as store:
        held = store.get_meta(KEK_META)
        epochs = store.wrapped_key_epochs(OPRF)
        epoch = store.get_meta("oprf.epoch")
    return {
        "kek_file": str(path),
        "kek_fingerprint": ours,
        "store_kek_fingerprint": held,
        "same": None if ours is None or held is None else ours == held,
        "epochs": epochs,
        "epoch": int(epoch) if epoch is not None else None,
    }
