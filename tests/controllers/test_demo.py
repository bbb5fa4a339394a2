"""The demo starts every component against a store and settles."""

from __future__ import annotations

import subprocess
import sys
import uuid

from kvstore.testing.etcd import EtcdCluster


def test_demo_settles(etcd: EtcdCluster) -> None:
    prefix = f"/t-{uuid.uuid4().hex[:10]}/registry"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controllers.demo",
            "--endpoints",
            ",".join(etcd.endpoints),
            "--etcd-prefix",
            prefix,
            "--plain",
            "--no-input",
            "--exit-when-settled",
            "--exit-after",
            "90",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().split("\n\n")[-3:]
    view = "\n".join(last)
    assert "pods: 6 total, 0 pending" in view, result.stdout[-2000:]
    assert view.count("Ready ") == 3, view
