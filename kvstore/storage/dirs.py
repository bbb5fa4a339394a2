"""Creating directories so that they survive a power cut."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory: its entries (creates, renames, unlinks) become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: str | os.PathLike[str]) -> None:
    """``mkdir -p path``, syncing the parent of every directory it creates.

    A new directory's name lives in its parent: until the parent is synced, a
    power cut may take the directory and everything in it away, however well
    the files inside were synced.
    """
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
        fsync_dir(os.path.dirname(directory))
