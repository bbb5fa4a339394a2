"""The committed kvstore/_pb must be exactly what ``make proto`` generates from proto/."""

from __future__ import annotations

from pathlib import Path

from kvstore._pb import generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert written, "protoc generated nothing"
    stale = [
        str(rel)
        for rel in written
        if (generate.PACKAGE_DIR / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, f"kvstore/_pb is stale; run 'make proto'. Differs: {stale}"
    committed = {
        p.relative_to(generate.PACKAGE_DIR)
        for pkg in generate.PROTO_PACKAGES
        for p in (generate.PACKAGE_DIR / pkg).rglob("*.py*")
        if "__pycache__" not in p.parts
    }
    assert committed == set(written), "kvstore/_pb has files proto/ no longer generates"


def test_wire_names_match_etcd() -> None:
    """Spot-check facts etcd's clients depend on: full method names and field numbers."""
    from kvstore._pb.etcdserverpb import rpc_pb2

    kv = rpc_pb2.DESCRIPTOR.services_by_name["KV"]
    assert [m.full_name for m in kv.methods] == [
        "etcdserverpb.KV.Range",
        "etcdserverpb.KV.Put",
        "etcdserverpb.KV.DeleteRange",
        "etcdserverpb.KV.Txn",
        "etcdserverpb.KV.Compact",
    ]
    compare = rpc_pb2.Compare.DESCRIPTOR
    assert compare.fields_by_name["range_end"].number == 64
    assert rpc_pb2.WatchResponse.DESCRIPTOR.fields_by_name["events"].number == 11
    assert rpc_pb2.LeaseGrantRequest.DESCRIPTOR.fields_by_name["TTL"].number == 1
