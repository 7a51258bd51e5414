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
import os
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
from node.keys import FEDERATION_SECRET_FILE, KEK_FILE

__all__ = [
    "AuditSection",
    "ConfigProblems",
    "FeedEntry",
    "HmacSection",
    "LimitsSection",
    "LoggingSection",
    "MetricsSection",
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
    """``[tls]``: the federation CA certificate, this node's peer certificate and key, the CRL, and the
    people-CA of the node's state (who may issue its investigators and auditors)."""

    ca: ConfigPath
    cert: ConfigPath
    key: ConfigPath
    #: The federation's CRL (PEM or DER, signed by the CA), re-read when it changes; ``""``: none.
    crl: ConfigPath | None = None
    #: The people-CA certificate of this node's state (signed by the federation CA, naming the state):
    #: the only issuer of the investigators and auditors the node serves; ``""``: none (no people served).
    people_ca: ConfigPath | None = None
    #: The people-CA's CRL (PEM or DER, signed by the people-CA), re-read when it changes; ``""``: none.
    people_crl: ConfigPath | None = None
    #: Migration from a single CA: also serve people whose certificates the federation CA issued
    #: directly. Off unless set: turn it off once every person holds a people-CA certificate.
    root_people: bool = False

    @field_validator("crl", "people_ca", "people_crl", mode="before")
    @classmethod
    def _no_crl(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _people_crl_needs_people_ca(self) -> TlsSection:
        if self.people_crl is not None and self.people_ca is None:
            raise ValueError("people_crl is the people-CA's CRL: set people_ca too")
        return self


class KeysSection(_Section):
    """``[keys]``: the key-encryption key (KEK) under which the node's OPRF keys are kept in the store
    (:mod:`node.keystore`). Every replica sharing a store holds the same KEK file."""

    kek_file: ConfigPath


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


class IngestSection(_Section):
    """``[ingest]``: how ``petanda-node ingest`` uses the machine."""

    #: Processes that check, canonicalise and digest the rows of a CSV or JSON-lines file (1: all in the
    #: ingesting process); 0, one per core.
    workers: int = Field(default=0, ge=0, le=256)

    def processes(self) -> int:
        """The number of worker processes: ``workers``, or one per core when it is 0."""
        return self.workers or max(1, os.cpu_count() or 1)


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsSection(_Section):
    """``[metrics]``: the Prometheus ``/metrics`` endpoint (plain HTTP, on a port of its own)."""

    enabled: bool = False
    listen: str = "127.0.0.1:9464"
    #: Listening beyond the loopback interface must be asked for: the series say which peers this
    #: node's investigators checked against and what they answered, and the endpoint has no TLS.
    allow_remote: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_address(value, allow_port_zero=True)
        return value

    @model_validator(mode="after")
    def _local(self) -> MetricsSection:
        host = parse_address(self.listen, allow_port_zero=True)[0]
        if not self.allow_remote and not _is_loopback(host):
            raise ValueError(
                f"listen {self.listen!r} is not a loopback address: the metrics say which peers this node's "
                "investigators checked and what they answered, over plain HTTP; keep 127.0.0.1 (scrape "
                "through an SSH tunnel or a local Prometheus), or set metrics.allow_remote = true"
            )
        return self


class LoggingSection(_Section):
    """``[logging]``: the format of the log on stderr (``--log-format`` overrides it)."""

    format: str = "text"

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError(f"unknown log format {value!r}; expected text or json")
        return value


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


_FEED_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


class FeedEntry(_Section):
    """``[[feeds]]``: a live feed the node polls (``petanda-node feed``, and ``serve`` in the background).

    ``type = "taxii"``: ``url`` is a TAXII 2.1 collection (``https://host/api-root/collections/ID/``);
    ``type = "misp"``: ``url`` is the MISP instance (``https://misp.example``). Secrets live in files
    (mode 0600), never in the config: ``password_file`` (TAXII basic auth, with ``username``) and
    ``api_key_file`` (MISP). ``docs/operators.md`` ("Live feeds") describes each key.
    """

    name: str
    type: str
    url: str
    interval_s: int = Field(default=300, ge=10, le=86_400)
    #: Connect and read timeout of each HTTP request, in seconds; a whole answer must come within 4x.
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    #: Seconds before the first retry of a failing feed; doubled at each failure up to ``interval_s``
    #: or ``max_backoff_s``, whichever is larger.
    retry_s: int = Field(default=30, ge=1, le=86_400)
    max_backoff_s: int = Field(default=3600, ge=1, le=86_400)
    #: Objects (TAXII) or events (MISP) asked for per request.
    page_size: int = Field(default=500, ge=1, le=10_000)
    #: Largest HTTP answer read; a larger one fails the poll (nothing of it is stored).
    max_response_bytes: int = Field(default=64 * 2**20, ge=64 * 1024, le=2**31)
    #: Largest STIX object or MISP event (as JSON) read; a larger one is refused with its id.
    max_object_bytes: int = Field(default=2**20, ge=1024, le=2**31)
    #: TLP of indicators the feed marks with none.
    tlp: str = "AMBER"
    username: str | None = None
    password_file: ConfigPath | None = None
    api_key_file: ConfigPath | None = None
    #: CA certificates that verify the server (PEM); None: the system's.
    ca: ConfigPath | None = None
    #: A client certificate and key (PEM) for servers that ask for one.
    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    #: MISP: ingest only attributes marked ``to_ids`` (the IDS flag).
    to_ids_only: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _FEED_NAME_RE.fullmatch(value):
            raise ValueError(
                "must be 1-40 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in ("taxii", "misp"):
            raise ValueError(f"unknown feed type {value!r}; expected taxii or misp")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL (credentials travel with every request)")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials: use username and password_file")
        return value if value.endswith("/") else value + "/"

    @field_validator("tlp")
    @classmethod
    def _tlp(cls, value: str) -> str:
        from client.protocol.errors import InputError
        from node.ingest.parsers import parse_tlp

        try:
            return parse_tlp(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("password_file", "api_key_file", "ca", "client_cert", "client_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _credentials(self) -> FeedEntry:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together (HTTP basic authentication)")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        if self.type == "misp" and self.api_key_file is None:
            raise ValueError("a misp feed needs api_key_file (a file holding the MISP API key)")
        if self.type == "taxii" and self.api_key_file is not None:
            raise ValueError(
                "api_key_file is for misp feeds; a TAXII server takes username and password_file"
            )
        return self


class NodeConfig(_Section):
    """The whole configuration of a node."""

    node: NodeSection
    store: StoreSection
    tls: TlsSection
    keys: KeysSection
    oprf: OprfSection = Field(default_factory=OprfSection)
    hmac: HmacSection
    publish: PublishSection = Field(default_factory=PublishSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    limits: LimitsSection = Field(default_factory=LimitsSection)
    audit: AuditSection = Field(default_factory=AuditSection)
    sync: SyncSection = Field(default_factory=SyncSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    protocol: ProtocolSection = Field(default_factory=ProtocolSection)
    peers: list[PeerEntry] = Field(default_factory=list)
    feeds: list[FeedEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _defaults_in_node_dir(cls, data: Any) -> Any:
        """Default the store, the KEK and the federation secret to files in ``node.dir``."""
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
        kek = data.setdefault("keys", {})
        if isinstance(kek, dict) and "kek_file" not in kek:
            data["keys"] = {**kek, "kek_file": str(PurePath(node_dir, KEK_FILE))}
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
        names = [f.name for f in self.feeds]
        if len(set(names)) != len(names):
            raise ValueError("a feed name is listed twice")
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
# Node directory: signing.key, kek.key, hmac/federation.key and the default store.
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
# The people-CA certificate of this state (people-ca.crt, from `petanda-node ca people-init` and the
# federation's `ca sign-people-ca`): the only issuer of the investigators and auditors this node serves.
# "" for none: the node then serves peers only.
people_ca = ""
# The people-CA's CRL (crl.pem in the people-CA directory, from `ca revoke --ca <people-CA dir>`),
# re-read when it changes; "" for none. It stays in the state: peers neither need nor pass it on.
people_crl = ""
# Migration from a single CA: also serve people whose certificates the federation CA issued directly.
# Turn it off once every person holds a certificate of the people-CA (docs/operators.md).
root_people = false

[keys]
# The key-encryption key (32 bytes, mode 0600): the node's OPRF keys live in the store, wrapped under it.
# Every replica sharing the store holds a copy of the SAME file; `petanda-node keys fingerprint` compares.
# Back it up apart from the store: a backup of the store without it holds no usable key.
kek_file = {_s(str(PurePath(str(dir), KEK_FILE)))}

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
# The 32-byte federation secret (mode 0600): ONE for the whole federation. init wrote a random one here;
# the first start wraps it into the store (under the KEK) and this file is no longer read after that.
# Take the federation's with `petanda-node hmac import --replace FILE` (another member's `hmac export`)
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

[ingest]
# Processes that check, canonicalise and digest the rows of a CSV or JSON-lines file while the ingesting
# process reads it and stores; 1 does everything in that process; 0, one per core.
workers = 0

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

[metrics]
# Serve Prometheus metrics at http://LISTEN/metrics (plain HTTP, a port of its own): sync age and
# failures per peer, evaluations served, checks and their latency, quota use, audit log size, alerts.
enabled = false
# host:port; a loopback address unless allow_remote (the series say what this node's checks found).
listen = "127.0.0.1:9464"
# Allow a listen address beyond the loopback interface (put it behind a firewall or a TLS proxy).
allow_remote = false

[logging]
# The log on stderr: "text" (one line per event) or "json" (one JSON object per line, with its fields).
format = "text"
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
{peer_blocks}
# One [[feeds]] table per live feed, polled by `serve` and by `petanda-node feed run`.
# [[feeds]]
# name = "national-taxii"          # a-z, 0-9, - and _: names the feed in status, logs and the audit log
# type = "taxii"                   # taxii (a TAXII 2.1 collection) or misp (a MISP instance)
# url = "https://taxii.example/api1/collections/COLLECTION-ID/"
# username = "petanda"             # HTTP basic authentication (TAXII), with password_file
# password_file = "secrets/taxii.password"   # mode 0600
# api_key_file = "secrets/misp.key"          # misp: the API key, mode 0600
# ca = ""                          # CA certificates that verify the server (default: the system's)
# client_cert = ""                 # a client certificate and its key, for servers that ask for one
# client_key = ""
# interval_s = 300                 # seconds between polls
# timeout_s = 30.0                 # connect and read timeout of each request
# retry_s = 30                     # first retry of a failing feed, doubled up to max_backoff_s
# max_backoff_s = 3600
# page_size = 500                  # objects (TAXII) or events (MISP) per request
# max_response_bytes = 67108864    # a larger answer fails the poll, nothing of it stored
# max_object_bytes = 1048576       # a larger object or event is refused, the feed goes on
# tlp = "AMBER"                    # TLP of indicators the feed marks with none
# to_ids_only = true               # misp: only attributes with the IDS flag
"""
