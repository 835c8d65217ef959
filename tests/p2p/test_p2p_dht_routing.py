"""The k-bucket routing table: placement, LRU order, liveness checks, replacement, refresh."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from p2p.dht.keyspace import bucket_index, distance
from p2p.dht.peer import PeerInfo
from p2p.dht.routing import CheckLiveness, RoutingTable

SELF = PeerInfo(b"\x00" * 32)


def peer(n: int) -> PeerInfo:
    return PeerInfo(n.to_bytes(32, "big"), (("10.0.0.1", 1000 + n % 60000),))


def peers_in_bucket(index: int, count: int, start: int = 1) -> list[PeerInfo]:
    out = []
    for n in itertools.count(start):
        p = peer(n)
        if bucket_index(SELF.id, p.id) == index:
            out.append(p)
            if len(out) == count:
                return out
    raise AssertionError


def test_adds_until_full_then_asks_to_ping_the_oldest() -> None:
    t = RoutingTable(SELF.id, k=3)
    a, b, c, d, e = peers_in_bucket(255, 5)
    assert [t.seen(p, float(i)) for i, p in enumerate((a, b, c))] == [None, None, None]
    assert t.bucket(255) == [a, b, c]
    # a full bucket: the newcomer waits, the least recently seen must prove liveness
    assert t.seen(d, 10.0) == CheckLiveness(a)
    assert d not in t.bucket(255) and t.replacement_cache(255) == [d]
    assert t.seen(e, 11.0) is None  # one ping per bucket at a time
    assert t.replacement_cache(255) == [d, e]
    # a answers: it becomes the most recently seen; nobody is evicted
    assert t.seen(a, 12.0) is None
    assert t.bucket(255) == [b, c, a]
    # next newcomer: b is now the oldest
    f = peers_in_bucket(255, 6)[5]
    assert t.seen(f, 13.0) == CheckLiveness(b)
    # b fails its ping: with replacements waiting, one failure evicts; the freshest replaces it
    assert t.failed(b.key, 14.0) is True
    assert t.bucket(255) == [c, a, f]
    assert b.key not in t and f.key in t
    assert t.replacement_cache(255) == [d, e]


def test_seen_updates_addresses_and_order() -> None:
    t = RoutingTable(SELF.id, k=3)
    a, b = peers_in_bucket(255, 2)
    t.seen(a, 1.0)
    t.seen(b, 2.0)
    moved = PeerInfo(a.key, (("10.9.9.9", 9),))
    t.seen(moved, 3.0)
    assert t.bucket(255) == [b, moved]
    assert t.get(a.key) == moved


def test_failures_drop_after_max_without_replacements() -> None:
    t = RoutingTable(SELF.id, k=3, max_failures=3)
    (a,) = peers_in_bucket(255, 1)
    t.seen(a, 0.0)
    assert t.failed(a.key, 1.0) is False
    assert t.failed(a.key, 2.0) is False
    t.seen(a, 3.0)  # an answer resets the count
    assert t.failed(a.key, 4.0) is False
    assert t.failed(a.key, 5.0) is False
    assert t.failed(a.key, 6.0) is True
    assert len(t) == 0
    assert t.failed(a.key, 7.0) is False  # unknown now


def test_self_never_enters_and_remove() -> None:
    t = RoutingTable(SELF.id, k=3)
    assert t.seen(SELF, 0.0) is None and len(t) == 0
    (a,) = peers_in_bucket(254, 1)
    t.seen(a, 0.0)
    assert t.remove(a.key) is True and t.remove(a.key) is False


def test_closest_excludes() -> None:
    t = RoutingTable(SELF.id, k=20)
    ps = [peer(n) for n in range(1, 40)]
    for p in ps:
        t.seen(p, 0.0)
    target = peer(999).id
    got = t.closest(target, 5, exclude={ps[0].key})
    assert ps[0] not in got and len(got) == 5
    assert t.closest(target, 0) == []


def test_stale_buckets_targets_lie_in_their_buckets() -> None:
    t = RoutingTable(SELF.id, k=20, now=0.0)
    assert t.stale_buckets(100.0, 10.0, bytes(32)) == []  # empty table: nothing to refresh
    for n in range(1, 200):
        t.seen(peer(n), 0.0)
    low = min(t.bucket_sizes())
    nonce = bytes(range(32))
    targets = t.stale_buckets(100.0, 50.0, nonce)
    assert [bucket_index(SELF.id, x) for x in targets] == list(range(low, 256))
    assert t.stale_buckets(120.0, 50.0, nonce) == []  # just refreshed
    t.touch(targets[-1], 200.0)
    again = t.stale_buckets(160.0, 50.0, nonce)
    assert len(again) == len(targets) - 1 and targets[-1] not in again


@given(st.lists(st.integers(min_value=1, max_value=5000), max_size=300), st.integers(1, 8))
def test_closest_matches_brute_force(ns: list[int], k: int) -> None:
    t = RoutingTable(SELF.id, k=k)
    for i, n in enumerate(ns):
        t.seen(peer(n), float(i))
    entries = t.peers()
    for target in (SELF.id, peer(7777).id, peer(ns[0] if ns else 1).id):
        for count in (1, k, 3 * k):
            want = sorted(entries, key=lambda p: distance(p.id, target))[:count]
            assert t.closest(target, count) == want


class RoutingMachine(RuleBasedStateMachine):
    """Random seen/failed/remove sequences keep the table's invariants."""

    def __init__(self) -> None:
        super().__init__()
        self.table = RoutingTable(SELF.id, k=4, max_failures=2, replacements=3)
        self.now = 0.0
        self.pinging: dict[int, bytes] = {}

    @rule(n=st.integers(min_value=0, max_value=300))
    def see(self, n: int) -> None:
        self.now += 1
        p = SELF if n == 0 else peer(n)
        check = self.table.seen(p, self.now)
        if check is not None:
            index = bucket_index(SELF.id, check.peer.id)
            assert check.peer == self.table.bucket(index)[0]  # the least recently seen
            assert len(self.table.bucket(index)) == 4

    @precondition(lambda self: len(self.table) > 0)
    @rule(i=st.integers(min_value=0, max_value=1000))
    def fail(self, i: int) -> None:
        entries = self.table.peers()
        p = entries[i % len(entries)]
        self.now += 1
        before = len(self.table)
        dropped = self.table.failed(p.key, self.now)
        if dropped:
            assert p.key not in self.table
            assert len(self.table) in (before, before - 1)

    @precondition(lambda self: len(self.table) > 0)
    @rule(i=st.integers(min_value=0, max_value=1000))
    def remove(self, i: int) -> None:
        entries = self.table.peers()
        assert self.table.remove(entries[i % len(entries)].key)

    @invariant()
    def buckets_are_bounded_and_placed(self) -> None:
        total = 0
        for index, size in self.table.bucket_sizes().items():
            assert 0 < size <= 4
            total += size
            for p in self.table.bucket(index):
                assert bucket_index(SELF.id, p.id) == index
            for r in self.table.replacement_cache(index):
                assert bucket_index(SELF.id, r.id) == index
                assert r.key not in self.table
            assert len(self.table.replacement_cache(index)) <= 3
        assert total == len(self.table)
        assert SELF.key not in self.table

    @invariant()
    def closest_is_sorted_and_right(self) -> None:
        target = peer(4242).id
        entries = self.table.peers()
        want = sorted(entries, key=lambda p: distance(p.id, target))[:6]
        assert self.table.closest(target, 6) == want


TestRoutingMachine = RoutingMachine.TestCase


def test_sparse_buckets_for_the_join_refresh() -> None:
    t = RoutingTable(SELF.id, k=3, now=0.0)
    assert t.sparse_buckets(0.0, bytes(32)) == []
    for n in range(1, 400):
        t.seen(peer(n), 0.0)
    sizes = t.bucket_sizes()
    low = min(sizes)
    nonce = bytes(range(32))
    targets = t.sparse_buckets(5.0, nonce)
    want = [i for i in range(low, 256) if sizes.get(i, 0) < 3]
    assert [bucket_index(SELF.id, x) for x in targets] == want
    assert 255 not in want  # a full bucket needs no refresh
    above = t.sparse_buckets(5.0, nonce, above=250, fewer_than=1)
    assert [bucket_index(SELF.id, x) for x in above] == [
        i for i in range(251, 256) if i not in sizes
    ]
