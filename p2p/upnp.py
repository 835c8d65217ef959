"""Port mapping on the home router through UPnP IGD (``[nat] upnp = true``).

A node behind a NAT whose router speaks UPnP Internet Gateway Device can ask it to
forward a port of its WAN address to our listener; peers then dial us directly, with no
relay and no hole punch. This module is the thin asyncio shell around the
``async-upnp-client`` library (SSDP discovery, device description, SOAP actions):

1. **Discover**: one SSDP M-SEARCH for an InternetGatewayDevice (v1 or v2); the first
   answer wins. No answer within ``search_timeout``: no UPnP router, try again later.
2. **Map**: ``GetExternalIPAddress``; a private external address (a second NAT behind
   the router) makes a mapping useless and is given up. Then ``AddPortMapping`` of TCP
   ``port`` (our listening port) to our LAN address, preferring the same external port
   and trying a few others on a conflict, with a lease of ``lease`` seconds.
3. **Keep**: renewed at half the lease; a failed renewal rediscovers; ``close()``
   deletes the mapping.

The mapped address (router WAN IP, external port) is reported through ``on_change``;
:meth:`p2p.nat_service.NatService.set_mapped` takes it as a reachability candidate, so a
reachability server's dial-back verifies it before anything advertises it. NAT-PMP and
PCP are not tried: the library speaks UPnP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from async_upnp_client.aiohttp import AiohttpSessionRequester
from async_upnp_client.client import UpnpService
from async_upnp_client.client_factory import UpnpFactory
from async_upnp_client.exceptions import UpnpError
from async_upnp_client.profiles.igd import IgdDevice
from async_upnp_client.search import SsdpSearchListener
from async_upnp_client.utils import CaseInsensitiveDict

from p2p.nat.advertise import is_private
from p2p.nat.messages import Addr

IGD_TYPES: Final = tuple(IgdDevice.DEVICE_TYPES)
DESCRIPTION: Final = "dagrider"
WAN_SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
PORT_ATTEMPTS: Final = 4
"""External ports tried on a conflict: ours first, then random high ports."""


@dataclass(frozen=True)
class UpnpConfig:
    """Timing of discovery and leases (seconds)."""

    search_timeout: float = 3.0
    lease: int = 3600
    retry: float = 60.0
    http_timeout: int = 5

    def __post_init__(self) -> None:
        if self.search_timeout <= 0 or self.retry <= 0 or self.http_timeout <= 0:
            raise ValueError("UpnpConfig timeouts must be > 0")
        if not 60 <= self.lease <= 86_399:  # timedelta.seconds: under a day
            raise ValueError(f"UpnpConfig.lease {self.lease} not in 60..86399 s")


class UpnpUnavailable(Exception):
    """No usable UPnP router: none answered, or it refused or cannot help."""


@dataclass(frozen=True)
class Mapping:
    """A live port mapping: ``external`` on the router forwards to ``internal``."""

    external: Addr
    internal: Addr
    location: str


def local_address_towards(host: str) -> str:
    """Our address on the interface that routes to ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])


class UpnpMapper:
    """Keeps one TCP port mapping for ``port`` on the LAN's UPnP router (module doc)."""

    def __init__(
        self,
        port: int,
        on_change: Callable[[tuple[Addr, ...]], None],
        logger: logging.Logger,
        config: UpnpConfig | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} not in 1..65535")
        self.port = port
        self.config = config or UpnpConfig()
        self.on_change = on_change
        self.log = logger
        self.mapping: Mapping | None = None
        self.last_error = ""
        self._session: aiohttp.ClientSession | None = None
        self._igd: IgdDevice | None = None
        self._wan: UpnpService | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="upnp")

    async def close(self) -> None:
        """Stop renewing and delete the mapping (best effort: the lease ends it anyway)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.mapping is not None and self._wan is not None:
            with contextlib.suppress(UpnpError, aiohttp.ClientError, TimeoutError, OSError):
                await self._wan.action("DeletePortMapping").async_call(
                    NewRemoteHost="", NewExternalPort=self.mapping.external[1], NewProtocol="TCP"
                )
        self._set(None)
        if self._session is not None:
            await self._session.close()

    def status(self) -> dict[str, object]:
        m = self.mapping
        return {
            "mapped": list(m.external) if m is not None else None,
            "internal": list(m.internal) if m is not None else None,
            "last_error": self.last_error,
        }

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self.mapping is None:
                    self._set(await self._map())
                else:
                    await self._add(self.mapping.external[1], self.mapping.internal[0])
                self.last_error = ""
                await asyncio.sleep(self.config.lease / 2)
            except asyncio.CancelledError:
                raise
            except (UpnpUnavailable, UpnpError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.info("upnp mapping unavailable", extra={"reason": self.last_error})
                self._set(None)
                self._igd = None
                await asyncio.sleep(self.config.retry)

    def _set(self, mapping: Mapping | None) -> None:
        old, self.mapping = self.mapping, mapping
        if old != mapping:
            if mapping is not None:
                self.log.info(
                    "upnp port mapped",
                    extra={"external": list(mapping.external), "internal": list(mapping.internal)},
                )
            self.on_change((mapping.external,) if mapping is not None else ())

    async def _map(self) -> Mapping:
        location = await self._discover()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        requester = AiohttpSessionRequester(self._session, timeout=self.config.http_timeout)
        device = await UpnpFactory(requester).async_create_device(location)
        igd = IgdDevice(device, None)
        external_ip = await igd.async_get_external_ip_address()
        if not external_ip:
            raise UpnpUnavailable("router gave no external address")
        if is_private(external_ip):
            raise UpnpUnavailable(f"router's external address {external_ip} is private")
        router = urlsplit(location).hostname or ""
        internal_ip = local_address_towards(router)
        self._igd = igd
        self._wan = next(
            (
                svc
                for t in WAN_SERVICES
                if (svc := device.find_service(t)) is not None and svc.has_action("AddPortMapping")
            ),
            None,
        )
        if self._wan is None:
            raise UpnpUnavailable("router has no WANIPConnection/WANPPPConnection service")
        ports = [self.port] + [
            1024 + int.from_bytes(os.urandom(2), "big") % 64_000 for _ in range(PORT_ATTEMPTS - 1)
        ]
        last: Exception | None = None
        for external_port in ports:
            try:
                await self._add(external_port, internal_ip)
            except UpnpError as exc:  # e.g. 718 ConflictInMappingEntry: another port
                last = exc
                continue
            return Mapping((external_ip, external_port), (internal_ip, self.port), location)
        raise UpnpUnavailable(f"router refused every port mapping: {last}")

    async def _add(self, external_port: int, internal_ip: str) -> None:
        """``AddPortMapping`` called on the WAN service directly: the library's profile
        helper sends ``NewRemoteHost`` as an IPv4 address, and "0.0.0.0" makes some
        routers (miniupnpd) forward only connections *from* 0.0.0.0; the IGD spec's
        wildcard is the empty string."""
        assert self._wan is not None
        await self._wan.action("AddPortMapping").async_call(
            NewRemoteHost="",
            NewExternalPort=external_port,
            NewProtocol="TCP",
            NewInternalPort=self.port,
            NewInternalClient=str(ipaddress.ip_address(internal_ip)),
            NewEnabled=True,
            NewPortMappingDescription=DESCRIPTION,
            NewLeaseDuration=int(timedelta(seconds=self.config.lease).total_seconds()),
        )

    async def _discover(self) -> str:
        """The description URL of the first IGD that answers an SSDP search."""
        loop = asyncio.get_running_loop()
        found: asyncio.Future[str] = loop.create_future()

        async def on_response(headers: CaseInsensitiveDict) -> None:
            st, location = headers.get("st"), headers.get("location")
            if st in IGD_TYPES and isinstance(location, str) and not found.done():
                found.set_result(location)

        listener = SsdpSearchListener(
            async_callback=on_response,
            loop=loop,
            search_target=IGD_TYPES[0],
            timeout=max(1, int(self.config.search_timeout)),
        )
        await listener.async_start()
        try:
            listener.async_search()
            return await asyncio.wait_for(found, self.config.search_timeout)
        except TimeoutError:
            raise UpnpUnavailable("no UPnP router answered the SSDP search") from None
        finally:
            listener.async_stop()


__all__ = ["Mapping", "UpnpConfig", "UpnpMapper", "UpnpUnavailable", "local_address_towards"]
