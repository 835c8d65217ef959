"""What a node advertises (never a private address to the world), its relay record,
and reachability behind a port mapping (the dialled address, not where it landed)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.nat import Send
from p2p.nat.advertise import (
    MAX_RELAYS,
    RelayRecordError,
    advertised_addrs,
    decode_relays,
    encode_relays,
    is_private,
)
from p2p.nat.messages import DialRequest, DialResponse, Status
from p2p.nat.reachability import ReachabilityChanged, ReachabilityClient
from p2p.upnp import UpnpConfig

LAN = ("10.1.0.2", 9000)
WAN = ("198.51.100.7", 9000)  # TEST-NET: global for this purpose
RELAY = ("198.51.100.2", 9000)
R1, R2 = b"\x01" * 32, b"\x02" * 32


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "172.16.3.4", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.1.1",
     "fd00::1", "fe80::1", "::1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_private_ranges(host: str) -> None:
    assert is_private(host)


@pytest.mark.parametrize("host", ["198.51.100.1", "203.0.113.5", "8.8.8.8", "2001:db8::1", "a.b"])
def test_global_or_named(host: str) -> None:
    assert not is_private(host)


def adv(**kw: object) -> tuple[tuple[str, int], ...]:
    args: dict[str, object] = {
        "listen": (LAN,),
        "explicit": False,
        "status": "unknown",
        "reachable": (),
        "observed": (),
        "relays": {},
    }
    args.update(kw)
    return advertised_addrs(**args)  # type: ignore[arg-type]


def test_private_listen_address_needs_lan_only_observers() -> None:
    assert adv() == ()  # nobody told us where they see us yet
    assert adv(observed=[WAN]) == ()  # a public peer sees our NAT: LAN address useless
    assert adv(observed=[("10.1.0.9", 9000)]) == (LAN,)  # a LAN-only mesh
    assert adv(observed=[("127.0.0.1", 1)], listen=[("127.0.0.1", 7000)]) == (("127.0.0.1", 7000),)
    assert adv(explicit=True, observed=[WAN]) == (LAN,)  # the operator's word


def test_public_listen_address_is_advertised_while_not_private() -> None:
    assert adv(listen=[WAN]) == (WAN,)
    assert adv(listen=[WAN], status="private", relays={R1: RELAY}) == (RELAY,)


def test_verified_mapping_comes_first() -> None:
    out = adv(status="public", reachable=[WAN], observed=[WAN])
    assert out == (WAN,)


def test_private_node_advertises_public_relays_only() -> None:
    relays = {R1: RELAY, R2: ("10.9.9.9", 1)}
    assert adv(status="private", relays=relays, observed=[("10.0.0.1", 1)]) == (RELAY,)
    assert adv(status="private", relays={R1: None}) == ()


addrs = st.tuples(
    st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    st.integers(1, 65535),
)


@given(st.dictionaries(st.binary(min_size=32, max_size=32), addrs, max_size=12))
def test_relay_record_round_trip(relays: dict[bytes, tuple[str, int]]) -> None:
    decoded = decode_relays(encode_relays(relays))
    public = {k: a for k, a in relays.items() if not is_private(a[0])}
    assert len(decoded) == min(len(public), MAX_RELAYS)
    assert all(public[k] == a for k, a in decoded.items())


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"a": 1}), "list"),
        (msgpack.packb([[b"k", "h", 1]]), "32 bytes"),
        (msgpack.packb([[b"k" * 32, "", 1]]), "host"),
        (msgpack.packb([[b"k" * 32, "h", 0]]), "port"),
        (msgpack.packb([[b"k" * 32, "h"]]), "key, host, port"),
        (msgpack.packb([[b"k" * 32, "h", 1]] * (MAX_RELAYS + 1)), "at most"),
    ],
)
def test_bad_relay_records_are_named(value: bytes, reason: str) -> None:
    with pytest.raises(RelayRecordError, match=reason):
        decode_relays(value)


def test_upnp_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lease"):
        UpnpConfig(lease=10)
    with pytest.raises(ValueError, match="timeouts"):
        UpnpConfig(search_timeout=0)


# -- reachability behind a port mapping ---------------------------------------------------


def dial_requests(effects: list[object]) -> dict[bytes, DialRequest]:
    return {
        e.peer: e.msg for e in effects if isinstance(e, Send) and isinstance(e.msg, DialRequest)
    }


def test_mapped_address_is_the_reachable_one() -> None:
    """The dial-back to the router's mapped port lands on our LAN address; reachable is
    what the server dialled (its DialResponse), whichever of the two arrives first."""
    c = ReachabilityClient(b"k" * 32)
    c.set_candidates([WAN], 0.0)
    reqs = dial_requests(c.set_servers([R1, R2], 0.0))
    (n1, n2) = (reqs[R1].nonce, reqs[R2].nonce)
    effects: list[object] = []
    effects += c.on_dial_back(n1, LAN, 1.0)
    effects += c.on_response(R1, DialResponse(n1, Status.OK, WAN), 1.0)
    effects += c.on_response(R2, DialResponse(n2, Status.OK, WAN), 1.0)  # response first
    assert c.status == "unknown"  # R2's dial-back not seen yet
    effects += c.on_dial_back(n2, LAN, 1.1)
    assert ReachabilityChanged("unknown", "public", (WAN,)) in effects
    assert c.reachable == (WAN,)


def test_dial_back_without_response_counts_at_the_deadline() -> None:
    c = ReachabilityClient(b"k" * 32)
    c.set_candidates([WAN], 0.0)
    reqs = dial_requests(c.set_servers([R1, R2], 0.0))
    for req in reqs.values():
        c.on_dial_back(req.nonce, LAN, 1.0)
    assert c.status == "unknown"
    c.tick(1000.0)
    assert c.status == "public" and c.reachable == (LAN,)


def test_server_known_late_joins_the_running_round() -> None:
    """A round started with one server (a candidate known before the second server's
    link) asks the second one too, so it can still reach min_agree."""
    c = ReachabilityClient(b"k" * 32)
    c.set_candidates([WAN], 0.0)
    first = dial_requests(c.set_servers([R1], 0.0))
    second = dial_requests(c.set_servers([R1, R2], 0.5))
    assert set(first) == {R1} and set(second) == {R2}
    for server, req in (*first.items(), *second.items()):
        c.on_dial_back(req.nonce, LAN, 1.0)
        c.on_response(server, DialResponse(req.nonce, Status.OK, WAN), 1.0)
    assert c.status == "public"
