"""The public Python API of dagrider: embed a committee member or a mesh peer in an
asyncio program.

Everything an application needs is importable from here (and from ``dagrider``)::

    from dagrider import Node, Intent

    async with Node("node-0.toml") as node:
        tx = node.submit(b"hello")
        async for entry in node.committed(start=0):
            ...

See ``docs/sdk.md`` for a tour and the generated API reference.
"""

from crdt.document import Intent
from dagrider.node.config import NodeConfig, load_config
from dagrider.sdk.errors import (
    Backpressure,
    ContentUnavailable,
    DagriderError,
    InvalidArgument,
    LogTruncated,
    NotFound,
    NotRunning,
    PeerUnreachable,
    RemoteError,
    ServiceTimeout,
    StorageFailure,
    Unsupported,
)
from dagrider.sdk.facades import Content, Documents, Network, Progress, Records
from dagrider.sdk.local import LocalNetwork, join_config, local_network
from dagrider.sdk.node import InvalidConfig, Node, Peer
from dagrider.sdk.services import (
    Service,
    ServiceError,
    ServiceLimits,
    Services,
    client_stream,
    current_peer,
    server_stream,
    unary,
)
from dagrider.sdk.types import (
    Blob,
    Committed,
    DocumentChange,
    NetworkInfo,
    PeerStatus,
    Provider,
    SignedRecord,
    TxState,
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
