"""AvatarService on the wire: its methods registered with request parsers that never raise.

grpc answers a request it cannot parse with INTERNAL (the first message of a stream) or CANCELLED (a later
one), which tells a client nothing. Here a message that is not valid protobuf for its type (raw garbage, a
truncated message, invalid UTF-8 in a string field) parses into a :class:`MalformedRequest`, and the servicer
ends the call with INVALID_ARGUMENT whose BadRequest names the field "request".

The method table comes from the service descriptor, so it follows the contract without a hand-kept list.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from avatar_backend.proto_gen import avatar_service_pb2

from .status import RpcFailure

__all__ = ["MalformedRequest", "SERVICE", "add_avatar_service", "malformed_request_failure"]

SERVICE = avatar_service_pb2.DESCRIPTOR.services_by_name["AvatarService"]


@dataclass(frozen=True)
class MalformedRequest:
    """A request message that could not be parsed as ``type_name``."""

    type_name: str
    reason: str
    size: int


def malformed_request_failure(request: MalformedRequest) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                      f"request: {request.size} bytes are not a valid {request.type_name} message ({request.reason})",
                      field="request")


def _parser(message_class):
    type_name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as err:
            reason = str(err).rsplit(": ", 1)[-1]  # "Error parsing message with type '...': <reason>"
            return MalformedRequest(type_name, reason, len(data))

    return parse


def add_avatar_service(servicer, server: grpc.aio.Server) -> None:
    """Register ``servicer``'s AvatarService methods on ``server`` (instead of the generated helper)."""
    handlers = {}
    for method in SERVICE.methods:
        behaviour = getattr(servicer, method.name)
        codec = {
            "request_deserializer": _parser(message_factory.GetMessageClass(method.input_type)),
            "response_serializer": message_factory.GetMessageClass(method.output_type).SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour, **codec)
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(behaviour, **codec)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(behaviour, **codec)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, **codec)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
