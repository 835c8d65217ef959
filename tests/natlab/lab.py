"""A NAT lab built from Linux network namespaces: real NATs for NAT-traversal tests.

The lab is one "internet" namespace plus one namespace per public host, NAT router and
private host. Hole punching depends on what real NATs do with real packets (mappings,
filtering, dropped SYNs, retransmission timing), which a simulator would only restate,
so the lab lets tests run the node's own sockets behind kernel NATs.

Topology (addresses exist only inside the lab's namespaces)::

    public host --+                                     +-- host 10.1.0.2
    198.51.100.x  |   internet (198.51.100.0/24)        |
                  +-- L2 switch, one-way delay per  ----+-- NAT router --+ LAN 10.1.0.1/24
    NAT router ---+   link crossing                     WAN 198.51.100.y +-- host 10.1.0.3

NAT kinds (iptables rules of a router; ``WAN`` is its internet interface):

``eim``
    ``-t nat POSTROUTING -o WAN -j MASQUERADE``. MASQUERADE keeps the source port when
    the resulting (WAN ip, port, destination ip, port) tuple is unused, so one inside
    endpoint gets the same external port towards every destination: endpoint-independent
    mapping *while nothing clashes* (see README.md). No forward firewall: inbound packets
    *to the WAN address* reach an inside host only by matching the reply direction of a
    conntrack entry, i.e. address-and-port-dependent filtering; packets routed to the
    inside addresses themselves would be forwarded (a pure NAT, no firewall).
``port-restricted``
    The same MASQUERADE plus a stateful forward firewall: ``FORWARD -i WAN -m conntrack
    --ctstate ESTABLISHED,RELATED -j ACCEPT``; ``FORWARD -i WAN -j DROP``.
``symmetric``
    ``MASQUERADE --random-fully`` (a fresh random external port for every new connection,
    hence for every destination: endpoint-dependent mapping) plus the same firewall.

Every router also has ``INPUT -i WAN -m conntrack --ctstate ESTABLISHED,RELATED -j
ACCEPT``; ``INPUT -i WAN -j DROP``: unsolicited packets to the router are dropped, never
answered with RST or ICMP (a RST would abort the other side's simultaneous open), and
``net.ipv4.ip_forward=1``. No other sysctl is changed: conntrack tracks TCP simultaneous
open with its defaults.

Latency: ``delay_ms`` is added each time a packet crosses an internet link, so two hosts
behind two NATs see an RTT of ``4 * delay_ms``. With ``sch_netem`` the internet is a
bridge with ``tc netem`` on both ends of every link; kernels without netem get
``switch.py``, a userspace switch that delays frames by ``2 * delay_ms``; ``delay_ms=0``
is a plain bridge.

Use::

    with Lab() as lab:                      # tears everything down on exit, always
        rv = lab.public_host("rv")
        home = lab.private_network("home", nat="eim")
        alice = home.host("alice")
        proc = alice.popen([sys.executable, "-c", "..."])

or ``python tests/natlab/lab.py up|down|status`` to explore by hand.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

NAT_KINDS = ("eim", "port-restricted", "symmetric")
PUBLIC_PREFIX = "198.51.100"  # TEST-NET-2, only ever inside the lab's namespaces
UPNP_PUBLIC_PREFIX = "100.128.0"
"""An "internet" outside every range miniupnpd calls reserved (it checks the router's WAN
address); like every lab address it exists only inside the lab's namespaces."""
SWITCH = Path(__file__).with_name("switch.py")
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_LAB_PREFIX = re.compile(r"^dl[0-9a-f]{4}$")


class LabError(Exception):
    """A lab operation failed; the message carries the command and its stderr."""


def _run(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ip_batch(netns: str, lines: Sequence[str]) -> None:
    _run(["ip", "-n", netns, "-batch", "-"], stdin="\n".join(lines) + "\n")


@dataclass(frozen=True)
class Capabilities:
    """What this machine allows: ``reason`` is None when labs can be built."""

    reason: str | None
    netem: bool = False


@functools.cache
def capabilities() -> Capabilities:
    """Probe once per process: root, tools, a namespace with NAT, netem, TAP."""
    if os.geteuid() != 0:
        return Capabilities("natlab needs root (network namespaces and iptables)")
    for tool in ("ip", "iptables-restore", "tc"):
        if shutil.which(tool) is None:
            return Capabilities(f"natlab needs `{tool}` (apt-get install iproute2 iptables)")
    probe = f"dl{secrets.token_hex(2)}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except LabError as exc:
        return Capabilities(f"cannot create a network namespace: {exc}")
    try:
        rules = "*nat\n-A POSTROUTING -o lo -j MASQUERADE --random-fully\nCOMMIT\n"
        try:
            _run(["ip", "netns", "exec", probe, "iptables-restore"], stdin=rules)
        except LabError as exc:
            return Capabilities(f"iptables NAT unusable in a namespace: {exc}")
        netem = subprocess.run(
            ["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True,
            check=False,
        )
        has_netem = netem.returncode == 0
        if not has_netem and not os.path.exists("/dev/net/tun"):
            return Capabilities("no sch_netem and no /dev/net/tun: cannot delay packets")
        return Capabilities(None, netem=has_netem)
    finally:
        _run(["ip", "netns", "del", probe], check=False)


def available() -> str | None:
    """None when namespaces labs work here, else a one-line reason (for pytest.skip)."""
    return capabilities().reason


def lab_namespaces(prefix: str | None = None) -> list[str]:
    """Namespaces of the lab ``prefix``, or of every lab (``dlXXXX-*``) when None."""
    names = [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]
    if prefix is not None:
        return [n for n in names if n.startswith(prefix + "-")]
    return [n for n in names if _LAB_PREFIX.match(n.split("-")[0])]


def destroy(prefix: str) -> None:
    """Remove everything named ``prefix``: processes in its namespaces, namespaces, links.

    Killing first matters: a namespace outlives ``ip netns del`` while a process is in it.
    """
    for netns in lab_namespaces(prefix):
        for pid in _run(["ip", "netns", "pids", netns], check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        _run(["ip", "netns", "del", netns], check=False)
    for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(prefix):
            _run(["ip", "link", "del", name], check=False)


@dataclass(frozen=True)
class Host:
    """A namespace with one interface: a public host, a private host or a NAT router.

    ``address`` is its own IP; ``public_address`` is the address the internet sees
    (its own for public hosts, the router's WAN address for private hosts).
    """

    name: str
    netns: str
    address: str
    public_address: str
    lab: Lab = field(repr=False, compare=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace to completion (text mode, output captured)."""
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(argv), check=check, timeout=timeout, text=True, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        """Start ``argv`` in the namespace; the lab kills it on teardown if still running."""
        kw.setdefault("text", True)
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(argv), **kw)
        self.lab.processes.append(proc)
        return proc

    def exec_python(
        self, code: str, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``code`` with this interpreter in the namespace; ``args`` go to sys.argv[1:]."""
        return self.run([sys.executable, "-c", code, *args], timeout=timeout, check=check)


READ_HANG_S = 60.0
"""How long :meth:`JsonLinesProcess.read` waits for a line by default: a hang limit for a
result that must come (a loaded machine may take seconds to start a Python process),
never the observation window of a test; the scripts bound their own waits."""


class JsonLinesProcess:
    """A Python script run inside a host's namespace that talks JSON lines on stdin and
    stdout, read with deadlines (the probes and punch peers of the lab tests)."""

    def __init__(self, host: Host, *argv: str, read_timeout: float = READ_HANG_S) -> None:
        self.host = host
        self.read_timeout = read_timeout
        self.proc = host.popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # the lab closed the pipe
            for line in self.proc.stdout:
                self.lines.put(line)
        self.lines.put("")

    def read(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=self.read_timeout if timeout is None else timeout)
        except queue.Empty:
            line = ""
        if not line:
            self.proc.kill()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"{self.host.name} gave no result: {stderr}")
        result: dict[str, Any] = json.loads(line)
        return result

    def send(self, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(fields) + "\n")
        self.proc.stdin.flush()


@dataclass
class Network:
    """A private network: a NAT router and the hosts behind it (10.<index>.0.0/24)."""

    name: str
    nat: str
    index: int
    router: Host
    lab: Lab = field(repr=False)
    hosts: list[Host] = field(default_factory=list)
    wan: str = ""  # the router's internet interface
    lan: str = ""  # the router's LAN bridge

    def host(self, name: str) -> Host:
        """Add a host behind the router, default route via the router's LAN address."""
        return self.lab._private_host(self, name)

    def count_drops(self, chain: str, source: str, dport: int | None = None) -> DropCounter:
        """Count the TCP SYNs from ``source`` (to ``dport``, if given) that arrive on the
        WAN and that the router's firewall drops in ``chain`` (``INPUT``: addressed to the
        router and matching no mapping; ``FORWARD``: routed to the inside).

        A rule without a target is inserted just before the chain's final ``-i WAN -j
        DROP``: it changes nothing, and every packet it counts is dropped next. Tests use
        it as positive evidence that a connection failed because the NAT dropped its SYN,
        instead of inferring the drop from a connect() timing out within some window.
        """
        rules = [r for r in self.router.run(["iptables", "-S", chain]).stdout.splitlines()
                 if r.startswith(f"-A {chain} ")]  # fmt: skip
        if not rules or rules[-1] != f"-A {chain} -i {self.wan} -j DROP":
            raise LabError(f"{self.name} ({self.nat}) drops nothing in {chain}: {rules}")
        self.lab._counters += 1
        comment = f"natlab-drops-{self.lab._counters}"
        match = ["-i", self.wan, "-s", source, "-p", "tcp", "--syn"]
        if dport is not None:
            match += ["--dport", str(dport)]
        self.router.run(
            ["iptables", "-I", chain, str(len(rules)), *match, "-m", "comment",
             "--comment", comment]
        )  # fmt: skip
        return DropCounter(self.router, chain, comment)

    def start_upnp(self, workdir: Path) -> subprocess.Popen[str]:
        """Run a real ``miniupnpd`` (UPnP IGD + NAT-PMP) on the router, serving the LAN.

        Debian's ``miniupnpd-iptables`` writes its port forwards with the legacy iptables
        backend into chains it expects to exist (its init script creates them; here we
        do): DNAT in ``nat MINIUPNPD`` from PREROUTING on the WAN, ACCEPT in ``filter
        MINIUPNPD`` from FORWARD. The router's own firewall accepts DNAT'd connections
        (``--ctstate DNAT``), as a router with port forwarding does. Killed at teardown.
        """
        miniupnpd = shutil.which("miniupnpd") or "/usr/sbin/miniupnpd"
        if not os.path.exists(miniupnpd):
            raise LabError("miniupnpd missing (apt-get install miniupnpd-iptables)")
        legacy = shutil.which("iptables-legacy") or "iptables-legacy"
        for argv in (
            ["-t", "nat", "-N", "MINIUPNPD"],
            ["-t", "nat", "-A", "PREROUTING", "-i", self.wan, "-j", "MINIUPNPD"],
            ["-t", "nat", "-N", "MINIUPNPD-POSTROUTING"],
            ["-t", "nat", "-A", "POSTROUTING", "-o", self.wan, "-j", "MINIUPNPD-POSTROUTING"],
            ["-t", "filter", "-N", "MINIUPNPD"],
            ["-t", "filter", "-A", "FORWARD", "-i", self.wan, "!", "-o", self.wan,
             "-j", "MINIUPNPD"],
        ):  # fmt: skip
            _run(["ip", "netns", "exec", self.router.netns, legacy, *argv])
        conf = workdir / f"miniupnpd-{self.name}.conf"
        conf.write_text(
            "\n".join(
                [
                    f"ext_ifname={self.wan}",
                    f"listening_ip={self.lan}",
                    "http_port=5000",
                    "enable_upnp=yes",
                    "enable_natpmp=yes",
                    "secure_mode=yes",
                    "system_uptime=yes",
                    f"uuid=3d3cec3a-8cf0-11e0-98ee-{secrets.token_hex(6)}",
                    f"allow 1024-65535 10.{self.index}.0.0/24 1024-65535",
                    "deny 0-65535 0.0.0.0/0 0-65535",
                ]
            )
            + "\n"
        )
        log_path = workdir / f"miniupnpd-{self.name}.log"
        # A pid file of its own: with the default (/var/run/miniupnpd.pid) a second
        # miniupnpd on this machine (another lab, another test session) exits at once,
        # "already running", and the peer behind this router finds no UPnP router.
        pidfile = workdir / f"miniupnpd-{self.name}.pid"
        log = open(log_path, "w")  # noqa: SIM115
        try:  # the child keeps its own copy of the descriptor
            proc = self.router.popen(
                [miniupnpd, "-d", "-f", str(conf), "-P", str(pidfile)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        # Ready once it listens for SSDP searches (UDP 1900) and serves its description
        # (TCP 5000): a peer started before that searches in vain and retries a minute
        # later. A hang limit, not a verdict.
        deadline = time.monotonic() + READ_HANG_S
        while not self._upnp_listening():
            if proc.poll() is not None:
                text = log_path.read_text(errors="replace")[-400:]
                raise LabError(f"miniupnpd on {self.name} exited ({proc.returncode}): {text}")
            if time.monotonic() > deadline:
                raise LabError(f"miniupnpd on {self.name} not listening after {READ_HANG_S:g} s")
            time.sleep(0.05)
        return proc

    def _upnp_listening(self) -> bool:
        tcp = self.router.run(["ss", "-ltnH", "sport = :5000"], check=False).stdout
        udp = self.router.run(["ss", "-lunH", "sport = :1900"], check=False).stdout
        return bool(tcp.strip() and udp.strip())


@dataclass(frozen=True)
class DropCounter:
    """SYNs that a router's firewall dropped, counted by a rule of its own
    (:meth:`Network.count_drops`)."""

    router: Host
    chain: str
    comment: str

    def count(self) -> int:
        """Packets counted so far (read back from the kernel's rule counters)."""
        saved = self.router.run(["iptables-save", "-c", "-t", "filter"]).stdout
        pattern = rf'^\[(\d+):\d+\] -A {self.chain} .*--comment "?{re.escape(self.comment)}"?$'
        found = re.search(pattern, saved, re.M)
        if found is None:
            raise LabError(f"counter {self.comment} is gone from {self.router.name}: {saved}")
        return int(found.group(1))


@dataclass(frozen=True)
class _Attachment:
    """Where a namespace meets the internet: its WAN interface and, with veth links, the
    internet-side end of the pair."""

    netns: str
    wan: str
    port: str


class Lab:
    """One isolated internet with public hosts and NATed private networks.

    Every namespace and interface name starts with ``prefix`` (default ``dl`` + 4 random
    hex digits), so concurrent labs (pytest-xdist workers) never collide. Use it as a
    context manager; ``close()`` is also registered with atexit, and removes anything
    carrying the prefix even if the lab was half built.
    """

    def __init__(
        self, prefix: str | None = None, delay_ms: float = 15, public_prefix: str = PUBLIC_PREFIX
    ) -> None:
        """``public_prefix``: the internet's /24 (three octets). The default is TEST-NET-2;
        ``miniupnpd`` refuses to map ports of a router whose WAN address is in a reserved
        range, so the UPnP test passes :data:`UPNP_PUBLIC_PREFIX`."""
        reason = available()
        if reason is not None:
            raise LabError(reason)
        self.prefix = prefix or f"dl{secrets.token_hex(2)}"
        if not _PREFIX.match(self.prefix):
            raise LabError(f"prefix {self.prefix!r} must match {_PREFIX.pattern}")
        if lab_namespaces(self.prefix):
            raise LabError(f"prefix {self.prefix!r} is in use (lab.py down {self.prefix})")
        if delay_ms < 0:
            raise LabError(f"delay_ms must be >= 0, got {delay_ms}")
        self.delay_ms = delay_ms
        if not re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", public_prefix):
            raise LabError(f"public_prefix {public_prefix!r} must be three octets")
        self.public_prefix = public_prefix
        self.backend = "bridge" if delay_ms == 0 else "netem" if capabilities().netem else "tap"
        self.hosts: dict[str, Host] = {}
        self.networks: dict[str, Network] = {}
        self.processes: list[subprocess.Popen[str]] = []
        self.internet = f"{self.prefix}-internet"
        self._links = 0  # interface name counter
        self._public = 1  # last public address used: 198.51.100.<n>
        self._switch: subprocess.Popen[str] | None = None
        self._attachments: dict[str, _Attachment] = {}  # public address -> attachment
        self._counters = 0  # drop counters made (their rules' comments are numbered)
        self._closed = False
        atexit.register(self.close)
        try:
            self._build_internet()
        except BaseException:
            self.close()
            raise

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started in the lab and delete its namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in [*self.processes, *([self._switch] if self._switch else [])]:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        destroy(self.prefix)

    def detach(self) -> None:
        """Leave the lab running after this process exits (``lab.py up --detach``)."""
        atexit.unregister(self.close)
        self._closed = True
        if self._switch is not None and self._switch.stdin is not None:
            self._switch.stdin.write("linger\n")
            self._switch.stdin.flush()
            self._switch.stdin.close()

    # -- topology -----------------------------------------------------------------------

    def public_host(self, name: str) -> Host:
        """A host with one public address on the internet."""
        netns = self._namespace(name)
        address = self._attach(netns)
        host = Host(name, netns, address, address, self)
        self.hosts[name] = host
        return host

    def private_network(self, name: str, nat: str = "eim") -> Network:
        """A NAT router of kind ``nat`` (see module docstring) with an empty LAN."""
        if nat not in NAT_KINDS:
            raise LabError(f"nat {nat!r} must be one of {', '.join(NAT_KINDS)}")
        if name in self.networks:
            raise LabError(f"network {name!r} exists")
        index = len(self.networks) + 1
        if index > 250:
            raise LabError("at most 250 private networks per lab")
        netns = self._namespace(name)
        wan_address = self._attach(netns)
        wan, lan = f"{self.prefix}w{self._links}", f"{self.prefix}l{index}"
        _ip_batch(
            netns,
            [
                f"link add {lan} type bridge",
                f"addr add 10.{index}.0.1/24 dev {lan}",
                f"link set {lan} up",
            ],
        )
        masquerade = f"-A POSTROUTING -o {wan} -j MASQUERADE"
        if nat == "symmetric":
            masquerade += " --random-fully"
        rules = [
            "*nat",
            masquerade,
            "COMMIT",
            "*filter",
            f"-A INPUT -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            f"-A INPUT -i {wan} -j DROP",
        ]
        if nat != "eim":
            rules += [
                f"-A FORWARD -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                f"-A FORWARD -i {wan} -m conntrack --ctstate DNAT -j ACCEPT",  # port forwards
                f"-A FORWARD -i {wan} -j DROP",
            ]
        rules.append("COMMIT")
        _run(
            ["ip", "netns", "exec", netns, "sh", "-ec",
             "echo 1 > /proc/sys/net/ipv4/ip_forward; iptables-restore"],
            stdin="\n".join(rules) + "\n",
        )  # fmt: skip
        router = Host(name, netns, f"10.{index}.0.1", wan_address, self)
        network = Network(name, nat, index, router, self, wan=wan, lan=lan)
        self.networks[name] = network
        return network

    def _private_host(self, network: Network, name: str) -> Host:
        netns = self._namespace(name)
        self._links += 1
        inside, outside = f"{self.prefix}h{self._links}", f"{self.prefix}r{self._links}"
        address = f"10.{network.index}.0.{len(network.hosts) + 2}"
        _ip_batch(
            network.router.netns,
            [
                f"link add {outside} type veth peer name {inside} netns {netns}",
                f"link set {outside} master {self.prefix}l{network.index}",
                f"link set {outside} up",
            ],
        )
        _ip_batch(
            netns,
            [
                f"addr add {address}/24 dev {inside}",
                f"link set {inside} up",
                f"route add default via 10.{network.index}.0.1",
            ],
        )
        host = Host(name, netns, address, network.router.public_address, self)
        network.hosts.append(host)
        self.hosts[name] = host
        return host

    def _namespace(self, name: str) -> str:
        if not _NAME.match(name):
            raise LabError(f"name {name!r} must match {_NAME.pattern}")
        if name in self.hosts or name in self.networks or name == "internet":
            raise LabError(f"name {name!r} is taken in lab {self.prefix}")
        netns = f"{self.prefix}-{name}"
        _run(["ip", "netns", "add", netns])
        _ip_batch(netns, ["link set lo up"])
        return netns

    def _build_internet(self) -> None:
        _run(["ip", "netns", "add", self.internet])
        if self.backend == "tap":
            self._switch = subprocess.Popen(
                ["ip", "netns", "exec", self.internet, sys.executable, str(SWITCH),
                 "--delay-ms", str(2 * self.delay_ms)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            self._switch_reply("ready")
        else:
            bridge = f"{self.prefix}br"
            _ip_batch(self.internet, [f"link add {bridge} type bridge", f"link set {bridge} up"])

    def _switch_reply(self, expected: str) -> None:
        line = self._switch_line()
        if line != expected:
            raise LabError(f"internet switch answered {line!r}, expected {expected!r}")

    def _switch_line(self) -> str:
        assert self._switch is not None and self._switch.stdout is not None
        return self._switch.stdout.readline().strip()

    def path_delay_ms(self, a: Host, b: Host) -> float:
        """The one-way delay configured on the internet path from ``a`` to ``b``, read
        back from where it is applied (not measured, so not subject to machine load):
        the ``netem`` qdiscs on ``a``'s WAN interface and on ``b``'s internet-side port
        (veth backends: none is 0), or the switch's frame delay (``tap``)."""
        if self.backend == "tap":
            assert self._switch is not None and self._switch.stdin is not None
            self._switch.stdin.write("delay\n")
            self._switch.stdin.flush()
            words = self._switch_line().split()
            if len(words) != 2 or words[0] != "delay":
                raise LabError(f"internet switch answered {' '.join(words)!r} to delay")
            return float(words[1])
        src, dst = self._attachments[a.public_address], self._attachments[b.public_address]
        return _netem_delay_ms(src.netns, src.wan) + _netem_delay_ms(self.internet, dst.port)

    def _attach(self, netns: str) -> str:
        """Connect ``netns`` to the internet; returns its public address."""
        self._links += 1
        self._public += 1
        if self._public > 254:
            raise LabError("at most 253 public hosts and routers per lab")
        wan, port = f"{self.prefix}w{self._links}", f"{self.prefix}p{self._links}"
        address = f"{self.public_prefix}.{self._public}"
        if self.backend == "tap":
            assert self._switch is not None and self._switch.stdin is not None
            self._switch.stdin.write(f"add {wan}\n")
            self._switch.stdin.flush()
            self._switch_reply(f"ok {wan}")
            _ip_batch(self.internet, [f"link set {wan} netns {netns}"])
        else:
            _ip_batch(
                self.internet,
                [
                    f"link add {port} type veth peer name {wan} netns {netns}",
                    f"link set {port} master {self.prefix}br",
                    f"link set {port} up",
                ],
            )
        _ip_batch(netns, [f"addr add {address}/24 dev {wan}", f"link set {wan} up"])
        self._attachments[address] = _Attachment(netns, wan, port)
        if self.backend == "netem":
            delay = f"{self.delay_ms}ms"
            _run(["tc", "-n", self.internet, "qdisc", "add", "dev", port, "root", "netem",
                  "delay", delay])  # fmt: skip
            _run(["tc", "-n", netns, "qdisc", "add", "dev", wan, "root", "netem", "delay", delay])
        return address


_NETEM_DELAY = re.compile(r"\bnetem\b.*?\bdelay (\d+(?:\.\d+)?)(s|ms|us)\b")
_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 0.001}


def _netem_delay_ms(netns: str, dev: str) -> float:
    """The delay of ``dev``'s netem qdisc in ``netns`` (0 when it has none)."""
    shown = _run(["tc", "-n", netns, "qdisc", "show", "dev", dev])
    found = _NETEM_DELAY.search(shown)
    return float(found.group(1)) * _MS_PER_UNIT[found.group(2)] if found else 0.0


# -- command line -----------------------------------------------------------------------


def _status() -> int:
    names = lab_namespaces()
    if not names:
        print("no lab is running")
    for netns in sorted(names):
        addresses = _run(["ip", "-n", netns, "-4", "-br", "addr"], check=False).split("\n")
        shown = ", ".join(
            f"{line.split()[0]} {' '.join(line.split()[2:])}"
            for line in addresses
            if line and not line.startswith("lo ")
        )
        print(f"{netns:28} {shown}")
    return 0


def _up(delay_ms: float, detach: bool) -> int:
    lab = Lab(delay_ms=delay_ms)
    try:
        lab.public_host("rv")
        lab.public_host("peer")
        for index, nat in enumerate(NAT_KINDS, start=1):
            lab.private_network(f"home{index}", nat=nat).host(f"host{index}")
        print(f"lab {lab.prefix} is up (internet: {lab.backend}, {delay_ms} ms per link)")
        for host in lab.hosts.values():
            print(f"  {host.name:6} ip netns exec {host.netns} bash   # {host.address}")
        for network in lab.networks.values():
            router = network.router
            print(f"  router {network.name} ({network.nat}): ip netns exec {router.netns} bash"
                  f"   # LAN {router.address}, WAN {router.public_address}")  # fmt: skip
        if detach:
            lab.detach()
            print(f"detached; remove with: python {__file__} down {lab.prefix}")
            return 0
        print("Ctrl-C tears the lab down")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="NAT lab in network namespaces")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a demo lab (until Ctrl-C, or --detach)")
    up.add_argument("--delay-ms", type=float, default=15)
    up.add_argument("--detach", action="store_true", help="leave it running")
    down = commands.add_parser("down", help="remove one lab, or all labs (dlXXXX-*)")
    down.add_argument("prefix", nargs="?")
    commands.add_parser("status", help="list running labs")
    args = parser.parse_args(argv)
    reason = available()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    if args.command == "up":
        return _up(args.delay_ms, args.detach)
    if args.command == "down":
        prefixes = [args.prefix] if args.prefix else {n.split("-")[0] for n in lab_namespaces()}
        for prefix in prefixes:
            destroy(prefix)
            print(f"removed lab {prefix}")
        return 0
    return _status()


if __name__ == "__main__":
    sys.exit(main())
