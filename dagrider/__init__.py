"""dagrider: asynchronous Byzantine atomic broadcast (DAG-Rider) as pure state machines.

The consensus core in this package performs no I/O, reads no clock and draws no
randomness of its own; shells (the simulator in ``sim/``, the daemon) feed it
inputs and perform the effects it returns.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, typed, for type checkers and IDEs
    from dagrider.sdk import (
        Backpressure,
        Blob,
        Committed,
        Content,
        ContentUnavailable,
        DagriderError,
        DocumentChange,
        Documents,
        Intent,
        InvalidArgument,
        InvalidConfig,
        LocalNetwork,
        LogTruncated,
        Network,
        NetworkInfo,
        Node,
        NodeConfig,
        NotFound,
        NotRunning,
        Peer,
        PeerStatus,
        PeerUnreachable,
        Progress,
        Provider,
        Records,
        RemoteError,
        Service,
        ServiceError,
        ServiceLimits,
        Services,
        ServiceTimeout,
        SignedRecord,
        StorageFailure,
        TxState,
        Unsupported,
        client_stream,
        current_peer,
        join_config,
        load_config,
        local_network,
        server_stream,
        unary,
    )

__all__ = [
    "Backpressure",
    "Blob",
    "Committed",
    "Content",
    "ContentUnavailable",
    "DagriderError",
    "DocumentChange",
    "Documents",
    "Intent",
    "InvalidArgument",
    "InvalidConfig",
    "LocalNetwork",
    "LogTruncated",
    "Network",
    "NetworkInfo",
    "Node",
    "NodeConfig",
    "NotFound",
    "NotRunning",
    "Peer",
    "PeerStatus",
    "PeerUnreachable",
    "Progress",
    "Provider",
    "Records",
    "RemoteError",
    "Service",
    "ServiceError",
    "ServiceLimits",
    "ServiceTimeout",
    "Services",
    "SignedRecord",
    "StorageFailure",
    "TxState",
    "Unsupported",
    "client_stream",
    "current_peer",
    "join_config",
    "load_config",
    "local_network",
    "server_stream",
    "unary",
]


def __getattr__(name: str) -> object:
    """``from dagrider import Node, ...``: the public API of :mod:`dagrider.sdk`.

    Loaded on first use, so that the pure consensus modules of this package (imported
    by the simulator and the purity tests) never pull in the daemon's I/O layers.
    """
    if name in __all__:
        from dagrider import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'dagrider' has no attribute {name!r}")
