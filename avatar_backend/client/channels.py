"""How the client reaches the server: the target (``host:port`` or ``grpcs://host:port``), TLS credentials
from PEM files or bytes (with a client certificate for servers that require one), and the warning when an API
key would cross the network in plain text.

Everything here is grpcio's own TLS (``grpc.ssl_channel_credentials``); nothing is verified by hand.
"""

from __future__ import annotations

import logging
import threading

import grpc

from avatar_backend.addresses import is_loopback_host, target_host
from avatar_backend.pem import Pem, read_pem

__all__ = ["Pem", "TLS_SCHEME", "PLAINTEXT_SCHEME", "channel_target_and_credentials", "warn_if_key_in_plaintext"]

log = logging.getLogger("avatar_backend.client")

#: ``grpcs://host:port``: TLS with the given (or the system's) root certificates.
TLS_SCHEME = "grpcs://"
#: ``grpc://host:port``: plaintext, said explicitly.
PLAINTEXT_SCHEME = "grpc://"

_warned_hosts: set[str] = set()
_warned_lock = threading.Lock()


def _pem_bytes(value: Pem | None, what: str) -> bytes | None:
    return None if value is None else read_pem(value, what)


def channel_target_and_credentials(
    target: str,
    *,
    tls: bool = False,
    root_certificates: Pem | None = None,
    client_certificate: Pem | None = None,
    client_key: Pem | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[str, grpc.ChannelCredentials | None]:
    """The target as grpc takes it (without a ``grpcs://``/``grpc://`` prefix) and the channel credentials
    (None: plaintext). TLS is on with ``tls=True``, a ``grpcs://`` target, any certificate argument, or
    ready-made ``credentials``; without ``root_certificates`` the server is checked against the system's
    (grpc's) trusted roots. ValueError for contradictory or unreadable arguments."""
    scheme_tls: bool | None = None
    if target.startswith(TLS_SCHEME):
        target, scheme_tls = target[len(TLS_SCHEME):], True
    elif target.startswith(PLAINTEXT_SCHEME):
        target, scheme_tls = target[len(PLAINTEXT_SCHEME):], False
    certificate_given = any(v is not None for v in (root_certificates, client_certificate, client_key))
    wants_tls = tls or certificate_given or credentials is not None or scheme_tls is True
    if scheme_tls is False and wants_tls:
        raise ValueError(f"{PLAINTEXT_SCHEME} means plaintext, but TLS options were given: use {TLS_SCHEME}")
    if credentials is not None:
        if certificate_given:
            raise ValueError("give either credentials or certificate files, not both")
        return target, credentials
    if not wants_tls:
        return target, None
    if (client_certificate is None) != (client_key is None):
        raise ValueError("a client certificate needs its private key, and a client key its certificate")
    return target, grpc.ssl_channel_credentials(
        root_certificates=_pem_bytes(root_certificates, "CA certificate"),
        private_key=_pem_bytes(client_key, "client key"),
        certificate_chain=_pem_bytes(client_certificate, "client certificate"),
    )


def warn_if_key_in_plaintext(target: str) -> bool:
    """Log a warning, once per host in this process, that an API key goes in plain text to ``target``
    (a plaintext channel) unless the host is loopback. True when it warned now."""
    host = target_host(target)
    # No DNS lookup here (the client may be built inside an event loop): only literal loopback is exempt.
    if host is None or is_loopback_host(host, resolve=False):
        return False
    with _warned_lock:
        if host in _warned_hosts:
            return False
        _warned_hosts.add(host)
    log.warning(
        "the API key is sent to %s over a plaintext channel: anyone on the network path can read it "
        "(connect with TLS: tls=True / --tls, or a %s target)", target, TLS_SCHEME,
    )
    return True
