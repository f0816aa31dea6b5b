"""The limits the gateway enforces (and publishes in ServerInfo.limits)."""

from __future__ import annotations

from dataclasses import dataclass

from avatar_backend.proto_gen import avatar_service_pb2

__all__ = ["Limits"]

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    # Any one gRPC message, either direction. grpc itself refuses bigger ones with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 4 * MIB
    # A 60 ms PCM16 packet at 48 kHz is 5760 bytes; an Opus packet is at most a few kB.
    max_audio_packet_bytes: int = 16 * 1024
    max_sessions: int = 16
    max_prompt_chars: int = 2000
    # Leaves room in a 4 MiB message for the prompts.
    max_reference_image_bytes: int = 3 * MIB
    # Video frames buffered per session before the oldest are dropped: three 32-frame blocks, so blocks made
    # back to back (voice queued ahead) never cost a frame to a client that keeps up.
    outbound_queue_frames: int = 96
    # Messages that are never dropped (audio echo, events, acks) buffered for a client that stopped
    # reading; beyond this the session ends with RESOURCE_EXHAUSTED rather than growing without bound.
    max_undroppable_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_audio_packet_bytes", "max_sessions", "max_prompt_chars",
                     "max_reference_image_bytes", "outbound_queue_frames", "max_undroppable_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_reference_image_bytes >= self.max_message_bytes:
            raise ValueError("max_reference_image_bytes must be smaller than max_message_bytes")

    def to_proto(self) -> avatar_service_pb2.Limits:
        return avatar_service_pb2.Limits(
            max_message_bytes=self.max_message_bytes,
            max_audio_packet_bytes=self.max_audio_packet_bytes,
            max_sessions=self.max_sessions,
            max_prompt_chars=self.max_prompt_chars,
            max_reference_image_bytes=self.max_reference_image_bytes,
            outbound_queue_frames=self.outbound_queue_frames,
        )
