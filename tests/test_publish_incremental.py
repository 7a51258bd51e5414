"""A publication writes only the buckets that changed, and its bytes equal a publication from scratch.

INTEGRATION TESTS of node/publish.py on a real store of each backend (``store`` fixture; the from-scratch
twin is a fresh SQLite store): after additions, retractions, metadata changes, expiries, a growth that
changes the bucket count, TLP withholding and a key rotation, every manifest entry, filter and bucket of
the node's publication equals that of a node that publishes the same indicators once, from nothing; and
a publication after a small change stages only the buckets holding a changed record (schema 5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import SignedManifest
from node import pubcache
from node.publish import Publication, publish
from node.store import DigestItem, IndicatorRow, Store, open_store
from tests.test_store_contract import raw

NOW = int(datetime(2026, 11, 29, 3, 0, tzinfo=UTC).timestamp())
KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
HMAC_KEY = bytes(range(32))

Step = Callable[[Store, int], None]


def _digest(canonical: str, epoch: int, tier: int) -> bytes:
    return hashlib.sha512(f"{epoch}/{tier}/{canonical}".encode()).digest()[: 64 if tier == TIER_OPRF else 32]


def _row(i: int, kind: str = "phone", epochs: tuple[int, ...] = (1,), **kw: Any) -> IndicatorRow:
    canonical = f"+6012{i:07d}" if kind == "phone" else f"h{i}.example"
    fields: dict[str, Any] = {
        "category": "investment",
        "first_seen": NOW - 86_400 * 30,
        "last_seen": NOW - 86_400,
        "confidence": 70,
        "tlp": "GREEN",
        "reports": 1,
        "expires_at": None,
        "source": "test",
        "digests": {
            (e, tier): _digest(canonical, e, tier) for e in epochs for tier in (TIER_OPRF, TIER_HMAC)
        },
    }
    fields.update(kw)
    return IndicatorRow(kind=kind, canonical=canonical, **fields)


def _publish(store: Store, now: int, epoch: int, cache: Path | None = None) -> Publication:
    return publish(
        store,
        node_id="MY",
        epoch=epoch,
        oprf_public_key=bytes(32),
        signing_key=KEY,
        now=now,
        false_positive_rate=1e-6,
        max_prefix_bits=16,
        validity_s=86_400,
        hmac_key=HMAC_KEY,
        cache_dir=cache,
    )


def _artefacts(store: Store, signed: SignedManifest) -> dict[str, Any]:
    """Every entry of the manifest (version and chain aside), with its filter and all its buckets."""
    version = signed.manifest.version
    out: dict[str, Any] = {}
    for e in signed.manifest.entries:
        buckets = [store.get_bucket(version, e.kind, e.tier, b) for b in range(1 << e.prefix_bits)]
        assert None not in buckets
        out[f"{e.kind}/{e.tier}"] = (e, store.get_filter(version, e.kind, e.tier), buckets)
    assert store.get_bucket(version, "phone", TIER_OPRF, 1 << 16) is None
    return out


def _staged_at(store_url: str, version: int) -> int:
    """How many buckets the publication ``version`` wrote (the others it carried)."""
    with raw(store_url) as sql:
        cur: Any = sql("SELECT count(*) FROM bucket_data WHERE version = ?", (version,))
        return int(cur.fetchone()[0])


def test_an_incremental_publication_equals_one_from_scratch(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    steps: list[tuple[int, int, Step]] = []  # (now, epoch, change)
    versions: list[SignedManifest] = []

    def apply(now: int, epoch: int, change: Step) -> Publication:
        steps.append((now, epoch, change))
        change(store, now)
        pub = _publish(store, now, epoch, tmp_path / "cache")
        # the twin: a fresh store given every change so far, published once
        twin = open_store(str(tmp_path / f"twin{len(steps)}.db"))
        try:
            for at, _, step in steps:
                step(twin, at)
            fresh = _publish(twin, now, epoch)
            assert _artefacts(store, pub.signed) == _artefacts(twin, fresh.signed)
            assert (pub.counts, pub.withheld) == (fresh.counts, fresh.withheld)
        finally:
            twin.close()
        # earlier versions still serve their own bytes (until pruned)
        for old in versions:
            assert _artefacts(store, old)
        versions.append(pub.signed)
        return pub

    def upsert(rows: list[IndicatorRow]) -> Step:
        def step(s: Store, now: int) -> None:
            s.upsert_indicators(rows, now=now)

        return step

    first = apply(NOW, 1, upsert([_row(i) for i in range(300)] + [_row(i, "domain") for i in range(40)]))
    (phone,) = [e for e in first.signed.manifest.entries if (e.kind, e.tier) == ("phone", TIER_OPRF)]
    assert phone.prefix_bits == 4

    # one metadata change: one bucket of each tier of the phone filters is written, the rest carried
    second = apply(NOW + 60, 1, upsert([_row(7, reports=9, confidence=95)]))
    assert second.incremental and not first.incremental
    assert _staged_at(store_url, second.signed.manifest.version) == 2

    # additions and a retraction; a withheld and a soon-expiring indicator
    def change3(s: Store, now: int) -> None:
        s.upsert_indicators([_row(i) for i in range(300, 320)], now=now)
        s.upsert_indicators([_row(400, tlp="AMBER+STRICT"), _row(401, expires_at=now + 3600)], now=now)
        s.retract("phone", _row(3).canonical, now=now)

    third = apply(NOW + 120, 1, change3)
    assert third.withheld == 2  # both tiers of the AMBER+STRICT one
    assert third.counts[("phone", TIER_OPRF)] == 320
    assert third.incremental

    # the expiry passes: nothing stored changes, the expired record leaves the publication
    fourth = apply(NOW + 7200, 1, lambda s, now: None)
    assert fourth.counts[("phone", TIER_OPRF)] == 319
    assert fourth.incremental
    assert _staged_at(store_url, fourth.signed.manifest.version) == 2  # its bucket, on each tier

    # nothing changed at all: nothing is written
    fifth = apply(NOW + 7260, 1, lambda s, now: None)
    assert _staged_at(store_url, fifth.signed.manifest.version) == 0
    assert fifth.incremental

    # growth past 512 records: 5 prefix bits, every bucket written again; the domain filter vanishes
    def change6(s: Store, now: int) -> None:
        s.upsert_indicators([_row(i) for i in range(1000, 1300)], now=now)
        s.retract_many([("domain", _row(i, "domain").canonical) for i in range(40)], now=now)

    sixth = apply(NOW + 7320, 1, change6)
    assert {e.kind for e in sixth.signed.manifest.entries} == {"phone"}
    assert _staged_at(store_url, sixth.signed.manifest.version) == 2 * 32
    assert not sixth.incremental  # the bucket count changed

    # a key rotation: the next epoch's digests are a new publication of every record
    rows7 = [_row(i, epochs=(1, 2)) for i in [*range(300), *range(300, 320), *range(1000, 1300)] if i != 3]
    assert not apply(NOW + 7380, 2, upsert(rows7)).incremental

    assert store.prune_publications(2) == len(versions) - 2
    assert store.integrity_check() == []
    for old in versions[:-2]:
        assert store.get_bucket(old.manifest.version, "phone", TIER_OPRF, 0) is None
    assert _artefacts(store, versions[-2]) and _artefacts(store, versions[-1])


def test_a_failed_publication_leaves_no_bucket_behind(store: Store, store_url: str) -> None:
    store.upsert_indicators([_row(i) for i in range(100)], now=NOW)
    first = _publish(store, NOW, 1)
    store.stage_buckets(first.signed.manifest.version + 1, [("phone", TIER_OPRF, 0, b"half-way")])
    assert store.integrity_check() == []  # staged buckets belong to no version yet
    assert store.get_bucket(first.signed.manifest.version + 1, "phone", TIER_OPRF, 0) is None
    store.upsert_indicators([_row(i) for i in range(100, 110)], now=NOW + 60)
    second = _publish(store, NOW + 60, 1)  # drops what the failed one staged
    assert store.get_bucket(second.signed.manifest.version, "phone", TIER_OPRF, 0) != b"half-way"
    assert _artefacts(store, second.signed)
    assert store.drop_staged_buckets() == 0


class _Replay:
    """A store published with its cache after each change, and a check that each publication equals a
    fresh store given every change so far and published once from scratch."""

    def __init__(self, store: Store, tmp_path: Path) -> None:
        self.store, self.tmp = store, tmp_path
        self.steps: list[tuple[int, Step]] = []

    def change(self, now: int, step: Step) -> None:
        self.steps.append((now, step))
        step(self.store, now)

    def publish(self, now: int, epoch: int = 1) -> Publication:
        return _publish(self.store, now, epoch, self.tmp / "cache")

    def check(self, pub: Publication, now: int, epoch: int = 1) -> None:
        twin = open_store(str(self.tmp / f"twin{len(list(self.tmp.glob('twin*')))}.db"))
        try:
            for at, step in self.steps:
                step(twin, at)
            fresh = _publish(twin, now, epoch)
            assert _artefacts(self.store, pub.signed) == _artefacts(twin, fresh.signed)
            assert (pub.counts, pub.withheld) == (fresh.counts, fresh.withheld)
        finally:
            twin.close()


def test_replaced_digests_purged_rows_and_tlp_changes_follow_the_change(store: Store, tmp_path: Path) -> None:
    run = _Replay(store, tmp_path)
    run.change(NOW, lambda s, now: s.upsert_indicators([_row(i) for i in range(200)], now=now))
    run.check(first := run.publish(NOW), NOW)
    assert not first.incremental

    # the federation secret replaced: ten HMAC digests of the same epoch get other values
    def rehmac(s: Store, now: int) -> None:
        s.set_digests(
            DigestItem("phone", _row(i).canonical, 1, TIER_HMAC, hashlib.sha256(b"new%d" % i).digest())
            for i in range(10)
        )

    run.change(NOW + 60, rehmac)
    run.check(second := run.publish(NOW + 60), NOW + 60)
    assert second.incremental

    # five retracted and purged at once: their rows are deleted while still published
    def purge(s: Store, now: int) -> None:
        s.retract_many([("phone", _row(i).canonical) for i in range(20, 25)], now=now)
        assert s.purge(before=now + 1) == 5

    run.change(NOW + 120, purge)
    run.check(third := run.publish(NOW + 120), NOW + 120)
    assert third.incremental and third.counts[("phone", TIER_OPRF)] == 195

    # TLP: three withheld (AMBER+STRICT), one RED, one relaxed back
    def tlp(s: Store, now: int) -> None:
        for i in (30, 31, 32):
            s.set_tlp("phone", _row(i).canonical, "AMBER+STRICT", now=now)
        s.set_tlp("phone", _row(33).canonical, "RED", now=now)

    run.change(NOW + 180, tlp)
    run.check(fourth := run.publish(NOW + 180), NOW + 180)
    assert fourth.incremental and fourth.withheld == 6 and fourth.counts[("phone", TIER_OPRF)] == 191
    run.change(NOW + 240, lambda s, now: s.set_tlp("phone", _row(30).canonical, "GREEN", now=now) and None)
    run.check(fifth := run.publish(NOW + 240), NOW + 240)
    assert fifth.incremental and fifth.withheld == 4


def test_a_crash_leaves_the_last_publication_and_the_next_one_is_right(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _Replay(store, tmp_path)
    run.change(NOW, lambda s, now: s.upsert_indicators([_row(i) for i in range(200)], now=now))
    first = run.publish(NOW)
    before = _artefacts(store, first.signed)

    def more(lo: int, hi: int, gone: int) -> Step:
        def step(s: Store, now: int) -> None:
            s.upsert_indicators([_row(i) for i in range(lo, hi)], now=now)
            s.retract("phone", _row(gone).canonical, now=now)

        return step

    # a crash half way: buckets staged and records sealed, the publication not saved
    run.change(NOW + 60, more(200, 210, 3))

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("crash before the publication is saved")

    with monkeypatch.context() as m:
        m.setattr(store, "save_publication", crash)
        with pytest.raises(RuntimeError, match="crash"):
            run.publish(NOW + 60)
    assert store.latest_version() == first.signed.manifest.version
    assert _artefacts(store, first.signed) == before
    run.check(second := run.publish(NOW + 61), NOW + 61)
    assert second.incremental

    # a crash after the publication is saved, before its cache is written: the next one builds from
    # scratch (the cache names the filter before) and is right
    run.change(NOW + 120, more(210, 220, 4))
    with monkeypatch.context() as m:
        m.setattr(pubcache, "save", crash)
        with pytest.raises(RuntimeError, match="crash"):
            run.publish(NOW + 120)
    third_version = store.latest_version()
    assert third_version == second.signed.manifest.version + 1
    run.change(NOW + 180, more(220, 230, 5))
    run.check(fourth := run.publish(NOW + 180), NOW + 180)
    assert not fourth.incremental

    # a damaged cache (one counter changed) is not used
    run.change(NOW + 240, more(230, 240, 6))
    run.check(fifth := run.publish(NOW + 240), NOW + 240)
    assert fifth.incremental
    (path,) = (tmp_path / "cache").glob("phone-1.counts")
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x11
    path.write_bytes(bytes(data))
    run.change(NOW + 300, more(240, 250, 7))
    run.check(sixth := run.publish(NOW + 300), NOW + 300)
    assert not sixth.incremental
