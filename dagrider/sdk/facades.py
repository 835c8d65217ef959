"""The API's views of one running node: documents, content, DHT records and network.

Each facade is a thin, validating adapter over a layer the daemon already runs (the
CRDT store, the content service, the DHT, the transport and NAT service): it checks
arguments first (so bad input changes nothing and raises
:class:`~dagrider.sdk.errors.InvalidArgument`), calls the layer, and translates the
layer's own exceptions and rows into the API's types.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import Any, Protocol

from crdt.document import Intent, parse_intents
from crdt.errors import InvalidOperation
from dagrider.node.crdt_node import (
    CheckpointCompacted,
    CheckpointIncomplete,
    CrdtNode,
    UnknownCheckpoint,
    UnknownDocument,
)
from dagrider.node.mesh import Mesh
from dagrider.sdk.errors import (
    ContentUnavailable,
    DagriderError,
    InvalidArgument,
    NotFound,
    PeerUnreachable,
    Unsupported,
)
from dagrider.sdk.types import Blob, DocumentChange, NetworkInfo, PeerStatus, Provider, SignedRecord
from p2p.content.manifest import CidTextError, cid_from_text, cid_to_text
from p2p.content_service import ContentFetchError
from p2p.content_store import ContentNotFound, ContentTooLarge
from p2p.dht.peer import PeerInfo
from p2p.dht.records import MAX_NAME, MAX_VALUE, RecordError
from p2p.errors import PeerNotConnected
from p2p.nat_service import NatService
from p2p.transport import PeerTransport

__all__ = ["Content", "Documents", "Network", "Progress", "Records"]

Progress = Callable[[int, int | None], None]
"""``progress(bytes_done, bytes_total)``; the total is None while unknown (a stream)."""

PIECE = 1024 * 1024
"""Bytes read from a file or cut from a ``bytes`` value per piece handed to the store."""


class _Runtime(Protocol):
    """What the facades need from a member's or a peer's composition root."""

    transport: PeerTransport
    crdt: CrdtNode | None
    nat: NatService | None
    listen: tuple[str, int]

    @property
    def mesh(self) -> Mesh | None: ...


Get = Callable[[], _Runtime]


def _key(value: object, argument: str = "peer") -> bytes:
    """A 32-byte Ed25519 public key from bytes or 64 hex digits."""
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise InvalidArgument(argument, f"{value[:80]!r} is not hex") from None
    if not isinstance(value, bytes) or len(value) != 32:
        raise InvalidArgument(argument, "expected a 32-byte public key (bytes or 64 hex digits)")
    return value


def _intent_dict(i: int, intent: object) -> object:
    if isinstance(intent, Intent):
        out: dict[str, Any] = {"path": list(intent.path), "action": intent.action}
        if intent.type is not None:
            out["type"] = intent.type
        if intent.type is not None or intent.args is not None:
            out["args"] = intent.args
        return out
    if isinstance(intent, Mapping):
        return dict(intent)
    raise InvalidArgument("intents", f"[{i}]: expected an Intent or a mapping")


class Documents:
    """The replicated CRDT documents (``[crdt]``), on members and on peers alike.

    A document is a map of typed CRDT values (counters, registers, sets, sequences,
    nested maps) addressed by paths; see :class:`~dagrider.Intent` for the updates.
    """

    def __init__(self, runtime: Get, stopping: Callable[[], bool]) -> None:
        self._runtime = runtime
        self._stopping = stopping

    def _crdt(self) -> CrdtNode:
        crdt = self._runtime().crdt
        if crdt is None:
            raise Unsupported(
                "this node runs no CRDT store ([crdt] enabled = false or no committee)"
            )
        return crdt

    def names(self) -> list[str]:
        """The names of every document this node holds."""
        return [str(d["doc"]) for d in self._crdt().documents()]

    def get(self, doc: str, *, checkpoint: int | None = None) -> Any:
        """The value of ``doc`` now, or as of the ordered ``checkpoint`` number.

        Raises :class:`~dagrider.NotFound` for a document (or checkpoint) that does not
        exist, :class:`~dagrider.InvalidArgument` for a checkpoint whose history was
        compacted or has not reached this node yet.
        """
        if not isinstance(doc, str):
            raise InvalidArgument("doc", "expected a string")
        if checkpoint is not None and (type(checkpoint) is not int or checkpoint < 1):
            raise InvalidArgument("checkpoint", f"{checkpoint!r}: expected an integer >= 1")
        try:
            return self._crdt().read(doc, checkpoint)["value"]
        except (UnknownDocument, UnknownCheckpoint) as exc:
            raise NotFound(str(exc)) from None
        except (CheckpointIncomplete, CheckpointCompacted) as exc:
            raise InvalidArgument("checkpoint", str(exc)) from None

    def update(self, doc: str, intents: Sequence[Intent | Mapping[str, Any]]) -> str:
        """Apply ``intents`` to ``doc`` as one signed change; the change's hash (hex).

        The change is persisted before this returns and pushed to connected peers.
        Intents are :class:`~dagrider.Intent` values or mappings with the same fields
        (``{"path": [...], "type": "lww", "action": "set", "args": 1}``).
        :class:`~dagrider.InvalidArgument` names the first bad intent, or says this
        node's key may not write ``doc``'s namespace; nothing is applied then.
        """
        if not isinstance(doc, str):
            raise InvalidArgument("doc", "expected a string")
        if isinstance(intents, str | bytes | Mapping) or not isinstance(intents, Sequence):
            raise InvalidArgument("intents", "expected a list of intents")
        try:
            parsed = parse_intents({"ops": [_intent_dict(i, x) for i, x in enumerate(intents)]})
            change = self._crdt().update(doc, parsed)
        except InvalidOperation as exc:
            raise InvalidArgument("intents", str(exc)) from None
        return change.hash.hex()

    async def subscribe(self, doc: str | None = None) -> AsyncGenerator[DocumentChange, None]:
        """Every change applied from now on (to ``doc`` only, if given), local or remote.

        The iterator ends when the node stops. A subscriber that falls far behind
        (1024 changes) is dropped by the node: its iterator then raises
        :class:`~dagrider.DagriderError` rather than silently skipping changes.
        """
        if doc is not None and not isinstance(doc, str):
            raise InvalidArgument("doc", "expected a document name or None")
        crdt = self._crdt()
        queue = crdt.subscribe()
        try:
            while True:
                event = await queue.get()
                if event is None:
                    if self._stopping():
                        return
                    raise DagriderError("subscriber fell too far behind and was dropped")
                if doc is None or event.doc == doc:
                    yield DocumentChange(
                        event.doc, event.hash, event.author, event.ops, event.local
                    )
        finally:
            crdt.unsubscribe(queue)


def _cid(text: object) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument("cid", "expected the CID as 64 hex digits")
    try:
        return cid_from_text(text)
    except CidTextError as exc:
        raise InvalidArgument("cid", exc.detail) from None


async def _bytes_pieces(data: bytes, progress: Progress | None) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), PIECE):
        yield bytes(view[start : start + PIECE])
        if progress is not None:
            progress(min(start + PIECE, len(data)), len(data))
    if not data and progress is not None:
        progress(0, 0)


async def _file_pieces(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while piece := await asyncio.to_thread(f.read, PIECE):
            done += len(piece)
            if progress is not None:
                progress(done, total)
            yield piece


async def _stream_pieces(
    source: AsyncIterable[bytes], progress: Progress | None
) -> AsyncIterator[bytes]:
    done = 0
    async for piece in source:
        if not isinstance(piece, bytes | bytearray | memoryview):
            raise InvalidArgument("source", f"the stream yielded {type(piece).__name__}, not bytes")
        done += len(piece)
        if progress is not None:
            progress(done, None)
        yield bytes(piece)


class Content:
    """Content-addressed blobs on the mesh: put, fetch from providers, stream, find.

    A blob is named by its CID (hex of a Merkle root over its chunks), so whatever a
    provider sends is verified chunk by chunk before it is kept.
    """

    def __init__(self, runtime: Get) -> None:
        self._runtime = runtime

    def _mesh(self) -> Mesh:
        mesh = self._runtime().mesh
        if mesh is None:
            raise Unsupported("this node runs no content layer ([dht] enabled = false)")
        return mesh

    async def put(
        self,
        source: bytes | str | os.PathLike[str] | AsyncIterable[bytes],
        *,
        progress: Progress | None = None,
    ) -> Blob:
        """Store a blob from ``bytes``, a file path or an async iterator of ``bytes``,
        announce it in the DHT, and return its :class:`~dagrider.Blob` (CID and size).

        ``progress(done, total)`` is called as pieces are stored. A blob over the
        node's ``[content] max_blob_mib`` raises :class:`~dagrider.InvalidArgument`
        and nothing is kept; a missing file too.
        """
        mesh = self._mesh()
        pieces: AsyncIterator[bytes]
        if isinstance(source, bytes | bytearray | memoryview):
            pieces = _bytes_pieces(bytes(source), progress)
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise InvalidArgument("source", f"{path} is not a readable file")
            pieces = _file_pieces(path, progress)
        elif isinstance(source, AsyncIterable):
            pieces = _stream_pieces(source, progress)
        else:
            raise InvalidArgument(
                "source",
                f"expected bytes, a path or an async iterator, not {type(source).__name__}",
            )
        try:
            manifest = await mesh.content.put_stream(pieces)
        except ContentTooLarge as exc:
            raise InvalidArgument("source", str(exc)) from None
        return Blob(cid_to_text(manifest.cid), manifest.size)

    def blobs(self) -> list[Blob]:
        """The blobs this node holds in full."""
        return [Blob(cid_to_text(m.cid), m.size) for m in self._mesh().store.list()]

    def has(self, cid: str) -> bool:
        """Whether this node holds blob ``cid`` in full."""
        return self._mesh().store.has(_cid(cid))

    async def _fetch(self, cid: bytes, progress: Progress | None) -> Path:
        def report(held: int, total: int) -> None:
            if progress is not None:
                progress(held, total)

        try:
            return await self._mesh().content.fetch(cid, progress=report)
        except ContentFetchError as exc:
            raise ContentUnavailable(f"{cid_to_text(cid)}: {exc.reason}") from None

    async def get(
        self, cid: str, to: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> Path:
        """Fetch blob ``cid`` (from providers, unless held) and write it to file ``to``.

        The blob is verified before it is written. :class:`~dagrider.ContentUnavailable`
        if no provider delivers it; ``to`` is then left untouched.
        """
        key = _cid(cid)
        target = Path(to)
        if not target.parent.is_dir():
            raise InvalidArgument("to", f"directory {target.parent} does not exist")
        if target.is_dir():
            raise InvalidArgument("to", f"{target} is a directory; name the file to write")
        held = await self._fetch(key, progress)
        await asyncio.to_thread(shutil.copyfile, held, target)
        return target

    async def read(
        self, cid: str, *, progress: Progress | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Fetch blob ``cid`` if needed, then yield its bytes in pieces of up to 1 MiB."""
        key = _cid(cid)
        await self._fetch(key, progress)
        try:
            pieces = await self._mesh().store.read_range(key)
        except ContentNotFound as exc:
            raise NotFound(str(exc)) from None
        async for piece in pieces:
            yield piece

    async def providers(self, cid: str, *, limit: int = 20) -> list[Provider]:
        """Peers that announced blob ``cid`` (this node first if it holds it)."""
        key = _cid(cid)
        if type(limit) is not int or not 1 <= limit <= 32:
            raise InvalidArgument("limit", f"{limit!r}: expected an integer in 1..32")
        mesh = self._mesh()
        found = [_provider(p) for p in await mesh.dht.find_providers(key, limit=limit)]
        if mesh.store.has(key):
            found.insert(0, _provider(mesh.self_info))
        return found


def _provider(info: PeerInfo) -> Provider:
    return Provider(info.key, tuple(info.addrs))


def _name(name: object) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    if not isinstance(raw, bytes) or not 0 < len(raw) <= MAX_NAME:
        raise InvalidArgument("name", f"expected 1..{MAX_NAME} bytes (or a str of them)")
    return raw


class Records:
    """Signed, expiring key-value records in the Kademlia DHT.

    A record lives under (author, name): only the author's key can write it, so a
    reader who knows whom to trust gets that author's newest value or nothing.
    """

    def __init__(self, runtime: Get) -> None:
        self._runtime = runtime

    def _mesh(self) -> Mesh:
        mesh = self._runtime().mesh
        if mesh is None:
            raise Unsupported("this node runs no DHT ([dht] enabled = false)")
        return mesh

    async def put(self, name: bytes | str, value: bytes, *, ttl: float) -> int:
        """Sign ``value`` as this node's record ``name``, valid for ``ttl`` seconds, and
        store it at the closest peers (republished while it lives); how many stored it.

        :class:`~dagrider.InvalidArgument` for a name over 64 bytes, a value over
        16 KiB or a ttl outside (0, max_record_ttl].
        """
        raw = _name(name)
        if not isinstance(value, bytes) or len(value) > MAX_VALUE:
            raise InvalidArgument("value", f"expected bytes, at most {MAX_VALUE}")
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
            raise InvalidArgument("ttl", f"{ttl!r}: expected a positive number of seconds")
        try:
            return await self._mesh().dht.put_record(raw, value, ttl=float(ttl))
        except (RecordError, ValueError) as exc:
            raise InvalidArgument("ttl" if "ttl" in str(exc) else "value", str(exc)) from None

    async def get(self, author: bytes | str, name: bytes | str) -> SignedRecord | None:
        """The newest unexpired record ``name`` signed by ``author``, or None if neither
        this node nor the peers it asked hold one."""
        key = _key(author, "author")
        raw = _name(name)
        record = await self._mesh().dht.get_record(key, raw)
        if record is None:
            return None
        return SignedRecord(record.author, record.name, record.value, record.seq, record.expires)


class Network:
    """Peers, paths and this node's reachability; dialling by key."""

    def __init__(self, runtime: Get) -> None:
        self._runtime = runtime

    def _status(self, key: bytes, stats: Mapping[str, Any]) -> PeerStatus:
        rt = self._runtime()
        path = rt.transport.path_of(key)
        relay: bytes | None = None
        kind: Any = None
        if path is not None:
            kind = "relayed" if path.startswith("relayed") else "direct"
            tail = path.partition(":")[2]
            relay = bytes.fromhex(tail) if len(tail) == 64 else None
        rtt = stats.get("rtt_ms")
        addr = stats.get("remote_addr")
        address = (str(addr[0]), int(addr[1])) if isinstance(addr, list | tuple) else None
        return PeerStatus(
            key,
            path is not None,
            kind,
            relay,
            float(rtt) / 1000 if isinstance(rtt, int | float) else None,
            address if path is not None else None,
        )

    def peers(self) -> list[PeerStatus]:
        """Every peer the transport knows, linked or not, by key order."""
        stats = self._runtime().transport.stats()
        return [self._status(bytes.fromhex(k), v) for k, v in sorted(stats.items())]

    def peer(self, key: bytes | str) -> PeerStatus:
        """One peer's status; a peer never seen is reported as not connected."""
        raw = _key(key)
        stats = self._runtime().transport.stats().get(raw.hex(), {})
        return self._status(raw, stats)

    def connected(self) -> list[bytes]:
        """Keys of the peers with a live link now."""
        return sorted(self._runtime().transport.connected())

    def info(self) -> NetworkInfo:
        """This node's key, listen address, reachability and NAT type."""
        rt = self._runtime()
        key = rt.transport.identity.public_key
        listen = rt.transport.bound_address or rt.listen
        nat = rt.nat
        if nat is None:
            return NetworkInfo(key, listen, "unknown", "unknown", (), ())
        return NetworkInfo(
            key,
            listen,
            nat.reach.status,
            nat.observed.mapping,
            tuple(nat.observed.confirmed),
            tuple(sorted(nat.reservations.active(nat.now))),
        )

    async def connect(
        self,
        key: bytes | str,
        address: tuple[str, int] | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        """Make sure there is an authenticated link to ``key``.

        With ``address``, dial it; without, find the peer's addresses in the DHT. The
        TLS handshake proves the key, whatever address answered.
        :class:`~dagrider.PeerUnreachable` when no link could be made.
        """
        raw = _key(key)
        if address is not None and (
            not isinstance(address, tuple)
            or len(address) != 2
            or not isinstance(address[0], str)
            or type(address[1]) is not int
            or not 0 < address[1] < 65536
        ):
            raise InvalidArgument("address", f"{address!r}: expected (host, port)")
        rt = self._runtime()
        if rt.transport.has_link(raw):
            return
        try:
            async with asyncio.timeout(timeout):
                if address is not None:
                    await rt.transport.connect(raw, address)
                    return
                mesh = rt.mesh
                if mesh is None:
                    raise PeerUnreachable("no address given and this node runs no DHT")
                pause = 0.1
                # A peer that joined a moment ago may not be in the routing tables it
                # will be in: look again, backing off, until the timeout.
                while not (info := await mesh.dht.find_peer(raw)) or not (
                    await mesh.dht.ensure_link(info)
                ):
                    await asyncio.sleep(pause)
                    pause = min(1.0, pause * 2)
        except (PeerNotConnected, TimeoutError) as exc:
            reason = str(exc) or "not found in the DHT, or not dialable, within the timeout"
            raise PeerUnreachable(f"peer {raw.hex()[:16]}: {reason}") from None
