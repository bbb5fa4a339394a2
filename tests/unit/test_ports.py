"""The port allocator never hands a port out twice, across processes, whatever else runs."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
from pathlib import Path

import pytest

from kvstore import ports
from kvstore.ports import STATE_DIR_ENV, allocation_range, ephemeral_range, free_ports

WORKERS = 4
CALLS_PER_WORKER = 60
PORTS_PER_CALL = 3


def _allocate(
    state_dir: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue[list[int]]
) -> None:
    os.environ[STATE_DIR_ENV] = state_dir
    start.wait()
    got: list[int] = []
    for _ in range(CALLS_PER_WORKER):
        got += free_ports(PORTS_PER_CALL)
    out.put(got)


def _churn(stop: threading.Event, target: tuple[str, int]) -> int:
    """Open and close outgoing connections: each takes an ephemeral port from the kernel."""
    opened = 0
    while not stop.is_set():
        with socket.create_connection(target, timeout=5):
            opened += 1
    return opened


def test_parallel_allocators_never_share_a_port(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    accepting = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not accepting.is_set():
            try:
                conn, _ = listener.accept()
                conn.close()
            except TimeoutError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    stop_churn = threading.Event()
    churned: list[int] = []
    churners = [
        threading.Thread(
            target=lambda: churned.append(_churn(stop_churn, listener.getsockname())),
            daemon=True,
        )
        for _ in range(2)
    ]
    for t in churners:
        t.start()

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out: multiprocessing.Queue[list[int]] = ctx.Queue()
    workers = [
        ctx.Process(target=_allocate, args=(str(tmp_path), start, out)) for _ in range(WORKERS)
    ]
    for w in workers:
        w.start()
    start.set()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    stop_churn.set()
    for t in churners:
        t.join(timeout=10)
    accepting.set()
    acceptor.join(timeout=5)
    listener.close()

    handed_out = [p for got in results for p in got]
    assert len(handed_out) == WORKERS * CALLS_PER_WORKER * PORTS_PER_CALL
    assert len(set(handed_out)) == len(handed_out), "a port was handed out twice"
    low, high = ephemeral_range()
    assert not [p for p in handed_out if low <= p <= high], "a port from the ephemeral range"
    assert sum(churned) > 0, "no outgoing connections were made meanwhile"


def test_a_port_in_use_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    candidates = allocation_range()
    (first,) = free_ports(1)
    nxt = candidates[(candidates.index(first) + 1) % len(candidates)]
    with socket.create_server(("127.0.0.1", nxt)):
        (second,) = free_ports(1)
    assert second not in (first, nxt)


def test_zero_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    assert free_ports(0) == []


def test_too_narrow_a_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 65535))
    with pytest.raises(ports.PortsExhaustedError, match="ip_local_port_range"):
        free_ports(1)
