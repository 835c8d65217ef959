"""The key file of a mesh peer: an Ed25519 identity seed and nothing else.

A committee member's key file also holds a coin share and is dealt with the committee
(``dagrider keygen --nodes``). A peer outside the committee only needs a transport
identity, which it can make for itself: ``dagrider keygen --peer --out FILE``. The file
is JSON like the member key files, readable by its owner only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagrider.committee import _check_fields, _check_format, _read_json, _write_json
from dagrider.errors import CommitteeError
from p2p.identity import Identity

PEER_KEY_FORMAT = "dagrider-peer-key/1"
SEED_BYTES = 32


@dataclass(frozen=True, repr=False)
class PeerKey:
    """A peer's identity seed (the Ed25519 private key seed of its transport identity)."""

    identity_seed: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.identity_seed, bytes) or len(self.identity_seed) != SEED_BYTES:
            raise CommitteeError(f"identity_seed must be {SEED_BYTES} bytes")

    def __repr__(self) -> str:
        return f"PeerKey(public={self.identity().public_key.hex()[:16]}...)"

    def identity(self) -> Identity:
        return Identity.from_seed(self.identity_seed)

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes] = os.urandom) -> PeerKey:
        return cls(random_bytes(SEED_BYTES))

    def to_dict(self, note: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": PEER_KEY_FORMAT}
        if note is not None:
            doc["note"] = note
        doc["identity_seed"] = self.identity_seed.hex()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeerKey:
        _check_fields(data, {"format", "identity_seed"}, {"note"}, "peer key")
        _check_format(data["format"], PEER_KEY_FORMAT)
        seed = data["identity_seed"]
        try:
            raw = bytes.fromhex(seed) if isinstance(seed, str) else None
        except ValueError:
            raw = None
        if raw is None:
            raise CommitteeError("peer key: identity_seed must be a hex string")
        return cls(raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PeerKey:
        return cls.from_dict(_read_json(Path(path)))

    def dump(
        self, path: str | os.PathLike[str], note: str | None = None, *, overwrite: bool = False
    ) -> None:
        """Write the key file readable by its owner only (mode 0600)."""
        _write_json(Path(path), self.to_dict(note), mode=0o600, overwrite=overwrite)
