"""Our public address as peers see it (identify-style), and what it says about our NAT.

Every link starts with both ends sending ``Identify(observed=...)``: the address the
sender sees the link come from. One peer's word is not enough (it may lie, or sit in
the same private network), so an address is *confirmed* only when at least
``min_observers`` distinct observer IPs report it. Only each peer's latest report counts
and reports expire after ``ttl``.

The same reports reveal the NAT's mapping behaviour. We always dial from our listening
port, so an endpoint-independent mapping shows one public port to every observer; an
endpoint-dependent ("symmetric") NAT shows a different port per destination. Then no
address is ever confirmed and a hole punch to our observed ports will not work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2p.nat import StartTimer
from p2p.nat.messages import Addr

Mapping = Literal["unknown", "endpoint_independent", "endpoint_dependent"]


@dataclass(frozen=True)
class ObservedConfig:
    """``min_observers`` distinct observer IPs confirm an address; reports live ``ttl`` s."""

    min_observers: int = 2
    ttl: float = 1800.0
    max_observers: int = 256

    def __post_init__(self) -> None:
        if self.min_observers < 1:
            raise ValueError(f"ObservedConfig.min_observers={self.min_observers}: must be >= 1")
        if self.ttl <= 0:
            raise ValueError(f"ObservedConfig.ttl={self.ttl}: must be positive")
        if self.max_observers < self.min_observers:
            raise ValueError("ObservedConfig.max_observers: must be >= min_observers")


@dataclass(frozen=True)
class AddressesChanged:
    """The confirmed public addresses changed: re-check reachability, re-advertise."""

    old: tuple[Addr, ...]
    new: tuple[Addr, ...]


@dataclass(frozen=True)
class MappingChanged:
    """Our NAT's inferred mapping behaviour changed."""

    old: Mapping
    new: Mapping


ObservedEffect = AddressesChanged | MappingChanged | StartTimer


@dataclass(frozen=True)
class _Report:
    observer_host: str
    addr: Addr
    at: float


class ObservedAddresses:
    """The reports of our observed address, one per observer, and what they confirm."""

    def __init__(self, config: ObservedConfig | None = None) -> None:
        self.config = config or ObservedConfig()
        self._reports: dict[bytes, _Report] = {}
        self._confirmed: tuple[Addr, ...] = ()
        self._mapping: Mapping = "unknown"

    @property
    def confirmed(self) -> tuple[Addr, ...]:
        """Confirmed addresses, the most widely observed first."""
        return self._confirmed

    @property
    def mapping(self) -> Mapping:
        return self._mapping

    def latest(self) -> tuple[Addr, ...]:
        """Every address some peer currently reports (unconfirmed guesses included)."""
        return tuple(sorted({r.addr for r in self._reports.values()}))

    def observe(
        self, observer: bytes, observer_host: str, observed: Addr, now: float
    ) -> list[ObservedEffect]:
        """Peer ``observer`` (connected from ``observer_host``) sees us at ``observed``."""
        if observer not in self._reports and len(self._reports) >= self.config.max_observers:
            oldest = min(self._reports, key=lambda k: self._reports[k].at)
            del self._reports[oldest]
        self._reports[observer] = _Report(observer_host, observed, now)
        effects = self._recompute()
        effects.append(StartTimer("observed-expiry", now + self.config.ttl))
        return effects

    def forget(self, observer: bytes) -> list[ObservedEffect]:
        """Drop a peer's report (e.g. it turned out to be lying, or it left)."""
        if self._reports.pop(observer, None) is None:
            return []
        return self._recompute()

    def reset(self) -> list[ObservedEffect]:
        """Our network changed (interface, route, NAT renumbered): forget every report."""
        self._reports.clear()
        return self._recompute()

    def tick(self, now: float) -> list[ObservedEffect]:
        """Expire reports older than ``ttl``."""
        horizon = now - self.config.ttl
        stale = [k for k, r in self._reports.items() if r.at <= horizon]
        for k in stale:
            del self._reports[k]
        effects = self._recompute() if stale else []
        if self._reports:
            oldest = min(r.at for r in self._reports.values())
            effects.append(StartTimer("observed-expiry", oldest + self.config.ttl))
        return effects

    def _recompute(self) -> list[ObservedEffect]:
        observers: dict[Addr, set[str]] = {}
        ports: dict[str, dict[int, set[str]]] = {}
        for r in self._reports.values():
            observers.setdefault(r.addr, set()).add(r.observer_host)
            ports.setdefault(r.addr[0], {}).setdefault(r.addr[1], set()).add(r.observer_host)
        need = self.config.min_observers
        confirmed = tuple(
            a
            for a in sorted(observers, key=lambda a: (-len(observers[a]), a))
            if len(observers[a]) >= need
        )
        # One IP seen with several ports by distinct observers: the port depends on the
        # destination. (Several observers of one port mean a stable mapping.)
        dependent = any(
            len(by_port) > 1 and len(set().union(*by_port.values())) > 1
            for by_port in ports.values()
        )
        mapping: Mapping = (
            "endpoint_dependent"
            if dependent
            else "endpoint_independent"
            if confirmed
            else "unknown"
        )
        effects: list[ObservedEffect] = []
        if confirmed != self._confirmed:
            effects.append(AddressesChanged(self._confirmed, confirmed))
            self._confirmed = confirmed
        if mapping != self._mapping:
            effects.append(MappingChanged(self._mapping, mapping))
            self._mapping = mapping
        return effects
