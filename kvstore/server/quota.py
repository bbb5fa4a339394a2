"""The backend quota: writes that would take the database past it raise a NOSPACE alarm.

As in etcd, each member judges its own backend before proposing a Put, Txn or
LeaseGrant; when the estimated cost does not fit, the member raises a NOSPACE
alarm through Raft and refuses the request. Once the alarm is applied every
member refuses writes that cost space (the check lives in the MVCC store, so
it is replicated state) until an operator frees space (compact, defragment)
and disarms the alarm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NoSpaceError
from kvstore.mvcc.store import quota_cost

if TYPE_CHECKING:
    from kvstore.server.server import EtcdServer


async def check_quota(server: EtcdServer, request: Message) -> None:
    """Raise ``NoSpaceError`` (after raising the alarm) if ``request`` does not fit."""
    quota = server.cfg.backend_quota
    if quota is None:
        return
    store = server.node.store
    if store.db_size() + quota_cost(request) < quota:
        return
    alarm = rpc_pb2.AlarmRequest(
        action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=server.member_id, alarm=rpc_pb2.NOSPACE
    )
    await server.node.propose(alarm)
    raise NoSpaceError()
