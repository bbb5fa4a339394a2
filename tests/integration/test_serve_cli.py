"""``kvstore serve`` turns bad flags, busy ports and unusable data dirs into one clear line."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.local.tls import Certificates, make_certificates
from kvstore.ports import free_ports


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    client, peer, http = free_ports(3)
    defaults = {
        "--name": "m",
        "--data-dir": str(tmp_path / "m.etcd"),
        "--listen-client-urls": f"http://127.0.0.1:{client}",
        "--listen-peer-urls": f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls": f"http://127.0.0.1:{peer}",
        "--initial-cluster": f"m=http://127.0.0.1:{peer}",
        "--listen-metrics-urls": f"http://127.0.0.1:{http}",
    }
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    args = [item for pair in {**defaults, **given}.items() for item in pair]
    return subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--listen-client-urls", "http://127.0.0.1:notaport"), "bad URL"),
        (
            ("--listen-peer-urls", "https://127.0.0.1:2380"),
            "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url "
            "https://127.0.0.1:2380 with HTTPS scheme",
        ),
        (("--heartbeat-interval", "500"), "at least 5 times --heartbeat-interval"),
        (("--snapshot-count", "0"), "--snapshot-count must be positive"),
        (("--backend-batch-interval", "0s"), "--backend-batch-interval must be positive"),
        (("--backend-batch-interval", "often"), "--backend-batch-interval: "),
        (("--backend-batch-limit", "0"), "--backend-batch-limit must be positive"),
        (("--wal-segment-size", "4096"), "--wal-segment-size must be at least 1048576 bytes"),
        (("--max-txn-ops", "0"), "--max-txn-ops must be positive"),
        (("--max-concurrent-streams", "0"), "--max-concurrent-streams must be positive"),
        (("--initial-cluster", "other=http://127.0.0.1:1"), "no member named 'm'"),
        (("--quota-backend-bytes", "lots"), "invalid int value"),
        (("--experimental-watch-progress-notify-interval", "soon"), "soon"),
        (
            (
                "--listen-client-urls",
                "http://127.0.0.1:42379",
                "--listen-client-http-urls",
                "http://127.0.0.1:42379",
            ),
            "cannot bind both --listen-client-urls and --listen-client-http-urls on the same url",
        ),
    ],
)
def test_bad_flags_give_one_line(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    proc = serve(tmp_path, *flags)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and message in lines[-1], proc.stderr
    assert len(lines) == 1 or lines[0].startswith("usage:"), proc.stderr  # argparse adds usage
    assert not (tmp_path / "m.etcd").exists()  # nothing written for a refused start


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ("--listen-client-urls", "https://127.0.0.1:{port}"),
            "kvstore serve: TLS key/cert (--cert-file, --key-file) must be provided for client "
            "url https://127.0.0.1:{port} with HTTPS scheme",
        ),
        (
            ("--cert-file", "{dir}/server.crt"),
            "kvstore serve: --cert-file given without --key-file: both must be present",
        ),
        (
            ("--peer-key-file", "{dir}/peer.key"),
            "kvstore serve: --peer-key-file given without --peer-cert-file: both must be present",
        ),
        (
            (
                *("--cert-file", "{dir}/server.crt", "--key-file", "{dir}/server.key"),
                *("--client-cert-auth", "true"),
            ),
            "kvstore serve: --client-cert-auth needs --trusted-ca-file "
            "(the CA that signs client certificates)",
        ),
        (
            ("--peer-cert-file", "{dir}/peer.crt", "--peer-key-file", "{dir}/missing.key"),
            "kvstore serve: cannot read --peer-key-file {dir}/missing.key: "
            "No such file or directory",
        ),
        (
            ("--cert-file", "{dir}/server.crt", "--key-file", "{dir}/client.key"),
            "kvstore serve: --cert-file {dir}/server.crt and --key-file {dir}/client.key "
            "are not a certificate and its key: KEY_VALUES_MISMATCH",
        ),
        (
            ("--peer-client-cert-auth", "true"),
            "kvstore serve: --peer-client-cert-auth needs --peer-cert-file and --peer-key-file",
        ),
    ],
)
def test_inconsistent_tls_flags_give_one_line(
    tmp_path: Path, certs: Certificates, flags: tuple[str, ...], message: str
) -> None:
    port = free_ports(1)[0]
    filled = [f.format(dir=certs.directory, port=port) for f in flags]
    proc = serve(tmp_path, *filled)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == message.format(dir=certs.directory, port=port) + "\n"
    assert not (tmp_path / "m.etcd").exists()


def test_busy_port_gives_one_line(tmp_path: Path, busy_port: int) -> None:
    proc = serve(tmp_path, "--listen-client-urls", f"http://127.0.0.1:{busy_port}")
    assert proc.returncode == 1
    assert proc.stderr == f"kvstore serve: listen 127.0.0.1:{busy_port}: Address already in use\n"


def test_unusable_data_dir_gives_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = serve(tmp_path, "--data-dir", str(blocker / "m.etcd"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"kvstore serve: cannot use data dir {blocker / 'm.etcd'}: ")
    assert proc.stderr.count("\n") == 1


def test_cluster_up_with_an_unusable_data_dir_gives_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    command = ["cluster", "up", "--free-ports", "--data-dir", str(blocker / "data")]
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore.cli.main", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"cannot use data dir {blocker / 'data'}: Not a directory\n"
