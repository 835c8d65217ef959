"""Simulate replicas of the CRDT store: a pure function of (CrdtSimConfig, seed).

Each correct replica is the shipped :class:`~crdt.replica.Replica` driven by the
shipped :class:`~crdt.sync.SyncEngine`; every message is the exact bytes the engine
produced, carried by :class:`sim.world.World` (virtual clock, latency, reordering,
partitions that hold traffic until they heal) plus loss and duplication added here.
Correct replicas write random updates of every CRDT type, push them and run
reconciliation sessions with random peers; some crash and restart from their "disk"
(the encoded changes they had applied, replayed in order), losing session state.
Byzantine replicas (:mod:`sim.crdt_byzantine`) attack meanwhile.

After ``fault_ms`` the network calms down: partitions heal, crashed replicas restart,
writes and Byzantine traffic stop, loss and duplication end, and every correct replica
reconciles with every other one, round after round, until a round applies nothing.
Then :func:`check_replicas` decides the run (convergence, authenticity, validity,
equivocation, replay). One ``random.Random(seed)`` drives every choice, so a failing
run replays from its seed with :meth:`CrdtSimConfig.replay_command`.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import msgpack

from crdt.change import Change, ChangeRejected, KeySigner, decode_change
from crdt.document import Intent, prepare_ops
from crdt.errors import InvalidOperation
from crdt.limits import CrdtLimits
from crdt.replica import WILDCARD, AccessPolicy, Replica
from crdt.sync import SyncEngine, SyncResult
from crdt.types import ORMap, ORSet, Text
from sim import latency
from sim.crdt_byzantine import BEHAVIOURS, ByzantineReplica, Setting
from sim.invariants import Verdict
from sim.world import Adversary, World

MAX_EVENTS = 2_000_000
"""A run that needs more events than this is stuck; it fails the ``budget`` check."""

_WORDS = ("ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal")
_TAGS: tuple[int | str | bytes, ...] = (1, 2, 3, "red", "green", "blue", b"\x00raw")
_SNIPPETS = ("a", "bc", "def", "é", "🙂", "xyz ")
_META_KEYS = ("owner", "lang", "color")
_FIELDS = ("views", "hits", "title", "status", "tags", "meta", "body")


# -- configuration --------------------------------------------------------------------


def parse_byzantine(text: str) -> tuple[str, ...]:
    """``"forger,liar"`` -> one Byzantine replica per name; ``all`` and ``none`` too."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return tuple(sorted(BEHAVIOURS))
    kinds = tuple(k.strip() for k in text.split(","))
    for k in kinds:
        if k not in BEHAVIOURS:
            raise ValueError(f"unknown Byzantine behaviour {k!r}; choose from {sorted(BEHAVIOURS)}")
    return kinds


@dataclass(frozen=True)
class CrdtSimConfig:
    """What to simulate. One Byzantine replica per entry of ``byzantine``.

    Times are virtual milliseconds; ``loss``/``duplicate``/``reorder`` are per-message
    probabilities during the fault period; ``partitions`` and ``crashes`` count
    episodes (a crash hits a random correct replica).
    """

    replicas: int = 7
    byzantine: tuple[str, ...] = ()
    docs: int = 3
    fault_ms: float = 3_000.0
    write_ms: float = 150.0
    session_ms: float = 300.0
    loss: float = 0.02
    duplicate: float = 0.02
    reorder: float = 0.3
    partitions: int = 1
    crashes: int = 1
    latency: str = "uniform"
    max_rounds: int = 8

    def __post_init__(self) -> None:
        for k in self.byzantine:
            if k not in BEHAVIOURS:
                raise ValueError(f"unknown Byzantine behaviour {k!r}; choose {sorted(BEHAVIOURS)}")
        if self.replicas - len(self.byzantine) < 2:
            raise ValueError(
                f"--replicas {self.replicas} leaves fewer than 2 correct replicas "
                f"next to {len(self.byzantine)} Byzantine ones"
            )
        for name in ("loss", "duplicate", "reorder"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1)")
        if self.docs < 1 or self.fault_ms <= 0 or self.write_ms <= 0 or self.session_ms <= 0:
            raise ValueError("--docs, --fault-ms, --write-ms and --session-ms must be positive")
        if self.partitions < 0 or self.crashes < 0 or self.max_rounds < 1:
            raise ValueError("--partitions/--crashes must be >= 0 and --max-rounds >= 1")
        latency.by_name(self.latency)

    def replay_command(self, seed: int) -> str:
        cmd = f"dagrider crdt-sim --seed {seed} --replicas {self.replicas}"
        if self.byzantine:
            cmd += f" --byzantine {','.join(self.byzantine)}"
        defaults = CrdtSimConfig()
        for name in (
            "docs",
            "fault_ms",
            "write_ms",
            "session_ms",
            "loss",
            "duplicate",
            "reorder",
            "partitions",
            "crashes",
            "latency",
            "max_rounds",
        ):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                shown = value if isinstance(value, str) else repr(value)  # floats replay exactly
                cmd += f" --{name.replace('_', '-')} {shown}"
        return cmd


# -- workload ---------------------------------------------------------------------------


def random_ops(state: ORMap | None, author: bytes, rng: random.Random) -> list[Any]:
    """Root-map operations for one random update of a document, valid against ``state``.

    Removes and deletes are drawn from what ``state`` shows, so they are valid when
    prepared. OR-Set element removal is prepared on the map directly: the intent layer
    cannot express it (``Intent(path, "remove", ...)`` always removes the key; see the
    simulator's report), and the merge law, not the front end, is under test here.
    """
    root = state if state is not None else ORMap()
    intents: list[Intent] = []
    extra: list[Any] = []
    for name in rng.sample(_FIELDS, rng.choice((1, 1, 2))):
        shown = root.get(name)
        if name == "tags" and isinstance(shown, ORSet) and shown.value() and rng.random() < 0.4:
            elem = rng.choice(shown.value())
            args = {"key": name, "type": "orset", "intent": "remove", "args": elem}
            extra.append(root.prepare("update", args))
        else:
            intents.append(_intent(name, shown, rng))
    return [*prepare_ops(state, intents, author), *extra]


def _intent(name: str, shown: object, rng: random.Random) -> Intent:
    path = (name,)
    if name == "views":
        return Intent(path, rng.choice(("inc", "dec")), "pncounter", rng.randrange(1, 6))
    if name == "hits":
        return Intent(path, "inc", "gcounter", rng.randrange(1, 4))
    if name == "title":
        if shown is not None and rng.random() < 0.2:
            return Intent(path, "remove")
        return Intent(path, "set", "lww", rng.choice(_WORDS))
    if name == "status":
        value = rng.choice((rng.choice(_WORDS), {"n": rng.randrange(9)}, [1, None, True]))
        return Intent(path, "set", "mvreg", value)
    if name == "tags":
        return Intent(path, "add", "orset", rng.choice(_TAGS))
    if name == "meta":
        inner = shown if isinstance(shown, ORMap) else None
        if inner is not None and rng.random() < 0.1:
            return Intent(path, "remove")
        if rng.random() < 0.3:
            return Intent((name, "stats", "edits"), "inc", "pncounter", 1)
        key = rng.choice(_META_KEYS)
        if inner is not None and inner.get(key) is not None and rng.random() < 0.3:
            return Intent((name, key), "remove")
        return Intent((name, key), "set", "lww", rng.choice(_WORDS))
    text = shown.value() if isinstance(shown, Text) else ""
    assert isinstance(text, str)
    if text and rng.random() < 0.35:
        index = rng.randrange(len(text))
        count = rng.randint(1, min(4, len(text) - index))
        return Intent(path, "delete", "text", {"index": index, "count": count})
    args = {"index": rng.randint(0, len(text)), "text": rng.choice(_SNIPPETS)}
    return Intent(path, "insert", "text", args)


# -- invariants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What the checker knows besides the replicas: who wrote what, who equivocated.

    ``created`` maps each correct author's key to the hashes of the changes it signed;
    every one must be applied everywhere, and no other change may carry that key.
    """

    policy: AccessPolicy
    limits: CrdtLimits
    created: Mapping[bytes, frozenset[bytes]]
    equivocations: tuple[tuple[bytes, bytes], ...] = ()


def canonical_state(replica: Replica, doc: str) -> bytes:
    """The bytes a document's state encodes to; equal states give equal bytes."""
    state = replica.document(doc)
    out: bytes = msgpack.packb(None if state is None else state.to_wire(), use_bin_type=True)
    return out


def check_replicas(
    replicas: Mapping[int, Replica], evidence: Evidence, rng: random.Random
) -> list[Verdict]:
    """Every end-of-run invariant over the correct replicas; a failed one names an example."""
    return [
        _convergence(replicas),
        _authenticity(replicas, evidence),
        _validity(replicas, evidence),
        _equivocation(replicas, evidence),
        _replay(replicas, evidence, rng),
    ]


def _convergence(replicas: Mapping[int, Replica]) -> Verdict:
    """Identical change sets, heads, documents, canonical states and values."""
    if len(replicas) < 2:
        return Verdict("convergence", True, "fewer than two replicas")
    first, *rest = sorted(replicas)
    a = replicas[first]
    ids_a = set(a.ids)
    for other in rest:
        b = replicas[other]
        pair = f"replicas {first} and {other}"
        ids_b = set(b.ids)
        if ids_a != ids_b:
            return Verdict(
                "convergence",
                False,
                f"{pair} hold different change sets ({len(ids_a - ids_b)} only at {first}, "
                f"{len(ids_b - ids_a)} only at {other})",
            )
        if a.heads != b.heads:
            return Verdict("convergence", False, f"{pair} have different heads")
        if a.documents() != b.documents():
            return Verdict("convergence", False, f"{pair} have different document lists")
        for doc in a.documents():
            if canonical_state(a, doc) != canonical_state(b, doc):
                return Verdict("convergence", False, f"{pair} differ in the state of {doc}")
            if a.value(doc) != b.value(doc):
                return Verdict("convergence", False, f"{pair} differ in the value of {doc}")
    detail = f"{len(replicas)} replicas, {len(ids_a)} changes, {len(a.documents())} docs"
    return Verdict("convergence", True, detail)


def _authenticity(replicas: Mapping[int, Replica], evidence: Evidence) -> Verdict:
    """Every applied change re-verifies, its author may write it, and a correct author's
    key appears only on changes that author really signed."""
    checked = 0
    for i in sorted(replicas):
        replica = replicas[i]
        for h in sorted(replica.ids):
            change = replica.get(h)
            where = f"replica {i} applied {h.hex()[:16]}"
            if change is None:
                return Verdict("authenticity", False, f"{where} but does not hold it")
            try:
                again = decode_change(change.encoded, evidence.limits, verify=True)
            except ChangeRejected as exc:
                return Verdict("authenticity", False, f"{where}: {exc.reason}: {exc.detail}")
            if again.hash != h:
                return Verdict("authenticity", False, f"{where} under a wrong hash")
            if not _authorised(evidence.policy, change.author, change.doc):
                return Verdict("authenticity", False, f"{where}: author may not write {change.doc}")
            mine = evidence.created.get(change.author)
            if mine is not None and h not in mine:
                return Verdict("authenticity", False, f"{where}: forged under a correct key")
            checked += 1
    return Verdict("authenticity", True, f"{checked} applied changes re-verified")


def _authorised(policy: AccessPolicy, author: bytes, doc: str) -> bool:
    """The access rule read straight from the policy's data, not through
    :meth:`AccessPolicy.may_write`: the checker must not trust the code it checks."""
    namespace = doc.split("/", 1)[0]
    writers = policy.writers.get(namespace)
    if writers is None:
        writers = policy.writers.get(WILDCARD, frozenset())
    return author in writers


def _validity(replicas: Mapping[int, Replica], evidence: Evidence) -> Verdict:
    """Every change a correct replica created is applied by every correct replica."""
    wanted = sorted(h for hs in evidence.created.values() for h in hs)
    for i in sorted(replicas):
        missing = [h for h in wanted if h not in replicas[i]]
        if missing:
            return Verdict(
                "validity",
                False,
                f"replica {i} lacks {len(missing)} correct change(s), e.g. {missing[0].hex()[:16]}",
            )
    return Verdict("validity", True, f"all {len(wanted)} correct changes everywhere")


def _equivocation(replicas: Mapping[int, Replica], evidence: Evidence) -> Verdict:
    """Each twin of an equivocation is applied by all correct replicas or by none."""
    everywhere = 0
    for pair in evidence.equivocations:
        for h in pair:
            holders = [i for i in sorted(replicas) if h in replicas[i]]
            if holders and len(holders) != len(replicas):
                return Verdict(
                    "equivocation",
                    False,
                    f"{h.hex()[:16]} applied by replicas {holders} only",
                )
            everywhere += bool(holders)
    n = len(evidence.equivocations)
    return Verdict("equivocation", True, f"{n} pairs; {everywhere} twins applied everywhere")


def _replay(replicas: Mapping[int, Replica], evidence: Evidence, rng: random.Random) -> Verdict:
    """Applying the held changes to a fresh replica, in a random causal order and in a
    random arrival order, gives the same state: the result depends on the set alone."""
    if not replicas:
        return Verdict("replay", True, "no replicas")
    i = min(replicas)
    source = replicas[i]
    changes = source.ordered(source.ids)
    for label, order in (
        ("causal", _causal_shuffle(changes, rng)),
        ("arrival", rng.sample(changes, len(changes))),
    ):
        fresh = Replica(evidence.policy, evidence.limits)
        for change in order:
            fresh.receive(change.encoded)
        if set(fresh.ids) != set(source.ids) or fresh.heads != source.heads:
            return Verdict("replay", False, f"{label} replay of replica {i} holds other changes")
        for doc in source.documents():
            if canonical_state(fresh, doc) != canonical_state(source, doc):
                return Verdict("replay", False, f"{label} replay of replica {i} differs in {doc}")
    return Verdict("replay", True, f"{len(changes)} changes replayed in two random orders")


def _causal_shuffle(changes: list[Change], rng: random.Random) -> list[Change]:
    """A uniformly chosen ready change at each step: a random topological order."""
    by_hash = {c.hash: c for c in changes}
    waiting = {c.hash: {d for d in c.deps if d in by_hash} for c in changes}
    children: dict[bytes, list[bytes]] = {}
    for h, deps in waiting.items():
        for d in deps:
            children.setdefault(d, []).append(h)
    ready = sorted(h for h, deps in waiting.items() if not deps)
    out = []
    while ready:
        h = ready.pop(rng.randrange(len(ready)))
        out.append(by_hash[h])
        for child in sorted(children.get(h, ())):
            waiting[child].discard(h)
            if not waiting[child]:
                ready.append(child)
    return out


# -- report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrdtSimResult:
    """One run's outcome: what happened, what was caught, whether the invariants held."""

    config: CrdtSimConfig
    seed: int
    verdicts: tuple[Verdict, ...]
    replica_kinds: Mapping[int, str]
    virtual_ms: float
    events: int
    changes_created: int
    changes_created_byzantine: int
    changes_final: int
    messages: int
    bytes: int
    lost: int
    duplicated: int
    dropped_at_crashed: int
    sessions: int
    restarts: int
    skipped_intents: int
    faults_by_sender: Mapping[str, int]
    faults_by_reason: Mapping[str, int]
    rejected_by_reason: Mapping[str, int]
    attacks: Mapping[str, int]
    convergence_ms: float | None
    rounds: int
    trace_hash: str

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def violated(self) -> list[str]:
        return [v.name for v in self.verdicts if not v.ok]

    @property
    def replay(self) -> str:
        return self.config.replay_command(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "seed": self.seed,
            "ok": self.ok,
            "violated": self.violated,
            "verdicts": [asdict(v) for v in self.verdicts],
            "replicas": {str(k): v for k, v in sorted(self.replica_kinds.items())},
            "virtual_ms": round(self.virtual_ms, 3),
            "events": self.events,
            "changes_created": self.changes_created,
            "changes_created_byzantine": self.changes_created_byzantine,
            "changes_final": self.changes_final,
            "messages": self.messages,
            "bytes": self.bytes,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "dropped_at_crashed": self.dropped_at_crashed,
            "sessions": self.sessions,
            "restarts": self.restarts,
            "skipped_intents": self.skipped_intents,
            "faults_by_sender": dict(sorted(self.faults_by_sender.items())),
            "faults_by_reason": dict(sorted(self.faults_by_reason.items())),
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "attacks": dict(sorted(self.attacks.items())),
            "convergence_ms": None
            if self.convergence_ms is None
            else round(self.convergence_ms, 3),
            "rounds": self.rounds,
            "trace_hash": self.trace_hash,
            "replay": self.replay,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        c = self.config
        byz = ",".join(c.byzantine) or "none"
        conv = "never" if self.convergence_ms is None else f"{self.convergence_ms:.0f} ms"
        lines = [
            f"dagrider crdt-sim: replicas={c.replicas} byzantine={byz} seed={self.seed}",
            f"  virtual time   {self.virtual_ms / 1000:.2f} s, {self.events} events",
            f"  changes        {self.changes_created} by correct replicas, "
            f"{self.changes_created_byzantine} by Byzantine ones; {self.changes_final} held",
            f"  traffic        {self.messages} messages, {self.bytes / 1e3:.1f} kB "
            f"({self.lost} lost, {self.duplicated} duplicated); {self.sessions} sessions",
            f"  faults seen    {_fmt(self.faults_by_sender)}",
            f"  rejected       {_fmt(self.rejected_by_reason)}",
            f"  convergence    {conv} after the faults ended ({self.rounds} rounds); "
            f"{self.restarts} restarts",
            "  invariants:",
        ]
        for v in self.verdicts:
            lines.append(f"    {'PASS' if v.ok else 'FAIL'} {v.name:<12} {v.detail}")
        lines.append(f"  trace {self.trace_hash}")
        if not self.ok:
            lines.append(f"  replay with: {self.replay}")
        return "\n".join(lines)


def _fmt(counts: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def fault_category(reason: str) -> str:
    """A stable bucket for a :class:`~crdt.sync.Fault` reason (which is free text)."""
    if reason.startswith("sent "):
        return "rejected-change"
    if reason.startswith("not msgpack") or reason.startswith("undecodable"):
        return "undecodable"
    if "session already finished" in reason or "open sessions" in reason or "rounds" in reason:
        return "session-state"
    return "malformed"


# -- the run ------------------------------------------------------------------------------


@dataclass
class _Writer:
    """A correct replica and its "disk": the encoded changes it applied, in order."""

    signer: KeySigner
    replica: Replica
    engine: SyncEngine
    disk: list[bytes] = field(default_factory=list)


class _Run:
    """One simulation; :func:`run` is its only entry point."""

    def __init__(self, cfg: CrdtSimConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.rng = rng = random.Random(seed)
        n = cfg.replicas
        self.limits = CrdtLimits()
        self.world = World(
            n, rng, latency.by_name(cfg.latency), Adversary(reorder_probability=cfg.reorder)
        )
        seeds = [rng.randbytes(32) for _ in range(n)]
        signers = [KeySigner(s) for s in seeds]
        byz_at = sorted(rng.sample(range(n), len(cfg.byzantine)))
        self.kinds = dict.fromkeys(range(n), "correct")
        self.kinds.update(zip(byz_at, cfg.byzantine, strict=True))
        self.correct = [i for i in range(n) if self.kinds[i] == "correct"]
        self.admin = self.correct[0]
        members = frozenset(s.public_key for s in signers)
        self.policy = AccessPolicy(
            {"notes": members, "admin": frozenset({signers[self.admin].public_key})}
        )
        self.docs = tuple(f"notes/d{k}" for k in range(cfg.docs))
        self.writers = {i: self._fresh(signers[i]) for i in self.correct}
        self.created: dict[bytes, set[bytes]] = {signers[i].public_key: set() for i in self.correct}
        victims = tuple(signers[i].public_key for i in self.correct)
        self.byz: dict[int, ByzantineReplica] = {}
        for i in byz_at:
            others = tuple(p for p in range(n) if p != i)
            setting = Setting(
                i, others, seeds[i], self.policy, victims, self.docs, "admin/s", self.limits
            )
            self.byz[i] = BEHAVIOURS[self.kinds[i]](setting)
        self.calm = False
        self.events = 0
        self.trace = hashlib.blake2b(digest_size=16)
        self.lost = self.duplicated = self.dead_drops = 0
        self.sessions = self.restarts = self.skipped = 0
        self.rounds = 0
        self.applied_in_round = 0
        self.converged_at: float | None = None
        self.faults_by_sender: Counter[str] = Counter()
        self.faults_by_reason: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.recovery_failures: list[str] = []
        self.crashes: list[str] = []

    def _fresh(self, signer: KeySigner) -> _Writer:
        replica = Replica(self.policy, self.limits)
        return _Writer(signer, replica, SyncEngine(replica))

    # -- scheduling ---------------------------------------------------------------------

    def setup(self) -> None:
        w, rng, cfg = self.world, self.rng, self.cfg
        for i in self.correct:
            w.schedule(rng.uniform(0, cfg.write_ms), "write", i)
            w.schedule(rng.uniform(0, cfg.session_ms), "session", i)
        for i in self.byz:
            w.schedule(rng.uniform(0, 150), "byz", i)
        window = cfg.fault_ms * 0.8
        for _ in range(cfg.partitions):
            w.schedule(rng.uniform(0, window), "split", -1, rng.uniform(200, 1_500))
        for _ in range(cfg.crashes):
            victim = rng.choice(self.correct)
            w.schedule(rng.uniform(0, window), "crash", victim, rng.uniform(100, 1_200))
        w.schedule(cfg.fault_ms, "calm", -1)

    def run(self) -> CrdtSimResult:
        self.setup()
        w = self.world
        while self.events < MAX_EVENTS:
            ev = w.pop()
            if ev is None:
                if self.calm and self._next_round():
                    continue
                break
            self.events += 1
            self.trace.update(struct.pack(">dq", ev.time, ev.node) + ev.kind.encode() + b"\0")
            self.dispatch(ev.kind, ev.node, ev.payload)
            if self.calm:
                self._track_convergence()
        return self.report()

    def dispatch(self, kind: str, i: int, payload: Any) -> None:
        w = self.world
        if kind == "deliver":
            src, data, _ = cast(tuple[int, bytes, None], payload)
            digest = hashlib.blake2b(data, digest_size=8).digest()
            self.trace.update(struct.pack(">q", src) + digest)
            self.deliver(src, i, data)
        elif kind == "write":
            if not self.calm:
                if w.alive[i]:
                    self.write(i)
                w.schedule(w.now + self.rng.uniform(0.5, 1.5) * self.cfg.write_ms, "write", i)
        elif kind == "session":
            if not self.calm:
                if w.alive[i]:
                    self.start_session(i, self.rng.choice([p for p in range(w.n) if p != i]))
                w.schedule(w.now + self.rng.uniform(0.5, 1.5) * self.cfg.session_ms, "session", i)
        elif kind == "byz":
            if not self.calm:
                for p in self.byz[i].tick(int(w.now), self.rng):
                    self.send(i, p.dst, p.data)
                w.schedule(w.now + self.rng.uniform(50, 200), "byz", i)
        elif kind == "split":
            if not self.calm and w.partition is None:
                w.split([self.rng.randrange(2) for _ in range(w.n)])
                w.schedule(w.now + float(payload), "heal", -1)
        elif kind == "heal":
            w.heal()
        elif kind == "crash":
            if not self.calm and w.alive[i]:
                self.crash(i)
                w.schedule(w.now + float(payload), "restart", i)
        elif kind == "restart":
            if not w.alive[i]:
                self.restart(i)
        elif kind == "calm":
            self.calm_down()

    # -- network ------------------------------------------------------------------------

    def send(self, src: int, dst: int, data: bytes) -> None:
        """Loss and duplication only while faults last; World adds delay and partitions."""
        if not self.calm:
            if self.rng.random() < self.cfg.loss:
                self.lost += 1
                return
            if self.rng.random() < self.cfg.duplicate:
                self.duplicated += 1
                self.world.send(src, dst, data, None)
        self.world.send(src, dst, data, None)

    def deliver(self, src: int, dst: int, data: bytes) -> None:
        if not self.world.alive[dst]:
            self.dead_drops += 1
            return
        node = self.byz.get(dst)
        if node is not None:
            if not self.calm:
                for p in node.receive(src, data, self.rng):
                    self.send(dst, p.dst, p.data)
            return
        try:
            result = self.writers[dst].engine.receive(src, data)
        except Exception as exc:  # the engine promises never to raise on peer input
            self.crashes.append(f"replica {dst} raised {type(exc).__name__}: {exc}"[:200])
            return
        self.handle(dst, result)

    def handle(self, i: int, result: SyncResult) -> None:
        """Perform a correct engine's effects: persist, send, count faults."""
        writer = self.writers[i]
        writer.disk.extend(c.encoded for c in result.applied)
        self.applied_in_round += len(result.applied)
        for fault in result.faults:
            self.faults_by_sender[self.kinds[cast(int, fault.peer)]] += 1
            self.faults_by_reason[fault_category(fault.reason)] += 1
        for reason, _ in result.rejected:
            self.rejected[reason] += 1
        for s in result.sends:
            self.send(i, cast(int, s.peer), s.payload)

    # -- correct replicas ---------------------------------------------------------------

    def write(self, i: int) -> None:
        writer = self.writers[i]
        rng = self.rng
        doc = rng.choice(self.docs)
        if rng.random() < 0.05:  # only the admin may: the others' attempts are refused
            doc = "admin/s"
        author = writer.signer.public_key
        try:
            ops = random_ops(writer.replica.document(doc), author, rng)
            change, receipt = writer.replica.create(writer.signer, doc, ops, int(self.world.now))
        except InvalidOperation:
            self.skipped += 1
            return
        writer.disk.extend(c.encoded for c in receipt.applied)
        self.created[author].add(change.hash)
        peers = [p for p in range(self.world.n) if p != i]
        self.handle(i, writer.engine.push(change, peers))

    def start_session(self, i: int, peer: int) -> None:
        self.sessions += 1
        self.handle(i, self.writers[i].engine.start_session(peer))

    def crash(self, i: int) -> None:
        """The process dies: its links drop, so every peer forgets its sessions with it."""
        self.world.alive[i] = False
        self._links_reset(i)

    def restart(self, i: int) -> None:
        """Rebuild the replica from its disk, as a restarted daemon would, then resync."""
        old = self.writers[i]
        writer = self._fresh(old.signer)
        writer.disk = old.disk
        for data in old.disk:
            receipt = writer.replica.receive(data, verify=False)
            if receipt.status != "applied":
                self.recovery_failures.append(f"replica {i}: {receipt.reason} {receipt.detail}")
        self.writers[i] = writer
        self.world.alive[i] = True
        self.restarts += 1
        self._links_reset(i)
        for peer in self.rng.sample([p for p in range(self.world.n) if p != i], 2):
            self.start_session(i, peer)

    def _links_reset(self, i: int) -> None:
        for j, writer in self.writers.items():
            if j != i:
                writer.engine.peer_gone(i)
        for node in self.byz.values():
            node.peer_gone(i)

    # -- the calm phase -----------------------------------------------------------------

    def calm_down(self) -> None:
        """Faults end: heal, restart, stop writes and Byzantine traffic, start round 1."""
        self.calm = True
        self.world.heal()
        for i in self.correct:
            if not self.world.alive[i]:
                self.restart(i)
        self._next_round()

    def _next_round(self) -> bool:
        """Every correct replica opens a session with every other one, until a whole
        round applies nothing (quiescence) or ``max_rounds`` rounds ran."""
        if self.rounds and not self.applied_in_round:
            return False
        if self.rounds >= self.cfg.max_rounds:
            return False
        self.rounds += 1
        self.applied_in_round = 0
        for i in self.correct:
            for j in self.correct:
                if i != j:
                    self.start_session(i, j)
        return True

    def _track_convergence(self) -> None:
        """Remember when the correct replicas last became equal (and stayed so)."""
        first = self.writers[self.correct[0]].replica
        same = all(
            len(self.writers[i].replica) == len(first)
            and self.writers[i].replica.heads == first.heads
            for i in self.correct[1:]
        )
        if not same:
            self.converged_at = None
        elif self.converged_at is None:
            self.converged_at = self.world.now

    # -- report -------------------------------------------------------------------------

    def report(self) -> CrdtSimResult:
        replicas = {i: self.writers[i].replica for i in self.correct}
        equivocations = tuple(p for node in self.byz.values() for p in node.equivocations)
        evidence = Evidence(
            self.policy,
            self.limits,
            {k: frozenset(v) for k, v in self.created.items()},
            equivocations,
        )
        verdicts = check_replicas(replicas, evidence, self.rng)
        quiet = self.rounds < self.cfg.max_rounds or not self.applied_in_round
        verdicts += [
            Verdict(
                "quiescence",
                quiet and self.events < MAX_EVENTS,
                f"{self.rounds} rounds, {self.events} events",
            ),
            Verdict(
                "robustness",
                not self.crashes,
                "; ".join(self.crashes[:3]) or "no exception escaped a sync engine",
            ),
            Verdict(
                "recovery",
                not self.recovery_failures,
                "; ".join(self.recovery_failures[:3]) or f"{self.restarts} restarts replayed",
            ),
        ]
        for i in sorted(replicas):
            self.trace.update(b"".join(sorted(replicas[i].ids)))
        attacks: Counter[str] = Counter()
        for node in self.byz.values():
            attacks[node.kind] += node.attacks
        convergence = None
        if self.converged_at is not None:
            convergence = max(0.0, self.converged_at - self.cfg.fault_ms)
        return CrdtSimResult(
            config=self.cfg,
            seed=self.seed,
            verdicts=tuple(verdicts),
            replica_kinds={i: k for i, k in self.kinds.items() if k != "correct"},
            virtual_ms=self.world.now,
            events=self.events,
            changes_created=sum(len(v) for v in self.created.values()),
            changes_created_byzantine=sum(n.created for n in self.byz.values()),
            changes_final=len(replicas[self.correct[0]]),
            messages=self.world.sent.messages,
            bytes=self.world.sent.bytes,
            lost=self.lost,
            duplicated=self.duplicated,
            dropped_at_crashed=self.dead_drops,
            sessions=self.sessions,
            restarts=self.restarts,
            skipped_intents=self.skipped,
            faults_by_sender=dict(self.faults_by_sender),
            faults_by_reason=dict(self.faults_by_reason),
            rejected_by_reason=dict(self.rejected),
            attacks=dict(attacks),
            convergence_ms=convergence,
            rounds=self.rounds,
            trace_hash=self.trace.hexdigest(),
        )


def run(cfg: CrdtSimConfig, seed: int) -> CrdtSimResult:
    """Simulate ``cfg`` with ``seed``. The same inputs always give the same result."""
    return _Run(cfg, seed).run()
