"""Local peer discovery over multicast DNS (DNS-SD), with the ``zeroconf`` library.

Each node announces one service of type :data:`SERVICE_TYPE` whose TXT record carries
its Ed25519 public key, and browses for the others. A discovery is only a hint: the
caller dials the announced addresses through the authenticated transport, whose TLS
handshake proves the key, so a forged announcement (anyone on the LAN can send one)
costs at most a failed dial. For the same reason the amount of work is bounded: at
most :data:`MAX_RESOLVING` announcements are resolved at once, a key is handed out at
most once per ``retry_after`` seconds, and malformed announcements are counted and
dropped.

The parsing of an announcement (:func:`parse_announcement`) is pure; the class is the
thin asyncio shell around the library.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from p2p.errors import P2PError
from p2p.identity import short_id
from p2p.logs import log_event

__all__ = [
    "SERVICE_TYPE",
    "Announcement",
    "MdnsDiscovery",
    "MdnsError",
    "parse_announcement",
]

Addr = tuple[str, int]
SERVICE_TYPE: Final = "_dagrider._tcp.local."
TXT_VERSION: Final = "1"
MAX_ADDRS: Final = 8
MAX_RESOLVING: Final = 16
MAX_REMEMBERED: Final = 1024
RESOLVE_TIMEOUT_MS: Final = 3000


class MdnsError(P2PError, ValueError):
    """An announcement is malformed; ``field`` names what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


@dataclass(frozen=True)
class Announcement:
    """A peer announced on the LAN: its public key and the addresses to dial."""

    key: bytes
    addrs: tuple[Addr, ...]


def instance_name(key: bytes) -> str:
    """The DNS-SD instance label of ``key`` (a label holds 63 bytes: 40 hex digits)."""
    return f"dagrider-{key.hex()[:40]}"


def parse_announcement(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str], port: int | None
) -> Announcement:
    """The announcement in a resolved service record, or ``MdnsError`` naming the flaw.

    TXT ``v`` must be :data:`TXT_VERSION` and ``k`` 64 lowercase hex digits; addresses
    must be IP literals (IPv6 with a scope only if link-local), the port 1..65535.
    """
    if properties.get(b"v") != TXT_VERSION.encode():
        raise MdnsError("v", f"unsupported version {properties.get(b'v')!r:.40}")
    raw_key = properties.get(b"k") or b""
    try:
        text = raw_key.decode("ascii")
        key = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise MdnsError("k", "not hex") from None
    if len(key) != 32 or text != key.hex():
        raise MdnsError("k", "expected 64 lowercase hex digits")
    if port is None or not 0 < port < 65536:
        raise MdnsError("port", f"{port!r} is not a port")
    addrs: list[Addr] = []
    for text_addr in addresses[:MAX_ADDRS]:
        host, _, scope = text_addr.partition("%")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise MdnsError("address", f"{text_addr[:60]!r} is not an IP address") from None
        if ip.is_unspecified or ip.is_multicast:
            raise MdnsError("address", f"{ip} cannot be dialled")
        if scope and not (ip.version == 6 and ip.is_link_local):
            raise MdnsError("address", f"{text_addr[:60]!r}: a scope only for link-local")
        addrs.append((text_addr if scope else str(ip), port))
    if not addrs:
        raise MdnsError("address", "no address announced")
    return Announcement(key, tuple(addrs))


def _announceable(host: str) -> bool:
    """An IP literal others can dial (not a wildcard or multicast address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)


class MdnsDiscovery:
    """Announce this node and report the peers announced on the LAN.

    ``on_found(announcement)`` is awaited for each peer found (not ourselves), at most
    once per ``retry_after`` seconds per key; it should dial through the authenticated
    transport. ``addrs`` are the addresses to announce (the node's listen or advertise
    addresses; wildcards are left out); with none, the node only browses.
    """

    def __init__(
        self,
        key: bytes,
        addrs: Sequence[Addr],
        on_found: Callable[[Announcement], Awaitable[None]],
        logger: logging.Logger,
        *,
        service_type: str = SERVICE_TYPE,
        retry_after: float = 30.0,
    ) -> None:
        self.key = key
        self._addrs = tuple(a for a in addrs if _announceable(a[0]))
        self._on_found = on_found
        self._log = logger
        self._type = service_type
        self._retry_after = retry_after
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.found = 0
        self.malformed = 0
        self.dropped = 0

    async def start(self) -> None:
        """Join the multicast group, announce ourselves, start browsing."""
        ports = {port for _, port in self._addrs}
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        if self._addrs and len(ports) == 1:
            name = instance_name(self.key)
            self._info = AsyncServiceInfo(
                self._type,
                f"{name}.{self._type}",
                port=ports.pop(),
                properties={"v": TXT_VERSION, "k": self.key.hex()},
                server=f"{name}.local.",
                parsed_addresses=[host for host, _ in self._addrs],
            )
            await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, self._type, handlers=[self._on_change]
        )
        log_event(
            self._log,
            logging.INFO,
            "mdns started",
            peer=short_id(self.key),
            announced=[f"{h}:{p}" for h, p in self._addrs],
        )

    async def close(self) -> None:
        """Withdraw the announcement, stop browsing and leave the group."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):  # best effort: peers time it out
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
        self._zc = self._browser = self._info = None

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            return
        if name.startswith(instance_name(self.key)):
            return  # ourselves
        if len(self._tasks) >= MAX_RESOLVING:
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
            return
        try:
            found = parse_announcement(
                info.properties, info.parsed_scoped_addresses(IPVersion.V4Only), info.port
            )
        except MdnsError as exc:
            self.malformed += 1
            log_event(self._log, logging.DEBUG, "mdns announcement dropped", reason=str(exc))
            return
        if found.key == self.key:
            return
        now = asyncio.get_running_loop().time()
        last = self._seen.get(found.key)
        if last is not None and now - last < self._retry_after:
            return
        self._seen[found.key] = now
        self._seen.move_to_end(found.key)
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        self.found += 1
        log_event(
            self._log,
            logging.INFO,
            "mdns peer found",
            peer=short_id(found.key),
            addrs=[f"{h}:{p}" for h, p in found.addrs],
        )
        await self._on_found(found)

    def forget(self, key: bytes) -> None:
        """Hand ``key`` out again at its next announcement (e.g. its dial failed)."""
        self._seen.pop(key, None)

    def status(self) -> dict[str, object]:
        return {
            "announced": [f"{h}:{p}" for h, p in self._addrs] if self._info else [],
            "found": self.found,
            "malformed": self.malformed,
            "dropped": self.dropped,
            "resolving": len(self._tasks),
        }
