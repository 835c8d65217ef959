"""``Node`` (a committee member) and ``Peer`` (a mesh peer) embedded in an asyncio program.

Both are async context managers over the daemon's own composition roots
(:mod:`dagrider.node.runtime` and :mod:`dagrider.node.peer_node`): the same transport,
consensus, CRDT store, DHT and content layer as ``dagrider node``, without the HTTP
API. ``async with Node("node-0.toml") as node:`` starts it and stops it cleanly
(persisted state flushed, links closed) when the block ends, also on an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from dagrider.errors import CommitteeError
from dagrider.node import service as _service
from dagrider.node.config import ConfigError, NodeConfig, load_config
from dagrider.node.peer_node import PeerNode
from dagrider.node.runtime import Node as _MemberRuntime
from dagrider.node.service import MempoolFull, TxTooLarge
from dagrider.sdk.errors import (
    Backpressure,
    DagriderError,
    InvalidArgument,
    LogTruncated,
    NotRunning,
    StorageFailure,
)
from dagrider.sdk.facades import Content, Documents, Network, Records, _Runtime
from dagrider.sdk.services import Services
from dagrider.sdk.types import Committed, TxState

__all__ = ["InvalidConfig", "Node", "Peer"]

LOG_PAGE = 512
"""Committed entries read from the store per step of :meth:`Node.committed`."""
_TX_ID = re.compile(r"[0-9a-f]{64}")
_STORAGE_ERRORS: tuple[type[Exception], ...] = (
    _service.StorageUnavailable,
    _service.StorageCorrupt,
)
"""What a member's ``submit`` raises when its store fails (disk full, damaged rows)."""


class InvalidConfig(DagriderError):
    """The configuration (object or TOML file) is missing, malformed or inconsistent,
    or names files (keys, committee) that cannot be used; the message says which key."""


def _config(config: NodeConfig | str | os.PathLike[str], role: str) -> NodeConfig:
    if isinstance(config, NodeConfig):
        cfg = config
    elif isinstance(config, str | os.PathLike):
        try:
            cfg = load_config(Path(config), role)
        except ConfigError as exc:
            raise InvalidConfig(str(exc)) from None
    else:
        raise InvalidArgument("config", f"expected a NodeConfig or a TOML path, not {config!r}")
    if cfg.role != role:
        raise InvalidConfig(f"[node] role is {cfg.role!r}; this class runs a {role!r}")
    return cfg


class _Endpoint:
    """What members and peers share: lifecycle and the mesh-wide facades."""

    _role: ClassVar[str]

    def __init__(
        self,
        config: NodeConfig | str | os.PathLike[str],
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = _config(config, self._role)
        """The validated configuration this node runs with."""
        self._log = logger or logging.getLogger(f"dagrider.{self._role}")
        self._impl: _Runtime | None = None
        self._stopping = False
        self.documents = Documents(self._runtime, lambda: self._stopping)
        """The replicated CRDT documents."""
        self.content = Content(self._runtime)
        """Content-addressed blobs on the mesh."""
        self.records = Records(self._runtime)
        """Signed, expiring DHT records."""
        self.network = Network(self._runtime)
        """Peers, paths, reachability, dialling."""
        self.services = Services(self._runtime, self._connect)
        """Application RPC services over the authenticated mesh."""

    def _runtime(self) -> _Runtime:
        if self._impl is None:
            raise NotRunning(f"the {self._role} is not running; use 'async with' or start()")
        return self._impl

    def _build(self) -> _Runtime:
        raise NotImplementedError

    async def _connect(self, peer: bytes, timeout: float) -> None:
        await self.network.connect(peer, timeout=timeout)

    @property
    def running(self) -> bool:
        """Whether the node has started and not stopped."""
        return self._impl is not None

    @property
    def key(self) -> bytes:
        """This node's Ed25519 public key: its identity on the mesh."""
        return self._runtime().transport.identity.public_key

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the node listens on for peer links."""
        rt = self._runtime()
        return rt.transport.bound_address or rt.listen

    async def start(self) -> None:
        """Open the stores, bind the listening port, join the mesh.

        :class:`InvalidConfig` for unusable key or committee files; ``OSError`` if the
        port is taken (nothing is left open then).
        """
        if self._impl is not None:
            raise DagriderError(f"the {self._role} is already running")
        try:
            impl = self._build()
        except (ConfigError, CommitteeError) as exc:
            raise InvalidConfig(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise InvalidConfig(f"cannot start from this configuration: {exc}") from None
        try:
            await impl.start()  # type: ignore[attr-defined]
        except BaseException:
            # release what did start (port, stores); the start failure is what matters
            with contextlib.suppress(Exception):
                await impl.stop()  # type: ignore[attr-defined]
            raise
        self._stopping = False
        self._impl = impl
        self.services.attach()

    async def stop(self) -> None:
        """Stop cleanly: services, CRDT sync, mesh, links; flush and close the stores.
        Iterators over committed entries and document changes end. Idempotent."""
        impl = self._impl
        if impl is None:
            return
        self._stopping = True
        await self.services.detach()
        try:
            await impl.stop()  # type: ignore[attr-defined]
        finally:
            self._impl = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def status(self) -> dict[str, Any]:
        """The same status document as the HTTP API's ``/v1/status`` (for display)."""
        return dict(self._runtime().status())  # type: ignore[attr-defined]


class Node(_Endpoint):
    """A committee member: orders transactions with the committee (DAG-Rider), and
    runs the CRDT store, DHT and content layer like any peer.

    ``config`` is a :class:`~dagrider.NodeConfig` or the path of a node's TOML file
    (as written by ``dagrider keygen`` or ``dagrider cluster up``).
    """

    _role = "member"

    def _build(self) -> _Runtime:
        return _MemberRuntime(self.config, self._log)

    def _member(self) -> _MemberRuntime:
        rt = self._runtime()
        assert isinstance(rt, _MemberRuntime)
        return rt

    @property
    def node_id(self) -> int:
        """This member's index in the committee."""
        return self._member().me

    def submit(self, tx: bytes) -> str:
        """Queue one transaction for ordering; its id (hex BLAKE2b-256 of the bytes).

        The transaction is in the persisted mempool when this returns.
        :class:`~dagrider.InvalidArgument` if it is not bytes or exceeds
        ``[consensus] max_tx_bytes``; :class:`~dagrider.Backpressure` when the mempool
        is full; :class:`~dagrider.StorageFailure` when the node cannot use its store.
        """
        return self.submit_many([tx])[0]

    def submit_many(self, txs: Sequence[bytes]) -> list[str]:
        """Queue a batch of transactions, all or none; their ids, in order."""
        if isinstance(txs, bytes | str) or not isinstance(txs, Sequence):
            raise InvalidArgument("txs", "expected a list of bytes")
        for i, tx in enumerate(txs):
            if not isinstance(tx, bytes):
                raise InvalidArgument("tx", f"[{i}]: expected bytes, not {type(tx).__name__}")
        try:
            return list(self._member().submit(list(txs)))
        except TxTooLarge as exc:
            raise InvalidArgument("tx", str(exc)) from None
        except MempoolFull as exc:
            raise Backpressure(str(exc), exc.retry_after) from None
        except _STORAGE_ERRORS as exc:
            raise StorageFailure(str(exc)) from None

    def tx_status(self, tx_id: str) -> TxState:
        """Whether transaction ``tx_id`` is pending, committed (with its position) or
        unknown to this node."""
        if not isinstance(tx_id, str) or not _TX_ID.fullmatch(tx_id):
            raise InvalidArgument("tx_id", "expected 64 lowercase hex digits")
        st = self._member().tx_status(tx_id)
        return TxState(st.tx_id, st.state, st.index, st.round, st.wave)

    async def wait_committed(self, tx_id: str, *, timeout: float = 30.0) -> TxState:
        """Wait until ``tx_id`` is committed; its state. ``TimeoutError`` after
        ``timeout`` seconds (the transaction may still commit later)."""
        async with asyncio.timeout(timeout):
            while True:
                st = self.tx_status(tx_id)
                if st.state == "committed":
                    return st
                rt = self._member()
                await rt.wait_for_log(rt.log_head(), 1.0)

    @property
    def log_head(self) -> int:
        """The position of the last committed transaction (-1 when none): the last one
        on disk, so ``log`` and ``committed`` can return everything up to it."""
        return self._member().log_head()

    async def committed(
        self, start: int = 0, *, follow: bool = True
    ) -> AsyncGenerator[Committed, None]:
        """Committed transactions in log order from position ``start``.

        With ``follow`` the iterator waits for new commits and ends only when the node
        stops; without, it ends at the current head. :class:`~dagrider.LogTruncated`
        if ``start`` was pruned (``[storage] keep_log_entries``).
        """
        if type(start) is not int or start < 0:
            raise InvalidArgument("start", f"{start!r}: expected an integer >= 0")
        pos = start
        while self._impl is not None:
            rt = self._member()
            rows = rt.log(pos - 1, LOG_PAGE)
            if rows and rows[0].index > pos:
                raise LogTruncated(
                    f"log position {pos} was pruned; the log starts at {rows[0].index}",
                    rows[0].index,
                )
            for r in rows:
                yield Committed(r.index, r.tx_id, r.data, r.round, r.source, r.wave, r.committed_at)
                pos = r.index + 1
            if rows:
                continue
            if not follow:
                return
            await rt.wait_for_log(pos - 1, 0.5)


class Peer(_Endpoint):
    """A mesh peer: serves and uses the DHT, the content layer and (given the committee
    file) the CRDT documents, but never votes. ``config`` needs ``[node] role =
    "peer"`` when it is an object; a TOML path is loaded as a peer whatever it says."""

    _role = "peer"

    def _build(self) -> _Runtime:
        return PeerNode(self.config, self._log)
