"""End-to-end: a Byzantine member floods three real daemons with future-round traffic.

Node 3's daemon is never started; the test holds node 3's real keys and speaks to
nodes 0-2 as member 3 through a real ``PeerTransport`` (TLS 1.3, pinned keys, p2p
framing, send queues with back-pressure: the path a daemon's own messages take). While
a client submits transactions at a steady rate, member 3 sends each peer:

* well-formed VALs of its own vertices far above the committee's round (+30, +10 000)
  whose 2f+1 strong edges name vertices that do not exist;
* as fast as the links accept, VALs for every future round from the current one + 2
  on, alternating vertices as large as the codec admits (just under
  ``Limits.max_message_bytes``, transactions of ``max_tx_bytes``) with vertices whose
  block is just under ``Limits.max_block_bytes`` (where that limit exists);
* repeated ``VertexRequest``s for the largest vertices the correct nodes broadcast
  (request amplification);
* ECHO/READY votes with random digests for future rounds, valid coin shares (made with
  node 3's real coin key) for future waves and malformed ones.

The three correct nodes (2f+1) must keep committing during and after the attack, agree
on their logs, stay within a memory bound (``VmRSS`` of each daemon: at most the
pre-attack baseline + ``RSS_HEADROOM`` and never above ``RSS_CAP``) and report member 3
in ``dagrider_peer_misbehaviour_total``. The attack is bounded in time and bytes, and
everything stays on 127.0.0.1. Every measurement is printed (``pytest -s``) and is part
of the failure message.

No verdict depends on how fast the machine is. "Keeps committing" is checked in three
phases (first half of the attack, second half, after it): each lasts at least its
nominal length (the attack's shape) and then until every correct node's log head has
grown past where it stood when the phase began, with the attacker still flooding for
the two attack phases. A committee that stalls under the attack never ends a phase:
the phase's hang limit (``PHASE_HANG_S``, far beyond any normal phase) fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import os
import re
import resource
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from e2e.helpers import assert_same_log, wait_for_logs

from dagrider.codec import T_RESP, T_VAL, VERSION, Codec, encode
from dagrider.coin import CoinSecretShare, CoinShare, make_share
from dagrider.committee import Committee, NodeSecret
from dagrider.errors import DecodeError
from dagrider.keygen import key_file_name
from dagrider.messages import (
    CoinShareMsg,
    Echo,
    Ready,
    Val,
    Vertex,
    VertexRef,
    VertexRequest,
)
from dagrider.node.batch import BATCH_CONTENT_TYPE, encode_batch
from dagrider.node.client import full_log
from dagrider.node.cluster import LocalCluster
from dagrider.node.config import parse_address
from dagrider.params import Limits
from p2p.errors import PeerNotConnected
from p2p.framing import LINK_KINDS, FrameKind
from p2p.identity import Identity, peer_id
from p2p.testing import loopback_config
from p2p.transport import PeerTransport

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
BYZANTINE = 3
CORRECT = [0, 1, 2]

ATTACK_SECONDS = 20.0
"""Shortest attack: each half lasts at least half of it (then until every node committed)."""
ATTACK_BYTES = 16 * 1024 * MiB
"""Upper bound on what member 3 sends in all: a guard against a runaway attack, far above
what a normal run sends (about 1.5 GiB in ``ATTACK_SECONDS`` on 2 cores). Reaching it
ends the flood early, which fails the test: the phases were then not under attack."""
AFTER_SECONDS = 6.0
"""Shortest phase after the attack (then until every node committed again)."""
PHASE_HANG_S = 180.0
"""Hang limit of one phase past its shortest length: only a stalled committee reaches it."""
FINAL_HANG_S = 180.0
"""Hang limit for everything accepted during and after the attack to be committed."""
BASELINE_SAMPLES = 5
"""RSS samples per node after the warm-up whose median is the pre-attack baseline."""
RSS_HEADROOM = 192 * MiB
RSS_CAP = 512 * MiB

LOAD_PERIOD = 0.1
"""One client batch per period, round-robin over the correct nodes."""
LOAD_SMALL_TXS = 10
LOAD_LARGE_TX = 16 * 1024
"""One transaction this large per batch makes the correct vertices worth requesting."""

REQUEST_PERIOD = 0.025
REQUEST_TARGETS = 8
REQUESTS_PER_TARGET = 4
VOTE_PERIOD = 0.1
VOTES_PER_TICK = 50
FAR_FUTURE = (30, 10_000)
FAR_FUTURE_PERIOD = 5.0
LINK_HANG_S = 90.0
"""Hang limit for member 3 to link to every correct node and hear a VAL."""
COIN_WAVES_AHEAD = 100

_LIMITS = Limits()
_BLOCK_MAX = int(getattr(_LIMITS, "max_block_bytes", MiB))
"""Largest block a vertex may carry where the DAG bounds it (1 MiB otherwise)."""


# -- wire bytes of member 3's vertices -------------------------------------------------


def _packb(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


_VAL_HEAD = b"\x83" + _packb("t") + _packb(T_VAL) + _packb("x") + b"\x95"
_VAL_TAIL = _packb([]) + _packb("v") + _packb(VERSION)
_VAL_PREFIX = b"\x83" + _packb("t") + _packb(T_VAL)
_RESP_PREFIX = b"\x83" + _packb("t") + _packb(T_RESP)


def _val_bytes(rnd: int, packed_block: bytes, packed_strong: bytes) -> bytes:
    """``encode(Val(Vertex(rnd, 3, block, strong, ())))`` with the block packed once, so
    that a flood of 8 MiB vertices costs the attacker a memcpy each, not a re-encoding."""
    return b"".join(
        (_VAL_HEAD, _packb(rnd), _packb(BYZANTINE), packed_block, packed_strong, _VAL_TAIL)
    )


def _fill_block(room: int, max_tx_bytes: int, max_txs: int, max_sum: int | None) -> list[bytes]:
    """Transactions whose packed list takes at most ``room`` bytes (and whose sizes sum
    to at most ``max_sum``), as close to either bound as the per-transaction limits allow."""
    chunk = os.urandom(max_tx_bytes)
    txs: list[bytes] = []
    used = 5  # array header, worst case
    total = 0
    while len(txs) < max_txs:
        size = min(max_tx_bytes, room - used - 5)  # 5: bin32 header, worst case
        if max_sum is not None:
            size = min(size, max_sum - total)
        if size <= 0:
            break
        txs.append(chunk[:size])
        used += size + 5
        total += size
    return txs


class VertexFactory:
    """Member 3's vertices: deterministic per round (the same bytes to every peer, so
    member 3 floods without equivocating), strong edges to 2f+1 made-up digests."""

    def __init__(self, limits: Limits) -> None:
        self.salt = os.urandom(16)
        edges = self._strong(limits.max_round)
        room = limits.max_message_bytes - len(_val_bytes(limits.max_round, b"", edges)) - 64
        jumbo = _fill_block(room, limits.max_tx_bytes, limits.max_txs_per_vertex, None)
        block_max = _fill_block(
            room, limits.max_tx_bytes, limits.max_txs_per_vertex, _BLOCK_MAX - 64
        )
        self.jumbo = _packb(jumbo)
        self.block_max = _packb(block_max)
        self.tiny = _packb([b"far-future vertex of member 3"])
        # The hand-made bytes are exactly what the codec would produce.
        sample = Vertex(7, BYZANTINE, (b"a", b"bc"), self._refs(7), ())
        assert encode(Val(sample)) == _val_bytes(7, _packb([b"a", b"bc"]), self._strong(7))

    def _refs(self, rnd: int) -> tuple[VertexRef, ...]:
        def digest(s: int) -> bytes:
            return hashlib.blake2b(f"{rnd}/{s}".encode(), digest_size=32, key=self.salt).digest()

        return tuple(VertexRef(rnd - 1, s, digest(s)) for s in CORRECT)

    def _strong(self, rnd: int) -> bytes:
        return _packb([[e.round, e.source, e.digest] for e in self._refs(rnd)])

    def flood(self, rnd: int) -> bytes:
        return _val_bytes(rnd, self.jumbo if rnd % 2 else self.block_max, self._strong(rnd))

    def far(self, rnd: int) -> bytes:
        return _val_bytes(rnd, self.tiny, self._strong(rnd))


# -- the Byzantine member --------------------------------------------------------------


@dataclass
class AttackStats:
    flood_frames: int = 0
    flood_bytes: int = 0
    far_future_frames: int = 0
    requests: int = 0
    requests_dropped: int = 0
    votes: int = 0
    coin_shares: int = 0
    responses: int = 0
    response_bytes: int = 0
    received_bytes: int = 0
    links_made: int = 0
    links_lost: int = 0
    connect_failures: int = 0
    first_round: int = 0
    highest_round_seen: int = 0
    highest_round_sent: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def total_sent(self) -> int:
        return self.flood_bytes + 64 * (self.requests + self.votes + self.coin_shares)


def _ignore(_key: bytes, _payload: bytes) -> None:
    return None


class ByzantineMember:
    """Member 3 on its own event loop (in a thread): a real ``PeerTransport`` with node
    3's identity, dialling each correct node once and again whenever a link drops."""

    def __init__(self, cluster: LocalCluster, byte_budget: int) -> None:
        assert cluster.committee is not None
        committee: Committee = cluster.committee
        self.secret = NodeSecret.load(cluster.committee_dir / key_file_name(BYZANTINE))
        self.identity = Identity.from_seed(self.secret.identity_seed)
        self.committee = committee
        self.keys = {i: committee.member(i).identity_key for i in CORRECT}
        self.addresses = {i: parse_address(str(committee.member(i).address)) for i in CORRECT}
        self.id_of = {k: i for i, k in self.keys.items()}
        self.codec = Codec(committee.n, _LIMITS)
        self.vertices = VertexFactory(_LIMITS)
        self.byte_budget = byte_budget
        self.stats = AttackStats()
        self.recent: deque[tuple[int, VertexRef]] = deque(maxlen=48)
        self.round = 0  # highest round among the correct nodes' VALs
        self._stop = threading.Event()
        self._started = 0.0
        self.ended: str | None = None
        """Why the flood stopped: "stopped" (the test said so) or "byte budget"."""
        self._thread = threading.Thread(target=self._run, name="byzantine-3", daemon=True)
        self._ready = threading.Event()

    # -- thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Link to every correct node, learn the committee's round, then start flooding
        (the flood goes on until :meth:`stop`, or until the byte budget is spent)."""
        self._thread.start()
        if not self._ready.wait(LINK_HANG_S + 30):
            raise TimeoutError(f"member 3 could not link to the committee: {self.stats}")

    def flooding(self) -> bool:
        """Whether the attack is still on: started, not stopped, budget not spent."""
        return self._ready.is_set() and not self._over() and self._thread.is_alive()

    def stop(self) -> AttackStats:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the attacker did not stop"
        return self.stats

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # reported, not raised in a thread
            self.stats.errors.append(repr(exc))
        finally:
            self._ready.set()

    # -- inputs from the correct nodes ----------------------------------------------------

    def _on_frame(self, key: bytes, payload: bytes) -> None:
        self.stats.received_bytes += len(payload)
        head = payload[:4]
        if head == _RESP_PREFIX:  # what request amplification buys: counted, not decoded
            self.stats.responses += 1
            self.stats.response_bytes += len(payload)
            return
        if head != _VAL_PREFIX:
            return
        try:
            msg = self.codec.decode(payload)
        except DecodeError:
            return
        if isinstance(msg, Val) and msg.vertex.source == self.id_of.get(key):
            self.round = max(self.round, msg.vertex.round)
            self.recent.append((len(payload), msg.vertex.ref))

    def _on_disconnected(self, key: bytes) -> None:
        self.stats.links_lost += 1

    # -- the attack -----------------------------------------------------------------------

    def _over(self) -> bool:
        if self.ended is None:
            if self._stop.is_set():
                self.ended = "stopped"
            elif self.stats.total_sent() >= self.byte_budget:
                self.ended = "byte budget"
        return self.ended is not None

    async def _link(self, transport: PeerTransport, i: int) -> bool:
        if transport.has_link(self.keys[i]):
            return True
        try:
            await transport.connect(self.keys[i], self.addresses[i], timeout=10.0)
        except (PeerNotConnected, TimeoutError):
            self.stats.connect_failures += 1
            await asyncio.sleep(0.2)
            return False
        self.stats.links_made += 1
        return True

    async def _main(self) -> None:
        log = logging.getLogger("e2e.byzantine-3")
        transport = PeerTransport(
            self.identity,
            loopback_config(0, send_queue_bytes=24 * MiB),
            {},
            set(self.keys.values()),
            self._on_frame,
            on_disconnected=self._on_disconnected,
            logger=log,
            # What else a daemon sends a member (CRDT sync, ...) is accepted and ignored.
            channels={k: _ignore for k in FrameKind if k not in LINK_KINDS},
        )
        await transport.start()
        try:
            start = time.monotonic()  # hang limits only: linking is not under test
            for i in CORRECT:
                while not await self._link(transport, i):
                    if time.monotonic() - start > LINK_HANG_S:
                        raise TimeoutError(f"no link to node {i}")
            while self.round == 0:  # their resync tells us where the committee is
                if time.monotonic() - start > LINK_HANG_S:
                    raise TimeoutError("no VAL from the correct nodes")
                await asyncio.sleep(0.05)
            self.stats.first_round = self.round
            shares = self._coin_shares()
            self._started = time.monotonic()
            self._ready.set()
            tasks = []
            for i in CORRECT:
                tasks += [
                    asyncio.create_task(self._flood(transport, i)),
                    asyncio.create_task(self._far_future(transport, i)),
                    asyncio.create_task(self._requests(transport, i)),
                    asyncio.create_task(self._votes(transport, i, shares)),
                ]
            await asyncio.gather(*tasks)
            self.stats.seconds = round(time.monotonic() - self._started, 1)
            self.stats.highest_round_seen = self.round
        finally:
            await transport.close()

    async def _flood(self, transport: PeerTransport, i: int) -> None:
        """Future VALs, one per round, as fast as the link drains (send_wait)."""
        key = self.keys[i]
        next_round = 0
        while not self._over():
            if not await self._link(transport, i):
                continue
            rnd = max(next_round, self.round + 2)
            next_round = rnd + 1
            payload = self.vertices.flood(rnd)
            try:
                await transport.send_wait(key, payload)
            except PeerNotConnected:
                continue
            self.stats.flood_frames += 1
            self.stats.flood_bytes += len(payload)
            self.stats.highest_round_sent = max(self.stats.highest_round_sent, rnd)
            await asyncio.sleep(0)

    async def _far_future(self, transport: PeerTransport, i: int) -> None:
        """VALs far above the committee, parents that do not exist; again every few
        seconds relative to where the committee has got to."""
        while not self._over():
            if await self._link(transport, i):
                for ahead in FAR_FUTURE:
                    if transport.try_send(self.keys[i], self.vertices.far(self.round + ahead)):
                        self.stats.far_future_frames += 1
            await asyncio.sleep(FAR_FUTURE_PERIOD)

    def _largest(self) -> list[VertexRef]:
        return [ref for _, ref in sorted(self.recent, key=lambda e: -e[0])[:REQUEST_TARGETS]]

    async def _requests(self, transport: PeerTransport, i: int) -> None:
        """The same few large vertices, requested again and again."""
        while not self._over():
            await asyncio.sleep(REQUEST_PERIOD)
            if not transport.has_link(self.keys[i]):
                continue
            for ref in self._largest():
                data = encode(VertexRequest(ref.round, ref.source, ref.digest))
                for _ in range(REQUESTS_PER_TARGET):
                    if transport.try_send(self.keys[i], data):
                        self.stats.requests += 1
                    else:
                        self.stats.requests_dropped += 1

    def _coin_shares(self) -> list[bytes]:
        """Valid shares (node 3's real coin key) for waves ahead of the committee, and
        malformed ones."""
        secret = CoinSecretShare(BYZANTINE, self.secret.coin_share)
        y = self.committee.coin_public_key().verification_keys[BYZANTINE]
        first = self.round // 4 + 2
        domain = self.committee.committee_id
        out = [
            encode(CoinShareMsg(make_share(secret, y, w, domain)))
            for w in range(first, first + COIN_WAVES_AHEAD)
        ]
        junk = (os.urandom(32) for _ in range(3 * COIN_WAVES_AHEAD))
        out += [
            encode(CoinShareMsg(CoinShare(w, BYZANTINE, next(junk), next(junk), next(junk))))
            for w in range(first + 1000, first + 1000 + COIN_WAVES_AHEAD)
        ]
        return out

    async def _votes(self, transport: PeerTransport, i: int, shares: list[bytes]) -> None:
        """ECHO/READY for random future instances; coin shares for future waves."""
        rng = os.urandom
        k = 0
        while not self._over():
            await asyncio.sleep(VOTE_PERIOD)
            key = self.keys[i]
            if not transport.has_link(key):
                continue
            for _ in range(VOTES_PER_TICK // 2):
                rnd = self.round + 3 + int.from_bytes(rng(3)) % 100_000
                source = int.from_bytes(rng(1)) % self.committee.n
                for vote in (Echo(rnd, source, rng(32)), Ready(rnd, source, rng(32))):
                    if transport.try_send(key, encode(vote)):
                        self.stats.votes += 1
            for _ in range(5):
                if transport.try_send(key, shares[k % len(shares)]):
                    self.stats.coin_shares += 1
                k += 1


# -- the correct side: load and measurements ---------------------------------------------


def _post_batch(api: str, txs: list[bytes], timeout: float) -> bool:
    req = urllib.request.Request(
        f"{api}/v1/transactions/batch", data=encode_batch(txs), method="POST"
    )
    req.add_header("Content-Type", BATCH_CONTENT_TYPE)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return bool(json.loads(r.read()).get("accepted") == len(txs))
    except (urllib.error.URLError, OSError, ValueError):
        return False


class SteadyLoad:
    """A client batch every ``LOAD_PERIOD`` to the correct nodes in turn; remembers what
    each phase got accepted (an accepted transaction must end up in the log)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.phase = "before"
        self.accepted: dict[str, set[bytes]] = {}
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        k = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            phase = self.phase
            i = CORRECT[k % len(CORRECT)]
            txs = [f"{phase}-{k}-{j}-".encode().ljust(64, b".") for j in range(LOAD_SMALL_TXS)]
            txs.append(f"{phase}-{k}-large-".encode().ljust(LOAD_LARGE_TX, b"#"))
            if _post_batch(self.cluster.api_url(i), txs, timeout=5.0):
                self.accepted.setdefault(phase, set()).update(txs)
            else:
                self.refused += 1
            k += 1
            next_at += LOAD_PERIOD
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def sent(self, *phases: str) -> set[bytes]:
        return set().union(*(self.accepted.get(p, set()) for p in phases))

    def wait_accepted(self, phase: str, batches: int, timeout: float = 120.0) -> None:
        """Until ``batches`` batches of ``phase`` were accepted: the load is real however
        slow the machine (``timeout`` only ends a hang)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted.get(phase, ())) < batches * (LOAD_SMALL_TXS + 1):
            assert time.monotonic() < deadline, f"{phase}: {self.refused} batches refused"
            time.sleep(0.05)


def _rss(pid: int) -> int:
    """Resident set size of a process, bytes (``VmRSS`` in /proc/<pid>/status)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match is not None, f"no VmRSS for pid {pid}"
    return int(match.group(1)) * 1024


@dataclass
class Sample:
    t: float
    node: int
    rss: int
    head: int | None  # None: the API did not answer in time
    round: int | None


class Monitor:
    """Samples every daemon's RSS, log head and round twice a second from a thread."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in CORRECT:
                pid = self.cluster.pid(i)
                if pid is None or not self.cluster.alive(i):
                    continue
                try:
                    rss = _rss(pid)
                except OSError:  # it exited since alive(): the test's own checks say so
                    continue
                head: int | None = None
                rnd: int | None = None
                try:
                    status = self.cluster.get_json(i, "/v1/status", timeout=2.0)
                    head, rnd = int(status["log_head"]), int(status["round"])
                except (urllib.error.URLError, OSError, ValueError, KeyError):
                    pass  # the API did not answer in time
                self.samples.append(Sample(time.monotonic(), i, rss, head, rnd))
            self._stop.wait(0.5)

    def rss(self, node: int, start: float, end: float) -> list[int]:
        return [s.rss for s in self.samples if s.node == node and start <= s.t <= end]

    def baseline(self, count: int, timeout: float = 120.0) -> dict[int, int]:
        """Median RSS of each correct node over its next ``count`` samples (waits for
        them: a busy machine samples less often; ``timeout`` only ends a hang)."""
        since = time.monotonic()
        deadline = since + timeout
        while any(len(self.rss(i, since, math.inf)) < count for i in CORRECT):
            assert time.monotonic() < deadline, f"fewer than {count} RSS samples per node"
            time.sleep(0.1)
        return {i: int(statistics.median(self.rss(i, since, math.inf)[:count])) for i in CORRECT}

    def round_at(self, node: int, t: float) -> int | None:
        rounds = [s.round for s in self.samples if s.node == node and s.t <= t and s.round]
        return rounds[-1] if rounds else None

    def unanswered(self, node: int, start: float, end: float) -> int:
        return sum(
            1 for s in self.samples if s.node == node and start <= s.t <= end and s.head is None
        )


def _metric(cluster: LocalCluster, i: int, name: str, labels: str = "") -> float | None:
    """Sum of the samples of ``name`` whose label set contains ``labels``."""
    by_labels = _samples(cluster, i, name)
    if by_labels is None:
        return None
    return sum(v for lab, v in by_labels.items() if labels in lab)


def _samples(cluster: LocalCluster, i: int, name: str) -> dict[str, float] | None:
    """Label set -> value of every sample of ``name`` on node ``i`` (None: no answer)."""
    try:
        with urllib.request.urlopen(cluster.api_url(i) + "/metrics", timeout=30) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    found = re.findall(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.M)
    return {lab: float(value) for lab, value in found}


def _among_correct(cluster: LocalCluster) -> dict[int, float | None]:
    """Bytes each correct node's transport has sent to the other correct nodes so far
    (every frame: consensus, catch-up answers, keep-alives)."""
    assert cluster.committee is not None
    ids = {peer_id(cluster.committee.member(j).identity_key) for j in CORRECT}
    out: dict[int, float | None] = {}
    for i in CORRECT:
        try:
            peers = cluster.get_json(i, "/v1/status", timeout=10.0)["peers"]
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            out[i] = None
            continue
        out[i] = float(sum(p["bytes_out"] for k, p in peers.items() if k in ids))
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu(cluster: LocalCluster) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for i in CORRECT:
        pid = cluster.pid(i)
        out[i] = _cpu_seconds(pid) if pid is not None and cluster.alive(i) else None
    return out


def _between(a: dict[int, float | None], b: dict[int, float | None]) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for i, start in a.items():
        end = b[i]
        out[i] = None if start is None or end is None else round(end - start, 1)
    return out


def _mib_between(a: dict[int, float | None], b: dict[int, float | None]) -> dict[int, float | None]:
    return {i: None if d is None else round(d / MiB) for i, d in _between(a, b).items()}


def _logs(cluster: LocalCluster) -> dict[int, list[bytes]]:
    return {i: [base64.b64decode(e["data"]) for e in full_log(cluster.api_url(i))] for i in CORRECT}


def _wait_committed(cluster: LocalCluster, txs: set[bytes], timeout: float) -> float | None:
    """Seconds until every correct node's log holds ``txs``; None if it never did."""
    started = time.monotonic()
    try:
        wait_for_logs(cluster, CORRECT, txs, timeout=timeout)
    except (AssertionError, urllib.error.URLError, OSError):
        return None
    return round(time.monotonic() - started, 1)


def _grown(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def _heads(cluster: LocalCluster, timeout: float = 60.0) -> dict[int, int | None]:
    """Every correct node's log head, asking again while its API is slow to answer (under
    the flood it may be); None for a node that did not answer within ``timeout``."""
    heads: dict[int, int | None] = {}
    for i in CORRECT:
        heads[i] = None
        deadline = time.monotonic() + timeout
        while heads[i] is None and time.monotonic() < deadline:
            try:
                heads[i] = int(cluster.get_json(i, "/v1/status", timeout=30.0)["log_head"])
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                time.sleep(0.2)
    return heads


def _phase(
    cluster: LocalCluster, since: dict[int, int | None], shortest_until: float
) -> tuple[float, dict[int, int | None]]:
    """Wait until ``shortest_until`` (the phase's nominal end: the shape of the attack,
    not a verdict), then until every correct node's log head is past ``since``; return
    the time and the heads then. A node that stopped committing holds the phase open
    until ``PHASE_HANG_S`` past its nominal end; the heads returned then show it."""
    time.sleep(max(0.0, shortest_until - time.monotonic()))
    deadline = time.monotonic() + PHASE_HANG_S
    while True:
        heads = _heads(cluster)
        grown = all(
            h is not None and s is not None and h > s
            for h, s in zip(heads.values(), since.values(), strict=True)
        )
        if grown or time.monotonic() > deadline:
            return time.monotonic(), heads
        time.sleep(0.2)


# -- the test ---------------------------------------------------------------------------


def test_flooding_member_does_not_stop_or_bloat_the_others(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    began = time.monotonic()
    cluster = make_cluster(start=False, dht=False)
    for i in CORRECT:
        cluster.start(i)
    cluster.wait_ready(60, CORRECT)
    load = SteadyLoad(cluster)
    monitor = Monitor(cluster)
    load.start()
    monitor.start()
    report: dict[str, Any] = {}
    failures: list[str] = []
    try:
        # 1. The committee of three commits a steady load.
        load.wait_accepted("before", 20)
        warm = _wait_committed(cluster, load.sent("before"), timeout=FINAL_HANG_S)
        assert warm is not None, "the three correct nodes do not commit even before the attack"
        baseline = monitor.baseline(BASELINE_SAMPLES)

        # 2. Member 3 floods while the load goes on: two halves of at least
        # ATTACK_SECONDS / 2, each until every correct node committed something more.
        attacker = ByzantineMember(cluster, ATTACK_BYTES)
        traffic_start, cpu_start = _among_correct(cluster), _cpu(cluster)
        cpu_self = _own_cpu_seconds()
        attacker.start()
        load.phase = "during"
        t_attack = time.monotonic()
        h_attack = _heads(cluster)
        t_mid, h_mid = _phase(cluster, h_attack, t_attack + ATTACK_SECONDS / 2)
        flooding_mid = attacker.flooding()
        t_end, h_end = _phase(cluster, h_mid, t_attack + ATTACK_SECONDS)
        flooding_end = attacker.flooding()
        stats = attacker.stop()
        load.phase = "after"
        traffic_end, cpu_end = _among_correct(cluster), _cpu(cluster)
        cpu_self = _own_cpu_seconds() - cpu_self
        t_after, h_after = _phase(cluster, h_end, time.monotonic() + AFTER_SECONDS)
        load.stop()

        # 3. Everything accepted during and after the attack is committed everywhere.
        during, after = load.sent("during"), load.sent("after")
        committed_in = _wait_committed(cluster, during | after, FINAL_HANG_S)
        t_final = time.monotonic()
        traffic_final, cpu_final = _among_correct(cluster), _cpu(cluster)
        monitor.stop()

        try:
            logs = _logs(cluster)
        except (urllib.error.URLError, OSError) as exc:
            logs = {}
            failures.append(f"could not read the logs: {exc!r}")
        try:
            assert_same_log(logs or {0: []})
        except AssertionError as exc:
            failures.append(f"logs disagree: {exc}")
        if committed_in is None:
            missing = {i: len((during | after) - set(log)) for i, log in logs.items()}
            failures.append(
                f"transactions accepted during/after the attack not committed after "
                f"{FINAL_HANG_S} s: missing {missing} of {len(during | after)}"
            )

        heads = {i: [h[i] for h in (h_attack, h_mid, h_end, h_after)] for i in CORRECT}
        for i, (h0, h1, h2, h3) in heads.items():
            for name, a, b in (
                ("first half of the attack", h0, h1),
                ("second half of the attack", h1, h2),
                ("after the attack", h2, h3),
            ):
                if a is None or b is None or b <= a:
                    failures.append(
                        f"node {i}: log head did not grow in the {name} ({a} -> {b}) within "
                        f"{PHASE_HANG_S:.0f} s past its shortest length"
                    )
        for name, on in (("first", flooding_mid), ("second", flooding_end)):
            if not on:
                failures.append(
                    f"the flood ended ({attacker.ended}) before the {name} half of the attack "
                    "was seen to commit: that half was not under attack"
                )

        peak = {i: max(monitor.rss(i, t_attack, t_final), default=0) for i in CORRECT}
        for i in CORRECT:
            bound = min(baseline[i] + RSS_HEADROOM, RSS_CAP)
            if peak[i] > bound:
                failures.append(
                    f"node {i}: peak RSS {peak[i] / MiB:.0f} MiB over the bound "
                    f"{bound / MiB:.0f} MiB (baseline {baseline[i] / MiB:.0f} MiB)"
                )

        misbehaviour = {
            i: _metric(cluster, i, "dagrider_peer_misbehaviour_total", 'peer="3"') for i in CORRECT
        }
        for i, count in misbehaviour.items():
            if not count:
                failures.append(f"node {i}: dagrider_peer_misbehaviour_total{{peer=3}} = {count}")
        for i in CORRECT:
            if not cluster.alive(i):
                failures.append(f"node {i} exited: see {cluster.log_path(i)}")

        report = {
            "attack": {k: v for k, v in stats.__dict__.items() if k != "errors" or v},
            "attack_gib_sent": round(stats.total_sent() / 2**30, 2),
            "attack_ended": attacker.ended,
            "warmup_commit_s": warm,
            "baseline_rss_mib": {i: round(b / MiB) for i, b in baseline.items()},
            "peak_rss_mib": {i: round(p / MiB) for i, p in peak.items()},
            "peak_rss_mib_during_after_attack": {
                i: [
                    round(max(monitor.rss(i, a, b), default=0) / MiB)
                    for a, b in ((t_attack, t_end), (t_end, t_final))
                ]
                for i in CORRECT
            },
            "rss_bound_mib": {
                i: round(min(baseline[i] + RSS_HEADROOM, RSS_CAP) / MiB) for i in CORRECT
            },
            "log_head_at_attack_start_mid_end_after": heads,
            "round_at_attack_start_mid_end_after_final": {
                i: [monitor.round_at(i, t) for t in (t_attack, t_mid, t_end, t_after, t_final)]
                for i in CORRECT
            },
            "commits_during_attack": {i: _grown(h[0], h[2]) for i, h in heads.items()},
            "txs_accepted_during_attack": len(during),
            "txs_accepted_after_attack": len(after),
            "txs_committed_of_during": {i: len(during & set(log)) for i, log in logs.items()},
            "all_committed_within_s": committed_in,
            "client_batches_refused_or_timed_out": load.refused,
            "status_unanswered_during_attack": {
                i: monitor.unanswered(i, t_attack, t_end) for i in CORRECT
            },
            "misbehaviour_peer3": misbehaviour,
            "misbehaviour_by_peer": {
                i: _samples(cluster, i, "dagrider_peer_misbehaviour_total") for i in CORRECT
            },
            "mib_sent_among_correct_during_attack": _mib_between(traffic_start, traffic_end),
            "mib_sent_among_correct_after_attack": _mib_between(traffic_end, traffic_final),
            "cpu_s_during_attack": _between(cpu_start, cpu_end),
            "cpu_s_after_attack": _between(cpu_end, cpu_final),
            "cpu_s_test_process_during_attack": round(cpu_self, 1),
            "cpus": os.cpu_count(),
            "seconds_attack_after": [round(t_end - t_attack, 1), round(t_final - t_end, 1)],
            "bytes_received_from_peer3_mib": {
                i: round(
                    (_metric(cluster, i, "dagrider_peer_bytes_received_total", 'peer="3"') or 0)
                    / MiB
                )
                for i in CORRECT
            },
            "catchup_requests": {
                i: _metric(cluster, i, "dagrider_catchup_requests_total") for i in CORRECT
            },
            "wall_s": round(time.monotonic() - began, 1),
        }
        if stats.errors:
            failures.append(f"the attacker failed: {stats.errors}")
    finally:
        load.stop()
        monitor.stop()
    text = json.dumps(report, indent=1, default=str)
    print("\nbyzantine flood:", text)
    assert not failures, "\n".join(failures) + "\n" + text
