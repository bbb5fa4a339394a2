"""Access control on our 3-member cluster: logins, tokens, permissions over time, durability.

Real member processes; the client under test is our own (``Client(user=, password=)``).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kvstore._pb.v3lockpb import v3lock_pb2 as lpb
from kvstore.client import (
    AuthFailedError,
    AuthOldRevisionError,
    Client,
    InvalidTokenError,
    PermissionDeniedError,
    UserEmptyError,
    WatchCanceledError,
)
from kvstore.local.cluster import KVCluster

DEADLINE = 30.0  # generous: a loaded 2-core machine
TOKEN_TTL = 3
SNAPSHOT_COUNT = 50


async def setup_users(endpoints: list[str]) -> None:
    """root; alice with read-write on /app/ and read on /shared; auth enabled."""
    async with Client(endpoints, default_timeout=15) as admin:
        await admin.user_add("root", "rootpw")
        await admin.user_grant_role("root", "root")
        await admin.user_add("alice", "alicepw")
        await admin.role_add("app")
        await admin.role_grant_permission("app", "readwrite", "/app/", prefix=True)
        await admin.role_grant_permission("app", "read", "/shared")
        await admin.user_grant_role("alice", "app")
        await admin.put("/shared", "hello")
        await admin.auth_enable()


async def until_refused(endpoint: str, token: str, error: type[Exception]) -> None:
    """Poll one member with ``token`` until it refuses it with ``error`` (no event to await)."""
    async with Client([endpoint], default_timeout=15) as plain, plain.with_token(token) as view:
        with anyio.fail_after(DEADLINE):
            while True:
                try:
                    await view.get("/app/probe", serializable=True)
                except error:
                    return
                await anyio.sleep(0.2)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[KVCluster]:
    c = KVCluster(root=tmp_path, size=3, extra_args=[f"--auth-token-ttl={TOKEN_TTL}"])
    c.start()
    try:
        await setup_users(c.endpoints)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
async def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KVCluster]:
    """For the tests that leave users and roles as they found them."""
    c = KVCluster(root=tmp_path_factory.mktemp("auth-shared"), size=3)
    c.start()
    try:
        await setup_users(c.endpoints)
        yield c
    finally:
        c.stop()


async def test_logins_tokens_and_permissions(cluster: KVCluster) -> None:
    endpoints = cluster.endpoints
    async with Client(endpoints) as anonymous:
        with pytest.raises(UserEmptyError):
            await anonymous.put("/app/a", "1")
        with pytest.raises(UserEmptyError):
            await anonymous.get("/shared")
    with pytest.raises(AuthFailedError):
        async with Client(endpoints, user="alice", password="wrong"):
            pass
    async with (
        Client(endpoints, user="alice", password="alicepw", default_timeout=15) as alice,
        Client(endpoints, user="root", password="rootpw", default_timeout=15) as root,
    ):
        await alice.put("/app/a", "1")
        assert (await alice.get("/shared")).kvs[0].value == b"hello"
        with pytest.raises(PermissionDeniedError):
            await alice.put("/shared", "mine")
        with pytest.raises(PermissionDeniedError):
            await alice.get("/", prefix=True)
        with pytest.raises(PermissionDeniedError):
            await alice.compact(1)
        with pytest.raises(WatchCanceledError, match="permission denied"):
            async with alice.watch("/other/", prefix=True) as watch:
                async for _ in watch:
                    pass
        async with alice.watch("/app/", prefix=True) as watch:
            await root.put("/app/w", "seen")
            batch = await anext(aiter(watch))
            assert batch.events[0].kv.key == b"/app/w"

        # A simple token expires on every member once unused for --auth-token-ttl;
        # the client logs in again by itself.
        old = alice.token
        assert old is not None
        # The awaited event is the TTL itself (any use would renew the token).
        await anyio.sleep(TOKEN_TTL + 1.5)
        for endpoint in endpoints:
            async with Client([endpoint]) as plain, plain.with_token(old) as view:
                with pytest.raises(InvalidTokenError):
                    await view.get("/app/a", serializable=True)
        await alice.put("/app/b", "after expiry")
        assert alice.token not in (None, old)

        # Permission changes apply to tokens already issued.
        await root.role_revoke_permission("app", "/app/", prefix=True)
        with pytest.raises(PermissionDeniedError):
            await alice.get("/app/a")
        await root.role_grant_permission("app", "readwrite", "/app/", prefix=True)
        assert (await alice.get("/app/a")).kvs[0].value == b"1"

        # A deleted user's token stops working on every member; logging in again fails.
        token = alice.token
        assert token is not None
        await root.user_delete("alice")
        for endpoint in endpoints:
            await until_refused(endpoint, token, InvalidTokenError)
        with pytest.raises(AuthFailedError):
            await alice.get("/app/a")


async def test_lock_service_calls_as_its_caller(shared_cluster: KVCluster) -> None:
    async with Client(shared_cluster.endpoints, user="alice", password="alicepw") as alice:
        token = alice.token
        assert token is not None
    async with grpc.aio.insecure_channel(shared_cluster.endpoints[0]) as channel:
        lock = channel.unary_unary(
            "/v3lockpb.Lock/Lock",
            request_serializer=lpb.LockRequest.SerializeToString,
            response_deserializer=lpb.LockResponse.FromString,
        )
        held = await lock(lpb.LockRequest(name=b"/app/lock"), metadata=(("token", token),))
        assert held.key.startswith(b"/app/lock/")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await lock(lpb.LockRequest(name=b"/other/lock"), metadata=(("token", token),))
        assert denied.value.details() == "etcdserver: permission denied"
        with pytest.raises(grpc.aio.AioRpcError) as nobody:
            await lock(lpb.LockRequest(name=b"/app/lock2"), timeout=10)
        assert nobody.value.details() == "etcdserver: user name is empty"


async def test_election_recipes_with_a_login(shared_cluster: KVCluster) -> None:
    from kvstore.client.concurrency import Election, Mutex, Session

    async with (
        Client(shared_cluster.endpoints, user="alice", password="alicepw") as alice,
        Session(alice, ttl=10) as session,
    ):
        mutex = Mutex(session, "/app/mutex")
        await mutex.lock()
        await mutex.unlock()
        election = Election(session, "/app/election")
        await election.campaign("me")
        assert (await election.leader()).value == b"me"
        await election.resign()


async def test_auth_survives_restart_and_snapshot_catch_up(tmp_path: Path) -> None:
    c = KVCluster(root=tmp_path, size=3, extra_args=[f"--snapshot-count={SNAPSHOT_COUNT}"])
    c.start()
    try:
        await setup_users(c.endpoints)
        async with Client(c.endpoints, user="root", password="rootpw", default_timeout=15) as root:
            leader = None
            for i, endpoint in enumerate(c.endpoints):
                st = await root.status(endpoint)
                if st.leader == st.header.member_id:
                    leader = i
            # A follower the client is not talking to: killing it costs no write.
            behind = max(
                i for i in range(3) if i != leader and c.endpoints[i] != root.current_endpoint
            )
            c.kill(behind)
            # Changed while the member is down: it learns them from the snapshot.
            await root.role_add("late")
            await root.role_grant_permission("late", "read", "/late/", prefix=True)
            await root.user_add("carol", "carolpw")
            await root.user_grant_role("carol", "late")
            await root.put("/late/k", "v")
            # Past two snapshots' worth: the log the member needs is compacted away.

            async def fill(writer: int) -> None:
                for i in range(SNAPSHOT_COUNT // 2):
                    await root.put(f"/fill/{writer}", f"{i}")

            async with anyio.create_task_group() as writers:
                for writer in range(8):
                    writers.start_soon(fill, writer)
            status = await root.auth_status()
            c.restart(behind)
            with anyio.fail_after(DEADLINE):
                while True:  # the member's own progress, seen in its log
                    if "restored snapshot" in c.members[behind].log_path.read_text():
                        break
                    await anyio.sleep(0.2)
        async with Client([c.endpoints[behind]], user="carol", password="carolpw") as carol:
            assert (await carol.get("/late/k", serializable=True)).kvs[0].value == b"v"
            with pytest.raises(PermissionDeniedError):
                await carol.get("/app/", prefix=True, serializable=True)
        for i in range(3):
            c.kill(i)
        c.start()
        async with Client(c.endpoints, user="root", password="rootpw", default_timeout=15) as root:
            after = await root.auth_status()
            assert after.enabled and after.authRevision == status.authRevision
        for endpoint in c.endpoints:
            async with Client([endpoint], user="carol", password="carolpw") as carol:
                assert (await carol.get("/late/k", serializable=True)).kvs[0].value == b"v"
                with pytest.raises(PermissionDeniedError):
                    await carol.put("/late/k", "no")
        async with Client(c.endpoints) as anonymous:
            with pytest.raises(UserEmptyError):
                await anonymous.get("/late/k")
    finally:
        c.stop()


async def test_login_storm_leaves_the_raft_loop_free(tmp_path: Path) -> None:
    """bcrypt runs off the event loop: writes stay fast while failed logins hash."""
    c = KVCluster(root=tmp_path, size=1, extra_args=["--bcrypt-cost=13"])
    c.start()
    try:
        await setup_users(c.endpoints)
        async with Client(c.endpoints, user="root", password="rootpw", default_timeout=30) as root:
            storm_took = 0.0
            put_latencies: list[float] = []

            async def failed_login() -> None:
                with pytest.raises(AuthFailedError):
                    async with Client(
                        c.endpoints, user="alice", password="guess", default_timeout=60
                    ):
                        pass

            async def storm() -> None:
                nonlocal storm_took
                t0 = time.monotonic()
                async with anyio.create_task_group() as logins:
                    for _ in range(4):
                        logins.start_soon(failed_login)
                storm_took = time.monotonic() - t0

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(storm)
                for i in range(40):
                    t0 = time.monotonic()
                    await root.put("/storm/k", str(i))
                    put_latencies.append(time.monotonic() - t0)
            # Each failed login is one bcrypt check at cost 13 (hundreds of ms of CPU);
            # had they run on the loop, every write would have waited for them.
            assert storm_took > 1.0, storm_took
            assert max(put_latencies) < storm_took / 3, (max(put_latencies), storm_took)
    finally:
        c.stop()


def _rsa_keys(tmp_path: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(65537, 2048)
    private = tmp_path / "jwt.key"
    public = tmp_path / "jwt.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


async def test_jwt_tokens(tmp_path: Path) -> None:
    """RS256 here; the unit tests sign and verify ES256 (the same code, another key)."""
    private, public = _rsa_keys(tmp_path)
    option = f"jwt,pub-key={public},priv-key={private},sign-method=RS256,ttl=5m"
    c = KVCluster(root=tmp_path / "c", size=3, extra_args=[f"--auth-token={option}"])
    c.start()
    try:
        await setup_users(c.endpoints)
        async with (
            Client(c.endpoints, user="alice", password="alicepw", default_timeout=15) as alice,
            Client(c.endpoints, user="root", password="rootpw", default_timeout=15) as root,
        ):
            token = alice.token
            assert token is not None and re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
            for endpoint in c.endpoints:  # stateless: every member verifies it alone
                async with Client([endpoint]) as plain, plain.with_token(token) as view:
                    assert (await view.get("/shared", serializable=True)).kvs[0].value == b"hello"
            # Any change of the auth store makes older JWTs stale; the client logs in again.
            await root.role_add("other")
            async with Client([c.endpoints[0]]) as plain, plain.with_token(token) as view:
                with pytest.raises(AuthOldRevisionError):
                    await view.get("/shared")
            await alice.put("/app/x", "1")
            assert alice.token != token
            forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
            async with Client([c.endpoints[1]]) as plain, plain.with_token(forged) as view:
                with pytest.raises(InvalidTokenError):
                    await view.get("/shared")
    finally:
        c.stop()
