"""TLS for a member's listeners, for dialing its peers, and for gRPC clients of members."""

from __future__ import annotations

import ssl
from typing import Any

import grpc
import grpc.aio

from kvstore.server.config import TLSFiles, host_port, is_https


def http_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """For an https metrics listener: the client side's certificate, CA and client-cert check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.trusted_ca_file:
        context.load_verify_locations(tls.trusted_ca_file)
    if tls.client_cert_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_client_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """For dialing an https peer: our certificate is the client certificate; the peer's
    is checked against the trusted CA (or the system's, when none is given)."""
    context = ssl.create_default_context(cafile=tls.trusted_ca_file or None)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
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
