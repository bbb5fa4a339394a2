"""etcd's JSON gateway: the HTTP/JSON API of etcd's gRPC services (``POST /v3/kv/range``, ...).

:class:`Gateway` serves the routes of etcd 3.5's gateway (:mod:`.routes`) by
calling the gRPC server's own methods, with grpc-gateway's JSON mapping
(:mod:`.jsonpb`, :mod:`.gojson`) and error answers (:mod:`.errors`).
"""

from kvstore.gateway.gateway import Gateway

__all__ = ["Gateway"]
