"""The peer transport: authenticated TCP + TLS 1.3 links between nodes named by Ed25519 keys.

This is the asyncio shell around the pure pieces (``framing``, ``ratelimit``, the pin
check in ``tls``). It listens, dials, authenticates, keeps exactly one link per peer,
reconnects forever with backoff, and hands DATA payloads to ``on_frame``.

Link policy, in one place:

- **Who dials.** For a pair of nodes, the one with the lexicographically smaller public
  key dials; the other waits. An inbound link from a larger key is still accepted if the
  key is allowed (e.g. a peer that is not in our ``peers`` map).
- **Duplicates.** If two links to one peer ever exist, both ends keep the one dialled by
  the smaller key and close the other; between two links of the same kind the newer one
  wins (the older is most likely a half-open leftover of a peer restart). A relayed link
  gives way to a direct one, never the reverse.
- **Replacement is not loss.** A replaced link, and a duplicate that loses (the peer
  may have used it for a moment), is retired (``Link.retire``): what was queued on it
  still goes out, what the peer still sends on it is still delivered, and
  ``on_disconnected`` does not fire. Only a replaced link that closes before both ends
  drained it (``retire_timeout``, a half-open leftover, a reset) is reported, as
  ``on_disconnected`` then ``on_connected``: frames may have been lost, callers resend.
  A peer has at most ``MAX_DRAINING`` retired links draining at a time.
- **Source port.** Outgoing connections leave from the listening port (``p2p.sockets``)
  so that a NAT keeps one mapping per node; NAT traversal will punch holes from it.
- **TLS from the first byte.** Both ends hand the raw socket to the loop's TLS layer
  (``open_connection(ssl=)`` / ``connect_accepted_socket(ssl=)``), never a plaintext
  stream upgraded with ``start_tls``: a dialer sends its ClientHello right after the TCP
  handshake, often before our loop accepted the connection (we were starting up, or
  busy). uvloop reads those bytes into the plaintext stream as soon as it accepts, before
  any ``start_tls`` can run, so the TLS layer never saw them and both ends waited for each
  other until the handshake timed out, on every retry that raced the same way. We accept
  ourselves (``sock_accept``) to keep counting and bounding handshakes in flight.
- **Failure.** A dial failure or a lost link is retried after a jittered exponential
  backoff; a peer that misbehaves (framing, size, rate, wrong key) loses its link and is
  logged; callbacks that raise are logged. Nothing propagates into the event loop.
- **Delivery.** ``send`` is best effort per link: frames queued on a link that closes are
  dropped. ``on_disconnected`` / ``on_connected`` tell the caller to resend what is live.
- **On-demand links.** ``connect`` dials a peer we were not configured with (a DHT
  contact, a content provider) once, with no redial loop. Such links count against
  ``max_links`` and are closed after ``idle_timeout`` without application frames unless
  ``protect``ed. Peers in ``peers`` or named in ``allowed`` are configured: always
  accepted, never idle-closed (a NAT relay link may stay quiet for an hour).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import socket
import ssl
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from p2p.config import TransportConfig
from p2p.errors import PeerNotConnected
from p2p.framing import KNOWN_KINDS, FrameBudget, FrameKind, encode_frame
from p2p.identity import Identity, peer_id, short_id
from p2p.link import Direction, Link, PeerStats
from p2p.logs import log_event
from p2p.ratelimit import Backoff
from p2p.sockets import bind_listener, connect_from
from p2p.tls import check_pin, client_context, peer_public_key, server_context

__all__ = ["PeerState", "PeerTransport", "TransportConfig"]

STREAM_LIMIT: Final = 1024 * 1024
SHUTDOWN_FLUSH_S: Final = 1.0
ACCEPT_RETRY_S: Final = 0.5
"""Pause after a failed ``accept`` (e.g. out of file descriptors) before accepting again."""
DROP_LOG_PERIOD_S: Final = 1.0
MAX_DRAINING: Final = 2
"""Retired links one peer may have draining at once (a replaced one and a losing
duplicate); a peer that redials in a loop cannot pile up more."""
"""At most one "inbound dropped" line per this many seconds (every drop is counted)."""

_DATA: Final = int(FrameKind.DATA)

PeerState = Literal["connected", "connecting", "backoff", "disconnected"]


def _noop(_key: bytes) -> None:
    return None


@dataclass(eq=False)
class _Peer:
    key: bytes
    address: tuple[str, int] | None
    dials: bool
    state: PeerState = "disconnected"
    link: Link | None = None
    stats: PeerStats = field(default_factory=PeerStats)
    task: asyncio.Task[None] | None = None
    failures: int = 0
    draining: list[Link] = field(default_factory=list)
    """Retired links still draining (``Link.retire``), oldest first: at most
    ``MAX_DRAINING``."""


class PeerTransport:
    """Links to a set of peers, authenticated by pinned Ed25519 keys.

    ``peers`` maps public keys to the address to dial (only dialled if our key is the
    smaller). ``allowed`` is the set of keys accepted inbound, plus the keys of ``peers``;
    ``None`` accepts any key that completes the handshake (open mode). Callbacks run on
    the event loop and must be cheap: ``on_frame(key, payload)`` for every DATA frame,
    ``on_connected(key)`` / ``on_disconnected(key)`` when a peer's link comes and goes.
    """

    def __init__(
        self,
        identity: Identity,
        config: TransportConfig,
        peers: Mapping[bytes, tuple[str, int]],
        allowed: Collection[bytes] | None,
        on_frame: Callable[[bytes, bytes], None],
        on_connected: Callable[[bytes], None] = _noop,
        on_disconnected: Callable[[bytes], None] = _noop,
        logger: logging.Logger | None = None,
        *,
        rng: random.Random | None = None,
        channels: Mapping[int, Callable[[bytes, bytes], None]] | None = None,
    ) -> None:
        self.accept_role: Callable[[object], Literal["client", "server"] | None] | None = None
        """NAT traversal hook: the TLS role for an accepted connection from ``addr`` (a
        hole punch's simultaneous open may land here as an accept); None = server."""
        self.divert: Callable[[bytes, object, asyncio.StreamReader, asyncio.StreamWriter], bool]
        self.divert = _never
        """NAT traversal hook: called with every authenticated inbound connection before
        it becomes the peer's link; True = consumed (e.g. a reachability dial-back)."""
        self.identity = identity
        self.config = config
        self._max_frame = config.max_frame
        self._key = identity.public_key
        self._allowed = None if allowed is None else frozenset(allowed) | frozenset(peers)
        self._on_frame = on_frame
        self._channels = dict(channels or {})
        for kind in self._channels:
            if kind in KNOWN_KINDS or not 0 <= kind <= 255:
                raise ValueError(f"frame kind {kind} cannot be an application channel")
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._connected_listeners: list[Callable[[bytes], None]] = []
        self._disconnected_listeners: list[Callable[[bytes], None]] = []
        self._configured = frozenset(peers) | frozenset(allowed or ())
        self._protected: set[bytes] = set()
        self._connecting: dict[bytes, asyncio.Task[None]] = {}
        self._link_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pruner: asyncio.Task[None] | None = None
        self._log = logger or logging.getLogger("p2p.transport")
        self._rng = rng or random.Random()
        self._server_ctx = server_context(identity)
        self._client_ctx = client_context(identity)
        self._peers: dict[bytes, _Peer] = {
            key: _Peer(key, addr, dials=self._key < key)
            for key, addr in peers.items()
            if key != self._key
        }
        self._deferred: set[bytes] = {k for k, p in self._peers.items() if p.address is not None}
        """Keys whose links are made elsewhere (our dial loop, the peer's, NAT traversal):
        ``connect`` waits for them instead of racing a second dial from the same port."""
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._bound: tuple[str, int] | None = None
        self._family = 0
        self._running = False
        self._handshaking: set[asyncio.Task[None]] = set()
        self._reserved: set[asyncio.Task[None]] = set()  # handshakes from peer addresses
        self._per_ip: dict[str, int] = {}  # stranger handshakes per source address
        self.stranger_frames = FrameBudget(config.stranger_frame_budget)
        """Shared by strangers' links: the bytes their partial frames may hold at once."""
        self.idle_checks = 0
        """Idle checks done so far: a test keeps a link busy by sending between two."""
        self.inbound_dropped = 0
        """Inbound connections closed at once for want of a handshake slot."""
        self._dropped_logged_at = -DROP_LOG_PERIOD_S
        self._generations = itertools.count(1)
        self._retired: dict[Link, bool] = {}
        """Retired links still draining, whether or not their peer is still known, each
        with whether it was the peer's link (only then is its loss reported)."""
        self._dropped_unlogged = 0

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def listen_address(self) -> tuple[str, int]:
        """The bound (host, port), known after ``start`` (useful with ``listen_port=0``)."""
        if self._bound is None:
            raise RuntimeError("transport is not started")
        return self._bound

    async def start(self) -> None:
        """Bind the listening socket and start dialling. ``AddressInUseError`` if taken."""
        if self._listener is not None:
            raise RuntimeError("transport already started")
        sock = bind_listener(self.config.listen_host, self.config.listen_port)
        host, port = sock.getsockname()[:2]
        self._listener = sock
        self._bound = (host, port)
        self._family = sock.family
        self._running = True
        self._acceptor = asyncio.create_task(
            self._accept_loop(sock), name=f"p2p-accept-{self.identity.short_id}"
        )
        log_event(
            self._log,
            logging.INFO,
            "transport listening",
            peer=self.identity.short_id,
            addr=f"{host}:{port}",
        )
        self._pruner = asyncio.create_task(
            self._prune_loop(), name=f"p2p-idle-{self.identity.short_id}"
        )
        for peer in self._peers.values():
            if peer.dials and peer.address is not None:
                peer.task = asyncio.create_task(
                    self._dial_loop(peer), name=f"p2p-dial-{short_id(peer.key)}"
                )

    async def close(self) -> None:
        """Stop listening and dialling, flush briefly and close every link."""
        if not self._running:
            return
        self._running = False
        tasks: list[asyncio.Task[None]] = [*self._handshaking]
        tasks += [p.task for p in self._peers.values() if p.task is not None]
        tasks += self._connecting.values()
        for extra in (self._acceptor, self._pruner):
            if extra is not None:
                tasks.append(extra)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()  # after the acceptor stopped watching it
        links = [p.link for p in self._peers.values() if p.link is not None]
        links += self._retired.keys()
        links = list(dict.fromkeys(links))  # a link is shut down once
        # Every link gets its shutdown whatever another's does: one raising must not
        # leave the rest open (and the caller's stores unclosed).
        await asyncio.gather(
            *(link.shutdown(SHUTDOWN_FLUSH_S) for link in links), return_exceptions=True
        )
        await asyncio.gather(*(link.wait_tasks() for link in links))
        log_event(self._log, logging.INFO, "transport closed", peer=self.identity.short_id)

    # -- sending -------------------------------------------------------------------------

    def _live_link(self, peer: bytes) -> Link | None:
        entry = self._peers.get(peer)
        link = entry.link if entry is not None else None
        return None if link is None or link.close_reason is not None else link

    def _data_frame(self, payload: bytes, kind: int) -> bytes:
        if len(payload) > self._max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame {self._max_frame}")
        if kind != _DATA and kind not in self._channels:
            raise ValueError(f"frame kind {kind} is not a registered channel")
        return encode_frame(kind, payload)

    def send(self, peer: bytes, payload: bytes, kind: int = _DATA) -> bool:
        """Queue one DATA frame (or one frame of a registered channel) without blocking.

        ``False`` if the peer has no live link, or if its send queue is over
        ``send_queue_bytes``: then the link is closed, because a peer that cannot keep up
        is better resynchronised on reconnect than buffered without bound. ``ValueError``
        if ``payload`` exceeds ``max_frame`` (a caller bug, not a network condition).
        """
        link = self._live_link(peer)
        if link is None:
            return False
        frame = self._data_frame(payload, kind)
        if not link.has_room(len(frame)):
            log_event(
                self._log,
                logging.WARNING,
                "send queue overflow",
                peer=short_id(peer),
                queued=link.queued_bytes,
                limit=self.config.send_queue_bytes,
            )
            link.close("send queue overflow", error=True)
            return False
        link.enqueue(frame)
        link.activity += 1
        return True

    def try_send(self, peer: bytes, payload: bytes, kind: int = _DATA) -> bool:
        """Queue one frame if it fits the peer's send queue now; never closes the link.

        For small optional messages (an RPC refusal or cancel) that are not worth a link:
        ``False`` without a live link or without room, and the frame is dropped.
        """
        link = self._live_link(peer)
        if link is None:
            return False
        frame = self._data_frame(payload, kind)
        if not link.has_room(len(frame)):
            return False
        link.enqueue(frame)
        link.activity += 1
        return True

    async def send_wait(self, peer: bytes, payload: bytes, kind: int = _DATA) -> None:
        """Queue one DATA frame, waiting while the peer's send queue is full.

        ``PeerNotConnected`` if the peer has no live link or loses it while we wait.
        """
        link = self._live_link(peer)
        if link is None:
            raise PeerNotConnected(f"no link to peer {short_id(peer)}")
        frame = self._data_frame(payload, kind)
        while not link.has_room(len(frame)):
            await link.wait_room(len(frame))
            if link.retired:  # replaced while we waited: the frame goes on its successor
                successor = self._live_link(peer)
                if successor is not None:
                    link = successor
                    continue
            if link.is_closed or link.retired:
                raise PeerNotConnected(
                    f"link to peer {short_id(peer)} closed while waiting:"
                    f" {link.close_reason or 'replaced'}"
                )
        link.enqueue(frame)
        link.activity += 1

    # -- channels and listeners ----------------------------------------------------------

    def register_channel(self, kind: int, handler: Callable[[bytes, bytes], None]) -> None:
        """Deliver frames of application channel ``kind`` to ``handler(key, payload)``.

        Works before or after ``start``: live links learn the kind at once. ``ValueError``
        for a link kind, a kind outside a byte, or a kind that already has a handler.
        """
        if kind in KNOWN_KINDS or not 0 <= kind <= 255:
            raise ValueError(f"frame kind {kind} cannot be an application channel")
        if kind in self._channels:
            raise ValueError(f"frame kind {kind} already has a channel handler")
        self._channels[kind] = handler
        for peer in self._peers.values():
            for link in (peer.link, *peer.draining):
                if link is not None:
                    link.add_channel(kind, handler)

    def subscribe(
        self,
        on_connected: Callable[[bytes], None] | None = None,
        on_disconnected: Callable[[bytes], None] | None = None,
    ) -> None:
        """Add listeners called after the constructor's callbacks when a link comes or goes."""
        if on_connected is not None:
            self._connected_listeners.append(on_connected)
        if on_disconnected is not None:
            self._disconnected_listeners.append(on_disconnected)

    # -- on-demand links -----------------------------------------------------------------

    def has_link(self, key: bytes) -> bool:
        """Whether ``key`` has a live link now."""
        return self._live_link(key) is not None

    def link_generation(self, key: bytes) -> int | None:
        """Which link ``key`` has now (a number that changes with every new link), or
        None without one. Read right after ``send``/``send_wait``: the link the frame
        went out on. A loss reported while the peer still has a link of another
        generation concerns only frames sent on the older one (``on_disconnected``)."""
        link = self._live_link(key)
        return None if link is None else link.generation

    def protect(self, key: bytes) -> None:
        """Never close ``key``'s link for idleness (e.g. a content transfer in progress)."""
        self._protected.add(key)

    def unprotect(self, key: bytes) -> None:
        """Undo ``protect``; the link's idle clock starts again from now."""
        self._protected.discard(key)

    async def connect(
        self, key: bytes, address: tuple[str, int], *, timeout: float | None = None
    ) -> None:
        """Make sure ``key`` has a link, dialling ``address`` once if it has none.

        Returns at once if a link is live; joins a dial to ``key`` already in flight
        (even one to another address). ``PeerNotConnected`` with the reason if the key is
        ours or not allowed, ``max_links`` is reached, the transport is not running or
        the dial fails; ``TimeoutError`` if ``timeout`` passes first (the dial itself
        goes on, bounded by ``handshake_timeout``, and may still install the link).
        """
        if self._live_link(key) is not None:
            return
        who = short_id(key)
        if key == self._key:
            raise PeerNotConnected("cannot link to ourselves")
        if not self._running:
            raise PeerNotConnected(f"cannot link to {who}: transport is not running")
        if self._allowed is not None and key not in self._allowed:
            raise PeerNotConnected(f"cannot link to {who}: key not allowed")
        if key in self._deferred:
            await self._await_link(key, timeout)
            return
        task = self._connecting.get(key)
        if task is None:
            if not self._room_for(key):
                raise PeerNotConnected(
                    f"cannot link to {who}: too many links (max_links={self.config.max_links})"
                )
            task = asyncio.create_task(self._connect_once(key, address), name=f"p2p-connect-{who}")
            self._connecting[key] = task
            task.add_done_callback(functools.partial(self._connect_done, key))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise PeerNotConnected(f"cannot link to {who}: transport closed") from None
            raise

    def defer_dial(self, key: bytes) -> None:
        """Links to ``key`` are made elsewhere (e.g. NAT traversal dials its relays):
        ``connect`` then waits for that link rather than dialling a second one. Two dials
        from the listening port to one peer collide; the loser falls back to an
        ephemeral port, and peers would then observe a wrong (port-changing) mapping.
        Such a link is also never idle-pruned: whoever made it keeps it for a reason."""
        self._deferred.add(key)
        self.protect(key)

    async def _await_link(self, key: bytes, timeout: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._link_waiters.setdefault(key, []).append(waiter)
        try:
            async with asyncio.timeout(
                self.config.handshake_timeout if timeout is None else timeout
            ):
                await waiter
        except TimeoutError:
            raise PeerNotConnected(
                f"no link to {short_id(key)}: it is dialled elsewhere and not up yet"
            ) from None
        finally:
            waiters = self._link_waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._link_waiters[key]

    async def _connect_once(self, key: bytes, address: tuple[str, int]) -> None:
        try:
            await self._dial_to(key, address)
        except Exception as exc:
            reason = _describe(exc)
            log_event(
                self._log,
                logging.INFO,
                "connect failed",
                peer=short_id(key),
                addr=address,
                reason=reason,
            )
            raise PeerNotConnected(
                f"dial to {short_id(key)} at {address[0]}:{address[1]} failed: {reason}"
            ) from exc
        link = self._live_link(key)
        if link is None:
            raise PeerNotConnected(f"link to {short_id(key)} closed right after the handshake")

    def _connect_done(self, key: bytes, task: asyncio.Task[None]) -> None:
        if self._connecting.get(key) is task:
            del self._connecting[key]
        if not task.cancelled():
            task.exception()  # retrieved: callers that timed out no longer wait for it

    def _room_for(self, key: bytes) -> bool:
        """Whether a new link to ``key`` fits ``max_links`` (configured peers always do)."""
        if key in self._configured:
            return True
        live = sum(1 for p in self._peers.values() if p.link is not None)
        return live < self.config.max_links

    async def _prune_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.01, min(self.config.idle_timeout / 4, 5.0))
        while self._running:
            await asyncio.sleep(interval)
            try:
                self._prune_idle(loop.time())
            except Exception:
                self._log.exception("idle link check failed")
            self.idle_checks += 1

    def _prune_idle(self, now: float) -> None:
        """Close on-demand links whose application traffic stalled for ``idle_timeout``."""
        limit = self.config.idle_timeout
        for key, peer in list(self._peers.items()):
            link = peer.link
            if link is None or link.is_closed:
                continue
            seen, since = link.idle_mark
            if link.activity != seen or key in self._configured or key in self._protected:
                link.idle_mark = (link.activity, now)
            elif now - since >= limit:
                log_event(
                    self._log,
                    logging.INFO,
                    "idle link closed",
                    peer=short_id(key),
                    idle_s=round(now - since, 1),
                )
                link.close(f"idle for {now - since:.1f}s", error=False)

    # -- introspection -------------------------------------------------------------------

    @property
    def handshaking(self) -> int:
        """Inbound handshakes holding a slot now (tests wait on it instead of sleeping)."""
        return len(self._handshaking)

    def connected(self) -> list[bytes]:
        """Keys of the peers with a live link."""
        return [k for k, p in self._peers.items() if p.link is not None and not p.link.is_closed]

    def stats(self) -> dict[str, dict[str, object]]:
        """Per peer (hex key): link state, direction, addresses, counters, RTT, last error."""
        out: dict[str, dict[str, object]] = {}
        for key, peer in self._peers.items():
            link = peer.link
            s = peer.stats
            out[peer_id(key)] = {
                "state": "connected" if link is not None else peer.state,
                "direction": link.direction if link is not None else None,
                "path": link.path if link is not None else None,
                "local_addr": link.local_addr if link is not None else None,
                "remote_addr": link.remote_addr if link is not None else peer.address,
                "queued_bytes": link.queued_bytes if link is not None else 0,
                "draining": len(peer.draining),
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "reconnects": max(0, s.links - 1),
                "last_error": s.last_error,
                "rtt_ms": s.rtt_ms,
            }
        return out

    # -- links ---------------------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            try:
                conn, addr = await loop.sock_accept(listener)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue  # the client gave up while queued
            except OSError as exc:  # e.g. EMFILE: let links close before accepting again
                log_event(self._log, logging.WARNING, "accept failed", reason=_describe(exc))
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            task = self._admit(conn, addr)
            if task is None:
                conn.close()
                self._log_dropped(addr, loop.time())

    def _log_dropped(self, addr: object, now: float) -> None:
        """Count every drop; log at most one line per ``DROP_LOG_PERIOD_S`` with the number
        left unsaid. A stranger opening sockets as fast as we close them would otherwise
        write thousands of lines a second: our log would be its amplifier."""
        self.inbound_dropped += 1
        if now - self._dropped_logged_at < DROP_LOG_PERIOD_S:
            self._dropped_unlogged += 1
            return
        log_event(
            self._log,
            logging.INFO,
            "inbound dropped",
            addr=addr,
            reason="busy",
            suppressed=self._dropped_unlogged,
        )
        self._dropped_logged_at, self._dropped_unlogged = now, 0

    def _admit(self, conn: socket.socket, addr: object) -> asyncio.Task[None] | None:
        """Start the handshake of an inbound connection, if it has a slot.

        Connections from a configured peer's address (members dial from their
        listening port) use reserved slots; strangers share ``max_handshaking``, at
        most ``max_handshaking_per_ip`` from one address. So idle or slow strangers,
        however many, cannot keep the committee's links from being re-made.
        """
        cfg = self.config
        source = addr[:2] if isinstance(addr, tuple) else None
        if source is not None and any(p.address == source for p in self._peers.values()):
            if len(self._reserved) >= cfg.reserved_handshaking:
                return None
            task = self._start_accept(conn, addr)
            self._reserved.add(task)
            task.add_done_callback(self._reserved.discard)
            return task
        ip = str(source[0]) if source is not None else ""
        strangers = len(self._handshaking) - len(self._reserved)
        if (
            strangers >= cfg.max_handshaking
            or self._per_ip.get(ip, 0) >= cfg.max_handshaking_per_ip
        ):
            return None
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        task = self._start_accept(conn, addr)
        task.add_done_callback(lambda _t: self._release_ip(ip))
        return task

    def _release_ip(self, ip: str) -> None:
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def _start_accept(self, conn: socket.socket, addr: object) -> asyncio.Task[None]:
        task = asyncio.create_task(self._accept(conn, addr), name="p2p-accept-handshake")
        self._handshaking.add(task)
        task.add_done_callback(self._handshaking.discard)
        return task

    async def _accept(self, conn: socket.socket, addr: object) -> None:
        role = self.accept_role(addr) if self.accept_role is not None else None
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                if role == "client":  # a punched connection whose TLS client we are
                    reader, writer = await asyncio.open_connection(
                        sock=conn,
                        limit=STREAM_LIMIT,
                        ssl=self._client_ctx,
                        server_hostname="",
                        ssl_handshake_timeout=self.config.handshake_timeout,
                    )
                else:
                    reader, writer = await _tls_accept(
                        conn, self._server_ctx, self.config.handshake_timeout
                    )
            try:
                key = check_pin(
                    peer_public_key(writer.get_extra_info("ssl_object")),
                    allowed=self._allowed,
                    own=self._key,
                )
            except BaseException:
                writer.transport.abort()
                raise
        except Exception as exc:
            conn.close()
            log_event(
                self._log, logging.WARNING, "inbound refused", addr=addr, reason=_describe(exc)
            )
            return
        except BaseException:  # cancelled: the transport is closing
            conn.close()
            raise
        if self.divert(key, addr, reader, writer):
            return
        if self._live_link(key) is None and not self._room_for(key):
            writer.transport.abort()
            log_event(
                self._log,
                logging.WARNING,
                "inbound refused",
                addr=addr,
                peer=short_id(key),
                reason="too many links",
                limit=self.config.max_links,
            )
            return
        self._install(key, "inbound", reader, writer)

    async def _dial(self, peer: _Peer) -> None:
        assert peer.address is not None
        await self._dial_to(peer.key, peer.address)

    async def _dial_to(self, key: bytes, address: tuple[str, int]) -> None:
        assert self._bound is not None
        async with asyncio.timeout(self.config.handshake_timeout):
            sock, from_listen_port = await connect_from(self._bound, address, self._family)
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    limit=STREAM_LIMIT,
                    ssl=self._client_ctx,
                    server_hostname="",  # peers have keys, not names: no SNI
                    ssl_handshake_timeout=self.config.handshake_timeout,
                )
            except BaseException:
                sock.close()
                raise
            try:
                check_pin(peer_public_key(writer.get_extra_info("ssl_object")), expected=key)
            except BaseException:
                writer.transport.abort()
                raise
        if not from_listen_port:
            log_event(
                self._log,
                logging.INFO,
                "dialled from an ephemeral port",
                peer=short_id(key),
                reason="listening port busy for this peer (TIME_WAIT)",
            )
        self._install(key, "outbound", reader, writer)

    async def _dial_loop(self, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max, self._rng)
        while self._running:
            link = peer.link
            if link is not None:
                await link.closed.wait()
                if loop.time() - link.opened_at >= self.config.reconnect_max:
                    backoff.reset()
            else:
                peer.state = "connecting"
                try:
                    await self._dial(peer)
                    peer.failures = 0
                    continue
                except Exception as exc:
                    self._dial_failed(peer, exc)
            if peer.link is None:
                peer.state = "backoff"
            await asyncio.sleep(backoff.next_delay())

    def _dial_failed(self, peer: _Peer, exc: Exception) -> None:
        reason = _describe(exc)
        repeated = peer.failures > 0 and peer.stats.last_error == reason
        peer.failures += 1
        peer.stats.last_error = reason
        log_event(
            self._log,
            logging.DEBUG if repeated else logging.WARNING,
            "dial failed",
            peer=short_id(peer.key),
            addr=peer.address,
            reason=reason,
            attempts=peer.failures,
        )

    def _prefers(self, key: bytes, direction: Direction) -> bool:
        """Whether a link in ``direction`` was dialled by the smaller of the two keys."""
        return (direction == "outbound") == (self._key < key)

    def adopt(
        self,
        key: bytes,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str = "direct",
    ) -> bool:
        """Install an authenticated link made elsewhere (a hole punch, a relayed circuit).

        ``reader``/``writer`` must already carry TLS with ``key`` pinned. ``path`` is
        ``"direct"`` or ``"relayed:<relay peer id>"``. A direct link replaces a relayed
        one, never the reverse. False if the link was not kept (closed at once).
        """
        if key == self._key or (self._allowed is not None and key not in self._allowed):
            writer.transport.abort()
            return False
        return self._install(key, direction, reader, writer, path)

    @property
    def bound_address(self) -> tuple[str, int] | None:
        """The listening socket's address (what dials bind to), once started."""
        return self._bound

    @property
    def address_family(self) -> int:
        return self._family

    @property
    def client_context(self) -> ssl.SSLContext:
        return self._client_ctx

    @property
    def server_context(self) -> ssl.SSLContext:
        return self._server_ctx

    def path_of(self, peer: bytes) -> str | None:
        """``"direct"``, ``"relayed:<relay>"``, or None without a live link."""
        link = self._live_link(peer)
        return None if link is None else link.path

    def link_addresses(self, peer: bytes) -> tuple[object, object] | None:
        """(local, remote) socket addresses of the peer's live link, as the OS sees them."""
        link = self._live_link(peer)
        return None if link is None else (link.local_addr, link.remote_addr)

    def _install(
        self,
        key: bytes,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str = "direct",
    ) -> bool:
        if not self._running:
            writer.transport.abort()
            return False
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = _Peer(key, None, dials=False)
        old = peer.link
        relayed = path != "direct"
        if old is not None and relayed and old.path == "direct":
            writer.transport.abort()  # never trade a direct path for a relayed one
            return False
        if old is not None and old.path != "direct" and not relayed:
            self._retire(peer, old, "upgraded to a direct link", was=True)
        elif old is not None:
            if self._prefers(key, old.direction) and not self._prefers(key, direction):
                # The peer may have taken this one for its link for a moment (its side
                # of ``old`` was not up yet) and sent on it: drain it, do not abort it.
                duplicate = self._new_link(peer, direction, reader, writer, path)
                duplicate.start()
                self._retire(peer, duplicate, f"duplicate of the {old.direction} link", was=False)
                return False
            self._retire(peer, old, f"replaced by a newer {direction} link", was=True)
        link = self._new_link(peer, direction, reader, writer, path)
        peer.link = link
        peer.state = "connected"
        peer.stats.links += 1
        link.start()
        log_event(
            self._log,
            logging.INFO,
            "link up",
            peer=short_id(key),
            direction=direction,
            addr=link.remote_addr,
            path=path,
        )
        for waiter in self._link_waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)
        self._report(key, up=True)
        return True

    def _new_link(
        self,
        peer: _Peer,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
    ) -> Link:
        max_frame, budget = self._frame_limits(peer.key)
        link = Link(
            key=peer.key,
            direction=direction,
            reader=reader,
            writer=writer,
            config=self.config,
            stats=peer.stats,
            on_frame=self._on_frame,
            on_closed=self._link_closed,
            logger=self._log,
            channels=self._channels,
            max_frame=max_frame,
            budget=budget,
        )
        link.path = path
        link.generation = next(self._generations)
        return link

    def _frame_limits(self, key: bytes) -> tuple[int, FrameBudget | None]:
        """Inbound frame size and budget for a link to ``key``: configured peers may send
        ``max_frame`` each; strangers ``stranger_max_frame``, all of them together
        holding at most ``stranger_frame_budget`` in partial frames."""
        if key in self._configured:
            return self.config.max_frame, None
        return min(self.config.stranger_max_frame, self._max_frame), self.stranger_frames

    def _retire(self, peer: _Peer, link: Link, reason: str, *, was: bool) -> None:
        """``link`` drains instead of closing: it was ``peer``'s link (``was``: a
        replacement, not a loss) or a duplicate that lost to it."""
        if was:
            peer.link = None
        peer.draining.append(link)
        self._retired[link] = was
        log_event(self._log, logging.INFO, "link retired", peer=short_id(peer.key), reason=reason)
        link.retire(self.config.retire_timeout)
        if len(peer.draining) > MAX_DRAINING:  # a churning peer cannot pile them up
            peer.draining[0].close("too many links draining", error=True)
        if len(self._retired) > self.config.max_draining:  # nor many peers together
            next(iter(self._retired)).close("too many links draining", error=True)

    def _retired_link_closed(self, link: Link, reason: str) -> None:
        """A retired link ended; if it was the peer's link and did not drain, frames in
        flight on it may be lost."""
        was = self._retired.pop(link, False)
        peer = self._peers.get(link.key)
        if peer is not None and link in peer.draining:
            peer.draining.remove(link)
        if link.drained or not was or not self._running:
            return
        log_event(
            self._log,
            logging.WARNING,
            "retired link lost",
            peer=short_id(link.key),
            reason=reason,
        )
        self._report(link.key, up=False)
        if self._live_link(link.key) is not None:  # the successor is up: resend on it
            self._report(link.key, up=True)

    def _link_closed(self, link: Link, reason: str, error: bool) -> None:
        if link.retired:
            self._retired_link_closed(link, reason)
            return
        peer = self._peers.get(link.key)
        if peer is None or peer.link is not link:
            return
        peer.link = None
        if self._running and self._reinstate(peer):
            # frames sent on the lost link may be gone: down then up, callers resend
            self._report(link.key, up=False)
            self._report(link.key, up=True)
            return
        peer.state = "disconnected"
        log_event(
            self._log,
            logging.WARNING if error else logging.INFO,
            "link down",
            peer=short_id(link.key),
            reason=reason,
        )
        if self._allowed is None and peer.address is None:
            del self._peers[link.key]  # open mode: forget inbound-only peers (stays bounded)
        self._report(link.key, up=False)

    def _reinstate(self, peer: _Peer) -> bool:
        """The peer's link died: a replaced link the peer still uses (no GOAWAY from it)
        becomes its link again (``Link.unretire``)."""
        for old in reversed(peer.draining):
            if self._retired.get(old) and old.unretire():
                peer.draining.remove(old)
                del self._retired[old]
                peer.link = old
                log_event(self._log, logging.INFO, "link reinstated", peer=short_id(peer.key))
                return True
        return False

    def _report(self, key: bytes, *, up: bool) -> None:
        """``on_connected`` / ``on_disconnected`` and then their subscribed listeners."""
        first = self._on_connected if up else self._on_disconnected
        listeners = self._connected_listeners if up else self._disconnected_listeners
        for fn in (first, *listeners):
            self._callback(fn, key)

    def _callback(self, fn: Callable[[bytes], None], key: bytes) -> None:
        try:
            fn(key)
        except Exception:
            self._log.exception("transport callback %s failed for %s", fn, short_id(key))


async def _tls_accept(
    conn: socket.socket, ctx: ssl.SSLContext, handshake_timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` for an accepted socket, TLS server side from byte one."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, conn, ssl=ctx, ssl_handshake_timeout=handshake_timeout
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _never(key: bytes, addr: object, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
