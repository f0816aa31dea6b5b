"""What the running worker's model accepts (sizes, frame rate, block lengths), from its WorkerInfo."""

from __future__ import annotations

from dataclasses import dataclass

from avatar_backend.media.encoders import supported_codecs
from avatar_backend.proto_gen import avatar_service_pb2, converse_pb2, worker_pb2

__all__ = ["AUDIO_SAMPLE_RATES", "ModelCapabilities", "public_devices", "served_video_codecs"]

AUDIO_SAMPLE_RATES = (16000, 48000)
AUDIO_CODECS = (converse_pb2.AUDIO_CODEC_OPUS, converse_pb2.AUDIO_CODEC_PCM16)

# The contract's codec enum and the media registry's codec names.
VIDEO_CODEC_NAMES = {
    converse_pb2.VIDEO_CODEC_JPEG: "jpeg",
    converse_pb2.VIDEO_CODEC_RAW_RGB: "raw_rgb",
    converse_pb2.VIDEO_CODEC_H264: "h264",
}


def served_video_codecs() -> list[int]:
    """The contract's codec values the media encoders serve, in enum order."""
    served = set(supported_codecs())
    return [codec for codec, name in VIDEO_CODEC_NAMES.items() if name in served]


@dataclass(frozen=True)
class ModelCapabilities:
    model_name: str
    config_json: str
    # (width, height, npc_memory_bytes) per accepted size.
    sizes: tuple[tuple[int, int, int], ...]
    fps: tuple[int, ...]
    default_width: int
    default_height: int
    default_fps: int
    first_block_frames: int
    block_frames: int
    denoising_steps: int
    prompt_guidance: float     # a session's factor unless it sets one
    prompt_onset_latents: int  # latent frames over which a block's new prompt sets in

    @classmethod
    def from_worker_info(cls, info: worker_pb2.WorkerInfo) -> "ModelCapabilities":
        return cls(
            model_name=info.model_name,
            config_json=info.config_json,
            sizes=tuple((s.width, s.height, s.npc_memory_bytes) for s in info.sizes),
            fps=tuple(info.fps),
            default_width=info.default_width,
            default_height=info.default_height,
            default_fps=info.default_fps,
            first_block_frames=info.first_block_frames,
            block_frames=info.block_frames,
            denoising_steps=info.denoising_steps,
            prompt_guidance=info.prompt_guidance,
            prompt_onset_latents=info.prompt_onset_latents,
        )

    def supports_size(self, width: int, height: int) -> bool:
        return any(w == width and h == height for w, h, _ in self.sizes)

    def sizes_text(self) -> str:
        return ", ".join(f"{w}x{h}" for w, h, _ in self.sizes)

    def video_sizes_proto(self) -> list[avatar_service_pb2.VideoSize]:
        return [avatar_service_pb2.VideoSize(width=w, height=h, npc_memory_bytes=m) for w, h, m in self.sizes]


def public_devices(devices) -> list[converse_pb2.DeviceTelemetry]:
    """The worker's NVML telemetry as the public message (same fields, a different package)."""
    return [
        converse_pb2.DeviceTelemetry(
            index=d.index, name=d.name, memory_used_bytes=d.memory_used_bytes,
            memory_total_bytes=d.memory_total_bytes, utilization_percent=d.utilization_percent,
            temperature_celsius=d.temperature_celsius,
        )
        for d in devices
    ]
