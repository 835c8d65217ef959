"""Latency models for simulated links, in virtual milliseconds."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol


class LatencyModel(Protocol):
    """Draws a one-way delay for a message from ``src`` to ``dst``."""

    @property
    def name(self) -> str: ...

    def sample(self, rng: random.Random, src: int, dst: int) -> float: ...


@dataclass(frozen=True)
class Constant:
    delay: float = 50.0
    name: str = "constant"

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        return self.delay


@dataclass(frozen=True)
class Uniform:
    low: float = 10.0
    high: float = 100.0
    name: str = "uniform"

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LongTail:
    """Log-normal body with a Pareto tail: most messages are fast, a few are very slow."""

    median: float = 40.0
    sigma: float = 0.6
    tail_probability: float = 0.02
    tail_scale: float = 400.0
    tail_alpha: float = 1.5
    name: str = "longtail"

    def sample(self, rng: random.Random, src: int, dst: int) -> float:
        if rng.random() < self.tail_probability:
            return self.tail_scale * rng.paretovariate(self.tail_alpha)
        return rng.lognormvariate(math.log(self.median), self.sigma)


MODELS: dict[str, LatencyModel] = {
    "constant": Constant(),
    "uniform": Uniform(),
    "longtail": LongTail(),
    "lan": Uniform(1.0, 10.0, name="lan"),  # 1-10 ms links
}


def by_name(name: str) -> LatencyModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown latency model {name!r}; choose from {sorted(MODELS)}") from None
