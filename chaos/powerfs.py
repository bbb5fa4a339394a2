"""A FUSE filesystem that loses, on a power cut, everything not yet made durable.

``python -m chaos.powerfs --backing DIR --mount MNT --control-name NAME``
mounts a filesystem at MNT whose *durable* state lives in DIR and whose
not-yet-durable state lives only in this process's memory. SIGKILL of this
process is the power cut: the kernel tears the mount down and DIR holds
exactly what had been made durable. Mounting DIR again is the reboot.

What is durable (the rules of a POSIX disk, taken strictly):

* a file's data and size, as of its last ``fsync``/``fdatasync`` (``msync``
  reaches us as fsync; a write through a descriptor opened with ``O_SYNC`` or
  ``O_DSYNC``, as LMDB's meta page writes are, is durable when it returns);
* a directory's entries (creates, unlinks, renames, mkdir, rmdir), as of the
  last ``fsync`` of that directory. A rename between two directories becomes
  durable as a whole when either is synced. Syncing a file does *not* make
  its name durable (Linux's fsync(2) says so; ext4 happens to, others not).

Until then, writes are kept in memory as dirty 4 KiB pages over the durable
content, and namespace changes as a list of pending operations; reads see
everything, as they would through a page cache. Dirty data is bounded: past
:data:`DIRTY_LIMIT` bytes the file being written is written back (made
durable) as the kernel's writeback would, and past :data:`PENDING_LIMIT`
namespace operations the oldest half is committed; that can only lose less.

On disk (DIR): ``objects/<ino>`` holds each file's durable content and
``namespace.json`` the durable directory tree (inode -> kind, mode,
entries), replaced atomically at each directory sync. A reboot keeps the
inodes reachable from the root and deletes the rest (like fsck's orphans).

Faults, set through the control socket (one JSON object per line, see
:class:`Control`): ``full`` (writes and creates fail with ENOSPC),
``fsync_error`` (fsync fails with EIO), ``fsync_delay_ms`` (every fsync takes
that long: a slow disk); ``sync_all`` makes everything durable, ``stats``
reports dirty bytes and pending operations.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mfusepy

log = logging.getLogger(__name__)

PAGE = 4096
DIRTY_LIMIT = 256 << 20
"""Dirty bytes kept in memory before the file being written is written back."""
PENDING_LIMIT = 4096
"""Pending namespace operations kept before the oldest half is committed (a journal commit)."""
ROOT = 1
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


def _error(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


@dataclass
class Node:
    """A live inode: what a reader sees now."""

    ino: int
    kind: str  # "file" | "dir"
    mode: int
    entries: dict[str, int] = field(default_factory=dict)  # dir: name -> ino
    links: int = 0  # live names pointing here
    opens: int = 0
    size: int = 0
    # Bytes of objects/<ino> still valid for this file: a truncate that shrank it
    # (not yet synced) makes the durable bytes past it stale.
    valid: int = 0
    pages: dict[int, bytearray] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def dirty(self) -> bool:
        return bool(self.pages) or self.size != self.valid


@dataclass
class Pending:
    """A namespace change not yet durable: which directories it touches, what it does."""

    dirs: tuple[int, ...]
    op: str  # link | unlink | rename
    args: tuple[Any, ...]


class PowerLossFS(mfusepy.Operations):  # type: ignore[misc]
    """The filesystem (one instance per mount; every callback holds ``self._mutex``)."""

    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.backing = backing.resolve()
        self.objects = self.backing / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self.full = False
        self.fsync_error = False
        self.fsync_delay = 0.0
        self.fsyncs = 0
        self.durable: dict[int, dict[str, Any]] = {}
        self.pending: list[Pending] = []
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, tuple[int, bool]] = {}  # fh -> (ino, synchronous writes)
        self.next_fh = 1
        self.dirty_bytes = 0
        self._boot()

    # ------------------------------------------------------------------ durable state

    def _boot(self) -> None:
        """Rebuild the live tree from what is durable; delete unreachable objects."""
        meta = self.backing / "namespace.json"
        if meta.exists():
            self.durable = {int(k): v for k, v in json.loads(meta.read_text()).items()}
        if ROOT not in self.durable:
            self.durable[ROOT] = {"kind": "dir", "mode": 0o700, "entries": {}}
        reachable: set[int] = set()
        stack = [ROOT]
        while stack:
            ino = stack.pop()
            if ino in reachable or ino not in self.durable:
                continue
            reachable.add(ino)
            stack.extend(self.durable[ino].get("entries", {}).values())
        self.durable = {ino: d for ino, d in self.durable.items() if ino in reachable}
        for ino, d in self.durable.items():
            node = Node(ino, d["kind"], d["mode"])
            if node.kind == "dir":
                node.entries = {name: int(i) for name, i in d["entries"].items()}
            else:
                path = self.objects / str(ino)
                path.touch(exist_ok=True)
                node.size = node.valid = path.stat().st_size
            self.nodes[ino] = node
        for node in self.nodes.values():
            for child in node.entries.values():
                self.nodes[child].links += 1
        self.nodes[ROOT].links = 1
        highest = ROOT
        for obj in self.objects.iterdir():
            ino = int(obj.name)
            if ino not in self.nodes:
                obj.unlink()
            highest = max(highest, ino)
        self.next_ino = max(highest, *self.nodes) + 1
        self._save_namespace()

    def _save_namespace(self) -> None:
        tmp = self.backing / "namespace.json.tmp"
        tmp.write_text(json.dumps(self.durable))
        os.replace(tmp, self.backing / "namespace.json")

    def _durable_node(self, ino: int) -> dict[str, Any]:
        d = self.durable.get(ino)
        if d is None:
            node = self.nodes.get(ino)
            kind = node.kind if node is not None else "file"
            mode = node.mode if node is not None else 0o600
            d = self.durable[ino] = {"kind": kind, "mode": mode, "entries": {}}
        return d

    def _commit(self, p: Pending) -> None:
        if p.op == "link":
            parent, name, ino = p.args
            self._durable_node(ino)
            self._durable_node(parent)["entries"][name] = ino
        elif p.op == "unlink":
            parent, name = p.args
            self._durable_node(parent)["entries"].pop(name, None)
        else:
            src, old, dst, new, ino = p.args
            self._durable_node(ino)
            self._durable_node(src)["entries"].pop(old, None)
            self._durable_node(dst)["entries"][new] = ino

    def _pend(self, p: Pending) -> None:
        self.pending.append(p)
        if len(self.pending) > PENDING_LIMIT:
            # The journal commits on its own now and then: that only makes more durable.
            oldest, self.pending = (
                self.pending[: PENDING_LIMIT // 2],
                self.pending[PENDING_LIMIT // 2 :],
            )
            for op in oldest:
                self._commit(op)
            self._save_namespace()
            self._collect()

    def _sync_dir(self, ino: int) -> None:
        keep = []
        committed = False
        for p in self.pending:
            if ino in p.dirs:
                self._commit(p)
                committed = True
            else:
                keep.append(p)
        self.pending = keep
        if committed:
            self._save_namespace()
            self._collect()

    def _collect(self) -> None:
        """Delete objects that no name (live or durable) and no open file can reach."""
        durable_refs = {i for d in self.durable.values() for i in d.get("entries", {}).values()}
        for ino, node in list(self.nodes.items()):
            if node.links == 0 and node.opens == 0 and ino not in durable_refs and ino != ROOT:
                self._forget(ino)
        for ino in list(self.durable):
            if ino != ROOT and ino not in durable_refs and ino not in self.nodes:
                del self.durable[ino]

    def _forget(self, ino: int) -> None:
        node = self.nodes.pop(ino)
        self.dirty_bytes -= len(node.pages) * PAGE
        if node.kind == "file":
            with contextlib.suppress(FileNotFoundError):
                (self.objects / str(ino)).unlink()

    def _sync_file(self, node: Node) -> None:
        """Write the file's dirty pages and size to its object: now they are durable."""
        if node.kind != "file" or not node.dirty:
            return
        fd = os.open(self.objects / str(node.ino), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, min(node.valid, node.size))  # cut what a truncate made stale
            for index, page in sorted(node.pages.items()):
                start = index * PAGE
                end = min(start + PAGE, node.size)
                if end > start:
                    os.pwrite(fd, page[: end - start], start)
            os.ftruncate(fd, node.size)
        finally:
            os.close(fd)
        self.dirty_bytes -= len(node.pages) * PAGE
        node.pages.clear()
        node.valid = node.size

    def sync_all(self) -> None:
        """Make everything durable (the kernel's writeback plus a journal commit)."""
        with self._mutex:
            for node in list(self.nodes.values()):
                self._sync_file(node)
            for p in self.pending:
                self._commit(p)
            self.pending = []
            self._save_namespace()
            self._collect()

    # ------------------------------------------------------------------ live tree

    def _lookup(self, path: str) -> Node:
        node = self.nodes[ROOT]
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if node.kind != "dir":
                raise _error(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.nodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if parent.kind != "dir":
            raise _error(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh and fh in self.handles:
            return self.nodes[self.handles[fh][0]]
        if path is None:
            raise _error(errno.EBADF)
        return self._lookup(path)

    def _new(self, parent: Node, name: str, kind: str, mode: int) -> Node:
        if self.full:
            raise _error(errno.ENOSPC)
        if name in parent.entries:
            raise _error(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        node = Node(ino, kind, mode & 0o7777, links=1)
        if kind == "file":
            (self.objects / str(ino)).touch()
        self.nodes[ino] = node
        parent.entries[name] = ino
        parent.mtime_ns = time.time_ns()
        self._pend(Pending((parent.ino,), "link", (parent.ino, name, ino)))
        return node

    def _open_handle(self, node: Node, flags: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node.ino, bool(flags & _SYNC_FLAGS))
        node.opens += 1
        return fh

    # ------------------------------------------------------------------ FUSE callbacks

    def init(self, path: str) -> None:
        sys.stdout.write("mounted\n")
        sys.stdout.flush()

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            node = self._node(path, fh)
            kind = stat.S_IFDIR if node.kind == "dir" else stat.S_IFREG
            nlink = 2 if node.kind == "dir" else max(node.links, 0)
            return {
                "st_mode": kind | node.mode,
                "st_nlink": nlink,
                "st_size": node.size if node.kind == "file" else PAGE,
                "st_ino": node.ino,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_mtime": node.mtime_ns,
                "st_ctime": node.mtime_ns,
                "st_atime": node.mtime_ns,
                "st_blocks": (node.size + 511) // 512,
                "st_blksize": PAGE,
            }

    def readdir(self, path: str | None, fh: int) -> list[str]:
        with self._mutex:
            node = self._node(path, None)
            return [".", "..", *node.entries]

    def opendir(self, path: str) -> int:
        with self._mutex:
            if self._lookup(path).kind != "dir":
                raise _error(errno.ENOTDIR)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self._disk_wait()
        with self._mutex:
            if self.fsync_error:
                raise _error(errno.EIO)
            self.fsyncs += 1
            if path is not None:
                self._sync_dir(self._lookup(path).ino)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            self._new(parent, name, "dir", mode)
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            return self._open_handle(self._new(parent, name, "file", mode), flags)

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            return self._open_handle(node, flags)

    def release(self, path: str | None, fh: int) -> int:
        with self._mutex:
            ino, _ = self.handles.pop(fh)
            node = self.nodes[ino]
            node.opens -= 1
            if node.links == 0 and node.opens == 0:
                self._collect()
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            node = self._node(path, fh)
            end = min(offset + size, node.size)
            if end <= offset:
                return b""
            out = bytearray()
            fd = None
            try:
                pos = offset
                while pos < end:
                    index, start = divmod(pos, PAGE)
                    take = min(PAGE - start, end - pos)
                    page = node.pages.get(index)
                    if page is not None:
                        out += page[start : start + take]
                    else:
                        if fd is None:
                            fd = os.open(self.objects / str(node.ino), os.O_RDONLY)
                        out += self._durable_bytes(fd, node, pos, take)
                    pos += take
            finally:
                if fd is not None:
                    os.close(fd)
            return bytes(out)

    def _durable_bytes(self, fd: int, node: Node, pos: int, length: int) -> bytes:
        """``length`` bytes at ``pos`` of the durable content (zeros past what is valid)."""
        valid = max(0, min(length, node.valid - pos))
        data = os.pread(fd, valid, pos) if valid else b""
        return data + bytes(length - len(data))

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            if self.full:
                raise _error(errno.ENOSPC)
            ino, synchronous = self.handles[fh]
            node = self.nodes[ino]
            self._write_pages(node, data, offset)
            node.mtime_ns = time.time_ns()
            if synchronous or self.dirty_bytes > DIRTY_LIMIT:
                self._sync_file(node)
            return len(data)

    def _write_pages(self, node: Node, data: bytes, offset: int) -> None:
        view = memoryview(data)
        pos = offset
        fd = None
        try:
            while view:
                index, start = divmod(pos, PAGE)
                take = min(PAGE - start, len(view))
                page = node.pages.get(index)
                if page is None:
                    if fd is None:
                        fd = os.open(self.objects / str(node.ino), os.O_RDONLY)
                    page = bytearray(self._durable_bytes(fd, node, index * PAGE, PAGE))
                    node.pages[index] = page
                    self.dirty_bytes += PAGE
                page[start : start + take] = view[:take]
                view = view[take:]
                pos += take
        finally:
            if fd is not None:
                os.close(fd)
        node.size = max(node.size, offset + len(data))

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self._mutex:
            node = self._node(path, fh)
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            if length > node.size and self.full:
                raise _error(errno.ENOSPC)
            self._resize(node, length)
        return 0

    def _resize(self, node: Node, length: int) -> None:
        if length < node.size:
            last = (length + PAGE - 1) // PAGE
            for index in [i for i in node.pages if i >= last]:
                del node.pages[index]
                self.dirty_bytes -= PAGE
            tail = node.pages.get(length // PAGE)
            if tail is not None:
                cut = length % PAGE
                tail[cut:] = bytes(PAGE - cut)
            node.valid = min(node.valid, length)
        node.size = length
        node.mtime_ns = time.time_ns()

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        with self._mutex:
            if mode & ~0x01:  # only plain allocation and FALLOC_FL_KEEP_SIZE
                raise _error(errno.EOPNOTSUPP)
            if self.full:
                raise _error(errno.ENOSPC)
            node = self._node(path, fh)
            if not mode & 0x01 and offset + size > node.size:
                self._resize(node, offset + size)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._disk_wait()
        with self._mutex:
            if self.fsync_error:
                raise _error(errno.EIO)
            self.fsyncs += 1
            self._sync_file(self._node(path, fh))
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def _disk_wait(self) -> None:
        delay = self.fsync_delay
        if delay > 0:
            time.sleep(delay)

    def unlink(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.nodes[ino]
            if node.kind == "dir":
                raise _error(errno.EISDIR)
            del parent.entries[name]
            node.links -= 1
            self._pend(Pending((parent.ino,), "unlink", (parent.ino, name)))
            if node.links == 0 and node.opens == 0:
                self._collect()
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.entries.get(name)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.nodes[ino]
            if node.kind != "dir":
                raise _error(errno.ENOTDIR)
            if node.entries:
                raise _error(errno.ENOTEMPTY)
            del parent.entries[name]
            node.links = 0
            self._pend(Pending((parent.ino,), "unlink", (parent.ino, name)))
            self._collect()
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            src, old_name = self._parent(old)
            dst, new_name = self._parent(new)
            ino = src.entries.get(old_name)
            if ino is None:
                raise _error(errno.ENOENT)
            node = self.nodes[ino]
            replaced = dst.entries.get(new_name)
            if replaced == ino:
                return 0
            if replaced is not None:
                victim = self.nodes[replaced]
                if victim.kind == "dir" and victim.entries:
                    raise _error(errno.ENOTEMPTY)
                if (victim.kind == "dir") != (node.kind == "dir"):
                    raise _error(errno.EISDIR if victim.kind == "dir" else errno.ENOTDIR)
                victim.links -= 1
            del src.entries[old_name]
            dst.entries[new_name] = ino
            dirs = (src.ino,) if src.ino == dst.ino else (src.ino, dst.ino)
            self._pend(
                Pending(dirs, "rename", (src.ino, old_name, dst.ino, new_name, ino)),
            )
            if replaced is not None:
                self._collect()
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        with self._mutex:
            node = self._lookup(path) if path is not None else None
            if node is None:
                raise _error(errno.EBADF)
            node.mode = mode & 0o7777
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self._mutex:
            if path is not None:
                node = self._lookup(path)
                node.mtime_ns = times[1] if times else time.time_ns()
        return 0

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._lookup(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.backing)
        free = 0 if self.full else st.f_bavail
        return {
            "f_bsize": st.f_bsize,
            "f_frsize": st.f_frsize,
            "f_blocks": st.f_blocks,
            "f_bfree": free,
            "f_bavail": free,
            "f_files": st.f_files,
            "f_ffree": st.f_ffree,
            "f_favail": st.f_favail,
            "f_namemax": 255,
        }

    def link(self, target: str, source: str) -> int:
        raise _error(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise _error(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise _error(errno.EPERM)

    # ------------------------------------------------------------------ control

    def stats(self) -> dict[str, Any]:
        with self._mutex:
            return {
                "dirty_bytes": sum(len(n.pages) * PAGE for n in self.nodes.values()),
                "dirty_files": sum(1 for n in self.nodes.values() if n.dirty),
                "pending_ops": len(self.pending),
                "fsyncs": self.fsyncs,
                "full": self.full,
                "fsync_error": self.fsync_error,
                "fsync_delay_ms": round(self.fsync_delay * 1000),
            }


class Control:
    """The control socket: one JSON request per line, one JSON reply per line.

    Requests: ``{"cmd": "stats"}``, ``{"cmd": "sync_all"}``,
    ``{"cmd": "fault", "full": bool, "fsync_error": bool, "fsync_delay_ms": int}``
    (fields left out keep their value).
    """

    def __init__(self, fs: PowerLossFS, name: str) -> None:
        self.fs = fs
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + name)  # Linux's abstract namespace: gone with the process
        self.sock.listen(8)
        threading.Thread(target=self._serve, name="powerfs-control", daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                try:
                    reply = self.handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as error:
                    reply = {"error": str(error)}
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        fs = self.fs
        cmd = req["cmd"]
        if cmd == "sync_all":
            fs.sync_all()
        elif cmd == "fault":
            with fs._mutex:
                fs.full = bool(req.get("full", fs.full))
                fs.fsync_error = bool(req.get("fsync_error", fs.fsync_error))
                fs.fsync_delay = float(req.get("fsync_delay_ms", fs.fsync_delay * 1000)) / 1000
        elif cmd != "stats":
            raise ValueError(f"unknown command {cmd!r}")
        return fs.stats()


def _exit_with_parent() -> None:
    """Unmount (SIGTERM: libfuse's clean exit) once the process that mounted us is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)  # no event tells a child that its parent died; poll
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="powerfs-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.powerfs", description=__doc__)
    p.add_argument("--backing", type=Path, required=True)
    p.add_argument("--mount", type=Path, required=True)
    p.add_argument("--control-name", required=True, help="abstract Unix socket name")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s powerfs: %(message)s",
    )
    fs = PowerLossFS(args.backing)
    Control(fs, args.control_name)
    _exit_with_parent()
    args.mount.mkdir(parents=True, exist_ok=True)
    mfusepy.FUSE(
        fs,
        str(args.mount.resolve()),
        foreground=True,
        nothreads=False,
        fsname="powerfs",
        hard_remove=True,  # an unlinked open file stays reachable by its handle
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
