"""A one-member configuration for tests that drive a Node in this process (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvstore.server.config import ServerConfig

UNUSED_URL = "http://127.0.0.1:1"
"""Never listened on: these tests call the Node directly."""


def single_member_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    """Member ``m0`` alone in its cluster, validated; ``overrides`` set other flags."""
    url = UNUSED_URL
    cfg = ServerConfig(
        name="m0",
        data_dir=data_dir,
        listen_client_urls=[url],
        advertise_client_urls=[url],
        listen_peer_urls=[url],
        initial_advertise_peer_urls=[url],
        initial_cluster=f"m0={url}",
        **overrides,
    )
    cfg.validate()
    return cfg
