"""Generated protobuf and gRPC modules (made by ``buildall.sh stubs`` from ``proto/``; never edit them).

protoc writes absolute imports (``from avatar.v1 import converse_pb2``), so this folder is put on the
import path once, here, and the rest of the package imports the modules through this one.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from avatar.internal.v1 import worker_pb2  # noqa: E402
from avatar.v1 import avatar_service_pb2, avatar_service_pb2_grpc, converse_pb2  # noqa: E402

__all__ = ["avatar_service_pb2", "avatar_service_pb2_grpc", "converse_pb2", "worker_pb2"]
