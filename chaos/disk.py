"""A member's disk that can lose power: the harness's side of :mod:`chaos.powerfs`.

:class:`PowerLossDisk` mounts a power-loss filesystem over a member's data
directory (its durable state kept in a sibling ``<dir>.disk``), and then:

* :meth:`cut_power` SIGKILLs the filesystem process, which drops everything
  not yet made durable, and detaches the dead mount; :meth:`mount` again is
  the reboot (kill the member first, start it after);
* :meth:`set_fault` makes the disk full (ENOSPC), failing (EIO on fsync) or
  slow (every fsync takes N ms);
* :meth:`sync_all` makes everything durable, as the kernel's writeback would
  after a while; :meth:`unmount` syncs and unmounts cleanly.

Needs ``/dev/fuse`` and ``fusermount3`` (Debian's ``fuse3``; the Makefile
installs it) and permission to mount (root, or fuse's setuid helper).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class DiskError(RuntimeError):
    """The power-loss filesystem could not be mounted, reached or unmounted."""


def fuse_available() -> str | None:
    """None if power-loss disks can be mounted here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as error:  # OSError: libfuse3 itself is missing
        return f"mfusepy unusable: {error}"
    return None


def _detach(mount: Path) -> None:
    """Lazily unmount ``mount`` if something (perhaps a dead filesystem) is mounted there."""
    if os.path.ismount(mount) or _is_dead_mount(mount):
        subprocess.run(["fusermount3", "-u", "-z", str(mount)], capture_output=True, timeout=30)


def _is_dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == 107  # ENOTCONN: a FUSE mount whose process died
    return False


class PowerLossDisk:
    """One member's power-loss disk (blocking methods; bounded in time)."""

    def __init__(self, mount: Path, log_path: Path | None = None) -> None:
        self.mount_point = mount
        self.backing = mount.with_name(mount.name + ".disk")
        # An abstract Unix socket (Linux): no file, and no 108-byte limit on the test's path.
        digest = hashlib.sha256(str(self.backing.resolve()).encode()).hexdigest()[:24]
        self.control_name = f"kvstore-powerfs-{digest}"
        self.log_path = log_path or mount.with_name(mount.name + ".powerfs.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.power_cuts = 0

    @property
    def mounted(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def mount(self, timeout: float = 30.0) -> None:
        """Start the filesystem over the mount point and wait until it serves."""
        if self.mounted:
            return
        _detach(self.mount_point)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chaos.powerfs",
                    "--backing",
                    str(self.backing),
                    "--mount",
                    str(self.mount_point),
                    "--control-name",
                    self.control_name,
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
            )
        assert self.process.stdout is not None
        # The filesystem prints "mounted" from its init callback: the mount is live.
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"mounted":
            self._kill()
            raise DiskError(f"powerfs did not mount {self.mount_point}: see {self.log_path}")

    def _kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def cut_power(self) -> dict[str, Any]:
        """Drop everything not yet durable (kill the member first). Returns what was lost."""
        lost: dict[str, Any] = {}
        with contextlib.suppress(DiskError):
            lost = self.control(cmd="stats")
        self._kill()
        _detach(self.mount_point)
        self.power_cuts += 1
        log.info("power cut on %s: lost %s", self.mount_point, lost)
        return lost

    def unmount(self) -> None:
        """Make everything durable and unmount (a clean shutdown of the machine)."""
        if not self.mounted:
            _detach(self.mount_point)
            return
        with contextlib.suppress(DiskError):
            self.control(cmd="sync_all")
        proc = subprocess.run(
            ["fusermount3", "-u", str(self.mount_point)], capture_output=True, timeout=30
        )
        if proc.returncode != 0:
            log.warning("fusermount3 -u %s: %s", self.mount_point, proc.stderr.decode().strip())
            _detach(self.mount_point)
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._kill()

    def control(self, **request: Any) -> dict[str, Any]:
        """One request to the control socket (see :class:`chaos.powerfs.Control`)."""
        if not self.mounted:
            raise DiskError(f"{self.mount_point} is not mounted")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect("\0" + self.control_name)
                sock.sendall(json.dumps(request).encode() + b"\n")
                with sock.makefile("rb") as f:
                    reply: dict[str, Any] = json.loads(f.readline())
        except (OSError, ValueError) as error:
            raise DiskError(f"powerfs control of {self.mount_point}: {error}") from error
        if "error" in reply:
            raise DiskError(f"powerfs control: {reply['error']}")
        return reply

    def set_fault(
        self,
        *,
        full: bool | None = None,
        fsync_error: bool | None = None,
        fsync_delay_ms: int | None = None,
    ) -> dict[str, Any]:
        """Change the disk's faults (None leaves one as it is)."""
        request: dict[str, Any] = {"cmd": "fault"}
        for key, value in (
            ("full", full),
            ("fsync_error", fsync_error),
            ("fsync_delay_ms", fsync_delay_ms),
        ):
            if value is not None:
                request[key] = value
        return self.control(**request)

    def heal(self) -> None:
        """Clear every fault."""
        if self.mounted:
            self.set_fault(full=False, fsync_error=False, fsync_delay_ms=0)

    def sync_all(self) -> None:
        self.control(cmd="sync_all")

    def stats(self) -> dict[str, Any]:
        return self.control(cmd="stats")
