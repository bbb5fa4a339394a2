"""One etcd-compatible member: node driver + peer transport + client services + HTTP."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

from kvstore import rpc
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.peerpb import peer_pb2_grpc
from kvstore.errors import RequestError
from kvstore.raft.types import Message
from kvstore.server import corruption
from kvstore.server.config import (
    CLUSTER_VERSION,
    GRPC_OVERHEAD_BYTES,
    SERVER_VERSION,
    ServerConfig,
    host_port,
    is_https,
)
from kvstore.server.http import Handler, json_body, serve_http
from kvstore.server.leases import LeaseForwarder
from kvstore.server.membership import ClusterMembership, Member, discover_existing
from kvstore.server.node import Node
from kvstore.server.services import Core, SelfClient, method_table
from kvstore.server.status import to_status
from kvstore.server.tls import http_ssl_context, server_credentials
from kvstore.server.transport import GRPC_OPTIONS, PeerReceiver, Transport
from kvstore.storage import WAL

log = logging.getLogger(__name__)

R = TypeVar("R")
_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}

NO_LEADER_CHECKS = 3
"""Require-leader streams are cancelled after this many election timeouts without a leader."""


class PeerService(peer_pb2_grpc.PeerServicer):
    """What members ask each other: Raft messages, snapshots, and calls only the leader answers."""

    def __init__(self, server: EtcdServer, receiver: PeerReceiver) -> None:
        self.s = server
        self.receiver = receiver

    async def Send(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.receiver.handle(request_iterator, context)

    async def SendSnapshot(self, request_iterator, context):  # type: ignore[no-untyped-def]
        return await self.receiver.handle_snapshot(request_iterator, context)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[R]]) -> R:
        try:
            return await fn()
        except RequestError as exc:
            code, message = to_status(exc)
            await context.abort(_GRPC_CODES[code], message)
            raise

    async def LeaseRenew(
        self, request: rpc_pb2.LeaseKeepAliveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseKeepAliveResponse:
        return await self._call(context, lambda: self.s.leases.local_renew(request))

    async def LeaseTimeToLive(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        return await self._call(context, lambda: self.s.leases.local_time_to_live(request))

    async def MemberAdd(
        self, request: rpc_pb2.MemberAddRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberAddResponse:
        return await self._call(context, lambda: self.s.membership.add_local(request))

    async def MemberRemove(
        self, request: rpc_pb2.MemberRemoveRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberRemoveResponse:
        return await self._call(context, lambda: self.s.membership.remove_local(request))

    async def MemberUpdate(
        self, request: rpc_pb2.MemberUpdateRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberUpdateResponse:
        return await self._call(context, lambda: self.s.membership.update_local(request))

    async def MemberPromote(
        self, request: rpc_pb2.MemberPromoteRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberPromoteResponse:
        return await self._call(context, lambda: self.s.membership.promote_local(request))

    async def MemberList(
        self, request: rpc_pb2.MemberListRequest, context: grpc.aio.ServicerContext
    ) -> rpc_pb2.MemberListResponse:
        """For a member joining with --initial-cluster-state existing."""
        resp = rpc_pb2.MemberListResponse()
        resp.members.extend(m.to_pb() for m in self.s.membership.described())
        self.s.core.fill_header(resp.header)
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
        self.leases = LeaseForwarder(self.node, self.transport)
        self.core = Core(cfg, self.node, self.membership, self.leases)
        self.self_client = SelfClient(cfg)
        self.clients = rpc.Server(
            method_table(self.core, self.self_client),
            max_receive_bytes=cfg.max_request_bytes + GRPC_OVERHEAD_BYTES,
            error_mapper=to_status,
        )
        self._stop = asyncio.Event()

    def _send(self, msgs: list[Message]) -> None:
        self.transport.send(msgs)

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
                streams = self.core.leader_streams
                for stream in list(streams):
                    stream.close()
                streams.clear()

    def stop(self) -> None:
        self._stop.set()

    async def _serve_clients_once_published(self) -> None:
        """Like etcd, serve clients once this member's attributes are applied here."""
        await self.membership.published.wait()
        for url in self.cfg.listen_client_urls:
            host, port = host_port(url)
            context = http_ssl_context(self.cfg.client_tls) if is_https(url) else None
            await self.clients.listen(host, port, context)

    async def run(self) -> None:
        cfg = self.cfg
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
        _check_free(cfg.listen_client_urls)
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
            await corruption.check_initial(self.core)  # before serving clients, as etcd does
            async with asyncio.TaskGroup() as tg:
                raft_task = tg.create_task(self.node.run())
                others = [
                    tg.create_task(self.node.run_ticker()),
                    tg.create_task(self.node.run_lessor()),
                    tg.create_task(self.node.run_watch_sync()),
                    tg.create_task(self.transport.run()),
                    tg.create_task(self._monitor_leader()),
                    tg.create_task(self.membership.publish()),
                    tg.create_task(self._serve_clients_once_published()),
                    tg.create_task(corruption.monitor(self.core)),
                ]
                await self._stop.wait()
                log.info("member %s stopping", cfg.name)
                await self.clients.stop(grace=0.5)
                for t in others:
                    t.cancel()
                self.node.stop()
                await raft_task
        finally:
            for h in http_servers:
                h.close()
            await self.self_client.close()
            await self.clients.stop()
            await peer.stop(grace=None)
            await self.transport.close()


def _check_free(urls: list[str]) -> None:
    """Fail at start, as etcd does, when a client URL's port is taken (we bind it later)."""
    for url in urls:
        host, port = host_port(url)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"listen {host}:{port}: {exc.strerror}") from None


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
