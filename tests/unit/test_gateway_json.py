"""The gateway's JSON mapping without a server: etcd's encoding rules and Go's error texts.

(The differential test compares the same things with a real etcd on the wire; these
pin the rules down where they are easy to read and quick to run.)
"""

from __future__ import annotations

import json

import pytest

from kvstore._pb.etcdserverpb import rpc_pb2
from kvstore._pb.mvccpb import kv_pb2
from kvstore.gateway import gojson, jsonpb
from kvstore.gateway.errors import error_body, http_status, stream_error_chunk
from kvstore.gateway.gojson import GoJSONError


def test_encode_uses_proto_names_strings_for_64_bit_and_omits_zero_values() -> None:
    resp = rpc_pb2.RangeResponse(
        header=rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4),
        kvs=[kv_pb2.KeyValue(key=b"foo", create_revision=3, mod_revision=3, version=1)],
        count=1,
    )
    assert jsonpb.encode(resp) == (
        '{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"4"},'
        '"kvs":[{"key":"Zm9v","create_revision":"3","mod_revision":"3","version":"1"}],'
        '"count":"1"}'
    )
    # deleted=0, more=false, empty lists: absent, as clients test for the key.
    assert jsonpb.encode(rpc_pb2.DeleteRangeResponse()) == "{}"
    assert jsonpb.encode(rpc_pb2.LeaseGrantResponse(ID=7, TTL=60)) == '{"ID":"7","TTL":"60"}'


def test_encode_enums_by_name_32_bit_as_numbers_and_strings_as_go() -> None:
    event = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k"))
    assert jsonpb.encode(event) == '{"type":"DELETE","kv":{"key":"aw=="}}'
    assert jsonpb.encode(rpc_pb2.HashResponse(hash=4294967295)) == '{"hash":4294967295}'
    member = rpc_pb2.Member(ID=1, name="a<b>&c\u2028é", clientURLs=["http://x:1"])
    assert jsonpb.encode(member) == (
        '{"ID":"1","name":"a\\u003cb\\u003e\\u0026c\\u2028é","clientURLs":["http://x:1"]}'
    )
    # A oneof member set to its zero value is present (as etcd writes a CREATE==0 compare).
    compare = rpc_pb2.Compare(target=rpc_pb2.Compare.CREATE, key=b"k", create_revision=0)
    assert jsonpb.encode(compare) == '{"target":"CREATE","key":"aw==","create_revision":"0"}'


def _decoded(body: bytes, message_type: type = rpc_pb2.RangeRequest) -> object:
    message = message_type()
    jsonpb.decode(body, message)
    return message


def test_decode_accepts_either_name_numbers_or_strings_and_ignores_the_rest() -> None:
    got = _decoded(
        b'{"key":"Zm9v","rangeEnd":"Zm9w","range_end":"eno=","limit":"5","sort_order":2,'
        b'"sortTarget":"MOD","serializable":true,"revision":null,"unknown":[1,{"a":2}]}'
    )
    assert got == rpc_pb2.RangeRequest(
        key=b"foo",
        range_end=b"fop",  # the camelCase name wins, as in jsonpb
        limit=5,
        sort_order=rpc_pb2.RangeRequest.DESCEND,
        sort_target=rpc_pb2.RangeRequest.MOD,
        serializable=True,
    )
    assert _decoded(b"") == rpc_pb2.RangeRequest()
    assert _decoded(b" null ") == rpc_pb2.RangeRequest()
    assert _decoded(b'{"key":[102,111,111]}') == rpc_pb2.RangeRequest(key=b"foo")


def test_decode_sets_oneofs_and_empty_messages_as_present() -> None:
    got = _decoded(
        b'{"compare":[{"target":"CREATE","key":"aw==","create_revision":0}],'
        b'"success":[{"request_range":{}}],"failure":[{"request_txn":{"success":[]}}]}',
        rpc_pb2.TxnRequest,
    )
    assert isinstance(got, rpc_pb2.TxnRequest)
    assert got.compare[0].WhichOneof("target_union") == "create_revision"
    assert got.success[0].WhichOneof("request") == "request_range"
    assert got.failure[0].WhichOneof("request") == "request_txn"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"key":', "unexpected EOF"),
        (b"{", "unexpected EOF"),
        (b'{"key":x}', "invalid character 'x' looking for beginning of value"),
        (b'{"key" 1}', "invalid character '1' after object key"),
        (b'{"key":"a" "b"}', "invalid character '\"' after object key:value pair"),
        (b"{'key':1}", "invalid character '\\'' looking for beginning of object key string"),
        (b'{"key":"\x01"}', "invalid character '\\x01' in string literal"),
        (b'{"key":"\\q"}', "invalid character 'q' in string escape code"),
        (b'{"key":1.}', "invalid character '}' after decimal point in numeric literal"),
        (b'{"key":tru}', "invalid character '}' in literal true (expecting 'e')"),
        (b'{"key":NaN}', "invalid character 'N' looking for beginning of value"),
        (b'{"key":"Zm9v!"}', "illegal base64 data at input byte 4"),
        (b'{"key":"Zm8"}', "illegal base64 data at input byte 0"),
        (b'{"key":"Zm=9"}', "illegal base64 data at input byte 2"),
        (b'{"key":5}', "json: cannot unmarshal number into Go value of type []uint8"),
        (b'{"limit":"abc"}', "invalid character 'a' looking for beginning of value"),
        (b'{"limit":""}', "unexpected end of JSON input"),
        (b'{"limit":"01"}', "invalid character '1' after top-level value"),
        (b'{"limit":1.5}', "json: cannot unmarshal number 1.5 into Go value of type int64"),
        (b'{"limit":true}', "json: cannot unmarshal bool into Go value of type int64"),
        (b'{"serializable":"yes"}', "json: cannot unmarshal string into Go value of type bool"),
        (
            b'{"sort_order":"SIDEWAYS"}',
            'unknown value "\\"SIDEWAYS\\"" for enum etcdserverpb.RangeRequest.SortOrder',
        ),
        (b"[]", "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
    ],
)
def test_decode_errors_are_gos(body: bytes, message: str) -> None:
    with pytest.raises(GoJSONError) as raised:
        _decoded(body)
    assert str(raised.value) == message


def test_the_splitter_finds_the_same_values_fed_byte_by_byte() -> None:
    stream = b' {"ID":1}\n{"ID":"2"}{"a":[1,{"b":"}"}]}  '
    whole = []
    buffer = bytearray(stream)
    splitter = gojson.ValueSplitter()
    while (end := splitter.end(buffer, at_eof=True)) is not None:
        whole.append(json.loads(bytes(buffer[:end])))
        del buffer[:end]
        splitter.reset()
    one_by_one = []
    buffer = bytearray()
    splitter = gojson.ValueSplitter()
    for i in range(len(stream)):
        buffer.append(stream[i])
        end = splitter.end(buffer, at_eof=False)
        if end is not None:
            one_by_one.append(json.loads(bytes(buffer[:end])))
            del buffer[:end]
            splitter.reset()
    assert whole == one_by_one == [{"ID": 1}, {"ID": "2"}, {"a": [1, {"b": "}"}]}]
    with pytest.raises(GoJSONError, match="unexpected EOF"):
        gojson.ValueSplitter().end(b'{"ID":', at_eof=True)


def test_error_bodies_are_grpc_gateways() -> None:
    assert error_body(5, "etcdserver: requested lease not found") == (
        b'{"error":"etcdserver: requested lease not found","code":5,'
        b'"message":"etcdserver: requested lease not found"}'
    )
    assert stream_error_chunk(14, "etcdserver: no leader") == (
        b'{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader",'
        b'"http_status":"Service Unavailable"}}'
    )
    assert [http_status(code) for code in (3, 4, 5, 7, 8, 9, 11, 12, 14, 16, 99)] == [
        400,
        504,
        404,
        403,
        429,
        400,
        400,
        501,
        503,
        401,
        500,
    ]
