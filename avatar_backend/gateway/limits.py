"""The limits the gateway enforces, and those its worker enforces, as published in ServerInfo.limits."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from avatar_backend.proto_gen import avatar_service_pb2
from avatar_backend.worker.scheduler import DEFAULT_VOICE_JITTER_BUDGET_MS
from avatar_backend.store import (
    DEFAULT_MAX_PARKED_MEMORY_BYTES,
    DEFAULT_MAX_STORED_NPC_BYTES,
    DEFAULT_MAX_STORED_NPCS,
    DEFAULT_NPC_SNAPSHOT_INTERVAL_S,
)

__all__ = ["Limits", "parse_byte_size"]

MIB = 1 << 20
# Each step of prompt guidance costs lip sync and smoothness (the tiny model's lip-sync r is 0.94 at factor 3 and
# 0.91 at 4, and earlier weights' 0.87 at 10; docs/TINY_EXPERIMENTS.md): beyond 10 a session gets little but damage.
DEFAULT_MAX_PROMPT_GUIDANCE = 10.0


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
    # Decoded pixels (width * height) of a reference image, checked from its header before it is decoded:
    # 4096x4096 is 64 MiB as RGBA, and the model uses far fewer (the image is reduced on decode).
    max_reference_image_pixels: int = 4096 * 4096
    # Enforced by the worker (see worker/memory_pool.py); 0 means no cap for the two stored-NPC limits.
    max_stored_npcs: int = DEFAULT_MAX_STORED_NPCS
    max_stored_npc_bytes: int = DEFAULT_MAX_STORED_NPC_BYTES
    max_parked_memory_bytes: int = DEFAULT_MAX_PARKED_MEMORY_BYTES
    npc_snapshot_interval_s: float = DEFAULT_NPC_SNAPSHOT_INTERVAL_S   # 0: live memories saved at session end only
    # How long an utterance's voice may stall before silence goes inside it (enforced by the worker's
    # scheduler, see worker/scheduler.py).
    voice_jitter_budget_ms: int = DEFAULT_VOICE_JITTER_BUDGET_MS
    # Emotion and action events waiting for the voice they were timed to (at_voice_sample) per session.
    max_timed_events: int = 64
    # The largest prompt guidance factor a session may ask for; None: DEFAULT_MAX_PROMPT_GUIDANCE where the server
    # guides by default (tiny), 1 where it does not (liveact-18b, whose guided pass needs an 11.7 GB scratch copy
    # of a step's cache per NPC at 512x512: a client must not be able to turn that on). See prompt_guidance_limit.
    max_prompt_guidance: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_audio_packet_bytes", "max_sessions", "max_prompt_chars",
                     "max_reference_image_bytes", "outbound_queue_frames", "max_undroppable_bytes",
                     "max_reference_image_pixels", "max_timed_events"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_stored_npcs", "max_stored_npc_bytes", "max_parked_memory_bytes", "npc_snapshot_interval_s",
                     "voice_jitter_budget_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.max_prompt_guidance is not None and not 1.0 <= self.max_prompt_guidance < math.inf:
            raise ValueError(f"max_prompt_guidance must be a factor >= 1, got {self.max_prompt_guidance}")
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
            max_stored_npcs=self.max_stored_npcs,
            max_stored_npc_bytes=self.max_stored_npc_bytes,
            max_parked_memory_bytes=self.max_parked_memory_bytes,
            max_reference_image_pixels=self.max_reference_image_pixels,
            # Whole seconds on the wire; a sub-second interval (tests) must not read as 0, which means "off".
            npc_snapshot_interval_s=math.ceil(self.npc_snapshot_interval_s),
            voice_jitter_budget_ms=self.voice_jitter_budget_ms,
            max_timed_events=self.max_timed_events,
            # 0 until the worker says its default factor (GetServerInfo fills in prompt_guidance_limit's answer).
            max_prompt_guidance=0.0,
        )

    def prompt_guidance_limit(self, model_default: float) -> float:
        """The largest prompt guidance a session may ask for on a server whose default factor is ``model_default``:
        the operator's, else DEFAULT_MAX_PROMPT_GUIDANCE where the server guides by default and 1 where it does
        not; never below the default itself (a session may always ask for what it gets by asking nothing)."""
        if self.max_prompt_guidance is not None:
            limit = self.max_prompt_guidance
        else:
            limit = DEFAULT_MAX_PROMPT_GUIDANCE if model_default > 1.0 else 1.0
        return max(limit, model_default)


_BYTE_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*", re.IGNORECASE)


def parse_byte_size(text: str) -> int:
    """A byte count written as 1073741824, 1024M, 1G, 1GiB or 1.5GB (K/M/G/T are powers of 1024 either way,
    like the limits this server prints). ValueError for anything else."""
    match = _BYTE_SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a byte size (e.g. 512M, 8G, 1073741824)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * (1 << (10 * "_KMGT".index(unit or "_"))))
