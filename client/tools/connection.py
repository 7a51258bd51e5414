"""How the ``petanda`` CLI finds and calls its national node (an adapter: it imports ``grpc``).

Every command that talks to the node (``check``, ``sighting``, ``audit ...``) takes the same settings,
each from the first place that has it::

    --node HOST:PORT   --ca FILE   --cert FILE   --key FILE   --server-name NAME     (flags)
    PETANDA_NODE       PETANDA_CA  PETANDA_CERT  PETANDA_KEY  PETANDA_SERVER_NAME   (environment)
    node = "..."       ca = "..."  cert = "..."  key = "..."  server_name = "..."   (config file)

The config file is ``--config FILE``, else ``PETANDA_CONFIG``, else ``$XDG_CONFIG_HOME/petanda/client.toml``
(``~/.config/petanda/client.toml``); relative paths in it are relative to the file. Only the default file
may be absent. ``docs/investigators.md`` ("Connection settings") is the user's version of this.

Without a server name, the channel verifies the name ``<state>.peer.petanda`` (:func:`peer_server_name`)
in the node's certificate, ``<state>`` being the caller's own state as its certificate says: every node
certificate carries its node's name, so an investigator or auditor cannot be led to another member's
node. An explicit server name replaces that check (the operator then vouches for the name).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from client.protocol.errors import (
    ConfigError,
)
from client.transport.tls import identity_from_certificate, peer_server_name, secure_channel

__all__ = [
    "CONFIG_KEYS",
    "ENV",
    "Connection",
    "add_connection_arguments",
    "default_config_path",
    "open_channel",
    "resolve_connection",
]

#: Environment variable of each setting.
ENV: Final = {
    "node": "PETANDA_NODE",
    "ca": "PETANDA_CA",
    "cert": "PETANDA_CERT",
    "key": "PETANDA_KEY",
    "server_name": "PETANDA_SERVER_NAME",
    "config": "PETANDA_CONFIG",
}
#: Keys a config file may hold (any other key is refused, so that a typo is not silently ignored).
CONFIG_KEYS: Final = ("node", "ca", "cert", "key", "server_name")
_REQUIRED: Final = ("node", "ca", "cert", "key")
_WHAT: Final = {
    "node": "the national node's HOST:PORT",
    "ca": "the federation CA certificate",
    "cert": "your investigator or auditor certificate",
    "key": "your private key",
}


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the national node is and the mutual-TLS material to call it with.

    Attributes:
        target: ``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address).
        ca, cert, key: paths of the federation CA certificate, the caller's certificate and its key.
        server_name: the name to verify in the node's certificate; None: ``<own state>.peer.petanda``.
    """

    target: str
    ca: Path
    cert: Path
    key: Path
    server_name: str | None = None


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--node --ca --cert --key --server-name --config`` to a subcommand's parser."""
    group = parser.add_argument_group(
        "connection", "each flag overrides its PETANDA_* environment variable and the config file"
    )
    group.add_argument("--node", metavar="HOST:PORT", help="your national node (env PETANDA_NODE)")
    group.add_argument("--ca", metavar="FILE", help="federation CA certificate, PEM (env PETANDA_CA)")
    group.add_argument("--cert", metavar="FILE", help="your certificate, PEM (env PETANDA_CERT)")
    group.add_argument("--key", metavar="FILE", help="your private key, PEM, mode 0600 (env PETANDA_KEY)")
    group.add_argument(
        "--server-name",
        metavar="NAME",
        help="name to verify in the node's certificate (default: <your state>.peer.petanda; "
        "env PETANDA_SERVER_NAME)",
    )
    group.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with node, ca, cert, key (env PETANDA_CONFIG; default ~/.config/petanda/client.toml)",
    )


def default_config_path(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/petanda/client.toml``, with ``~/.config`` when XDG_CONFIG_HOME is unset."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "petanda" / "client.toml"


def _load_config(path: Path, *, required: bool) -> dict[str, str]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError("config file not found", path=str(path)) from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(path)) from None
    settings: dict[str, str] = {}
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(
                f"unknown setting; expected one of {', '.join(CONFIG_KEYS)}", key=key, path=str(path)
            )
        if not isinstance(value, str) or not value:
            raise ConfigError("must be a non-empty string", key=key, path=str(path))
        settings[key] = value
    return settings


def _check_target(target: str, source: str) -> str:
    host, sep, port = target.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    bad_host = not host or "[" in host or "]" in host or (":" in host and not bracketed)
    if not sep or bad_host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{target!r} is not HOST:PORT (an IPv6 address in brackets: [::1]:7443)", key=source
        )
    return target


def resolve_connection(
    args: argparse.Namespace, env: dict[str, str] | os._Environ[str] | None = None
) -> Connection:
    """Resolve the connection settings: flags, else environment, else config file.

    Args:
        args: parsed arguments of a parser given :func:`add_connection_arguments` (missing attributes are
            read as unset).
        env: the environment (default ``os.environ``).

    Raises:
        ConfigError: a required setting is nowhere (the message names each missing setting and the flag,
            variable and file key it can come from), the config file is unreadable or invalid, or the
            node address is not ``HOST:PORT``.
    """
    env = os.environ if env is None else env
    explicit = getattr(args, "config", None) or env.get(ENV["config"])
    config_path = Path(explicit).expanduser() if explicit else default_config_path(env)
    file_settings = _load_config(config_path, required=bool(explicit))
    found: dict[str, tuple[str, str]] = {}  # setting -> (value, where it came from)
    for key in CONFIG_KEYS:
        flag = getattr(args, key, None)
        if flag:
            found[key] = (flag, "--" + key.replace("_", "-"))
        elif env.get(ENV[key]):
            found[key] = (env[ENV[key]], ENV[key])
        elif key in file_settings:
            value = file_settings[key]
            if key in ("ca", "cert", "key"):
                value = os.fspath(config_path.parent / Path(value).expanduser())
            found[key] = (value, f"{config_path}:{key}")
    missing = [key for key in _REQUIRED if key not in found]
    if missing:
        where = "; ".join(f"{key} ({_WHAT[key]}): --{key} or {ENV[key]}" for key in missing)
        raise ConfigError(
            f"missing setting{'s' if len(missing) > 1 else ''} {', '.join(missing)}: give {where}, "
            f"or set {' and '.join(missing)} in {config_path}"
        )
    target = _check_target(*found["node"])
    server_name = found.get("server_name", (None, ""))[0]
    return Connection(
        target=target,
        ca=Path(found["ca"][0]).expanduser(),
        cert=Path(found["cert"][0]).expanduser(),
        key=Path(found["key"][0]).expanduser(),
        server_name=server_name,
    )


def open_channel(conn: Connection) -> grpc.Channel:
    """Open a mutual-TLS channel to the node (:func:`client.transport.tls.secure_channel`); close it after
    use.

    Without ``conn.server_name``, the node must present the name of the caller's own state
    (:func:`peer_server_name` of the state in ``conn.cert``), whatever host ``conn.target`` names.

    Raises:
        ConfigError: a certificate or key file is unreadable, invalid, too open, or they do not match,
            or the certificate carries no petanda identity.
    """
    server_name = conn.server_name
    if server_name is None:
        try:
            pem = conn.cert.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(conn.cert)) from None
        server_name = peer_server_name(identity_from_certificate(pem, source=str(conn.cert)).state)
    return secure_channel(conn.target, ca=conn.ca, cert=conn.cert, key=conn.key, server_name=server_name)
