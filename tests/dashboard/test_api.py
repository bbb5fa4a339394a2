"""Every JSON endpoint the dashboard's page uses, over HTTP, against etcd and our store.

Refused requests (unknown object, stale resourceVersion, malformed or invalid
body) must answer a clear 4xx Status and write nothing: the store's revision
is the same before and after.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import anyio
import pytest

from controllers.objects import new_object
from controllers.store import DirectWriter, Store
from election import Callbacks, ElectionConfig, LeaderElector, Leadership, announce_candidate
from kvstore.local.cluster import KVCluster
from tests.dashboard.conftest import Served

DEADLINE = 30.0  # generous: the machine is shared and noisy
T = TypeVar("T")


async def call(
    served: Served, method: str, path: str, body: Any = None, *, raw: bytes | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else (None if body is None else json.dumps(body))
        async with session.request(method, served.url + path, data=data) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Poll ``check`` until it returns something (the state arrives by watch or poll)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.1)


async def revision(served: Served) -> int:
    return (await served.client.get("/")).header.revision


def assert_status(status: int, body: Any, code: int, reason: str) -> None:
    assert status == code, body
    assert body["kind"] == "Status" and body["status"] == "Failure", body
    assert body["code"] == code and body["reason"] == reason, body
    assert body["message"], body


async def refused(
    served: Served, method: str, path: str, body: Any, code: int, reason: str, **kw: Any
) -> dict[str, Any]:
    """The request is refused with ``code``/``reason`` and the store is left as it was."""
    before = await revision(served)
    status, answer = await call(served, method, path, body, **kw)
    assert_status(status, answer, code, reason)
    assert await revision(served) == before, f"{method} {path} wrote to the store"
    return dict(answer)


# ---- Store ----


async def test_store_shows_the_member_its_leadership_and_rates(served: Served, store: Any) -> None:
    async def leader_with_rates() -> dict[str, Any] | None:
        status, view = await call(served, "GET", "/api/store")
        assert status == 200
        members = view["members"]
        rates = view["rates"][-1] if view["rates"] else {}
        if len(members) == 1 and members[0]["role"] == "leader" and rates.get("reads", 0) > 0:
            return dict(view) if rates.get("writes", 0) > 0 else None
        return None

    async def traffic() -> None:
        for n in range(100_000):
            await served.client.put(f"{served.prefix}/rate", str(n))
            await served.client.get(f"{served.prefix}/rate")
            await anyio.sleep(0.05)  # a steady, light load

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(traffic)
        view = await eventually(leader_with_rates, "one leading member with request rates")
        tasks.cancel_scope.cancel()
    member = view["members"][0]
    assert member["healthy"] is True and member["alarms"] == [] and member["term"] >= 1
    assert member["applied_index"] >= 1 and member["db_size"] > 0
    assert view["leader"] == member["name"] and view["timeline"][-1]["leader"] == member["name"]
    expected = "/metrics"
    if isinstance(store, KVCluster):
        expected = f"{store.members[0].http_url}/metrics"
    assert member["metrics_url"].endswith(expected) and member["metrics_error"] == ""
    # About 20 writes and reads a second are going on: the rates are of that order.
    assert 2 < member["rates"]["writes"] < 100 and 2 < member["rates"]["reads"] < 200, member


# ---- Control plane ----


@asynccontextmanager
async def contenders(served: Served, lock: str, identities: list[str]) -> AsyncIterator[None]:
    """Leader electors (each announcing its candidacy) for ``lock`` in namespace ``tests``."""

    async def lead(leadership: Leadership) -> None:
        await leadership.lost.wait()

    async with anyio.create_task_group() as tasks:
        for identity in identities:
            config = ElectionConfig(
                name=lock,
                namespace="tests",
                identity=identity,
                lease_duration=4,
                renew_deadline=3,
                retry_period=0.5,
                release_on_cancel=True,
            )
            elector = LeaderElector(served.client, config, Callbacks(on_started_leading=lead))
            tasks.start_soon(elector.run)
            tasks.start_soon(announce_candidate, served.client, config)
        yield
        tasks.cancel_scope.cancel()


async def test_locks_show_holder_fencing_token_and_standbys(served: Served) -> None:
    lock = f"lock-{served.prefix[3:11]}"

    async def lock_view(accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            status, view = await call(served, "GET", "/api/locks")
            assert status == 200
            for entry in view["locks"]:
                if entry["namespace"] == "tests" and entry["name"] == lock and accept(entry):
                    return dict(entry)
            return None

        return await eventually(found, f"lock {lock} as expected")

    async with contenders(served, lock, ["alpha", "beta"]):
        held = await lock_view(lambda e: bool(e["holder"]) and len(e["candidates"]) == 2)
        assert held["candidates"] == ["alpha", "beta"]
        assert held["standbys"] == [c for c in ("alpha", "beta") if c != held["holder"]]
        assert held["lease_duration"] == 4 and held["transitions"] == 0
        fence = await served.client.get(f"/registry/fencing/tests/{lock}")
        assert held["fencing_token"] == fence.kvs[0].mod_revision
        assert held["renewed_ago"] < 4
    # Cancelled contenders release the lock and withdraw their candidacies.
    released = await lock_view(lambda e: e["holder"] == "" and e["candidates"] == [])
    assert released["standbys"] == []


# ---- Workloads ----


async def objects(served: Served, resource: str) -> dict[str, dict[str, Any]]:
    status, body = await call(served, "GET", f"/api/objects/{resource}")
    assert status == 200, body
    return {
        f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o for o in body["items"]
    }


async def shown(served: Served, resource: str, key: str, accept: Callable[[Any], bool]) -> Any:
    async def found() -> Any:
        obj = (await objects(served, resource)).get(key)
        return obj if obj is not None and accept(obj) else None

    return await eventually(found, f"{resource} {key} on the dashboard")


async def test_create_and_scale_replicaset(served: Served) -> None:
    form = {"name": "api", "namespace": "default", "replicas": 2, "image": "example/api:1"}
    status, created = await call(served, "POST", "/api/replicasets", {**form, "cpu": "100m"})
    assert status == 201, created
    assert created["spec"]["replicas"] == 2
    container = created["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "100m"}
    rs = await shown(served, "replicasets", "default/api", lambda o: True)
    version = rs["metadata"]["resourceVersion"]

    path = "/api/replicasets/default/api/scale"
    status, scaled = await call(served, "POST", path, {"replicas": 5, "resourceVersion": version})
    assert status == 200, scaled
    stored = await Store(served.client, served.prefix).get("replicasets", "api", "default")
    assert stored is not None and stored["spec"]["replicas"] == 5
    assert stored["metadata"]["generation"] == 2  # a spec change, as kube-apiserver counts
    assert scaled["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]

    # The page's version is now stale: a conflict that names the current version.
    conflict = await refused(
        served, "POST", path, {"replicas": 7, "resourceVersion": version}, 409, "Conflict"
    )
    assert conflict["details"]["currentResourceVersion"] == stored["metadata"]["resourceVersion"]
    fresh = stored["metadata"]["resourceVersion"]
    await refused(
        served,
        "POST",
        "/api/replicasets/default/nothing/scale",
        {"replicas": 1, "resourceVersion": fresh},
        404,
        "NotFound",
    )
    await refused(served, "POST", path, None, 400, "BadRequest", raw=b"{replicas: 3")
    await refused(served, "POST", path, [3], 400, "BadRequest")
    await refused(served, "POST", path, {"replicas": 3}, 400, "BadRequest")
    await refused(served, "POST", path, {"replicas": "3", "resourceVersion": fresh}, 422, "Invalid")
    await refused(served, "POST", path, {"replicas": -1, "resourceVersion": fresh}, 422, "Invalid")
    await refused(
        served, "POST", path, {"replicas": 3, "resourceVersion": "later"}, 400, "BadRequest"
    )
    await refused(
        served,
        "POST",
        "/api/pods/default/api/scale",
        {"replicas": 3, "resourceVersion": fresh},
        404,
        "NotFound",
    )
    # Creating it again, or with a bad form, is refused too.
    await refused(served, "POST", "/api/replicasets", form, 409, "AlreadyExists")
    await refused(served, "POST", "/api/replicasets", {**form, "name": "Bad_Name"}, 422, "Invalid")
    await refused(served, "POST", "/api/replicasets", {**form, "cpu": "lots"}, 422, "Invalid")
    await refused(served, "POST", "/api/replicasets", {**form, "image": ""}, 422, "Invalid")
    await refused(
        served, "POST", "/api/replicasets", None, 413, "Request Entity Too Large", raw=b"{" * 70_000
    )


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    container = {"name": name, "image": f"example/{name}:1"}
    return new_object(
        "deployments",
        name,
        "default",
        labels=labels,
        spec={
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
        status={"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas},
    )


async def test_scale_a_deployment(served: Served) -> None:
    store = Store(served.client, served.prefix)
    created = await store.create(DirectWriter(served.client), "deployments", deployment("web", 3))
    listed = await shown(served, "deployments", "default/web", lambda o: True)
    version = listed["metadata"]["resourceVersion"]
    assert version == created["metadata"]["resourceVersion"]
    assert listed["status"]["updatedReplicas"] == 3

    path = "/api/deployments/default/web/scale"
    status, scaled = await call(served, "POST", path, {"replicas": 8, "resourceVersion": version})
    assert status == 200, scaled
    stored = await store.get("deployments", "web", "default")
    assert stored is not None and stored["spec"]["replicas"] == 8
    assert scaled["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    # The controller tells a finished scale by its observedGeneration reaching this one.
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["template"] == created["spec"]["template"]
    assert stored["status"] == created["status"]  # the status is the controller's to write
    fresh = stored["metadata"]["resourceVersion"]
    await shown(served, "deployments", "default/web", lambda o: o["spec"]["replicas"] == 8)

    # The page's version is now stale: a conflict naming the current one, nothing written.
    conflict = await refused(
        served, "POST", path, {"replicas": 2, "resourceVersion": version}, 409, "Conflict"
    )
    assert conflict["details"]["currentResourceVersion"] == fresh
    assert "deployments default/web changed" in conflict["message"]
    missing = "/api/deployments/default/nothing/scale"
    body = {"replicas": 1, "resourceVersion": fresh}
    await refused(served, "POST", missing, body, 404, "NotFound")
    await refused(served, "POST", "/api/deployments/other/web/scale", body, 404, "NotFound")
    await refused(served, "POST", path, None, 400, "BadRequest", raw=b'{"replicas": 3')
    await refused(served, "POST", path, None, 400, "BadRequest", raw=b"")
    await refused(served, "POST", path, "8", 400, "BadRequest")
    await refused(served, "POST", path, {"replicas": 3}, 400, "BadRequest")
    await refused(served, "POST", path, {"replicas": 3, "resourceVersion": "0"}, 400, "BadRequest")
    for replicas in ("3", 2.5, True, None, -1, 101):
        await refused(
            served, "POST", path, {"replicas": replicas, "resourceVersion": fresh}, 422, "Invalid"
        )
    after = await store.get("deployments", "web", "default")
    assert after == stored

    # Scaling down with the current version works too, and counts one more generation.
    status, down = await call(served, "POST", path, {"replicas": 0, "resourceVersion": fresh})
    assert status == 200 and down["spec"]["replicas"] == 0, down
    assert down["metadata"]["generation"] == 3


async def test_delete_pod_needs_its_current_version(served: Served) -> None:
    store = Store(served.client, served.prefix)
    pod = await store.create(
        DirectWriter(served.client), "pods", new_object("pods", "solo", "default")
    )
    version = pod["metadata"]["resourceVersion"]
    await shown(served, "pods", "default/solo", lambda o: True)
    moved = await store.modify(
        DirectWriter(served.client),
        "pods",
        "solo",
        "default",
        lambda p: p["metadata"].setdefault("labels", {}).update(moved="yes"),
    )
    path = "/api/pods/default/solo"
    await refused(served, "DELETE", path, {"resourceVersion": version}, 409, "Conflict")
    assert await store.get("pods", "solo", "default") is not None
    await refused(served, "DELETE", path, {}, 400, "BadRequest")
    await refused(served, "DELETE", path, None, 400, "BadRequest", raw=b"not json")

    current = moved["metadata"]["resourceVersion"]
    status, answer = await call(served, "DELETE", path, {"resourceVersion": current})
    assert status == 200 and answer["status"] == "Success", answer
    assert await store.get("pods", "solo", "default") is None
    await refused(served, "DELETE", path, {"resourceVersion": current}, 404, "NotFound")
    assert "default/solo" not in await eventually(
        lambda: _without(served, "pods", "default/solo"), "the pod gone from the dashboard"
    )


async def _without(served: Served, resource: str, key: str) -> dict[str, Any] | None:
    found = await objects(served, resource)
    return None if key in found else found


async def test_cordon_and_uncordon_a_node(served: Served) -> None:
    store = Store(served.client, served.prefix)
    node = await store.create(DirectWriter(served.client), "nodes", new_object("nodes", "n1"))
    version = node["metadata"]["resourceVersion"]
    status, cordoned = await call(
        served, "POST", "/api/nodes/n1/cordon", {"resourceVersion": version}
    )
    assert status == 200 and cordoned["spec"]["unschedulable"] is True, cordoned
    stored = await store.get("nodes", "n1")
    assert stored is not None and stored["spec"]["unschedulable"] is True
    shown_node = await shown(served, "nodes", "/n1", lambda o: o["spec"].get("unschedulable"))
    assert shown_node["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]

    await refused(
        served, "POST", "/api/nodes/n1/uncordon", {"resourceVersion": version}, 409, "Conflict"
    )
    await refused(
        served, "POST", "/api/nodes/nope/cordon", {"resourceVersion": version}, 404, "NotFound"
    )
    fresh = stored["metadata"]["resourceVersion"]
    status, uncordoned = await call(
        served, "POST", "/api/nodes/n1/uncordon", {"resourceVersion": fresh}
    )
    assert status == 200 and "unschedulable" not in uncordoned["spec"], uncordoned


async def test_unknown_resources_and_routes(served: Served) -> None:
    status, body = await call(served, "GET", "/api/objects/secrets")
    assert_status(status, body, 404, "NotFound")
    status, body = await call(served, "GET", "/api/no-such-thing")
    assert_status(status, body, 404, "Not Found")


# ---- Keys ----


async def test_keys_values_revisions_and_history(served: Served) -> None:
    base = f"{served.prefix}/keys/"
    client = served.client
    first = await client.put(f"{base}doc", json.dumps({"b": 1, "a": [1, 2]}))
    await client.put(f"{base}text", "hello")
    await client.put(f"{base}blob", b"\x00\xff\x10")
    await client.put(f"{base}doc", json.dumps({"b": 2}))
    third = await client.put(f"{base}doc", "plain now")

    status, listed = await call(served, "GET", f"/api/keys?prefix={base}")
    assert status == 200, listed
    assert [k["key"] for k in listed["keys"]] == [f"{base}{n}" for n in ("blob", "doc", "text")]
    assert listed["count"] == 3 and listed["more"] is False
    doc = next(k for k in listed["keys"] if k["key"].endswith("doc"))
    assert doc["version"] == 3 and doc["mod_revision"] == third.header.revision

    status, kv = await call(served, "GET", f"/api/key?key={base}doc")
    assert status == 200 and kv["value"] == {"kind": "text", "text": "plain now", "size": 9}
    status, old = await call(
        served, "GET", f"/api/key?key={base}doc&revision={first.header.revision}"
    )
    assert status == 200 and old["value"]["kind"] == "json" and old["version"] == 1
    assert old["value"]["text"] == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True)
    status, blob = await call(served, "GET", f"/api/key?key={base}blob")
    assert status == 200 and blob["value"] == {"kind": "binary", "text": "00 ff 10", "size": 3}

    status, history = await call(served, "GET", f"/api/key/history?key={base}doc")
    assert status == 200, history
    assert [v["version"] for v in history["versions"]] == [3, 2, 1]
    assert [v["value"]["kind"] for v in history["versions"]] == ["text", "json", "json"]
    assert history["versions"][-1]["mod_revision"] == first.header.revision

    status, limited = await call(served, "GET", f"/api/keys?prefix={base}&limit=1")
    assert status == 200 and len(limited["keys"]) == 1 and limited["more"] is True

    await refused(served, "GET", f"/api/key?key={base}missing", None, 404, "NotFound")
    await refused(served, "GET", "/api/key?key=", None, 400, "BadRequest")
    await refused(served, "GET", f"/api/key?key={base}doc&revision=abc", None, 400, "BadRequest")
    await refused(served, "GET", f"/api/key?key={base}doc&revision=-2", None, 400, "BadRequest")
    future = third.header.revision + 1_000_000
    await refused(
        served, "GET", f"/api/key?key={base}doc&revision={future}", None, 400, "BadRequest"
    )
    await refused(served, "GET", f"/api/keys?prefix={base}&limit=0", None, 400, "BadRequest")
    await refused(served, "GET", f"/api/key/history?key={base}missing", None, 404, "NotFound")

    # Once compacted, the old revision is gone and the history says where it stops.
    await client.compact(third.header.revision)
    gone = await refused(
        served, "GET", f"/api/key?key={base}doc&revision={first.header.revision}", None, 410, "Gone"
    )
    assert "compacted" in gone["message"]
    status, history = await call(served, "GET", f"/api/key/history?key={base}doc")
    assert status == 200 and [v["version"] for v in history["versions"]] == [3]
    assert history["compacted"] >= 0


# ---- the live streams ----


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of a text/event-stream, as an EventSource parses it."""
    event, data = "message", list[str]()
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def test_events_stream_snapshots_then_watched_changes(served: Served) -> None:
    store = Store(served.client, served.prefix)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{served.url}/api/events") as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        seen: list[str] = []
        created = False
        with anyio.fail_after(DEADLINE):
            async for event, data in sse_events(response):
                seen.append(event)
                if event == "objects" and data["resource"] == "pods" and not created:
                    assert data["items"] == []
                    created = True
                    await store.create(
                        DirectWriter(served.client), "pods", new_object("pods", "live", "default")
                    )
                if event == "object" and data["object"]["metadata"]["name"] == "live":
                    assert data == {"resource": "pods", "type": "ADDED", "object": data["object"]}
                    break
    assert seen[0] == "hello"
    assert {"store", "locks", "objects"} <= set(seen[: seen.index("object")])


async def test_key_tail_streams_changes_under_a_prefix(served: Served) -> None:
    base = f"{served.prefix}/tail/"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{served.url}/api/keys/tail?prefix={base}") as response,
    ):
        changes = []
        with anyio.fail_after(DEADLINE):
            async for event, data in sse_events(response):
                if event == "watching":
                    assert data == {"prefix": base}
                    await served.client.put(f"{served.prefix}/elsewhere", "not shown")
                    await served.client.put(f"{base}a", json.dumps({"x": 1}))
                    await served.client.delete(f"{base}a")
                elif event == "change":
                    changes.append(data)
                    if len(changes) == 2:
                        break
    put, deleted = changes
    assert (put["type"], put["key"], put["preview"]) == ("PUT", f"{base}a", '{ "x": 1 }')
    assert (deleted["type"], deleted["key"]) == ("DELETE", f"{base}a")
    assert deleted["mod_revision"] > put["mod_revision"]
