"""The node's configuration: one TOML file, validated strictly, every error naming its key and file.

``load_config`` reads it; ``render_config_template`` writes a commented one that ``load_config``
accepts. Unknown keys are refused (a typo must not silently fall back to a default), values are not
coerced across types (``max_batch = "1000"`` is an error), and relative paths are relative to the
directory of the config file. ``docs/operators.md`` lists every key.

One module of this size: every section's model and the commented template rendered from the same models, so
that they cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Annotated, Any, Final

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from client.protocol.errors import ConfigError
from client.protocol.kinds import KINDS
from client.protocol.versions import SUPPORTED
from client.transport.tls import check_country_code
from node.keys import FEDERATION_SECRET_FILE

__all__ = [
    "AuditSection",
    "ConfigProblems",
    "HmacSection",
    "LimitsSection",
    "NodeConfig",
    "NodeSection",
    "OprfSection",
    "PeerEntry",
    "ProtocolSection",
    "PublishSection",
    "StoreSection",
    "TlsSection",
    "load_config",
    "parse_address",
    "render_config_template",
]

DEFAULT_STORE_FILE: Final = "petanda.db"

_HOST_RE: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into host and port, raising ValueError with a reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not host:port (IPv6 as [addr]:port)")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r} has an invalid port {port_text!r}")
    port = int(port_text)
    if port == 0 and not allow_port_zero:
        raise ValueError(f"{address!r}: port 0 is not allowed here")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{address!r} has an invalid IPv6 address {host!r}") from None
        return host, port
    if ":" in host:
        raise ValueError(f"{address!r}: an IPv6 address must be in brackets, e.g. [::1]:7443")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        if not _HOST_RE.fullmatch(host) or host.replace(".", "").isdigit():
            raise ValueError(f"{address!r} has an invalid host {host!r}") from None
    return host, port


def _resolve(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base")
    value = value.expanduser()
    if base is None or value.is_absolute():
        return value
    return Path(base) if value == Path() else Path(base) / value


#: A path in the config: relative to the config file's directory.
ConfigPath = Annotated[Path, Field(strict=False), AfterValidator(_resolve)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NodeSection(_Section):
    """``[node]``: who this node is and where it listens."""

    id: str
    dir: ConfigPath = Field(default=Path(), validate_default=True)
    listen: str = "0.0.0.0:7443"
    country_region: str
    reflection: bool = False
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _region_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "country_region" not in data and "id" in data:
            return {**data, "country_region": data["id"]}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_country_code(value, what="node id")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_address(value, allow_port_zero=True)
        return value

    @field_validator("country_region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a phone-number region (ISO 3166-1 alpha-2, e.g. 'MY')")
        return value

    @property
    def listen_host(self) -> str:
        """Host part of ``listen``."""
        return parse_address(self.listen, allow_port_zero=True)[0]

    @property
    def listen_port(self) -> int:
        """Port of ``listen`` (0: any free port, for tests)."""
        return parse_address(self.listen, allow_port_zero=True)[1]


class StoreSection(_Section):
    """``[store]``: ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``postgresql://...``."""

    url: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise ValueError(
                "expected sqlite:///<file> (relative), sqlite:////<file> (absolute) or postgresql://…"
            )
        path = _resolve(Path(value.removeprefix("sqlite:///")), info)
        return f"sqlite:///{path}"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for PostgreSQL."""
        return Path(self.url.removeprefix("sqlite:///")) if self.url.startswith("sqlite:") else None


class TlsSection(_Section):
    """``[tls]``: the federation CA certificate, this node's peer certificate and key, and the CRL."""

    ca: ConfigPath
    cert: ConfigPath
    key: ConfigPath
    #: The federation's CRL (PEM or DER, signed by the CA), re-read when it changes; ``""``: none.
    crl: ConfigPath | None = None

    @field_validator("crl", mode="before")
    @classmethod
    def _no_crl(cls, value: Any) -> Any:
        return None if value == "" else value


class OprfSection(_Section):
    """``[oprf]``: OPRF key rotation."""

    epoch_days: int = Field(default=30, ge=1, le=366)
    grace_days: int = Field(default=7, ge=0, le=366)

    @model_validator(mode="after")
    def _grace_within_epoch(self) -> OprfSection:
        if self.grace_days > self.epoch_days:
            raise ValueError(f"grace_days ({self.grace_days}) must not exceed epoch_days ({self.epoch_days})")
        return self


class HmacSection(_Section):
    """``[hmac]``: the opt-in HMAC tier, with a federation-wide secret (``petanda-node hmac``).

    Every kind in ``kinds`` must also be in ``acknowledge_offline_testing``: whoever holds the federation
    key can test any candidate of that kind offline, with no quota and no audit entry. No kind is exempt
    (on-chain wallet addresses, ~1e9, fall to one core in minutes; CT-logged domains are public lists).
    """

    kinds: list[str] = Field(default_factory=list)
    acknowledge_offline_testing: list[str] = Field(default_factory=list)
    federation_secret_file: ConfigPath

    @model_validator(mode="before")
    @classmethod
    def _removed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allow_low_entropy" in data:
            raise ValueError(
                "allow_low_entropy was removed: list each kind of hmac.kinds in "
                "hmac.acknowledge_offline_testing instead (every holder of the federation key can test "
                "any candidate of those kinds offline)"
            )
        return data

    @field_validator("kinds", "acknowledge_offline_testing")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        for kind in value:
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; expected one of: {', '.join(KINDS)}")
        if len(set(value)) != len(value):
            raise ValueError("a kind is listed twice")
        return value

    @model_validator(mode="after")
    def _acknowledged(self) -> HmacSection:
        missing = [kind for kind in self.kinds if kind not in self.acknowledge_offline_testing]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} on the HMAC tier is not acknowledged: every holder of the federation "
                f"key can test any candidate {missing[0]} offline, without quota or audit (no kind is "
                "exempt: ~1e9 on-chain wallet addresses fall to one core in minutes); add it to "
                "hmac.acknowledge_offline_testing to accept that"
            )
        return self


class PublishSection(_Section):
    """``[publish]``: Bloom filters, metadata buckets and manifests."""

    false_positive_rate: float = Field(default=1e-6, gt=0, lt=0.5)
    bucket_prefix_bits: int = Field(default=12, ge=0, le=32)
    manifest_validity_hours: int = Field(default=48, ge=1, le=8760)
    keep_versions: int = Field(default=2, ge=1, le=1000)
    purge_after_days: int = Field(default=30, ge=1, le=3650)


class LimitsSection(_Section):
    """``[limits]``: sizes, rates and deadlines, per peer where it says so."""

    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    oprf_rate_per_s: float = Field(default=100.0, gt=0)
    oprf_burst: int = Field(default=2000, ge=1)
    #: OPRF evaluations per peer per kind per UTC day (a [[peers]] entry may set its own).
    oprf_daily_quota: int = Field(default=20_000, ge=0)
    #: OPRF evaluations per kind per UTC day across every peer on the default quota.
    oprf_holder_daily_quota: int = Field(default=100_000, ge=0)
    #: An enumeration alert: more than this share of a peer's daily quota on one kind...
    enumeration_alert_share: float = Field(default=0.5, gt=0, le=1)
    #: ... on this many consecutive UTC days,
    enumeration_alert_days: int = Field(default=3, ge=1, le=30)
    #: or phone evaluations over 30 days above this share of the home numbering space.
    enumeration_alert_space_share: float = Field(default=0.01, gt=0, le=1)
    check_deadline_ms: int = Field(default=5000, ge=100, le=600_000)
    max_check_deadline_ms: int = Field(default=60_000, ge=100, le=600_000)
    check_rate_per_s: float = Field(default=200.0, gt=0)
    check_burst: int = Field(default=5000, ge=1)
    check_daily_quota: int = Field(default=200_000, ge=0)
    peer_rpc_rate_per_s: float = Field(default=20.0, gt=0)
    peer_rpc_burst: int = Field(default=200, ge=1)
    sightings_daily: int = Field(default=1000, ge=0)
    keepalive_s: int = Field(default=60, ge=10, le=3600)
    chunk_bytes: int = Field(default=1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _coherent(self) -> LimitsSection:
        if self.oprf_burst < self.max_batch:
            raise ValueError(
                f"oprf_burst ({self.oprf_burst}) must be at least max_batch ({self.max_batch}), "
                "or a full batch could never be evaluated"
            )
        if self.check_burst < self.max_batch:
            raise ValueError(
                f"check_burst ({self.check_burst}) must be at least max_batch ({self.max_batch}), "
                "or a full batch could never be checked"
            )
        if self.check_deadline_ms > self.max_check_deadline_ms:
            raise ValueError(
                f"check_deadline_ms ({self.check_deadline_ms}) must not exceed "
                f"max_check_deadline_ms ({self.max_check_deadline_ms})"
            )
        if self.chunk_bytes > self.max_message_bytes - 1024:
            raise ValueError(
                f"chunk_bytes ({self.chunk_bytes}) must leave 1024 bytes of room under "
                f"max_message_bytes ({self.max_message_bytes})"
            )
        return self

    @property
    def keepalive_ms(self) -> int:
        """``keepalive_s`` in milliseconds, as gRPC options take it."""
        return self.keepalive_s * 1000


class AuditSection(_Section):
    """``[audit]``: the Merkle audit log."""

    tree_head_interval_s: int = Field(default=300, ge=1, le=86_400)
    #: Seconds between the aggregated ``peer.reads`` entries of repeated read-only peer calls.
    aggregate_interval_s: int = Field(default=300, ge=1, le=86_400)
    #: Seconds an auditor waits between two tree heads signed on its demand (``GetFreshTreeHead``).
    fresh_head_interval_s: int = Field(default=60, ge=1, le=86_400)


class SyncSection(_Section):
    """``[sync]``: pulling the peers' manifests and filters."""

    interval_s: int = Field(default=60, ge=1, le=86_400)
    timeout_s: float = Field(default=10.0, gt=0, le=600)


class ProtocolSection(_Section):
    """``[protocol]``: the protocol versions this node serves and speaks (``docs/operators.md``,
    "Upgrading a federation")."""

    #: Served to callers and used towards peers (the highest both speak). ``[2]`` keeps the node a
    #: version-2 node on the wire; ``[3]`` refuses every member still on version 2.
    versions: list[int] = Field(default_factory=lambda: sorted(SUPPORTED))

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("list at least one protocol version")
        unknown = sorted(set(value) - SUPPORTED)
        if unknown:
            spoken = ", ".join(str(v) for v in sorted(SUPPORTED))
            raise ValueError(f"protocol version {unknown[0]} is not one this node speaks ({spoken})")
        if len(set(value)) != len(value):
            raise ValueError("a protocol version is listed twice")
        return sorted(value)


class PeerEntry(_Section):
    """``[[peers]]``: one member node this node talks to."""

    id: str
    address: str
    #: More addresses of the same node (replicas behind one name, sharing one store): the channel
    #: balances calls over all of them (gRPC round_robin), so a replica that dies costs only its calls
    #: in flight.
    replicas: list[str] = Field(default_factory=list)
    amber_strict: bool = False
    server_name: str | None = None
    #: The peer's Ed25519 manifest-signing public key, 64 hex digits. When absent, the key the peer
    #: serves over mutual TLS on first contact is pinned in the store (trust on first use).
    signing_key: str | None = None
    #: This peer's own OPRF evaluations per kind per UTC day, agreed by both states for bulk screening;
    #: it replaces ``limits.oprf_daily_quota`` and takes the peer out of the holder-wide quota.
    oprf_daily_quota: int | None = Field(default=None, ge=0)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_country_code(value, what="peer id")

    @field_validator("signing_key")
    @classmethod
    def _signing_key(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ValueError("must be the peer's raw Ed25519 public key as 64 hex digits")
            return raw.hex()
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_address(address)
        return value

    @property
    def addresses(self) -> list[str]:
        """Every address of the peer: ``address`` first, then ``replicas``."""
        return [self.address, *self.replicas]

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name")
        return value


class NodeConfig(_Section):
    """The whole configuration of a node."""

    node: NodeSection
    store: StoreSection
    tls: TlsSection
    oprf: OprfSection = Field(default_factory=OprfSection)
    hmac: HmacSection
    publish: PublishSection = Field(default_factory=PublishSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    protocol: ProtocolSection = Field(default_factory=ProtocolSection)
    peers: list[PeerEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _defaults_in_node_dir(cls, data: Any) -> Any:
        """Default the store and the federation secret to files in ``node.dir``."""
        if not isinstance(data, dict):
            return data
        node = data.get("node")
        node_dir = node.get("dir", ".") if isinstance(node, dict) else "."
        if not isinstance(node_dir, str):
            return data  # node.dir's own validation reports it
        data = dict(data)
        store = data.setdefault("store", {})
        if isinstance(store, dict) and "url" not in store:
            data["store"] = {**store, "url": f"sqlite:///{PurePath(node_dir, DEFAULT_STORE_FILE)}"}
        hmac = data.setdefault("hmac", {})
        if isinstance(hmac, dict) and "federation_secret_file" not in hmac:
            data["hmac"] = {**hmac, "federation_secret_file": str(PurePath(node_dir, FEDERATION_SECRET_FILE))}
        return data

    @model_validator(mode="after")
    def _peers(self) -> NodeConfig:
        ids = [p.id for p in self.peers]
        if self.node.id in ids:
            raise ValueError(f"peers lists this node itself ({self.node.id})")
        if len(set(ids)) != len(ids):
            raise ValueError("a peer id is listed twice")
        return self

    def peer(self, node_id: str) -> PeerEntry | None:
        """The peer entry of ``node_id``, or None if it is not a configured peer."""
        return next((p for p in self.peers if p.id == node_id), None)


def _key_of(loc: tuple[int | str, ...]) -> str | None:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key or None


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    ctx_error = error.get("ctx", {}).get("error")
    if isinstance(ctx_error, ConfigError):
        return ctx_error.reason
    if ctx_error is not None:
        return str(ctx_error)
    value = error.get("input")
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {type(value).__name__} {shown}"


class ConfigProblems(ConfigError):
    """Every problem of one config file, each a :class:`ConfigError` naming the file and its key.

    ``str()`` is one line per problem (``<file>:<key>: <reason>``), so an operator fixes them all at once;
    ``key``, ``path`` and ``reason`` are the first problem's.
    """

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        if not problems:
            raise ValueError("ConfigProblems needs at least one problem")
        first = problems[0]
        super().__init__(first.reason, key=first.key, path=first.path)
        self.problems = list(problems)
        self.args = ("\n".join(str(problem) for problem in self.problems),)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's TOML configuration file.

    Raises:
        ConfigError: unreadable file or TOML syntax error (with its line), naming the file.
        ConfigProblems: unknown keys, wrong types or bad values: every one of them, each naming the file
            and the key (``limits.max_batch``, ``peers[1].address``), one line each.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc}", path=str(path)) from None
    try:
        return NodeConfig.model_validate(data, context={"base": path.resolve().parent})
    except ValidationError as exc:
        problems = [ConfigError(_reason(e), key=_key_of(e["loc"]), path=str(path)) for e in exc.errors()]
        node = data.get("node")
        bad_id = any(p.key == "node.id" for p in problems)
        if bad_id and isinstance(node, dict) and "country_region" not in node:
            # node.country_region defaulted to a bad node.id: one problem, reported under node.id
            problems = [p for p in problems if p.key != "node.country_region"]
        raise ConfigProblems(problems) from None


def _toml_list(values: Sequence[int]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def render_config_template(
    node_id: str,
    dir: str | Path = ".",
    *,
    listen: str = "0.0.0.0:7443",
    tls_dir: str | Path = "tls",
    peers: Sequence[tuple[str, str]] = (),
) -> str:
    """A complete, commented configuration that :func:`load_config` accepts.

    Args:
        node_id: this node's id (ISO 3166-1 alpha-2 code of its member state).
        dir: the node directory (keys, default store), relative to the config file or absolute.
        listen: address the server listens on.
        tls_dir: where ``petanda-node issue`` wrote ``ca.crt``, ``<id>.crt`` and ``<id>.key``.
        peers: ``(id, address)`` of each peer.

    Raises:
        ConfigError: an invalid node id, listen address, peer id or peer address.
    """
    check_country_code(node_id, what="node id")
    try:
        parse_address(listen, allow_port_zero=True)
        for peer_id, address in peers:
            check_country_code(peer_id, what="peer id")
            parse_address(address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    tls = PurePath(tls_dir)
    peer_blocks = "".join(
        f"\n[[peers]]\nid = {_s(pid)}\naddress = {_s(addr)}\namber_strict = false\n" for pid, addr in peers
    )
    return f"""\
# Petanda node configuration (TOML). Relative paths are relative to this file's directory.
# Every key is listed with its default; unknown keys are refused.

[node]
# This node's id: the ISO 3166-1 alpha-2 code of its member state; its peer certificate carries it.
id = {_s(node_id)}
# Node directory: signing.key, oprf/epoch-NNNN.key, hmac/federation.key and the default store.
dir = {_s(str(dir))}
# Address the gRPC server listens on: host:port, [v6]:port; port 0 picks a free port (tests).
listen = {_s(listen)}
# Region for phone numbers written without a country code (default: the node id).
country_region = {_s(node_id)}
# Serve gRPC server reflection (lets tools list the services); off in production.
reflection = false
# Seconds that in-flight calls get to finish on shutdown.
shutdown_grace_s = 10.0

[store]
# sqlite:///relative.db, sqlite:////absolute.db, or postgresql://user@host/db (several replicas share it).
url = {_s(f"sqlite:///{PurePath(str(dir), DEFAULT_STORE_FILE)}")}

[tls]
# The federation CA certificate: the only CA trusted for peers and people.
ca = {_s(str(tls / "ca.crt"))}
# This node's peer certificate: its DNS/IP SANs must name the address peers dial.
cert = {_s(str(tls / f"{node_id}.crt"))}
# The certificate's private key (mode 0600: refused if group or others may read it).
key = {_s(str(tls / f"{node_id}.key"))}
# The federation's CRL (crl.pem from `petanda-node ca revoke` / `ca crl`), re-read when it changes;
# "" for none. Peers also pass the newest CRL on at sync; the node keeps it in crl-newest.pem.
crl = ""

[oprf]
# Days an OPRF key is used before the next epoch's key replaces it.
epoch_days = 30
# Days the previous epoch's key still answers evaluations after a rotation.
grace_days = 7

[hmac]
# Kinds also published on the HMAC tier (opt-in): fast offline screening under a federation key.
kinds = []
# Every kind in kinds must be listed here too: every holder of the federation key can test ANY candidate
# of it offline, without quota or audit. No kind is exempt: ~1e9 on-chain wallet addresses fall to one
# core in minutes, CT-logged domains are public lists, phone numbers and accounts take seconds.
acknowledge_offline_testing = []
# The 32-byte federation secret (mode 0600): ONE for the whole federation. init wrote a random one;
# take the federation's with `petanda-node hmac import --replace FILE` (another member's `hmac export`)
# and compare `petanda-node hmac fingerprint` over the phone. Changing the secret or hmac.kinds takes
# effect at the next publication, which computes the HMAC digests of the indicators already stored.
federation_secret_file = {_s(str(PurePath(str(dir), FEDERATION_SECRET_FILE)))}

[publish]
# Bloom filter false-positive rate per lookup.
false_positive_rate = 1e-6
# Bits of digest prefix naming a metadata bucket (a peer fetching a bucket reveals only that prefix).
bucket_prefix_bits = 12
# Hours a signed manifest stays valid; peers refuse an expired one.
manifest_validity_hours = 48
# Publications kept and served (the current one and the ones before it, for peers mid-sync); older
# versions are deleted, so a retracted indicator cannot be matched through them.
keep_versions = 2
# Days after which retracted and expired indicators are deleted with their digests (audited, daily).
purge_after_days = 30

[limits]
# Largest gRPC message sent or accepted, in bytes.
max_message_bytes = 8388608
# Most indicators or OPRF elements in one request.
max_batch = 1000
# OPRF evaluations per second per peer and kind (token bucket refill rate).
oprf_rate_per_s = 100.0
# Token bucket size per peer and kind; at least max_batch.
oprf_burst = 2000
# OPRF evaluations per peer per kind per UTC day: the budget of an enumeration ([[peers]] may override).
oprf_daily_quota = 20000
# OPRF evaluations per kind per UTC day across all peers on the default quota (colluders share it).
oprf_holder_daily_quota = 100000
# Enumeration alert: a peer above this share of its daily quota on one kind ...
enumeration_alert_share = 0.5
# ... on this many consecutive UTC days,
enumeration_alert_days = 3
# or phone evaluations over 30 days above this share of the home numbering space.
enumeration_alert_space_share = 0.01
# Deadline of one call to a peer when checking indicators, in milliseconds.
check_deadline_ms = 5000
# Largest deadline an investigator may ask for in one check, in milliseconds.
max_check_deadline_ms = 60000
# Indicators checked per second per investigator (token bucket refill rate).
check_rate_per_s = 200.0
# Token bucket size per investigator; at least max_batch.
check_burst = 5000
# Indicators checked per investigator per UTC day.
check_daily_quota = 200000
# Calls per second per peer to any peer RPC (in-memory token bucket, per server process).
peer_rpc_rate_per_s = 20.0
# Token bucket size per peer for peer RPCs.
peer_rpc_burst = 200
# Sightings recorded per peer per UTC day.
sightings_daily = 1000
# Seconds between HTTP/2 keepalive pings on open calls.
keepalive_s = 60
# Size of a streamed filter chunk in bytes; at most max_message_bytes - 1024.
chunk_bytes = 1048576

[audit]
# Seconds between signed tree heads of the audit log.
tree_head_interval_s = 300
# Seconds between the aggregated entries (peer.reads) of repeated read-only peer calls.
aggregate_interval_s = 300
# Seconds an auditor waits between two tree heads signed on its demand (petanda audit fetch).
fresh_head_interval_s = 60

[sync]
# Seconds between pulls of every peer's manifest and filters.
interval_s = 60
# Deadline of one peer's sync in seconds.
timeout_s = 10.0

[protocol]
# Protocol versions this node serves and speaks (towards each peer: the highest both speak). During an
# upgrade of the federation keep the previous version listed until every member has upgraded; [2]
# keeps this node a version-2 node on the wire; dropping 2 refuses every member still on it.
versions = {_toml_list(sorted(SUPPORTED))}

# One [[peers]] table per member node; their certificates come from the federation CA.
# [[peers]]
# id = "SG"                        # the peer's node id (its certificate's identity)
# address = "petanda.csirt.sg:7443"
# amber_strict = false             # may receive AMBER+STRICT indicators
# server_name = "sg.peer.petanda"  # name to verify in its certificate (default <id>.peer.petanda)
# oprf_daily_quota = 200000        # agreed bulk screening: its own quota, outside the holder-wide one
{peer_blocks}"""
