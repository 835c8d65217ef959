"""``[discovery]``: mDNS is off by default, replaces the bootstrap list of a peer, and
needs the mesh; every problem is a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dagrider.node.config import ConfigError, parse_config

MEMBER: dict[str, Any] = {"node": {"key_file": "k", "committee_file": "c.json", "data_dir": "d"}}
PEER: dict[str, Any] = {
    "node": {"role": "peer", "key_file": "k", "data_dir": "d", "listen": "10.0.0.2:7000"}
}


def test_off_by_default() -> None:
    assert not parse_config(MEMBER, Path("/b")).mdns_enabled


def test_a_peer_may_join_by_mdns_alone() -> None:
    with pytest.raises(ConfigError, match=r"\[dht\] bootstrap is required for a peer"):
        parse_config(PEER, Path("/b"))
    cfg = parse_config({**PEER, "discovery": {"mdns": True}}, Path("/b"))
    assert cfg.mdns_enabled and not cfg.dht_bootstrap


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"discovery": {"mdns": "yes"}}, "mdns must be true or false"),
        ({"discovery": {"upnp": True}}, r"\[discovery\] unknown keys \['upnp'\]"),
        ({"discovery": {"mdns": True}, "dht": {"enabled": False}}, "needs the mesh"),
    ],
)
def test_bad_discovery_settings(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**MEMBER, **sections}, Path("/b"))
