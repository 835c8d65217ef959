"""The contract every CRDT type in :mod:`crdt.types` fulfils.

Why deltas: a change carries *operations*; every replica turns each operation into a
small state (a delta) with :meth:`Crdt.delta` and joins it into its copy with
:meth:`Crdt.merge`. The delta is a function of the operation and its
:class:`OpContext` only -- never of the replica's current state -- so replicas that
received the same changes hold the same state whatever order they applied them in:
convergence follows from the merge laws (commutative, associative, idempotent) alone.
The causal order that the hash-linked change DAG enforces is for integrity (no change
without its history), not for convergence.

Local intents ("add 3", "insert 'x' at index 5") need the author's current state to
become operations (an OR-Set remove names the tags it observed); that is
:meth:`Crdt.prepare`, which runs only on the author.

States are mutable for speed (a replica merges thousands of deltas per second);
:meth:`Crdt.copy` gives an independent copy, and nothing here performs I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Self

# A JSON-compatible value as the API shows it.
Json = Any

Dot = tuple[bytes, int]
"""Unique, unforgeable id of one operation: (hash of its change, index in the change)."""


@dataclass(frozen=True, slots=True)
class OpContext:
    """Where an operation comes from; the only input to a delta besides the op.

    ``hlc`` is the change's hybrid logical clock (``wall_ms << 16 | counter``), strictly
    greater than that of every change it depends on, so causally later operations sort
    later. :attr:`order` is a total order on operations used by last-writer-wins and by
    the sequence type: clock first, ties broken by replica id (author key), then by
    change hash and index (two changes of one equivocating author never tie).
    """

    change_hash: bytes
    index: int
    author: bytes
    hlc: int

    @property
    def dot(self) -> Dot:
        return (self.change_hash, self.index)

    @property
    def order(self) -> tuple[int, bytes, bytes, int]:
        return (self.hlc, self.author, self.change_hash, self.index)


class Crdt(ABC):
    """A state-based CRDT whose updates travel as deltas of operations.

    Subclasses set :attr:`TYPE` (the wire name, e.g. ``"gcounter"``) and implement all
    abstract methods. Two states compare equal (``==``) exactly when they are the same
    lattice element.
    """

    TYPE: ClassVar[str]

    @classmethod
    @abstractmethod
    def check_op(cls, op: Any) -> None:
        """Raise :class:`InvalidOperation` unless ``op`` is well-formed for this type.

        Structural only (types, sizes, field names) and deterministic: every replica
        must reach the same verdict on the same bytes.
        """

    @classmethod
    @abstractmethod
    def delta(cls, op: Any, ctx: OpContext) -> Self:
        """The state that applying ``op`` joins in; ``op`` has passed :meth:`check_op`."""

    @abstractmethod
    def merge(self, other: Self) -> None:
        """Join ``other`` into ``self`` in place (least upper bound)."""

    @abstractmethod
    def copy(self) -> Self:
        """An independent copy."""

    @abstractmethod
    def value(self) -> Json:
        """The user-visible value, JSON-compatible and deterministic."""

    @abstractmethod
    def prepare(self, intent: str, args: Any) -> Any:
        """Turn a local intent into an operation for :meth:`delta`, using this state.

        Raises :class:`InvalidOperation` for an unknown intent or bad arguments.
        """

    @abstractmethod
    def to_wire(self) -> Any:
        """msgpack-encodable form; :meth:`from_wire` inverts it."""

    @classmethod
    @abstractmethod
    def from_wire(cls, obj: Any) -> Self:
        """Parse :meth:`to_wire` output; raise :class:`InvalidOperation` on garbage."""

    def apply(self, op: Any, ctx: OpContext) -> None:
        """Apply one checked operation: ``merge(delta(op, ctx))``."""
        self.merge(type(self).delta(op, ctx))
