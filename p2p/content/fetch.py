"""The download scheduler: which chunk to ask of which provider, and when.

Pure: the shell (``p2p.content_service``) asks ``next_requests(now)`` for what to send,
performs the calls, and reports each outcome with ``on_chunk`` (data arrived; the shell
says whether it matched its leaf) or ``on_failure`` (timeout, lost link, refusal). Time
is an argument; nothing here sleeps or reads a clock.

Policy, in one place:

- **Order.** Missing chunks are handed out lowest index first (sequential writes, and a
  partial file that fills from the front). Each round gives every provider with room
  one chunk before any provider gets a second, so the work spreads across providers;
  a fast provider then naturally takes more because its requests complete sooner.
- **Windows.** Each provider has a window of requests in flight, grown like TCP: +1 per
  good chunk up to a threshold (slow start), then +1/window (congestion avoidance), and
  halved on a failure, between 1 and ``window_max``. That adapts to a provider's
  throughput and latency without measuring either.
- **Memory.** The bytes of all requests in flight stay within ``inflight_budget_bytes``
  (a single request is always allowed, so a chunk larger than the budget still moves).
- **Failures.** A failure puts the chunk back, halves the window and rests the provider
  for a jittered-free exponential backoff; ``max_failures`` consecutive failures drop it
  for now (``add_providers`` may bring it back, e.g. after the shell asked the DHT again).
- **Bad data.** A provider that sends a chunk failing verification is *banned* for this
  fetch: never asked again, even if re-added, and its other requests are cancelled.
- **Endgame.** When no chunk is left unrequested, an idle provider may duplicate a
  request already in flight elsewhere (at most ``endgame_copies`` copies), so one slow
  provider cannot hold back the end; the first good copy wins and ``on_chunk`` returns
  the other copies for the shell to cancel. Only *late* requests are duplicated: older
  than ``endgame_factor`` times the smoothed chunk latency (and ``endgame_min_age``);
  duplicating every request in flight measured ~30% wasted transfer with 3 providers.
- **Resume.** The scheduler starts from a ``have`` bitmap; only the other chunks are asked.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from p2p.content.bitmap import Bitmap
from p2p.content.manifest import Manifest, check_chunk_size, chunk_count

MiB: Final = 1024 * 1024
_MISSING: Final = 0
_REQUESTED: Final = 1
_HAVE: Final = 2

ProviderStatus = Literal["active", "dropped", "banned"]


@dataclass(frozen=True)
class FetchConfig:
    """Limits of one download; defaults move a blob fast on a LAN without hogging memory."""

    window_initial: int = 4
    window_max: int = 32
    inflight_budget_bytes: int = 64 * MiB
    max_failures: int = 4
    """Consecutive failures after which a provider is dropped (until re-added)."""
    backoff_initial: float = 0.25
    backoff_max: float = 8.0
    endgame_copies: int = 2
    endgame_factor: float = 2.0
    endgame_min_age: float = 0.2

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"FetchConfig.{name}={getattr(self, name)!r}: {rule}")

        need(self.window_initial >= 1, "window_initial", "must be >= 1")
        need(self.window_max >= self.window_initial, "window_max", "must be >= window_initial")
        need(self.inflight_budget_bytes > 0, "inflight_budget_bytes", "must be positive")
        need(self.max_failures >= 1, "max_failures", "must be >= 1")
        need(self.backoff_initial >= 0, "backoff_initial", "must be >= 0")
        need(self.backoff_max >= self.backoff_initial, "backoff_max", ">= backoff_initial")
        need(self.endgame_copies >= 1, "endgame_copies", "must be >= 1")
        need(self.endgame_factor >= 0, "endgame_factor", "must be >= 0")
        need(self.endgame_min_age >= 0, "endgame_min_age", "must be >= 0")


@dataclass(frozen=True)
class Request:
    """Ask ``provider`` for chunk ``index`` (or, from ``on_chunk``: cancel that request)."""

    provider: bytes
    index: int


@dataclass(eq=False)
class _Provider:
    key: bytes
    window: float
    threshold: float
    status: ProviderStatus = "active"
    inflight: set[int] = field(default_factory=set)
    failures: int = 0
    rest_until: float = 0.0
    chunks: int = 0
    total_failures: int = 0
    reason: str = ""


class FetchScheduler:
    """Scheduling state of one blob download (see the module doc for the policy)."""

    def __init__(
        self,
        size: int,
        chunk_size: int,
        *,
        have: Bitmap | None = None,
        config: FetchConfig | None = None,
    ) -> None:
        check_chunk_size(chunk_size)
        self.size = size
        self.chunk_size = chunk_size
        self.count = chunk_count(size, chunk_size)
        self.config = config or FetchConfig()
        if have is not None and have.length != self.count:
            raise ValueError(f"have bitmap of {have.length} chunks for a {self.count}-chunk blob")
        self.have = Bitmap(self.count) if have is None else have.copy()
        self._state = bytearray(self.count)
        for i in self.have:
            self._state[i] = _HAVE
        self._queue = [i for i in range(self.count) if self._state[i] == _MISSING]  # sorted: a heap
        self._requesters: dict[int, set[bytes]] = {}
        self._since: dict[int, float] = {}  # when the oldest live request of a chunk was made
        self.latency: float | None = None
        """Smoothed seconds from request to good chunk (EWMA, 1/8 weight per sample)."""
        self._providers: dict[bytes, _Provider] = {}
        self.inflight_bytes = 0
        self.bad_chunks = 0

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, have: Bitmap | None = None, config: FetchConfig | None = None
    ) -> FetchScheduler:
        return cls(manifest.size, manifest.chunk_size, have=have, config=config)

    # -- providers -----------------------------------------------------------------------

    def add_providers(self, keys: Iterable[bytes]) -> int:
        """Add providers (or revive dropped ones, resetting their failures; banned ones
        stay banned). Returns how many became usable."""
        added = 0
        cfg = self.config
        for key in keys:
            p = self._providers.get(key)
            if p is None:
                self._providers[key] = _Provider(key, cfg.window_initial, cfg.window_max)
                added += 1
            elif p.status == "dropped":
                p.status, p.failures, p.rest_until, p.reason = "active", 0, 0.0, ""
                p.window = max(p.window, 1.0)
                added += 1
        return added

    def drop_provider(self, key: bytes, reason: str) -> None:
        """Stop asking ``key`` for now (link failed, it says it has no such blob)."""
        p = self._providers.get(key)
        if p is not None and p.status == "active":
            p.status, p.reason = "dropped", reason

    def provider_status(self, key: bytes) -> ProviderStatus | None:
        p = self._providers.get(key)
        return None if p is None else p.status

    @property
    def banned(self) -> list[bytes]:
        return [k for k, p in self._providers.items() if p.status == "banned"]

    def usable(self) -> list[bytes]:
        return [k for k, p in self._providers.items() if p.status == "active"]

    # -- progress ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.have.complete

    @property
    def inflight(self) -> int:
        return sum(len(s) for s in self._requesters.values())

    @property
    def failed(self) -> bool:
        """No usable provider left, nothing in flight, and chunks still missing."""
        return not self.done and not self._requesters and not self.usable()

    @property
    def reason(self) -> str:
        """Why the fetch cannot go on (empty unless ``failed``)."""
        if not self.failed:
            return ""
        if not self._providers:
            return "no providers"
        if all(p.status == "banned" for p in self._providers.values()):
            return "every provider sent bad data"
        return "every provider failed: " + "; ".join(
            sorted({p.reason for p in self._providers.values() if p.reason})
        )

    def next_wakeup(self, now: float) -> float | None:
        """When a provider resting at ``now`` becomes eligible again (None: none rests)."""
        idle = [
            p
            for p in self._providers.values()
            if p.status == "active" and len(p.inflight) < int(p.window)
        ]
        times = [p.rest_until for p in idle if p.rest_until > now]
        if idle and self._endgame():
            late = self._late_age()
            times += [
                t + late
                for i, t in self._since.items()
                if t + late > now and len(self._requesters[i]) < self.config.endgame_copies
            ]
        return min(times) if times else None

    def _endgame(self) -> bool:
        queue, state = self._queue, self._state
        while queue and state[queue[0]] != _MISSING:
            heapq.heappop(queue)
        return not queue

    def _late_age(self) -> float:
        cfg = self.config
        return max(cfg.endgame_min_age, cfg.endgame_factor * (self.latency or 0.0))

    # -- scheduling ----------------------------------------------------------------------

    def _length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _fits(self, index: int) -> bool:
        return self.inflight_bytes == 0 or (
            self.inflight_bytes + self._length(index) <= self.config.inflight_budget_bytes
        )

    def _pick(self, p: _Provider, now: float) -> int | None:
        queue = self._queue
        if not self._endgame():  # (lazily forgets chunks requested or had meanwhile)
            index = queue[0]
            if not self._fits(index):
                return None
            heapq.heappop(queue)
            return index
        best: int | None = None
        copies = self.config.endgame_copies
        late = now - self._late_age()
        for index, who in self._requesters.items():
            if (
                p.key not in who
                and len(who) < copies
                and self._since[index] <= late
                and self._fits(index)
                and (best is None or len(who) < len(self._requesters[best]))
            ):
                best = index
        return best

    def next_requests(self, now: float) -> list[Request]:
        """The requests to send now; each is in flight until ``on_chunk``/``on_failure``."""
        out: list[Request] = []
        eligible = [
            p
            for p in self._providers.values()
            if p.status == "active" and p.rest_until <= now and len(p.inflight) < int(p.window)
        ]
        eligible.sort(key=lambda p: len(p.inflight) / p.window)
        while eligible:
            still: list[_Provider] = []
            for p in eligible:
                index = self._pick(p, now)
                if index is None:
                    if self._queue:
                        return out  # the memory budget is full
                    continue  # endgame: nothing this provider may duplicate
                self._state[index] = _REQUESTED
                self._requesters.setdefault(index, set()).add(p.key)
                self._since.setdefault(index, now)
                p.inflight.add(index)
                self.inflight_bytes += self._length(index)
                out.append(Request(p.key, index))
                if len(p.inflight) < int(p.window):
                    still.append(p)
            eligible = still
        return out

    def _release(self, key: bytes, index: int) -> bool:
        """Forget request (key, index); True if it was outstanding."""
        who = self._requesters.get(index)
        p = self._providers.get(key)
        if who is None or key not in who or p is None:
            return False
        who.discard(key)
        p.inflight.discard(index)
        self.inflight_bytes -= self._length(index)
        if not who:
            del self._requesters[index]
            del self._since[index]
            if self._state[index] == _REQUESTED:
                self._state[index] = _MISSING
                heapq.heappush(self._queue, index)
        return True

    def on_chunk(self, provider: bytes, index: int, data_ok: bool, now: float) -> list[Request]:
        """Chunk ``index`` came from ``provider``; ``data_ok``: it matched its leaf (and was
        stored). Returns the requests that became pointless (endgame copies of this chunk,
        or everything in flight at a provider just banned) for the shell to cancel."""
        since = self._since.get(index, now)
        if not self._release(provider, index):
            return []  # not (or no longer) asked: a late answer to a cancelled request
        p = self._providers[provider]
        cancel: list[Request] = []
        if data_ok:
            sample = max(0.0, now - since)
            self.latency = (
                sample if self.latency is None else self.latency + (sample - self.latency) / 8
            )
            p.chunks += 1
            p.failures = 0
            p.rest_until = 0.0
            p.window = min(
                float(self.config.window_max),
                p.window + (1.0 if p.window < p.threshold else 1.0 / p.window),
            )
            if self._state[index] != _HAVE:
                self._state[index] = _HAVE
                self.have.add(index)
            for other in sorted(self._requesters.get(index, ())):
                self._release(other, index)
                cancel.append(Request(other, index))
            return cancel
        self.bad_chunks += 1
        p.status, p.reason = "banned", "sent a chunk that failed verification"
        for pending in sorted(p.inflight):
            self._release(provider, pending)
            cancel.append(Request(provider, pending))
        return cancel

    def on_failure(
        self,
        provider: bytes,
        index: int,
        now: float,
        *,
        drop: bool = False,
        reason: str = "requests failed",
    ) -> None:
        """The request (provider, index) failed (timeout, lost link, refusal): the chunk
        goes back to the queue, the provider rests (``drop``: is dropped at once, e.g. it
        says it has no such blob). ``reason`` ends up in ``self.reason`` if all fail."""
        if not self._release(provider, index):
            return
        p = self._providers[provider]
        p.failures += 1
        p.total_failures += 1
        p.threshold = max(2.0, p.window / 2)
        p.window = max(1.0, p.window / 2)
        cfg = self.config
        delay = min(cfg.backoff_max, cfg.backoff_initial * 2 ** (p.failures - 1))
        p.rest_until = max(p.rest_until, now + delay)
        if p.status == "active" and (drop or p.failures >= cfg.max_failures):
            p.status, p.reason = "dropped", reason

    def status(self) -> dict[str, object]:
        return {
            "chunks": self.count,
            "have": len(self.have),
            "inflight": self.inflight,
            "inflight_bytes": self.inflight_bytes,
            "bad_chunks": self.bad_chunks,
            "providers": {
                k.hex()[:16]: {
                    "status": p.status,
                    "window": round(p.window, 2),
                    "inflight": len(p.inflight),
                    "chunks": p.chunks,
                    "failures": p.total_failures,
                }
                for k, p in self._providers.items()
            },
        }
