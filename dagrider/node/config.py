"""The node's TOML configuration: one typed object, validated once at load.

Relative paths are resolved against the config file's directory, so a committee
directory with its node configs can be moved as a whole. Every problem is reported as a
:class:`ConfigError` naming the key and the value.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagrider.params import Limits, Parameters


class ConfigError(Exception):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class NodeConfig:
    key_file: Path
    committee_file: Path | None  # required for members; a peer without one runs no CRDT store
    data_dir: Path
    role: str = "member"  # "member" votes in the committee; "peer" only serves the mesh
    listen: tuple[str, int] | None = None  # default: this member's committee address
    api_listen: tuple[str, int] = ("127.0.0.1", 8000)
    api_token: str | None = None
    peers: dict[int, tuple[str, int]] = field(default_factory=dict)  # overrides
    batch_size: int = 1_000
    batch_delay: float = 0.05  # seconds
    idle_round_interval: float = 0.5  # seconds between rounds with nothing to order
    gc_depth: int = 50
    future_rounds: int = 200
    peer_budget_bytes: int = 64 * 1024 * 1024
    response_budget_bytes: int = 16 * 1024 * 1024
    checkpoint_interval: int = 256  # committed vertices between certified checkpoints
    retain_rounds: int = 2_000  # rounds of vertices and votes kept below the GC floor
    keep_log_entries: int = 0  # committed transactions the log keeps (0: all of them)
    max_pending: int = 20_000
    max_body_bytes: int = 64 * 1024 * 1024
    api_max_connections: int = 1024  # open API connections at most; more get 503
    api_idle_timeout: float = 15.0  # seconds: idle keep-alive, unfinished head, stalled body
    api_bodies_budget_bytes: int = 128 * 1024 * 1024  # request bodies buffered at once
    limits: Limits = field(default_factory=Limits)
    fsync: bool = False
    log_format: str = "json"
    log_level: str = "info"
    crdt_enabled: bool = True
    crdt_sync_interval: float = 2.0  # seconds between reconciliation sessions
    crdt_checkpoint_interval: float = 10.0  # seconds between checkpoint submissions
    crdt_compact_min_changes: int = 10_000  # compact below a final checkpoint (0: never)
    crdt_attest_every: int = 16  # every k-th checkpoint is a compaction candidate
    crdt_max_clock_skew_ms: int = 60_000  # a peer's change may be stamped this far ahead
    # namespace ("*" = any other) -> writer keys as 64 hex digits, or "committee"
    crdt_writers: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"*": ("committee",)})
    nat_enabled: bool = False
    nat_relays: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # key -> address
    nat_offer_relay: bool = False
    nat_reserve: bool = False
    nat_dial_timeout: float = 10.0
    nat_upnp: bool = False  # [nat] upnp: map our port on the LAN's UPnP router (p2p.upnp)
    dht_enabled: bool = True
    dht_bootstrap: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # key -> address
    dht_k: int = 20
    dht_alpha: int = 3
    dht_disjoint_paths: int = 1
    dht_mode: str = "auto"  # "server", "client", or "auto" (client while NAT says private)
    dht_advertise: tuple[tuple[str, int], ...] = ()  # default: the peer listen address
    content_enabled: bool = True
    content_chunk_size: int = 1024 * 1024
    content_max_blob_bytes: int = 64 * 1024**3
    content_max_upload_bytes: int = 64 * 1024**3
    mdns_enabled: bool = False  # [discovery] mdns: find mesh peers on the LAN (p2p.mdns)

    @property
    def is_peer(self) -> bool:
        return self.role == "peer"

    def parameters(self) -> Parameters:
        return Parameters(
            gc_depth=self.gc_depth,
            batch_size=self.batch_size,
            propose_empty=self.batch_delay <= 0,
            limits=self.limits,
            future_rounds=self.future_rounds,
            peer_budget_bytes=self.peer_budget_bytes,
            response_budget_bytes=self.response_budget_bytes,
            checkpoint_interval=self.checkpoint_interval,
        )


_SECTIONS: dict[str, set[str]] = {
    "node": {"key_file", "committee_file", "data_dir", "listen", "peers", "role"},
    "api": {
        "listen",
        "token",
        "max_body_bytes",
        "max_connections",
        "idle_timeout_ms",
        "bodies_budget_bytes",
    },
    "consensus": {
        "batch_size",
        "batch_delay_ms",
        "idle_round_ms",
        "gc_depth",
        "max_txs_per_vertex",
        "max_tx_bytes",
        "max_edges",
        "max_message_bytes",
        "max_block_kib",
        "future_rounds",
        "peer_budget_mib",
        "response_budget_mib",
        "checkpoint_interval",
    },
    "mempool": {"max_pending"},
    "storage": {"fsync", "retain_rounds", "keep_log_entries"},
    "log": {"format", "level"},
    "crdt": {
        "enabled",
        "sync_interval_ms",
        "checkpoint_interval_ms",
        "writers",
        "compact_min_changes",
        "attest_every",
        "max_clock_skew_ms",
    },
    "nat": {"enabled", "relays", "offer_relay", "reserve", "dial_timeout_ms", "upnp"},
    "dht": {"enabled", "bootstrap", "k", "alpha", "disjoint_paths", "mode", "advertise"},
    "content": {"enabled", "chunk_size_kib", "max_blob_mib", "max_upload_mib"},
    "discovery": {"mdns"},
}


def load_config(path: Path, role: str | None = None) -> NodeConfig:
    """Read and validate ``path``; raises ConfigError with a specific message.

    ``role`` (from ``dagrider node --role``) overrides ``[node] role``.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if role is not None and isinstance(raw.get("node"), dict):
        raw["node"]["role"] = role
    return parse_config(raw, path.parent)


def parse_config(raw: dict[str, Any], base: Path) -> NodeConfig:
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]; known: {sorted(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"[{section}] must be a table")
        unknown = set(value) - _SECTIONS[section]
        if unknown:
            raise ConfigError(f"[{section}] unknown keys {sorted(unknown)}")
    node = raw.get("node", {})
    api = raw.get("api", {})
    cons = raw.get("consensus", {})
    crdt = raw.get("crdt", {})
    nat = raw.get("nat", {})
    dht = raw.get("dht", {})
    content = raw.get("content", {})
    discovery = raw.get("discovery", {})
    role = _choice(node, "role", "member", ("member", "peer"))
    required = ("key_file", "data_dir") if role == "peer" else ("key_file", "committee_file")
    for key in (*required, "data_dir"):
        if key not in node:
            raise ConfigError(f"[node] {key} is required")
    if role == "peer" and "listen" not in node:
        raise ConfigError("[node] listen is required for a peer (it has no committee address)")
    defaults = Limits()
    try:
        limits = Limits(
            max_txs_per_vertex=_int(cons, "max_txs_per_vertex", defaults.max_txs_per_vertex),
            max_tx_bytes=_int(cons, "max_tx_bytes", defaults.max_tx_bytes),
            max_edges=_int(cons, "max_edges", defaults.max_edges),
            max_message_bytes=_int(cons, "max_message_bytes", defaults.max_message_bytes),
            max_block_bytes=_int(cons, "max_block_kib", defaults.max_block_bytes // 1024) * 1024,
        )
        cfg = NodeConfig(
            key_file=_path(node, "key_file", base),
            committee_file=(
                _path(node, "committee_file", base) if "committee_file" in node else None
            ),
            data_dir=_path(node, "data_dir", base),
            role=role,
            listen=_addr(node["listen"], "[node] listen") if "listen" in node else None,
            api_listen=_addr(api.get("listen", "127.0.0.1:8000"), "[api] listen"),
            api_token=_opt_str(api, "token"),
            peers=_peers(node.get("peers", {})),
            batch_size=_int(cons, "batch_size", 1_000),
            batch_delay=_int(cons, "batch_delay_ms", 50) / 1000.0,
            idle_round_interval=_int(cons, "idle_round_ms", 500) / 1000.0,
            gc_depth=_int(cons, "gc_depth", 50),
            future_rounds=_int(cons, "future_rounds", 200),
            peer_budget_bytes=_int(cons, "peer_budget_mib", 64) * 1024 * 1024,
            response_budget_bytes=_int(cons, "response_budget_mib", 16) * 1024 * 1024,
            checkpoint_interval=_int(cons, "checkpoint_interval", 256),
            retain_rounds=_int(raw.get("storage", {}), "retain_rounds", 2_000),
            keep_log_entries=_int(raw.get("storage", {}), "keep_log_entries", 0),
            max_pending=_int(raw.get("mempool", {}), "max_pending", 20_000),
            max_body_bytes=_int(api, "max_body_bytes", 64 * 1024 * 1024),
            api_max_connections=_int(api, "max_connections", 1024),
            api_idle_timeout=_int(api, "idle_timeout_ms", 15_000) / 1000.0,
            api_bodies_budget_bytes=_int(api, "bodies_budget_bytes", 128 * 1024 * 1024),
            limits=limits,
            fsync=_bool(raw.get("storage", {}), "fsync", False),
            log_format=_choice(raw.get("log", {}), "format", "json", ("json", "kv")),
            log_level=_choice(
                raw.get("log", {}), "level", "info", ("debug", "info", "warning", "error")
            ),
            crdt_enabled=_bool(crdt, "enabled", True),
            crdt_sync_interval=_int(crdt, "sync_interval_ms", 2000) / 1000.0,
            crdt_checkpoint_interval=_int(crdt, "checkpoint_interval_ms", 10_000) / 1000.0,
            crdt_compact_min_changes=_int(crdt, "compact_min_changes", 10_000),
            crdt_attest_every=_int(crdt, "attest_every", 16),
            crdt_max_clock_skew_ms=_int(crdt, "max_clock_skew_ms", 60_000),
            crdt_writers=_writers(crdt.get("writers", {"*": ["committee"]})),
            nat_enabled=_bool(nat, "enabled", False),
            nat_relays=_relays(nat.get("relays", [])),
            nat_offer_relay=_bool(nat, "offer_relay", False),
            nat_reserve=_bool(nat, "reserve", False),
            nat_dial_timeout=_int(nat, "dial_timeout_ms", 10_000) / 1000.0,
            nat_upnp=_bool(nat, "upnp", False),
            dht_enabled=_bool(dht, "enabled", True),
            dht_bootstrap=_keyed_addresses(dht.get("bootstrap", []), "[dht] bootstrap"),
            dht_k=_int(dht, "k", 20),
            dht_alpha=_int(dht, "alpha", 3),
            dht_disjoint_paths=_int(dht, "disjoint_paths", 1),
            dht_mode=_choice(dht, "mode", "auto", ("auto", "server", "client")),
            dht_advertise=_addresses(dht.get("advertise", []), "[dht] advertise"),
            content_enabled=_bool(content, "enabled", True),
            content_chunk_size=_int(content, "chunk_size_kib", 1024) * 1024,
            content_max_blob_bytes=_int(content, "max_blob_mib", 64 * 1024) * 1024 * 1024,
            content_max_upload_bytes=_int(content, "max_upload_mib", 64 * 1024) * 1024 * 1024,
            mdns_enabled=_bool(discovery, "mdns", False),
        )
        cfg.parameters()  # cross-field checks (batch size vs limits, gc depth)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.batch_delay < 0:
        raise ConfigError("[consensus] batch_delay_ms must be >= 0")
    if cfg.checkpoint_interval < 1:
        raise ConfigError("[consensus] checkpoint_interval must be >= 1")
    if cfg.retain_rounds < 0:
        raise ConfigError("[storage] retain_rounds must be >= 0")
    if cfg.keep_log_entries < 0:
        raise ConfigError(
            f"[storage] keep_log_entries must be >= 0 (0 keeps the whole log), "
            f"got {cfg.keep_log_entries}"
        )
    if cfg.idle_round_interval < 0:
        raise ConfigError("[consensus] idle_round_ms must be >= 0")
    if cfg.max_pending < 1:
        raise ConfigError("[mempool] max_pending must be >= 1")
    if cfg.api_max_connections < 1 or cfg.api_idle_timeout <= 0:
        raise ConfigError("[api] max_connections must be >= 1 and idle_timeout_ms > 0")
    if cfg.api_bodies_budget_bytes < cfg.max_body_bytes:
        raise ConfigError(
            f"[api] bodies_budget_bytes ({cfg.api_bodies_budget_bytes}) must be >= "
            f"max_body_bytes ({cfg.max_body_bytes}): one largest body must fit"
        )
    if cfg.crdt_sync_interval <= 0 or cfg.crdt_checkpoint_interval <= 0:
        raise ConfigError("[crdt] sync_interval_ms and checkpoint_interval_ms must be > 0")
    if cfg.crdt_compact_min_changes < 0 or cfg.crdt_attest_every < 1:
        raise ConfigError("[crdt] compact_min_changes must be >= 0 and attest_every >= 1")
    if cfg.crdt_max_clock_skew_ms < 0:
        raise ConfigError(
            f"[crdt] max_clock_skew_ms must be >= 0, got {cfg.crdt_max_clock_skew_ms}"
        )
    _check_mesh(cfg)
    return cfg


def _check_mesh(cfg: NodeConfig) -> None:
    if not 1 <= cfg.dht_k <= 64:
        raise ConfigError(f"[dht] k must be in [1, 64], got {cfg.dht_k}")
    if not 1 <= cfg.dht_alpha <= 16:
        raise ConfigError(f"[dht] alpha must be in [1, 16], got {cfg.dht_alpha}")
    if not 1 <= cfg.dht_disjoint_paths <= cfg.dht_k:
        raise ConfigError(f"[dht] disjoint_paths must be in [1, k={cfg.dht_k}]")
    size = cfg.content_chunk_size
    if size < 64 * 1024 or size > 4 * 1024 * 1024 or size & (size - 1):
        raise ConfigError(
            f"[content] chunk_size_kib must be a power of two in [64, 4096], got {size // 1024}"
        )
    if cfg.content_max_blob_bytes <= 0 or cfg.content_max_upload_bytes <= 0:
        raise ConfigError("[content] max_blob_mib and max_upload_mib must be > 0")
    if cfg.is_peer and not cfg.dht_enabled:
        raise ConfigError("[dht] enabled = false: a peer only exists to serve the mesh")
    if cfg.is_peer and not cfg.dht_bootstrap and not cfg.mdns_enabled:
        raise ConfigError(
            "[dht] bootstrap is required for a peer unless [discovery] mdns = true "
            "(how else would it join?)"
        )
    if cfg.mdns_enabled and not cfg.dht_enabled:
        raise ConfigError("[discovery] mdns = true needs the mesh ([dht] enabled = true)")
    if cfg.nat_upnp and not cfg.nat_enabled:
        raise ConfigError("[nat] upnp = true needs NAT traversal ([nat] enabled = true)")
    for host, port in cfg.dht_advertise:
        if not is_dialable_ip(host):
            raise ConfigError(
                f"[dht] advertise {host}:{port}: must be an IP address others can dial "
                "(not a name, not 0.0.0.0 or ::)"
            )
    listen = cfg.listen
    if cfg.is_peer and not cfg.dht_advertise and listen and not is_dialable_ip(listen[0]):
        raise ConfigError(
            f"[dht] advertise is required: [node] listen {listen[0]} is not an "
            "address others can dial"
        )


def is_dialable_ip(host: str) -> bool:
    """An IP literal that names one host (the DHT advertises only those)."""
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _relays(value: object) -> dict[bytes, tuple[str, int]]:
    """``[nat] relays``: a list of "<64-hex Ed25519 key>@host:port"."""
    return _keyed_addresses(value, "[nat] relays")


def _keyed_addresses(value: object, name: str) -> dict[bytes, tuple[str, int]]:
    """A list of "<64-hex Ed25519 key>@host:port" (relays, DHT bootstrap peers)."""
    if not isinstance(value, list):
        raise ConfigError(f'{name} must be a list of "<hex key>@host:port"')
    out: dict[bytes, tuple[str, int]] = {}
    for item in value:
        key, at, address = str(item).partition("@")
        if not isinstance(item, str) or not at or not _HEX_KEY.fullmatch(key):
            raise ConfigError(f'{name}: {item!r} is not "<64 hex digits>@host:port"')
        out[bytes.fromhex(key)] = _addr(address, f"{name} {key[:16]}")
    return out


def _addresses(value: object, name: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise ConfigError(f'{name} must be a list of "host:port"')
    return tuple(_addr(item, name) for item in value)


_NAMESPACE = re.compile(r"\*|[a-z0-9][a-z0-9_.-]{0,63}")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


def _writers(value: object) -> dict[str, tuple[str, ...]]:
    """``[crdt.writers]``: namespace -> list of "committee" or 64-hex Ed25519 keys."""
    if not isinstance(value, dict):
        raise ConfigError("[crdt] writers must be a table of namespace = [keys]")
    out: dict[str, tuple[str, ...]] = {}
    for namespace, keys in value.items():
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(f"[crdt.writers] {namespace!r} is not a namespace or '*'")
        if not isinstance(keys, list):
            raise ConfigError(f"[crdt.writers] {namespace}: expected a list of keys")
        for key in keys:
            if key != "committee" and not (isinstance(key, str) and _HEX_KEY.fullmatch(key)):
                raise ConfigError(
                    f'[crdt.writers] {namespace}: {key!r} is neither "committee" '
                    "nor a 64-hex-digit Ed25519 public key"
                )
        out[namespace] = tuple(keys)
    return out


def _path(table: dict[str, Any], key: str, base: Path) -> Path:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"[node] {key} must be a non-empty string, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def parse_address(value: object, name: str = "address") -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:port``) -> (host, port)."""
    return _addr(value, name)


def _addr(value: object, name: str) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{name} must be 'host:port', got {value!r}")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{name}: port {port_s!r} is not a number") from None
    if not host or not 0 <= port <= 65535:
        raise ConfigError(f"{name}: invalid address {value!r}")
    return host, port


def _peers(value: object) -> dict[int, tuple[str, int]]:
    if not isinstance(value, dict):
        raise ConfigError("[node] peers must be a table of node id = 'host:port'")
    out: dict[int, tuple[str, int]] = {}
    for k, v in value.items():
        try:
            node_id = int(k)
        except ValueError:
            raise ConfigError(f"[node] peers: key {k!r} is not a node id") from None
        out[node_id] = _addr(v, f"[node] peers.{k}")
    return out


def _int(table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if type(value) is not int:
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _bool(table: dict[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if type(value) is not bool:
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _opt_str(table: dict[str, Any], key: str) -> str | None:
    value = table.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _choice(table: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = table.get(key, default)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
    return str(value)
