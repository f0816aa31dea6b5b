"""What every ``avatar-backend`` command shares: output formatting, argument helpers, the API key and TLS
options of client commands, and the connection to a server."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from avatar_backend.client import AvatarError, SyncAvatarClient
from avatar_backend.client.channels import channel_target_and_credentials
from avatar_backend.gateway.limits import parse_byte_size

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_PORT = 50051
API_KEY_ENV = "AVATAR_API_KEY"

log = logging.getLogger("avatar_backend.cli")


class CliError(Exception):
    """A problem the user can fix (a missing file, a missing program); printed without a traceback."""


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces, with a header line."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def format_fields(rows: Sequence[tuple[str, object]]) -> str:
    """``name:  value`` lines with the values aligned."""
    width = max((len(name) for name, _ in rows), default=0) + 1
    return "\n".join(f"{(name + ':').ljust(width)}  {value}" for name, value in rows)


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def format_time_ms(unix_ms: int) -> str:
    if unix_ms <= 0:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000).strftime("%Y-%m-%d %H:%M")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_error(error: BaseException) -> str:
    """The one-line message printed for a failed command: ``error: NOT_FOUND: character 'x' ...``."""
    return f"error: {error}"


def display_path(path: Path) -> str:
    """A path with the home directory written as ~, as people type it."""
    try:
        return "~/" + str(path.expanduser().resolve().relative_to(Path.home()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# Arguments and connection
# ---------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """``"256x256"`` -> (256, 256)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 256x256), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def parse_byte_size_argument(text: str) -> int:
    """``512M``, ``8G``, ``1073741824`` -> bytes (for argparse: a bad value is a usage error)."""
    try:
        return parse_byte_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_named_prompt(text: str) -> tuple[str, str]:
    """``"angry=frowning, shouting"`` -> ("angry", "frowning, shouting")."""
    name, sep, prompt = text.partition("=")
    if not sep or not name.strip() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PROMPT, got {text!r}")
    return name.strip(), prompt.strip()


def add_api_key_arguments(parser: argparse.ArgumentParser, purpose: str) -> None:
    """``--api-key-file`` / ``--api-key`` (and $AVATAR_API_KEY): read by :func:`resolve_api_key`."""
    parser.add_argument(
        "--api-key-file", type=Path, metavar="FILE",
        help=f"{purpose}, read from the first line of FILE (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--api-key", metavar="KEY",
        help="the key itself; every user of this machine can read it in the process list, prefer --api-key-file",
    )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, metavar="HOST:PORT",
        help=f"the server (default {DEFAULT_SERVER}); grpcs://HOST:PORT for TLS",
    )
    add_api_key_arguments(parser, "the API key of a server that requires one")
    parser.add_argument(
        "--tls", action="store_true",
        help="connect with TLS, checking the server against the system's trusted CAs (or --tls-ca)",
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="TLS: trust this CA certificate (PEM); implies --tls"
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE",
        help="TLS: this client certificate (PEM), for a server that requires one; needs --tls-key",
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="TLS: the private key of --tls-cert (PEM)")


def read_api_key_file(path: Path) -> str:
    """The key on the first line of ``path``, stripped; CliError when it cannot be read or is empty."""
    try:
        text = path.expanduser().read_text()
    except (OSError, UnicodeError) as error:
        raise CliError(f"cannot read the API key file {path}: {getattr(error, 'strerror', None) or error}") from None
    key = text.splitlines()[0].strip() if text.strip() else ""
    if not key:
        raise CliError(f"the API key file {path} is empty (its first line must be the key)")
    if os.name == "posix" and path.expanduser().stat().st_mode & 0o077:
        log.warning("the API key file %s can be read by other users of this machine: chmod 600 %s", path, path)
    return key


def resolve_api_key(args: argparse.Namespace) -> str | None:
    """The API key from --api-key-file, --api-key or $AVATAR_API_KEY (in that order); None for none."""
    key_file, given = getattr(args, "api_key_file", None), getattr(args, "api_key", None)
    if key_file is not None and given is not None:
        raise CliError("give the API key with --api-key-file or with --api-key, not both")
    if key_file is not None:
        return read_api_key_file(key_file)
    if given is not None:
        log.warning(
            "--api-key puts the key on the command line, where every user of this machine can read it in the "
            "process list; use --api-key-file FILE or $%s instead", API_KEY_ENV,
        )
        return given or None
    return os.environ.get(API_KEY_ENV) or None


def client_tls_options(args: argparse.Namespace) -> dict[str, object]:
    """The TLS keyword arguments of AvatarClient from --tls, --tls-ca, --tls-cert and --tls-key."""
    options: dict[str, object] = {}
    if getattr(args, "tls", False):
        options["tls"] = True
    for flag, name in (("tls_ca", "root_certificates"), ("tls_cert", "client_certificate"),
                       ("tls_key", "client_key")):
        if getattr(args, flag, None) is not None:
            options[name] = getattr(args, flag)
    try:
        # Checked here so that a missing file or a lone --tls-cert is a one-line error, not a traceback.
        channel_target_and_credentials(getattr(args, "server", DEFAULT_SERVER), **options)  # type: ignore[arg-type]
    except ValueError as error:
        raise CliError(str(error)) from None
    return options


def connect(args: argparse.Namespace) -> SyncAvatarClient:
    client = SyncAvatarClient(args.server, api_key=resolve_api_key(args), **client_tls_options(args))
    try:
        try:
            client.wait_ready(timeout=10.0)
        except AvatarError:
            # "No server reachable" also covers a refused TLS handshake: one call raises grpc's own reason
            # (and answers if the server came up meanwhile).
            client.health(timeout=5.0)
    except BaseException:
        client.close()
        raise
    return client
