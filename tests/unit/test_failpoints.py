"""The failpoint switches: parsing, arming, actions, the HTTP endpoint."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from kvstore import failpoints
from kvstore.failpoints import FailpointError, _fire, arm, arm_from_spec, armed, disarm
from kvstore.ports import free_ports


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for name in list(armed()):
        disarm(name)


def test_actions_parse_with_counts_and_probabilities() -> None:
    a = failpoints.Action.parse("25%3*sleep(40)")
    assert (a.kind, a.sleep_ms, a.probability, a.remaining) == ("sleep", 40, 0.25, 3)
    for bad in ("explode", "sleep()", "0%panic", "2*", "sleep(x)"):
        with pytest.raises(ValueError):
            failpoints.Action.parse(bad)
    with pytest.raises(ValueError, match="unknown failpoint"):
        arm("walBeforeWritee", "panic")


def test_error_skip_and_counted_actions_fire_as_armed() -> None:
    assert _fire("walBeforeWrite") is False  # not armed: nothing happens
    arm_from_spec("walBeforeWrite=error; walFsync=2*skip")
    with pytest.raises(FailpointError) as error:
        _fire("walBeforeWrite")
    assert error.value.errno == 5 and "walBeforeWrite" in str(error.value)
    assert _fire("walFsync") is True
    assert _fire("walFsync") is True
    assert _fire("walFsync") is False  # used up
    assert armed() == {"walBeforeWrite": "error"}
    arm("walBeforeWrite", "off")
    assert armed() == {}


def test_off_by_default_is_a_no_op_function() -> None:
    code = "from kvstore import failpoints as f; print(f.enabled(), f.failpoint('walFsync'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_panic_ends_the_process_and_http_arms_points() -> None:
    port = free_ports(1)[0]
    code = (
        "import time\n"
        "from kvstore import failpoints as f\n"
        "f.serve_http_from_env()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    f.failpoint('raftBeforeApply'); time.sleep(0.01)\n"
    )
    env = {"KVSTORE_FAILPOINTS_HTTP": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?all", timeout=5) as resp:
            assert b"walFsync" in resp.read()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/raftBeforeApply", data=b"panic", method="PUT"
        )
        urllib.request.urlopen(req, timeout=5).close()
        assert proc.wait(timeout=30) == failpoints.PANIC_EXIT_CODE
        assert proc.stderr is not None
        assert b"failpoint raftBeforeApply: panic" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
