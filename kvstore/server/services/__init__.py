"""The client-facing services, as plain functions over a :class:`~.core.Core`.

:func:`method_table` gives every gRPC path this member answers; the gRPC
server serves it, and the JSON gateway maps its routes onto the same entries.
"""

from __future__ import annotations

from kvstore.rpc import Method, methods_of
from kvstore.server.services.access import guard_all
from kvstore.server.services.auth import AuthService
from kvstore.server.services.cluster import ClusterService
from kvstore.server.services.concurrency import ElectionService, LockService, SelfClient
from kvstore.server.services.core import Core
from kvstore.server.services.kv import KVService
from kvstore.server.services.lease import LeaseService
from kvstore.server.services.maintenance import MaintenanceService
from kvstore.server.services.watch import WatchService

__all__ = ["Core", "SelfClient", "method_table"]


def method_table(core: Core, self_client: SelfClient) -> dict[str, Method]:
    """Every client method, each behind the access guard (the one place auth is checked)."""
    table = methods_of(
        KVService(core).methods(),
        WatchService(core).methods(),
        LeaseService(core).methods(),
        ClusterService(core).methods(),
        MaintenanceService(core).methods(),
        LockService(core, self_client).methods(),
        ElectionService(core, self_client).methods(),
        AuthService(core).methods(),
    )
    return guard_all(core, table)
