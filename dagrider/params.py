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
    # Sum of a vertex's transaction bytes: what one proposal may make every node hold.
    max_block_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "max_txs_per_vertex",
            "max_tx_bytes",
            "max_edges",
            "max_message_bytes",
            "max_block_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_block_bytes < self.max_tx_bytes:
            raise ValueError(
                f"Limits.max_block_bytes ({self.max_block_bytes}) must be >= "
                f"max_tx_bytes ({self.max_tx_bytes}): a transaction must fit a block"
            )


@dataclass(frozen=True)
class Parameters:
    """Protocol parameters of one process.

    ``gc_depth`` is the number of rounds kept below the last committed leader; it must
    span at least two waves so that a wave's commit rule always sees its own rounds.
    ``batch_size`` is the number of pending transactions that makes a proposal go out at
    once; below it the process waits for the shell's ``propose_now`` (its batch timer)
    unless ``propose_empty`` lets it propose whatever is pending immediately.

    What a single peer can make this process hold is bounded (see docs/byzantine.md):

    * ``future_rounds``: reliable-broadcast state (instances, votes, payloads) and coin
      shares are only allocated up to this many rounds above the committee's *proven*
      progress, the highest round that f+1 distinct members have shown for their own
      broadcasts (at least one of them is correct). A Byzantine member claiming round
      10**9 moves nothing.
    * ``peer_budget_bytes``: vertex payload bytes held for one source in live
      broadcast instances (above the GC floor). A VAL that would exceed it is neither
      stored nor echoed; a correct source stays far below it (about ``gc_depth`` rounds
      of at most ``limits.max_block_bytes``), so only a flooding source is refused.
    * ``response_budget_bytes``: bytes of ``VertexResponse`` answered to one peer per
      round this process advances (a token bucket that holds 4 rounds' worth); a second
      request for the same digest is dropped and reported.
    """

    gc_depth: int = 50
    batch_size: int = 1_000
    propose_empty: bool = True
    limits: Limits = Limits()
    future_rounds: int = 200
    peer_budget_bytes: int = 64 * 1024 * 1024
    response_budget_bytes: int = 16 * 1024 * 1024
    # Committed vertices between checkpoints (0: none); see dagrider.checkpoint.
    checkpoint_interval: int = 0

    def __post_init__(self) -> None:
        if self.gc_depth < 8:
            raise ValueError(f"Parameters.gc_depth must be >= 8 (two waves), got {self.gc_depth}")
        if not 1 <= self.batch_size <= self.limits.max_txs_per_vertex:
            raise ValueError(
                f"Parameters.batch_size must be in 1..{self.limits.max_txs_per_vertex}, "
                f"got {self.batch_size}"
            )
        if self.checkpoint_interval < 0:
            raise ValueError(
                f"Parameters.checkpoint_interval must be >= 0, got {self.checkpoint_interval}"
            )
        if self.future_rounds < self.gc_depth:
            raise ValueError(
                f"Parameters.future_rounds must be >= gc_depth ({self.gc_depth}), "
                f"got {self.future_rounds}"
            )
        need = 2 * self.limits.max_block_bytes
        for name in ("peer_budget_bytes", "response_budget_bytes"):
            if getattr(self, name) < need:
                raise ValueError(
                    f"Parameters.{name} must hold two maximal blocks ({need} bytes), "
                    f"got {getattr(self, name)}"
                )
