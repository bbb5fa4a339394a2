"""With ``--client-cert-auth``, a client certificate's Common Name is the user: etcd and ours alike.

One member of each, the same certificates (the client certificate's CN is
``client``, the members' is ``server``). Each step's outcome must be the same
on both.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import pytest

from kvstore.client import Client, EtcdError, TLSConfig
from kvstore.local.cluster import KVCluster
from kvstore.local.etcd import EtcdCluster
from kvstore.local.tls import Certificates, make_certificates

Server = KVCluster | EtcdCluster
Step = Callable[[Client], Awaitable[object]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("cn-certs"))


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[dict[str, Server]]:
    etcd = EtcdCluster(root=tmp_path_factory.mktemp("cn-etcd"), size=1, tls=certs)
    ours = KVCluster(root=tmp_path_factory.mktemp("cn-kv"), size=1, tls=certs)
    try:
        etcd.start()
        ours.start()
        yield {"etcd": etcd, "kvstore": ours}
    finally:
        ours.stop()
        etcd.stop()


async def _outcome(client: Client, step: Step) -> str:
    try:
        await step(client)
    except EtcdError as error:
        return f"{type(error).__name__}: {error.message}"
    return "ok"


def _gateway_range(server: Server, context: ssl.SSLContext) -> tuple[int, str]:
    """A read through the JSON gateway over https with the client certificate, no token."""
    request = urllib.request.Request(
        f"https://{server.endpoints[0]}/v3/kv/range",
        json.dumps({"key": "L2NuL2E="}).encode(),  # /cn/a
        {"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            return response.status, "read"
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def _session(server: Server, certs: Certificates) -> list[object]:
    as_client = certs.client_tls()  # CN "client"
    as_server = TLSConfig(certs.ca, certs.path("server"), certs.path("server", "key"))
    outs: list[object] = []
    async with Client(server.endpoints, tls=as_client, default_timeout=15) as admin:
        await admin.user_add("root", "rootpw")
        await admin.user_grant_role("root", "root")
        await admin.user_add("client", no_password=True)  # known by its certificate only
        await admin.role_add("cn")
        await admin.role_grant_permission("cn", "readwrite", "/cn/", prefix=True)
        await admin.user_grant_role("client", "cn")
        await admin.put("/other", "x")
        await admin.auth_enable()
    async with Client(server.endpoints, tls=as_client, default_timeout=15) as cert_only:
        steps: list[Step] = [
            lambda c: c.put("/cn/a", "1"),
            lambda c: c.get("/cn/a"),
            lambda c: c.put("/other", "mine"),
            lambda c: c.get("/other"),
            lambda c: c.user_list(),
            lambda c: c.user_get("client"),
        ]
        outs += [await _outcome(cert_only, step) for step in steps]
    # A token, when given, names the user rather than the certificate.
    async with Client(
        server.endpoints, tls=as_client, user="root", password="rootpw", default_timeout=15
    ) as root:
        outs.append(await _outcome(root, lambda c: c.get("/other")))
    # The members' certificate names a user that does not exist.
    async with Client(server.endpoints, tls=as_server, default_timeout=15) as unknown:
        outs.append(await _outcome(unknown, lambda c: c.get("/cn/a")))
    # The gateway never takes the certificate as the user (etcd: its own proxy's certificate).
    outs.append(_gateway_range(server, certs.ssl_context()))
    return outs


async def test_client_certificate_names_the_user(
    servers: dict[str, Server], certs: Certificates
) -> None:
    outs = {name: await _session(server, certs) for name, server in servers.items()}
    assert outs["kvstore"] == outs["etcd"], outs
    assert outs["etcd"][:4] == [
        "ok",
        "ok",
        "PermissionDeniedError: etcdserver: permission denied",
        "PermissionDeniedError: etcdserver: permission denied",
    ]
