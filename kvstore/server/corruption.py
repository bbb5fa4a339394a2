"""Corruption checks as etcd's: members compare their HashKV.

* ``--experimental-initial-corrupt-check``: before serving clients, a starting
  member hashes its key space at its own revision and asks every peer for
  HashKV at that revision; a different hash with the same compact revision
  means its data (or theirs) is corrupt, and the member refuses to start.
* ``--experimental-corrupt-check-time``: every interval the leader hashes
  its key space, asks the peers, confirms with a linearizable read that it
  still leads and hashes again; a member whose hash differs at the same
  compact revision, or that is ahead of the leader, gets a CORRUPT alarm,
  raised through Raft like any alarm (writes are then refused everywhere).

Peers are asked over their peer URLs (a HashKV call of the peer transport), as
etcd asks its peers' ``/members/hashkv``: the client API's HashKV is root's
once auth is enabled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.errors import RequestError
from kvstore.raft.types import Role
from kvstore.server.peerwire import PeerMethod
from kvstore.server.services.core import Core
from kvstore.server.transport import PeerUnreachableError, call_url

log = logging.getLogger(__name__)


class CorruptionError(RuntimeError):
    """This member's data disagrees with its peers'; it must not serve."""


@dataclass(frozen=True)
class PeerHash:
    member_id: int
    urls: tuple[str, ...]
    response: rpc_pb2.HashKVResponse | None
    error: str = ""


async def _ask(url: str, core: Core, revision: int) -> rpc_pb2.HashKVResponse:
    node = core.node
    return await call_url(
        url,
        core.cfg.peer_tls,
        node.cluster_id,
        node.id,
        PeerMethod.HASH_KV,
        rpc_pb2.HashKVRequest(revision=revision),
        rpc_pb2.HashKVResponse,
        core.cfg.request_timeout,
    )


async def peer_hashes(core: Core, revision: int) -> list[PeerHash]:
    """Every other member's HashKV at ``revision`` (or why it could not be had)."""
    peers = [m for m in core.membership.described() if m.id != core.node.id and m.peer_urls]

    async def one(member_id: int, urls: tuple[str, ...]) -> PeerHash:
        error = "no peer URL answered"
        for url in urls:
            try:
                return PeerHash(member_id, urls, await _ask(url, core, revision))
            except (PeerUnreachableError, RequestError) as exc:
                error = str(exc)
                log.warning("HashKV from member %x at %s: %s", member_id, url, error)
        return PeerHash(member_id, urls, None, error)

    return list(await asyncio.gather(*(one(m.id, m.peer_urls) for m in peers)))


async def check_initial(core: Core) -> None:
    """etcd's initial corruption check; raises CorruptionError on a mismatch."""
    if not core.cfg.initial_corrupt_check:
        return
    h, compact, rev = core.node.store.hash_kv(0)
    log.info("initial corruption check: local hash %x at revision %d (compact %d)", h, rev, compact)
    mismatches = 0
    for peer in await peer_hashes(core, rev):
        resp = peer.response
        if resp is None:
            log.warning("initial corruption check: member %x: %s", peer.member_id, peer.error)
            continue
        if resp.hash != h:
            if resp.compact_revision == compact:
                log.warning(
                    "member %x has hash %x at revision %d, we have %x",
                    peer.member_id,
                    resp.hash,
                    rev,
                    h,
                )
                mismatches += 1
            else:
                log.warning(
                    "member %x compacted at %d, we at %d: hashes not comparable",
                    peer.member_id,
                    resp.compact_revision,
                    compact,
                )
    if mismatches:
        raise CorruptionError(f"{core.node.id:x} found data inconsistency with peers")
    log.info("initial corruption check passed")


async def check_once(core: Core) -> int | None:
    """One leader's check (etcd's checkHashKV); returns the member alarmed, if any."""
    store = core.node.store
    h, compact, rev = store.hash_kv(0)
    peers = await peer_hashes(core, rev)
    await core.node.read_index()  # still the leader, and applied up to now
    h2, compact2, rev2 = store.hash_kv(0)
    suspect: int | None = None
    if h2 != h and rev2 == rev and compact2 == compact:
        log.warning("our own hash changed at the same revision %d: %x then %x", rev, h, h2)
        suspect = core.node.id
    for peer in peers:
        resp = peer.response
        if resp is None or suspect is not None:
            continue
        if resp.header.revision > rev2:
            log.warning(
                "member %x is at revision %d, ahead of the leader's %d",
                peer.member_id,
                resp.header.revision,
                rev2,
            )
            suspect = peer.member_id
        elif resp.compact_revision > compact2:
            log.warning(
                "member %x compacted at %d, past the leader's %d",
                peer.member_id,
                resp.compact_revision,
                compact2,
            )
            suspect = peer.member_id
        elif resp.compact_revision == compact and resp.hash != h:
            log.warning(
                "member %x has hash %x at revision %d, the leader %x",
                peer.member_id,
                resp.hash,
                rev,
                h,
            )
            suspect = peer.member_id
    if suspect is not None:
        alarm = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=suspect, alarm=rpc_pb2.CORRUPT
        )
        await core.node.propose(alarm)
    return suspect


async def monitor(core: Core) -> None:
    """etcd's periodic check (leader only), every ``corrupt_check_time`` seconds; 0: off."""
    interval = core.cfg.corrupt_check_time
    if interval <= 0:
        return
    log.info("corruption check every %.1fs", interval)
    while True:
        await asyncio.sleep(interval)
        if core.node.role != Role.LEADER:
            continue
        try:
            await check_once(core)
        except RequestError as exc:
            log.warning("corruption check failed: %s", exc)
