"""The Store page's data: each member's status, the leader changes seen, request rates.

Member status and metrics have no watch, so they are polled (every
``interval`` seconds): the member list, then ``Status`` of every member and
its Prometheus ``/metrics``. The leader is the member that says it leads at
the highest term. Rates use etcd's mvcc counters, which both etcd and our
store export: ``etcd_mvcc_put_total + etcd_mvcc_delete_total`` count the
writes a member applied (every member applies every write, so the cluster's
write rate is the highest member's), ``etcd_mvcc_range_total`` the reads it
served (the cluster's read rate is their sum).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import anyio
from prometheus_client.parser import text_string_to_metric_families

from dashboard.hub import Hub, Update
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client import Client, EtcdError
from kvstore.client.endpoints import normalize_endpoint

log = logging.getLogger(__name__)

TIMELINE_LENGTH = 100  # leader changes kept
RATE_SAMPLES = 180  # rate samples kept (3 minutes at the default interval)
METRICS_TIMEOUT = 1.5
# After no metrics URL of a member answered, how long before trying them again.
REDISCOVER_AFTER = 15.0
WRITE_COUNTERS = ("etcd_mvcc_put_total", "etcd_mvcc_delete_total")
READ_COUNTERS = ("etcd_mvcc_range_total",)
# Our members serve /metrics on their own listener, by default at the client port + 2.
OUR_METRICS_PORT_OFFSET = 2


def parse_counters(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The values of unlabelled counters ``names`` in a Prometheus text exposition."""
    wanted = set(names)
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and not sample.labels:
                found[sample.name] = sample.value
    return found


def metrics_candidates(client_url: str) -> list[str]:
    """Where a member's /metrics may be: on its client URL (etcd), or client port + 2 (ours)."""
    parts = urlsplit(client_url if "://" in client_url else f"http://{client_url}")
    urls = [urlunsplit((parts.scheme, parts.netloc, "/metrics", "", ""))]
    if parts.port is not None:
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port + OUR_METRICS_PORT_OFFSET}"
        urls.append(urlunsplit((parts.scheme, netloc, "/metrics", "", "")))
    return urls


@dataclass
class MetricsSource:
    """Where one member's metrics come from, found by trying candidates, and its last sample."""

    configured: str = ""
    url: str = ""
    error: str = ""
    retry_at: float = 0.0
    sample: tuple[float, float, float] | None = None  # (monotonic time, writes, reads)
    rates: dict[str, float] | None = None


@dataclass
class MemberState:
    id: int
    name: str
    client_urls: list[str]
    is_learner: bool
    status: pb.StatusResponse | None = None
    status_error: str = ""
    metrics: MetricsSource = field(default_factory=MetricsSource)

    @property
    def endpoint(self) -> str:
        return self.client_urls[0] if self.client_urls else ""

    def view(self, leader_id: int) -> dict[str, Any]:
        status = self.status
        errors = list(status.errors) if status is not None else []
        alarms = [e for e in errors if "alarm:" in e]
        if status is None:
            role = "down"
        elif self.is_learner or status.isLearner:
            role = "learner"
        elif status.header.member_id == leader_id and leader_id:
            role = "leader"
        else:
            role = "follower"
        healthy = status is not None and status.leader != 0 and not alarms
        return {
            "id": f"{self.id:x}",
            "name": self.name or f"{self.id:x}",
            "endpoint": self.endpoint,
            "role": role,
            "healthy": healthy,
            "term": status.raftTerm if status is not None else None,
            "commit_index": status.raftIndex if status is not None else None,
            "applied_index": status.raftAppliedIndex if status is not None else None,
            "db_size": status.dbSize if status is not None else None,
            "db_size_in_use": status.dbSizeInUse if status is not None else None,
            "version": status.version if status is not None else None,
            "leader_seen": f"{status.leader:x}" if status is not None and status.leader else "",
            "errors": [e for e in errors if e not in alarms],
            "alarms": alarms,
            "unreachable": self.status_error,
            "metrics_url": self.metrics.url,
            "metrics_error": self.metrics.error,
            "rates": self.metrics.rates,
        }


def _wall() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MemberMonitor:
    """Polls every member; publishes ``store`` updates to the hub."""

    def __init__(
        self,
        client: Client,
        hub: Hub,
        *,
        interval: float = 1.0,
        metrics_urls: dict[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.client = client
        self.hub = hub
        self.interval = interval
        self.metrics_urls = dict(metrics_urls or {})
        self.ssl_context = ssl_context
        self.members: dict[int, MemberState] = {}
        self.leader_id = 0
        self.leader_term = 0  # the term the current leader was seen leading in
        self.term = 0  # the highest term any member reported
        self.timeline: deque[dict[str, Any]] = deque(maxlen=TIMELINE_LENGTH)
        self.rates: deque[dict[str, Any]] = deque(maxlen=RATE_SAMPLES)
        self.list_error = ""
        self.polls = 0
        hub.add_source(lambda: [Update("store", self.view())])

    # ---- the view ----

    def view(self) -> dict[str, Any]:
        members = sorted(self.members.values(), key=lambda m: (m.name, m.id))
        leader = self.members.get(self.leader_id)
        return {
            "members": [m.view(self.leader_id) for m in members],
            "leader": (leader.name or f"{leader.id:x}") if leader else "",
            "leader_id": f"{self.leader_id:x}" if self.leader_id else "",
            "term": self.term,
            "timeline": list(self.timeline),
            "rates": list(self.rates),
            "list_error": self.list_error,
            "polls": self.polls,
            "now": time.time(),
        }

    # ---- polling ----

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=METRICS_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.poll(session)
                self.hub.publish("store", self.view())
                await anyio.sleep(self.interval)  # status and metrics have no watch

    async def poll(self, session: aiohttp.ClientSession) -> None:
        await self._refresh_members()
        async with anyio.create_task_group() as tasks:
            for member in list(self.members.values()):
                tasks.start_soon(self._poll_status, member)
                tasks.start_soon(self._poll_metrics, session, member)
        self._note_leader()
        self._note_rates()
        self.polls += 1

    async def _refresh_members(self) -> None:
        try:
            response = await self.client.member_list(timeout=max(self.interval, 1.0))
        except EtcdError as error:
            self.list_error = f"member list: {error}"
            if not self.members:  # nothing known yet: at least show the endpoints
                for index, endpoint in enumerate(self.client.endpoints):
                    self.members[-index - 1] = MemberState(-index - 1, endpoint, [endpoint], False)
            return
        self.list_error = ""
        fresh: dict[int, MemberState] = {}
        for member in response.members:
            old = self.members.get(member.ID)
            state = MemberState(member.ID, member.name, list(member.clientURLs), member.isLearner)
            if old is not None and old.client_urls == state.client_urls:
                state.status, state.status_error, state.metrics = (
                    old.status,
                    old.status_error,
                    old.metrics,
                )
            configured = self.metrics_urls.get(member.name, "")
            if configured != state.metrics.configured:
                state.metrics = MetricsSource(configured=configured, url=configured)
            fresh[member.ID] = state
        self.members = fresh

    async def _poll_status(self, member: MemberState) -> None:
        if not member.endpoint:
            member.status, member.status_error = None, "no client URL yet"
            return
        try:
            endpoint = normalize_endpoint(member.endpoint)
            member.status = await self.client.status(endpoint, timeout=max(self.interval, 1))
            member.status_error = ""
        except (EtcdError, ValueError) as error:
            member.status, member.status_error = None, str(error)

    async def _poll_metrics(self, session: aiohttp.ClientSession, member: MemberState) -> None:
        source = member.metrics
        if not source.url:
            if time.monotonic() < source.retry_at or not member.endpoint:
                return
            candidates = metrics_candidates(member.endpoint)
        else:
            candidates = [source.url]
        errors = []
        for url in candidates:
            try:
                counters = await self._scrape(session, url)
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                errors.append(f"{url}: {type(error).__name__} {error}".strip())
                continue
            missing = [n for n in (*WRITE_COUNTERS, *READ_COUNTERS) if n not in counters]
            if missing:
                errors.append(f"{url}: no {', '.join(missing)}")
                continue
            source.url, source.error = url, ""
            self._sample(source, counters)
            return
        source.error = "; ".join(errors)
        source.rates = source.sample = None
        if not source.configured:
            source.url = ""
            source.retry_at = time.monotonic() + REDISCOVER_AFTER

    async def _scrape(self, session: aiohttp.ClientSession, url: str) -> dict[str, float]:
        async with session.get(url, ssl=self.ssl_context or True) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            text = await response.text()
        return parse_counters(text, (*WRITE_COUNTERS, *READ_COUNTERS))

    @staticmethod
    def _sample(source: MetricsSource, counters: dict[str, float]) -> None:
        now = time.monotonic()
        writes = sum(counters[n] for n in WRITE_COUNTERS)
        reads = sum(counters[n] for n in READ_COUNTERS)
        previous, source.sample = source.sample, (now, writes, reads)
        if previous is None or now <= previous[0] or writes < previous[1] or reads < previous[2]:
            source.rates = None  # the first sample, or the member restarted (counters reset)
            return
        elapsed = now - previous[0]
        source.rates = {
            "writes": (writes - previous[1]) / elapsed,
            "reads": (reads - previous[2]) / elapsed,
        }

    def _note_leader(self) -> None:
        """The member leading at the highest term; a change goes on the timeline."""
        best: tuple[int, int] = (0, 0)  # (term, leader id)
        for member in self.members.values():
            status = member.status
            if status is None:
                continue
            leads = status.leader == status.header.member_id
            if leads and status.raftTerm >= best[0]:
                best = (status.raftTerm, status.leader)
            self.term = max(self.term, status.raftTerm)
        term, leader = best
        if leader != self.leader_id or (leader and term != self.leader_term):
            self.leader_id, self.leader_term = leader, term
            known = self.members.get(leader)
            name = (known.name or f"{leader:x}") if known else ""
            self.timeline.append(
                {"at": _wall(), "t": time.time(), "leader": name, "id": f"{leader:x}", "term": term}
            )

    def _note_rates(self) -> None:
        sampled = [m.metrics.rates for m in self.members.values() if m.metrics.rates is not None]
        if not sampled:
            return
        self.rates.append(
            {
                "t": time.time(),
                "writes": round(max(r["writes"] for r in sampled), 2),
                "reads": round(sum(r["reads"] for r in sampled), 2),
            }
        )
