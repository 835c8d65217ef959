"""Coin shares a store keeps: exactly those the process accepts (issue 17).

A member signs its own coin share for any wave it likes, so a Byzantine member can send
valid shares for wave 2**40. The process ignores shares outside its window
(:meth:`Process.coin_share_window`); a store that kept every received share would hold
them until that wave is decided, i.e. forever (GC drops only waves below ``next_wave``).
Shells ask :meth:`Process.accepts_coin_share` before they hand a share to the process
and store only those; the daemon's SQLite store is checked in
``tests/node/test_coin_share_store.py``.
"""

from __future__ import annotations

from functools import cache

from dagbuilder import coin_keys, domain, process_configs

from dagrider.coin import CoinShare, make_share
from dagrider.effects import Effect
from dagrider.messages import CoinShareMsg
from dagrider.params import Parameters
from dagrider.persistence import GcRules, MemoryStore
from dagrider.process import Process
from sim.runner import SimConfig, _Run

FUTURE_ROUNDS = 40
PARAMS = Parameters(gc_depth=8, future_rounds=FUTURE_ROUNDS)
FAR = (2**20, 2**32, 2**40)


@cache
def share(signer: int, wave: int) -> CoinShare:
    pub, secrets = coin_keys(4)
    return make_share(secrets[signer], pub.verification_keys[signer], wave, domain())


def member(me: int = 0) -> Process:
    return Process(process_configs(4, params=PARAMS)[me])


def receive(p: Process, store: MemoryStore, sender: int, s: CoinShare) -> list[Effect]:
    """What a shell does with a coin share from ``sender``: ask, receive, store."""
    accepted = [s] if p.accepts_coin_share(sender, s) else []
    effects = p.receive(sender, CoinShareMsg(s))
    store.apply(effects, None, accepted)
    return effects


def test_the_window_is_exactly_what_the_process_takes() -> None:
    p = member()
    p.start()
    low, high = p.coin_share_window()
    assert (low, high) == (1, (p.round + FUTURE_ROUNDS) // 4 + 1)
    for wave in (low, low + 1, high, high + 1, high + 2, *FAR):
        s = share(1, wave)
        accepted = p.accepts_coin_share(1, s)
        assert accepted == (low <= wave <= high), wave
        p.receive(1, CoinShareMsg(s))
        assert (wave in p._coins) == accepted, wave  # the process held it iff accepted
    assert not p.accepts_coin_share(2, share(1, low))  # signed by someone else


def test_shares_for_a_known_coin_are_kept_and_bring_it_back_without_ours() -> None:
    """After a restart our own share of a completed wave is not derived again, so the
    peers' shares of a wave whose coin we knew are kept: f+1 of them decide it alone."""
    p = member()
    p.start()
    store = MemoryStore(GcRules(8))
    receive(p, store, 1, share(1, 1))
    receive(p, store, 2, share(2, 1))  # f+1 = 2: the coin of wave 1 is known
    assert p._coins[1].value is not None
    assert p.accepts_coin_share(3, share(3, 1))
    receive(p, store, 3, share(3, 1))
    assert [(s.wave, s.signer) for s in store.coin_shares] == [(1, 1), (1, 2), (1, 3)]
    fresh = member()
    fresh.recover(store.recovery())
    assert fresh.ordering.leaders.get(1) == p.ordering.leaders[1]


def test_far_future_shares_never_reach_the_store_and_a_restart_recovers_the_coin() -> None:
    """The shares a coin needs are stored and bring the coin back after a restart
    (peers need not send them again); a flood of far-future shares leaves the store at
    what the window allows."""
    p = member()
    p.start()
    store = MemoryStore(GcRules(8))
    low, high = p.coin_share_window()
    for wave in range(low + 1, high + 40):  # every wave of the window, and beyond it
        receive(p, store, 3, share(3, wave))
    for wave in FAR:
        receive(p, store, 3, share(3, wave))
    assert max(s.wave for s in store.coin_shares) == high
    assert len(store.coin_shares) == high - low
    # The coin of wave 1, from peers' shares that arrived before this member finished
    # its round 4: the same leader after a restart from the store alone.
    receive(p, store, 1, share(1, 1))
    receive(p, store, 2, share(2, 1))
    leader = p.ordering.leaders[1]
    recovery = store.recovery()
    assert {(s.wave, s.signer) for s in recovery.coin_shares} >= {(1, 1), (1, 2)}
    fresh = member()
    fresh.recover(recovery)
    assert fresh.ordering.leaders.get(1) == leader
    assert fresh._coins.keys() <= set(range(low, high + 1))


def test_the_simulator_stores_only_the_shares_its_process_accepts() -> None:
    """The simulator's store ("disk") behind the same rule: a member's valid shares for
    far-future waves, delivered through the runner's own step, leave no row."""
    run = _Run(SimConfig(nodes=4, faults=0, waves=3), 5, None)
    assert run.run().ok
    node = run.nodes[0]
    high = node.process.coin_share_window()[1]
    signer = run.configs[1]
    pub = signer.coin_public.verification_keys[1]
    inbox = [
        (1, b"", CoinShareMsg(make_share(signer.coin_secret, pub, wave, signer.domain)))
        for wave in (high, high + 1, *FAR)
    ]
    before = {(s.wave, s.signer) for s in node.store.coin_shares}
    run._step(0, node, inbox)  # type: ignore[arg-type]
    after = {(s.wave, s.signer) for s in node.store.coin_shares}
    assert after - before == {(high, 1)}
    assert all(s.wave <= high for s in node.store.coin_shares)
