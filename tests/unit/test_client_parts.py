"""Client pieces that need no server: txn builders, range ends, error mapping."""

from __future__ import annotations

import grpc
import pytest

from kvstore._pb.etcdserverpb import rpc_pb2 as pb
from kvstore.client import (
    CompactedError,
    EtcdError,
    InvalidRequestError,
    LeaseNotFoundError,
    NoLeaderError,
    UnavailableError,
    prefix_end,
    txn,
)
from kvstore.client.endpoints import EndpointPool, normalize_endpoint
from kvstore.client.errors import from_status


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"a", b"b"), (b"/x/", b"/x0"), (b"a\xff", b"b"), (b"\xff\xff", b"\0"), (b"", b"\0")],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_range_request_options() -> None:
    assert txn.range_request("k").range_end == b""
    assert txn.range_request("k", prefix=True).range_end == b"l"
    assert txn.range_request("k", from_key=True).range_end == b"\0"
    assert txn.range_request("k", "z").range_end == b"z"
    with pytest.raises(ValueError, match="at most one"):
        txn.range_request("k", "z", prefix=True)


def test_compare_builders() -> None:
    c = txn.mod_revision("k") < 5
    assert (c.target, c.result, c.key, c.mod_revision) == (pb.Compare.MOD, pb.Compare.LESS, b"k", 5)
    c = txn.value("k", prefix=True) != "v"
    assert (c.target, c.result, c.value, c.range_end) == (
        pb.Compare.VALUE,
        pb.Compare.NOT_EQUAL,
        b"v",
        b"l",
    )
    assert (txn.version("k") > 1).result == pb.Compare.GREATER
    assert (txn.create_revision("k") == 0).WhichOneof("target_union") == "create_revision"
    assert (txn.lease("k") == 7).lease == 7
    with pytest.raises(TypeError):
        _ = txn.version("k") == "not a number"


def test_txn_clauses_in_order_once() -> None:
    t = txn.txn().when(txn.version("a") == 0).then(txn.put("a", "1")).otherwise(txn.get("a"))
    request = t.request()
    assert len(request.compare) == 1
    assert request.success[0].request_put.value == b"1"
    assert request.failure[0].request_range.key == b"a"
    with pytest.raises(ValueError, match="out of order"):
        txn.txn().then().when()
    with pytest.raises(ValueError, match="twice"):
        txn.txn().then().then()


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", NoLeaderError),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
            CompactedError,
        ),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFoundError),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: request is too large",
            InvalidRequestError,
        ),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", UnavailableError),
        (grpc.StatusCode.INTERNAL, "boom", EtcdError),
    ],
)
def test_error_mapping(code: grpc.StatusCode, details: str, expected: type[EtcdError]) -> None:
    error = from_status(code, details)
    assert type(error) is expected
    assert error.code == code and error.message == details


def test_endpoint_pool_round_robin() -> None:
    pool = EndpointPool(["http://a:1", "b:2", "c:3"])
    assert pool.endpoints == ["a:1", "b:2", "c:3"]
    assert pool.fail_over("a:1") == "b:2"
    assert pool.fail_over("a:1") == "b:2"  # a stale failure report does not skip b
    assert pool.fail_over("b:2") == "c:3"
    assert pool.fail_over("c:3") == "a:1"
    with pytest.raises(ValueError):
        normalize_endpoint("nohost")
    with pytest.raises(ValueError):
        EndpointPool([])
