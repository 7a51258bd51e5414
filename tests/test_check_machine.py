"""The check as a sans-I/O state machine (client/protocol/check.py), record sets and plausibility.

PROTOCOL UNIT TESTS with a real OPRF key and real filters, no network: a "peer" here is a key pair, a
Bloom filter and a record set built the way a publisher builds them, and its evaluation is
``oprf.blind_evaluate_verifiable`` — exactly what a node runs for ``EvaluateOprf``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from client.protocol import oprf
from client.protocol.bloom import BloomFilter
from client.protocol.check import Check, PeerView, binomial_tail
from client.protocol.digest import derive_epoch_key, hmac_digest, hmac_fingerprint, oprf_input
from client.protocol.errors import EncodingError, FilterMismatchError, ImplausibleError, ProofError
from client.protocol.kinds import TIER_HMAC, TIER_OPRF
from client.protocol.manifest import (
    GENESIS_HASH,
    FilterEntry,
    Manifest,
    check_filter_header,
    check_plausible,
    expected_records_size,
    verify_records,
)
from client.protocol.metadata import (
    RECORD_SIZE,
    IndicatorMeta,
    RecordSet,
    SealedRecord,
    build_buckets,
    build_record_set,
    choose_prefix_bits,
    decode_bucket,
    seal,
    tag_of,
)
from client.protocol.model import PeerStatus

NOW = 1_780_000_000
META = IndicatorMeta("investment", date(2026, 1, 2), date(2026, 3, 4), 80, "AMBER", 3)
VECTORS = json.loads((Path(__file__).parent / "vectors" / "metadata.json").read_text())
FEDERATION_SECRET = bytes(range(32))


class Holder:
    """A publisher of ``held`` phone numbers (with records) and ``stuffed`` ones (in the filter only)."""

    def __init__(
        self,
        node_id: str,
        held: list[str],
        stuffed: list[str] = (),
        *,
        kind: str = "phone",
        tier: int = TIER_OPRF,
    ) -> None:
        self.node_id, self.kind, self.tier, self.epoch = node_id, kind, tier, 3
        self.key = oprf.derive_key_pair(node_id.encode() * 16, b"test", oprf.MODE_VOPRF)
        hkey = derive_epoch_key(FEDERATION_SECRET, self.epoch)
        digest = (
            (
                lambda values: oprf.evaluate(
                    self.key.sk, [oprf_input(kind, v) for v in values], oprf.MODE_VOPRF
                )
            )
            if tier == TIER_OPRF
            else (lambda values: [hmac_digest(hkey, self.epoch, kind, v) for v in values])
        )
        held_digests = digest(held) if held else []
        all_digests = held_digests + (digest(list(stuffed)) if stuffed else [])
        self.bloom = BloomFilter.build(
            all_digests, p=1e-6, kind=kind, tier=tier, epoch=self.epoch, node_id=node_id
        )
        records = [
            seal(d, META, node_id=node_id, epoch=self.epoch, kind=kind, tier=tier) for d in held_digests
        ]
        bits = choose_prefix_bits(len(records))
        data, root = build_record_set(records, bits)
        self.records = RecordSet.from_bytes(data, bits)
        entry = FilterEntry(kind, tier, self.bloom.sha256(), len(records), bits, root, len(data))
        self.manifest = Manifest(
            node_id=node_id,
            epoch=self.epoch,
            version=5,
            issued_at=NOW - 60,
            expires_at=NOW + 3600,
            previous_hash=GENESIS_HASH,
            oprf_public_key=self.key.pk,
            entries=(entry,),
            hmac_fingerprint=hmac_fingerprint(hkey) if tier == TIER_HMAC else bytes(32),
        )

    def view(self) -> PeerView:
        key = (self.kind, self.tier)
        return PeerView(self.node_id, self.manifest, {key: self.bloom}, {key: self.records})

    def answer(self, blinded: tuple[bytes, ...]) -> tuple[list[bytes], bytes]:
        return oprf.blind_evaluate_verifiable(self.key, list(blinded))


def _run(check: Check, holders: dict[str, Holder]) -> None:
    for evaluation in check.pending:
        evaluated, proof = holders[evaluation.peer_id].answer(evaluation.blinded)
        check.receive(evaluation, evaluated, proof)


HELD, OTHER, STUFFED = "+60123456789", "+60198765432", "+60111222333"


def test_held_not_held_and_stuffed_values_cost_the_holder_the_same_evaluation() -> None:
    th = Holder("TH", [HELD, "+60120000001"], stuffed=[STUFFED])
    sent = []
    outcomes = []
    for value in (HELD, OTHER, STUFFED):
        check = Check([("phone", value)], [th.view()], now=NOW)
        sent.append(
            [(e.peer_id, e.kind, e.epoch, len(e.blinded), [len(b) for b in e.blinded]) for e in check.pending]
        )
        _run(check, {"TH": th})
        assert check.done
        outcomes.append(check.outcomes()[0][0])
        if value == STUFFED:
            assert check.unopened == {("TH", "phone"): 1} and check.tested == {("TH", "phone"): 1}
        else:
            assert check.unopened == {}
    assert sent[0] == sent[1] == sent[2] == [("TH", "phone", 3, 1, [32])]
    match, no_match, stuffed = outcomes
    assert match.status is PeerStatus.MATCH and match.metadata is not None
    assert (match.metadata.category, match.metadata.confidence, match.metadata.tier) == (
        "investment",
        80,
        "oprf",
    )
    assert match.metadata.version == 5 and len(bytes.fromhex(match.metadata.tag)) == 16
    assert no_match.status is PeerStatus.NO_MATCH and stuffed.status is PeerStatus.NO_MATCH


def test_one_blind_per_value_serves_every_peer() -> None:
    holders = {p: Holder(p, [HELD] if p == "SG" else [OTHER]) for p in ("TH", "SG", "ID")}
    check = Check([("phone", HELD), ("phone", OTHER)], [h.view() for h in holders.values()], now=NOW)
    pending = check.pending
    assert [e.peer_id for e in pending] == ["TH", "SG", "ID"]
    assert pending[0].blinded == pending[1].blinded == pending[2].blinded  # blinded once, sent to all
    _run(check, holders)
    rows = check.outcomes()
    assert [o.status for o in rows[0]] == [PeerStatus.NO_MATCH, PeerStatus.MATCH, PeerStatus.NO_MATCH]
    assert [o.status for o in rows[1]] == [PeerStatus.MATCH, PeerStatus.NO_MATCH, PeerStatus.MATCH]


def test_batches_split_at_max_batch_and_kinds_apart() -> None:
    th = Holder("TH", [HELD])
    items = [("phone", f"+6012000{i:04d}") for i in range(5)] + [("email", "a@example.org")]
    check = Check(items, [th.view()], now=NOW, max_batch=2)
    assert [len(e.blinded) for e in check.pending] == [2, 2, 1]  # email: the peer publishes no emails
    assert check.outcomes()[5][0].detail == "kind not published"


def test_a_proof_under_another_key_makes_the_peer_unavailable() -> None:
    th, impostor = Holder("TH", [HELD]), Holder("XX", [HELD])
    check = Check([("phone", HELD)], [th.view()], now=NOW)
    (evaluation,) = check.pending
    evaluated, proof = impostor.answer(evaluation.blinded)
    with pytest.raises(ProofError):
        check.receive(evaluation, evaluated, proof)
    outcome = check.outcomes()[0][0]
    assert outcome.status is PeerStatus.UNAVAILABLE and "invalid answer" in outcome.detail


def test_wrong_count_of_evaluated_elements_is_refused() -> None:
    th = Holder("TH", [HELD])
    check = Check([("phone", HELD), ("phone", OTHER)], [th.view()], now=NOW)
    (evaluation,) = check.pending
    evaluated, proof = th.answer(evaluation.blinded)
    with pytest.raises(EncodingError):
        check.receive(evaluation, evaluated[:1], proof)
    assert {o[0].status for o in check.outcomes()} == {PeerStatus.UNAVAILABLE}


def test_stale_views_failures_and_deadline() -> None:
    th, sg = Holder("TH", [HELD]), Holder("SG", [HELD])
    expired = replace(th.view(), manifest=replace(th.manifest, expires_at=NOW - 1))
    views = [
        expired,
        PeerView("ID", None),
        replace(sg.view(), peer_id="SG"),
        PeerView("VN", sg.manifest, problem="x"),
    ]
    check = Check([("phone", HELD)], views, now=NOW)
    (evaluation,) = check.pending
    assert evaluation.peer_id == "SG"
    check.fail(evaluation, PeerStatus.RATE_LIMITED, "quota")
    row = check.outcomes()[0]
    assert [o.status for o in row] == [
        PeerStatus.STALE,
        PeerStatus.STALE,
        PeerStatus.RATE_LIMITED,
        PeerStatus.STALE,
    ]
    assert "expired" in row[0].detail and row[1].detail == "never synced" and row[3].detail == "x"
    late = Check([("phone", HELD)], [sg.view()], now=NOW)
    late.fail_all(PeerStatus.UNAVAILABLE, "deadline exceeded")
    assert late.done and late.outcomes()[0][0].detail == "deadline exceeded"


def test_hmac_tier_offline_and_a_secret_mismatch_is_stale_not_no_match() -> None:
    sg = Holder("SG", ["0x52908400098527886e0f7030069857d2e4169ee7"], kind="crypto_wallet", tier=TIER_HMAC)
    value = "0x52908400098527886e0f7030069857d2e4169ee7"
    ours = lambda epoch: derive_epoch_key(FEDERATION_SECRET, epoch)  # noqa: E731
    check = Check([("crypto_wallet", value)], [sg.view()], now=NOW, hmac_key=ours)
    assert check.pending == [] and check.outcomes()[0][0].status is PeerStatus.MATCH
    other = lambda epoch: derive_epoch_key(bytes(32), epoch)  # noqa: E731
    mismatch = Check([("crypto_wallet", value)], [sg.view()], now=NOW, hmac_key=other)
    outcome = mismatch.outcomes()[0][0]
    assert outcome.status is PeerStatus.STALE and "secret mismatch" in outcome.detail
    none = Check([("crypto_wallet", value)], [sg.view()], now=NOW, hmac_key=lambda e: None)
    assert none.outcomes()[0][0].status is PeerStatus.STALE


# --- record sets -------------------------------------------------------------------------------------


def test_record_set_vector() -> None:
    v = VECTORS["buckets"]
    data = bytes.fromhex(v["record_set"])
    records = RecordSet.from_bytes(data, v["prefix_bits"])
    assert records.count == len(v["digests"]) and records.to_bytes() == data
    assert records.root().hex() == v["buckets_root"]
    assert [b.hex() for b in records.buckets()] == v["encoded"]


def test_record_set_parse_is_strict() -> None:
    records = [
        seal(bytes([i]) * 64, META, node_id="TH", epoch=1, kind="phone", tier=TIER_OPRF) for i in range(40)
    ]
    data, _root = build_record_set(records, 2)
    assert len(data) == expected_records_size(40, 2)
    first_record = 5  # bucket 0's first record starts after its header
    cases = {
        "after the last bucket": data + b"\x00",
        "missing": data[: -RECORD_SIZE - 5] if False else data[:3],
        "unknown version": b"\x02" + data[1:],
        "ciphertext": data[: first_record + 28] + b"\x00\x21" + data[first_record + 30 :],
    }
    for reason, bad in cases.items():
        with pytest.raises(EncodingError, match=reason):
            RecordSet.from_bytes(bad, 2)
    buckets = build_buckets(records, 2)
    assert all(len(b) > 5 + RECORD_SIZE for b in buckets)
    with pytest.raises(EncodingError, match="does not belong to bucket 0"):
        RecordSet.from_bytes(b"".join([buckets[1], buckets[0], *buckets[2:]]), 2)
    first, second = buckets[0][5 : 5 + RECORD_SIZE], buckets[0][5 + RECORD_SIZE : 5 + 2 * RECORD_SIZE]
    swapped = buckets[0][:5] + second + first + buckets[0][5 + 2 * RECORD_SIZE :]
    with pytest.raises(EncodingError, match="strictly increasing"):
        RecordSet.from_bytes(b"".join([swapped, *buckets[1:]]), 2)


def test_verify_records_against_the_manifest() -> None:
    th = Holder("TH", [HELD, OTHER])
    data = th.records.to_bytes()
    assert verify_records(th.manifest, "phone", TIER_OPRF, data).count == 2
    other = Holder("TH", [HELD, STUFFED]).records.to_bytes()
    with pytest.raises(FilterMismatchError, match="differ"):
        verify_records(th.manifest, "phone", TIER_OPRF, other)
    with pytest.raises(FilterMismatchError, match="bytes"):
        verify_records(th.manifest, "phone", TIER_OPRF, data[:-1])


def test_plausibility_refuses_more_buckets_than_records_and_a_wrong_size() -> None:
    th = Holder("TH", [HELD])
    entry = th.manifest.entries[0]
    check_plausible(th.manifest)
    many = replace(entry, prefix_bits=16, records_size=expected_records_size(1, 16))
    with pytest.raises(ImplausibleError, match="more buckets than records"):
        check_plausible(replace(th.manifest, entries=(many,)))
    with pytest.raises(ImplausibleError, match="bytes of records"):
        check_plausible(replace(th.manifest, entries=(replace(entry, records_size=entry.records_size + 62),)))


def test_binomial_tail() -> None:
    assert binomial_tail(10, 0, 0.5) == 1.0
    assert binomial_tail(10, 11, 0.5) == 0.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(4, 2, 0.5) == pytest.approx(11 / 16)
    # a handful of unopened hits among a thousand checks at a 1e-6 rate is far beyond chance
    assert binomial_tail(1000, 3, 1e-6) < 1e-9 < binomial_tail(1_000_000, 2, 1e-6)


def test_a_filter_must_count_what_it_holds_and_declare_a_usable_rate() -> None:
    th = Holder("TH", [HELD, OTHER])
    honest = th.bloom
    check_filter_header(
        th.manifest,
        "phone",
        TIER_OPRF,
        n=honest.n,
        declared_fpr=honest.declared_fpr,
        excess_fill=honest.excess_fill(),
    )
    assert honest.excess_fill() < 3 and honest.declared_fpr < 1e-5
    with pytest.raises(ImplausibleError, match="counts 3 indicators"):
        check_filter_header(th.manifest, "phone", TIER_OPRF, n=3, declared_fpr=1e-6, excess_fill=0.0)
    with pytest.raises(ImplausibleError, match="false-positive rate"):
        check_filter_header(th.manifest, "phone", TIER_OPRF, n=2, declared_fpr=0.02, excess_fill=0.0)
    # 2,000 values stuffed into a filter whose header counts only the 2 it has records for
    stuffed = BloomFilter.build(
        [bytes([i % 256, i // 256]) * 32 for i in range(2000)],
        p=1e-6,
        kind="phone",
        tier=TIER_OPRF,
        epoch=3,
        node_id="TH",
    )
    lying = BloomFilter(
        bits=np.frombuffer(stuffed.to_bytes()[-stuffed.m // 8 :], dtype=np.uint8).copy(),
        m=stuffed.m,
        k=stuffed.k,
        n=2,
        kind="phone",
        tier=TIER_OPRF,
        epoch=3,
        node_id="TH",
    )
    assert lying.popcount == stuffed.popcount
    with pytest.raises(ImplausibleError, match="standard deviations"):
        check_filter_header(
            th.manifest,
            "phone",
            TIER_OPRF,
            n=2,
            declared_fpr=lying.declared_fpr,
            excess_fill=lying.excess_fill(),
        )


def test_a_kind_on_both_tiers_falls_back_to_the_oprf_tier_when_the_hmac_key_differs() -> None:
    wallet = "0x52908400098527886e0f7030069857d2e4169ee7"
    on_oprf = Holder("TH", [wallet], kind="crypto_wallet", tier=TIER_OPRF)
    on_hmac = Holder("TH", [wallet], kind="crypto_wallet", tier=TIER_HMAC)
    manifest = replace(
        on_oprf.manifest,
        entries=on_oprf.manifest.entries + on_hmac.manifest.entries,
        hmac_fingerprint=on_hmac.manifest.hmac_fingerprint,
    )
    views = [
        PeerView(
            "TH",
            manifest,
            {**on_oprf.view().filters, **on_hmac.view().filters},
            {**on_oprf.view().records, **on_hmac.view().records},
        )
    ]
    ours = Check(
        [("crypto_wallet", wallet)], views, now=NOW, hmac_key=lambda e: derive_epoch_key(FEDERATION_SECRET, e)
    )
    assert ours.pending == [] and ours.outcomes()[0][0].metadata.tier == "hmac"  # type: ignore[union-attr]
    other = Check(
        [("crypto_wallet", wallet)], views, now=NOW, hmac_key=lambda e: derive_epoch_key(bytes(32), e)
    )
    assert len(other.pending) == 1
    _run(other, {"TH": on_oprf})
    outcome = other.outcomes()[0][0]
    assert (
        outcome.status is PeerStatus.MATCH
        and outcome.metadata is not None
        and outcome.metadata.tier == "oprf"
    )


def test_a_planted_record_that_does_not_open_costs_only_that_value() -> None:
    # On the HMAC tier anyone can compute the tag of any value: a hostile holder plants a junk record
    # under it. The check goes on; that value only is unanswered by that peer, counted as unopened.
    value = "0x52908400098527886e0f7030069857d2e4169ee7"
    other = "0x8617e340b3d01fa5f11f306f4090fd50e238070d"
    sg = Holder("SG", [other], stuffed=[value], kind="crypto_wallet", tier=TIER_HMAC)
    key = derive_epoch_key(FEDERATION_SECRET, sg.epoch)
    digest = hmac_digest(key, sg.epoch, "crypto_wallet", value)
    junk = SealedRecord(tag_of(digest), bytes(12), bytes(32))
    good = [r for b in sg.records.buckets() for r in decode_bucket(b)]
    bits = sg.records.prefix_bits
    data, root = build_record_set([*good, junk], bits)
    entry = replace(sg.manifest.entries[0], count=2, buckets_root=root, records_size=len(data))
    view = replace(
        sg.view(),
        manifest=replace(sg.manifest, entries=(entry,)),
        records={("crypto_wallet", TIER_HMAC): RecordSet.from_bytes(data, bits)},
    )
    check = Check(
        [("crypto_wallet", value), ("crypto_wallet", other)], [view], now=NOW, hmac_key=lambda e: key
    )
    planted, held = (row[0] for row in check.outcomes())
    assert planted.status is PeerStatus.UNAVAILABLE and "invalid record" in planted.detail
    assert held.status is PeerStatus.MATCH
    assert check.unopened == {("SG", "crypto_wallet"): 1}
