"""A small gRPC server for asyncio: HTTP/2 spoken directly on the event loop.

See :mod:`kvstore.rpc.server` for why and how it is layered.
"""

from kvstore.rpc.call import CallContext, Cardinality, Method, PreEncoded, methods_of
from kvstore.rpc.connection import peer_common_name
from kvstore.rpc.server import Server
from kvstore.rpc.status import RpcError, StatusCode

__all__ = [
    "CallContext",
    "Cardinality",
    "Method",
    "PreEncoded",
    "RpcError",
    "Server",
    "StatusCode",
    "methods_of",
    "peer_common_name",
]
