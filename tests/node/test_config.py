"""Node configuration: every problem is a ConfigError naming the key; defaults are sane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagrider.node.config import ConfigError, load_config, parse_config

BASE: dict[str, Any] = {
    "node": {"key_file": "k", "committee_file": "c.json", "data_dir": "d"},
}


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, **sections}


def test_example_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[2] / "configs" / "example-node.toml")
    assert cfg.crdt_enabled and cfg.crdt_writers == {"*": ("committee",)}


def test_crdt_defaults_and_values() -> None:
    cfg = parse_config(BASE, Path("/base"))
    assert cfg.crdt_enabled and cfg.crdt_sync_interval == 2.0
    assert cfg.crdt_checkpoint_interval == 10.0 and cfg.crdt_writers == {"*": ("committee",)}
    key = "ab" * 32
    cfg = parse_config(
        _with(
            crdt={
                "enabled": False,
                "sync_interval_ms": 250,
                "checkpoint_interval_ms": 1500,
                "writers": {"cfg": ["committee", key], "*": []},
            }
        ),
        Path("/base"),
    )
    assert not cfg.crdt_enabled and cfg.crdt_sync_interval == 0.25
    assert cfg.crdt_checkpoint_interval == 1.5
    assert cfg.crdt_writers == {"cfg": ("committee", key), "*": ()}
    assert cfg.key_file == Path("/base/k")


@pytest.mark.parametrize(
    ("crdt", "message"),
    [
        ({"enabled": "yes"}, "enabled must be true or false"),
        ({"sync_interval_ms": 0}, "must be > 0"),
        ({"checkpoint_interval_ms": 1.5}, "checkpoint_interval_ms must be an integer"),
        ({"writers": ["committee"]}, "writers must be a table"),
        ({"writers": {"Bad NS": ["committee"]}}, "is not a namespace"),
        ({"writers": {"cfg": "committee"}}, "expected a list of keys"),
        ({"writers": {"cfg": ["abc"]}}, 'neither "committee" nor a 64-hex-digit'),
        ({"bogus": 1}, "[crdt] unknown keys ['bogus']"),
    ],
)
def test_bad_crdt_section_is_named(crdt: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(crdt=crdt), Path("/base"))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nodes": {}}, "unknown section [nodes]"),
        ({"node": {"key_file": "k", "committee_file": "c"}}, "[node] data_dir is required"),
        (_with(api={"listen": "nowhere"}), "must be 'host:port'"),
        (_with(consensus={"batch_delay_ms": -1}), "batch_delay_ms must be >= 0"),
        (_with(log={"format": "xml"}), "format must be one of"),
    ],
)
def test_other_errors_are_named(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, Path("/base"))
    assert message in str(info.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_nat_section() -> None:
    key = "cd" * 32
    cfg = parse_config(
        _with(
            nat={
                "enabled": True,
                "relays": [f"{key}@198.51.100.1:7001"],
                "offer_relay": False,
                "reserve": True,
                "dial_timeout_ms": 2500,
            }
        ),
        Path("/base"),
    )
    assert cfg.nat_enabled and cfg.nat_reserve and not cfg.nat_offer_relay
    assert cfg.nat_relays == {bytes.fromhex(key): ("198.51.100.1", 7001)}
    assert cfg.nat_dial_timeout == 2.5
    assert not parse_config(BASE, Path("/")).nat_enabled


@pytest.mark.parametrize(
    ("nat", "message"),
    [
        ({"relays": "x"}, "must be a list"),
        ({"relays": ["nokey@1.2.3.4:1"]}, 'is not "<64 hex digits>@host:port"'),
        ({"relays": ["cd" * 32 + "@nowhere"]}, "must be 'host:port'"),
        ({"reserve": 1}, "reserve must be true or false"),
        ({"punch": True}, "[nat] unknown keys ['punch']"),
    ],
)
def test_bad_nat_section_is_named(nat: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(nat=nat), Path("/base"))
    assert message in str(info.value)
