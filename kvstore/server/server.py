"""One etcd-compatible member: node driver + peer transport + gRPC services + HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore._pb.peerpb import peer_pb2_grpc
from kvstore._pb.v3electionpb import v3election_pb2_grpc
from kvstore._pb.v3lockpb import v3lock_pb2_grpc
from kvstore.errors import (
    LeaseNotFoundError,
    NoLeaderError,
    NotPrimaryError,
    RequestError,
    RequestTimeoutError,
    RequestTooLargeError,
)
from kvstore.lease.lessor import LeaseExpiringError
from kvstore.mvcc.watch import WatchStream
from kvstore.raft.types import Message, Role
from kvstore.server import api
from kvstore.server.concurrency_api import ElectionService, LockService, SelfClient
from kvstore.server.config import (
    CLUSTER_VERSION,
    GRPC_OVERHEAD_BYTES,
    SERVER_VERSION,
    ServerConfig,
    host_port,
    is_https,
)
from kvstore.server.http import Handler, json_body, serve_http
from kvstore.server.membership import ClusterMembership, Member, discover_existing
from kvstore.server.node import Node
from kvstore.server.tls import http_ssl_context, server_credentials
from kvstore.server.transport import GRPC_OPTIONS, PeerReceiver, Transport
from kvstore.storage import WAL

log = logging.getLogger(__name__)

R = TypeVar("R", rpc_pb2.LeaseKeepAliveResponse, rpc_pb2.LeaseTimeToLiveResponse)
R_ = TypeVar("R_")

NO_LEADER_CHECKS = 3
"""Require-leader streams are cancelled after this many election timeouts without a leader."""


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, server: EtcdServer, receiver: PeerReceiver) -> None:
        self.s = server
        self.receiver = receiver

    async def Send(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.receiver.handle(request_iterator, context)

    async def SendSnapshot(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.receiver.handle_snapshot(request_iterator, context)

    async def LeaseRenew(
        self, request: rpc_pb2.LeaseKeepAliveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        try:
            return await self.s.local_renew(request)
        except RequestError as exc:
            await api.abort(context, exc)
            raise

    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        try:
            return await self.s.local_time_to_live(request)
        except RequestError as exc:
            await api.abort(context, exc)
            raise

    async def _leader_only(
        self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[R_]]
    ) -> R_:
        try:
            return await fn()
        except RequestError as exc:
            await api.abort(context, exc)
            raise

    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        return await self._leader_only(context, lambda: self.s.membership.add_local(request))

    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        return await self._leader_only(context, lambda: self.s.membership.remove_local(request))

    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        return await self._leader_only(context, lambda: self.s.membership.update_local(request))

    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        return await self._leader_only(context, lambda: self.s.membership.promote_local(request))

    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        resp = rpc_pb2.MemberListResponse()
        resp.members.extend(await self.s.member_list())
        self.s.fill_header(resp.header)
        return resp


class EtcdServer:
    """A member. ``await run()`` serves until ``stop()`` (or SIGTERM/SIGINT via ``serve``)."""

    def __init__(self, cfg: ServerConfig, joined: tuple[int, list[Member]] | None = None) -> None:
        """``joined``: the cluster ID and members learned when joining an existing cluster."""
        cfg.validate()
        members = None
        if joined is not None:
            cfg.cluster_id, members = joined
            mine = sorted(cfg.initial_advertise_peer_urls)
            cfg.self_id = next(m.id for m in members if sorted(m.peer_urls) == mine)
        self.cfg = cfg
        self.node = Node(cfg, self._send)
        # (After the node: a member that joined at runtime reads its IDs from its WAL.)
        self.member_id = cfg.self_id
        self.cluster_id = cfg.cluster_id
        self.membership = ClusterMembership(cfg, self.node, self.stop, members)
        peers = self.membership.peer_urls()
        self.transport = Transport(
            cfg.self_id,
            cfg.cluster_id,
            peers,
            self.node.metrics,
            self.node.report_unreachable,
            self.node.report_snapshot,
            cfg.peer_tls,
        )
        self.receiver = PeerReceiver(cfg.cluster_id, self.node.receive)
        self.membership.connect(self.transport, self.receiver)
        self.leader_streams: set[WatchStream] = set()
        self._stop = asyncio.Event()
        self.self_client = SelfClient(self)

    def _send(self, msgs: list[Message]) -> None:
        self.transport.send(msgs)

    # ----- helpers for the services

    def fill_header(self, h: rpc_pb2.ResponseHeader) -> None:
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.node.term
        if not h.revision:
            h.revision = self.node.store.current_revision

    def check_size(self, request: object) -> None:
        size = request.ByteSize()  # type: ignore[attr-defined]
        if size > self.cfg.max_request_bytes:
            raise RequestTooLargeError()

    def _leader_stub(self, leader: int) -> peer_pb2_grpc.PeerStub:
        return self.transport.peers[leader].stub()

    async def local_renew(
        self, req: rpc_pb2.LeaseKeepAliveRequest
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        """Keepalive on the leader.

        As in etcd, a lease past its deadline whose revoke is still on its way is
        answered once the revoke is applied (TTL 0) or this member stops leading:
        "not found" must never come while the lease's keys can still be read.
        """
        resp = rpc_pb2.LeaseKeepAliveResponse(ID=req.ID)
        node = self.node
        while True:
            try:
                resp.TTL = node.store.lessor.renew(req.ID)
                break
            except LeaseExpiringError:
                await node.wait_applied(node.applied_index + 1)
            except LeaseNotFoundError:
                resp.TTL = 0
                break
        self.fill_header(resp.header)
        return resp

    async def local_time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        if self.node.role != Role.LEADER:
            raise NotPrimaryError()
        resp = self.node.store.lease_time_to_live(req)
        self.fill_header(resp.header)
        return resp

    async def _forward(
        self,
        call_local: Callable[[], Awaitable[R]],
        call_remote: Callable[[peer_pb2_grpc.PeerStub], Awaitable[R]],
    ) -> R:
        for _ in range(3):
            leader = await self.node.await_leader()
            if leader == self.member_id:
                try:
                    return await call_local()
                except NotPrimaryError:
                    await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
                    continue
            try:
                resp = await call_remote(self._leader_stub(leader))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
                    continue  # leader moved on
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise RequestTimeoutError() from None
                raise
            resp.header.member_id = self.member_id
            return resp
        raise NoLeaderError()

    async def lease_renew(
        self, req: rpc_pb2.LeaseKeepAliveRequest
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        timeout = self.cfg.election_ms / 1000 * 2
        resp: rpc_pb2.LeaseKeepAliveResponse = await self._forward(
            lambda: self.local_renew(req), lambda stub: stub.LeaseRenew(req, timeout=timeout)
        )
        return resp

    async def lease_time_to_live(
        self, req: rpc_pb2.LeaseTimeToLiveRequest
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        timeout = self.cfg.election_ms / 1000 * 2
        resp: rpc_pb2.LeaseTimeToLiveResponse = await self._forward(
            lambda: self.local_time_to_live(req),
            lambda stub: stub.LeaseTimeToLive(req, timeout=timeout),
        )
        return resp

    async def member_list(self) -> list[rpc_pb2.Member]:
        return [m.to_pb() for m in self.membership.described()]

    async def move_leader(self, target: int) -> None:
        self.node.raft.transfer_leadership(target)
        deadline = time.monotonic() + self.cfg.request_timeout
        while self.node.leader_id != target:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeoutError()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.node.leader_changed.wait(), left)

    # ----- HTTP

    def _health(self) -> tuple[int, str, str]:
        if self.node.leader_id and self.membership.published.is_set():
            return 200, "application/json", json_body({"health": "true", "reason": ""})
        return 503, "application/json", json_body({"health": "false", "reason": "RAFT NO LEADER"})

    def _routes(self) -> dict[str, Handler]:
        version = json_body({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION})
        return {
            "/health": self._health,
            "/readyz": lambda: (
                (200, "text/plain", "ok\n")
                if self.node.leader_id and self.membership.published.is_set()
                else (503, "text/plain", "not ready: no leader\n")
            ),
            "/livez": lambda: (200, "text/plain", "ok\n"),
            "/version": lambda: (200, "application/json", version),
            "/metrics": lambda: (200, "text/plain; version=0.0.4", self.node.metrics.render()),
        }

    # ----- lifecycle

    async def _monitor_leader(self) -> None:
        """Cancel require-leader watch streams once the leader is gone for a while."""
        interval = self.cfg.election_ms / 1000
        while True:
            await asyncio.sleep(interval)
            since = self.node.no_leader_since
            if since is not None and time.monotonic() - since >= NO_LEADER_CHECKS * interval:
                for stream in list(self.leader_streams):
                    stream.close()
                self.leader_streams.clear()

    def stop(self) -> None:
        self._stop.set()

    async def _serve_clients_once_published(self, client: grpc.aio.Server) -> None:
        """Like etcd, serve clients once this member's attributes are applied here."""
        await self.membership.published.wait()
        await client.start()

    async def run(self) -> None:
        cfg = self.cfg
        max_recv = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        client = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_recv),
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_concurrent_streams", 2**31 - 1),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                ("grpc.so_reuseport", 0),
            ]
        )
        rpc_pb2_grpc.add_KVServicer_to_server(api.KVService(self), client)  # type: ignore[no-untyped-call]
        rpc_pb2_grpc.add_WatchServicer_to_server(api.WatchService(self), client)  # type: ignore[no-untyped-call]
        rpc_pb2_grpc.add_LeaseServicer_to_server(api.LeaseService(self), client)  # type: ignore[no-untyped-call]
        rpc_pb2_grpc.add_ClusterServicer_to_server(api.ClusterService(self), client)  # type: ignore[no-untyped-call]
        rpc_pb2_grpc.add_MaintenanceServicer_to_server(api.MaintenanceService(self), client)  # type: ignore[no-untyped-call]
        v3lock_pb2_grpc.add_LockServicer_to_server(LockService(self, self.self_client), client)  # type: ignore[no-untyped-call]
        v3election_pb2_grpc.add_ElectionServicer_to_server(  # type: ignore[no-untyped-call]
            ElectionService(self, self.self_client), client
        )
        for url in cfg.listen_client_urls:
            host, port = host_port(url)
            if is_https(url):
                client.add_secure_port(f"{host}:{port}", server_credentials(cfg.client_tls))
            else:
                client.add_insecure_port(f"{host}:{port}")
        peer = grpc.aio.server(
            options=[
                *GRPC_OPTIONS,
                ("grpc.so_reuseport", 0),
                # Our peers ping idle streams every 2 s: let them.
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
            ]
        )
        peer_pb2_grpc.add_PeerServicer_to_server(PeerService(self, self.receiver), peer)  # type: ignore[no-untyped-call]
        for url in cfg.listen_peer_urls:
            host, port = host_port(url)
            if is_https(url):
                peer.add_secure_port(f"{host}:{port}", server_credentials(cfg.peer_tls))
            else:
                peer.add_insecure_port(f"{host}:{port}")
        http_servers = []
        await peer.start()
        try:
            for url in cfg.listen_metrics_urls:
                host, port = host_port(url)
                context = http_ssl_context(cfg.client_tls) if is_https(url) else None
                http_servers.append(await serve_http(host, port, self._routes(), context))
            log.info(
                "member %s (%x) serving clients on %s, peers on %s, http on %s",
                cfg.name,
                self.member_id,
                ",".join(cfg.listen_client_urls),
                ",".join(cfg.listen_peer_urls),
                ",".join(cfg.listen_metrics_urls) or "-",
            )
            async with asyncio.TaskGroup() as tg:
                raft_task = tg.create_task(self.node.run())
                others = [
                    tg.create_task(self.node.run_ticker()),
                    tg.create_task(self.node.run_lessor()),
                    tg.create_task(self.node.run_watch_sync()),
                    tg.create_task(self.transport.run()),
                    tg.create_task(self._monitor_leader()),
                    tg.create_task(self.membership.publish()),
                    tg.create_task(self._serve_clients_once_published(client)),
                ]
                await self._stop.wait()
                log.info("member %s stopping", cfg.name)
                await client.stop(grace=0.5)
                for t in others:
                    t.cancel()
                self.node.stop()
                await raft_task
        finally:
            for h in http_servers:
                h.close()
            await self.self_client.close()
            await client.stop(grace=None)
            await peer.stop(grace=None)
            await self.transport.close()


async def serve(cfg: ServerConfig) -> None:
    """Run one member until SIGTERM or SIGINT."""
    cfg.validate()
    joined = None
    if cfg.initial_cluster_state == "existing" and not WAL.exists(
        Path(cfg.data_dir) / "member" / "wal"
    ):
        joined = await discover_existing(cfg)
    server = EtcdServer(cfg, joined)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    await server.run()
