"""Named failpoints in the write path, switched on from outside (like etcd's gofail).

Code marks a point with ``failpoint("walBeforeFsync")``. Off (the default)
the call is a no-op function: the module picks the no-op at import when
neither environment variable below is set, so production pays one empty
call per point. On, each point looks up its action:

* ``panic``: log the point and end the process at once (``os._exit``), no
  cleanup, as a crash there would;
* ``sleep(ms)``: block the calling thread that long (a slow disk or a stall);
* ``error``: raise :class:`FailpointError` (an ``OSError`` with ``EIO``), as a
  failing disk would;
* ``skip``: return True; the few points that guard one operation skip it
  (``walFsync`` skips the WAL's fdatasync: a test-only mutant that loses
  acknowledged writes on power loss).

An action may be prefixed with ``P%`` (fire with probability P) and ``N*``
(fire at most N times), e.g. ``50%2*panic``.

Switches:

* ``KVSTORE_FAILPOINTS="walBeforeFsync=panic;snapBeforeRename=sleep(200)"``
  arms points from the start;
* ``KVSTORE_FAILPOINTS_HTTP=127.0.0.1:22381`` serves a small HTTP endpoint
  (``kvstore serve`` starts it): ``PUT /<name>`` with the action as body arms a
  point, ``DELETE /<name>`` disarms it, ``GET /`` lists the armed ones and
  ``GET /?all`` every point the code declares.

The names are in :data:`POINTS`; arming an unknown name is refused, so a
typo cannot pass for a point that was never reached.
"""

from __future__ import annotations

import errno
import http.server
import logging
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "KVSTORE_FAILPOINTS"
HTTP_ENV = "KVSTORE_FAILPOINTS_HTTP"
PANIC_EXIT_CODE = 70
"""Exit status of a process ended by a ``panic`` failpoint."""

POINTS: dict[str, str] = {
    # kvstore/storage/wal.py
    "walBeforeWrite": "before a batch of entries and hard state is written to the WAL",
    "walAfterWrite": "after the batch is written, before its fdatasync",
    "walFsync": "the WAL's fdatasync itself (skip: a mutant that never syncs)",
    "walAfterFsync": "after the fdatasync, before the batch is acknowledged",
    "walBeforeCut": "before the WAL rolls over to a new segment",
    "walAfterCut": "after a new segment was created and the directory synced",
    "walAfterReleaseSegments": "after WAL segments covered by a snapshot were deleted",
    # kvstore/storage/snap.py
    "snapBeforeSave": "before a snapshot file is written",
    "snapBeforeRename": "after the snapshot's temporary file is synced, before its rename",
    "snapAfterSave": "after the snapshot file is renamed into place and its directory synced",
    # kvstore/mvcc/backend.py
    "backendBeforeCommit": "before the backend's batch transaction commits",
    "backendAfterCommit": "after the batch transaction committed",
    "defragBeforeCopy": "before defrag copies the database",
    "defragBeforeRename": "after defrag's compacted copy is synced, before it replaces the db",
    "defragAfterRename": "after the compacted copy replaced the database",
    "backendBeforeRestore": "before a snapshot from the leader replaces the database",
    # kvstore/server/node.py
    "raftBeforeLeaderSend": "before the leader sends appends that overlap its WAL write",
    "raftBeforeSave": "before a Ready's entries, hard state and snapshot are persisted",
    "raftAfterSave": "after a Ready was persisted",
    "raftBeforeApply": "before committed entries are applied",
    "raftAfterApply": "after committed entries were applied",
    "raftBeforeSaveSnapshot": "before a snapshot taken here is recorded in Raft and the WAL",
    "raftAfterSaveSnapshot": "after the snapshot was recorded and the log compacted",
    "raftBeforeApplySnap": "before a snapshot from the leader is installed",
    "raftAfterApplySnap": "after a snapshot from the leader was installed",
}
"""Every failpoint the code declares, with where it sits."""


class FailpointError(OSError):
    """An ``error`` failpoint fired: raised where the disk operation would have failed."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EIO, f"failpoint {name}: injected I/O error")
        self.name = name


_ACTION_RE = re.compile(
    r"^(?:(?P<pct>\d+(?:\.\d+)?)%)?(?:(?P<count>\d+)\*)?"
    r"(?P<kind>panic|error|skip|off|sleep\((?P<ms>\d+)\))$"
)


@dataclass
class Action:
    """A parsed action: what to do, how often, with which probability."""

    kind: str  # panic | error | skip | sleep | off
    sleep_ms: int = 0
    probability: float = 1.0
    remaining: int | None = None  # None: unlimited
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> Action:
        m = _ACTION_RE.match(spec.strip())
        if m is None:
            raise ValueError(
                f"bad failpoint action {spec!r}: want [P%][N*](panic|error|skip|sleep(ms)|off)"
            )
        kind = m["kind"]
        ms = int(m["ms"]) if m["ms"] else 0
        if kind.startswith("sleep"):
            kind = "sleep"
        pct = float(m["pct"]) if m["pct"] else 100.0
        if not 0 < pct <= 100:
            raise ValueError(f"bad failpoint probability in {spec!r}")
        count = int(m["count"]) if m["count"] else None
        return cls(kind, ms, pct / 100, count, spec.strip())


_armed: dict[str, Action] = {}
_lock = threading.Lock()
_rng = random.Random()


def arm(name: str, spec: str) -> None:
    """Arm point ``name`` with action ``spec`` (``off`` disarms). Raises ValueError."""
    if name not in POINTS:
        raise ValueError(f"unknown failpoint {name!r}")
    action = Action.parse(spec)
    with _lock:
        if action.kind == "off":
            _armed.pop(name, None)
        else:
            _armed[name] = action
    log.warning("failpoint %s armed: %s", name, action.spec)


def disarm(name: str) -> None:
    with _lock:
        _armed.pop(name, None)


def armed() -> dict[str, str]:
    """The armed points and their actions."""
    with _lock:
        return {name: a.spec for name, a in _armed.items()}


def arm_from_spec(specs: str) -> None:
    """Arm ``name=action`` pairs separated by ``;`` (the ``KVSTORE_FAILPOINTS`` syntax)."""
    for part in specs.split(";"):
        if part.strip():
            name, sep, action = part.partition("=")
            if not sep:
                raise ValueError(f"bad failpoint {part!r}: want name=action")
            arm(name.strip(), action)


def _fire(name: str) -> bool:
    with _lock:
        action = _armed.get(name)
        if action is None:
            return False
        if action.probability < 1.0 and _rng.random() >= action.probability:
            return False
        if action.remaining is not None:
            action.remaining -= 1
            if action.remaining <= 0:
                del _armed[name]
    if action.kind == "panic":
        msg = f"failpoint {name}: panic"
        log.critical(msg)
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        os._exit(PANIC_EXIT_CODE)
    if action.kind == "sleep":
        time.sleep(action.sleep_ms / 1000)
        return False
    if action.kind == "error":
        raise FailpointError(name)
    return action.kind == "skip"


def _off(name: str) -> bool:
    return False


def enabled() -> bool:
    """Whether failpoints were switched on for this process."""
    return failpoint is _fire


failpoint: Callable[[str], bool] = _fire if (ENV in os.environ or HTTP_ENV in os.environ) else _off
"""``failpoint(name)``: run the point's action; True only for ``skip``."""

if failpoint is _fire and os.environ.get(ENV):
    arm_from_spec(os.environ[ENV])


class _Handler(http.server.BaseHTTPRequestHandler):
    def _reply(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.endswith("?all"):
            self._reply(200, "".join(f"{n}\t{d}\n" for n, d in POINTS.items()))
        else:
            self._reply(200, "".join(f"{n}={s}\n" for n, s in sorted(armed().items())))

    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        spec = self.rfile.read(length).decode(errors="replace")
        try:
            arm(self.path.strip("/"), spec)
        except ValueError as error:
            self._reply(400, f"{error}\n")
            return
        self._reply(204, "")

    def do_DELETE(self) -> None:
        name = self.path.strip("/")
        if name not in POINTS:
            self._reply(404, f"unknown failpoint {name!r}\n")
            return
        disarm(name)
        self._reply(204, "")

    def log_message(self, format: str, *args: object) -> None:
        log.info("failpoints http: " + format, *args)


def serve_http_from_env() -> http.server.ThreadingHTTPServer | None:
    """Start the control endpoint named by ``KVSTORE_FAILPOINTS_HTTP`` (daemon thread)."""
    address = os.environ.get(HTTP_ENV)
    if not address:
        return None
    host, _, port = address.rpartition(":")
    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), _Handler)
    threading.Thread(target=server.serve_forever, name="failpoints-http", daemon=True).start()
    log.warning("failpoints: control endpoint on http://%s", address)
    return server
