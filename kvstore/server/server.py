"""One etcd-compatible member: node driver + peer transport + client services + HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import socket
import time
from pathlib import Path

from kvstore import rpc
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.raft.types import Message, SnapshotMetadata
from kvstore.server import corruption
from kvstore.server.bootstrap import bootstrap
from kvstore.server.config import GRPC_OVERHEAD_BYTES, ServerConfig, host_port, is_https
from kvstore.server.gcpauses import PauseKeeper
from kvstore.server.http import MemberHTTP
from kvstore.server.leases import LeaseForwarder, expire_leases
from kvstore.server.membership import ClusterMembership, Member, discover_existing
from kvstore.server.node import HELD_UP_WARN_TICKS, Node
from kvstore.server.peerlistener import CallSpec, PeerListener
from kvstore.server.peerwire import PeerMethod
from kvstore.server.services import Core, SelfClient, method_table
from kvstore.server.stallwatch import StallWatch
from kvstore.server.status import to_status
from kvstore.server.tls import http_ssl_context
from kvstore.server.transport import SnapshotUnavailable, Transport
from kvstore.storage import WAL

log = logging.getLogger(__name__)


CLIENT_STOP_GRACE_SECONDS = 0.5
"""When stopping, calls in flight get this long to finish."""
NO_LEADER_CHECKS = 3
"""Require-leader streams are cancelled after this many election timeouts without a leader."""


class EtcdServer:
    """A member. ``await run()`` serves until ``stop()`` (or SIGTERM/SIGINT via ``serve``)."""

    def __init__(self, cfg: ServerConfig, joined: tuple[int, list[Member]] | None = None) -> None:
        """``joined``: the cluster ID and members learned when joining an existing cluster."""
        cfg.validate()
        members = None
        if joined is not None:
            mine = sorted(cfg.initial_advertise_peer_urls)
            joined_id = next(m.id for m in joined[1] if sorted(m.peer_urls) == mine)
            cfg = dataclasses.replace(cfg, cluster_id=joined[0], self_id=joined_id)
            members = joined[1]
        storage = bootstrap(cfg)
        # A restarted member keeps the IDs in its WAL, whatever the flags say now.
        cfg = dataclasses.replace(cfg, self_id=storage.member_id, cluster_id=storage.cluster_id)
        self.cfg = cfg
        self.node = Node(cfg, storage, self._send)
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
            self._snapshot_image,
        )
        self.listener = PeerListener(cfg.cluster_id, self.node.receive)
        self.membership.connect(self.transport, self.listener)
        self.leases = LeaseForwarder(self.node, self.transport)
        self.core = Core(cfg, self.node, self.membership, self.leases)
        m = self.membership
        self.listener.calls = {
            PeerMethod.LEASE_RENEW: CallSpec(
                rpc_pb2.LeaseKeepAliveRequest, self.leases.local_renew
            ),
            PeerMethod.LEASE_TIME_TO_LIVE: CallSpec(
                rpc_pb2.LeaseTimeToLiveRequest, self.leases.local_time_to_live
            ),
            PeerMethod.MEMBER_ADD: CallSpec(rpc_pb2.MemberAddRequest, m.add_local),
            PeerMethod.MEMBER_REMOVE: CallSpec(rpc_pb2.MemberRemoveRequest, m.remove_local),
            PeerMethod.MEMBER_UPDATE: CallSpec(rpc_pb2.MemberUpdateRequest, m.update_local),
            PeerMethod.MEMBER_PROMOTE: CallSpec(rpc_pb2.MemberPromoteRequest, m.promote_local),
            PeerMethod.MEMBER_LIST: CallSpec(rpc_pb2.MemberListRequest, self._member_list),
            PeerMethod.HASH_KV: CallSpec(rpc_pb2.HashKVRequest, self._hash_kv),
        }
        self.self_client = SelfClient(cfg)
        self.clients = rpc.Server(
            method_table(self.core, self.self_client),
            max_receive_bytes=cfg.max_request_bytes + GRPC_OVERHEAD_BYTES,
            max_concurrent_streams=cfg.max_concurrent_streams,
            error_mapper=to_status,
        )
        self.http = MemberHTTP(self.core, self.clients)
        self._stop = asyncio.Event()

    def _send(self, msgs: list[Message]) -> None:
        self.transport.send(msgs)

    async def _snapshot_image(self, peer: int) -> tuple[SnapshotMetadata, Path]:
        """The state for a peer that needs a snapshot, copied into a directory of its own."""
        dest = Path(self.node.snapshotter.snapshots.dir) / f"outgoing-{peer:x}"
        image = await self.node.snapshot_image(dest)
        if image is None:
            raise SnapshotUnavailable("a large entry is being applied; Raft sends it again")
        return image

    async def _member_list(self, request: rpc_pb2.MemberListRequest) -> rpc_pb2.MemberListResponse:
        """For a member joining with --initial-cluster-state existing: who is in the cluster."""
        resp = rpc_pb2.MemberListResponse()
        resp.members.extend(m.to_pb() for m in self.membership.described())
        self.core.fill_header(resp.header)
        return resp

    async def _hash_kv(self, request: rpc_pb2.HashKVRequest) -> rpc_pb2.HashKVResponse:
        """For the corruption checks of the other members (never refused for auth, as etcd's
        peer endpoint is not)."""
        h, compact, _ = self.node.store.hash_kv(request.revision)
        resp = rpc_pb2.HashKVResponse(hash=h, compact_revision=compact)
        self.core.fill_header(resp.header)
        return resp

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
        split_http = bool(self.cfg.listen_client_http_urls)
        for url in self.cfg.listen_client_urls:
            host, port = host_port(url)
            context = http_ssl_context(self.cfg.client_tls) if is_https(url) else None
            await self.clients.listen(
                host, port, context, http1=None if split_http else self.http.protocol
            )
        for url in self.cfg.listen_client_http_urls:
            host, port = host_port(url)
            context = http_ssl_context(self.cfg.client_tls) if is_https(url) else None
            await self.http.listen(host, port, context, gateway=True)
        self.http.serving_clients = True

    async def run(self) -> None:
        cfg = self.cfg
        _check_free([*cfg.listen_client_urls, *cfg.listen_client_http_urls])
        try:
            for url in cfg.listen_peer_urls:
                await self.listener.listen(url, cfg.peer_tls)
            for url in cfg.listen_metrics_urls:
                host, port = host_port(url)
                context = http_ssl_context(cfg.client_tls) if is_https(url) else None
                await self.http.listen(host, port, context, gateway=False)
            log.info(
                "member %s (%x) serving clients on %s, peers on %s, http on %s",
                cfg.name,
                self.member_id,
                ",".join(cfg.listen_client_urls),
                ",".join(cfg.listen_peer_urls),
                ",".join(cfg.listen_metrics_urls) or "-",
            )
            await corruption.check_initial(self.core)  # before serving clients, as etcd does
            stalls = StallWatch(
                HELD_UP_WARN_TICKS * cfg.heartbeat_ms / 1000, f"member {self.member_id:x}"
            )
            async with asyncio.TaskGroup() as tg:
                raft_task = tg.create_task(self.node.run())
                others = [
                    tg.create_task(stalls.run_beats()),
                    tg.create_task(self.node.run_ticker()),
                    tg.create_task(expire_leases(self.node)),
                    tg.create_task(self.node.run_watch_sync()),
                    tg.create_task(self.transport.run()),
                    tg.create_task(self._monitor_leader()),
                    tg.create_task(self.membership.publish()),
                    tg.create_task(self._serve_clients_once_published()),
                    tg.create_task(corruption.monitor(self.core)),
                ]
                await self._stop.wait()
                log.info("member %s stopping", cfg.name)
                await self.clients.stop(grace=CLIENT_STOP_GRACE_SECONDS)
                for t in others:
                    t.cancel()
                self.node.stop()
                await raft_task
        finally:
            await self.http.close()
            await self.self_client.close()
            await self.clients.stop()
            await self.listener.close()
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
    # Everything alive now (modules, the opened store, the restored key index) lives as
    # long as the member: out of the collector's sight, a full collection scans only what
    # came since, which keeps its pauses short for Raft heartbeats; what outlives a full
    # collection later is frozen in turn (gcpauses).
    gc.collect()
    gc.freeze()
    pauses = PauseKeeper()
    pauses.install()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    try:
        await server.run()
    finally:
        pauses.uninstall()
