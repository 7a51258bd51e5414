"""Protocol versions: every call carries its version, a node serves its set, peers use the highest both
speak, and a call in a version not served is refused with FAILED_PRECONDITION naming both.

The pure rules (``client.protocol.versions``), then a federation of the current code with nodes pinned
to one version (``[protocol] versions``), then the real version-2 code (commit ``V2_COMMIT``, the last
version-2 node) run as a separate process beside a version-3 node, both directions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import grpc
import pytest

from client._proto.petanda.v1 import investigator_pb2, investigator_pb2_grpc, peer_pb2
from client.protocol import errors
from client.protocol.auditlog import decode_entry
from client.protocol.versions import (
    PROTOCOL_VERSION,
    SUPPORTED,
    check_served,
    format_versions,
    negotiate,
    parse_version,
    parse_versions,
)
from client.tools import cli as tools_cli
from client.transport.status import error_from_rpc
from client.transport.tls import secure_channel
from client.transport.versions import SERVED_KEY, VERSION_KEY, PeerVersions, served_header, version_of
from node import cli as node_cli
from node import health
from node.config import load_config
from node.node import Node
from node.peers import Links, peer_error
from node.server import start_server
from node.sync import Syncer
from node.testbed import Member, build_federation, free_ports
from tests.fednet import Net, start_net

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
#: The last commit of version 2 (the tip of main before protocol version 3): a genuine version-2 node.
V2_COMMIT = "8062e41"
NOW = 1_717_203_600  # 2024-06-01T01:00:00Z


# --- the rules -------------------------------------------------------------------------------------


def test_a_call_without_a_version_is_version_2() -> None:
    assert parse_version(None) == 2
    assert parse_versions(None) == {2}
    assert parse_version("3") == 3
    assert parse_versions("3,2") == {2, 3}
    assert format_versions({3, 2}) == "2,3"


@pytest.mark.parametrize("text", ["", "0", "-1", "x", "3.0", " 3", "1" * 10, "٣"])
def test_a_malformed_version_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(errors.InputError, match="protocol version"):
        parse_version(text)


def test_the_highest_version_both_speak_is_used() -> None:
    assert PROTOCOL_VERSION == 3 and SUPPORTED == {2, 3}
    assert negotiate({2, 3}, {2, 3}) == 3
    assert negotiate({2, 3}, {2}) == 2
    assert negotiate({2, 3}, {3, 4}) == 3
    assert negotiate({3}, {2}) is None


def test_a_version_not_served_is_refused_naming_both() -> None:
    check_served(2, {2, 3}, node_id="TH")
    with pytest.raises(errors.UnsupportedVersion) as refused:
        check_served(4, {2, 3}, node_id="TH")
    assert str(refused.value) == "protocol version 4 is not served by TH, which serves versions 2, 3"
    assert refused.value.version == 4 and refused.value.served == {2, 3}
    with pytest.raises(errors.UnsupportedVersion, match=r"2 is not served by SG, which serves version 3$"):
        check_served(2, {3}, node_id="SG")


def test_peer_versions_learn_from_answers_only() -> None:
    state = PeerVersions({2, 3})
    assert state.served is None and state.version() == 3 and not state.speaks(3)
    state.observe((), answered=False)  # no answer, or a version-2 refusal: nothing learnt
    assert state.served is None
    state.observe((), answered=True)  # an answer without the header: a version-2 node
    assert state.served == {2} and state.version() == 2 and state.speaks(2) and not state.speaks(3)
    state.observe(((SERVED_KEY, "2,3"),), answered=False)  # a refusal carries the header
    assert state.negotiated == 3 and state.speaks(3)
    state.observe(((SERVED_KEY, "garbage"),), answered=True)  # unreadable: ignored
    assert state.served == {2, 3}
    state.observe(((SERVED_KEY, "4"),), answered=False)
    assert state.negotiated is None and state.version() == 3 and not state.speaks(3)


VECTORS = json.loads((REPO / "tests" / "vectors" / "versions.json").read_text())


def test_the_vectors() -> None:
    assert (VECTORS["request_metadata"], VECTORS["served_metadata"]) == (VERSION_KEY, SERVED_KEY)
    for case in VECTORS["requests"]:
        metadata = () if case["value"] is None else ((VERSION_KEY, case["value"]),)
        if case.get("invalid"):
            with pytest.raises(errors.InputError, match=VERSION_KEY):
                version_of(metadata)
        else:
            assert version_of(metadata) == case["version"], case
    for case in VECTORS["served"]:
        if case.get("invalid"):
            with pytest.raises(errors.InputError):
                parse_versions(case["value"])
        else:
            assert parse_versions(case["value"]) == set(case["served"]), case
            assert format_versions(case["served"]) == ",".join(map(str, case["served"]))
    for case in VECTORS["negotiation"]:
        assert negotiate(case["ours"], case["theirs"]) == case["version"], case
    for case in VECTORS["refusals"]:
        with pytest.raises(errors.UnsupportedVersion) as refused:
            check_served(case["version"], case["served"], node_id=case["node"])
        assert str(refused.value) == case["message"]
        assert served_header(case["served"], always=True) == ((SERVED_KEY, case["served_metadata"]),)


# --- the current code, nodes pinned to one version --------------------------------------------------


@pytest.fixture
def pinned(tmp_path: Path) -> Iterator[Net]:
    """MY on versions 2 and 3 (the default), TH pinned to 2, SG pinned to 3; each has published."""
    net = start_net(tmp_path / "fed", ["MY", "TH", "SG"], now=NOW)
    try:
        net.pin("TH", [2])
        net.pin("SG", [3])
        for node_id in net.running:
            (tmp_path / f"{node_id}.csv").write_text(
                "kind,value,region,category,confidence,tlp\n"
                f"email,scam-{node_id.lower()}@example.com,,phishing,80,GREEN\n"
                "domain,shared-scam.example,,phishing,60,GREEN\n"
            )
            net.node(node_id).ingest([tmp_path / f"{node_id}.csv"], now=NOW)
        yield net
    finally:
        net.close()


def _sync(net: Net, node_id: str) -> dict[str, object]:
    r = net.running[node_id]
    return {s.peer_id: s for s in Syncer(r.node, r.links, clock=net.clock).sync_all()}


def _statuses(response: object, peer: str) -> list[int]:
    return [p.status for r in response.results for p in r.peers if p.peer_id == peer]  # type: ignore[attr-defined]


def test_nodes_use_the_highest_version_both_speak(
    pinned: Net, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    net = pinned
    results = {node_id: _sync(net, node_id) for node_id in net.running}
    assert results["MY"]["TH"].ok and results["MY"]["SG"].ok  # type: ignore[attr-defined]
    assert results["TH"]["MY"].ok and results["SG"]["MY"].ok  # type: ignore[attr-defined]
    my = net.running["MY"].links
    assert my.versions()["TH"].served == {2} and my.versions()["TH"].negotiated == 2
    assert my.versions()["SG"].served == {3} and my.versions()["SG"].negotiated == 3
    assert my.speaks("SG", 3) and not my.speaks("TH", 3) and my.speaks("TH", 2)
    assert net.running["TH"].links.versions()["MY"].negotiated == 2
    assert net.running["SG"].links.versions()["MY"].negotiated == 3
    # The version in use is kept with the peer's health, for `petanda-node status`.
    kept = health.load(net.node("MY").store, "TH")
    assert (kept.protocol, kept.served) == (2, [2])
    peers = {p["id"]: p for p in net.node("MY").status(now=NOW)["peers"]}
    assert (peers["SG"]["protocol"], peers["SG"]["protocol_served"]) == (3, [3])
    monkeypatch.setenv("COLUMNS", "400")
    assert node_cli.main(["status", "--config", str(net.federation.members["MY"].config)]) == 0
    table = capsys.readouterr().out
    assert "2 (serves 2)" in table and "3 (serves 3)" in table, table
    # Checks go both ways on each pair that shares a version.
    match = investigator_pb2.PEER_STATUS_MATCH
    assert _statuses(net.check("MY", [("email", "scam-th@example.com")]), "TH") == [match]
    assert _statuses(net.check("MY", [("email", "scam-sg@example.com")]), "SG") == [match]
    assert _statuses(net.check("TH", [("email", "scam-my@example.com")]), "MY") == [match]
    assert _statuses(net.check("SG", [("email", "scam-my@example.com")]), "MY") == [match]


def test_speaks_asks_a_peer_not_called_yet(pinned: Net) -> None:
    net = pinned
    sg, th = net.running["SG"].links, net.running["TH"].links  # each speaks one version only
    assert sg.speaks("MY", 3) and not sg.speaks("TH", 3)
    assert sg.versions()["MY"].served == {2, 3} and sg.versions()["TH"].served == {2}
    assert th.speaks("MY", 2) and not th.speaks("MY", 3)


def test_a_peer_that_upgrades_is_followed_without_a_restart(pinned: Net) -> None:
    net = pinned
    my = net.running["MY"].links
    assert _sync(net, "MY")["TH"].ok  # type: ignore[attr-defined]
    assert my.versions()["TH"].negotiated == 2
    # TH's operator restores the default: its next answer says so, and MY's next calls use 3.
    member = net.federation.members["TH"]
    member.config.write_text(member.config.read_text().replace("versions = [2]", "versions = [2, 3]"))
    net.node("TH").config = load_config(member.config)
    assert _sync(net, "MY")["TH"].ok  # type: ignore[attr-defined]
    assert my.versions()["TH"].served == {2, 3} and my.speaks("TH", 3)
    assert health.load(net.node("MY").store, "TH").protocol == 3


def test_peers_that_share_no_version_are_refused_naming_both(pinned: Net) -> None:
    net = pinned
    sg_of_th = _sync(net, "SG")["TH"]
    th_of_sg = _sync(net, "TH")["SG"]
    assert not sg_of_th.ok and sg_of_th.outcome == "refused"  # type: ignore[attr-defined]
    assert "protocol version 3 is not served by TH, which serves version 2" in sg_of_th.detail  # type: ignore[attr-defined]
    assert not th_of_sg.ok and th_of_sg.outcome == "refused"  # type: ignore[attr-defined]
    assert "protocol version 2 is not served by SG, which serves version 3" in th_of_sg.detail  # type: ignore[attr-defined]
    kept = health.load(net.node("SG").store, "TH")
    assert (kept.protocol, kept.served, kept.last_result) == (None, [2], "refused")
    # The refusing node audits it, with the caller's version.
    store = net.node("SG").store
    entries = [decode_entry(e) for e in store.audit_entries(0, store.audit_size())]
    refused = [e for e in entries if e["action"] == "rpc.denied" and e["result"] == "unsupported_version"]
    assert refused and refused[0]["actor"] == "TH" and refused[0]["protocol"] == 2
    # A check through SG finds nothing at TH: SG holds nothing of it, and TH refuses SG's evaluations.
    response = net.check("SG", [("email", "scam-th@example.com")])
    assert investigator_pb2.PEER_STATUS_MATCH not in _statuses(response, "TH")


@pytest.mark.parametrize("sent", ["1", "4"])
def test_a_call_in_an_unsupported_version_gets_failed_precondition(pinned: Net, sent: str) -> None:
    net = pinned
    stub = net.raw_peer_stub("MY", as_member="TH")
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetManifest(peer_pb2.GetManifestRequest(), metadata=((VERSION_KEY, sent),), timeout=10)
    error = refused.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == f"protocol version {sent} is not served by MY, which serves versions 2, 3"
    assert dict(error.trailing_metadata())[SERVED_KEY] == "2,3"
    failure = peer_error("MY", error)
    assert isinstance(failure, errors.UnsupportedVersion) and failure.served == {2, 3}
    # A malformed header is bad input, named.
    with pytest.raises(grpc.RpcError) as bad:
        stub.GetManifest(peer_pb2.GetManifestRequest(), metadata=((VERSION_KEY, "three"),), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert VERSION_KEY in bad.value.details()


def test_answers_carry_the_versions_served_and_version_2_alone_sends_nothing(pinned: Net) -> None:
    net = pinned
    for node_id, header in (("MY", "2,3"), ("SG", "3"), ("TH", None)):
        stub = net.raw_peer_stub(node_id, as_member="MY" if node_id != "MY" else "TH")
        version = ((VERSION_KEY, "3"),) if node_id == "SG" else ()
        _, call = stub.GetManifest.with_call(peer_pb2.GetManifestRequest(), metadata=version, timeout=10)
        assert dict(call.trailing_metadata()).get(SERVED_KEY) == header, node_id


def test_tools_carry_the_version_and_an_old_tool_is_refused_clearly(pinned: Net) -> None:
    net = pinned
    sg = net.federation.members["SG"]
    current = investigator_pb2_grpc.InvestigatorServiceStub(
        secure_channel(sg.address, ca=net.federation.ca, cert=sg.investigator[0], key=sg.investigator[1])
    )
    query = investigator_pb2.IndicatorQuery(kind="domain", value="a.example")
    request = investigator_pb2.CheckRequest(queries=[query])
    assert len(current.Check(request, timeout=20).results) == 1
    # The `petanda` command itself, against a node that refuses everything but version 3.
    cert, key = sg.investigator
    conn = ["--node", sg.address, "--ca", str(net.federation.ca), "--cert", str(cert), "--key", str(key)]
    # 3: answered, every peer stale (SG has synced nobody); a refusal would be 2.
    assert tools_cli.main(["check", "b.example", "--kind", "domain", *conn]) == 3
    old_channel = secure_channel(
        sg.address, ca=net.federation.ca, cert=sg.investigator[0], key=sg.investigator[1], versions=[2]
    )
    net.channels.append(old_channel)
    with pytest.raises(grpc.RpcError) as refused:
        investigator_pb2_grpc.InvestigatorServiceStub(old_channel).Check(request, timeout=20)
    failure = error_from_rpc(refused.value, sg.address)
    assert isinstance(failure, errors.UnsupportedVersion) and failure.served == {3}
    assert str(failure) == (
        f"node {sg.address} refused this tool's protocol version: "
        "protocol version 2 is not served by SG, which serves version 3"
    )


def test_a_protocol_setting_is_checked(tmp_path: Path) -> None:
    federation = build_federation(tmp_path, ["MY"])
    config = federation.members["MY"].config
    base = config.read_text()
    for versions, reason in (
        ("[]", "list at least one protocol version"),
        ("[2, 4]", "protocol version 4 is not one this node speaks (2, 3)"),
        ("[3, 3]", "a protocol version is listed twice"),
        ('["3"]', "protocol.versions[0]"),
    ):
        config.write_text(base + f"[protocol]\nversions = {versions}\n")
        with pytest.raises(errors.ConfigError) as bad:
            load_config(config)
        assert "protocol.versions" in str(bad.value) and reason in str(bad.value), str(bad.value)
    config.write_text(base + "[protocol]\nversions = [3, 2]\n")
    assert load_config(config).protocol.versions == [2, 3]


# --- the real version-2 code beside version 3 -------------------------------------------------------


def _v2_tree(root: Path) -> Path:
    """The code of :data:`V2_COMMIT` in ``root`` (``git archive``), or skip when the history is absent."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", V2_COMMIT, "client", "node"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"the version-2 code (commit {V2_COMMIT}) is not in this clone's history: {error}")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root


def _as_v2_member(member: Member) -> None:
    """Make ``member``'s directory and config what the version-2 code reads: its OPRF seed a file of the
    node directory (version 3 keeps it in the store, wrapped under the KEK) and no ``tls.people_ca`` (the
    people-CAs came with version 3; the old node serves peers only here)."""
    seed = member.dir / "oprf" / "epoch-0001.key"
    seed.parent.mkdir(mode=0o700)
    seed.write_bytes(os.urandom(32))
    seed.chmod(0o600)
    lines = member.config.read_text().splitlines()
    member.config.write_text("".join(f"{line}\n" for line in lines if not line.startswith("people_ca = ")))


def _old(tree: Path, *args: str | Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``petanda-node ARGS`` of the version-2 code (its tree first on the import path)."""
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *map(str, args)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class _V2Node:
    """TH on the version-2 code, serving in its own process."""

    def __init__(self, tree: Path, config: Path) -> None:
        self.tree, self.config = tree, config
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--no-sync", "--config", str(config)],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "serving on port" not in line:
            self.stop()
            raise AssertionError(f"the version-2 node did not start: {line!r} {self.process.stderr.read()!r}")  # type: ignore[union-attr]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def test_a_version_2_node_and_a_version_3_node_interoperate(tmp_path: Path) -> None:
    tree = _v2_tree(tmp_path / "v2")
    assert not (tree / "client" / "protocol" / "versions.py").exists()  # the code before version 3
    my_port, th_port = free_ports(2)
    federation = build_federation(tmp_path / "fed", ["MY", "TH"], ports={"MY": my_port, "TH": th_port})
    my_member, th_member = federation.members["MY"], federation.members["TH"]
    _as_v2_member(th_member)
    (tmp_path / "th.csv").write_text(
        "kind,value,region,category,confidence,tlp\nemail,old-node@example.com,,phishing,80,GREEN\n"
    )
    ingested = _old(tree, "ingest", "--config", th_member.config, tmp_path / "th.csv")
    assert ingested.returncode == 0, ingested.stderr

    node = Node.open(load_config(my_member.config), clock=time.time)
    links = Links(node)
    server = start_server(node, links=links, max_workers=4)
    old: _V2Node | None = None
    channels: list[grpc.Channel] = []
    try:
        node.ingest([DATA / "indicators.csv"], now=time.time())
        old = _V2Node(tree, th_member.config)

        # Version 3 pulls version 2: it learns that TH serves only 2, and its calls carry no version.
        (result,) = Syncer(node, links, clock=time.time).sync_all()
        assert result.ok, result
        assert links.versions()["TH"].served == {2} and not links.speaks("TH", 3)
        assert health.load(node.store, "TH").protocol == 2

        # Version 2 pulls version 3 (the old `petanda-node sync`): MY serves it as version 2.
        pulled = _old(tree, "sync", "--config", th_member.config)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        assert pulled.stdout.startswith("MY: version "), pulled.stdout

        # Checks both ways: MY's investigator through MY asks TH; TH's through the old node asks MY.
        def check(member: object, value: tuple[str, str]) -> list[int]:
            cert, key = member.investigator  # type: ignore[attr-defined]
            channel = secure_channel(member.address, ca=federation.ca, cert=cert, key=key)  # type: ignore[attr-defined]
            channels.append(channel)
            query = investigator_pb2.IndicatorQuery(kind=value[0], value=value[1])
            response = investigator_pb2_grpc.InvestigatorServiceStub(channel).Check(
                investigator_pb2.CheckRequest(queries=[query]), timeout=30
            )
            return [p.status for r in response.results for p in r.peers]

        match = investigator_pb2.PEER_STATUS_MATCH
        assert check(my_member, ("email", "old-node@example.com")) == [match]
        assert check(th_member, ("phone", "+60 12-345 6789")) == [match]

        # Once MY stops serving version 2, the old node is refused, and told why.
        text = my_member.config.read_text()
        my_member.config.write_text(text.replace("[tls]", "[protocol]\nversions = [3]\n[tls]", 1))
        node.config = load_config(my_member.config)
        refused = _old(tree, "sync", "--config", th_member.config)
        assert "FAILED_PRECONDITION: protocol version 2 is not served by MY, which serves version 3" in (
            refused.stdout
        ), refused.stdout + refused.stderr
        # MY, restarted on version 3 alone, still pulls TH: a version-2 node checks no version and
        # answers. MY knows they share none, so it would send TH nothing of version 3.
        links.reset()
        (result,) = Syncer(node, links, clock=time.time).sync_all()
        assert result.ok, result
        assert links.versions()["TH"].served == {2} and links.versions()["TH"].negotiated is None
        assert not links.speaks("TH", 3)
        status = json.loads(_old(tree, "status", "--json", "--config", th_member.config).stdout)
        assert status["node_id"] == "TH"
    finally:
        for channel in channels:
            channel.close()
        if old is not None:
            old.stop()
        server.server.stop(0).wait()
        server.investigator.checker.close()
        links.close()
        node.close()
