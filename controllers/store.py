"""Reading and writing objects in the store, with optimistic concurrency and fencing.

Every write is one Txn that compares the key's mod_revision with the
object's ``metadata.resourceVersion`` (create: the key must not exist) and
goes through a :class:`Writer`. Like kube-apiserver, a create starts
``metadata.generation`` at 1 and :meth:`Store.modify` increments it when the
spec changes (controllers that write specs themselves use
:func:`controllers.objects.with_spec_change`). For a leader-elected component the writer is
its :class:`election.Leadership`, whose ``txn`` nests ours inside a compare
on the fencing key, so a deposed leader's write is never applied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from controllers.objects import (
    CLUSTER_SCOPED,
    Obj,
    bump_generation,
    meta,
    name_of,
    namespace_of,
    new_uid,
    now_rfc3339,
    resource_version,
)
from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client import Client, txn

DEFAULT_PREFIX = "/registry"


class ConflictError(Exception):
    """The object changed (or appeared, or vanished) since it was read; re-read and retry."""


class Writer(Protocol):
    """What a write goes through: :class:`election.Leadership` or :class:`DirectWriter`."""

    async def txn(
        self,
        compare: list[pb.Compare] | None = None,
        success: list[pb.RequestOp] | None = None,
        failure: list[pb.RequestOp] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.TxnResponse: ...


class DirectWriter:
    """Unfenced writes, for components that are not leader-elected (node agents)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def txn(
        self,
        compare: list[pb.Compare] | None = None,
        success: list[pb.RequestOp] | None = None,
        failure: list[pb.RequestOp] | None = None,
        *,
        timeout: float | None = None,
    ) -> pb.TxnResponse:
        request = pb.TxnRequest(compare=compare or [], success=success or [], failure=failure or [])
        return await self.client.txn_request(request, timeout=timeout)


def encode(obj: Obj) -> bytes:
    stored = dict(obj)
    stored["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return json.dumps(stored, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes, mod_revision: int) -> Obj:
    obj: Obj = json.loads(raw)
    meta(obj)["resourceVersion"] = str(mod_revision)
    return obj


class Store:
    """Keys of one registry prefix, and guarded writes through a writer."""

    def __init__(self, client: Client, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix.rstrip("/")

    def resource_prefix(self, resource: str, namespace: str = "") -> str:
        base = f"{self.prefix}/{resource}/"
        return f"{base}{namespace}/" if namespace else base

    def key(self, resource: str, name: str, namespace: str = "") -> str:
        if resource in CLUSTER_SCOPED:
            return f"{self.prefix}/{resource}/{name}"
        return f"{self.prefix}/{resource}/{namespace or 'default'}/{name}"

    def key_of(self, resource: str, obj: Obj) -> str:
        return self.key(resource, name_of(obj), namespace_of(obj))

    async def get(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        response = await self.client.get(self.key(resource, name, namespace))
        if not response.kvs:
            return None
        return decode(response.kvs[0].value, response.kvs[0].mod_revision)

    async def list(self, resource: str, namespace: str = "") -> tuple[list[Obj], int]:
        """All objects of a resource and the store revision they were read at."""
        response = await self.client.get(self.resource_prefix(resource, namespace), prefix=True)
        objects = [decode(kv.value, kv.mod_revision) for kv in response.kvs]
        return objects, response.header.revision

    async def create(self, writer: Writer, resource: str, obj: Obj) -> Obj:
        """Create ``obj`` (uid and creationTimestamp filled in); ConflictError if it exists."""
        obj = json.loads(json.dumps(obj))
        metadata = meta(obj)
        metadata.setdefault("uid", new_uid())
        metadata.setdefault("creationTimestamp", now_rfc3339())
        metadata.setdefault("generation", 1)
        key = self.key_of(resource, obj)
        response = await writer.txn(
            compare=[txn.create_revision(key) == 0], success=[txn.put(key, encode(obj))]
        )
        if not response.succeeded:
            raise ConflictError(f"{key} already exists")
        metadata["resourceVersion"] = str(response.header.revision)
        return obj

    async def update(self, writer: Writer, resource: str, obj: Obj) -> Obj:
        """Write ``obj`` back if it is unchanged since read (its resourceVersion)."""
        key = self.key_of(resource, obj)
        expected = resource_version(obj)
        if expected <= 0:
            raise ConflictError(f"{key}: update needs a resourceVersion")
        response = await writer.txn(
            compare=[txn.mod_revision(key) == expected], success=[txn.put(key, encode(obj))]
        )
        if not response.succeeded:
            raise ConflictError(f"{key} changed since resourceVersion {expected}")
        updated: Obj = json.loads(json.dumps(obj))
        meta(updated)["resourceVersion"] = str(response.header.revision)
        return updated

    async def modify(
        self,
        writer: Writer,
        resource: str,
        name: str,
        namespace: str,
        change: Callable[[Obj], None],
        *,
        attempts: int = 20,
    ) -> Obj:
        """Read, ``change`` in place, write back; re-read and retry on conflict
        (client-go's RetryOnConflict)."""
        for _ in range(attempts):
            current = await self.get(resource, name, namespace)
            if current is None:
                raise KeyError(f"{resource} {namespace}/{name} not found")
            changed = json.loads(json.dumps(current))
            change(changed)
            bump_generation(current, changed)
            try:
                return await self.update(writer, resource, changed)
            except ConflictError:
                continue
        raise ConflictError(f"{resource} {namespace}/{name}: still conflicting after {attempts}")

    async def delete(self, writer: Writer, resource: str, obj: Obj) -> int:
        """Delete ``obj`` if unchanged since read; returns the revision of the delete."""
        key = self.key_of(resource, obj)
        expected = resource_version(obj)
        response = await writer.txn(
            compare=[txn.mod_revision(key) == expected], success=[txn.delete(key)]
        )
        if not response.succeeded:
            raise ConflictError(f"{key} changed since resourceVersion {expected}")
        return response.header.revision
