"""The gateway's routes: etcd's ``google.api.http`` bindings (all ``POST``, body ``*``).

From etcd 3.5's rpc.proto, v3lock.proto and v3election.proto; a test checks
this table against those files. Where two methods share a path
(``/v3/maintenance/hash`` is bound to both Hash and HashKV in etcd 3.5), the
gateway's mux takes the first registered, Hash.
"""

from __future__ import annotations

KV = "/etcdserverpb.KV/"
WATCH = "/etcdserverpb.Watch/"
LEASE = "/etcdserverpb.Lease/"
CLUSTER = "/etcdserverpb.Cluster/"
MAINTENANCE = "/etcdserverpb.Maintenance/"
AUTH = "/etcdserverpb.Auth/"
LOCK = "/v3lockpb.Lock/"
ELECTION = "/v3electionpb.Election/"

ROUTES: dict[str, str] = {
    "kv/range": KV + "Range",
    "kv/put": KV + "Put",
    "kv/deleterange": KV + "DeleteRange",
    "kv/txn": KV + "Txn",
    "kv/compaction": KV + "Compact",
    "watch": WATCH + "Watch",
    "lease/grant": LEASE + "LeaseGrant",
    "lease/revoke": LEASE + "LeaseRevoke",
    "kv/lease/revoke": LEASE + "LeaseRevoke",
    "lease/keepalive": LEASE + "LeaseKeepAlive",
    "lease/timetolive": LEASE + "LeaseTimeToLive",
    "kv/lease/timetolive": LEASE + "LeaseTimeToLive",
    "lease/leases": LEASE + "LeaseLeases",
    "kv/lease/leases": LEASE + "LeaseLeases",
    "cluster/member/add": CLUSTER + "MemberAdd",
    "cluster/member/remove": CLUSTER + "MemberRemove",
    "cluster/member/update": CLUSTER + "MemberUpdate",
    "cluster/member/list": CLUSTER + "MemberList",
    "cluster/member/promote": CLUSTER + "MemberPromote",
    "maintenance/alarm": MAINTENANCE + "Alarm",
    "maintenance/status": MAINTENANCE + "Status",
    "maintenance/defragment": MAINTENANCE + "Defragment",
    "maintenance/hash": MAINTENANCE + "Hash",
    "maintenance/snapshot": MAINTENANCE + "Snapshot",
    "maintenance/transfer-leadership": MAINTENANCE + "MoveLeader",
    "maintenance/downgrade": MAINTENANCE + "Downgrade",
    "auth/enable": AUTH + "AuthEnable",
    "auth/disable": AUTH + "AuthDisable",
    "auth/status": AUTH + "AuthStatus",
    "auth/authenticate": AUTH + "Authenticate",
    "auth/user/add": AUTH + "UserAdd",
    "auth/user/get": AUTH + "UserGet",
    "auth/user/list": AUTH + "UserList",
    "auth/user/delete": AUTH + "UserDelete",
    "auth/user/changepw": AUTH + "UserChangePassword",
    "auth/user/grant": AUTH + "UserGrantRole",
    "auth/user/revoke": AUTH + "UserRevokeRole",
    "auth/role/add": AUTH + "RoleAdd",
    "auth/role/get": AUTH + "RoleGet",
    "auth/role/list": AUTH + "RoleList",
    "auth/role/delete": AUTH + "RoleDelete",
    "auth/role/grant": AUTH + "RoleGrantPermission",
    "auth/role/revoke": AUTH + "RoleRevokePermission",
    "lock/lock": LOCK + "Lock",
    "lock/unlock": LOCK + "Unlock",
    "election/campaign": ELECTION + "Campaign",
    "election/proclaim": ELECTION + "Proclaim",
    "election/leader": ELECTION + "Leader",
    "election/observe": ELECTION + "Observe",
    "election/resign": ELECTION + "Resign",
}
"""Path under a prefix -> the gRPC method it calls."""

PREFIXES = ("/v3/", "/v3beta/", "/v3alpha/")
"""``/v3/`` is etcd 3.4+'s; etcd 3.5 still rewrites ``/v3beta/`` to it, and clients written
for etcd 3.2 and older use ``/v3alpha/`` (etcd 3.5 answers 404 there; we serve it)."""
