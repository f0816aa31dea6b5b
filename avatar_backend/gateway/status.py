"""gRPC status failures raised inside the gateway and turned into a call's final status in one place."""

from __future__ import annotations

import grpc

from avatar_backend.worker.link import WorkerBusyError, WorkerRequestError, WorkerUnavailableError

__all__ = ["RpcFailure", "abort", "failure_from_worker", "worker_stopped_message"]

RETRY_AFTER_METADATA_KEY = "retry-after-ms"


class RpcFailure(Exception):
    """Ends the current call with ``code`` and ``message`` (``retry_after_ms`` goes to the trailers)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_ms is None:
            return ()
        return ((RETRY_AFTER_METADATA_KEY, str(self.retry_after_ms)),)


def worker_stopped_message(reason: str) -> str:
    return f"generator worker stopped: {reason}; it is being restarted, retry"


def failure_from_worker(error: WorkerRequestError | WorkerUnavailableError) -> RpcFailure:
    """The status a client sees for a worker error: the worker's own code, or UNAVAILABLE when it is gone."""
    if isinstance(error, WorkerBusyError):
        return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), retry_after_ms=1000)
    if isinstance(error, WorkerUnavailableError):
        return RpcFailure(grpc.StatusCode.UNAVAILABLE, worker_stopped_message(str(error)), retry_after_ms=1000)
    code = getattr(grpc.StatusCode, error.code, None)
    if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
        code = grpc.StatusCode.INTERNAL
    return RpcFailure(code, error.message)


async def abort(context: grpc.aio.ServicerContext, failure: RpcFailure) -> None:
    """Raise the call's final status (never returns)."""
    await context.abort(failure.code, failure.message, failure.trailing_metadata())
