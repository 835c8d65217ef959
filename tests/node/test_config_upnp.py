"""``[nat] upnp``: off by default, and only together with NAT traversal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagrider.node.config import ConfigError, parse_config

PEER: dict[str, Any] = {
    "node": {"role": "peer", "key_file": "p.key", "data_dir": "d", "listen": "192.0.2.9:7100"},
    "dht": {"bootstrap": ["ef" * 32 + "@192.0.2.7:7001"]},
}


def test_upnp_is_off_by_default() -> None:
    assert not parse_config({**PEER, "nat": {"enabled": True}}, Path("/b")).nat_upnp


def test_upnp_on() -> None:
    assert parse_config({**PEER, "nat": {"enabled": True, "upnp": True}}, Path("/b")).nat_upnp


def test_upnp_needs_nat_traversal() -> None:
    with pytest.raises(ConfigError, match=r"\[nat\] upnp = true needs"):
        parse_config({**PEER, "nat": {"upnp": True}}, Path("/b"))


def test_upnp_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="upnp"):
        parse_config({**PEER, "nat": {"enabled": True, "upnp": "yes"}}, Path("/b"))
