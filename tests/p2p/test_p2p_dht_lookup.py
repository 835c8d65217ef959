"""The iterative lookup against brute force, with dead, slow and lying peers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2p.dht.config import DhtConfig
from p2p.dht.keyspace import distance
from p2p.dht.lookup import Lookup
from p2p.dht.messages import (
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Pong,
    ProvidersResult,
    RecordResult,
    Request,
    Response,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import KeySigner, ProviderRecord, Record, sign_provider, sign_record

NOW = 1_700_000_000.0
AUTHOR = KeySigner(b"\x07" * 32)
Network = dict[bytes, Callable[[Request], Response | None]]


def peer(n: int) -> PeerInfo:
    return PeerInfo(n.to_bytes(32, "big"), (("10.0.0.1", 1 + n % 60000),))


def nearest(target: bytes, peers: list[PeerInfo], count: int) -> list[PeerInfo]:
    return sorted(peers, key=lambda p: distance(p.id, target))[:count]


def drive(lookup: Lookup, network: Network, now: float = NOW) -> list[bytes]:
    """Answer every query at once; returns the queried keys in order."""
    queried: list[bytes] = []
    request = lookup.request(None)
    while not lookup.done:
        batch = lookup.next_queries(now)
        assert batch, "a lookup with no query in flight must be done"
        for p in batch:
            queried.append(p.key)
            answer = network[p.key](request)
            if answer is None:
                lookup.on_failure(p.key, now)
            else:
                lookup.on_response(p.key, answer, now)
    assert lookup.next_queries(now) == []
    return queried


def honest_network(peers: list[PeerInfo], dead: set[bytes], answer_count: int) -> Network:
    def make(me: PeerInfo) -> Callable[[Request], Response | None]:
        def answer(req: Request) -> Response | None:
            if me.key in dead:
                return None
            assert isinstance(req, FindNode)
            others = [p for p in peers if p != me]  # a node does not name itself
            return Nodes(tuple(nearest(req.target, others, answer_count)))

        return answer

    return {p.key: make(p) for p in peers}


@given(
    n=st.integers(min_value=5, max_value=150),
    dead_every=st.integers(min_value=2, max_value=10),
    k=st.integers(min_value=1, max_value=12),
    alpha=st.integers(min_value=1, max_value=4),
    paths=st.integers(min_value=1, max_value=3),
    t=st.integers(min_value=10_000, max_value=20_000),
)
def test_finds_the_k_nearest_live_peers(
    n: int, dead_every: int, k: int, alpha: int, paths: int, t: int
) -> None:
    peers = [peer(i) for i in range(1, n + 1)]
    dead = {p.key for i, p in enumerate(peers) if i % dead_every == 1}
    live = [p for p in peers if p.key not in dead]
    target = peer(t).id
    # every peer answers with enough nearest peers that dead ones cannot hide live ones
    network = honest_network(peers, dead, k + len(dead))
    seeds = peers[:3]
    lookup = Lookup(target, seeds, k=k, alpha=alpha, disjoint_paths=paths)
    queried = drive(lookup, network)
    assert len(queried) == len(set(queried)), "a peer is queried at most once"
    result = lookup.result
    if any(s.key not in dead for s in seeds):
        assert list(result.closest) == nearest(target, live, k)
    assert result.queries == len(queried)
    assert result.failures == sum(1 for q in queried if q in dead)
    assert set(p.key for p in lookup.responded) == set(q for q in queried if q not in dead)


def test_no_seeds_is_done_at_once() -> None:
    lookup = Lookup(bytes(32), [])
    assert lookup.done and lookup.next_queries(NOW) == []
    assert lookup.result.closest == () and lookup.result.hops == 0


def test_seeds_exclude_self_and_duplicates() -> None:
    me = peer(1)
    lookup = Lookup(bytes(32), [me, peer(2), peer(2)], self_key=me.key, alpha=5)
    assert lookup.next_queries(NOW) == [peer(2)]


def test_slow_queries_stop_counting_toward_alpha() -> None:
    peers = [peer(i) for i in range(1, 6)]
    lookup = Lookup(bytes(32), peers, alpha=1, slow_after=1.0)
    first = lookup.next_queries(NOW)
    assert len(first) == 1
    assert lookup.next_queries(NOW + 0.5) == []  # alpha = 1 is busy
    assert lookup.next_deadline() == NOW + 1.0
    second = lookup.next_queries(NOW + 1.0)  # the first one is slow now
    assert len(second) == 1 and second != first
    assert {p.key for p in lookup.in_flight()} == {first[0].key, second[0].key}
    # the slow one may still answer, and it counts
    lookup.on_response(first[0].key, Nodes(()), NOW + 1.5)
    assert first[0] in lookup.responded
    assert not lookup.done  # the second is still in flight among the k nearest
    lookup.on_failure(second[0].key, NOW + 2.0)
    assert lookup.result.failures == 1


def test_wrong_answers_late_answers_and_strangers() -> None:
    a, b = peer(1), peer(2)
    lookup = Lookup(bytes(32), [a, b], alpha=2)
    lookup.next_queries(NOW)
    lookup.on_response(a.key, Pong(), NOW)  # wrong type: a failure
    lookup.on_response(a.key, Nodes(()), NOW)  # late: ignored
    lookup.on_response(peer(9).key, Nodes(()), NOW)  # never asked: ignored
    lookup.on_failure(peer(9).key, NOW)
    lookup.on_response(b.key, Nodes((PeerInfo(b"z" * 32),)), NOW)  # no addresses: not used
    assert lookup.done
    r = lookup.result
    assert r.failures == 1 and r.closest == (b,) and r.queries == 2


def test_hops_count_path_depth() -> None:
    chain = [peer(i) for i in range(1, 5)]
    target = bytes(32)

    def make(i: int) -> Callable[[Request], Response | None]:
        return lambda _req: Nodes((chain[i + 1],) if i + 1 < len(chain) else ())

    network = {chain[i].key: make(i) for i in range(len(chain))}
    lookup = Lookup(target, [chain[0]], alpha=1)
    drive(lookup, network)
    assert lookup.result.hops == 4


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Lookup(b"short", [])
    with pytest.raises(ValueError):
        Lookup(bytes(32), [], kind="values")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Lookup(bytes(32), [], alpha=0)
    cfg = DhtConfig(k=5, alpha=2, disjoint_paths=2, quorum=2)
    lk = Lookup.from_config(bytes(32), [], cfg, kind="record")
    assert (lk.k, lk.alpha, lk.quorum, lk.kind) == (5, 2, 2, "record")
    assert isinstance(lk.request(None), GetRecord)
    assert isinstance(Lookup(bytes(32), [], kind="providers").request(None), GetProviders)


# -- records and providers among liars ------------------------------------------------------


def record(seq: int, value: bytes = b"v") -> Record:
    return sign_record(AUTHOR, b"name", value, seq, int(NOW) + 3600)


def record_network(
    peers: list[PeerInfo], holders: dict[bytes, Record | None], liars: dict[bytes, Record]
) -> Network:
    def make(me: PeerInfo) -> Callable[[Request], Response | None]:
        def answer(req: Request) -> Response | None:
            assert isinstance(req, GetRecord)
            closer = tuple(nearest(req.key, peers, 8))
            if me.key in liars:
                return RecordResult(liars[me.key], closer)
            return RecordResult(holders.get(me.key), closer)

        return answer

    return {p.key: make(p) for p in peers}


def test_record_lookup_picks_the_newest_valid_record_over_lies() -> None:
    current, stale = record(2), record(1)
    key = current.key
    peers = [peer(i) for i in range(1, 40)]
    near = nearest(key, peers, 8)
    forged = Record(AUTHOR.public_key, b"name", b"evil", 50, current.expires, bytes(64))
    other = sign_record(AUTHOR, b"other", b"x", 99, int(NOW) + 3600)  # valid, wrong key
    expired = sign_record(AUTHOR, b"name", b"old", 60, int(NOW) - 1)
    too_long = sign_record(AUTHOR, b"name", b"far", 70, int(NOW) + 10**8)
    liars = {
        near[0].key: forged,
        near[1].key: stale,
        near[2].key: other,
        near[3].key: expired,
        near[4].key: too_long,
    }
    holders: dict[bytes, Record | None] = {near[5].key: current, near[6].key: stale}
    lookup = Lookup(key, peers[:3], kind="record", k=8)
    drive(lookup, record_network(peers, holders, liars))
    r = lookup.result
    assert r.record == current
    assert r.rejected == 4  # forged, wrong key, expired, too far in the future
    assert near[5] not in r.outdated
    assert near[6] in r.outdated and near[7] in r.outdated


def test_quorum_stops_early() -> None:
    current = record(2)
    peers = [peer(i) for i in range(1, 60)]
    holders: dict[bytes, Record | None] = {p.key: current for p in peers}
    full = Lookup(current.key, peers[:3], kind="record", k=8)
    drive(full, record_network(peers, holders, {}))
    early = Lookup(current.key, peers[:3], kind="record", k=8, quorum=2)
    drive(early, record_network(peers, holders, {}))
    assert early.result.record == full.result.record == current
    assert early.result.queries < full.result.queries
    assert early.done and early.next_queries(NOW) == []


def test_liars_on_one_path_cannot_reach_quorum_alone() -> None:
    current, stale = record(2), record(1)
    ranked = nearest(current.key, [peer(i) for i in range(1, 50)], 49)
    l1, l2, h1 = ranked[0], ranked[1], ranked[10]
    lookup = Lookup(current.key, [l1, h1], kind="record", k=4, alpha=1, disjoint_paths=2, quorum=2)
    assert lookup.next_queries(NOW) == [l1, h1]
    lookup.on_response(l1.key, RecordResult(stale, (l2,)), NOW)
    assert lookup.next_queries(NOW) == [l2]
    lookup.on_response(l2.key, RecordResult(stale, ()), NOW)
    assert not lookup.done  # two agree on seq 1, but h1's path has not answered yet
    lookup.on_response(h1.key, RecordResult(current, ()), NOW)
    assert lookup.done and lookup.result.record == current


def provider(signer: KeySigner, key: bytes, ttl: int = 3600) -> ProviderRecord:
    return sign_provider(signer, key, (("192.0.2.1", 7),), int(NOW) + ttl)


def test_provider_lookup_validates_dedups_and_limits() -> None:
    key = b"c" * 32
    p1, p2 = KeySigner(b"\x11" * 32), KeySigner(b"\x12" * 32)
    good1, good1_later, good2 = provider(p1, key), provider(p1, key, 7200), provider(p2, key)
    forged = ProviderRecord(key, PeerInfo(b"f" * 32, ()), int(NOW) + 60, bytes(64))
    wrong = provider(p2, b"d" * 32)
    peers = [peer(i) for i in range(1, 30)]
    answers = [(good1, forged), (good1_later, wrong), (good2,)]

    def make(i: int) -> Callable[[Request], Response | None]:
        provs = answers[i] if i < len(answers) else ()
        return lambda req: ProvidersResult(provs, tuple(nearest(key, peers, 5)))

    network = {p.key: make(i) for i, p in enumerate(peers)}
    lookup = Lookup(key, peers[:3], kind="providers", k=5, alpha=3)
    drive(lookup, network)
    r = lookup.result
    assert r.providers == (good1_later, good2)
    assert r.rejected == 2
    limited = Lookup(key, peers[:3], kind="providers", k=5, alpha=1, provider_limit=1)
    drive(limited, network)
    assert len(limited.result.providers) == 1 and limited.result.queries == 1


def eclipse_world() -> tuple[Record, Network, PeerInfo, PeerInfo]:
    """Every tenth peer lies: it never has the record and names only the liars nearest
    the key. A plain lookup that starts at a liar nearer the key than its other seed is
    walled in; the replicas are the 8 honest peers nearest the key."""
    current = record(2)
    key = current.key
    peers = [peer(i) for i in range(1, 200)]
    liars = [p for i, p in enumerate(peers) if i % 10 == 0]
    liar_keys = {p.key for p in liars}
    honest = [p for p in peers if p.key not in liar_keys]
    replicas = nearest(key, honest, 8)

    def make(me: PeerInfo) -> Callable[[Request], Response | None]:
        def answer(req: Request) -> Response | None:
            assert isinstance(req, GetRecord)
            if me.key in liar_keys:
                return RecordResult(None, tuple(nearest(key, liars, 8)))
            held = current if me in replicas else None
            return RecordResult(held, tuple(nearest(key, peers, 16)))

        return answer

    network = {p.key: make(p) for p in peers}
    return current, network, nearest(key, liars, 1)[0], nearest(key, honest, len(honest))[-1]


def test_disjoint_paths_get_past_an_eclipse() -> None:
    current, network, liar_seed, far_honest = eclipse_world()
    seeds = [liar_seed, far_honest]
    plain = Lookup(current.key, seeds, kind="record", k=8, alpha=1)
    drive(plain, network)
    assert plain.result.record is None  # walled in: the honest seed was never asked
    disjoint = Lookup(current.key, seeds, kind="record", k=8, alpha=1, disjoint_paths=2)
    queried = drive(disjoint, network)
    assert len(queried) == len(set(queried))
    assert disjoint.result.record == current
