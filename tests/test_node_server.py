"""The node's gRPC server over real mutual TLS: who may call what, limits and quotas, errors, health,
and that what it serves (manifests, filters, buckets, audit log) verifies with the client's code.

Every test runs a real federation in this process (``tests/fednet.py``): real servers on 127.0.0.1,
certificates from a real federation CA, one SQLite store per node, and a settable clock.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client._proto.petanda.v1 import (
    auditor_pb2,
    auditor_pb2_grpc,
    common_pb2,
    investigator_pb2,
    investigator_pb2_grpc,
    peer_pb2,
    peer_pb2_grpc,
)
from client.protocol import oprf
from client.protocol.auditlog import LogBreak, decode_entry, verify_log, verify_tree_head
from client.protocol.digest import oprf_input
from client.protocol.errors import FilterMismatchError, ProofError
from client.protocol.kinds import TIER_OPRF, kind_code
from client.protocol.manifest import (
    SignedManifest,
    check_plausible,
    verify_filter,
    verify_manifest,
    verify_records,
)
from client.protocol.merkle import verify_consistency, verify_inclusion
from client.transport.convert import tree_head_from_proto
from client.transport.tls import secure_channel
from node.config import load_config
from node.ingest import ParsedIndicator, parse_file
from node.node import Node
from node.pki import init_ca, issue
from node.server import start_server
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(60)

DAY = 86_400
#: 2024-06-01T01:00:00Z: one hour into a UTC day, so that "the next day" is a known distance away.
T0 = 19_875 * DAY + 3600
DATA = Path(__file__).parent / "data"
SAMPLES = [DATA / n for n in ("indicators.csv", "indicators.jsonl", "stix_bundle.json", "misp_event.json")]

#: Small limits so that quotas, batch and message limits are reached with a few elements.
LIMITS: dict[str, object] = {
    "max_batch": 10,
    "oprf_burst": 10,
    "oprf_rate_per_s": 1.0,
    "oprf_daily_quota": 35,
    "max_message_bytes": 65_536,
    "chunk_bytes": 1024,
}


def _domains_csv(path: Path, count: int) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "value", "category", "tlp"])
        for i in range(count):
            writer.writerow(["domain", f"d{i:05d}.scam.example", "phishing", "GREEN"])
    return path


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """MY and TH, each a peer of the other; MY holds the sample files and 400 domains, published."""
    net = start_net(tmp_path / "fed", ["MY", "TH"], now=T0, limits=LIMITS)
    try:
        extra = _domains_csv(tmp_path / "domains.csv", 400)
        net.node("MY").ingest([*SAMPLES, extra], now=T0)
        net.node("TH").ingest([DATA / "indicators.jsonl"], now=T0)
        yield net
    finally:
        net.close()


def _code(call: Any) -> grpc.StatusCode:
    """Run ``call`` (which must fail) and return its status code."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return info.value.code()


def _channel(net: Net, node_id: str, cert: Path, key: Path) -> grpc.Channel:
    channel = secure_channel(
        net.federation.members[node_id].address, ca=net.federation.ca, cert=cert, key=key
    )
    net.channels.append(channel)
    return channel


def _health(channel: grpc.Channel, service: str = "") -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _peer_channel(net: Net, node_id: str, as_member: str) -> grpc.Channel:
    tls = net.federation.members[as_member].dir / "tls"
    return _channel(net, node_id, tls / f"{as_member}.crt", tls / f"{as_member}.key")


def _blinded(values: list[str], kind: str = "phone") -> tuple[list[bytes], list[bytes], list[bytes]]:
    """``(inputs, blinds, blinded elements)`` for canonical values of ``kind``."""
    inputs = [oprf_input(kind, v) for v in values]
    blinds, elements = oprf.blind(inputs, oprf.MODE_VOPRF)
    return inputs, blinds, elements


def _phones(n: int, start: int = 0) -> list[str]:
    return [f"+659100{i:04d}" for i in range(start, start + n)]


def _evaluate(stub: Any, epoch: int, elements: list[bytes], kind: str = "phone") -> Any:
    request = peer_pb2.EvaluateOprfRequest(
        epoch=epoch, kind=kind_code(kind), blinded_elements=elements, verifiable=True
    )
    return stub.EvaluateOprf(request, timeout=10)


def _manifest(stub: Any) -> SignedManifest:
    response = stub.GetManifest(peer_pb2.GetManifestRequest(known_version=0), timeout=5)
    return SignedManifest.from_bytes(response.signed_manifest)


def _stored(node_id: str, net: Net) -> list[ParsedIndicator]:
    """What the parsers read from the files that ``node_id`` ingested in the fixture."""
    node = net.node(node_id)
    day = datetime.fromtimestamp(T0, UTC).date()
    paths = SAMPLES if node_id == "MY" else [DATA / "indicators.jsonl"]
    return [
        p
        for path in paths
        for p in parse_file(path, default_region=node.config.node.country_region, today=day)
        if isinstance(p, ParsedIndicator)
    ]


# --- mutual TLS and roles -----------------------------------------------------------------------------


def test_mtls_refuses_a_client_without_a_certificate_or_from_another_ca(net: Net, tmp_path: Path) -> None:
    address = net.federation.members["MY"].address
    ca_pem = net.federation.ca.read_bytes()

    anonymous = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca_pem))
    net.channels.append(anonymous)
    assert _code(lambda: _health(anonymous)) == grpc.StatusCode.UNAVAILABLE

    rogue_ca = tmp_path / "rogue-ca"
    init_ca(rogue_ca, name="Not the federation")
    rogue = issue(rogue_ca, role="peer", id="TH", out_dir=tmp_path / "rogue")
    # The rogue client trusts the real CA (so it would accept the server) but presents a foreign cert.
    foreign = _channel(net, "MY", rogue.cert, rogue.key)
    assert _code(lambda: _health(foreign)) == grpc.StatusCode.UNAVAILABLE
    assert _code(lambda: _manifest(peer_pb2_grpc.PeerServiceStub(foreign))) == grpc.StatusCode.UNAVAILABLE

    # The same call with TH's genuine certificate goes through.
    genuine = _peer_channel(net, "MY", "TH")
    assert _health(genuine) == health_pb2.HealthCheckResponse.SERVING
    assert _manifest(peer_pb2_grpc.PeerServiceStub(genuine)).manifest.node_id == "MY"


def _check(channel: grpc.Channel) -> Any:
    request = investigator_pb2.CheckRequest(
        queries=[investigator_pb2.IndicatorQuery(kind="phone", value="+60123456789")]
    )
    return investigator_pb2_grpc.InvestigatorServiceStub(channel).Check(request, timeout=5)


def _tree_head(channel: grpc.Channel) -> Any:
    return auditor_pb2_grpc.AuditorServiceStub(channel).GetTreeHead(
        auditor_pb2.GetTreeHeadRequest(), timeout=5
    )


def _entries(channel: grpc.Channel) -> list[Any]:
    stub = auditor_pb2_grpc.AuditorServiceStub(channel)
    return list(stub.GetEntries(auditor_pb2.GetEntriesRequest(start=0, end=1), timeout=5))


def _peer_manifest(channel: grpc.Channel) -> SignedManifest:
    return _manifest(peer_pb2_grpc.PeerServiceStub(channel))


def test_each_role_reaches_only_its_own_service(net: Net) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    my = net.federation.members["MY"]

    investigator = _channel(net, "MY", *my.investigator)
    assert _code(lambda: _peer_manifest(investigator)) == denied
    assert _code(lambda: _tree_head(investigator)) == denied

    peer = _peer_channel(net, "MY", "TH")
    assert _code(lambda: _check(peer)) == denied
    assert _code(lambda: _tree_head(peer)) == denied
    assert _code(lambda: _entries(peer)) == denied

    auditor = _channel(net, "MY", *my.auditor)
    assert _code(lambda: _check(auditor)) == denied
    assert _code(lambda: _peer_manifest(auditor)) == denied

    # Each role does reach its own service.
    assert _tree_head(auditor).node_id == "MY"
    assert _peer_manifest(peer).manifest.node_id == "MY"
    result = _check(investigator)
    assert result.results[0].canonical == "+60123456789"


def test_people_of_another_state_are_refused(net: Net) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    my_investigator_at_th = _channel(net, "TH", *net.federation.members["MY"].investigator)
    assert _code(lambda: _check(my_investigator_at_th)) == denied
    th_auditor_at_my = _channel(net, "MY", *net.federation.members["TH"].auditor)
    assert _code(lambda: _tree_head(th_auditor_at_my)) == denied
    assert _code(lambda: _entries(th_auditor_at_my)) == denied


def test_a_peer_not_in_peers_is_refused_though_its_certificate_is_valid(net: Net) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    ca_dir = net.federation.ca.parent
    vn = issue(ca_dir, role="peer", id="VN", out_dir=net.federation.root / "VN-tls")
    stub = peer_pb2_grpc.PeerServiceStub(_channel(net, "MY", vn.cert, vn.key))
    assert _code(lambda: _manifest(stub)) == denied
    _, _, elements = _blinded(_phones(1))
    assert _code(lambda: _evaluate(stub, net.node("MY").epoch, elements)) == denied
    # A node is not its own peer either.
    assert _code(lambda: _manifest(net.peer_stub("MY", as_member="MY"))) == denied
    # TH, listed in MY's [[peers]], is served.
    assert _manifest(net.peer_stub("MY", as_member="TH")).manifest.version >= 1


# --- OPRF evaluation: proof, rate limit, daily quota, persistence, rotation ----------------------------


def test_evaluation_proof_verifies_and_equals_the_published_digest(net: Net) -> None:
    node = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    manifest = _manifest(stub).manifest
    held = node.store.get_indicator("phone", "+60123456789")
    assert held is not None
    values = ["+60123456789", "+6591000000"]
    inputs, blinds, elements = _blinded(values)
    response = _evaluate(stub, node.epoch, elements)
    assert response.epoch == manifest.epoch == node.epoch
    evaluated = list(response.evaluated_elements)
    mode, proof = oprf.MODE_VOPRF, response.proof
    outputs = oprf.finalize(
        inputs, blinds, evaluated, mode, blinded=elements, pk=manifest.oprf_public_key, proof=proof
    )
    assert outputs[0] == held.digests[(node.epoch, TIER_OPRF)]
    assert outputs[1] != outputs[0]
    # A proof checked against another key (TH's) fails: the check is not vacuous.
    th_manifest = _manifest(net.peer_stub("TH", as_member="MY")).manifest
    with pytest.raises(ProofError):
        oprf.finalize(
            inputs, blinds, evaluated, mode, blinded=elements, pk=th_manifest.oprf_public_key, proof=proof
        )


def test_rate_limit_refills_and_daily_quota_resets_at_utc_midnight_and_survives_a_restart(
    net: Net,
) -> None:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    stub = net.peer_stub("MY", as_member="TH")
    epoch = net.node("MY").epoch

    assert len(_evaluate(stub, epoch, _blinded(_phones(10))[2]).evaluated_elements) == 10  # burst used
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(stub, epoch, _blinded(_phones(1))[2])
    assert info.value.code() == exhausted
    retry = dict(info.value.trailing_metadata() or ())
    assert 0 < int(retry["retry-after-ms"]) <= 1000

    net.clock.now += 5  # five tokens back
    _evaluate(stub, epoch, _blinded(_phones(5))[2])
    assert _code(lambda: _evaluate(stub, epoch, _blinded(_phones(1))[2])) == exhausted
    for _ in range(2):  # 15 + 20 = 35: the daily quota
        net.clock.now += 10
        _evaluate(stub, epoch, _blinded(_phones(10))[2])
    net.clock.now += 3600  # the bucket is full again, but the day's quota is spent
    with pytest.raises(grpc.RpcError) as info:
        _evaluate(stub, epoch, _blinded(_phones(1))[2])
    assert info.value.code() == exhausted
    retry_ms = int(dict(info.value.trailing_metadata() or ())["retry-after-ms"])
    midnight = (T0 // DAY + 1) * DAY
    assert abs(retry_ms / 1000 - (midnight - net.clock.now)) < 2

    # Restart MY (server and node) on the same config and store, same clock: still refused.
    running = net.running["MY"]
    running.server.server.stop(0).wait()
    running.node.close()
    fresh = Node.open(load_config(running.member.config), clock=net.clock)
    server = start_server(fresh, max_workers=4)
    running.node, running.server = fresh, server
    stub = net.peer_stub("MY", as_member="TH")
    assert _code(lambda: _evaluate(stub, epoch, _blinded(_phones(1))[2])) == exhausted

    net.clock.now = midnight + 1  # a new UTC day
    assert len(_evaluate(stub, epoch, _blinded(_phones(10))[2]).evaluated_elements) == 10
    # Every refusal was audited, without any element.
    entries = [decode_entry(e) for e in fresh.store.audit_entries(0, fresh.store.audit_size())]
    limited = [
        e for e in entries if e.get("action") == "peer.evaluate_oprf" and e["result"] == "rate_limited"
    ]
    assert len(limited) == 4 and all(e["actor"] == "TH" for e in limited)


def test_quota_is_per_peer(tmp_path: Path) -> None:
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG"], now=T0, limits=LIMITS)
    try:
        net.node("MY").publish(now=T0)
        epoch = net.node("MY").epoch
        th, sg = net.peer_stub("MY", as_member="TH"), net.peer_stub("MY", as_member="SG")
        _evaluate(th, epoch, _blinded(_phones(10))[2])
        assert (
            _code(lambda: _evaluate(th, epoch, _blinded(_phones(1))[2])) == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert len(_evaluate(sg, epoch, _blinded(_phones(10))[2]).evaluated_elements) == 10
    finally:
        net.close()


def test_retired_epoch_answers_within_grace_only(net: Net) -> None:
    node = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    old_manifest = _manifest(stub).manifest
    assert node.rotate(now=net.clock.now) == 2
    new_manifest = _manifest(stub).manifest
    assert (new_manifest.epoch, new_manifest.version) == (2, old_manifest.version + 1)
    assert new_manifest.oprf_public_key != old_manifest.oprf_public_key
    held = node.store.get_indicator("phone", "+60123456789")
    assert held is not None and (2, TIER_OPRF) in held.digests

    inputs, blinds, elements = _blinded(["+60123456789"])
    net.clock.now += 6 * DAY
    old = _evaluate(stub, 1, elements)
    out = oprf.finalize(
        inputs,
        blinds,
        list(old.evaluated_elements),
        oprf.MODE_VOPRF,
        blinded=elements,
        pk=old_manifest.oprf_public_key,
        proof=old.proof,
    )
    assert out[0] == held.digests[(1, TIER_OPRF)]
    assert _code(lambda: _evaluate(stub, 3, elements)) == grpc.StatusCode.NOT_FOUND
    net.clock.now += 2 * DAY  # past the 7-day grace period
    assert _code(lambda: _evaluate(stub, 1, elements)) == grpc.StatusCode.NOT_FOUND
    assert _evaluate(stub, 2, elements).epoch == 2


# --- bad requests: refused with the right code, and the node keeps serving ----------------------------


def test_bad_requests_get_precise_codes_and_the_node_keeps_serving(net: Net) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    stub = net.peer_stub("MY", as_member="TH")
    epoch = net.node("MY").epoch
    version = _manifest(stub).manifest.version
    good = _blinded(_phones(1))[2]

    def still_serving() -> None:
        net.clock.now += 10  # keep the token bucket out of the way
        assert len(_evaluate(stub, epoch, good).evaluated_elements) == 1

    assert _code(lambda: _evaluate(stub, epoch, [good[0][:31]])) == invalid
    still_serving()
    assert _code(lambda: _evaluate(stub, epoch, [bytes(32)])) == invalid  # the identity element
    still_serving()
    assert _code(lambda: _evaluate(stub, epoch, [b"\xff" * 32])) == invalid  # not canonical
    still_serving()
    assert _code(lambda: _evaluate(stub, epoch, _blinded(_phones(11))[2])) == invalid  # > max_batch
    still_serving()
    assert _code(lambda: _evaluate(stub, epoch, [])) == invalid
    still_serving()
    for kind in (0, 99):
        request = peer_pb2.EvaluateOprfRequest(epoch=epoch, kind=kind, blinded_elements=good, verifiable=True)
        assert _code(lambda r=request: stub.EvaluateOprf(r, timeout=5)) == invalid
        filter_request = peer_pb2.GetFilterRequest(version=version, kind=kind, tier=common_pb2.TIER_OPRF)
        assert _code(lambda r=filter_request: list(stub.GetFilter(r, timeout=5))) == invalid
    still_serving()
    phone = kind_code("phone")
    missing = peer_pb2.GetFilterRequest(version=version + 100, kind=phone, tier=common_pb2.TIER_OPRF)
    assert _code(lambda: list(stub.GetFilter(missing, timeout=5))) == grpc.StatusCode.NOT_FOUND
    no_tier = peer_pb2.GetFilterRequest(version=version, kind=phone, tier=0)
    assert _code(lambda: list(stub.GetFilter(no_tier, timeout=5))) == invalid
    records = peer_pb2.GetRecordsRequest(version=version + 100, kind=phone, tier=common_pb2.TIER_OPRF)
    assert _code(lambda: list(stub.GetRecords(records, timeout=5))) == grpc.StatusCode.NOT_FOUND
    no_kind = peer_pb2.GetRecordsRequest(version=version, kind=0, tier=common_pb2.TIER_OPRF)
    assert _code(lambda: list(stub.GetRecords(no_kind, timeout=5))) == invalid
    still_serving()


def test_a_message_over_the_size_limit_is_refused_and_the_node_keeps_serving(net: Net) -> None:
    stub = net.peer_stub("MY", as_member="TH")
    epoch = net.node("MY").epoch
    huge = [bytes(70_000)]  # one 70 kB "element": the request is over max_message_bytes (65,536)
    assert _code(lambda: _evaluate(stub, epoch, huge)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(_evaluate(stub, epoch, _blinded(_phones(2))[2]).evaluated_elements) == 2
    assert _health(_peer_channel(net, "MY", "TH")) == health_pb2.HealthCheckResponse.SERVING


# --- health and reflection ----------------------------------------------------------------------------


def test_health_serving_and_reflection_off(net: Net) -> None:
    channel = _peer_channel(net, "MY", "TH")
    for service in ("", "petanda.v1.PeerService", "petanda.v1.AuditorService"):
        assert _health(channel, service) == health_pb2.HealthCheckResponse.SERVING
    assert _code(lambda: _health(channel, "no.such.Service")) == grpc.StatusCode.NOT_FOUND
    for method in (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ):
        call = channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)
        assert _code(lambda c=call: list(c(iter([b""]), timeout=5))) == grpc.StatusCode.UNIMPLEMENTED


# --- what a peer downloads verifies -------------------------------------------------------------------


def test_manifest_filters_and_buckets_verify(net: Net) -> None:
    node = net.node("MY")
    stub = net.peer_stub("MY", as_member="TH")
    response = stub.GetManifest(peer_pb2.GetManifestRequest(known_version=0), timeout=5)
    public = node.signing_key.public_key()
    assert response.signing_public_key == node.audit.public_key
    signed = SignedManifest.from_bytes(response.signed_manifest)
    verify_manifest(signed, public, expected_node="MY", previous=None, now=int(net.clock.now))
    manifest = signed.manifest
    again = stub.GetManifest(peer_pb2.GetManifestRequest(known_version=manifest.version), timeout=5)
    assert again.not_modified and not again.signed_manifest

    expected = {p.kind for p in _stored("MY", net) if p.tlp not in ("RED", "AMBER+STRICT")}
    assert {e.kind for e in manifest.entries} == expected
    domains = manifest.entry("domain", TIER_OPRF)
    assert domains is not None and domains.count >= 400
    for entry in manifest.entries:
        request = peer_pb2.GetFilterRequest(
            version=manifest.version, kind=kind_code(entry.kind), tier=entry.tier
        )
        chunks = list(stub.GetFilter(request, timeout=10))
        data = b"".join(c.data for c in chunks)
        assert [c.offset for c in chunks] == list(range(0, len(data), 1024))
        assert {c.total_size for c in chunks} == {len(data)}
        verify_filter(manifest, entry.kind, entry.tier, data)
        if entry.kind == "domain":
            assert len(chunks) > 1  # the 400 domains' filter travels in several chunks
            with pytest.raises(FilterMismatchError):
                verify_filter(manifest, entry.kind, entry.tier, data[:-1] + bytes([data[-1] ^ 1]))

    assert domains.prefix_bits > 0
    check_plausible(manifest)
    for entry in manifest.entries:  # every record set, as a peer downloads it at sync
        request = peer_pb2.GetRecordsRequest(
            version=manifest.version, kind=kind_code(entry.kind), tier=entry.tier
        )
        chunks = list(stub.GetRecords(request, timeout=10))
        data = b"".join(c.data for c in chunks)
        assert [c.offset for c in chunks] == list(range(0, len(data), 1024))
        records = verify_records(manifest, entry.kind, entry.tier, data)
        assert records.count == entry.count and len(records.buckets()) == 1 << entry.prefix_bits
        if entry.kind == "domain":
            with pytest.raises(FilterMismatchError):
                verify_records(manifest, entry.kind, entry.tier, data[:-1] + bytes([data[-1] ^ 1]))


# --- the auditor's view ---------------------------------------------------------------------------------


def test_audit_log_verifies_and_holds_no_raw_indicator(net: Net) -> None:
    node = net.node("MY")
    # Some traffic to log: a sync both ways, an investigator's check, peer evaluations, another publish.
    net.sync_all()
    result = net.check("MY", [("phone", "+62 812-3456-7890"), ("email", "nobody@example.org")])
    assert [r.peers[0].status for r in result.results] == [
        investigator_pb2.PEER_STATUS_MATCH,
        investigator_pb2.PEER_STATUS_NO_MATCH,
    ]
    result = net.check("TH", [("domain", "D00007.Scam.Example.")])
    assert result.results[0].peers[0].status == investigator_pb2.PEER_STATUS_MATCH
    node.publish(now=net.clock.now)

    auditor = net.auditor("MY")
    key = Ed25519PublicKey.from_public_bytes(
        auditor.GetPublicKey(auditor_pb2.GetPublicKeyRequest(), timeout=5).public_key
    )
    head = tree_head_from_proto(auditor.GetTreeHead(auditor_pb2.GetTreeHeadRequest(), timeout=5))
    verify_tree_head(head, key)
    heads = [tree_head_from_proto(h) for h in auditor.ListTreeHeads(auditor_pb2.ListTreeHeadsRequest())]
    assert len(heads) >= 2 and heads[-1] == head
    entries = [
        e.entry for e in auditor.GetEntries(auditor_pb2.GetEntriesRequest(start=0, end=head.tree_size))
    ]
    assert len(entries) == head.tree_size
    verify_log(entries, heads, key, node_id="MY")
    with pytest.raises(LogBreak):
        tampered = list(entries)
        tampered[1] = tampered[1].replace(b'"ok"', b'"no"')
        verify_log(tampered, heads, key, node_id="MY")

    for index in (0, head.tree_size // 2, head.tree_size - 1):
        proof = auditor.GetInclusionProof(
            auditor_pb2.GetInclusionProofRequest(index=index, tree_size=head.tree_size), timeout=5
        )
        verify_inclusion(entries[index], index, head.tree_size, list(proof.hashes), head.root_hash)
    first = heads[0]
    proof = auditor.GetConsistencyProof(
        auditor_pb2.GetConsistencyProofRequest(first=first.tree_size, second=head.tree_size), timeout=5
    )
    verify_consistency(first.tree_size, head.tree_size, first.root_hash, head.root_hash, list(proof.hashes))

    actions = {decode_entry(e)["action"] for e in entries}
    assert {"ingest", "publish", "peer.get_manifest", "peer.get_filter", "peer.evaluate_oprf"} <= actions
    assert any(a.startswith("investigator.") for a in actions), actions

    # No entry of either node's log holds a raw or canonical indicator value.
    values: set[str] = {"+62 812-3456-7890", "nobody@example.org", "+6281234567890", "D00007.Scam.Example."}
    values.update(f"d{i:05d}.scam.example" for i in range(400))
    for node_id in ("MY", "TH"):
        for parsed in _stored(node_id, net):
            values.add(parsed.canonical)
    for line in (DATA / "indicators.jsonl").read_text().splitlines():
        try:
            value = json.loads(line).get("value")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, str):
            values.add(value)
    for node_id in ("MY", "TH"):
        store = net.node(node_id).store
        text = b"\n".join(store.audit_entries(0, store.audit_size())).decode()
        leaked = sorted(v for v in values if v in text)
        assert not leaked, f"{node_id}'s audit log holds {leaked}"
