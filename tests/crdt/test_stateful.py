"""The whole store under random use: replicas write every type through the document
layer and sync pairwise over clean and lossy links; at the end every replica, and a
fresh one fed every change in any order, holds the identical state."""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import msgpack
from crdt_strategies import json_values, set_elements
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdt.change import Change, KeySigner
from crdt.document import parse_intents, prepare_ops
from crdt.errors import InvalidOperation
from crdt.replica import AccessPolicy, Replica
from crdt.sync import SyncEngine, SyncResult
from crdt.types import ORMap

DOCS = ["app/one", "app/two", "cfg/x"]
PATHS: list[tuple[str, ...]] = [("a",), ("b",), ("m", "x"), ("m", "y"), ("m", "n", "z")]
TYPES = ["gcounter", "pncounter", "lww", "mvreg", "orset", "rga", "text"]
MODES = ["clean", "clean", "drop", "duplicate", "reorder"]


def nested_state(root: ORMap | None, path: tuple[str, ...], tname: str) -> Any:
    """The state of type ``tname`` at ``path`` (None if absent), hidden or not."""
    node: Any = root
    *parents, key = path
    for parent in parents:
        if node is None:
            return None
        node = node.values.get((parent, "ormap"))
    return None if node is None else node.values.get((key, tname))


def canonical(r: Replica) -> dict[str, bytes]:
    return {d: msgpack.packb(r.document(d).to_wire(), use_bin_type=True) for d in r.documents()}  # type: ignore[union-attr]


def observable(r: Replica) -> tuple[Any, ...]:
    return (
        list(r.ids),
        r.heads,
        r.documents(),
        canonical(r),
        {d: r.value(d) for d in r.documents()},
    )


class Link:
    """Messages in flight between engines, delivered until quiescent."""

    def __init__(self, engines: dict[Hashable, SyncEngine]) -> None:
        self.engines = engines
        self.queue: list[tuple[Hashable, Hashable, bytes]] = []
        self.rejected: list[tuple[str, str]] = []
        self.faults: list[str] = []

    def post(self, src: Hashable, result: SyncResult) -> None:
        self.queue.extend((src, s.peer, s.payload) for s in result.sends)
        self.rejected.extend(result.rejected)
        self.faults.extend(f.reason for f in result.faults)

    def run(self, mode: str = "clean", rng: random.Random | None = None) -> None:
        rng = rng or random.Random(0)
        delivered = 0
        while self.queue:
            index = rng.randrange(len(self.queue)) if mode == "reorder" else 0
            src, dst, payload = self.queue.pop(index)
            delivered += 1
            assert delivered < 20_000, "sync does not quiesce"
            if mode == "drop" and rng.random() < 0.3:
                continue
            if mode == "duplicate" and rng.random() < 0.3:
                self.queue.insert(rng.randrange(len(self.queue) + 1), (src, dst, payload))
            self.post(dst, self.engines[dst].receive(src, payload))


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.replicas: list[Replica] = []
        self.signers: list[KeySigner] = []
        self.engines: list[SyncEngine] = []
        self.changes: dict[bytes, Change] = {}
        self.clocks: list[int] = []
        self.link = Link({})
        self.seed = 0
        self.rng = random.Random(0)

    @initialize(
        n=st.integers(3, 4),
        seed=st.integers(0, 2**32 - 1),
        skew=st.lists(st.integers(0, 50), min_size=4, max_size=4),
    )
    def setup(self, n: int, seed: int, skew: list[int]) -> None:
        self.signers = [KeySigner(bytes([0x40 + i]) * 32) for i in range(n)]
        policy = AccessPolicy.open_to(s.public_key for s in self.signers)
        self.replicas = [Replica(policy) for _ in range(n)]
        self.engines = [SyncEngine(r) for r in self.replicas]
        self.link = Link({i: e for i, e in enumerate(self.engines)})
        self.clocks = [1_000 + s for s in skew[:n]]  # wall clocks that disagree
        self.seed = seed
        self.rng = random.Random(seed)

    def _reset_links(self, a: int, b: int) -> None:
        """A lossy link is torn down and re-established; both sides drop sessions."""
        self.engines[a].peer_gone(b)
        self.engines[b].peer_gone(a)

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.replicas))
    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        for _ in range(data.draw(st.integers(1, 3), label="updates")):
            self._update(data)

    def _update(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.replicas) - 1), label="replica")
        r, signer = self.replicas[i], self.signers[i]
        doc = data.draw(st.sampled_from(DOCS), label="doc")
        ops = [
            self._draw_intent(data, r.document(doc), signer.public_key)
            for _ in range(data.draw(st.integers(1, 3)))
        ]
        try:
            intents = parse_intents({"ops": ops})
            prepared = prepare_ops(r.document(doc), intents, signer.public_key)
        except InvalidOperation:
            return
        self.clocks[i] += data.draw(st.integers(0, 3))
        before = set(r.ids)
        change, receipt = r.create(signer, doc, prepared, self.clocks[i])
        assert receipt.status == "applied" and receipt.applied == (change,)
        assert set(change.deps) <= before
        self.changes[change.hash] = change
        if data.draw(st.booleans(), label="push"):
            peers = [j for j in range(len(self.replicas)) if j != i and data.draw(st.booleans())]
            self.link.post(i, self.engines[i].push(change, peers))
            self.link.run()
            self._check_link()

    def _draw_intent(
        self, data: st.DataObject, root: ORMap | None, author: bytes
    ) -> dict[str, Any]:
        path = data.draw(st.sampled_from(PATHS), label="path")
        if data.draw(st.integers(0, 9)) == 0:
            return {"path": list(path), "action": "remove"}
        tname = data.draw(st.sampled_from(TYPES), label="type")
        state = nested_state(root, path, tname)
        current = state.value() if state is not None else None
        action: str
        args: Any
        if tname in ("gcounter", "pncounter"):
            action = "inc" if tname == "gcounter" else data.draw(st.sampled_from(["inc", "dec"]))
            args = data.draw(st.integers(1, 20))
        elif tname in ("lww", "mvreg"):
            action, args = "set", data.draw(json_values)
        elif tname == "orset":
            if current and data.draw(st.booleans()):
                action, args = "remove", data.draw(st.sampled_from(current))
            else:
                action, args = "add", data.draw(set_elements)
        else:
            length = len(current or ())
            if length and data.draw(st.booleans()):
                index = data.draw(st.integers(0, length - 1))
                action = "delete"
                args = {"index": index, "count": data.draw(st.integers(1, length - index))}
            elif tname == "text":
                action = "insert"
                args = {
                    "index": data.draw(st.integers(0, length)),
                    "text": data.draw(st.text("abc", min_size=1, max_size=3)),
                }
            else:
                action = "insert"
                args = {
                    "index": data.draw(st.integers(0, length)),
                    "items": data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=2)),
                }
        return {"path": list(path), "type": tname, "action": action, "args": args}

    @precondition(lambda self: bool(self.replicas))
    @rule(data=st.data())
    def sync(self, data: st.DataObject) -> None:
        n = len(self.replicas)
        a = data.draw(st.integers(0, n - 1), label="from")
        b = data.draw(st.sampled_from([j for j in range(n) if j != a]), label="to")
        mode = data.draw(st.sampled_from(MODES), label="mode")
        self.link.post(a, self.engines[a].start_session(b))
        self.link.run(mode, self.rng)
        if mode == "clean":
            assert not self.link.faults, self.link.faults
            # a clean session leaves nothing behind, and the two agree afterwards
            # unless one of them still waits for changes only a third replica has
            assert not self.engines[a]._sessions and not self.engines[b]._sessions
        else:
            self._reset_links(a, b)
        self._check_link()

    def _check_link(self) -> None:
        assert not self.link.rejected, self.link.rejected
        self.link.faults.clear()

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def heads_are_the_changes_nobody_depends_on(self) -> None:
        for r in self.replicas:
            held = [r.get(h) for h in r.ids]
            assert all(c is not None for c in held)
            depended = {d for c in held if c is not None for d in c.deps}
            assert set(r.heads) == set(r.ids) - depended
            assert list(r.ids) == sorted(r.ids) and len(r) == len(r.ids)
            assert set(r.ids) <= set(self.changes)
            assert depended <= set(r.ids)  # causally closed

    @invariant()
    def nothing_is_ever_rejected(self) -> None:
        for r in self.replicas:
            assert not r._rejected

    # -- the end -----------------------------------------------------------------------------------

    def teardown(self) -> None:
        if not self.replicas:
            return
        n = len(self.replicas)
        for a in range(n):
            for b in range(n):
                if a != b:
                    self.engines[a].peer_gone(b)
        for _ in range(3):
            for a in range(n):
                for b in range(n):
                    if a != b:
                        self.link.post(a, self.engines[a].start_session(b))
                        self.link.run()
            if all(len(r) == len(self.changes) for r in self.replicas):
                break
        assert not self.link.rejected and not self.link.faults
        first = observable(self.replicas[0])
        for r in self.replicas:
            assert observable(r) == first
            assert r.pending_count == 0
            assert r.missing() == frozenset()
        assert set(first[0]) == set(self.changes)
        assert {
            d: msgpack.packb(s.to_wire(), use_bin_type=True)
            for d, s in self.replicas[0].state_at(first[1]).items()
        } == first[3]

        rng = random.Random(self.seed)
        policy = self.replicas[0].policy
        # every change in a random topological order
        topo = Replica(policy)
        remaining = dict(self.changes)
        while remaining:
            ready = sorted(h for h, c in remaining.items() if all(d in topo for d in c.deps))
            h = rng.choice(ready)
            receipt = topo.receive(remaining.pop(h).encoded)
            assert receipt.status == "applied" and len(receipt.applied) == 1
        assert observable(topo) == first
        # every change in an arbitrary order: the pending buffer sorts it out
        shuffled = list(self.changes.values())
        rng.shuffle(shuffled)
        anyorder = Replica(policy)
        applied = 0
        for c in shuffled:
            receipt = anyorder.receive(c.encoded)
            assert receipt.status in ("applied", "pending")
            applied += len(receipt.applied)
        assert applied == len(self.changes)
        assert anyorder.pending_count == 0
        assert observable(anyorder) == first


StoreMachine.TestCase.settings = settings(
    StoreMachine.TestCase.settings,
    stateful_step_count=40,
    max_examples=settings.default.max_examples,
)
TestStore = StoreMachine.TestCase
