"""The CRDT types and their registry (wire name -> class).

Every type is a state-based CRDT driven by deltas (see :mod:`crdt.base`). Intents the
Document layer passes to ``prepare(intent, args)``:

=============  ==========  ==============================================================
type           intent      args
=============  ==========  ==============================================================
``gcounter``   ``inc``     ``{"n": int >= 1, "author": bytes(32)}``
``pncounter``  ``inc``     ``{"n": int >= 1, "author": bytes(32)}``
``pncounter``  ``dec``     ``{"n": int >= 1, "author": bytes(32)}``
``lww``        ``set``     any JSON value
``mvreg``      ``set``     any JSON value
``orset``      ``add``     element: ``int`` (64-bit, not bool), ``str`` or ``bytes`` <= 256 B
``orset``      ``remove``  element (must be present)
``ormap``      ``update``  ``{"key": str, "type": name, "intent": str, "args": nested args}``
``ormap``      ``remove``  ``{"key": str}`` (must be present)
``rga``        ``insert``  ``{"index": int, "items": [json, ...]}`` (1..4096 items)
``text``       ``insert``  ``{"index": int, "text": str}`` (1..4096 code points)
``rga/text``   ``delete``  ``{"index": int, "count": int}`` (1..4096)
=============  ==========  ==============================================================

Counters take the author (the replica's 32-byte key) because their operations carry
the author's new total. Operations (what ``prepare`` returns, ``check_op`` accepts and
``delta``/``apply`` consume; ``dot`` = ``[hash(32), index]``, ``id`` =
``[hlc, author(32), hash(32), index, i]``):

=============  ==================================================================
type           operations
=============  ==================================================================
``gcounter``   ``{"t": new total}``
``pncounter``  ``{"p": new P total}`` | ``{"n": new N total}``
``lww``        ``{"v": value}``
``mvreg``      ``{"v": value, "seen": [dot, ...]}``
``orset``      ``{"add": elem}`` | ``{"rm": elem, "dots": [dot, ...]}``
``ormap``      ``{"up": key, "type": name, "op": nested op}``
               | ``{"rm": key, "dots": [dot, ...]}``
``rga/text``   ``{"after": id | None, "items": [json, ...] (rga) | str (text)}``
               | ``{"ids": [id, ...]}``
=============  ==================================================================

The modules document the semantics.
"""

from __future__ import annotations

from crdt.base import Crdt
from crdt.errors import InvalidOperation
from crdt.types.counters import GCounter, PNCounter
from crdt.types.ormap import _REGISTRY as _ormap_registry
from crdt.types.ormap import ORMap
from crdt.types.orset import ORSet
from crdt.types.registers import LWWRegister, MVRegister
from crdt.types.sequence import RGA, Text

TYPES: dict[str, type[Crdt]] = {
    cls.TYPE: cls for cls in (GCounter, PNCounter, LWWRegister, MVRegister, ORSet, ORMap, RGA, Text)
}
"""Every type by wire name."""
_ormap_registry.update(TYPES)


def type_named(name: object) -> type[Crdt]:
    """The class for a wire type name; :class:`InvalidOperation` if there is none."""
    cls = TYPES.get(name) if type(name) is str else None
    if cls is None:
        raise InvalidOperation(f"type: unknown CRDT type {name!r:.60}")
    return cls


__all__ = [
    "RGA",
    "TYPES",
    "GCounter",
    "LWWRegister",
    "MVRegister",
    "ORMap",
    "ORSet",
    "PNCounter",
    "Text",
    "type_named",
]
