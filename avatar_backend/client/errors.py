"""The one exception the client raises for a failed call or stream."""

from __future__ import annotations

import grpc

__all__ = ["AvatarError", "RETRY_AFTER_METADATA_KEY"]

#: Trailing metadata the server adds to RESOURCE_EXHAUSTED (and UNAVAILABLE) answers: when to try again.
RETRY_AFTER_METADATA_KEY = "retry-after-ms"


class AvatarError(Exception):
    """A call or a Converse stream ended with a gRPC status other than OK.

    ``code`` is the :class:`grpc.StatusCode` (its meaning per call is documented in avatar_service.proto),
    ``details`` the server's message (for people; it names the offending field for INVALID_ARGUMENT), and
    ``retry_after_ms`` the server's hint for RESOURCE_EXHAUSTED / UNAVAILABLE, or None.
    ``str(error)`` reads ``"NOT_FOUND: character 'x' does not exist"``.
    """

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None) -> None:
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms
        super().__init__(str(self))

    @property
    def code_name(self) -> str:
        """The status name as the proto documents it, e.g. ``"INVALID_ARGUMENT"``."""
        return self.code.name

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.details}" if self.details else self.code_name
        if self.retry_after_ms is not None:
            text += f" (retry after {self.retry_after_ms} ms)"
        return text

    def __repr__(self) -> str:
        return f"AvatarError({self.code!r}, {self.details!r}, retry_after_ms={self.retry_after_ms!r})"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "AvatarError":
        """Convert the error grpc raised (sync or asyncio flavour) into an AvatarError."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else None) or ""
        retry_after_ms = None
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == RETRY_AFTER_METADATA_KEY:
                try:
                    retry_after_ms = int(value)
                except (TypeError, ValueError):
                    pass
        return cls(code or grpc.StatusCode.UNKNOWN, details, retry_after_ms)
