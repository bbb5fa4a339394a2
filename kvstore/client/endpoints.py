"""Channels to a list of endpoints, and which one we currently talk to."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

log = logging.getLogger(__name__)

# Transport settings shared by every channel. Reconnect backoff is kept short so
# a restarted member is used again within a second or two (gRPC's default
# backoff grows to two minutes). Keepalive pings notice a silent peer (a
# paused process, a dropped link) on streams that would otherwise hang; 10 s
# stays above etcd's default minimum ping interval of 5 s. gRPC's transparent
# retries stay on: they resend only calls that never reached the wire, such as
# one issued on a connection whose peer has just died.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
]


@dataclass(frozen=True)
class TLSConfig:
    """TLS towards the servers, like etcdctl's ``--cacert``, ``--cert`` and ``--key``.

    ``ca_file`` verifies the servers' certificates (default: the system's CAs);
    ``cert_file`` and ``key_file`` are the client certificate for servers that
    require one (etcd's ``--client-cert-auth``).
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLSConfig: cert_file and key_file must both be given")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def normalize_endpoint(endpoint: str) -> str:
    """Accept ``host:port``, ``http://host:port`` or ``https://host:port``; return ``host:port``."""
    for scheme in ("http://", "https://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    endpoint = endpoint.rstrip("/")
    if not endpoint or ":" not in endpoint:
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return endpoint


class CallAuth:
    """Who a client's calls come from: its token (after a login) and fixed metadata.

    ``relogin`` (set by a client that has a user and password) gets a fresh token;
    calls and streams use it after etcd answers that their token is invalid or stale.
    """

    def __init__(self, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.token: str | None = None
        self.extra = extra
        self.relogin: Callable[[], Awaitable[None]] | None = None

    def metadata(self, base: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
        if self.token:
            return (*base, *self.extra, ("token", self.token))
        return (*base, *self.extra)


class EndpointPool:
    """One lazily created gRPC channel per endpoint, and a current endpoint.

    Calls go to the current endpoint; when it fails, :meth:`fail_over` moves
    to the next one in the list (round robin), the way etcd's clientv3 does.
    """

    def __init__(self, endpoints: Sequence[str], tls: TLSConfig | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        self.endpoints: list[str] = [normalize_endpoint(e) for e in endpoints]
        # Like clientv3, an https:// endpoint means TLS even without a TLSConfig.
        if tls is None and any(e.startswith("https://") for e in endpoints):
            tls = TLSConfig()
        self._credentials = None if tls is None else tls.credentials()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._current = 0

    @property
    def current(self) -> str:
        return self.endpoints[self._current]

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(
                    endpoint, self._credentials, options=CHANNEL_OPTIONS
                )
            self._channels[endpoint] = channel
        return channel

    def fail_over(self, failed: str) -> str:
        """Move past ``failed`` if it is still the current endpoint; return the new current one."""
        if self.current == failed and len(self.endpoints) > 1:
            self._current = (self._current + 1) % len(self.endpoints)
            log.info("endpoint %s failed; switching to %s", failed, self.current)
        return self.current

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(grace=None)
