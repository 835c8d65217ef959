"""A deterministic simulator for the Kademlia DHT: thousands of pure ``DhtCore`` nodes.

The shipped machines (``p2p.dht.server.DhtCore`` answering requests, ``p2p.dht.lookup
.Lookup`` running iterative lookups, the routing table's liveness checks) run in a
discrete-event world with a virtual clock and per-message latency; the simulator plays
the asyncio shell's part (sending requests, timeouts, feeding answers back). One
``random.Random(seed)`` drives every choice, so a run is a pure function of its seed.

A run: ``nodes`` peers join one after another through a few seed peers (each joins
with a lookup of its own id), ``records`` signed records are put to the k closest
peers and then updated to a second version (seq 2), ``providers`` content keys get a
provider record each; then ``lookups`` record lookups (and a tenth as many provider
lookups) run from random honest peers while ``churn`` of the peers leave (they vanish:
requests to them time out) and as many new ones join. ``malicious`` of the peers lie:
``drop`` peers never answer; ``forge`` peers answer with forged, stale (seq 1) or
wrong-key records, forged provider records and far-away contacts; ``eclipse`` peers do
the same but answer with the malicious peers nearest the target, to capture lookups.

A record lookup succeeds if it returns the current version (seq 2) of the record. The
report gives the success rates, hop counts and messages (requests) per lookup next to
log2(n); a failing check prints the seed and the command that replays it.

    python -m sim.dht --nodes 2000 --seed 1 --malicious 0.1 --churn 0.1 --disjoint 3
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import heapq
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from p2p.dht.config import DhtConfig
from p2p.dht.keyspace import bucket_index
from p2p.dht.lookup import Lookup, LookupKind, LookupResult
from p2p.dht.messages import (
    AddProvider,
    FindNode,
    GetProviders,
    GetRecord,
    Nodes,
    Ping,
    Pong,
    ProvidersResult,
    PutRecord,
    PutResult,
    RecordResult,
    Request,
    Response,
    decode_request,
    decode_response,
    encode,
)
from p2p.dht.peer import PeerInfo
from p2p.dht.records import (
    KeySigner,
    ProviderRecord,
    Record,
    sign_provider,
    sign_record,
)
from p2p.dht.server import DhtCore
from sim import latency as latency_models

T0 = 1_700_000_000.0
"""Virtual unix time at the start of a run (records carry absolute expiry times)."""
Strategy = Literal["honest", "drop", "forge", "eclipse"]
MALICIOUS_STRATEGIES: tuple[Strategy, ...] = ("drop", "forge", "eclipse")


@dataclass(frozen=True)
class DhtSimConfig:
    """One simulated run. Times are virtual seconds."""

    nodes: int = 2000
    seeds: int = 3
    k: int = 20
    alpha: int = 3
    disjoint: int = 3
    quorum: int | None = 3
    malicious: float = 0.1
    strategies: tuple[Strategy, ...] = MALICIOUS_STRATEGIES
    churn: float = 0.1
    clients: float = 0.0
    """Fraction of joining peers in client mode (behind a NAT: they look things up,
    but never enter routing tables nor store anything)."""
    records: int = 100
    providers: int = 20
    lookups: int = 1000
    join_gap: float = 0.05
    join_refresh: int = 1
    """After its own-id lookup, a joining peer refreshes the buckets beyond the peers it
    found that hold fewer than this many entries (Kademlia refreshes all non-full ones;
    the empty and nearly empty ones are what matters, and are much cheaper)."""
    phase: float = 600.0
    """Length of the lookup phase, over which churn and lookups are spread."""
    timeout: float = 1.0
    slow_after: float = 0.3
    latency: str = "uniform"
    codec: bool = False
    """Encode and decode every message (slower; exercises the codec)."""
    min_success: float = 0.99

    def __post_init__(self) -> None:
        if self.nodes < self.seeds + 2 or self.seeds < 1:
            raise ValueError("need at least one seed and two more nodes")
        if not 0.0 <= self.malicious < 0.5 or not 0.0 <= self.churn < 0.5:
            raise ValueError("--malicious and --churn must be in [0, 0.5)")
        if not 0.0 <= self.clients < 0.9:
            raise ValueError("--clients must be in [0, 0.9)")
        if not self.strategies or any(s not in MALICIOUS_STRATEGIES for s in self.strategies):
            raise ValueError(f"strategies must be among {MALICIOUS_STRATEGIES}")
        if not 0.0 <= self.min_success <= 1.0:
            raise ValueError("--min-success must be in [0, 1]")
        if self.records < 1 or self.lookups < 1 or self.providers < 0:
            raise ValueError("--records and --lookups must be >= 1, --providers >= 0")
        latency_models.by_name(self.latency)
        self.dht_config()

    def dht_config(self) -> DhtConfig:
        """The node configuration every simulated peer runs with."""
        return DhtConfig(
            k=self.k,
            alpha=self.alpha,
            disjoint_paths=self.disjoint,
            quorum=self.quorum,
            slow_after=self.slow_after,
            request_timeout=self.timeout,
        )

    def replay_command(self, seed: int) -> str:
        """The command line that reruns exactly this configuration and seed."""
        cmd = f"python -m sim.dht --seed {seed}"
        defaults = DhtSimConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            flag = f"--{f.name.replace('_', '-')}"
            if isinstance(value, bool):
                cmd += f" {flag}" if value else ""
            elif isinstance(value, tuple):
                cmd += f" {flag} {','.join(value)}"
            else:
                cmd += f" {flag} {value!r}" if isinstance(value, float) else f" {flag} {value}"
        return cmd


def distribution(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p95, max (nearest rank) of ``values``."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    xs = sorted(values)

    def rank(p: float) -> float:
        return float(xs[max(0, math.ceil(p / 100 * len(xs)) - 1)])

    return {
        "mean": round(sum(xs) / len(xs), 3),
        "p50": rank(50),
        "p95": rank(95),
        "max": float(xs[-1]),
    }


@dataclass(frozen=True)
class Check:
    """One pass/fail verdict of a run."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class DhtSimReport:
    """What a run measured."""

    config: DhtSimConfig
    seed: int
    nodes_final: int
    log2_n: float
    record_lookups: int
    """Record lookups that completed (a requester that leaves abandons its lookup)."""
    record_success: float
    provider_lookups: int
    provider_success: float
    hops: dict[str, float]
    messages: dict[str, float]
    failures_per_lookup: float
    rejected_records: int
    stores_per_record: float
    joined: int
    left: int
    malicious_nodes: int
    events: int
    virtual_seconds: float
    checks: tuple[Check, ...]
    misses: tuple[str, ...] = ()
    """The first few failed record lookups, described (diagnosis)."""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def replay(self) -> str:
        return self.config.replay_command(self.seed)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["config"] = asdict(self.config)
        out["checks"] = [asdict(c) for c in self.checks]
        out["ok"] = self.ok
        out["replay"] = self.replay
        return out


# -- the world -----------------------------------------------------------------------------


class _Node:
    __slots__ = ("alive", "core", "held", "info", "server", "signer", "strategy")

    def __init__(
        self, signer: KeySigner, info: PeerInfo, core: DhtCore, strategy: Strategy, server: bool
    ) -> None:
        self.signer = signer
        self.info = info
        self.core = core
        self.strategy = strategy
        self.server = server
        self.alive = True
        self.held: dict[bytes, Record] = {}  # malicious: first version of each record seen

    @property
    def sender(self) -> PeerInfo | None:
        return self.info if self.server else None


Answer = Callable[[PeerInfo, Response | None], None]


class DhtWorld:
    """Clock, event queue, peers and the one RNG of a run."""

    def __init__(self, config: DhtSimConfig, seed: int) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.latency = latency_models.by_name(config.latency)
        self.dht = config.dht_config()
        self.plain_dht = dataclasses.replace(self.dht, disjoint_paths=1)
        self.now = T0
        self.events = 0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.nodes: dict[bytes, _Node] = {}
        self.order: list[_Node] = []
        self.malicious: list[_Node] = []
        self.catalog: dict[bytes, Record] = {}  # record key -> current version

    # -- events -------------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn))

    def run(self, until: float | None = None) -> None:
        while self._queue and (until is None or self._queue[0][0] <= until):
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            self.events += 1
            fn()
        if until is not None:
            self.now = max(self.now, until)

    # -- peers --------------------------------------------------------------------------

    def new_node(self, strategy: Strategy, server: bool = True) -> _Node:
        signer = KeySigner(self.rng.randbytes(32))
        n = len(self.order)
        addr = (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 4000)
        info = PeerInfo(signer.public_key, (addr,) if server else ())
        node = _Node(signer, info, DhtCore(info, self.dht, now=self.now), strategy, server)
        self.nodes[info.key] = node
        self.order.append(node)
        if strategy != "honest":
            self.malicious.append(node)
        return node

    def alive_honest(self, servers_only: bool = False) -> list[_Node]:
        return [
            n
            for n in self.order
            if n.alive and n.strategy == "honest" and (n.server or not servers_only)
        ]

    # -- messages -----------------------------------------------------------------------

    def _delay(self, src: _Node, dst_key: bytes) -> float:
        return self.latency.sample(self.rng, 0, 0) / 1000.0

    def send(self, src: _Node, dst: PeerInfo, request: Request, answer: Answer) -> None:
        """Deliver ``request`` from ``src`` to ``dst``; ``answer(dst, response or None)``
        runs when the response arrives or the timeout passes."""
        sent = self.now
        deadline = sent + self.config.timeout
        target = self.nodes.get(dst.key)
        if self.config.codec:
            request = decode_request(encode(request))

        def fail() -> None:
            if src.alive:
                answer(dst, None)

        if target is None or not target.alive or target.strategy == "drop":
            self.at(deadline, fail)
            return

        def deliver() -> None:
            assert target is not None
            if not target.alive:
                self.at(deadline, fail)
                return
            response = self.handle(target, src.info.key, request)
            if response is None:
                self.at(deadline, fail)
                return
            if self.config.codec:
                response = decode_response(encode(response))
            self.flush_checks(target)
            back = self.now + self._delay(target, src.info.key)
            if back >= deadline:
                self.at(deadline, fail)
                return
            reply: Response = response

            def arrive() -> None:
                if src.alive:
                    answer(dst, reply)

            self.at(back, arrive)

        self.at(sent + self._delay(src, dst.key), deliver)

    def handle(self, node: _Node, peer_key: bytes, request: Request) -> Response | None:
        if node.strategy == "honest":
            return node.core.handle(peer_key, request, self.now)
        return self._lie(node, request)

    def flush_checks(self, node: _Node) -> None:
        """Send the pings ``node``'s routing table asked for."""
        for check in node.core.take_liveness_checks():

            def answered(peer: PeerInfo, response: Response | None, node: _Node = node) -> None:
                if response is None:
                    node.core.peer_failed(peer.key, self.now)
                else:
                    node.core.peer_responded(peer, self.now)
                    self.flush_checks(node)

            self.send(node, check.peer, Ping(sender=node.sender), answered)

    # -- adversary ----------------------------------------------------------------------

    def _contacts(self, node: _Node, target: bytes) -> tuple[PeerInfo, ...]:
        k = self.config.k
        if node.strategy == "eclipse":
            t = int.from_bytes(target, "big")
            mal = [m.info for m in self.malicious if m.alive and m is not node]
            return tuple(heapq.nsmallest(k, mal, key=lambda p: p.int_id ^ t))
        # far-away contacts: random peers (dead or alive), the farther half of a sample
        t = int.from_bytes(target, "big")
        sample = [n.info for n in self.rng.sample(self.order, min(2 * k, len(self.order)))]
        sample = [p for p in sample if p.addrs]
        sample.sort(key=lambda p: p.int_id ^ t, reverse=True)
        return tuple(sample[:k])

    def _bad_record(self, node: _Node, key: bytes) -> Record | None:
        held = node.held.get(key)
        choice = self.rng.random()
        if held is not None and choice < 0.5:
            return held  # a genuine but stale version (seq 1)
        current = self.catalog.get(key)
        if current is None:
            return None
        if choice < 0.75:  # forged: a higher seq with a signature that does not verify
            return Record(
                current.author,
                current.name,
                b"forged",
                current.seq + 100,
                current.expires,
                self.rng.randbytes(64),
            )
        other = self.catalog[self.rng.choice(list(self.catalog))]
        return other if other.key != key else None  # validly signed, wrong key

    def _lie(self, node: _Node, request: Request) -> Response | None:
        if isinstance(request, Ping):
            return Pong()
        if isinstance(request, FindNode):
            return Nodes(self._contacts(node, request.target))
        if isinstance(request, GetRecord):
            return RecordResult(
                self._bad_record(node, request.key), self._contacts(node, request.key)
            )
        if isinstance(request, GetProviders):
            fake = PeerInfo(self.rng.randbytes(32), (("192.0.2.1", 4000),))
            forged = ProviderRecord(request.key, fake, int(self.now) + 3600, self.rng.randbytes(64))
            return ProvidersResult((forged,), self._contacts(node, request.key))
        if isinstance(request, PutRecord):
            node.held.setdefault(request.record.key, request.record)
            return PutResult(True)  # claims to store it, keeps only the first version
        return PutResult(True)


# -- lookups as the shell runs them ----------------------------------------------------------


class _Search:
    """Drives one ``Lookup`` for ``node`` like the asyncio shell would."""

    def __init__(
        self,
        world: DhtWorld,
        node: _Node,
        target: bytes,
        kind: LookupKind,
        done: Callable[[LookupResult], None],
        provider_limit: int | None = None,
        plain: bool = False,
    ) -> None:
        self.world = world
        self.node = node
        seeds = node.core.routing.closest(target, world.config.k)
        self.lookup = Lookup.from_config(
            target,
            seeds,
            world.plain_dht if plain else world.dht,
            kind=kind,
            self_key=node.info.key,
            provider_limit=provider_limit,
        )
        self.done = done
        self.finished = False
        self.wake_at: float | None = None
        node.core.routing.touch(target, world.now)

    def pump(self) -> None:
        if self.finished or not self.node.alive:
            return
        lookup, world = self.lookup, self.world
        if lookup.done:
            self.finished = True
            self.done(lookup.result)
            return
        request = lookup.request(self.node.sender)
        for peer in lookup.next_queries(world.now):
            world.send(self.node, peer, request, self.answer)
        deadline = lookup.next_deadline()
        if deadline is not None and deadline > world.now and self.wake_at != deadline:
            self.wake_at = deadline
            world.at(deadline, self.pump)

    def answer(self, peer: PeerInfo, response: Response | None) -> None:
        now = self.world.now
        if response is None:
            self.node.core.peer_failed(peer.key, now)
            self.lookup.on_failure(peer.key, now)
        else:
            self.node.core.peer_responded(peer, now)
            self.world.flush_checks(self.node)
            self.lookup.on_response(peer.key, response, now)
        self.pump()


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class _Tally:
    record_ok: int = 0
    record_total: int = 0
    provider_ok: int = 0
    provider_total: int = 0
    hops: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)
    rejected: int = 0
    stores: list[int] = field(default_factory=list)
    joined: int = 0
    left: int = 0
    misses: list[str] = field(default_factory=list)


def _join(world: DhtWorld, node: _Node, seeds: Sequence[_Node]) -> None:
    """Kademlia's join: learn the seeds, look up our own id, then refresh the nearly
    empty buckets beyond the k peers that lookup found (plain lookups: they only fill
    routing tables, which keep every peer that answers)."""
    for s in seeds:
        if s is not node:
            node.core.routing.seen(s.info, world.now)

    def refresh(result: LookupResult) -> None:
        table = node.core.routing
        above = bucket_index(node.info.id, result.closest[-1].id) if result.closest else -1
        nonce = world.rng.randbytes(32)
        sparse = world.config.join_refresh
        for target in table.sparse_buckets(world.now, nonce, above=above, fewer_than=sparse):
            _Search(world, node, target, "nodes", _done_nothing, plain=True).pump()

    _Search(world, node, node.info.id, "nodes", refresh, plain=True).pump()


def _done_nothing(result: LookupResult) -> None:
    """A lookup run for its side effects on the routing table."""


def _ignore(peer: PeerInfo, response: Response | None) -> None:
    """Store answers are not needed: the report counts replicas directly."""


def _put(world: DhtWorld, author: _Node, request: Request, key: bytes) -> None:
    """Find the k closest to ``key`` (disjoint paths) and send them the store request."""

    def found(result: LookupResult) -> None:
        for peer in result.closest:
            world.send(author, peer, request, _ignore)

    _Search(world, author, key, "nodes", found).pump()


def run_dht_sim(config: DhtSimConfig, seed: int) -> DhtSimReport:
    """Run one simulated DHT (see the module docstring) and measure it."""
    world = DhtWorld(config, seed)
    rng = world.rng
    tally = _Tally()

    def strategy() -> Strategy:
        if rng.random() < config.malicious:
            return rng.choice(config.strategies)
        return "honest"

    # -- join -------------------------------------------------------------------------
    seeds = [world.new_node("honest") for _ in range(config.seeds)]
    for s in seeds:
        for other in seeds:
            if other is not s:
                s.core.routing.seen(other.info, world.now)
    for i in range(config.nodes - config.seeds):
        node = world.new_node(strategy(), server=rng.random() >= config.clients)
        world.at(world.now + i * config.join_gap, functools.partial(_join, world, node, seeds))
    world.run()
    world.run(world.now + 5.0)

    # -- publish: every record twice (seq 1, then seq 2), providers once -----------------
    authors = world.alive_honest(servers_only=True)
    expires = int(world.now + 24 * 3600)
    records: list[tuple[_Node, Record, Record]] = []
    for i in range(config.records):
        author = rng.choice(authors)
        name = f"record-{i}".encode()
        v1 = sign_record(author.signer, name, rng.randbytes(32), 1, expires)
        v2 = sign_record(author.signer, name, rng.randbytes(32), 2, expires)
        records.append((author, v1, v2))
        world.catalog[v1.key] = v1
    for author, v1, _ in records:
        put = PutRecord(v1, sender=author.sender)
        world.at(
            world.now + rng.uniform(0, 10), functools.partial(_put, world, author, put, v1.key)
        )
    world.run()
    for author, _, v2 in records:
        world.catalog[v2.key] = v2
        put = PutRecord(v2, sender=author.sender)
        world.at(
            world.now + rng.uniform(0, 10), functools.partial(_put, world, author, put, v2.key)
        )
    provided: list[tuple[bytes, _Node]] = []
    for _ in range(config.providers):
        provider = rng.choice(authors)
        key = rng.randbytes(32)
        rec = sign_provider(provider.signer, key, provider.info.addrs, expires)
        provided.append((key, provider))
        add = AddProvider(rec, sender=provider.sender)
        world.at(world.now + rng.uniform(0, 10), functools.partial(_put, world, provider, add, key))
    world.run()
    for _, _, v2 in records:
        tally.stores.append(
            sum(1 for n in world.order if n.alive and n.core.records.get(v2.key, world.now) == v2)
        )

    # -- lookups under churn ----------------------------------------------------------
    start = world.now
    leavers = [n for n in world.order if n not in seeds]
    rng.shuffle(leavers)
    n_churn = int(config.churn * config.nodes)
    for node in leavers[:n_churn]:

        def leave(node: _Node = node) -> None:
            node.alive = False
            tally.left += 1

        world.at(start + rng.uniform(0, config.phase), leave)
    for _ in range(n_churn):

        def arrive() -> None:
            node = world.new_node(strategy(), server=rng.random() >= config.clients)
            tally.joined += 1
            _join(world, node, seeds)

        world.at(start + rng.uniform(0, config.phase), arrive)

    def record_lookup() -> None:
        node = rng.choice(world.alive_honest())
        _, _, want = rng.choice(records)

        def done(result: LookupResult) -> None:
            tally.record_total += 1
            tally.record_ok += result.record == want
            if result.record != want and len(tally.misses) < 10:
                holders = [
                    n
                    for n in world.order
                    if n.alive and n.core.records.get(want.key, world.now) == want
                ]
                t = want.key
                rank = sorted(
                    (n for n in world.order if n.alive and n.server),
                    key=lambda n: n.info.int_id ^ int.from_bytes(t, "big"),
                )
                queried = {p.key for p in result.closest}
                tally.misses.append(
                    f"record {t.hex()[:8]} from {node.info.key.hex()[:8]}: got "
                    f"{'nothing' if result.record is None else f'seq {result.record.seq}'} "
                    f"after {result.queries} queries ({result.failures} failed); "
                    f"{len(holders)} live replicas; nearest live: "
                    + ",".join(
                        f"{n.strategy[0]}{'*' if n.info.key in queried else ''}" for n in rank[:12]
                    )
                )
            tally.hops.append(result.hops)
            tally.messages.append(result.queries)
            tally.failures.append(result.failures)
            tally.rejected += result.rejected

        _Search(world, node, want.key, "record", done).pump()

    def provider_lookup() -> None:
        node = rng.choice(world.alive_honest())
        key, provider = rng.choice(provided)

        def done(result: LookupResult) -> None:
            tally.provider_total += 1
            tally.provider_ok += any(r.provider.key == provider.info.key for r in result.providers)

        _Search(world, node, key, "providers", done, provider_limit=1).pump()

    for _ in range(config.lookups):
        world.at(start + rng.uniform(0, config.phase), record_lookup)
    if provided:
        for _ in range(max(1, config.lookups // 10)):
            world.at(start + rng.uniform(0, config.phase), provider_lookup)
    world.run()

    # -- report -------------------------------------------------------------------------
    final = sum(1 for n in world.order if n.alive)
    rec_rate = tally.record_ok / max(1, tally.record_total)
    prov_rate = tally.provider_ok / max(1, tally.provider_total)
    checks = (
        Check(
            "record-lookups",
            rec_rate >= config.min_success and tally.record_total > 0,
            f"{tally.record_ok}/{tally.record_total} found the current record "
            f"(need {config.min_success:.0%}; {config.lookups - tally.record_total} "
            "abandoned: the requester left)",
        ),
        Check(
            "provider-lookups",
            not provided or prov_rate >= config.min_success,
            f"{tally.provider_ok}/{tally.provider_total} found the provider",
        ),
    )
    return DhtSimReport(
        config=config,
        seed=seed,
        nodes_final=final,
        log2_n=round(math.log2(final), 3),
        record_lookups=tally.record_total,
        record_success=round(rec_rate, 5),
        provider_lookups=tally.provider_total,
        provider_success=round(prov_rate, 5),
        hops=distribution(tally.hops),
        messages=distribution(tally.messages),
        failures_per_lookup=round(sum(tally.failures) / max(1, len(tally.failures)), 3),
        rejected_records=tally.rejected,
        stores_per_record=round(sum(tally.stores) / max(1, len(tally.stores)), 2),
        joined=tally.joined,
        left=tally.left,
        malicious_nodes=len(world.malicious),
        events=world.events,
        virtual_seconds=round(world.now - T0, 3),
        checks=checks,
        misses=tuple(tally.misses),
    )


# -- command line -----------------------------------------------------------------------------


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


_HELP: dict[str, str] = {
    "nodes": "peers in the network (including the seeds)",
    "seeds": "bootstrap peers every joining peer knows",
    "k": "Kademlia k: bucket size and replication factor",
    "alpha": "parallel queries per lookup",
    "disjoint": "disjoint lookup paths (S/Kademlia d)",
    "quorum": "matching answers a value lookup needs (an integer, or none)",
    "malicious": "fraction of peers that are malicious, in [0, 0.5)",
    "strategies": "comma-separated malicious strategies, drawn per malicious peer",
    "churn": "fraction of peers that leave and join during the lookup phase, in [0, 0.5)",
    "clients": "fraction of joining peers in client mode (behind a NAT), in [0, 0.9)",
    "records": "signed records stored before the lookup phase",
    "providers": "provider records announced before the lookup phase",
    "lookups": "lookups spread over the lookup phase",
    "join_gap": "virtual seconds between two joins",
    "join_refresh": "after joining, refresh buckets with fewer than this many entries",
    "phase": "virtual seconds of the lookup phase",
    "timeout": "virtual seconds before a query counts as failed",
    "slow_after": "virtual seconds before a query counts as slow (another is sent)",
    "latency": "link latency model",
    "codec": "encode and decode every message (slower; exercises the codec)",
    "min_success": "lookup success rate below which the run fails, in [0, 1]",
}
"""Help text of every ``--option`` (one per field of :class:`DhtSimConfig`)."""


def _parser(prog: str = "python -m sim.dht") -> argparse.ArgumentParser:
    d = DhtSimConfig()
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        epilog="Prints the report as JSON; exit status 1 if a check failed, 2 on bad options.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=1, help="the run's seed (replays it)")
    for f in fields(DhtSimConfig):
        flag = f"--{f.name.replace('_', '-')}"
        default = getattr(d, f.name)
        help_text = _HELP[f.name]
        if isinstance(default, bool):
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif isinstance(default, tuple):
            p.add_argument(
                flag,
                type=lambda s: tuple(s.split(",")),
                default=",".join(default),
                help=help_text,
            )
        elif f.name == "quorum":
            p.add_argument(flag, type=_optional_int, default=default, help=help_text)
        else:
            p.add_argument(flag, type=type(default), default=default, help=help_text)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m sim.dht") -> int:
    """Run one simulation and print its report as JSON; exit status 1 if a check failed."""
    args = _parser(prog).parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(DhtSimConfig)}
    if isinstance(values["strategies"], str):  # the default, shown as text in --help
        values["strategies"] = tuple(values["strategies"].split(","))
    try:
        config = DhtSimConfig(**values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_dht_sim(config, args.seed)
    print(json.dumps(report.to_dict(), indent=2, default=str))
    if not report.ok:
        for c in report.checks:
            if not c.ok:
                print(f"FAILED {c.name}: {c.detail}", file=sys.stderr)
        print(f"seed {report.seed}; replay with: {report.replay}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
