"""The HMAC tier of a node: its digests kept in step with ``[hmac]`` and the federation secret, and the
fingerprints operators compare.

A kind's tier changes when ``hmac.kinds`` does, and every HMAC digest changes when the federation secret
does (a rotation, or an import that replaces a node's own random secret). :func:`update_digests` runs
before every publication (under the node's publication lock) and makes the store's HMAC digests of the
current epoch agree with both, so no publication carries an HMAC-tier filter that misses indicators
stored before the switch (which would answer "no match" for a value its OPRF-tier filter holds):

* every live indicator of a kind in ``hmac.kinds`` gets its HMAC digest of the current epoch;
* when the secret is not the one the store's HMAC digests were computed under (or that is unknown),
  every HMAC digest is deleted first and computed again;
* OPRF digests are never touched: a kind taken off the HMAC tier is published on the OPRF tier only
  (:func:`node.publish.publish` leaves out the HMAC digests of kinds not in ``hmac.kinds``), and its
  HMAC digests stay in the store for the day it comes back.

The state the digests were last brought to — epoch, kinds and the secret's fingerprint — is kept in the
store's meta (``hmac.digests``), so the work is done once per change, not at every publication. It is
audited as ``hmac.digests``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from client.protocol.digest import HmacDigester, derive_epoch_key, hmac_fingerprint
from client.protocol.kinds import TIER_HMAC
from client.protocol.manifest import NO_HMAC, SignedManifest
from node import keys
from node.audit import event
from node.config import NodeConfig
from node.store.base import DigestItem, Store

__all__ = ["STATE_META", "fingerprints", "update_digests"]

#: Store meta key: the epoch, kinds and secret fingerprint the HMAC digests were last brought to.
STATE_META = "hmac.digests"
_BATCH = 5000


class _Node(Protocol):
    """What the HMAC tier needs of :class:`node.node.Node` (not imported: node.node imports this)."""

    config: NodeConfig
    store: Store
    id: str

    @property
    def epoch(self) -> int: ...

    def federation_secret(self) -> bytes: ...

    def hmac_key(self, epoch: int) -> bytes | None: ...


def update_digests(node: _Node, *, now: float, actor: str = "node") -> int:
    """Bring the store's HMAC digests of the current epoch in step with ``[hmac]`` and the federation
    secret (see the module's docstring); return how many digests were computed.

    Raises:
        ConfigError: ``hmac.kinds`` lists kinds but the federation secret is missing or unusable.
    """
    kinds = sorted(set(node.config.hmac.kinds))
    raw = node.store.get_meta(STATE_META)
    recorded: dict[str, Any] | None = json.loads(raw) if raw else None
    if not kinds:
        # Remember that no kind is on the tier: indicators stored from now on get no HMAC digest, and a
        # kind put back on the tier later must have theirs computed then.
        if recorded is not None and recorded.get("kinds"):
            node.store.set_meta(STATE_META, json.dumps({**recorded, "kinds": []}, separators=(",", ":")))
        return 0
    epoch = node.epoch
    secret = node.federation_secret()
    state = {"epoch": epoch, "kinds": kinds, "secret": keys.secret_fingerprint(secret).hex()}
    if recorded == state:
        return 0
    dropped = 0
    if recorded is None or recorded.get("secret") != state["secret"]:
        dropped = node.store.delete_tier_digests(TIER_HMAC)
    wanted = set(kinds)
    pending = [
        (kind, canonical)
        for kind, canonical in node.store.iter_needing_digest(epoch, TIER_HMAC, now=int(now))
        if kind in wanted
    ]
    epoch_key = derive_epoch_key(secret, epoch)
    digesters = {kind: HmacDigester(epoch_key, epoch, kind) for kind in kinds}
    for start in range(0, len(pending), _BATCH):
        chunk = pending[start : start + _BATCH]
        node.store.set_digests(
            DigestItem(kind, canonical, epoch, TIER_HMAC, digesters[kind].digest(canonical))
            for kind, canonical in chunk
        )
    audit = [
        event(
            "hmac.digests",
            actor=actor,
            role="node",
            now=now,
            epoch=epoch,
            kinds=",".join(kinds),
            computed=len(pending),
            dropped=dropped,
            secret_fingerprint=state["secret"],
        )
    ]
    node.store.set_meta(STATE_META, json.dumps(state, separators=(",", ":")), audit=audit)
    return len(pending)


def fingerprints(node: _Node) -> dict[str, Any]:
    """What ``petanda-node hmac fingerprint`` shows: this node's secret (and its generation in the store)
    and epoch-key fingerprints, the
    one its latest manifest signs, and per peer whether its latest synced manifest signs the
    fingerprint of our key of its epoch (``state``: ``same``, ``different``, ``none`` for a manifest
    without a fingerprint, ``never synced``), with the kinds it publishes on the HMAC tier."""
    key = node.hmac_key(node.epoch)
    secret = node.federation_secret() if key is not None else None
    generations = node.store.wrapped_key_epochs("hmac")
    latest = node.store.latest_manifest()
    published = SignedManifest.from_bytes(latest).manifest if latest else None
    peers: list[dict[str, Any]] = []
    for entry in node.config.peers:
        cached = node.store.peer_manifest(entry.id)
        if cached is None:
            peers.append({"id": entry.id, "state": "never synced", "epoch": None, "hmac_kinds": []})
            continue
        manifest = SignedManifest.from_bytes(cached).manifest
        theirs = manifest.hmac_fingerprint
        if theirs == NO_HMAC:
            state = "none"
        elif secret is None:
            state = "different"
        else:
            ours = hmac_fingerprint(derive_epoch_key(secret, manifest.epoch))
            state = "same" if ours == theirs else "different"
        hmac_kinds = sorted(e.kind for e in manifest.entries if e.tier == TIER_HMAC)
        peers.append({"id": entry.id, "state": state, "epoch": manifest.epoch, "hmac_kinds": hmac_kinds})
    return {
        "node_id": node.id,
        "secret_generation": generations[-1] if generations else None,
        "held": secret is not None,
        "secret_fingerprint": keys.secret_fingerprint(secret).hex() if secret else None,
        "epoch": node.epoch,
        "epoch_key_fingerprint": hmac_fingerprint(key).hex() if key else None,
        "kinds": list(node.config.hmac.kinds),
        "manifest_version": published.version if published else None,
        "manifest_fingerprint": (
            published.hmac_fingerprint.hex() if published and published.hmac_fingerprint != NO_HMAC else None
        ),
        "peers": peers,
    }
