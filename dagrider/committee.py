"""The committee (who takes part, with which keys) and each node's secret key file.

A committee is fixed for the life of a deployment: n = 3f+1 members, each with an
Ed25519 identity key (authenticates links and signatures) and a coin verification
key (checks its threshold-coin shares). Its ``committee_id`` is a hash of exactly the
keys and f, so two nodes that agree on the id agree on everything security-relevant;
addresses are deliberately left out because they may change.

Files are JSON with hex-encoded bytes, so an operator can read and diff them.
Loading is strict: anything malformed or inconsistent is a :class:`CommitteeError`
naming the field and value, because a node started with a wrong committee would
silently fail to reach quorums or accept forged shares.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing

from dagrider.coin import CoinPublicKey
from dagrider.errors import CommitteeError
from dagrider.group import base_mult, is_canonical_scalar, is_valid_point

COMMITTEE_FORMAT = "dagrider-committee/1"
NODE_KEY_FORMAT = "dagrider-node-key/1"
KEY_BYTES = 32
_ID_PERSON = b"dagrider-cid/1"


@dataclass(frozen=True)
class Member:
    """One committee seat; ``node_id`` is also its position in ``Committee.members``."""

    node_id: int
    identity_key: bytes
    coin_key: bytes
    address: str | None = None

    def __post_init__(self) -> None:
        where = f"members[{self.node_id}]"
        if not isinstance(self.node_id, int) or isinstance(self.node_id, bool):
            raise CommitteeError(f"{where}.node_id must be an integer, got {self.node_id!r}")
        _require_bytes(self.identity_key, KEY_BYTES, f"{where}.identity_key")
        _require_bytes(self.coin_key, KEY_BYTES, f"{where}.coin_key")
        if self.address is not None:
            _check_address(self.address, f"{where}.address")


@dataclass(frozen=True)
class Committee:
    """The n = 3f+1 members of one deployment; always valid once constructed."""

    members: tuple[Member, ...]
    f: int

    def __post_init__(self) -> None:
        _check_size(len(self.members), self.f)
        _check_member_order(self.members)
        _check_unique(self.members)

    @property
    def n(self) -> int:
        """Number of members."""
        return len(self.members)

    @property
    def quorum(self) -> int:
        """2f+1: any two such sets intersect in a correct member."""
        return 2 * self.f + 1

    @property
    def small_quorum(self) -> int:
        """f+1: any such set contains a correct member (also the coin threshold)."""
        return self.f + 1

    @cached_property
    def committee_id(self) -> bytes:
        """32-byte BLAKE2b of a canonical msgpack of f and every member's keys."""
        body = [
            COMMITTEE_FORMAT,
            self.f,
            [[m.node_id, m.identity_key, m.coin_key] for m in self.members],
        ]
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return _blake2b_256(packed)

    def coin_public_key(self) -> CoinPublicKey:
        """The coin's public side: every member's ``y_i`` and threshold f+1."""
        return self._coin_public_key

    @cached_property
    def _coin_public_key(self) -> CoinPublicKey:
        return CoinPublicKey(tuple(m.coin_key for m in self.members), self.small_quorum)

    def member(self, node_id: int) -> Member:
        """The member at ``node_id``; a ``CommitteeError`` outside 0..n-1."""
        if not isinstance(node_id, int) or not 0 <= node_id < self.n:
            raise CommitteeError(f"node id {node_id!r} is not in 0..{self.n - 1}")
        return self.members[node_id]

    def node_id_of(self, identity_key: bytes) -> int | None:
        """Map an authenticated peer key to its node id, ``None`` for strangers."""
        return self._ids_by_key.get(identity_key)

    @cached_property
    def _ids_by_key(self) -> dict[bytes, int]:
        return {m.identity_key: m.node_id for m in self.members}

    def check_secret(self, secret: NodeSecret) -> None:
        """Refuse a key file that does not belong to this committee seat.

        Catches the operator mistakes that would otherwise show up much later as a
        node whose signatures or coin shares everyone rejects.
        """
        if secret.committee_id != self.committee_id:
            raise CommitteeError(
                f"key file committee_id {secret.committee_id.hex()} does not match "
                f"committee {self.committee_id.hex()}"
            )
        member = self.member(secret.node_id)
        derived = bytes(secret.signing_key().verify_key)
        if derived != member.identity_key:
            raise CommitteeError(
                f"identity_seed of node {secret.node_id} derives key {derived.hex()}, "
                f"committee has {member.identity_key.hex()}"
            )
        if base_mult(secret.coin_share) != member.coin_key:
            raise CommitteeError(
                f"coin_share of node {secret.node_id} does not match coin key "
                f"{member.coin_key.hex()}"
            )

    # ------------------------------------------------------------------ files

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Committee:
        """Build from the JSON document, refusing anything malformed (see module doc)."""
        _check_fields(data, {"format", "f", "members", "coin_keys"}, {"note"}, "committee")
        _check_format(data["format"], COMMITTEE_FORMAT)
        f = _require_int(data["f"], "f")
        raw_members = _require_list(data["members"], "members")
        raw_coin_keys = _require_list(data["coin_keys"], "coin_keys")
        _check_size(len(raw_members), f)
        if len(raw_coin_keys) != len(raw_members):
            raise CommitteeError(
                f"coin share count {len(raw_coin_keys)} does not match n={len(raw_members)}"
            )
        coin_keys = [
            _hex_field(k, KEY_BYTES, f"coin_keys[{i}]") for i, k in enumerate(raw_coin_keys)
        ]
        members = tuple(
            _member_from_dict(raw, position, coin_keys[position])
            for position, raw in enumerate(raw_members)
        )
        return cls(members=members, f=f)

    def to_dict(self, note: str | None = None) -> dict[str, Any]:
        """The JSON document ``from_dict`` reads back."""
        doc: dict[str, Any] = {"format": COMMITTEE_FORMAT}
        if note is not None:
            doc["note"] = note
        doc["f"] = self.f
        doc["members"] = [_member_to_dict(m) for m in self.members]
        doc["coin_keys"] = [m.coin_key.hex() for m in self.members]
        return doc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Committee:
        """Read and validate a committee file."""
        return cls.from_dict(_read_json(Path(path)))

    def dump(
        self, path: str | os.PathLike[str], note: str | None = None, *, overwrite: bool = False
    ) -> None:
        """Write the committee file (public data, normal permissions)."""
        _write_json(Path(path), self.to_dict(note), mode=0o644, overwrite=overwrite)


@dataclass(frozen=True)
class NodeSecret:
    """One node's secrets: identity seed, coin share, and the committee they belong to."""

    node_id: int
    identity_seed: bytes
    coin_share: bytes
    committee_id: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, int) or isinstance(self.node_id, bool) or self.node_id < 0:
            raise CommitteeError(f"node_id must be a non-negative int, got {self.node_id!r}")
        _require_bytes(self.identity_seed, KEY_BYTES, "identity_seed")
        _require_bytes(self.coin_share, KEY_BYTES, "coin_share")
        _require_bytes(self.committee_id, KEY_BYTES, "committee_id")
        if not is_canonical_scalar(self.coin_share):
            raise CommitteeError("coin_share is not a reduced scalar")

    def __repr__(self) -> str:
        """Keep the secrets out of logs and tracebacks."""
        return f"NodeSecret(node_id={self.node_id}, committee_id={self.committee_id.hex()[:16]}...)"

    def signing_key(self) -> nacl.signing.SigningKey:
        """The Ed25519 signing key derived from the seed."""
        return nacl.signing.SigningKey(self.identity_seed)

    def to_dict(self, note: str | None = None) -> dict[str, Any]:
        """The JSON document ``from_dict`` reads back."""
        doc: dict[str, Any] = {"format": NODE_KEY_FORMAT}
        if note is not None:
            doc["note"] = note
        doc["node_id"] = self.node_id
        doc["identity_seed"] = self.identity_seed.hex()
        doc["coin_share"] = self.coin_share.hex()
        doc["committee_id"] = self.committee_id.hex()
        return doc

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeSecret:
        """Build from the JSON document; refuses missing/extra fields, bad hex, bad lengths."""
        fields = {"format", "node_id", "identity_seed", "coin_share", "committee_id"}
        _check_fields(data, fields, {"note"}, "node key")
        _check_format(data["format"], NODE_KEY_FORMAT)
        return cls(
            node_id=_require_int(data["node_id"], "node_id"),
            identity_seed=_hex_field(data["identity_seed"], KEY_BYTES, "identity_seed"),
            coin_share=_hex_field(data["coin_share"], KEY_BYTES, "coin_share"),
            committee_id=_hex_field(data["committee_id"], KEY_BYTES, "committee_id"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], committee: Committee | None = None) -> NodeSecret:
        """Read and validate a key file; with ``committee``, also ``check_secret`` it."""
        secret = cls.from_dict(_read_json(Path(path)))
        if committee is not None:
            committee.check_secret(secret)
        return secret

    def dump(
        self, path: str | os.PathLike[str], note: str | None = None, *, overwrite: bool = False
    ) -> None:
        """Write the key file readable by its owner only (mode 0600)."""
        _write_json(Path(path), self.to_dict(note), mode=0o600, overwrite=overwrite)


# ---------------------------------------------------------------------- validation


def _check_size(n: int, f: int) -> None:
    if n < 4:
        raise CommitteeError(f"committee size n={n} is below the minimum of 4")
    if n != 3 * f + 1:
        raise CommitteeError(f"committee size n={n} is not 3f+1={3 * f + 1} for f={f}")


def _check_member_order(members: tuple[Member, ...]) -> None:
    for position, member in enumerate(members):
        if member.node_id != position:
            raise CommitteeError(
                f"members[{position}].node_id is {member.node_id!r}; "
                "node ids must be 0..n-1 in order"
            )


def _check_unique(members: tuple[Member, ...]) -> None:
    identity_seen: set[bytes] = set()
    coin_seen: set[bytes] = set()
    for m in members:
        if m.identity_key in identity_seen:
            raise CommitteeError(
                f"duplicate identity key {m.identity_key.hex()} at node {m.node_id}"
            )
        if m.coin_key in coin_seen:
            raise CommitteeError(f"duplicate coin key {m.coin_key.hex()} at node {m.node_id}")
        if not is_valid_point(m.coin_key):
            raise CommitteeError(
                f"coin key of node {m.node_id} is not a valid group point: {m.coin_key.hex()}"
            )
        identity_seen.add(m.identity_key)
        coin_seen.add(m.coin_key)


def _member_from_dict(raw: object, position: int, coin_key: bytes) -> Member:
    where = f"members[{position}]"
    if not isinstance(raw, Mapping):
        raise CommitteeError(f"{where} must be an object, got {type(raw).__name__}")
    _check_fields(raw, {"node_id", "identity_key"}, {"address"}, where)
    address = raw.get("address")
    if address is not None and not isinstance(address, str):
        raise CommitteeError(f"{where}.address must be a string, got {address!r}")
    return Member(
        node_id=_require_int(raw["node_id"], f"{where}.node_id"),
        identity_key=_hex_field(raw["identity_key"], KEY_BYTES, f"{where}.identity_key"),
        coin_key=coin_key,
        address=address,
    )


def _member_to_dict(member: Member) -> dict[str, Any]:
    doc: dict[str, Any] = {"node_id": member.node_id, "identity_key": member.identity_key.hex()}
    if member.address is not None:
        doc["address"] = member.address
    return doc


def _check_fields(data: object, required: set[str], optional: set[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise CommitteeError(f"{what} must be a JSON object, got {type(data).__name__}")
    keys = set(data)
    missing = sorted(required - keys)
    if missing:
        raise CommitteeError(f"{what}: missing field(s) {', '.join(missing)}")
    extra = sorted(str(k) for k in keys - required - optional)
    if extra:
        raise CommitteeError(f"{what}: unknown field(s) {', '.join(extra)}")


def _check_format(value: object, expected: str) -> None:
    if value != expected:
        raise CommitteeError(f"format must be {expected!r}, got {value!r}")


def _check_address(address: str, name: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise CommitteeError(f"{name} must be 'host:port', got {address!r}")


def _require_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommitteeError(f"{name} must be an integer, got {value!r}")
    return value


def _require_list(value: object, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise CommitteeError(f"{name} must be a list, got {type(value).__name__}")
    return value


def _require_bytes(value: object, size: int, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise CommitteeError(f"{name} must be {size} bytes, got {got}")


def _hex_field(value: object, size: int, name: str) -> bytes:
    if not isinstance(value, str):
        raise CommitteeError(f"{name} must be a hex string, got {value!r}")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise CommitteeError(f"{name} is not valid hex: {value!r}") from None
    if len(data) != size:
        raise CommitteeError(f"{name} must be {size} bytes, got {len(data)}: {value!r}")
    return data


# ---------------------------------------------------------------------- file I/O


def _blake2b_256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32, person=_ID_PERSON).digest()


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommitteeError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommitteeError(f"{path} is not valid JSON: {exc}") from exc


def _write_json(path: Path, doc: Mapping[str, Any], *, mode: int, overwrite: bool) -> None:
    """Write via a fresh temporary file with ``mode`` set before any byte is written.

    Creating with ``os.open(..., mode)`` and ``fchmod`` means a secret is never readable
    by others, not even briefly or under a permissive umask. The final rename makes the
    write atomic; without ``overwrite`` an existing file is refused.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {path}")
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the path appeared meanwhile: never clobber
    except FileExistsError:
        tmp.unlink()
        raise FileExistsError(f"refusing to overwrite {path}") from None
    except OSError:
        os.replace(tmp, path)  # no hard links on this file system; checked above
        return
    tmp.unlink()
