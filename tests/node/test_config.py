"""Node configuration: every problem is a ConfigError naming the key; defaults are sane."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagrider.node.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).parents[2] / "configs" / "example-node.toml"
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


def test_byzantine_bounds_defaults_and_values() -> None:
    cfg = parse_config(BASE, Path("/base"))
    p = cfg.parameters()
    assert (p.future_rounds, p.peer_budget_bytes) == (200, 64 * 1024 * 1024)
    assert p.response_budget_bytes == 16 * 1024 * 1024 and cfg.idle_round_interval == 0.5
    assert p.limits.max_block_bytes == 1024 * 1024
    consensus = {
        "future_rounds": 300,
        "peer_budget_mib": 32,
        "response_budget_mib": 8,
        "max_block_kib": 512,
        "idle_round_ms": 800,
    }
    p = parse_config(_with(consensus=consensus), Path("/base")).parameters()
    assert (p.future_rounds, p.peer_budget_bytes) == (300, 32 * 1024 * 1024)
    assert p.response_budget_bytes == 8 * 1024 * 1024
    assert p.limits.max_block_bytes == 512 * 1024


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
        (_with(consensus={"idle_round_ms": -1}), "idle_round_ms must be >= 0"),
        (_with(consensus={"future_rounds": 10}), "future_rounds must be >= gc_depth"),
        (_with(consensus={"peer_budget_mib": 1}), "peer_budget_bytes must hold two"),
        (_with(consensus={"max_block_kib": 1}), "max_block_bytes (1024) must be >="),
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


PEER: dict[str, Any] = {
    "node": {"role": "peer", "key_file": "p.key", "data_dir": "d", "listen": "192.0.2.9:7100"},
    "dht": {"bootstrap": ["ef" * 32 + "@192.0.2.7:7001"]},
}


def test_mesh_defaults_for_a_member() -> None:
    cfg = parse_config(BASE, Path("/base"))
    assert cfg.role == "member" and not cfg.is_peer
    assert cfg.dht_enabled and cfg.dht_k == 20 and cfg.dht_alpha == 3
    assert cfg.dht_disjoint_paths == 1 and cfg.dht_mode == "auto"
    assert cfg.content_enabled and cfg.content_chunk_size == 1024 * 1024


def test_peer_role() -> None:
    cfg = parse_config(
        {
            **PEER,
            "dht": {
                **PEER["dht"],
                "k": 16,
                "alpha": 4,
                "disjoint_paths": 3,
                "mode": "client",
                "advertise": ["203.0.113.9:7100"],
            },
            "content": {"chunk_size_kib": 256, "max_blob_mib": 1024, "max_upload_mib": 512},
        },
        Path("/base"),
    )
    assert cfg.is_peer and cfg.committee_file is None and cfg.listen == ("192.0.2.9", 7100)
    assert cfg.dht_bootstrap == {bytes.fromhex("ef" * 32): ("192.0.2.7", 7001)}
    assert (cfg.dht_k, cfg.dht_alpha, cfg.dht_disjoint_paths) == (16, 4, 3)
    assert cfg.dht_mode == "client" and cfg.dht_advertise == (("203.0.113.9", 7100),)
    assert cfg.content_chunk_size == 256 * 1024
    assert cfg.content_max_blob_bytes == 1024**3 and cfg.content_max_upload_bytes == 512 * 1024**2


def test_role_override_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(
        '[node]\nkey_file = "p.key"\ndata_dir = "d"\nlisten = "127.0.0.1:1"\n'
        f'[dht]\nbootstrap = ["{"ab" * 32}@127.0.0.1:2"]\n'
    )
    with pytest.raises(ConfigError, match="committee_file is required"):
        load_config(path)
    assert load_config(path, "peer").is_peer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node": {**PEER["node"], "role": "observer"}}, "role must be one of"),
        ({"node": {k: v for k, v in PEER["node"].items() if k != "listen"}}, "listen is required"),
        ({"dht": {}}, "[dht] bootstrap is required for a peer"),
        ({"dht": {**PEER["dht"], "enabled": False}}, "a peer only exists to serve the mesh"),
        ({"dht": {**PEER["dht"], "k": 0}}, "[dht] k must be in [1, 64]"),
        ({"dht": {**PEER["dht"], "alpha": 99}}, "[dht] alpha must be in [1, 16]"),
        ({"dht": {**PEER["dht"], "disjoint_paths": 30}}, "disjoint_paths must be in [1, k=20]"),
        ({"dht": {**PEER["dht"], "mode": "both"}}, "mode must be one of"),
        ({"dht": {"bootstrap": ["zz@1.2.3.4:5"]}}, 'is not "<64 hex digits>@host:port"'),
        ({"dht": {**PEER["dht"], "advertise": "1.2.3.4:5"}}, "must be a list"),
        ({"content": {"chunk_size_kib": 100}}, "power of two in [64, 4096]"),
        ({"content": {"chunk_size_kib": 8192}}, "power of two in [64, 4096]"),
        ({"content": {"max_blob_mib": 0}}, "must be > 0"),
        ({"content": {"chunks": 1}}, "[content] unknown keys ['chunks']"),
        ({"dht": {**PEER["dht"], "advertise": ["0.0.0.0:1"]}}, "must be an IP address others"),
        ({"dht": {**PEER["dht"], "advertise": ["peer.example:1"]}}, "not a name"),
    ],
)
def test_bad_mesh_sections_are_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**PEER, **change}, Path("/base"))
    assert message in str(info.value)


def test_a_peer_on_a_wildcard_address_must_say_what_to_advertise() -> None:
    raw = {**PEER, "node": {**PEER["node"], "listen": "0.0.0.0:7100"}}
    with pytest.raises(ConfigError, match="advertise is required"):
        parse_config(raw, Path("/base"))
    raw["dht"] = {**PEER["dht"], "advertise": ["198.51.100.4:7100"]}
    assert parse_config(raw, Path("/base")).dht_advertise == (("198.51.100.4", 7100),)


def test_example_peer_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[2] / "configs" / "example-peer.toml")
    assert cfg.is_peer and cfg.committee_file is not None and len(cfg.dht_bootstrap) == 1


def test_keep_log_entries_defaults_to_the_whole_log() -> None:
    assert parse_config(BASE, Path("/base")).keep_log_entries == 0
    cfg = parse_config(_with(storage={"keep_log_entries": 1_000_000}), Path("/base"))
    assert cfg.keep_log_entries == 1_000_000
    assert load_config(EXAMPLE).keep_log_entries == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, r"\[storage\] keep_log_entries must be >= 0 \(0 keeps the whole log\), got -1"),
        ("1000", "keep_log_entries must be an integer, got '1000'"),
        (1.5, "keep_log_entries must be an integer, got 1.5"),
        (True, "keep_log_entries must be an integer, got True"),
    ],
)
def test_bad_keep_log_entries_is_named(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_with(storage={"keep_log_entries": value}), Path("/base"))


def test_unknown_storage_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[storage\] unknown keys \['keep_log'\]"):
        parse_config(_with(storage={"keep_log": 5}), Path("/base"))
