"""The worker's refusal of a request, named by a grpc status code."""

from __future__ import annotations

__all__ = ["RequestError"]


class RequestError(Exception):
    """A request the worker refuses; ``code`` is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
