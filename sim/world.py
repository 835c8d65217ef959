"""The simulated world: virtual clock, event queue, links, partitions and crashes.

Only this module (and the runner that drives it) owns randomness and time. Nodes are
the shipped :class:`~dagrider.process.Process`; every message crosses the wire as the
bytes the codec produced.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any

from dagrider.messages import Message
from dagrider.statesync import StateMessage
from sim.latency import LatencyModel, Uniform


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


Frame = Message | StateMessage
"""A decoded frame in flight: consensus, or state sync (a channel of its own in the
daemon, the same links here)."""

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
        step_ms: float = 0.0,
    ) -> None:
        """``step_ms`` > 0: a node handles what reaches it in steps, one per ``step_ms``
        slot of virtual time. Every message arriving within a slot lands in the node's
        inbox for the slot's end, and the whole inbox is one ``"inbox"`` event (payload:
        the list of ``(src, data, msg)``), as the daemon handles every frame read in one
        event-loop iteration and then flushes once. 0: one ``"deliver"`` event per
        message (its payload is one ``(src, data, msg)``)."""
        if step_ms < 0 or not math.isfinite(step_ms):
            raise ValueError(f"step_ms must be a finite number >= 0, got {step_ms}")
        self.n = n
        self.rng = rng
        self.latency = latency
        self.adversary = adversary
        self.now = 0.0
        self._queue: list[_Entry] = []
        self._seq = 0
        self.alive = [True] * n
        self.partition: list[int] | None = None  # group id per node while partitioned
        self.held: list[tuple[int, int, bytes, Frame | None]] = []
        self.sent = Link()
        self.dropped = 0
        self._slow: set[int] = set()
        self._slow_epoch = -1
        # Extra delay (ms) on every message a node sends, on top of the link's: a slow
        # (but correct) node. Not capped by MAX_DELAY: it is the node, not the network.
        self.out_delay: dict[int, float] = dict(out_delay or {})
        self.step_ms = step_ms
        # (slot time, node) -> the inbox list already in the queue for that slot
        self._inbox: dict[tuple[float, int], list[tuple[int, bytes, Frame | None]]] = {}

    def schedule(self, at: float, kind: str, node: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, node, payload))

    def pop(self) -> Event | None:
        if not self._queue:
            return None
        entry = heapq.heappop(self._queue)
        self.now = entry[0]
        if entry[2] == "inbox":
            del self._inbox[(entry[0], entry[3])]  # later arrivals open a new inbox
        return Event(*entry)

    def pending(self) -> int:
        return len(self._queue)

    def send(self, src: int, dst: int, data: bytes, msg: Frame | None) -> None:
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
        self._arrive(self.now + self._delay(src, dst), src, dst, data, msg)

    def broadcast(self, src: int, data: bytes, msg: Frame | None) -> None:
        """:meth:`send` to every other node, in id order: the same random draws and the
        same schedule, with the per-message work inlined (at n = 64 the simulator sends
        millions of frames)."""
        sent = self.sent
        others = self.n - 1
        sent.messages += others
        sent.bytes += len(data) * others
        if msg is not None:
            data = b""
        partition = self.partition
        latency = self.latency
        if (
            type(latency) is Uniform
            and self.adversary is None
            and not self.out_delay
            and partition is None
            and self.step_ms
        ):
            # The common case, written out: Uniform.sample is low + (high-low)*random()
            # (what random.uniform computes), then _arrive's slot arithmetic.
            draw = self.rng.random
            low, span = latency.low, latency.high - latency.low
            step, now, inboxes = self.step_ms, self.now, self._inbox
            item = (src, data, msg)
            ceil = math.ceil
            for dst in range(self.n):
                if dst == src:
                    continue
                at = now + min(low + span * draw(), MAX_DELAY)
                slot = ceil(at / step) * step
                if slot <= now:
                    slot = (math.floor(now / step) + 1) * step
                inbox = inboxes.get((slot, dst))
                if inbox is None:
                    inbox = inboxes[(slot, dst)] = []
                    self.schedule(slot, "inbox", dst, inbox)
                inbox.append(item)
            return
        delay, arrive, held = self._delay, self._arrive, self.held
        now = self.now
        for dst in range(self.n):
            if dst == src:
                continue
            if partition is not None and partition[src] != partition[dst]:
                held.append((src, dst, data, msg))
                continue
            arrive(now + delay(src, dst), src, dst, data, msg)

    def _arrive(self, at: float, src: int, dst: int, data: bytes, msg: Frame | None) -> None:
        step = self.step_ms
        if not step:
            self.schedule(at, "deliver", dst, (src, data, msg))
            return
        slot = math.ceil(at / step) * step
        if slot <= self.now:  # a zero delay: the next slot, never the one being handled
            slot = (math.floor(self.now / step) + 1) * step
        key = (slot, dst)
        inbox = self._inbox.get(key)
        if inbox is None:
            inbox = self._inbox[key] = []
            self.schedule(slot, "inbox", dst, inbox)
        inbox.append((src, data, msg))

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
            self._arrive(self.now + self._delay(src, dst), src, dst, data, msg)
