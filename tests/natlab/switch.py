"""A userspace Ethernet switch that delays every frame: the lab's "internet" without netem.

Some kernels (this project's CI VM among them) are built without ``sch_netem``, so ``tc``
cannot add latency. The lab then runs this script inside its internet namespace: every
public host and NAT router gets a TAP device as its WAN interface, the script holds the
TAP file descriptors, learns MAC addresses like a bridge and forwards each frame
``--delay-ms`` after it arrived. TAP devices without offloads hand us whole,
checksummed frames, so forwarding is a plain copy.

Control protocol on stdin, one command a line, each answered on stdout:

* ``add NAME`` -- create TAP device NAME in this namespace (the lab then moves it into
  the node's namespace; the file descriptor stays attached) -> ``ok NAME``;
* ``linger`` -- keep forwarding after stdin closes (``lab.py up --detach``) -> ``ok``;
* ``delay`` -- the delay it holds every frame, read back by tests -> ``delay MS``.

Without ``linger`` the switch exits when stdin closes, so it never outlives its lab.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import os
import selectors
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
BROADCAST = b"\xff" * 6


class Switch:
    """A learning switch whose ports are TAP file descriptors and whose wire is a FIFO."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.ports: dict[int, str] = {}  # fd -> device name
        self.macs: dict[bytes, int] = {}  # source MAC -> fd it was last seen on
        self.wire: collections.deque[tuple[float, int, bytes]] = collections.deque()
        self.selector = selectors.DefaultSelector()

    def add_port(self, name: str) -> None:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
        self.ports[fd] = name
        self.selector.register(fd, selectors.EVENT_READ)

    def drop_port(self, fd: int) -> None:
        self.selector.unregister(fd)
        del self.ports[fd]
        os.close(fd)
        self.macs = {mac: port for mac, port in self.macs.items() if port != fd}

    def receive(self, fd: int, now: float) -> None:
        try:
            frame = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # the device went away with its namespace
            self.drop_port(fd)
            return
        if len(frame) < 14:
            return
        source = frame[6:12]
        if not source[0] & 1:
            self.macs[source] = fd
        target = self.macs.get(frame[0:6])
        due = now + self.delay_s
        if target is not None and frame[0:6] != BROADCAST:
            if target != fd:
                self.wire.append((due, target, frame))
            return
        for port in self.ports:
            if port != fd:
                self.wire.append((due, port, frame))

    def deliver(self, now: float) -> None:
        while self.wire and self.wire[0][0] <= now:
            _, fd, frame = self.wire.popleft()
            if fd in self.ports:
                # a full queue or a vanished device: the internet loses packets
                with contextlib.suppress(OSError):
                    os.write(fd, frame)

    def next_timeout(self, now: float) -> float | None:
        return max(0.0, self.wire[0][0] - now) if self.wire else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    args = parser.parse_args(argv)
    switch = Switch(args.delay_ms / 1000)
    control = sys.stdin.fileno()
    os.set_blocking(control, False)
    switch.selector.register(control, selectors.EVENT_READ)
    pending = b""
    linger = False
    print("ready", flush=True)
    while True:
        for key, _ in switch.selector.select(switch.next_timeout(time.monotonic())):
            fd = key.fd
            if fd != control:
                switch.receive(fd, time.monotonic())
                continue
            chunk = os.read(control, 4096)
            if not chunk:
                switch.selector.unregister(control)
                if not linger:
                    return 0
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                words = line.decode().split()
                if words[:1] == ["add"] and len(words) == 2:
                    switch.add_port(words[1])
                    print(f"ok {words[1]}", flush=True)
                elif words == ["linger"]:
                    linger = True
                    print("ok", flush=True)
                elif words == ["delay"]:
                    print(f"delay {switch.delay_s * 1000}", flush=True)
                else:
                    print(f"error unknown command {line!r}", flush=True)
        switch.deliver(time.monotonic())


if __name__ == "__main__":
    sys.exit(main())
