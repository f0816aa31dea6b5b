"""The one exception the client raises for a failed call or stream, with the server's error details.

The server puts a google.rpc.Status in the ``grpc-status-details-bin`` trailer of every failure (see
avatar_service.proto): the field path for INVALID_ARGUMENT, a retry delay for RESOURCE_EXHAUSTED and
UNAVAILABLE, the resource for NOT_FOUND, ABORTED and ALREADY_EXISTS. :class:`AvatarError` unpacks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["AvatarError", "RESUME_TOKEN_METADATA_KEY", "RETRY_AFTER_METADATA_KEY", "ResourceInfo"]

#: Trailing metadata the server adds to RESOURCE_EXHAUSTED (and UNAVAILABLE) answers: when to try again.
RETRY_AFTER_METADATA_KEY = "retry-after-ms"
#: Trailing metadata of a Converse stream whose NPC memory was saved: the token to resume it with.
RESUME_TOKEN_METADATA_KEY = "resume-token"
STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ResourceInfo:
    """The resource an error is about, e.g. ``("avatar.v1.Npc", "guard-7")``."""

    resource_type: str
    resource_name: str


class AvatarError(Exception):
    """A call or a Converse stream ended with a gRPC status other than OK.

    ``code`` is the :class:`grpc.StatusCode` (its meaning per call is documented in avatar_service.proto),
    ``details`` the server's message (for people), ``field`` the offending field's path for
    INVALID_ARGUMENT (e.g. ``"video.width"``), ``retry_after_ms`` the server's hint for RESOURCE_EXHAUSTED /
    UNAVAILABLE, ``resource`` the NPC or character for NOT_FOUND / ABORTED / ALREADY_EXISTS, and
    ``resume_token`` the NPC's token when a stream ended after its memory was saved.
    ``str(error)`` reads ``"NOT_FOUND: character 'x' does not exist"``.
    """

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None, *,
                 field: str | None = None, resource: ResourceInfo | None = None, resume_token: str = "") -> None:
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms
        self.field = field
        self.resource = resource
        self.resume_token = resume_token
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
        return (f"AvatarError({self.code!r}, {self.details!r}, retry_after_ms={self.retry_after_ms!r}, "
                f"field={self.field!r}, resource={self.resource!r})")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "AvatarError":
        """Convert the error grpc raised (sync or asyncio flavour) into an AvatarError."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else None) or ""
        trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
        return cls.from_status(code or grpc.StatusCode.UNKNOWN, details, trailing)

    @classmethod
    def from_status(cls, code: grpc.StatusCode, details: str,
                    trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> "AvatarError":
        """An AvatarError from a final status and its trailers (rich details when the server sent them)."""
        retry_after_ms = field = resource = None
        resume_token = ""
        for key, value in trailing_metadata or ():
            if key == RETRY_AFTER_METADATA_KEY:
                try:
                    retry_after_ms = int(value)
                except (TypeError, ValueError):
                    pass
            elif key == RESUME_TOKEN_METADATA_KEY:
                resume_token = value if isinstance(value, str) else value.decode("utf-8", "replace")
            elif key == STATUS_DETAILS_METADATA_KEY and isinstance(value, bytes):
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                        bad_request = error_details_pb2.BadRequest()
                        detail.Unpack(bad_request)
                        if bad_request.field_violations:
                            field = bad_request.field_violations[0].field
                    elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        retry = error_details_pb2.RetryInfo()
                        detail.Unpack(retry)
                        retry_after_ms = retry.retry_delay.ToMilliseconds()
                    elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
                        info = error_details_pb2.ResourceInfo()
                        detail.Unpack(info)
                        resource = ResourceInfo(info.resource_type, info.resource_name)
        return cls(code, details, retry_after_ms, field=field, resource=resource, resume_token=resume_token)
