"""Parsing of mDNS announcements: anyone on the LAN can send one, so every field is
checked and anything else is an ``MdnsError`` naming the field (never another error)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.mdns import TXT_VERSION, Announcement, MdnsError, instance_name, parse_announcement

KEY = bytes(range(32))
GOOD = {b"v": TXT_VERSION.encode(), b"k": KEY.hex().encode()}


def test_a_valid_announcement() -> None:
    found = parse_announcement(GOOD, ["10.1.0.2", "fe80::1%eth0"], 7000)
    assert found == Announcement(KEY, (("10.1.0.2", 7000), ("fe80::1%eth0", 7000)))


@pytest.mark.parametrize(
    ("properties", "addresses", "port", "field"),
    [
        ({**GOOD, b"v": b"2"}, ["10.0.0.1"], 1, "v"),
        ({b"k": GOOD[b"k"]}, ["10.0.0.1"], 1, "v"),
        ({**GOOD, b"k": b"zz"}, ["10.0.0.1"], 1, "k"),
        ({**GOOD, b"k": KEY.hex().upper().encode()}, ["10.0.0.1"], 1, "k"),
        ({**GOOD, b"k": KEY[:31].hex().encode()}, ["10.0.0.1"], 1, "k"),
        ({**GOOD, b"k": None}, ["10.0.0.1"], 1, "k"),
        ({**GOOD, b"k": b"\xff" * 64}, ["10.0.0.1"], 1, "k"),
        (GOOD, ["10.0.0.1"], None, "port"),
        (GOOD, ["10.0.0.1"], 0, "port"),
        (GOOD, ["10.0.0.1"], 65536, "port"),
        (GOOD, ["host.local"], 1, "address"),
        (GOOD, ["0.0.0.0"], 1, "address"),
        (GOOD, ["224.0.0.251"], 1, "address"),
        (GOOD, ["10.0.0.1%eth0"], 1, "address"),
        (GOOD, [], 1, "address"),
    ],
)
def test_malformed_announcements_name_the_field(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int | None, field: str
) -> None:
    with pytest.raises(MdnsError) as err:
        parse_announcement(properties, addresses, port)
    assert err.value.field == field


@given(
    st.dictionaries(st.binary(max_size=4), st.none() | st.binary(max_size=80), max_size=4),
    st.lists(st.text(max_size=50), max_size=10),
    st.none() | st.integers(-5, 70_000),
)
def test_any_input_is_parsed_or_refused_with_mdns_error(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> None:
    try:
        found = parse_announcement({**GOOD, **properties}, addresses, port)
    except MdnsError:
        return
    assert len(found.key) == 32 and 0 < len(found.addrs) <= 8


def test_instance_names_fit_a_dns_label() -> None:
    assert len(instance_name(KEY).encode()) <= 63
