"""Helpers of ``kvstore bench --mode ...`` that read a member's /proc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kvstore.cli.bench_hostile import _sockets


def test_a_descriptor_closed_while_counting_sockets_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The member opens and closes connections while its fds are counted: one that is
    gone between the listing and its readlink is not counted (it raised before)."""
    a, b = socket.socketpair()
    try:
        before = _sockets(os.getpid())
        assert before >= 2
        real_readlink = os.readlink
        gone: list[str] = []

        def readlink_one_gone(path: str | os.PathLike[str]) -> str:
            if not gone:
                gone.append(str(path))
                raise FileNotFoundError(path)
            return real_readlink(path)

        monkeypatch.setattr(os, "readlink", readlink_one_gone)
        counted = _sockets(os.getpid())
        monkeypatch.undo()
        skipped_a_socket = real_readlink(Path(gone[0])).startswith("socket:")
        assert counted == before - skipped_a_socket
    finally:
        a.close()
        b.close()
