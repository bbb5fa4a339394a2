"""gRPC credentials for a member's TLS listeners and for dialing https peers."""

from __future__ import annotations

import ssl
from typing import Any

import grpc
import grpc.aio

from kvstore.server.config import TLSFiles, host_port, is_https


def server_credentials(tls: TLSFiles) -> grpc.ServerCredentials:
    """Credentials for an https listener; client certificates are verified if required."""
    key, cert = tls.pem("key-file"), tls.pem("cert-file")
    assert key is not None and cert is not None, "validate the configuration first"
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=tls.pem("trusted-ca-file"),
        require_client_auth=tls.client_cert_auth,
    )


def http_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """For an https metrics listener: the client side's certificate, CA and client-cert check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.trusted_ca_file:
        context.load_verify_locations(tls.trusted_ca_file)
    if tls.client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def channel_credentials(tls: TLSFiles) -> grpc.ChannelCredentials:
    """Credentials for dialing an https URL: our certificate is the client certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.pem("trusted-ca-file"),
        private_key=tls.pem("key-file"),
        certificate_chain=tls.pem("cert-file"),
    )


def open_channel(url: str, tls: TLSFiles, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """A channel to ``url``: TLS with ``tls``'s credentials for https, plaintext for http."""
    host, port = host_port(url)
    target = f"{host}:{port}"
    if is_https(url):
        return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)
    return grpc.aio.insecure_channel(target, options=options)
