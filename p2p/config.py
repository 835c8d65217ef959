"""The transport's one typed configuration object, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransportConfig:
    """Listen address and every limit of the peer transport; defaults work on a laptop.

    ``send_queue_bytes`` and the rate limits are per peer. Rate limits apply to inbound
    traffic, as token buckets with a one-second burst (at least 1 MiB for bytes): a peer
    that exceeds them is disconnected and logged (a correct node stays far below them;
    the byte rate leaves room for a bulk content transfer, hundreds of MB/s on a LAN).
    ``reconnect_*`` bound the jittered exponential backoff of dialling.
    """

    listen_host: str
    listen_port: int
    max_frame: int = 16 * MiB
    send_queue_bytes: int = 64 * MiB
    keepalive_interval: float = 5.0
    keepalive_timeout: float = 20.0
    reconnect_initial: float = 0.1
    reconnect_max: float = 5.0
    rate_bytes_per_s: float = 1e9
    rate_frames_per_s: float = 200_000
    handshake_timeout: float = 10.0
    retire_timeout: float = 20.0
    """How long a replaced link may drain (``p2p.link.Link.retire``): the peer must finish
    the new link's handshake and switch to it. Past it, the link is reported lost."""
    max_draining: int = 64
    """Replaced links draining at once across all peers; past it the oldest is closed
    (as undrained). Strangers forgotten in open mode cannot pile them up either."""
    max_handshaking: int = 64
    """Concurrent inbound TLS handshakes from strangers; more are dropped at once (cheap
    flood defence)."""
    max_handshaking_per_ip: int = 16
    """Of those, at most this many from one source address."""
    reserved_handshaking: int = 16
    """Handshake slots kept for connections from a configured peer's address (members
    dial from their listening port): no number of idle strangers can take them."""
    max_links: int = 1024
    """Live links at most. Beyond it an inbound link from an on-demand peer is refused
    ("too many links") and ``connect`` raises; configured peers are always accepted."""
    stranger_max_frame: int = 4 * MiB + 64 * 1024
    """Largest frame a stranger (a peer neither in ``peers`` nor named in ``allowed``) may
    announce: the largest message a stranger needs to send (a 4 MiB content chunk or
    CRDT sync batch) plus its envelope; never more than ``max_frame``, which configured
    peers may announce."""
    stranger_frame_budget: int = 64 * MiB
    """Bytes that all strangers' partial frames may hold at once. A frame is charged its
    announced size when its header arrives; a stranger whose frame does not fit is
    disconnected ("frame budget exhausted"). With ``max_frame``, this bounds the memory
    that peers can pin with frames they never finish (see docs/byzantine.md)."""
    idle_timeout: float = 120.0
    """An on-demand link (a peer neither in ``peers`` nor named in ``allowed``, and not
    protected) that carried nothing but keep-alives this long is closed."""

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"TransportConfig.{field}={getattr(self, field)!r}: {rule}")

        need(0 <= self.listen_port <= 65535, "listen_port", "must be in [0, 65535]")
        need(0 < self.max_frame < 2**32, "max_frame", "must be in [1, 2**32-1]")
        need(self.send_queue_bytes > 0, "send_queue_bytes", "must be positive")
        need(self.keepalive_interval > 0, "keepalive_interval", "must be positive")
        need(
            self.keepalive_timeout > self.keepalive_interval,
            "keepalive_timeout",
            "must exceed keepalive_interval",
        )
        need(self.reconnect_initial > 0, "reconnect_initial", "must be positive")
        need(self.reconnect_max >= self.reconnect_initial, "reconnect_max", ">= reconnect_initial")
        need(self.rate_bytes_per_s > 0, "rate_bytes_per_s", "must be positive")
        need(self.rate_frames_per_s > 0, "rate_frames_per_s", "must be positive")
        need(self.handshake_timeout > 0, "handshake_timeout", "must be positive")
        need(self.retire_timeout > 0, "retire_timeout", "must be positive")
        need(self.max_draining > 0, "max_draining", "must be positive")
        need(self.max_handshaking > 0, "max_handshaking", "must be positive")
        need(self.max_handshaking_per_ip > 0, "max_handshaking_per_ip", "must be positive")
        need(self.reserved_handshaking >= 0, "reserved_handshaking", "must be >= 0")
        need(self.max_links > 0, "max_links", "must be positive")
        need(self.idle_timeout > 0, "idle_timeout", "must be positive")
        need(0 < self.stranger_max_frame < 2**32, "stranger_max_frame", "must be in [1, 2**32-1]")
        need(
            self.stranger_frame_budget >= min(self.stranger_max_frame, self.max_frame),
            "stranger_frame_budget",
            "must hold one stranger frame",
        )
