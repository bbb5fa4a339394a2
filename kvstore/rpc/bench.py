"""CPU per unary call of our gRPC server and of grpc.aio's, on the same handler and load.

``python -m kvstore.rpc.bench``: each server runs in a process of its own
(on asyncio's loop, then on uvloop where installed) answering etcd's
``KV/Range`` with a fixed one-key response; the same grpc.aio load generator
(this process) calls it from 1 and from 64 concurrent callers over 4
channels, and the server's CPU time per call is read from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import grpc

from kvstore._pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from kvstore._pb.mvccpb import kv_pb2
from kvstore.ports import free_ports
from kvstore.rpc import CallContext, Method, Server

CHANNELS = 4
_KV = kv_pb2.KeyValue(
    key=b"bench/0001", value=b"v" * 256, create_revision=5, mod_revision=9, version=3
)


def _response() -> rpc_pb2.RangeResponse:
    resp = rpc_pb2.RangeResponse(count=1)
    resp.header.revision = 9
    resp.kvs.append(_KV)
    return resp


async def _serve_ours(port: int) -> None:
    def range_(req: rpc_pb2.RangeRequest, ctx: CallContext) -> rpc_pb2.RangeResponse:
        return _response()

    server = Server(
        {"/etcdserverpb.KV/Range": Method(rpc_pb2.RangeRequest, range_)},
        max_receive_bytes=1536 * 1024,
    )
    await server.listen("127.0.0.1", port)
    print("ready", flush=True)
    await asyncio.Future()


async def _serve_grpc_aio(port: int) -> None:
    class KV(rpc_pb2_grpc.KVServicer):
        async def Range(self, request: Any, context: Any) -> rpc_pb2.RangeResponse:
            return _response()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    rpc_pb2_grpc.add_KVServicer_to_server(KV(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


async def _load(port: int, callers: int, seconds: float) -> int:
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CHANNELS)
    ]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in channels]  # type: ignore[no-untyped-call]
    done = 0
    end = time.monotonic() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        while time.monotonic() < end:
            await stubs[i % CHANNELS].Range(rpc_pb2.RangeRequest(key=b"bench/0001"), timeout=10)
            done += 1

    await asyncio.gather(*(caller(i) for i in range(callers)))
    for c in channels:
        await c.close()
    return done


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstore.rpc.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--serve", nargs=3, metavar=("SERVER", "LOOP", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        server, loop, port = args.serve
        serve = _serve_ours if server == "kvstore.rpc" else _serve_grpc_aio
        if loop == "uvloop":
            import uvloop

            uvloop.run(serve(int(port)))
        else:
            asyncio.run(serve(int(port)))
        return 0
    print(f"{'server':12}{'loop':9}{'callers':>8}{'calls/s':>10}{'server cpu us/call':>20}")
    for server in ("kvstore.rpc", "grpc.aio"):
        for loop in _loops():
            (port,) = free_ports(1)
            proc = subprocess.Popen(
                [sys.executable, "-m", "kvstore.rpc.bench", "--serve", server, loop, str(port)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None
                proc.stdout.readline()
                for callers in (1, 64):
                    cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
                    done = asyncio.run(_load(port, callers, args.seconds))
                    cpu = _cpu_seconds(proc.pid) - cpu0
                    rate = done / (time.monotonic() - t0)
                    print(f"{server:12}{loop:9}{callers:8}{rate:10.0f}{cpu / done * 1e6:20.1f}")
            finally:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
