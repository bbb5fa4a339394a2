"""What the client-facing services stand on: one member's node, membership and limits.

The services (KV, Watch, Lease, Cluster, Maintenance, Lock, Election) take a
:class:`Core` and answer requests with plain functions; the gRPC server and
the JSON gateway both call those same functions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from google.protobuf.message import Message

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import NoSpaceError, RequestTooLargeError
from kvstore.mvcc.store import quota_cost
from kvstore.mvcc.watch import WatchStream
from kvstore.rpc import CallContext
from kvstore.server.applier import nospace_alarm
from kvstore.server.config import ServerConfig
from kvstore.server.leases import LeaseForwarder
from kvstore.server.membership import ClusterMembership
from kvstore.server.node import Node

REQUIRE_LEADER_KEY = "hasleader"
"""Metadata with which a client asks to be refused (and its streams ended) without a leader."""


@dataclass
class Core:
    cfg: ServerConfig
    node: Node
    membership: ClusterMembership
    leases: LeaseForwarder
    leader_streams: set[WatchStream] = field(default_factory=set)
    """Watch streams of clients that asked for a leader: ended when there is none."""
    watch_refusal: Callable[[CallContext, rpc_pb2.WatchCreateRequest], str | None] = field(
        default=lambda ctx, create: None
    )
    """Why the caller may not create this watch (etcd's cancel reason), or None: set by the
    access guard (:mod:`kvstore.server.services.access`)."""

    def fill_header(self, h: rpc_pb2.ResponseHeader) -> None:
        node = self.node
        h.cluster_id = node.cluster_id
        h.member_id = node.id
        h.raft_term = node.term
        if not h.revision:
            h.revision = node.store.current_revision

    def check_size(self, request: Message) -> None:
        if request.ByteSize() > self.cfg.max_request_bytes:
            raise RequestTooLargeError()

    def over_quota(self, request: Message) -> bool:
        """Whether ``request`` would take this member's backend past its quota.

        As in etcd, each member judges its own backend before proposing a write
        that costs space (:meth:`refuse_over_quota` then answers it).
        """
        quota = self.cfg.backend_quota
        return quota is not None and self.node.store.db_size() + quota_cost(request) >= quota

    async def refuse_over_quota(self) -> NoReturn:
        """Raise the NOSPACE alarm through Raft (to every member), then refuse the request."""
        await self.node.propose(nospace_alarm(self.node.id))
        raise NoSpaceError()

    def new_lease_id(self) -> int:
        """Chosen before proposing, so every member applies the same ID."""
        return random.getrandbits(63) or 1


def requires_leader(ctx: CallContext) -> bool:
    return ctx.metadata.get(REQUIRE_LEADER_KEY) == "true"
