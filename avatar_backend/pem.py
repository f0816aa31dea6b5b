"""PEM material (certificates, keys) from a file or from bytes, checked to be PEM before grpc sees it.

grpc reports a file that is not PEM only at the first handshake, as an opaque failure that names no file;
the server and the client both read their TLS files through :func:`read_pem` to say it at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeAlias

__all__ = ["Pem", "read_pem"]

#: PEM content as bytes, or the path of a PEM file.
Pem: TypeAlias = bytes | str | os.PathLike[str]


def read_pem(value: Pem, what: str) -> bytes:
    """The PEM bytes of ``value``; ValueError naming ``what`` and the file when it is unreadable or not PEM."""
    if isinstance(value, bytes):
        data, source = value, "bytes given"
    else:
        source = str(value)
        try:
            data = Path(value).expanduser().read_bytes()
        except OSError as err:
            raise ValueError(f"cannot read the {what} {source}: {err.strerror or err}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"the {what} ({source}) is not PEM (expected a '-----BEGIN ...' block)")
    return data
