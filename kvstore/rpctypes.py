"""etcd's error messages, the ones client and server must agree on word for word.

The server sends them as gRPC status details (with etcd's status codes, kept
next to each error class); the client maps them back to typed exceptions.
"""

from __future__ import annotations

ERR_EMPTY_KEY = "etcdserver: key is not provided"
ERR_KEY_NOT_FOUND = "etcdserver: key not found"
ERR_VALUE_PROVIDED = "etcdserver: value is provided"
ERR_LEASE_PROVIDED = "etcdserver: lease is provided"
ERR_TOO_MANY_OPS = "etcdserver: too many operations in txn request"
ERR_DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
ERR_INVALID_SORT_OPTION = "etcdserver: invalid sort option"
ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
ERR_FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
ERR_NO_SPACE = "etcdserver: mvcc: database space exceeded"
ERR_CORRUPT = "etcdserver: corrupt cluster"
ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
ERR_LEASE_EXISTS = "etcdserver: lease already exists"
ERR_LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
ERR_NOT_LEADER = "etcdserver: not leader"
ERR_NO_LEADER = "etcdserver: no leader"
ERR_TIMEOUT = "etcdserver: request timed out"
ERR_TIMEOUT_LEADER_TRANSFER = "etcdserver: request timed out, leader transfer took too long"
ERR_BAD_LEADER_TRANSFEREE = "etcdserver: bad leader transferee"
ERR_LEADER_CHANGED = "etcdserver: leader changed"
ERR_STOPPED = "etcdserver: server stopped"
ERR_REQUEST_TOO_LARGE = "etcdserver: request is too large"
ERR_TOO_MANY_REQUESTS = "etcdserver: too many requests"
ERR_NOT_CAPABLE = "etcdserver: not capable"
ERR_MEMBER_NOT_FOUND = "etcdserver: member not found"
ERR_MEMBER_EXISTS = "etcdserver: member ID already exist"
ERR_PEER_URL_EXISTS = "etcdserver: Peer URLs already exists"
ERR_MEMBER_BAD_URLS = "etcdserver: given member URLs are invalid"
ERR_MEMBER_NOT_LEARNER = "etcdserver: can only promote a learner member"
ERR_LEARNER_NOT_READY = "etcdserver: can only promote a learner member which is in sync with leader"
ERR_TOO_MANY_LEARNERS = "etcdserver: too many learner members in cluster"
ERR_NOT_ENOUGH_STARTED_MEMBERS = (
    "etcdserver: re-configuration failed due to not enough started members"
)
ERR_UNHEALTHY = "etcdserver: unhealthy cluster"
