"""Who may use the gateway: the API key, TLS (with optional client certificates), and the network rule.

- API key: "authorization: Bearer <key>" metadata on every AvatarService call. Health and reflection stay
  open, so load balancers and tools like grpcurl can probe the server.
- TLS: the server's certificate and key (PEM); with a client CA, every client must present a certificate
  signed by it (mutual TLS), checked in the handshake before any call.
- The network rule (:func:`check_exposure`): a server that listens beyond loopback must authenticate its
  clients, by an API key or by client certificates, unless an explicit, loudly named opt-out is given.
  Mutual TLS counts as authentication: only holders of a certificate from that CA can connect at all.
  TLS alone does not: it hides the traffic, it does not say who is calling.
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

from avatar_backend.addresses import is_loopback_host
from avatar_backend.pem import read_pem

__all__ = [
    "ApiKeyInterceptor",
    "ServerTls",
    "TlsConfigError",
    "UnsafeExposureError",
    "check_exposure",
    "load_server_tls",
]

PROTECTED_PREFIX = "/avatar.v1.AvatarService/"
#: The CLI flag that accepts an unauthenticated server on the network; named so nobody types it by accident.
INSECURE_OPT_OUT_FLAG = "--insecure-no-auth-on-network"


class UnsafeExposureError(Exception):
    """The server would listen on the network without authenticating its clients; nothing was bound."""


class TlsConfigError(Exception):
    """The TLS files are missing, unreadable, not PEM, or given without their partner (cert without key)."""


@dataclass(frozen=True)
class ServerTls:
    """The PEM contents the server's TLS credentials are made from."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate signed by it

    @property
    def requires_client_certificates(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _read_pem(path: Path | str, what: str) -> bytes:
    try:
        return read_pem(path, what)
    except ValueError as err:
        raise TlsConfigError(str(err)) from None


def load_server_tls(cert_file: Path | str | None, key_file: Path | str | None,
                    client_ca_file: Path | str | None = None) -> ServerTls | None:
    """The server's TLS material from PEM files; None when no certificate is configured (plaintext)."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise TlsConfigError("a client CA (--tls-client-ca) needs TLS: also give --tls-cert and --tls-key")
        return None
    if cert_file is None or key_file is None:
        raise TlsConfigError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
    return ServerTls(
        certificate_chain=_read_pem(cert_file, "TLS certificate"),
        private_key=_read_pem(key_file, "TLS private key"),
        client_ca=_read_pem(client_ca_file, "client CA") if client_ca_file is not None else None,
    )


def check_exposure(host: str, *, api_key: bool, client_certificates: bool, tls: bool,
                   insecure_no_auth_on_network: bool) -> list[str]:
    """Refuse (:class:`UnsafeExposureError`) a server on the network that authenticates nobody.

    Returns the warnings to log at start-up for what is allowed but risky. ``host`` is looked up in DNS
    when it is a name: a name that reaches the network counts as the network.
    """
    if is_loopback_host(host):
        return []
    shown = host or "every interface"
    if not api_key and not client_certificates:
        if not insecure_no_auth_on_network:
            raise UnsafeExposureError(
                f"refusing to listen on {shown} without authentication: anyone who can reach that address "
                "could run the generator and read, replace or delete every character and NPC. Require an API "
                "key (--api-key-file FILE or $AVATAR_API_KEY) or client certificates (--tls-cert, --tls-key "
                f"and --tls-client-ca), listen on 127.0.0.1 only, or pass {INSECURE_OPT_OUT_FLAG} to accept "
                "the risk on a network you trust."
            )
        return [f"{INSECURE_OPT_OUT_FLAG}: listening on {shown} WITHOUT AUTHENTICATION; anyone who can reach "
                "this address can use the generator and read, replace or delete every character and NPC"]
    if api_key and not tls:
        return [f"listening on {shown} without TLS: the API key crosses the network in plain text "
                "(add --tls-cert and --tls-key)"]
    return []


# How long a refused streaming call waits for the client's first message (see _take_first_message).
FIRST_MESSAGE_WAIT_S = 1.0


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_key: str):
        if not api_key:
            raise ValueError("api_key must not be empty")
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(PROTECTED_PREFIX):
            return handler
        if self._authorized(handler_call_details.invocation_metadata):
            return handler
        return _refusing_handler(handler)

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False


def _refusing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with UNAUTHENTICATED."""

    async def refuse(request_or_iterator, context):
        if handler.request_streaming:
            await _take_first_message(request_or_iterator)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            'this server requires an API key: send metadata "authorization: Bearer <key>"')

    codec = {"request_deserializer": handler.request_deserializer,
             "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **codec)
    return grpc.unary_unary_rpc_method_handler(refuse, **codec)


async def _take_first_message(request_iterator) -> None:
    """Wait (briefly) until the client's first message has arrived before refusing a streaming call.

    A client opens a stream by writing its first message; a refusal that overtakes that write fails the write
    on the client, and grpc then reports INTERNAL instead of the refusal's code.
    """
    try:
        await asyncio.wait_for(anext(aiter(request_iterator), None), FIRST_MESSAGE_WAIT_S)
    except Exception:  # noqa: BLE001 - silent, slow or malformed, the caller is refused the same way
        pass
