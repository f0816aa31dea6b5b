"""Checks a Converse SessionConfig and resolves its defaults.

Every refusal is INVALID_ARGUMENT and its message starts with the offending field's path
(``video.width: ...``), so an engine developer sees at once what to change.

A video size or fps of 0 stays 0 here: the worker resolves it to the NPC's own (its memory was made for
one size) or, for a new NPC, to the model's default; SessionAccepted reports what it became.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import grpc

from avatar_backend.media.encoders import DEFAULT_JPEG_QUALITY
from avatar_backend.media.resample import MODEL_SAMPLE_RATE
from avatar_backend.proto_gen import converse_pb2
from avatar_backend.store import DataDir, valid_id

from .capabilities import AUDIO_CODECS, AUDIO_SAMPLE_RATES, VIDEO_CODEC_NAMES, ModelCapabilities, served_video_codecs
from .status import RpcFailure

__all__ = ["SessionSettings", "resolve_session_config"]

DEFAULT_STATS_INTERVAL_MS = 1000
MIN_STATS_INTERVAL_MS = 100
MAX_STATS_INTERVAL_MS = 3_600_000
ID_RULE = "1-128 characters of [A-Za-z0-9_.-]"
# libopus's look-ahead (OPUS_GET_LOOKAHEAD) for the voip and audio applications, in samples at 48 kHz.
DEFAULT_OPUS_PRE_SKIP = 312
MAX_OPUS_PRE_SKIP = 3840  # 80 ms: far beyond any Opus encoder's look-ahead


@dataclass(frozen=True)
class SessionSettings:
    """A SessionConfig with every default resolved."""

    npc_id: str
    character_id: str          # empty: the NPC's own character
    width: int                 # 0 (with height 0): the NPC's size, or the model's default for a new NPC
    height: int
    fps: int                   # 0: the NPC's, or the model's default
    video_codec: int           # converse_pb2.VideoCodec
    codec_name: str            # the media encoder's name, e.g. "jpeg"
    jpeg_quality: int          # 0 unless JPEG
    audio_codec: int           # converse_pb2.AudioCodec
    sample_rate: int
    opus_pre_skip: int         # samples at 48 kHz trimmed from the start of the decoded voice (0 for PCM16)
    seed: int
    reset_memory: bool
    resume_token: str
    stats_interval_ms: int
    echo_audio: bool
    prompt_guidance: float | None  # None: the worker's default

    def video_format(self, width: int, height: int, fps: int) -> converse_pb2.VideoFormat:
        """The accepted video format, given the size and fps the NPC runs at."""
        return converse_pb2.VideoFormat(width=width, height=height, fps=fps, codec=self.video_codec,
                                        jpeg_quality=self.jpeg_quality)

    def audio_format(self) -> converse_pb2.AudioFormat:
        audio = converse_pb2.AudioFormat(codec=self.audio_codec, sample_rate=self.sample_rate, channels=1)
        if self.audio_codec == converse_pb2.AUDIO_CODEC_OPUS:
            audio.opus_pre_skip = self.opus_pre_skip
        return audio


def _invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message)


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def resolve_session_config(config: converse_pb2.SessionConfig, model: ModelCapabilities,
                           data_dir: DataDir, max_prompt_guidance: float) -> SessionSettings:
    """The settings the session runs with; raises RpcFailure(INVALID_ARGUMENT) naming the field."""
    _check_ids(config, data_dir)
    width, height = _resolve_size(config.video, model)
    fps = _resolve_fps(config.video.fps, model)
    video_codec, jpeg_quality = _resolve_video_codec(config.video)
    audio_codec, sample_rate, opus_pre_skip = _resolve_audio(config.audio)
    return SessionSettings(
        npc_id=config.npc_id,
        character_id=config.character_id,
        width=width,
        height=height,
        fps=fps,
        video_codec=video_codec,
        codec_name=VIDEO_CODEC_NAMES[video_codec],
        jpeg_quality=jpeg_quality,
        audio_codec=audio_codec,
        sample_rate=sample_rate,
        opus_pre_skip=opus_pre_skip,
        seed=config.seed,
        reset_memory=config.reset_memory,
        resume_token=config.resume_token,
        stats_interval_ms=_resolve_stats_interval(config.stats_interval_ms),
        echo_audio=config.echo_audio if config.HasField("echo_audio") else True,
        prompt_guidance=_resolve_prompt_guidance(config, model, max_prompt_guidance),
    )


def _check_ids(config: converse_pb2.SessionConfig, data_dir: DataDir) -> None:
    if not valid_id(config.npc_id):
        raise _invalid(f"npc_id: {config.npc_id!r} is not a valid id ({ID_RULE})")
    if config.character_id:
        if not valid_id(config.character_id):
            raise _invalid(f"character_id: {config.character_id!r} is not a valid id ({ID_RULE})")
        if not data_dir.has_character(config.character_id):
            raise _invalid(f"character_id: no character {config.character_id!r} is registered "
                           "(see RegisterCharacter / ListCharacters)")


def _resolve_size(video: converse_pb2.VideoFormat, model: ModelCapabilities) -> tuple[int, int]:
    width, height = video.width, video.height
    if width == 0 and height == 0:
        return 0, 0
    supported = model.sizes_text()
    if width == 0 or height == 0:
        field = "video.width" if width == 0 else "video.height"
        raise _invalid(f"{field}: set both video.width and video.height, or neither for the default "
                       f"{model.default_width}x{model.default_height}; supported: {supported}")
    if not any(w == width for w, _, _ in model.sizes):
        raise _invalid(f"video.width: {width} is not a supported size; supported: {supported}")
    if not model.supports_size(width, height):
        raise _invalid(f"video.height: {width}x{height} is not a supported size; supported: {supported}")
    return width, height


def _resolve_fps(fps: int, model: ModelCapabilities) -> int:
    if fps == 0:
        return 0
    if fps not in model.fps:
        raise _invalid(f"video.fps: {fps} is not supported; supported: {', '.join(map(str, model.fps))}")
    return fps


def _resolve_video_codec(video: converse_pb2.VideoFormat) -> tuple[int, int]:
    codec = video.codec or converse_pb2.VIDEO_CODEC_JPEG
    served = served_video_codecs()
    if codec not in served:
        names = ", ".join(converse_pb2.VideoCodec.Name(c) for c in served)
        raise _invalid(f"video.codec: {_enum_name(converse_pb2.VideoCodec, codec)} is not served by this server; "
                       f"supported: {names}")
    if video.jpeg_quality > 100:
        raise _invalid(f"video.jpeg_quality: {video.jpeg_quality} is out of range 1-100 (0 = {DEFAULT_JPEG_QUALITY})")
    if codec != converse_pb2.VIDEO_CODEC_JPEG:
        return codec, 0
    return codec, video.jpeg_quality or DEFAULT_JPEG_QUALITY


def _resolve_audio(audio: converse_pb2.AudioFormat) -> tuple[int, int, int]:
    codec = audio.codec or converse_pb2.AUDIO_CODEC_OPUS
    if codec not in AUDIO_CODECS:
        names = ", ".join(converse_pb2.AudioCodec.Name(c) for c in AUDIO_CODECS)
        raise _invalid(f"audio.codec: {_enum_name(converse_pb2.AudioCodec, codec)} is not supported; "
                       f"supported: {names}")
    sample_rate = audio.sample_rate or (48000 if codec == converse_pb2.AUDIO_CODEC_OPUS else MODEL_SAMPLE_RATE)
    if sample_rate not in AUDIO_SAMPLE_RATES:
        raise _invalid(f"audio.sample_rate: {sample_rate} Hz is not supported; "
                       f"supported: {', '.join(map(str, AUDIO_SAMPLE_RATES))}")
    if audio.channels not in (0, 1):
        raise _invalid(f"audio.channels: {audio.channels} is not supported; the NPC's voice must be mono (1)")
    if codec != converse_pb2.AUDIO_CODEC_OPUS:
        if audio.HasField("opus_pre_skip") and audio.opus_pre_skip:
            raise _invalid("audio.opus_pre_skip: only Opus voice has a pre-skip; leave it unset for "
                           f"{converse_pb2.AudioCodec.Name(codec)}")
        return codec, sample_rate, 0
    pre_skip = audio.opus_pre_skip if audio.HasField("opus_pre_skip") else DEFAULT_OPUS_PRE_SKIP
    if pre_skip > MAX_OPUS_PRE_SKIP:
        raise _invalid(f"audio.opus_pre_skip: {pre_skip} samples is over the limit of {MAX_OPUS_PRE_SKIP} "
                       f"(unset = {DEFAULT_OPUS_PRE_SKIP}, libopus's look-ahead)")
    return codec, sample_rate, pre_skip


def _resolve_stats_interval(interval_ms: int) -> int:
    if interval_ms == 0:
        return DEFAULT_STATS_INTERVAL_MS
    if not MIN_STATS_INTERVAL_MS <= interval_ms <= MAX_STATS_INTERVAL_MS:
        raise _invalid(f"stats_interval_ms: {interval_ms} is out of range "
                       f"{MIN_STATS_INTERVAL_MS}-{MAX_STATS_INTERVAL_MS} (0 = {DEFAULT_STATS_INTERVAL_MS})")
    return interval_ms


def _resolve_prompt_guidance(config: converse_pb2.SessionConfig, model: ModelCapabilities,
                             maximum: float) -> float | None:
    if not config.HasField("prompt_guidance"):
        return None
    factor = config.prompt_guidance
    # The limit is advertised as a float32 (ServerInfo.limits): a client that sends it back is within it.
    advertised = struct.unpack("f", struct.pack("f", maximum))[0]
    if factor == 1.0 or 1.0 < factor <= max(maximum, advertised):  # NaN fails both
        return factor
    if maximum == 1.0 and factor > 1.0:
        raise _invalid(f"prompt_guidance: {factor:g} is refused: this server does not let sessions turn prompt "
                       "guidance on (its operator can, with serve --max-prompt-guidance)")
    raise _invalid(f"prompt_guidance: {factor:g} is out of range 1-{maximum:g} (1 = off; unset = the server's "
                   f"{model.prompt_guidance:g})")
