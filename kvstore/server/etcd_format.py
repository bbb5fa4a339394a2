"""Our backend in etcd's own layout: ten bbolt buckets with etcd's encodings, both ways.

etcd keeps its state in one bbolt file with the buckets ``alarm``, ``auth``,
``authRoles``, ``authUsers``, ``cluster``, ``key``, ``lease``, ``members``,
``members_removed`` and ``meta``. Our LMDB backend holds the same facts:

=============  ==============================  ===============================
etcd bucket    etcd encoding                   ours
=============  ==============================  ===============================
key            17-byte revision (+``t``) ->     the same bytes (our key bucket
               ``mvccpb.KeyValue``              is laid out as etcd's)
meta           ``consistent_index``, ``term``   consistent index, compaction
               u64 BE; compaction revisions     revisions as 8-byte integers;
               as 17-byte revisions;            the membership as one record
               ``confState`` JSON
lease          ID u64 BE -> ``leasepb.Lease``   ID -> (TTL, remaining TTL)
alarm          ``AlarmMember`` bytes -> empty    (member ID, alarm type)
members        hex ID -> member JSON            the membership record
cluster        ``clusterVersion``               (the server's version)
auth           ``authEnabled`` 0/1 byte,        the same keys and bytes
               ``authRevision`` u64 BE          (``authRevision`` 1 if never set)
authUsers      name -> ``authpb.User``          the same
authRoles      name -> ``authpb.Role``          the same
=============  ==============================  ===============================

``etcd_buckets`` produces etcd's buckets from a pinned view of our store (for
backups and for Maintenance.Hash); ``import_etcd_backend`` fills an empty
backend of ours from an etcd bbolt file.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import google_crc32c
import lmdb
from google.protobuf.message import DecodeError

from kvstore._pb.authpb import auth_pb2
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.leasepb import lease_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore.mvcc import backend as bk
from kvstore.mvcc.revision import REV_KEY_LEN, TOMBSTONE_KEY_LEN, rev_key, rev_of
from kvstore.mvcc.store import StoreView
from kvstore.server.membership import MEMBERS_RECORD, Member, MemberRegistry
from kvstore.storage.bbolt import BoltError, BoltReader

log = logging.getLogger(__name__)

ALARM = b"alarm"
AUTH = b"auth"
AUTH_ROLES = b"authRoles"
AUTH_USERS = b"authUsers"
CLUSTER = b"cluster"
KEY = b"key"
LEASE = b"lease"
MEMBERS = b"members"
MEMBERS_REMOVED = b"members_removed"
META = b"meta"
BUCKETS = (ALARM, AUTH, AUTH_ROLES, AUTH_USERS, CLUSTER, KEY, LEASE, MEMBERS, MEMBERS_REMOVED, META)
"""etcd's buckets in bbolt's (byte) order."""

META_TERM = b"term"
META_CONF_STATE = b"confState"
CLUSTER_VERSION_KEY = b"clusterVersion"
AUTH_ENABLED = b"authEnabled"
AUTH_REVISION = b"authRevision"
REMOVED_MARK = b"removed"

HASH_IGNORED = {(META, bk.META_CONSISTENT_INDEX), (META, META_TERM)}
"""etcd's DefaultIgnores: member-local keys that Maintenance.Hash leaves out."""

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_ALARM = struct.Struct(">QI")
_OURS_ONLY_META = {MEMBERS_RECORD}
"""Our meta records that etcd's layout spells differently (here: the members buckets)."""

Items = Iterator[tuple[bytes, bytes]]


class EtcdFormatError(ValueError):
    """A bbolt file whose content is not an etcd backend we can take; one line for the user."""


def _cursor(view: StoreView, db: lmdb._Database) -> Items:
    for k, v in view.txn.cursor(db=db):
        yield cast(bytes, k), cast(bytes, v)


def _go_json(doc: dict[str, object]) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, >, & escaped."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode()


def _members_json(m: Member) -> bytes:
    """etcd's member JSON (Go's encoding of membership.Member, omitempty fields left out)."""
    doc: dict[str, object] = {"id": m.id, "peerURLs": list(m.peer_urls)}
    if m.is_learner:
        doc["isLearner"] = True
    if m.name:
        doc["name"] = m.name
    if m.client_urls:
        doc["clientURLs"] = list(m.client_urls)
    return _go_json(doc)


def _conf_state(registry: MemberRegistry) -> bytes:
    """raftpb.ConfState as etcd 3.5 stores it in ``meta/confState``."""
    doc: dict[str, object] = {}
    voters = [m.id for m in registry.sorted() if not m.is_learner]
    learners = [m.id for m in registry.sorted() if m.is_learner]
    if voters:
        doc["voters"] = voters
    if learners:
        doc["learners"] = learners
    doc["auto_leave"] = False
    return _go_json(doc)


def _registry(view: StoreView) -> MemberRegistry | None:
    record = view.txn.get(MEMBERS_RECORD, db=view.backend.meta_db)
    return None if record is None else MemberRegistry.decode(cast(bytes, record))


def _meta_items(view: StoreView, registry: MemberRegistry | None, term: int) -> Items:
    items: dict[bytes, bytes] = {}
    for name, raw in _cursor(view, view.backend.meta_db):
        if name in _OURS_ONLY_META:
            continue
        if name in (bk.META_COMPACT_REV, bk.META_SCHEDULED_COMPACT_REV):
            (rev,) = _I64.unpack(raw)
            if rev >= 0:
                items[name] = rev_key(rev, 0)
        elif name == bk.META_CONSISTENT_INDEX:
            items[name] = _U64.pack(_I64.unpack(raw)[0])
        else:
            items[name] = raw  # a record of ours etcd does not know: carried as is
    items[META_TERM] = _U64.pack(term)
    if registry is not None:
        items[META_CONF_STATE] = _conf_state(registry)
    return iter(sorted(items.items()))


def _lease_items(view: StoreView) -> Items:
    for k, v in _cursor(view, view.backend.lease_db):
        (lease_id,) = _I64.unpack(k)
        ttl, remaining = struct.unpack(">qq", v)
        lease = lease_pb2.Lease(ID=lease_id, TTL=ttl, RemainingTTL=remaining)
        yield _U64.pack(lease_id & 0xFFFF_FFFF_FFFF_FFFF), lease.SerializeToString()


def _alarm_items(view: StoreView) -> Items:
    keys = []
    for k, _ in _cursor(view, view.backend.alarm_db):
        member_id, alarm = _ALARM.unpack(k)
        pb = rpc_pb2.AlarmMember(memberID=member_id, alarm=alarm)
        keys.append(pb.SerializeToString())
    return ((k, b"") for k in sorted(keys))


def _auth_items(view: StoreView) -> Items:
    items = dict(_cursor(view, view.backend.auth_db))
    # A store that never had auth has no revision yet; etcd writes 1 when it starts.
    items.setdefault(AUTH_REVISION, _U64.pack(1))
    return iter(sorted(items.items()))


def etcd_buckets(
    view: StoreView, *, term: int, cluster_version: str
) -> Iterator[tuple[bytes, Items]]:
    """etcd's ten buckets, in order, as (name, sorted items) from a pinned view of our store.

    ``term`` is the member's Raft term (etcd keeps it in ``meta``).
    """
    registry = _registry(view)
    members = registry.sorted() if registry is not None else []
    removed = sorted(registry.removed) if registry is not None else []
    for name in BUCKETS:
        items: Iterable[tuple[bytes, bytes]]
        if name == ALARM:
            items = _alarm_items(view)
        elif name == AUTH:
            items = _auth_items(view)
        elif name == AUTH_USERS:
            items = _cursor(view, view.backend.auth_users_db)
        elif name == AUTH_ROLES:
            items = _cursor(view, view.backend.auth_roles_db)
        elif name == CLUSTER:
            items = [(CLUSTER_VERSION_KEY, cluster_version.encode())]
        elif name == KEY:
            items = _cursor(view, view.backend.key_db)
        elif name == LEASE:
            items = _lease_items(view)
        elif name == MEMBERS:
            items = sorted((f"{m.id:x}".encode(), _members_json(m)) for m in members)
        elif name == MEMBERS_REMOVED:
            items = sorted((f"{i:x}".encode(), REMOVED_MARK) for i in removed)
        elif name == META:
            items = _meta_items(view, registry, term)
        else:
            raise AssertionError(f"bucket {name!r} has no source")
        yield name, iter(items)


def backend_hash(buckets: Iterable[tuple[bytes, Items]], ignore: set[tuple[bytes, bytes]]) -> int:
    """etcd's backend hash: CRC-32C over each bucket's name, then its keys and values.

    Maintenance.Hash ignores ``HASH_IGNORED``; ``snapshot status`` ignores nothing.
    """
    h = 0
    for name, items in buckets:
        h = google_crc32c.extend(h, name)
        for k, v in items:
            if (name, k) not in ignore:
                h = google_crc32c.extend(google_crc32c.extend(h, k), v)
    return h


# ----------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportSummary:
    revisions: int
    leases: int
    members: int
    users: int
    roles: int
    auth_enabled: bool


def _parse_rev_key(k: bytes) -> None:
    if len(k) not in (REV_KEY_LEN, TOMBSTONE_KEY_LEN) or k[8:9] != b"_":
        raise EtcdFormatError(f"key bucket: {k.hex()} is not a revision")
    if len(k) == TOMBSTONE_KEY_LEN and k[-1:] != b"t":
        raise EtcdFormatError(f"key bucket: {k.hex()} is not a revision")


COMMIT_EVERY = 50_000
"""Entries per LMDB transaction while importing (bounds the dirty pages of one commit)."""


def import_etcd_backend(reader: BoltReader, backend: bk.Backend) -> ImportSummary:
    """Fill an empty backend of ours with the state of etcd's bbolt file ``reader``.

    Raises EtcdFormatError (or BoltError) for anything that is not a sound
    etcd backend; the caller throws the half-filled backend away.
    """
    names = {name for name, _ in reader.buckets()}
    if KEY not in names or META not in names:
        raise EtcdFormatError("not an etcd backend: no 'key' or 'meta' bucket")
    auth_enabled, users, roles = _import_auth(reader, backend)
    revisions = 0
    for k, v in reader.items(KEY):
        _parse_rev_key(k)
        try:
            kv_pb2.KeyValue.FromString(v)
        except DecodeError:
            raise EtcdFormatError(f"key bucket: revision {rev_of(k)} does not decode") from None
        backend.put_rev(k, v)
        revisions += 1
        if revisions % COMMIT_EVERY == 0:
            backend.commit()
    for name, raw in reader.items(META):
        if name in (bk.META_COMPACT_REV, bk.META_SCHEDULED_COMPACT_REV):
            _parse_rev_key(raw)
            backend.put_meta(name, rev_of(raw)[0])
        elif name == bk.META_CONSISTENT_INDEX:
            if len(raw) != 8:
                raise EtcdFormatError("meta bucket: consistent_index is not 8 bytes")
            backend.put_meta(name, _I64.unpack(raw)[0])
        elif name not in (META_TERM, META_CONF_STATE) and name not in _OURS_ONLY_META:
            backend.put_meta_bytes(name, raw)  # storageVersion, or a record of ours
    leases = 0
    for k, v in reader.items(LEASE):
        try:
            lease = lease_pb2.Lease.FromString(v)
        except DecodeError:
            raise EtcdFormatError(f"lease {k.hex()} does not decode") from None
        backend.put_lease(lease.ID, lease.TTL, lease.RemainingTTL)
        leases += 1
    for k, _ in reader.items(ALARM):
        try:
            alarm = rpc_pb2.AlarmMember.FromString(k)
        except DecodeError:
            raise EtcdFormatError(f"alarm {k.hex()} does not decode") from None
        backend.put_alarm(alarm.memberID, alarm.alarm)
    registry = _import_members(reader)
    backend.put_meta_bytes(MEMBERS_RECORD, registry.encode())
    backend.commit()
    return ImportSummary(revisions, leases, len(registry.members), users, roles, auth_enabled)


def _import_auth(reader: BoltReader, backend: bk.Backend) -> tuple[bool, int, int]:
    """The auth buckets, as they are (our buckets use etcd's keys and encodings)."""
    enabled = False
    for name, raw in reader.items(AUTH):
        if name == AUTH_ENABLED:
            enabled = raw == b"\x01"
        elif name == AUTH_REVISION and len(raw) != 8:
            raise EtcdFormatError("auth bucket: authRevision is not 8 bytes")
        backend.put_auth(backend.auth_db, name, raw)
    counts = []
    for bucket, db, message in (
        (AUTH_USERS, backend.auth_users_db, auth_pb2.User),
        (AUTH_ROLES, backend.auth_roles_db, auth_pb2.Role),
    ):
        count = 0
        for k, v in reader.items(bucket):
            try:
                message.FromString(v)
            except DecodeError:
                raise EtcdFormatError(f"{bucket.decode()} {k!r} does not decode") from None
            backend.put_auth(db, k, v)
            count += 1
        counts.append(count)
    return enabled, counts[0], counts[1]


def _import_members(reader: BoltReader) -> MemberRegistry:
    members = []
    for k, v in reader.items(MEMBERS):
        try:
            doc = json.loads(v)
            members.append(
                Member(
                    int(doc["id"]),
                    str(doc.get("name", "")),
                    tuple(doc.get("peerURLs") or ()),
                    tuple(doc.get("clientURLs") or ()),
                    bool(doc.get("isLearner", False)),
                )
            )
        except (ValueError, KeyError, TypeError):
            raise EtcdFormatError(f"member {k.decode(errors='replace')} does not decode") from None
    removed = set()
    for k, _ in reader.items(MEMBERS_REMOVED):
        try:
            removed.add(int(k, 16))
        except ValueError:
            raise EtcdFormatError(f"removed member {k!r} is not a hex ID") from None
    return MemberRegistry(members, removed)


__all__ = [
    "BUCKETS",
    "HASH_IGNORED",
    "BoltError",
    "EtcdFormatError",
    "ImportSummary",
    "backend_hash",
    "etcd_buckets",
    "import_etcd_backend",
]
