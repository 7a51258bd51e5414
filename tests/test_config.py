"""The node's TOML configuration: every error names its key and its file; the template loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from client.protocol.errors import ConfigError
from node.config import (
    ConfigProblems,
    FeedEntry,
    NodeConfig,
    load_config,
    parse_address,
    render_config_template,
)

MINIMAL = """\
[node]
id = "MY"
[tls]
ca = "tls/ca.crt"
cert = "tls/MY.crt"
key = "tls/MY.key"
"""


FEED = '[[feeds]]\nname = "th"\ntype = "taxii"\n'


def test_feeds(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    config = load_config(
        _write(
            tmp_path,
            MINIMAL
            + FEED
            + 'url = "https://taxii.example/api1/collections/c1"\nusername = "me"\n'
            + 'password_file = "secrets/taxii.password"\nca = ""\n'
            + '[[feeds]]\nname = "misp-1"\ntype = "misp"\nurl = "https://misp.example"\n'
            + 'api_key_file = "secrets/misp.key"\nto_ids_only = false\npage_size = 50\n',
        )
    )
    taxii, misp = config.feeds
    assert taxii.url == "https://taxii.example/api1/collections/c1/" and taxii.ca is None
    assert taxii.password_file == tmp_path / "secrets" / "taxii.password"
    assert (taxii.interval_s, taxii.tlp, taxii.page_size) == (300, "AMBER", 500)
    assert misp.api_key_file == tmp_path / "secrets" / "misp.key" and not misp.to_ids_only


def _write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.path == str(path)
    assert str(err.value).startswith(f"{path}:")
    return err.value


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.node.dir == tmp_path
    assert config.node.country_region == "MY"
    assert config.node.listen_port == 7443
    assert config.node.reflection is False
    assert config.store.url == f"sqlite:///{tmp_path}/petanda.db"
    assert config.store.sqlite_path == tmp_path / "petanda.db"
    assert config.tls.key == tmp_path / "tls" / "MY.key"
    assert config.hmac.kinds == []
    assert config.hmac.federation_secret_file == tmp_path / "hmac" / "federation.key"
    assert config.limits.max_batch == 1000
    assert config.limits.keepalive_ms == 60_000
    assert config.publish.false_positive_rate == 1e-6
    assert config.peers == []


def test_relative_paths_follow_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    path = _write(tmp_path / "etc", MINIMAL.replace('id = "MY"', 'id = "MY"\ndir = "../state"'))
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.node.dir == tmp_path / "etc" / ".." / "state"
    assert config.store.sqlite_path == tmp_path / "etc" / ".." / "state" / "petanda.db"
    assert config.tls.ca == tmp_path / "etc" / "tls" / "ca.crt"


def test_absolute_paths_and_postgres(tmp_path: Path) -> None:
    text = MINIMAL.replace('ca = "tls/ca.crt"', 'ca = "/etc/petanda/ca.crt"') + (
        '[store]\nurl = "postgresql://petanda@db.internal/petanda"\n'
    )
    config = load_config(_write(tmp_path, text))
    assert config.tls.ca == Path("/etc/petanda/ca.crt")
    assert config.store.url == "postgresql://petanda@db.internal/petanda"
    assert config.store.sqlite_path is None


def test_peers(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[[peers]]\nid = "SG"\naddress = "sg.example:7443"\namber_strict = true\n'
        '[[peers]]\nid = "TH"\naddress = "[2001:db8::1]:7443"\nserver_name = "th.example"\n'
    )
    config = load_config(_write(tmp_path, text))
    assert [(p.id, p.amber_strict) for p in config.peers] == [("SG", True), ("TH", False)]
    sg = config.peer("SG")
    assert sg is not None and sg.address == "sg.example:7443"
    assert config.peer("ID") is None


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (MINIMAL + "[limits]\nmax_batchh = 10\n", "limits.max_batchh", "unknown key"),
        (MINIMAL + "[limitz]\n", "limitz", "unknown key"),
        (MINIMAL + '[limits]\nmax_batch = "1000"\n', "limits.max_batch", "valid integer, got str '1000'"),
        (MINIMAL + "[limits]\nmax_batch = 0\n", "limits.max_batch", "greater than or equal to 1"),
        (MINIMAL + "[limits]\nmax_batch = 1.5\n", "limits.max_batch", "valid integer"),
        (MINIMAL + "[node.x]\n", "node.x", "unknown key"),
        (MINIMAL.replace('"MY"', '"my"'), "node.id", "node id 'my' is not an ISO 3166-1 alpha-2"),
        (MINIMAL.replace('"MY"', '"MY"\nlisten = "localhost"'), "node.listen", "is not host:port"),
        (MINIMAL.replace('"MY"', '"MY"\nlisten = "::1:7443"'), "node.listen", "must be in brackets"),
        (MINIMAL.replace('"MY"', '"MY"\nlisten = "h:70000"'), "node.listen", "invalid port"),
        (MINIMAL.replace('"MY"', '"MY"\nlisten = "bad host:1"'), "node.listen", "invalid host"),
        (MINIMAL.replace('"MY"', '"MY"\nreflection = "yes"'), "node.reflection", "valid boolean"),
        (
            MINIMAL.replace('"MY"', '"MY"\ncountry_region = "ZZ"'),
            "node.country_region",
            "not a phone-number region",
        ),
        (MINIMAL.replace('key = "tls/MY.key"\n', ""), "tls.key", "missing required key"),
        ('[tls]\nca = "a"\ncert = "b"\nkey = "c"\n', "node", "missing required key"),
        (MINIMAL + '[store]\nurl = "mysql://x"\n', "store.url", "expected sqlite:///"),
        (MINIMAL + "[oprf]\nepoch_days = 7\ngrace_days = 8\n", "oprf", "grace_days (8) must not exceed"),
        (MINIMAL + '[hmac]\nkinds = ["wallet"]\n', "hmac.kinds", "unknown kind 'wallet'"),
        (MINIMAL + '[hmac]\nkinds = ["url", "url"]\n', "hmac.kinds", "listed twice"),
        (MINIMAL + '[hmac]\nkinds = ["phone"]\n', "hmac", "phone on the HMAC tier is not acknowledged"),
        (MINIMAL + "[publish]\nfalse_positive_rate = 0\n", "publish.false_positive_rate", "greater than 0"),
        (MINIMAL + "[limits]\nmax_batch = 5000\n", "limits", "oprf_burst (2000) must be at least max_batch"),
        (MINIMAL + "[limits]\nchunk_bytes = 8388608\n", "limits", "chunk_bytes (8388608) must leave"),
        (MINIMAL + '[[peers]]\nid = "SG"\naddress = "sg.example"\n', "peers[0].address", "is not host:port"),
        (MINIMAL + '[[peers]]\nid = "SG"\naddress = "sg.example:0"\n', "peers[0].address", "port 0"),
        (
            MINIMAL + '[[peers]]\nid = "SG"\naddress = "a:1"\n[[peers]]\nid = "XX"\naddress = "b:1"\n',
            "peers[1].id",
            "peer id 'XX'",
        ),
        (MINIMAL + '[[peers]]\nid = "MY"\naddress = "a:1"\n', None, "lists this node itself"),
        (MINIMAL + '[[peers]]\nid = "SG"\naddress = "a:1"\nfoo = 1\n', "peers[0].foo", "unknown key"),
        (MINIMAL + FEED + 'url = "http://t.example/c/"\n', "feeds[0].url", "must be an https:// URL"),
        (MINIMAL + FEED + 'url = "https://u:p@t.example/c/"\n', "feeds[0].url", "must not carry credentials"),
        (
            MINIMAL + FEED.replace("taxii", "csv") + 'url = "https://t/"\n',
            "feeds[0].type",
            "unknown feed type",
        ),
        (MINIMAL + FEED + 'url = "https://t/"\nusername = "u"\n', "feeds[0]", "go together"),
        (MINIMAL + FEED + 'url = "https://t/"\ntimeout_s = 0\n', "feeds[0].timeout_s", "greater than 0"),
        (MINIMAL + FEED + 'url = "https://t/"\ntlp = "purple"\n', "feeds[0].tlp", "unknown TLP level"),
        (MINIMAL + FEED.replace('"taxii"', '"misp"') + 'url = "https://m/"\n', "feeds[0]", "api_key_file"),
        (MINIMAL + (FEED + 'url = "https://t/"\n') * 2, None, "a feed name is listed twice"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, key: str | None, reason: str) -> None:
    path = _write(tmp_path, text)
    error = _error(path)
    assert error.key == key
    assert reason in error.reason
    assert "\n" not in str(error)


def test_hmac_kinds_opt_in_with_an_acknowledgement_per_kind(tmp_path: Path) -> None:
    ack = 'acknowledge_offline_testing = ["crypto_wallet", "phone"]\n'
    text = MINIMAL + '[hmac]\nkinds = ["phone", "crypto_wallet"]\n' + ack
    assert load_config(_write(tmp_path, text)).hmac.kinds == ["phone", "crypto_wallet"]


def test_several_errors_are_all_reported_one_line_each(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "[limits]\nmax_batch = 0\nkeepalive_s = 1\n")
    error = _error(path)
    assert isinstance(error, ConfigProblems)
    assert error.key == "limits.max_batch"  # the first problem's
    assert [p.key for p in error.problems] == ["limits.max_batch", "limits.keepalive_s"]
    lines = str(error).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}:limits.") for line in lines)


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    error = _error(_write(tmp_path, MINIMAL + "\n[limits]\nmax_batch = \n"))
    assert re.search(r"TOML syntax error: .*line 9", error.reason)


def test_missing_file(tmp_path: Path) -> None:
    error = _error(tmp_path / "absent.toml")
    assert error.reason == "cannot read: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(b'[node]\nid = "\xff"\n')
    assert "not UTF-8" in _error(path).reason


def test_template_loads(tmp_path: Path) -> None:
    text = render_config_template("PH", "state", listen="127.0.0.1:0", peers=[("SG", "sg.example:7443")])
    config = load_config(_write(tmp_path, text))
    assert config.node.id == "PH"
    assert config.node.dir == tmp_path / "state"
    assert config.node.listen_port == 0
    assert config.tls.cert == tmp_path / "tls" / "PH.crt"
    assert config.store.sqlite_path == tmp_path / "state" / "petanda.db"
    assert [p.id for p in config.peers] == ["SG"]
    # Every value the template spells out is the model's default.
    assert config == load_config(
        _write(
            tmp_path,
            MINIMAL.replace("MY", "PH").replace('"PH"', '"PH"\ndir = "state"\nlisten = "127.0.0.1:0"')
            + '[[peers]]\nid = "SG"\naddress = "sg.example:7443"\n',
            "min.toml",
        )
    )


def test_template_spells_out_and_comments_every_key(tmp_path: Path) -> None:
    text = render_config_template("MY")
    data = tomllib.loads(text)

    lines = text.splitlines()
    for section, field in NodeConfig.model_fields.items():
        if section in ("peers", "feeds"):
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        start = lines.index(f"[{section}]")
        for name in model.model_fields:
            assert name in data[section], f"template lacks {section}.{name}"
            at = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{name} = "))
            assert lines[at - 1].startswith("# "), f"{section}.{name} has no comment of its own"
    # The commented-out peer example names every key of a peer entry.
    for name in ("id", "address", "amber_strict", "server_name"):
        assert f"# {name} = " in text
    # ... and the commented-out feed example every key of a feed.
    for name in FeedEntry.model_fields:
        assert f"# {name} = " in text, f"the [[feeds]] example lacks {name}"


def test_template_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="node id"):
        render_config_template("Malaysia")
    with pytest.raises(ConfigError, match="host:port"):
        render_config_template("MY", peers=[("SG", "sg.example")])


def test_template_escapes_strings(tmp_path: Path) -> None:
    odd = 'd"ir\\ with ünïcode'
    config = load_config(_write(tmp_path, render_config_template("MY", odd)))
    assert config.node.dir == tmp_path / odd


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("a.example:1", ("a.example", 1)),
        ("[::1]:7443", ("[::1]", 7443)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["a:", ":1", "a:-1", "a:１", "[zz]:1", "1.2.3:1", "a_b:1", "a..b:1"])
def test_parse_address_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_the_template_lists_the_pruning_and_limit_keys_and_limits_stay_coherent(tmp_path: Path) -> None:
    from node.config import LimitsSection

    text = render_config_template("MY")
    for key in (
        "keep_versions = 2",
        "purge_after_days = 30",
        "peer_rpc_rate_per_s = 20.0",
        "peer_rpc_burst = 200",
        "sightings_daily = 1000",
        "check_rate_per_s = 200.0",
        "check_burst = 5000",
        "check_daily_quota = 200000",
        "max_check_deadline_ms = 60000",
    ):
        assert f"\n{key}\n" in text, key
    path = tmp_path / "node.toml"
    path.write_text(text)
    config = load_config(path)
    assert (config.publish.keep_versions, config.limits.peer_rpc_burst) == (2, 200)
    with pytest.raises(ValueError, match="check_burst"):
        LimitsSection(max_batch=100, check_burst=50)
    with pytest.raises(ValueError, match="max_check_deadline_ms"):
        LimitsSection(check_deadline_ms=5000, max_check_deadline_ms=1000)
