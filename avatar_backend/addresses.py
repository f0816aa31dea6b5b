"""Where a host name or a gRPC target points: this machine only (loopback) or the network.

Shared by the server's start-up rule (a server reachable from the network must authenticate its clients)
and the client's warning (an API key sent in plain text over the network). Knows nothing of gRPC itself.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["bind_address", "is_loopback_host", "target_host"]

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def _unbracket(host: str) -> str:
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def _is_loopback_ip(text: str) -> bool | None:
    """True/False for an IP literal (an IPv6 zone such as ``%eth0`` allowed); None when it is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    # ::ffff:127.0.0.1 is IPv4 loopback, which ipaddress only says so from Python 3.13 on.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_host(host: str, *, resolve: bool = True) -> bool:
    """Whether listening on / connecting to ``host`` stays on this machine.

    Loopback: 127.0.0.0/8, ::1 (also IPv4-mapped), ``localhost`` and ``*.localhost``. Not loopback: the
    wildcard addresses (``0.0.0.0``, ``::``, the empty host), every other IP address, and a name that
    resolves to at least one non-loopback address or does not resolve at all. With ``resolve=False`` a name
    is never looked up (no blocking DNS query) and counts as the network unless it is one of the loopback
    names above.
    """
    name = _unbracket(host)
    if not name:
        return False  # "" binds every interface
    literal = _is_loopback_ip(name)
    if literal is not None:
        return literal
    lowered = name.lower().rstrip(".")
    if lowered in LOOPBACK_NAMES or lowered.endswith(".localhost"):
        return True
    if not resolve:
        return False
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(_is_loopback_ip(str(info[4][0])) for info in infos)


def target_host(target: str) -> str | None:
    """The host of a gRPC target (``host:port``, ``[v6]:port``, ``dns:///host:port``, ``ipv4:a.b.c.d:port``);
    None for a Unix socket (``unix:...``), which never leaves the machine."""
    if target.startswith(("unix:", "unix-abstract:", "vsock:")):
        return None
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme):].split(",", 1)[0]
            break
    else:
        if target.startswith("dns:"):
            target = target[len("dns:"):]
            # dns://authority/host:port or dns:///host:port: the host follows the last slash.
            target = target.rsplit("/", 1)[-1]
    if target.startswith("["):
        return target[1:].split("]", 1)[0]
    if target.count(":") > 1:
        return target  # a bare IPv6 address without a port
    return target.split(":", 1)[0]


def bind_address(host: str, port: int) -> str:
    """``host:port`` for grpc's add_*_port, with an IPv6 address in brackets (``[::]:50051``)."""
    host = _unbracket(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
