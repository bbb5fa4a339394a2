"""TLS on client and peer ports: our 3-member cluster and a real 3-member etcd, same certificates.

Both run with https client and peer URLs, ``--client-cert-auth`` and
``--peer-client-cert-auth``, and the same CA; the real etcdctl (and our
client) must get the same answers from both, and be refused by both without
a client certificate.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import grpc
import pytest

from kvstore._pb.v3lockpb import v3lock_pb2 as lpb
from kvstore._pb.v3lockpb import v3lock_pb2_grpc
from kvstore.client import Client, DeadlineExceededError, TLSConfig, UnavailableError
from kvstore.local.binaries import etcd_bin_dir
from kvstore.local.cluster import KVMember
from kvstore.local.etcd import run_etcdctl
from kvstore.local.tls import Certificates, make_certificates
from kvstore.ports import free_ports
from tests.compat.pairs import Server, side_by_side
from tests.controllers.harness import Processes


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[dict[str, Server]]:
    with side_by_side(tmp_path_factory, "tls", tls=certs) as pair:
        yield pair


def ctl(server: Server, *args: str, endpoints: list[str] | None = None) -> str:
    """etcdctl with the CA and the client certificate; must succeed."""
    proc = server.etcdctl(*args, endpoints=endpoints)
    assert proc.returncode == 0, f"etcdctl {args} failed: {proc.stderr}"
    return proc.stdout


def _mask_member_list(text: str) -> list[str]:
    """Rows of ``member list`` without what differs between clusters: IDs, names, ports."""
    rows = []
    for line in text.splitlines():
        member_id, status, _name, peer, client, learner = line.split(", ")
        assert re.fullmatch(r"[0-9a-f]+", member_id), line
        peer, client = (re.sub(r":\d+$", ":<PORT>", url) for url in (peer, client))
        rows.append(", ".join(["<ID>", status, "<NAME>", peer, client, learner]))
    return sorted(rows)


def _mask_endpoint_status(text: str) -> list[str]:
    """Rows of ``endpoint status``: is-leader, is-learner and errors; the rest differs by build."""
    rows = []
    for line in text.splitlines():
        cells = line.split(", ")
        # endpoint, ID, version, DB size, is leader, is learner, term, index, applied, errors
        assert len(cells) == 10, line
        rows.append(", ".join(cells[4:6] + cells[9:]))
    return sorted(rows)


def test_etcdctl_gets_the_same_answers(servers: dict[str, Server]) -> None:
    outputs = {}
    for name, s in servers.items():
        outputs[name] = [
            ctl(s, "put", "/tls/a", "1"),
            ctl(s, "put", "/tls/b", "2"),
            ctl(s, "get", "/tls/", "--prefix"),
            ctl(s, "get", "/tls/a", "--print-value-only"),
            _mask_member_list(ctl(s, "member", "list")),
            _mask_endpoint_status(ctl(s, "endpoint", "status")),
        ]
    assert outputs["kvstore"] == outputs["etcd"]
    assert outputs["etcd"][2] == "/tls/a\n1\n/tls/b\n2\n"
    # Every member advertises https client and peer URLs; exactly one leads.
    assert (
        outputs["etcd"][4]
        == ["<ID>, started, <NAME>, https://127.0.0.1:<PORT>, https://127.0.0.1:<PORT>, false"] * 3
    )
    assert sorted(outputs["etcd"][5]) == ["false, false, ", "false, false, ", "true, false, "]


def _refused(server: Server, *tls_flags: str) -> subprocess.CompletedProcess[str]:
    return run_etcdctl(
        server.endpoints[:1],
        *tls_flags,
        "--dial-timeout=1s",
        "--command-timeout=2s",
        "get",
        "/tls/a",
        timeout=30,
    )


def test_etcdctl_without_a_client_certificate_is_refused(
    servers: dict[str, Server], certs: Certificates
) -> None:
    for name, s in servers.items():
        proc = _refused(s, *certs.etcdctl_flags(with_client_cert=False))
        assert proc.returncode != 0, (name, proc.stdout)
        # The TLS alert's wording differs between Go's and gRPC's TLS stacks; the
        # failure is the same: the handshake fails and the call runs out of time.
        assert "authentication handshake failed" in proc.stderr, (name, proc.stderr)
        assert proc.stderr.splitlines()[-1] == "Error: context deadline exceeded", proc.stderr
        assert proc.stdout == ""


def _health_url(server: Server, index: int) -> str:
    member = server.members[index]
    base = member.http_url if isinstance(member, KVMember) else member.client_url
    return f"{base}/health"


def test_health_over_https_needs_a_client_certificate(
    servers: dict[str, Server], certs: Certificates
) -> None:
    for s in servers.values():
        url = _health_url(s, 0)
        assert url.startswith("https://")
        with urllib.request.urlopen(url, timeout=10, context=certs.ssl_context()) as resp:
            assert json.loads(resp.read())["health"] == "true"
        without_cert = ssl.create_default_context(cafile=str(certs.ca))
        with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(url, timeout=10, context=without_cert).read()


async def test_our_client_over_tls(servers: dict[str, Server], certs: Certificates) -> None:
    for s in servers.values():
        async with Client(s.endpoints, tls=certs.client_tls(), default_timeout=10) as client:
            await client.put("/tls/client", "over tls")
            got = await client.get("/tls/client")
            assert [(kv.key, kv.value) for kv in got.kvs] == [(b"/tls/client", b"over tls")]
        # Trusting the CA is not enough: the servers want a client certificate.
        async with Client(
            s.endpoints, tls=TLSConfig(ca_file=certs.ca), default_timeout=2, connect_timeout=1
        ) as client:
            with pytest.raises((UnavailableError, DeadlineExceededError)):
                await client.get("/tls/client")


async def test_client_takes_https_urls_and_checks_server_certificates(
    servers: dict[str, Server], certs: Certificates
) -> None:
    """https:// URLs work as endpoints; a server the client cannot verify gets no call."""
    with pytest.raises(ValueError, match="cert_file and key_file must both be given"):
        TLSConfig(ca_file=certs.ca, cert_file=certs.path("client"))
    ours = servers["kvstore"]
    urls = [m.client_url for m in ours.members]
    async with Client(urls, tls=certs.client_tls(), default_timeout=10) as client:
        await client.put("/tls/https", "yes")
        assert (await client.get("/tls/https")).kvs[0].value == b"yes"
    # An https:// endpoint alone means TLS with the system's CAs, which do not trust our CA.
    async with Client(urls[:1], default_timeout=2, connect_timeout=1) as client:
        with pytest.raises((UnavailableError, DeadlineExceededError)):
            await client.get("/tls/https")


async def test_lock_service_over_tls(servers: dict[str, Server], certs: Certificates) -> None:
    """v3lock runs on the member's client of itself: it must dial its own TLS port."""
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(),
        certs.path("client", "key").read_bytes(),
        certs.path("client").read_bytes(),
    )
    for s in servers.values():
        async with (
            Client(s.endpoints, tls=certs.client_tls(), default_timeout=10) as client,
            grpc.aio.secure_channel(s.endpoints[0], credentials) as channel,
        ):
            lease = (await client.grant(30)).ID
            locks = v3lock_pb2_grpc.LockStub(channel)  # type: ignore[no-untyped-call]
            held = await locks.Lock(lpb.LockRequest(name=b"/tls/lock", lease=lease), timeout=15)
            assert held.key == b"/tls/lock/" + format(lease, "x").encode()
            await locks.Unlock(lpb.UnlockRequest(key=held.key), timeout=15)
            assert (await client.get(held.key)).count == 0


async def test_controller_manager_leads_over_tls(
    servers: dict[str, Server], certs: Certificates, tmp_path: Path
) -> None:
    tls_flags = [
        f"--etcd-cafile={certs.ca}",
        f"--etcd-certfile={certs.path('client')}",
        f"--etcd-keyfile={certs.path('client', 'key')}",
    ]
    async with anyio.create_task_group() as tasks:
        procs = Processes(tasks, servers["kvstore"].endpoints, tmp_path)
        try:
            await procs.start("cm", "controller_manager", *tls_flags)
            await procs.wait_for(lambda _, event: event["event"] == "started_leading")
        finally:
            await procs.close()


def test_membership_changes_over_tls_peers(servers: dict[str, Server]) -> None:
    """A member joins over https peer URLs; a follower forwards a change to the leader."""
    outputs = {}
    for name, s in servers.items():
        index = s.add_member()
        joined = s.members[index]
        assert joined.peer_url.startswith("https://")
        new_id = f"{s.member_id(index):x}"
        follower = s.members[_follower(s)].endpoint
        updated = ctl(
            s, "member", "update", new_id, f"--peer-urls={joined.peer_url}", endpoints=[follower]
        )
        listed = _mask_member_list(ctl(s, "member", "list"))
        s.remove_member(index)
        outputs[name] = [re.sub(r"(Member|cluster) +[0-9a-f]+", r"\1 <ID>", updated), listed]
    assert outputs["kvstore"] == outputs["etcd"]
    assert outputs["etcd"][0] == "Member <ID> updated in cluster <ID>\n"
    assert len(outputs["etcd"][1]) == 4


def _follower(server: Server) -> int:
    """Index of a member that does not lead (killing it leaves the leader in place)."""
    for status in json.loads(ctl(server, "endpoint", "status", "-w", "json")):
        if status["Status"]["header"]["member_id"] != status["Status"]["leader"]:
            return [m.endpoint for m in server.members].index(status["Endpoint"])
    raise AssertionError("no follower")


def _put_retrying(server: Server, key: str, value: str, endpoints: list[str]) -> None:
    """Put, retrying while an election (which a loaded machine may cause) is under way."""
    deadline = time.monotonic() + 30
    while True:
        proc = server.etcdctl("put", key, value, endpoints=endpoints)
        if proc.returncode == 0:
            return
        retry = "leader changed" in proc.stderr or "no leader" in proc.stderr
        assert retry and time.monotonic() < deadline, proc.stderr
        time.sleep(0.2)  # a new leader is elected on its own; nothing to await from here


def test_restarted_member_catches_up_over_tls_peers(servers: dict[str, Server]) -> None:
    for name, s in servers.items():
        down = _follower(s)
        s.kill(down)
        others = [m.endpoint for i, m in enumerate(s.members) if i != down]
        for i in range(20):
            _put_retrying(s, f"/tls/missed/{i}", str(i), others)
        s.restart(down)
        # A serializable read answers from the restarted member's own state:
        # it has what was written while it was down only once it caught up.
        read = ("get", "/tls/missed/", "--prefix", "--consistency=s")
        wanted = "".join(f"/tls/missed/{i}\n{i}\n" for i in sorted(range(20), key=str))
        deadline = time.monotonic() + 30
        while (last := ctl(s, *read, endpoints=[s.members[down].endpoint])) != wanted:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the member catches up on its own; nothing to await from here
        assert last == wanted, (name, last)


def test_https_url_without_certificate_is_refused_like_etcd(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    flags = [
        f"--listen-client-urls=https://127.0.0.1:{client}",
        f"--advertise-client-urls=https://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=m=http://127.0.0.1:{peer}",
        "--name=m",
    ]
    message = (
        "TLS key/cert (--cert-file, --key-file) must be provided for client url "
        f"https://127.0.0.1:{client} with HTTPS scheme"
    )
    etcd = subprocess.run(
        [str(etcd_bin_dir() / "etcd"), *flags, f"--data-dir={tmp_path / 'etcd'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert etcd.returncode != 0 and message in etcd.stderr, etcd.stderr
    ours = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvstore.cli.main",
            "serve",
            *flags,
            f"--data-dir={tmp_path / 'kv'}",
            f"--listen-metrics-urls=http://127.0.0.1:{free_ports(1)[0]}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ours.returncode, ours.stderr) == (2, f"kvstore serve: {message}\n")


async def test_json_gateway_over_https_on_the_client_port(
    servers: dict[str, Server], certs: Certificates
) -> None:
    """Both serve etcd's gateway next to gRPC on the TLS client port, client certificate checked."""
    import aiohttp

    body = json.dumps({"key": "L3Rscy9nYXRld2F5", "value": "b3ZlciBodHRwcw=="}).encode()
    answers = {}
    for name, s in servers.items():
        url = f"{s.members[0].client_url}/v3/kv/put"
        assert url.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=certs.ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(url, data=body) as resp:
                answers[name] = (resp.status, sorted((await resp.json())["header"]))
            without_cert = ssl.create_default_context(cafile=str(certs.ca))
            with pytest.raises(aiohttp.ClientError):
                async with session.post(url, data=body, ssl=without_cert) as resp:
                    await resp.read()
    assert (
        answers["kvstore"]
        == answers["etcd"]
        == (
            200,
            ["cluster_id", "member_id", "raft_term", "revision"],
        )
    )


def test_alpn_gives_http_clients_http1_and_grpc_clients_h2(
    servers: dict[str, Server], certs: Certificates
) -> None:
    """A client offering both (curl, browsers) gets HTTP/1.1, the one our gateway speaks."""
    import socket

    member = servers["kvstore"].members[0]
    chosen = {}
    for offered in (["h2", "http/1.1"], ["h2"], ["http/1.1"]):
        context = certs.ssl_context()
        context.set_alpn_protocols(offered)
        with (
            socket.create_connection(("127.0.0.1", member.client_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            chosen[tuple(offered)] = tls.selected_alpn_protocol()
    assert chosen == {
        ("h2", "http/1.1"): "http/1.1",
        ("h2",): "h2",
        ("http/1.1",): "http/1.1",
    }
