"""A whole federation in one directory: CA, each state's people-CA, certificates, node directories and
configs.

Used by ``petanda demo`` and by the integration tests, so both run exactly what an operator would set
up by hand with ``petanda-node ca init``, ``ca people-init``, ``ca sign-people-ca``, ``ca issue`` and
``init`` (see ``docs/operators.md``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.keys import FEDERATION_SECRET_FILE, init_federation_secret, init_node_dir, write_private_file
from node.pki import PEOPLE_CA_CERT_FILE, PEOPLE_CA_CSR_FILE, init_ca, issue, people_init, sign_people_ca

__all__ = [
    "ASEAN",
    "CAPACITY_LIMITS",
    "Federation",
    "Member",
    "build_federation",
    "free_ports",
    "write_config",
]

#: The eleven ASEAN member states, in the order of their ISO codes.
ASEAN = ("BN", "ID", "KH", "LA", "MM", "MY", "PH", "SG", "TH", "TL", "VN")


#: Every rate limit and quota a benchmark's load would reach, raised out of its way: benchmarks measure
#: capacity, not policy (docs/BENCHMARKS.md), and print these with their figures.
CAPACITY_LIMITS: dict[str, object] = {
    "oprf_burst": 10**7,
    "oprf_rate_per_s": 10**7,
    "oprf_daily_quota": 10**9,
    "oprf_holder_daily_quota": 10**9,
    "peer_rpc_rate_per_s": 10**6,
    "peer_rpc_burst": 10**6,
    "check_rate_per_s": 10**6,
    "check_burst": 10**6,
    "check_daily_quota": 10**9,
}


@dataclass
class Member:
    """One member's files: node directory, config, its people-CA directory and its people's certificates."""

    id: str
    dir: Path
    config: Path
    investigator: tuple[Path, Path]
    auditor: tuple[Path, Path]
    port: int = 0
    #: The state's people-CA directory (``people-ca.crt``, ``people-ca.key``, ``ca.crt``).
    people_ca: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Federation:
    root: Path
    ca: Path
    members: dict[str, Member] = field(default_factory=dict)

    def describe(self) -> str:
        """A JSON description of where everything is (what ``petanda demo --keep`` writes)."""
        return json.dumps(
            {
                "ca": str(self.ca),
                "members": {
                    m.id: {
                        "address": m.address,
                        "config": str(m.config),
                        "investigator": [str(p) for p in m.investigator],
                        "auditor": [str(p) for p in m.auditor],
                    }
                    for m in self.members.values()
                },
            },
            indent=2,
        )


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 now (held together so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers, booleans and arrays are valid TOML


def write_config(
    member: Member,
    peers: Iterable[Member],
    *,
    hmac_kinds: Sequence[str] = (),
    limits: Mapping[str, object] | None = None,
    sync: Mapping[str, object] | None = None,
    store_url: str | None = None,
    addresses: Mapping[str, str] | None = None,
) -> None:
    """Write ``member``'s config naming ``peers`` (their ports must be known by then).

    ``addresses`` replaces the address of some peers (a test pointing one at another server).
    """
    tls = member.dir / "tls"
    lines = [
        "[node]",
        f"id = {_toml(member.id)}",
        f"dir = {_toml(str(member.dir))}",
        f"listen = {_toml(member.address)}",
        "shutdown_grace_s = 2.0",
        "[tls]",
        f"ca = {_toml(str(tls / 'ca.crt'))}",
        f"cert = {_toml(str(tls / f'{member.id}.crt'))}",
        f"key = {_toml(str(tls / f'{member.id}.key'))}",
        *([f"people_ca = {_toml(str(member.people_ca / PEOPLE_CA_CERT_FILE))}"] if member.people_ca else []),
        "[hmac]",
        f"kinds = {_toml(list(hmac_kinds))}",
        f"acknowledge_offline_testing = {_toml(list(hmac_kinds))}",  # tests accept the offline-testing risk
    ]
    if store_url:
        lines += ["[store]", f"url = {_toml(store_url)}"]
    for section, values in (("limits", limits), ("sync", sync)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    for peer in peers:
        if peer.id != member.id:
            address = (addresses or {}).get(peer.id, peer.address)
            lines += ["[[peers]]", f"id = {_toml(peer.id)}", f"address = {_toml(address)}"]
    member.config.write_text("\n".join(lines) + "\n")


def build_federation(
    root: Path,
    ids: Sequence[str],
    *,
    ports: Mapping[str, int] | None = None,
    hmac_kinds: Sequence[str] = (),
    limits: Mapping[str, object] | None = None,
    sync: Mapping[str, object] | None = None,
) -> Federation:
    """Create a CA, and for every id a people-CA signed by it, a node directory with keys, certificates
    and a config, and an investigator and an auditor issued by the people-CA.

    With ``ports`` the configs name every other member as a peer; without, members get port 0 and no
    peers (call :func:`write_config` again once the servers' ports are known).
    """
    root = Path(root)
    ca_dir = root / "ca"
    init_ca(ca_dir)
    secret_path = root / "federation.key"
    secret = init_federation_secret(secret_path)
    federation = Federation(root=root, ca=ca_dir / "ca.crt")
    for node_id in ids:
        node_dir = root / node_id
        init_node_dir(node_dir, node_id)
        (node_dir / FEDERATION_SECRET_FILE).parent.mkdir(parents=True, exist_ok=True)
        write_private_file(node_dir / FEDERATION_SECRET_FILE, secret)
        tls = node_dir / "tls"
        issue(ca_dir, role="peer", id=node_id, out_dir=tls, hostnames=["localhost"], ips=["127.0.0.1"])
        people_ca = root / "people-ca" / node_id
        people_init(people_ca, state=node_id)
        sign_people_ca(ca_dir, people_ca / PEOPLE_CA_CSR_FILE, out_dir=people_ca)
        people = root / "people" / node_id
        inv = issue(people_ca, role="investigator", id=f"{node_id}/investigator", out_dir=people)
        aud = issue(people_ca, role="auditor", id=f"{node_id}/auditor", out_dir=people)
        federation.members[node_id] = Member(
            id=node_id,
            dir=node_dir,
            config=node_dir / "node.toml",
            investigator=(inv.cert, inv.key),
            auditor=(aud.cert, aud.key),
            port=(ports or {}).get(node_id, 0),
            people_ca=people_ca,
        )
    for member in federation.members.values():
        peers = federation.members.values() if ports else ()
        write_config(member, peers, hmac_kinds=hmac_kinds, limits=limits, sync=sync)
    return federation
