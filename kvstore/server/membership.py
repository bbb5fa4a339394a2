"""Runtime membership: etcd's MemberAdd/Remove/Update/Promote on top of Raft conf changes.

The leader decides. It runs etcd's checks (the strict reconfiguration check
against losing the quorum of started members, then the validation of the
change against the applied membership) and only then proposes the change, so
every committed change is valid and every member applies it unconditionally.
Followers forward the requests to the leader. Raft refuses a change while
another one is pending, so the checks always see the latest membership.

The membership (members, removed IDs and the Raft index it reflects) is a record
in the MVCC backend's meta bucket: written in the same batch as the applied
entries, it travels inside snapshots and survives restarts. A change replayed
from the WAL at or below that index only reaches Raft (which rebuilds its
configuration from the snapshot's ConfState plus the replayed changes).

(About 600 lines and one concern: the registry, etcd's checks and the conf-change
plumbing change together whenever a membership rule does.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from google.protobuf.message import Message as PbMessage

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2
from kvstore.errors import (
    LeaderChangedError,
    LearnerNotReadyError,
    MemberBadURLsError,
    MemberExistError,
    MemberNotFoundError,
    MemberNotLearnerError,
    NoLeaderError,
    NotEnoughStartedMembersError,
    NotPrimaryError,
    PeerURLExistError,
    RemoteError,
    RequestError,
    RequestTimeoutError,
    TooManyLearnersError,
    UnhealthyClusterError,
)
from kvstore.raft.types import ConfChange, ConfChangeSingle, ConfChangeType, Role
from kvstore.rpctypes import ERR_NOT_LEADER
from kvstore.server.config import ConfigError, ServerConfig, host_port
from kvstore.server.node import Node
from kvstore.server.peerlistener import PeerListener
from kvstore.server.peerwire import MEMBER_REMOVED_MESSAGE, PeerMethod
from kvstore.server.transport import PeerUnreachableError, Transport, call_url

log = logging.getLogger(__name__)

MEMBERS_RECORD = b"members"
"""Name of the membership record in the backend's meta bucket."""
MAX_LEARNERS = 1
"""etcd 3.5 allows one learner at a time."""
HEALTH_INTERVAL = 5.0
"""Seconds the leader must have been connected to the voters (etcd's HealthInterval)."""
LEARNER_READY_PERCENT = 0.9
"""A learner may be promoted once its log matches this share of the leader's."""
FORWARD_ATTEMPTS = 3
DISCOVERY_TIMEOUT_SECONDS = 2.0
"""How long a joining member waits for each existing member to list the cluster."""
UNKNOWN_CLUSTER = UNKNOWN_MEMBER = 0
"""What a joining member calls its cluster and itself before it learns them."""
R = TypeVar("R", bound=PbMessage)


def new_member_id(peer_urls: list[str], now: int) -> int:
    """etcd's ID for a member added at runtime: sha1(sorted peer URLs + unix time)."""
    data = "".join(sorted(peer_urls)) + str(now)
    return int(struct.unpack(">Q", hashlib.sha1(data.encode()).digest()[:8])[0])


@dataclass(frozen=True)
class Member:
    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    def to_pb(self) -> rpc_pb2.Member:
        return rpc_pb2.Member(
            ID=self.id,
            name=self.name,
            peerURLs=self.peer_urls,
            clientURLs=self.client_urls,
            isLearner=self.is_learner,
        )

    @classmethod
    def from_pb(cls, m: rpc_pb2.Member) -> Member:
        return cls(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner)


class MemberRegistry:
    """The applied membership: pure data, its checks and its changes."""

    def __init__(
        self, members: list[Member], removed: set[int] | None = None, index: int = 0
    ) -> None:
        self.members = {m.id: m for m in members}
        self.removed = set(removed or ())
        self.index = index
        """Raft index of the last change reflected here."""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "index": self.index,
                "removed": sorted(self.removed),
                "members": [
                    {
                        "id": m.id,
                        "name": m.name,
                        "peer_urls": list(m.peer_urls),
                        "client_urls": list(m.client_urls),
                        "is_learner": m.is_learner,
                    }
                    for m in self.sorted()
                ],
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> MemberRegistry:
        doc = json.loads(data)
        members = [
            Member(
                m["id"], m["name"], tuple(m["peer_urls"]), tuple(m["client_urls"]), m["is_learner"]
            )
            for m in doc["members"]
        ]
        return cls(members, set(doc["removed"]), doc["index"])

    def sorted(self) -> list[Member]:
        """Members ordered by ID, as etcd lists them."""
        return [self.members[i] for i in sorted(self.members)]

    def voters(self) -> list[Member]:
        return [m for m in self.sorted() if not m.is_learner]

    def _urls_in_use(self, except_id: int = 0) -> set[str]:
        return {u for m in self.members.values() if m.id != except_id for u in m.peer_urls}

    # etcd's ValidateConfigurationChange, case by case.

    def check_add(self, member: Member) -> None:
        if member.id in self.removed:
            raise MemberNotFoundError()
        if member.id in self.members:
            raise MemberExistError()
        if self._urls_in_use() & set(member.peer_urls):
            raise PeerURLExistError()
        learners = sum(m.is_learner for m in self.members.values())
        if member.is_learner and learners + 1 > MAX_LEARNERS:
            raise TooManyLearnersError()

    def check_remove(self, member_id: int) -> None:
        if member_id in self.removed or member_id not in self.members:
            raise MemberNotFoundError()

    def check_update(self, member_id: int, peer_urls: tuple[str, ...]) -> None:
        self.check_remove(member_id)
        if self._urls_in_use(except_id=member_id) & set(peer_urls):
            raise PeerURLExistError()

    def check_promote(self, member_id: int) -> None:
        self.check_remove(member_id)
        if not self.members[member_id].is_learner:
            raise MemberNotLearnerError()

    def apply(self, change: dict[str, Any]) -> None:
        """Apply a committed change. Each one sets fields outright, so replaying
        changes on top of a state that already holds them leaves it unchanged."""
        op, mid = change["op"], change["id"]
        if op == "add":
            self.removed.discard(mid)
            self.members[mid] = Member(
                mid, "", tuple(change["peer_urls"]), (), bool(change["learner"])
            )
        elif op == "remove":
            self.members.pop(mid, None)
            self.removed.add(mid)
        elif op == "update" and mid in self.members:
            self.members[mid] = replace(self.members[mid], peer_urls=tuple(change["peer_urls"]))
        elif op == "promote" and mid in self.members:
            self.members[mid] = replace(self.members[mid], is_learner=False)
        elif op == "attributes" and mid in self.members:
            self.members[mid] = replace(
                self.members[mid], name=change["name"], client_urls=tuple(change["client_urls"])
            )


def _conf_change(op: str, member_id: int, learner: bool, change: dict[str, Any]) -> ConfChange:
    if op == "add":
        kind = ConfChangeType.ADD_LEARNER_NODE if learner else ConfChangeType.ADD_NODE
    elif op == "remove":
        kind = ConfChangeType.REMOVE_NODE
    else:
        kind = ConfChangeType.ADD_NODE
    # An update changes no Raft configuration: node 0 makes it a no-op for Raft.
    node = 0 if op == "update" else member_id
    return ConfChange((ConfChangeSingle(kind, node),), context=json.dumps(change).encode())


def _check_urls(urls: list[str]) -> tuple[str, ...]:
    if not urls:
        raise MemberBadURLsError()
    try:
        for url in urls:
            if "://" not in url:
                raise ConfigError(url)
            host_port(url)
    except ConfigError:
        raise MemberBadURLsError() from None
    return tuple(urls)


class ClusterMembership:
    """One member's view of the membership, and the leader's side of changing it."""

    def __init__(
        self,
        cfg: ServerConfig,
        node: Node,
        stop_server: Callable[[], None],
        joined: list[Member] | None = None,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.self_id = cfg.self_id
        self._stop_server = stop_server
        record = node.store.load_record(MEMBERS_RECORD)
        if record is not None:
            self.registry = MemberRegistry.decode(record)
        else:
            if joined is None:
                # Names and client URLs come later, each member publishing its own.
                joined = [Member(m.id, "", m.peer_urls) for m in cfg.members]
            self.registry = MemberRegistry(joined)
            # Durable now: a member that joined cannot ask the cluster again after a crash.
            node.store.save_record(MEMBERS_RECORD, self.registry.encode())
            node.store.commit()
        self.published = asyncio.Event()
        """Set once our name and client URLs are applied here (then we serve clients)."""
        self._waiting: dict[int, asyncio.Future[list[Member]]] = {}
        self.transport: Transport | None = None
        self.receiver: PeerListener | None = None
        self.removed = False
        node.on_conf_change = self._applied
        node.on_restore = self._restored
        node.on_member_attributes = self._attributes_applied

    def connect(self, transport: Transport, receiver: PeerListener) -> None:
        self.transport = transport
        self.receiver = receiver
        transport.on_removed = self._removed
        self._sync_peers()
        if self.self_id in self.registry.removed:
            self._removed()

    def peer_urls(self) -> dict[int, str]:
        return {m.id: m.peer_urls[0] for m in self.registry.members.values() if m.peer_urls}

    # ----- applying (raft loop)

    def _applied(self, index: int, cc: ConfChange) -> None:
        if not cc.context:
            return  # leaving a joint configuration: no member changes
        change = json.loads(cc.context)
        if index > self.registry.index:
            self.registry.apply(change)
            self.registry.index = index
            self.node.store.save_record(MEMBERS_RECORD, self.registry.encode())
            log.info("applied membership change at index %d: %s", index, change)
        self._sync_peers()
        fut = self._waiting.pop(change.get("request", 0), None)
        if fut is not None and not fut.done():
            fut.set_result(self.registry.sorted())
        if change["op"] == "remove" and change["id"] == self.self_id:
            # Like etcd, stop a little later so the leader can still tell the others
            # that the change committed.
            delay = 10 * self.cfg.heartbeat_ms / 1000
            asyncio.get_running_loop().call_later(delay, self._removed)

    def _attributes_applied(self, index: int, attrs: peer_pb2.MemberAttributes) -> None:
        if index <= self.registry.index:
            return
        change = {
            "op": "attributes",
            "id": attrs.id,
            "name": attrs.name,
            "client_urls": list(attrs.client_urls),
        }
        self.registry.apply(change)
        self.registry.index = index
        self.node.store.save_record(MEMBERS_RECORD, self.registry.encode())

    def _is_published(self) -> bool:
        me = self.registry.members.get(self.self_id)
        return me is not None and (me.name, me.client_urls) == (
            self.cfg.name,
            tuple(self.cfg.advertise_client_urls),
        )

    async def publish(self) -> None:
        """Publish our name and client URLs through Raft, as etcd does when it starts.

        Until that is applied here, this member does not serve clients: a member
        that joined has then caught up with its own addition and knows the
        membership. A restart with unchanged attributes has nothing to publish.
        """
        attrs = peer_pb2.MemberAttributes(
            id=self.self_id, name=self.cfg.name, client_urls=self.cfg.advertise_client_urls
        )
        while not self._is_published():
            try:
                await self.node.propose(attrs)
            except RequestError as exc:
                log.info("publishing member attributes: %s; retrying", exc.message)
                await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
        self.published.set()
        log.info("published member %x: name=%s", self.self_id, self.cfg.name)

    def _restored(self) -> None:
        record = self.node.store.load_record(MEMBERS_RECORD)
        if record is not None:  # (the bootstrap snapshot carries no state)
            self.registry = MemberRegistry.decode(record)
        self._sync_peers()

    def _sync_peers(self) -> None:
        """Stream to every member; stop streaming only to removed ones.

        (After a snapshot the membership may be older than the members we already
        talk to, the leader among them: they stay until a removal is applied.)
        """
        if self.transport is None or self.receiver is None:
            return
        for pid, url in self.peer_urls().items():
            self.transport.add_peer(pid, url)
        for pid in list(self.transport.peers):
            if pid in self.registry.removed:
                self.transport.remove_peer(pid)
        self.receiver.removed = self.registry.removed

    def _removed(self) -> None:
        if not self.removed:
            self.removed = True
            log.warning(MEMBER_REMOVED_MESSAGE)
            self._stop_server()

    # ----- listing

    def described(self) -> list[Member]:
        return self.registry.sorted()

    # ----- changes (leader)

    async def _on_leader(
        self,
        local: Callable[[], Awaitable[R]],
        method: PeerMethod,
        request: PbMessage,
        response_type: type[R],
    ) -> R:
        """Run ``local`` here if we lead, else ``method`` on the leader.

        The forwarded call has a connection of its own: the change may remove the
        leader, and with it our connections to it, before the answer arrives.
        """
        for _ in range(FORWARD_ATTEMPTS):
            leader = await self.node.await_leader()
            if leader == self.self_id:
                try:
                    return await local()
                except NotPrimaryError:
                    continue
            member = self.registry.members.get(leader)
            if member is None or not member.peer_urls:
                raise NoLeaderError()
            try:
                return await call_url(
                    member.peer_urls[0],
                    self.cfg.peer_tls,
                    self.cfg.cluster_id,
                    self.self_id,
                    method,
                    request,
                    response_type,
                    self.cfg.request_timeout,
                )
            except RemoteError as exc:
                if exc.message == ERR_NOT_LEADER:  # the leader moved on: ask again
                    continue
                raise  # the leader's answer, passed on to our client unchanged
            except PeerUnreachableError:
                raise RequestTimeoutError() from None
        raise NoLeaderError()

    def _check_leader(self) -> None:
        if self.node.role != Role.LEADER:
            raise NotPrimaryError()

    @staticmethod
    def _started(m: Member) -> bool:
        """etcd's notion: the member has published its name."""
        return bool(m.name)

    def _connected_since(self, member_id: int, since: float) -> bool:
        peer = self.transport.peers.get(member_id) if self.transport else None
        connected = peer.connected_since() if peer is not None else None
        return connected is not None and connected <= since

    def _connected_fully(self) -> bool:
        since = time.monotonic() - HEALTH_INTERVAL
        return all(
            m.id == self.self_id or self._connected_since(m.id, since)
            for m in self.registry.voters()
        )

    def _may_add(self, member: Member) -> None:
        """etcd's strict reconfiguration check for MemberAdd."""
        voters = self.registry.voters()
        if not member.is_learner:
            started = sum(self._started(m) for m in voters)
            total = len(voters) + 1
            if not (started == 1 and total == 2) and started < total // 2 + 1:
                raise NotEnoughStartedMembersError()
        if not self._connected_fully():
            raise UnhealthyClusterError()

    def _may_remove(self, member_id: int) -> None:
        """etcd's strict reconfiguration check for MemberRemove."""
        target = self.registry.members.get(member_id)
        if target is not None and target.is_learner:
            return
        voters = [m for m in self.registry.voters() if m.id != member_id]
        started = sum(self._started(m) for m in voters)
        if started < len(voters) // 2 + 1:
            raise NotEnoughStartedMembersError()
        peer = self.transport.peers.get(member_id) if self.transport else None
        if member_id != self.self_id and (peer is None or peer.connected_since() is None):
            return  # a member that is down is not part of the active quorum
        all_voters = self.registry.voters()
        since = time.monotonic() - HEALTH_INTERVAL
        active = sum(m.id == self.self_id or self._connected_since(m.id, since) for m in all_voters)
        if active - 1 < 1 + (len(all_voters) - 1) // 2:
            raise UnhealthyClusterError()

    def _may_promote(self, member_id: int) -> None:
        progress = self.node.raft.progress
        learner = progress.get(member_id)
        own = progress.get(self.self_id)
        if (
            learner is not None
            and own is not None
            and learner.match < own.match * LEARNER_READY_PERCENT
        ):
            raise LearnerNotReadyError()
        voters = self.registry.voters()
        started = 1 + sum(self._started(m) for m in voters)
        if started < (len(voters) + 1) // 2 + 1:
            raise NotEnoughStartedMembersError()

    async def _configure(
        self, op: str, member_id: int, change: dict[str, Any], learner: bool = False
    ) -> list[Member]:
        request = random.getrandbits(63) or 1
        change = {"op": op, "id": member_id, "request": request, **change}
        fut: asyncio.Future[list[Member]] = asyncio.get_running_loop().create_future()
        self._waiting[request] = fut
        try:
            proposed = await self.node.propose_conf_change(
                _conf_change(op, member_id, learner, change)
            )
            # Dropped while another change is pending: as with etcd, the request times out.
            if not proposed and self.node.role != Role.LEADER:
                raise LeaderChangedError()
            try:
                return await asyncio.wait_for(fut, self.cfg.request_timeout)
            except TimeoutError:
                raise RequestTimeoutError() from None
        finally:
            self._waiting.pop(request, None)

    async def add_local(self, request: rpc_pb2.MemberAddRequest) -> rpc_pb2.MemberAddResponse:
        """MemberAdd on the leader (``NotPrimaryError`` elsewhere)."""
        self._check_leader()
        urls = _check_urls(list(request.peerURLs))
        member_id = new_member_id(list(urls), int(time.time()))
        member = Member(member_id, "", urls, (), request.isLearner)
        self._may_add(member)
        self.registry.check_add(member)
        change = {"peer_urls": list(urls), "learner": member.is_learner}
        members = await self._configure("add", member.id, change, learner=member.is_learner)
        resp = rpc_pb2.MemberAddResponse(member=member.to_pb())
        resp.members.extend([m.to_pb() for m in members])
        return resp

    async def remove_local(
        self, request: rpc_pb2.MemberRemoveRequest
    ) -> rpc_pb2.MemberRemoveResponse:
        self._check_leader()
        self._may_remove(request.ID)
        self.registry.check_remove(request.ID)
        members = await self._configure("remove", request.ID, {})
        resp = rpc_pb2.MemberRemoveResponse()
        resp.members.extend([m.to_pb() for m in members])
        return resp

    async def update_local(
        self, request: rpc_pb2.MemberUpdateRequest
    ) -> rpc_pb2.MemberUpdateResponse:
        self._check_leader()
        self.registry.check_remove(request.ID)
        urls = _check_urls(list(request.peerURLs))
        self.registry.check_update(request.ID, urls)
        members = await self._configure("update", request.ID, {"peer_urls": list(urls)})
        resp = rpc_pb2.MemberUpdateResponse()
        resp.members.extend([m.to_pb() for m in members])
        return resp

    async def promote_local(
        self, request: rpc_pb2.MemberPromoteRequest
    ) -> rpc_pb2.MemberPromoteResponse:
        self._check_leader()
        self._may_promote(request.ID)
        self.registry.check_promote(request.ID)
        members = await self._configure("promote", request.ID, {})
        resp = rpc_pb2.MemberPromoteResponse()
        resp.members.extend([m.to_pb() for m in members])
        return resp

    async def add(self, request: rpc_pb2.MemberAddRequest) -> rpc_pb2.MemberAddResponse:
        _check_urls(list(request.peerURLs))
        return await self._on_leader(
            lambda: self.add_local(request),
            PeerMethod.MEMBER_ADD,
            request,
            rpc_pb2.MemberAddResponse,
        )

    async def remove(self, request: rpc_pb2.MemberRemoveRequest) -> rpc_pb2.MemberRemoveResponse:
        return await self._on_leader(
            lambda: self.remove_local(request),
            PeerMethod.MEMBER_REMOVE,
            request,
            rpc_pb2.MemberRemoveResponse,
        )

    async def update(self, request: rpc_pb2.MemberUpdateRequest) -> rpc_pb2.MemberUpdateResponse:
        self.registry.check_remove(request.ID)  # as etcd: an unknown member before its URLs
        _check_urls(list(request.peerURLs))
        return await self._on_leader(
            lambda: self.update_local(request),
            PeerMethod.MEMBER_UPDATE,
            request,
            rpc_pb2.MemberUpdateResponse,
        )

    async def promote(self, request: rpc_pb2.MemberPromoteRequest) -> rpc_pb2.MemberPromoteResponse:
        return await self._on_leader(
            lambda: self.promote_local(request),
            PeerMethod.MEMBER_PROMOTE,
            request,
            rpc_pb2.MemberPromoteResponse,
        )


async def discover_existing(cfg: ServerConfig) -> tuple[int, list[Member]]:
    """Ask the existing members listed in --initial-cluster for the cluster ID and members.

    Like etcd, the initial cluster must list exactly the current members (this
    one included, as added by MemberAdd); our ID is the one the cluster gave
    the member with our peer URLs.
    """
    mine = sorted(cfg.initial_advertise_peer_urls)
    urls = [u for m in cfg.members if sorted(m.peer_urls) != mine for u in m.peer_urls]
    for url in urls:
        try:
            resp = await call_url(
                url,
                cfg.peer_tls,
                UNKNOWN_CLUSTER,
                UNKNOWN_MEMBER,
                PeerMethod.MEMBER_LIST,
                rpc_pb2.MemberListRequest(),
                rpc_pb2.MemberListResponse,
                DISCOVERY_TIMEOUT_SECONDS,
            )
        except (PeerUnreachableError, RemoteError):
            continue
        members = [Member.from_pb(m) for m in resp.members]
        existing = sorted(sorted(m.peer_urls) for m in members)
        local = sorted(sorted(m.peer_urls) for m in cfg.members)
        if len(existing) != len(local):
            raise ConfigError(f"error validating peerURLs {existing}: member count is unequal")
        if existing != local:
            raise ConfigError(
                f"error validating peerURLs {existing}: unmatched member while checking PeerURLs"
            )
        return resp.header.cluster_id, members
    raise ConfigError(
        "cannot fetch cluster info from peer urls: "
        "could not retrieve cluster information from the given URLs"
    )
