"""A lease-lock contender process: leads by doing guarded writes (tests, benchmarks, demos).

Prints one JSON object per line on stdout (``t`` is CLOCK_MONOTONIC, which
all processes on the machine share):

- ``{"event": "ready"}`` once connected;
- ``{"event": "new_leader", "identity": ...}``;
- ``{"event": "started", "token": N}`` when it becomes leader;
- ``{"event": "write", "ok": true, "revision": R, "seq": S}`` for each guarded
  write while leading, ``"ok": false`` with ``"error"`` when rejected;
- ``{"event": "stopped"}`` when leadership ends.

SIGTERM cancels the elector (releasing the lock with --release-on-cancel)
and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from datetime import datetime, timedelta

import anyio

from election import Callbacks, ElectionConfig, LeaderElector, Leadership, LeadershipLost
from election.config import SystemClock
from kvstore.client import Client, EtcdError


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class ShiftedWallClock(SystemClock):
    """The system clock moved by a fixed offset: a host whose wall clock is wrong."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def wall(self) -> datetime:
        return super().wall() + self.offset


async def main(args: argparse.Namespace) -> None:
    config = ElectionConfig(
        name=args.lock,
        namespace="tests",
        identity=args.identity,
        lease_duration=args.lease,
        renew_deadline=args.renew,
        retry_period=args.retry,
        release_on_cancel=args.release_on_cancel,
    )
    async with Client(
        args.endpoints.split(","),
        default_timeout=args.renew,
        user=args.etcd_username,
        password=args.etcd_password,
    ) as client:

        async def lead(leadership: Leadership) -> None:
            emit("started", token=leadership.token)
            seq = 0
            while True:
                seq += 1
                try:
                    resp = await leadership.put(args.work_key, f"{args.identity}:{seq}")
                    emit("write", ok=True, revision=resp.header.revision, seq=seq)
                except LeadershipLost as error:
                    emit("write", ok=False, error=f"LeadershipLost: {error}", seq=seq)
                    await leadership.lost.wait()
                except EtcdError as error:
                    emit("write", ok=False, error=f"{type(error).__name__}: {error}", seq=seq)
                await anyio.sleep(args.write_interval)  # the workload's pace

        elector = LeaderElector(
            client,
            config,
            Callbacks(
                on_started_leading=lead,
                on_stopped_leading=lambda: emit("stopped"),
                on_new_leader=lambda identity: emit("new_leader", identity=identity),
            ),
            clock=ShiftedWallClock(args.wall_offset),
        )
        emit("ready")
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tasks:

                async def campaign_forever() -> None:
                    while True:
                        await elector.run()

                tasks.start_soon(campaign_forever)
                async for _ in signals:
                    tasks.cancel_scope.cancel()
                    break
    emit("exit")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--lock", default="contended")
    parser.add_argument("--work-key", default="/tests/work")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--renew", type=float, default=1.5)
    parser.add_argument("--retry", type=float, default=0.4)
    parser.add_argument("--write-interval", type=float, default=0.05)
    parser.add_argument("--wall-offset", type=float, default=0.0)
    parser.add_argument("--release-on-cancel", action="store_true")
    parser.add_argument("--etcd-username", default=None, help="log in as this user")
    parser.add_argument("--etcd-password", default=None)
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    anyio.run(main, parse())
    sys.exit(0)
