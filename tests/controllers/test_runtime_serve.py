"""A component's loop that returns by itself is a failure, not a clean stop."""

from __future__ import annotations

import argparse
import json

import pytest

from controllers.runtime import BODY_ENDED_STATUS, serve
from kvstore.client import Client


def _args() -> argparse.Namespace:
    return argparse.Namespace(
        endpoints="127.0.0.1:1",  # never dialled: the body makes no call
        etcd_username=None,
        etcd_password=None,
        etcd_password_file=None,
        etcd_cafile=None,
        etcd_certfile=None,
        etcd_keyfile=None,
    )


async def test_a_body_that_returns_exits_with_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[Client] = []

    async def body(client: Client) -> None:
        ran.append(client)  # and return, as a stray cancellation once made controllers do

    with pytest.raises(SystemExit) as exited:
        await serve(_args(), body)
    assert ran
    assert exited.value.code == BODY_ENDED_STATUS != 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e.get("status") for e in events if e["event"] == "exit"] == [BODY_ENDED_STATUS]
