"""Observed addresses: confirmation needs distinct observers; symmetric NATs show."""

from __future__ import annotations

from p2p.nat.observed import AddressesChanged, MappingChanged, ObservedAddresses, ObservedConfig

K = [bytes([i]) * 32 for i in range(8)]
PUB = ("192.0.2.1", 4000)


def test_one_observer_is_not_enough() -> None:
    obs = ObservedAddresses()
    assert not [
        e for e in obs.observe(K[1], "198.51.100.1", PUB, 0.0) if isinstance(e, AddressesChanged)
    ]
    assert obs.confirmed == ()
    assert obs.latest() == (PUB,)


def test_two_distinct_observers_confirm() -> None:
    obs = ObservedAddresses()
    obs.observe(K[1], "198.51.100.1", PUB, 0.0)
    effects = obs.observe(K[2], "198.51.100.2", PUB, 1.0)
    assert AddressesChanged((), (PUB,)) in effects
    assert MappingChanged("unknown", "endpoint_independent") in effects
    assert obs.confirmed == (PUB,)


def test_observers_sharing_an_ip_count_once() -> None:
    obs = ObservedAddresses()
    obs.observe(K[1], "198.51.100.1", PUB, 0.0)
    obs.observe(K[2], "198.51.100.1", PUB, 0.0)
    assert obs.confirmed == ()


def test_a_peer_repeating_itself_counts_once() -> None:
    obs = ObservedAddresses()
    for t in range(5):
        obs.observe(K[1], "198.51.100.1", PUB, float(t))
    assert obs.confirmed == ()


def test_endpoint_dependent_mapping_is_detected() -> None:
    obs = ObservedAddresses()
    obs.observe(K[1], "198.51.100.1", ("192.0.2.1", 40001), 0.0)
    effects = obs.observe(K[2], "198.51.100.2", ("192.0.2.1", 51234), 0.0)
    assert MappingChanged("unknown", "endpoint_dependent") in effects
    assert obs.confirmed == ()
    obs.observe(K[3], "198.51.100.3", ("192.0.2.1", 60000), 0.0)
    assert obs.mapping == "endpoint_dependent"


def test_reports_expire_and_reset_forgets() -> None:
    obs = ObservedAddresses(ObservedConfig(ttl=10.0))
    obs.observe(K[1], "198.51.100.1", PUB, 0.0)
    obs.observe(K[2], "198.51.100.2", PUB, 5.0)
    assert obs.tick(9.0) == [e for e in obs.tick(9.0)]  # idempotent
    assert obs.confirmed == (PUB,)
    effects = obs.tick(10.0)
    assert AddressesChanged((PUB,), ()) in effects
    obs.observe(K[1], "198.51.100.1", PUB, 11.0)
    obs.observe(K[2], "198.51.100.2", PUB, 11.0)
    assert AddressesChanged((PUB,), ()) in obs.reset()
    assert obs.latest() == ()


def test_address_change_is_reported() -> None:
    obs = ObservedAddresses()
    for k, host in ((K[1], "198.51.100.1"), (K[2], "198.51.100.2")):
        obs.observe(k, host, PUB, 0.0)
    new = ("192.0.2.9", 4000)
    obs.observe(K[1], "198.51.100.1", new, 1.0)
    effects = obs.observe(K[2], "198.51.100.2", new, 1.0)
    assert AddressesChanged((), (new,)) in effects
    assert obs.confirmed == (new,)
