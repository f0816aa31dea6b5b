"""gRPC status failures raised inside the gateway and turned into a call's final status in one place.

Every failure carries, beside its code and human-readable message, the details a program reads: a
``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer (the standard rich error model) with a
BadRequest for INVALID_ARGUMENT (the field path), a RetryInfo for RESOURCE_EXHAUSTED and UNAVAILABLE, and a
ResourceInfo for NOT_FOUND, ABORTED and ALREADY_EXISTS. The retry delay also goes out as the plain
``retry-after-ms`` trailer, and a session's end carries the NPC's ``resume-token``.

Texts are bounded: a message or a field path built from what a client sent (an over-long id, say) never makes
trailers larger than a client's metadata limit.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from avatar_backend.worker.link import WorkerBusyError, WorkerRequestError, WorkerUnavailableError

__all__ = [
    "CHARACTER_RESOURCE",
    "NPC_RESOURCE",
    "RESUME_TOKEN_METADATA_KEY",
    "RETRY_AFTER_METADATA_KEY",
    "RpcFailure",
    "abort",
    "bounded",
    "failure_from_worker",
    "worker_stopped_message",
]

RETRY_AFTER_METADATA_KEY = "retry-after-ms"
RESUME_TOKEN_METADATA_KEY = "resume-token"
STATUS_DETAILS_METADATA_KEY = "grpc-status-details-bin"
CHARACTER_RESOURCE = "avatar.v1.Character"
NPC_RESOURCE = "avatar.v1.Npc"

# Clients refuse trailers over their metadata limit (8 KiB by default in grpc): the message travels twice
# (grpc-message and inside the Status), so each text stays well under a quarter of that.
MAX_MESSAGE_CHARS = 1024
MAX_DETAIL_CHARS = 200
_FIELD_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked when it was cut."""
    if len(text) <= limit:
        return text
    suffix = f"... ({len(text)} chars)"
    return text[:limit - len(suffix)] + suffix


class RpcFailure(Exception):
    """Ends the current call with ``code`` and ``message`` plus machine-readable details.

    ``field``: the offending field's path for INVALID_ARGUMENT (default: the ``path: `` the message starts
    with). ``retry_after_ms``: when to try again. ``resource``: (type, name) of the missing or busy resource.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, retry_after_ms: int | None = None,
                 field: str | None = None, resource: tuple[str, str] | None = None):
        message = bounded(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        if field is None and code is grpc.StatusCode.INVALID_ARGUMENT:
            prefix = _FIELD_PREFIX.match(message)
            field = prefix.group(1) if prefix else "request"
        self.field = field
        self.resource = resource

    def status_proto(self) -> status_pb2.Status:
        """The google.rpc.Status of this failure."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        if self.field is not None:
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=bounded(self.field),
                                                            description=bounded(self.message))]))
        if self.retry_after_ms is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(self.retry_after_ms)
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.resource is not None:
            kind, name = self.resource
            status.details.add().Pack(error_details_pb2.ResourceInfo(
                resource_type=kind, resource_name=bounded(name), description=bounded(self.message)))
        return status

    def trailing_metadata(self, resume_token: str = "") -> tuple[tuple[str, str | bytes], ...]:
        metadata: list[tuple[str, str | bytes]] = [
            (STATUS_DETAILS_METADATA_KEY, self.status_proto().SerializeToString())]
        if self.retry_after_ms is not None:
            metadata.append((RETRY_AFTER_METADATA_KEY, str(self.retry_after_ms)))
        if resume_token:
            metadata.append((RESUME_TOKEN_METADATA_KEY, resume_token))
        return tuple(metadata)


def worker_stopped_message(reason: str) -> str:
    return f"generator worker stopped: {reason}; it is being restarted, retry"


def failure_from_worker(error: WorkerRequestError | WorkerUnavailableError, *,
                        resource: tuple[str, str] | None = None) -> RpcFailure:
    """The status a client sees for a worker error: the worker's own code, or UNAVAILABLE when it is gone.

    ``resource`` is attached to NOT_FOUND, ABORTED and ALREADY_EXISTS (the NPC or character asked for)."""
    if isinstance(error, WorkerBusyError):
        return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), retry_after_ms=1000)
    if isinstance(error, WorkerUnavailableError):
        return RpcFailure(grpc.StatusCode.UNAVAILABLE, worker_stopped_message(str(error)), retry_after_ms=1000)
    code = getattr(grpc.StatusCode, error.code, None)
    if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
        code = grpc.StatusCode.INTERNAL
    if code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED, grpc.StatusCode.ALREADY_EXISTS):
        resource = None
    retry_after_ms = 1000 if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) else None
    return RpcFailure(code, error.message, resource=resource, retry_after_ms=retry_after_ms)


async def abort(context: grpc.aio.ServicerContext, failure: RpcFailure, resume_token: str = "") -> None:
    """Raise the call's final status (never returns)."""
    await context.abort(failure.code, failure.message, failure.trailing_metadata(resume_token))
