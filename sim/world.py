"""The simulated world: virtual clock, event queue, links, partitions and crashes.

Only this module (and the runner that drives it) owns randomness and time. Nodes are
the shipped :class:`~dagrider.process.Process`; every message crosses the wire as the
bytes the codec produced.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Any

from dagrider.messages import Message
from sim.latency import LatencyModel


@dataclass(frozen=True)
class Adversary:
    """Adversarial scheduling: random extra delays and a rotating set of slowed nodes.

    Every message is still delivered (the asynchronous model's only promise); the
    adversary chooses when. ``slow_nodes`` of them, re-drawn every ``epoch`` ms, have
    their outgoing messages held back by up to ``slow_delay`` ms.
    """

    reorder_probability: float = 0.3
    reorder_factor: float = 8.0
    slow_nodes: int = 0
    slow_delay: float = 800.0
    epoch: float = 600.0


MAX_DELAY = 10_000.0
"""Upper bound of any one message's delay (ms): the adversary controls timing, within a
bound, so that a run's length is bounded too (long-tail samples are capped here)."""


@dataclass
class Link:
    """Counters for one direction of traffic, for the run's report."""

    messages: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Event:
    time: float
    seq: int
    kind: str
    node: int
    payload: Any = None


_Entry = tuple[float, int, str, int, Any]  # heap entries are plain tuples: fast to compare


class World:
    """Event queue plus the network between ``n`` nodes."""

    def __init__(
        self,
        n: int,
        rng: random.Random,
        latency: LatencyModel,
        adversary: Adversary | None,
        out_delay: dict[int, float] | None = None,
    ) -> None:
        self.n = n
        self.rng = rng
        self.latency = latency
        self.adversary = adversary
        self.now = 0.0
        self._queue: list[_Entry] = []
        self._seq = 0
        self.alive = [True] * n
        self.partition: list[int] | None = None  # group id per node while partitioned
        self.held: list[tuple[int, int, bytes, Message | None]] = []
        self.sent = Link()
        self.dropped = 0
        self._slow: set[int] = set()
        self._slow_epoch = -1
        # Extra delay (ms) on every message a node sends, on top of the link's: a slow
        # (but correct) node. Not capped by MAX_DELAY: it is the node, not the network.
        self.out_delay: dict[int, float] = dict(out_delay or {})

    def schedule(self, at: float, kind: str, node: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, node, payload))

    def pop(self) -> Event | None:
        if not self._queue:
            return None
        entry = heapq.heappop(self._queue)
        self.now = entry[0]
        return Event(*entry)

    def pending(self) -> int:
        return len(self._queue)

    def send(self, src: int, dst: int, data: bytes, msg: Message | None) -> None:
        """Put a message on the wire; partitions hold it back until they heal.

        A frame whose decoded form ``msg`` is known travels as that message: its bytes
        are counted here and not kept (nobody reads them again), so that large frames
        in flight cost the simulator no memory.
        """
        self.sent.messages += 1
        self.sent.bytes += len(data)
        if msg is not None:
            data = b""
        if self.partition is not None and self.partition[src] != self.partition[dst]:
            self.held.append((src, dst, data, msg))
            return
        self.schedule(self.now + self._delay(src, dst), "deliver", dst, (src, data, msg))

    def _delay(self, src: int, dst: int) -> float:
        return self._link_delay(src, dst) + self.out_delay.get(src, 0.0)

    def _link_delay(self, src: int, dst: int) -> float:
        d = min(self.latency.sample(self.rng, src, dst), MAX_DELAY)
        adv = self.adversary
        if adv is None:
            return d
        if adv.slow_nodes:
            epoch = int(self.now // adv.epoch)
            if epoch != self._slow_epoch:
                self._slow_epoch = epoch
                self._slow = set(self.rng.sample(range(self.n), adv.slow_nodes))
            if src in self._slow:
                d += self.rng.uniform(0, adv.slow_delay)
        if self.rng.random() < adv.reorder_probability:
            d *= self.rng.uniform(1.0, adv.reorder_factor)
        return min(d, MAX_DELAY)

    def split(self, groups: list[int]) -> None:
        self.partition = groups

    def heal(self) -> None:
        """End the partition: every held message is delivered after a normal delay."""
        self.partition = None
        held, self.held = self.held, []
        for src, dst, data, msg in held:
            self.schedule(self.now + self._delay(src, dst), "deliver", dst, (src, data, msg))
