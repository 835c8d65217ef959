"""Tunable limits and protocol parameters, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Size limits enforced by the strict decoder and the DAG.

    They bound what a Byzantine peer can make a correct node hold in memory.
    """

    max_txs_per_vertex: int = 10_000
    max_tx_bytes: int = 64 * 1024
    max_edges: int = 1_024
    max_message_bytes: int = 8 * 1024 * 1024
    max_round: int = 2**48

    def __post_init__(self) -> None:
        for name in ("max_txs_per_vertex", "max_tx_bytes", "max_edges", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Parameters:
    """Protocol parameters of one process.

    ``gc_depth`` is the number of rounds kept below the last committed leader; it must
    span at least two waves so that a wave's commit rule always sees its own rounds.
    ``batch_size`` is the number of pending transactions that makes a proposal go out at
    once; below it the process waits for the shell's ``propose_now`` (its batch timer)
    unless ``propose_empty`` lets it propose whatever is pending immediately.
    """

    gc_depth: int = 50
    batch_size: int = 1_000
    propose_empty: bool = True
    limits: Limits = Limits()

    def __post_init__(self) -> None:
        if self.gc_depth < 8:
            raise ValueError(f"Parameters.gc_depth must be >= 8 (two waves), got {self.gc_depth}")
        if not 1 <= self.batch_size <= self.limits.max_txs_per_vertex:
            raise ValueError(
                f"Parameters.batch_size must be in 1..{self.limits.max_txs_per_vertex}, "
                f"got {self.batch_size}"
            )
