"""The auth store, permissions, tokens and the auth buckets, in-process on a real LMDB backend."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import anyio
import bcrypt
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore._pb.authpb import auth_pb2
from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore.auth import AuthInfo, AuthStore, JWTTokens, SimpleTokens, passwords, token_provider
from kvstore.auth.perms import KeySet, interval_of
from kvstore.auth.requests import check_request
from kvstore.auth.tokens import TokenOptionError
from kvstore.errors import (
    AuthNotEnabledError,
    AuthOldRevisionError,
    InvalidAuthMgmtError,
    PermissionDeniedError,
    RoleNotFoundError,
    RootRoleNotExistError,
    RootUserNotExistError,
    TooManyRequestsError,
    UserEmptyError,
    UserNotFoundError,
)
from kvstore.lease.lessor import Lessor
from kvstore.mvcc.backend import Backend
from kvstore.mvcc.store import MVCCStore
from kvstore.server.etcd_format import AUTH, AUTH_ROLES, AUTH_USERS, etcd_buckets

# ---------------------------------------------------------------------- key ranges

KEYS = st.binary(min_size=1, max_size=3).map(lambda b: bytes(c % 4 + 97 for c in b))


def _in(key: bytes, start: bytes, end: bytes | None) -> bool:
    return start <= key and (end is None or key < end)


@st.composite
def grants(draw: st.DrawFn) -> tuple[bytes, bytes]:
    key = draw(KEYS)
    kind = draw(st.sampled_from(["key", "range", "open"]))
    if kind == "key":
        return key, b""
    if kind == "open":
        return key, b"\x00"
    end = draw(KEYS.filter(lambda e: e > key))
    return key, end


@settings(max_examples=300, deadline=None)
@given(st.lists(grants(), max_size=5), KEYS, st.one_of(st.just(b""), KEYS, st.just(b"\x00")))
def test_keyset_covers_like_the_union_of_its_intervals(
    granted: list[tuple[bytes, bytes]], key: bytes, range_end: bytes
) -> None:
    intervals = [interval_of(k, e) for k, e in granted]

    def covered(k: bytes) -> bool:
        return any(_in(k, s, e) for s, e in intervals)

    end = None if range_end == b"\x00" else range_end
    if not range_end or (end is not None and end <= key):
        expected = covered(key)  # one key (an empty range is judged by its first key)
    else:
        # Membership is constant between consecutive boundaries: check each segment's start,
        # and past every boundary for an open end.
        bounds = {key} | {s for s, _ in intervals} | {e for _, e in intervals if e is not None}
        if end is not None:
            bounds.add(end)
        points = [b for b in bounds if _in(b, key, end)]
        if end is None:
            points.append(max(bounds) + b"\xff")
        expected = all(covered(p) for p in points)
    assert KeySet(intervals).covers(key, range_end) == expected


def test_keyset_merges_adjacent_and_open_ranges() -> None:
    keys = KeySet([(b"a", b"c"), (b"c", b"e"), (b"x", None)])
    assert keys.covers(b"a", b"e") and keys.covers(b"b", b"d")
    assert not keys.covers(b"a", b"f") and not keys.covers(b"e")
    assert keys.covers(b"x", b"\x00") and keys.covers(b"zz")
    assert not KeySet([(b"a", b"b")]).covers(b"a", b"\x00")


# ---------------------------------------------------------------------- tokens


def test_token_options() -> None:
    assert isinstance(token_provider("simple"), SimpleTokens)
    for bad in ("magic", "simple,ttl", "jwt", "jwt,sign-method=RS256", "jwt,sign-method=XX1"):
        with pytest.raises(TokenOptionError):
            token_provider(bad)
    with pytest.raises(TokenOptionError, match="jwt"):
        token_provider("jwt,sign-method=RS256,priv-key=/nonexistent/key")


def test_simple_tokens_expire_unless_used() -> None:
    now = [100.0]
    tokens = SimpleTokens(ttl=10, clock=lambda: now[0])
    tokens.enable()
    a = tokens.assign("alice", 1, tokens.new_prefix(), 42)
    b = tokens.assign("bob", 1, tokens.new_prefix(), 43)
    assert a.endswith(".42") and tokens.index_of(a) == 42 and len(a) == 16 + 3
    now[0] += 8
    assert tokens.info(a) is not None  # used: renewed for 10 s more
    now[0] += 8
    assert tokens.info(a) is not None and tokens.info(b) is None
    tokens.invalidate_user("alice")
    assert tokens.info(a) is None
    c = tokens.assign("carol", 1, "p", 44)
    tokens.disable()
    assert tokens.info(c) is None


def test_jwt_tokens_sign_verify_and_expire() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signer = JWTTokens("ES256", private_key=private, ttl=60)
    token = signer.assign("alice", 7, "", 0)
    verifier = JWTTokens("ES256", public_key=public)  # another member, verify-only
    info = verifier.info(token)
    assert info is not None and (info.username, info.revision) == ("alice", 7)
    assert verifier.assign("alice", 7, "", 0) == ""  # cannot sign
    expired = pyjwt.encode(
        {"username": "alice", "revision": 7, "exp": int(time.time()) - 5}, key, algorithm="ES256"
    )
    assert verifier.info(expired) is None
    assert JWTTokens("ES256", private_key=private).info(token[:-3] + "abc") is None
    secret = b"a-shared-secret-of-thirty-two-bytes!"
    wrong_alg = pyjwt.encode({"username": "a", "revision": 1}, secret, algorithm="HS256")
    assert verifier.info(wrong_alg) is None


# ---------------------------------------------------------------------- the store

ROOT = AuthInfo("root", 0)


def _hashed(password: str) -> str:
    return base64.b64encode(bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))).decode()


def _store(path: Path) -> tuple[Backend, AuthStore]:
    backend = Backend(path)
    return backend, AuthStore(backend, SimpleTokens())


def _apply(auth: AuthStore, request: Message, info: AuthInfo | None = None) -> Any:
    return auth.apply(request, info, 1)


def test_auth_store_rules_revision_and_persistence(tmp_path: Path) -> None:
    backend, auth = _store(tmp_path / "db")
    assert (auth.enabled, auth.revision) == (False, 1)
    with pytest.raises(RootUserNotExistError):
        _apply(auth, rpc_pb2.AuthEnableRequest())
    _apply(auth, rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=_hashed("r")))
    with pytest.raises(RootRoleNotExistError):
        _apply(auth, rpc_pb2.AuthEnableRequest())
    _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))  # no role needed
    _apply(auth, rpc_pb2.AuthUserAddRequest(name="alice", hashedPassword=_hashed("a")))
    _apply(auth, rpc_pb2.AuthRoleAddRequest(name="app"))
    with pytest.raises(RoleNotFoundError):
        _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="ghost"))
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"/a/", range_end=b"/a0")
    _apply(auth, rpc_pb2.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="app"))
    assert auth.revision == 7  # one per change, from 1
    _apply(auth, rpc_pb2.AuthEnableRequest())
    assert auth.enabled and auth.revision == 7  # enabling does not bump, as in etcd
    alice = AuthInfo("alice", auth.revision)
    with pytest.raises(UserEmptyError):
        _apply(auth, rpc_pb2.AuthRoleAddRequest(name="x"))
    with pytest.raises(PermissionDeniedError):
        _apply(auth, rpc_pb2.AuthRoleAddRequest(name="x"), alice)
    with pytest.raises(UserNotFoundError):
        _apply(auth, rpc_pb2.AuthRoleAddRequest(name="x"), AuthInfo("ghost", 7))
    assert list(_apply(auth, rpc_pb2.AuthUserGetRequest(name="alice"), alice).roles) == ["app"]
    with pytest.raises(PermissionDeniedError):
        _apply(auth, rpc_pb2.AuthUserGetRequest(name="root"), alice)
    with pytest.raises(InvalidAuthMgmtError):
        _apply(auth, rpc_pb2.AuthUserDeleteRequest(name="root"), ROOT)
    auth.check_write(alice, b"/a/x")
    auth.check_read(alice, b"/a/", b"/a0")
    with pytest.raises(PermissionDeniedError):
        auth.check_read(alice, b"/a/", b"/b")
    with pytest.raises(UserEmptyError):
        auth.check_read(AuthInfo("", 0), b"/a/x")
    backend.commit()
    backend.close()

    backend, auth = _store(tmp_path / "db")  # reopened: the same state
    assert auth.enabled and auth.revision == 7
    assert sorted(auth.users) == ["alice", "root"] and sorted(auth.roles) == ["app"]
    auth.check_write(alice, b"/a/y")
    _apply(auth, rpc_pb2.AuthRoleDeleteRequest(role="app"), ROOT)
    assert list(auth.users["alice"].roles) == []
    with pytest.raises(AuthOldRevisionError):
        auth.check_write(alice, b"/a/y")  # judged at revision 7; the store is at 8
    with pytest.raises(PermissionDeniedError):
        auth.check_write(AuthInfo("alice", auth.revision), b"/a/y")
    _apply(auth, rpc_pb2.AuthDisableRequest(), ROOT)
    assert not auth.enabled and auth.revision == 9
    with pytest.raises(AuthNotEnabledError):
        auth.password_of("alice")
    backend.close()


def test_writes_are_checked_op_by_op(tmp_path: Path) -> None:
    backend, auth = _store(tmp_path / "db")
    for name in ("root", "alice"):
        _apply(auth, rpc_pb2.AuthUserAddRequest(name=name, hashedPassword=_hashed("p")))
    _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    _apply(auth, rpc_pb2.AuthRoleAddRequest(name="app"))
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.WRITE, key=b"/w", range_end=b"")
    _apply(auth, rpc_pb2.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="app"))
    _apply(auth, rpc_pb2.AuthEnableRequest())
    alice = AuthInfo("alice", auth.revision)
    leases = {7: [b"/w"], 8: [b"/w", b"/other"]}

    def check(request: object) -> None:
        check_request(auth, alice, request, leases.get)  # type: ignore[arg-type]

    check(rpc_pb2.PutRequest(key=b"/w", value=b"v", lease=7))
    for refused in (
        rpc_pb2.PutRequest(key=b"/w", prev_kv=True),  # prev_kv reads
        rpc_pb2.PutRequest(key=b"/w", lease=8),  # the lease holds a key alice may not write
        rpc_pb2.LeaseRevokeRequest(ID=8),
        rpc_pb2.DeleteRangeRequest(key=b"/w", range_end=b"/x"),
        rpc_pb2.TxnRequest(
            success=[
                rpc_pb2.RequestOp(
                    request_txn=rpc_pb2.TxnRequest(
                        failure=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/z"))]
                    )
                )
            ]
        ),
        rpc_pb2.TxnRequest(compare=[rpc_pb2.Compare(key=b"/w")]),  # a compare reads
    ):
        with pytest.raises(PermissionDeniedError):
            check(refused)
    check(rpc_pb2.LeaseRevokeRequest(ID=7))
    check(rpc_pb2.LeaseRevokeRequest(ID=99))  # unknown lease: the revoke itself says so
    backend.close()


def test_auth_buckets_in_etcd_layout(tmp_path: Path) -> None:
    store = MVCCStore(tmp_path / "db", lessor=Lessor(time.monotonic))
    view = store.open_view()
    try:
        empty = {
            name: list(items) for name, items in etcd_buckets(view, term=1, cluster_version="")
        }
    finally:
        view.release()
    assert empty[AUTH] == [(b"authRevision", (1).to_bytes(8, "big"))]
    assert empty[AUTH_USERS] == empty[AUTH_ROLES] == []
    auth = AuthStore(store.backend, SimpleTokens())
    store.claim(1)
    _apply(auth, rpc_pb2.AuthUserAddRequest(name="root", hashedPassword=_hashed("p")))
    _apply(auth, rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
    _apply(auth, rpc_pb2.AuthRoleAddRequest(name="app"))
    _apply(auth, rpc_pb2.AuthEnableRequest())
    view = store.open_view()
    try:
        buckets = {
            name: list(items) for name, items in etcd_buckets(view, term=1, cluster_version="3.5.0")
        }
    finally:
        view.release()
    assert buckets[AUTH] == [(b"authEnabled", b"\x01"), (b"authRevision", (4).to_bytes(8, "big"))]
    assert [k for k, _ in buckets[AUTH_USERS]] == [b"root"]
    user = auth_pb2.User.FromString(buckets[AUTH_USERS][0][1])
    assert list(user.roles) == ["root"] and bcrypt.checkpw(b"p", user.password)
    assert [auth_pb2.Role.FromString(v).name for _, v in buckets[AUTH_ROLES]] == [b"app"]
    store.close()


async def test_password_checks_past_the_bound_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A login storm queues at most MAX_WAITING bcrypt jobs; the rest get etcd's error."""
    monkeypatch.setattr(passwords, "MAX_WAITING", 3)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(10))
    outcomes: list[str] = []

    async def login(password: str) -> None:
        try:
            ok = await passwords.password_matches(password, hashed)
            outcomes.append("match" if ok else "mismatch")
        except TooManyRequestsError:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for password in ("pw", "x", "y", "z", "w"):
            tg.start_soon(login, password)
    assert sorted(outcomes) == ["match", "mismatch", "mismatch", "refused", "refused"]
    assert await passwords.password_matches("pw", hashed)  # the bound frees up again
