"""The Keys page's data: keys under a prefix, one value at a revision, a key's history.

Values are shown as the page can display them: JSON pretty-printed, UTF-8
text as is, anything else as hex. Keys are decoded as UTF-8 (bytes that are
not become U+FFFD), which covers what the controllers and etcdctl write.
"""

from __future__ import annotations

import json
from typing import Any

from dashboard.errors import BadRequest, Gone, NotFound
from kvstore._pb.mvccpb import kv_pb2
from kvstore.client import Client, CompactedError, FutureRevisionError

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
HISTORY_LIMIT = 50
PREVIEW_CHARS = 200
# Values larger than this are shown cut (the page says how large they are).
SHOWN_BYTES = 256 * 1024


def key_text(raw: bytes) -> str:
    return raw.decode(errors="replace")


def render_value(raw: bytes) -> dict[str, Any]:
    """``kind`` json|text|binary, and the text to show."""
    shown = raw[:SHOWN_BYTES]
    try:
        text = shown.decode()
    except UnicodeDecodeError:
        return {"kind": "binary", "text": shown.hex(" "), "size": len(raw)}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"kind": "text", "text": text, "size": len(raw)}
    if isinstance(parsed, dict | list):
        return {
            "kind": "json",
            "text": json.dumps(parsed, indent=2, sort_keys=True),
            "size": len(raw),
        }
    return {"kind": "text", "text": text, "size": len(raw)}


def preview(raw: bytes) -> str:
    rendered = render_value(raw[: PREVIEW_CHARS * 4])
    text = str(rendered["text"])
    if rendered["kind"] == "json":
        text = " ".join(text.split())
    return text[:PREVIEW_CHARS]


def kv_view(kv: kv_pb2.KeyValue) -> dict[str, Any]:
    return {
        "key": key_text(kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": f"{kv.lease:x}" if kv.lease else "",
    }


def parse_limit(raw: str | None, default: int, ceiling: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit {raw!r} is not a number") from None
    if not 1 <= limit <= ceiling:
        raise BadRequest(f"limit must be between 1 and {ceiling}, not {limit}")
    return limit


def parse_revision(raw: str | None) -> int:
    if raw is None or raw == "":
        return 0
    try:
        revision = int(raw)
    except ValueError:
        raise BadRequest(f"revision {raw!r} is not a number") from None
    if revision < 0:
        raise BadRequest(f"revision must not be negative, not {revision}")
    return revision


async def list_keys(client: Client, prefix: str, limit: int) -> dict[str, Any]:
    """Keys (no values) under ``prefix``; the empty prefix lists every key."""
    if prefix:
        response = await client.get(prefix, prefix=True, keys_only=True, limit=limit)
    else:
        response = await client.get(b"\0", from_key=True, keys_only=True, limit=limit)
    return {
        "prefix": prefix,
        "revision": response.header.revision,
        "count": response.count,
        "more": response.more,
        "keys": [kv_view(kv) for kv in response.kvs],
    }


async def _get_at(client: Client, key: str, revision: int) -> tuple[kv_pb2.KeyValue | None, int]:
    try:
        response = await client.get(key, revision=revision)
    except CompactedError as error:
        raise Gone(
            f"revision {revision} has been compacted (compacted up to {error.compact_revision})",
            compactRevision=error.compact_revision,
        ) from None
    except FutureRevisionError:
        raise BadRequest(f"revision {revision} is newer than the store's") from None
    return (response.kvs[0] if response.kvs else None), response.header.revision


async def get_key(client: Client, key: str, revision: int) -> dict[str, Any]:
    if not key:
        raise BadRequest("key is required")
    kv, store_revision = await _get_at(client, key, revision)
    if kv is None:
        at = f" at revision {revision}" if revision else ""
        raise NotFound(f"key {key!r} not found{at}")
    return {**kv_view(kv), "value": render_value(kv.value), "revision": store_revision}


async def key_history(client: Client, key: str, limit: int) -> dict[str, Any]:
    """The key's versions since it was last created, newest first (at most ``limit``).

    Each older version is read at the revision just before the newer one was
    written; the walk stops at the key's creation or where compaction removed
    the older revisions (``compacted`` says so).
    """
    if not key:
        raise BadRequest("key is required")
    kv, store_revision = await _get_at(client, key, 0)
    if kv is None:
        raise NotFound(f"key {key!r} not found")
    versions: list[dict[str, Any]] = []
    compacted = 0
    while kv is not None and len(versions) < limit:
        versions.append({**kv_view(kv), "value": render_value(kv.value)})
        if kv.version <= 1 or kv.mod_revision <= kv.create_revision:
            break
        created = kv.create_revision
        try:
            older, _ = await _get_at(client, key, kv.mod_revision - 1)
        except Gone as gone:
            compacted = int(gone.details.get("compactRevision", 0))
            break
        kv = older if older is not None and older.create_revision == created else None
    return {"key": key, "revision": store_revision, "versions": versions, "compacted": compacted}


def event_view(event: kv_pb2.Event) -> dict[str, Any]:
    deleted = event.type == kv_pb2.Event.DELETE
    return {
        "type": "DELETE" if deleted else "PUT",
        **kv_view(event.kv),
        "preview": "" if deleted else preview(event.kv.value),
    }
