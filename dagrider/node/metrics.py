"""A tiny Prometheus registry rendering the text exposition format 0.0.4.

Why not ``prometheus_client``: the node needs three metric types, labels and one
``render()``; a dependency with global default registries, process collectors and
multiprocess modes is more to audit than these two hundred lines. The output is what
Prometheus scrapes from ``GET /metrics``::

    # HELP dagrider_commit_latency_seconds Time from proposal to commit.
    # TYPE dagrider_commit_latency_seconds histogram
    dagrider_commit_latency_seconds_bucket{le="0.5"} 3
    ...

Names carry their unit (``_seconds``, ``_bytes``) and counters end in ``_total``; the
registry enforces the second rule because a counter without it is always a mistake.
Not thread-safe: update metrics from the event loop thread (the node's only thread
that touches them).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

__all__ = [
    "DEFAULT_LATENCY_BUCKETS",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "Metrics",
    "format_value",
]

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds, from a millisecond (an API call) to ten seconds (a commit under stress)."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers without ``.0``, ``+Inf``, ``NaN``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class CounterChild:
    """One counter series: only goes up (a restart resets it, which Prometheus expects)."""

    __slots__ = ("_function", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counter increment must be >= 0, got {amount}")
        self._value += amount

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the running total from ``function`` at every render: for a subsystem that
        already counts (the DHT's lookups, the content layer's bytes), so that the number
        is not kept twice. The function must never decrease."""
        self._function = function

    @property
    def value(self) -> float:
        return float(self._function()) if self._function is not None else self._value


class GaugeChild:
    """One gauge series: a value that goes up and down, or a function read at scrape time."""

    __slots__ = ("_function", "_value")

    def __init__(self) -> None:
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._value -= amount

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Read the value from ``function`` at every render (e.g. the mempool length),
        so that the owner of the number need not push every change."""
        self._function = function

    @property
    def value(self) -> float:
        return float(self._function()) if self._function is not None else self._value


class HistogramChild:
    """One histogram series over fixed upper bounds (``le``), plus an implicit ``+Inf``."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self._sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Record ``value``; ``count`` > 1 records it that many times at once (the
        latency of a batch of transactions that share it, in one call)."""
        if count < 0:
            raise ValueError(f"histogram observation count must be >= 0, got {count}")
        self._counts[bisect.bisect_left(self._bounds, value)] += count
        self._sum += value * count

    @property
    def count(self) -> int:
        return sum(self._counts)

    @property
    def sum(self) -> float:
        return self._sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) for every bucket, ending with +Inf."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out


_C = TypeVar("_C", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[_C]):
    """A named metric and its series, one per combination of label values."""

    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for metric {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names {list(labelnames)} for metric {name}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._children: dict[tuple[str, ...], _C] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _new_child(self) -> _C:
        raise NotImplementedError

    def labels(self, *values: str, **by_name: str) -> _C:
        """The series for these label values (positional, or by name), created on first use."""
        if values and by_name:
            raise ValueError(f"{self.name}: give label values positionally or by name, not both")
        if by_name:
            if set(by_name) != set(self.labelnames):
                raise ValueError(
                    f"{self.name}: labels {sorted(by_name)} do not match {list(self.labelnames)}"
                )
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames) or not self.labelnames:
            raise ValueError(
                f"{self.name}: expected values for labels {list(self.labelnames)}, got {values}"
            )
        key = tuple(values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only(self) -> _C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels(...)")
        return self._children[()]

    def _series(self) -> list[tuple[tuple[str, ...], _C]]:
        return sorted(self._children.items(), key=lambda item: item[0])

    def _sample_lines(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(self._sample_lines())
        return "\n".join(lines) + "\n"


_S = TypeVar("_S", CounterChild, GaugeChild)


class _ScalarFamily(_Family[_S]):
    """Shared rendering of families whose children hold one number (counters, gauges)."""

    @property
    def value(self) -> float:
        return self._only().value

    def _sample_lines(self) -> list[str]:
        return [
            f"{self.name}{_label_text(self.labelnames, key)} {format_value(child.value)}"
            for key, child in self._series()
        ]


class Counter(_ScalarFamily[CounterChild]):
    """A monotonically increasing count; the name must end in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in _total")
        super().__init__(name, help, labelnames)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def set_function(self, function: Callable[[], float] | None) -> None:
        self._only().set_function(function)


class Gauge(_ScalarFamily[GaugeChild]):
    """A value that can go up and down (current round, queue length, link state)."""

    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    def set_function(self, function: Callable[[], float] | None) -> None:
        self._only().set_function(function)


class Histogram(_Family[HistogramChild]):
    """Observations counted into fixed buckets, rendered as ``_bucket``/``_sum``/``_count``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or any(math.isnan(b) for b in bounds):
            raise ValueError(f"histogram {name} needs at least one finite bucket bound")
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"histogram {name} bucket bounds must increase strictly: {bounds}")
        if "le" in labelnames:
            raise ValueError(f"histogram {name} cannot use the reserved label 'le'")
        self.buckets = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, value: float, count: int = 1) -> None:
        self._only().observe(value, count)

    @property
    def count(self) -> int:
        return self._only().count

    @property
    def sum(self) -> float:
        return self._only().sum

    def _sample_lines(self) -> list[str]:
        lines: list[str] = []
        bucket_labels = (*self.labelnames, "le")
        for key, child in self._series():
            for bound, n in child.cumulative():
                labels = _label_text(bucket_labels, (*key, format_value(bound)))
                lines.append(f"{self.name}_bucket{labels} {n}")
            labels = _label_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {format_value(child.sum)}")
            lines.append(f"{self.name}_count{labels} {child.count}")
        return lines


class Metrics:
    """A registry: metrics are created (or fetched, if already registered with the same
    shape) by name, and rendered together in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, Counter | Gauge | Histogram] = {}

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        found = self._existing(name, Counter, labelnames)
        if found is None:
            found = self._families[name] = Counter(name, help, labelnames)
        assert isinstance(found, Counter)
        return found

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        found = self._existing(name, Gauge, labelnames)
        if found is None:
            found = self._families[name] = Gauge(name, help, labelnames)
        assert isinstance(found, Gauge)
        return found

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> Histogram:
        found = self._existing(name, Histogram, labelnames)
        if found is None:
            found = self._families[name] = Histogram(name, help, labelnames, buckets)
        assert isinstance(found, Histogram)
        if found.buckets != tuple(float(b) for b in buckets if not math.isinf(b)):
            raise ValueError(f"histogram {name} is already registered with other buckets")
        return found

    def _existing(
        self, name: str, kind: type[Counter | Gauge | Histogram], labelnames: Sequence[str]
    ) -> Counter | Gauge | Histogram | None:
        found = self._families.get(name)
        if found is None:
            return None
        if type(found) is not kind or found.labelnames != tuple(labelnames):
            raise ValueError(
                f"metric {name} is already registered as a {found.kind} "
                f"with labels {list(found.labelnames)}"
            )
        return found

    def render(self) -> str:
        """The whole registry in the text exposition format 0.0.4 (``\\n``-terminated)."""
        return "".join(family.render() for family in self._families.values())
