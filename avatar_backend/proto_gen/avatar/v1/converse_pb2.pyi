from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VideoCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_CODEC_UNSPECIFIED: _ClassVar[VideoCodec]
    VIDEO_CODEC_JPEG: _ClassVar[VideoCodec]
    VIDEO_CODEC_RAW_RGB: _ClassVar[VideoCodec]
    VIDEO_CODEC_H264: _ClassVar[VideoCodec]

class AudioCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_CODEC_UNSPECIFIED: _ClassVar[AudioCodec]
    AUDIO_CODEC_OPUS: _ClassVar[AudioCodec]
    AUDIO_CODEC_PCM16: _ClassVar[AudioCodec]

class EventCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_CODE_UNSPECIFIED: _ClassVar[EventCode]
    EVENT_CODE_DRAINING: _ClassVar[EventCode]
    EVENT_CODE_FRAMES_DROPPED: _ClassVar[EventCode]
    EVENT_CODE_AUDIO_GARBAGE: _ClassVar[EventCode]
    EVENT_CODE_UNKNOWN_EMOTION: _ClassVar[EventCode]
    EVENT_CODE_UNKNOWN_ACTION: _ClassVar[EventCode]
    EVENT_CODE_UTTERANCE_COMPLETE: _ClassVar[EventCode]
    EVENT_CODE_AUDIO_GAP: _ClassVar[EventCode]
    EVENT_CODE_INVALID_EVENT: _ClassVar[EventCode]
VIDEO_CODEC_UNSPECIFIED: VideoCodec
VIDEO_CODEC_JPEG: VideoCodec
VIDEO_CODEC_RAW_RGB: VideoCodec
VIDEO_CODEC_H264: VideoCodec
AUDIO_CODEC_UNSPECIFIED: AudioCodec
AUDIO_CODEC_OPUS: AudioCodec
AUDIO_CODEC_PCM16: AudioCodec
EVENT_CODE_UNSPECIFIED: EventCode
EVENT_CODE_DRAINING: EventCode
EVENT_CODE_FRAMES_DROPPED: EventCode
EVENT_CODE_AUDIO_GARBAGE: EventCode
EVENT_CODE_UNKNOWN_EMOTION: EventCode
EVENT_CODE_UNKNOWN_ACTION: EventCode
EVENT_CODE_UTTERANCE_COMPLETE: EventCode
EVENT_CODE_AUDIO_GAP: EventCode
EVENT_CODE_INVALID_EVENT: EventCode

class VideoFormat(_message.Message):
    __slots__ = ("width", "height", "fps", "codec", "jpeg_quality")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    fps: int
    codec: VideoCodec
    jpeg_quality: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[int] = ..., codec: _Optional[_Union[VideoCodec, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class AudioFormat(_message.Message):
    __slots__ = ("codec", "sample_rate", "channels", "opus_pre_skip")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    OPUS_PRE_SKIP_FIELD_NUMBER: _ClassVar[int]
    codec: AudioCodec
    sample_rate: int
    channels: int
    opus_pre_skip: int
    def __init__(self, codec: _Optional[_Union[AudioCodec, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., opus_pre_skip: _Optional[int] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("config", "audio", "end_of_utterance", "emotion", "action", "listening", "interrupt", "playback")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    END_OF_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    EMOTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    config: SessionConfig
    audio: AudioPacket
    end_of_utterance: EndOfUtterance
    emotion: EmotionEvent
    action: ActionEvent
    listening: ListeningEvent
    interrupt: InterruptRequest
    playback: PlaybackProgress
    def __init__(self, config: _Optional[_Union[SessionConfig, _Mapping]] = ..., audio: _Optional[_Union[AudioPacket, _Mapping]] = ..., end_of_utterance: _Optional[_Union[EndOfUtterance, _Mapping]] = ..., emotion: _Optional[_Union[EmotionEvent, _Mapping]] = ..., action: _Optional[_Union[ActionEvent, _Mapping]] = ..., listening: _Optional[_Union[ListeningEvent, _Mapping]] = ..., interrupt: _Optional[_Union[InterruptRequest, _Mapping]] = ..., playback: _Optional[_Union[PlaybackProgress, _Mapping]] = ...) -> None: ...

class SessionConfig(_message.Message):
    __slots__ = ("npc_id", "character_id", "video", "audio", "reset_memory", "resume_token", "seed", "stats_interval_ms", "echo_audio", "prompt_guidance")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    RESET_MEMORY_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ECHO_AUDIO_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    character_id: str
    video: VideoFormat
    audio: AudioFormat
    reset_memory: bool
    resume_token: str
    seed: int
    stats_interval_ms: int
    echo_audio: bool
    prompt_guidance: float
    def __init__(self, npc_id: _Optional[str] = ..., character_id: _Optional[str] = ..., video: _Optional[_Union[VideoFormat, _Mapping]] = ..., audio: _Optional[_Union[AudioFormat, _Mapping]] = ..., reset_memory: _Optional[bool] = ..., resume_token: _Optional[str] = ..., seed: _Optional[int] = ..., stats_interval_ms: _Optional[int] = ..., echo_audio: _Optional[bool] = ..., prompt_guidance: _Optional[float] = ...) -> None: ...

class AudioPacket(_message.Message):
    __slots__ = ("sequence_number", "payload", "restart_sequence")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESTART_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    payload: bytes
    restart_sequence: bool
    def __init__(self, sequence_number: _Optional[int] = ..., payload: _Optional[bytes] = ..., restart_sequence: _Optional[bool] = ...) -> None: ...

class EndOfUtterance(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmotionEvent(_message.Message):
    __slots__ = ("name", "intensity", "at_voice_sample")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    AT_VOICE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    intensity: float
    at_voice_sample: int
    def __init__(self, name: _Optional[str] = ..., intensity: _Optional[float] = ..., at_voice_sample: _Optional[int] = ...) -> None: ...

class ActionEvent(_message.Message):
    __slots__ = ("preset", "free_text", "at_voice_sample")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    FREE_TEXT_FIELD_NUMBER: _ClassVar[int]
    AT_VOICE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    preset: str
    free_text: str
    at_voice_sample: int
    def __init__(self, preset: _Optional[str] = ..., free_text: _Optional[str] = ..., at_voice_sample: _Optional[int] = ...) -> None: ...

class ListeningEvent(_message.Message):
    __slots__ = ("listening",)
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    listening: bool
    def __init__(self, listening: _Optional[bool] = ...) -> None: ...

class InterruptRequest(_message.Message):
    __slots__ = ("played_until",)
    PLAYED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    played_until: int
    def __init__(self, played_until: _Optional[int] = ...) -> None: ...

class PlaybackProgress(_message.Message):
    __slots__ = ("played_until",)
    PLAYED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    played_until: int
    def __init__(self, played_until: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("accepted", "frame", "audio_echo", "stats", "event", "interrupt_ack", "ended")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    AUDIO_ECHO_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_ACK_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    accepted: SessionAccepted
    frame: VideoFrame
    audio_echo: AudioEcho
    stats: SessionStats
    event: SessionEvent
    interrupt_ack: InterruptAck
    ended: SessionEnded
    def __init__(self, accepted: _Optional[_Union[SessionAccepted, _Mapping]] = ..., frame: _Optional[_Union[VideoFrame, _Mapping]] = ..., audio_echo: _Optional[_Union[AudioEcho, _Mapping]] = ..., stats: _Optional[_Union[SessionStats, _Mapping]] = ..., event: _Optional[_Union[SessionEvent, _Mapping]] = ..., interrupt_ack: _Optional[_Union[InterruptAck, _Mapping]] = ..., ended: _Optional[_Union[SessionEnded, _Mapping]] = ...) -> None: ...

class SessionAccepted(_message.Message):
    __slots__ = ("session_id", "npc_id", "character_id", "video", "audio", "resumed", "blocks_generated", "resume_token", "memory_bytes", "first_block_frames", "block_frames", "model", "start_frame_index", "prompt_guidance")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npc_id: str
    character_id: str
    video: VideoFormat
    audio: AudioFormat
    resumed: bool
    blocks_generated: int
    resume_token: str
    memory_bytes: int
    first_block_frames: int
    block_frames: int
    model: str
    start_frame_index: int
    prompt_guidance: float
    def __init__(self, session_id: _Optional[str] = ..., npc_id: _Optional[str] = ..., character_id: _Optional[str] = ..., video: _Optional[_Union[VideoFormat, _Mapping]] = ..., audio: _Optional[_Union[AudioFormat, _Mapping]] = ..., resumed: _Optional[bool] = ..., blocks_generated: _Optional[int] = ..., resume_token: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., first_block_frames: _Optional[int] = ..., block_frames: _Optional[int] = ..., model: _Optional[str] = ..., start_frame_index: _Optional[int] = ..., prompt_guidance: _Optional[float] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("index", "pts", "pts_us", "codec", "width", "height", "keyframe", "data", "audio_start", "audio_end", "block_index", "speaking")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PTS_FIELD_NUMBER: _ClassVar[int]
    PTS_US_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    AUDIO_START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_END_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    index: int
    pts: int
    pts_us: int
    codec: VideoCodec
    width: int
    height: int
    keyframe: bool
    data: bytes
    audio_start: int
    audio_end: int
    block_index: int
    speaking: bool
    def __init__(self, index: _Optional[int] = ..., pts: _Optional[int] = ..., pts_us: _Optional[int] = ..., codec: _Optional[_Union[VideoCodec, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., keyframe: _Optional[bool] = ..., data: _Optional[bytes] = ..., audio_start: _Optional[int] = ..., audio_end: _Optional[int] = ..., block_index: _Optional[int] = ..., speaking: _Optional[bool] = ...) -> None: ...

class AudioEcho(_message.Message):
    __slots__ = ("start", "sample_rate", "pcm16")
    START_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PCM16_FIELD_NUMBER: _ClassVar[int]
    start: int
    sample_rate: int
    pcm16: bytes
    def __init__(self, start: _Optional[int] = ..., sample_rate: _Optional[int] = ..., pcm16: _Optional[bytes] = ...) -> None: ...

class SessionStats(_message.Message):
    __slots__ = ("generated_fps", "frames_sent", "frames_dropped", "block_compute_ms", "first_frame_latency_ms", "outbound_queue_depth", "audio_queued_ms", "audio", "devices", "blocks_generated")
    GENERATED_FPS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SENT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    AUDIO_QUEUED_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    generated_fps: float
    frames_sent: int
    frames_dropped: int
    block_compute_ms: float
    first_frame_latency_ms: float
    outbound_queue_depth: int
    audio_queued_ms: float
    audio: AudioCounters
    devices: _containers.RepeatedCompositeFieldContainer[DeviceTelemetry]
    blocks_generated: int
    def __init__(self, generated_fps: _Optional[float] = ..., frames_sent: _Optional[int] = ..., frames_dropped: _Optional[int] = ..., block_compute_ms: _Optional[float] = ..., first_frame_latency_ms: _Optional[float] = ..., outbound_queue_depth: _Optional[int] = ..., audio_queued_ms: _Optional[float] = ..., audio: _Optional[_Union[AudioCounters, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[DeviceTelemetry, _Mapping]]] = ..., blocks_generated: _Optional[int] = ...) -> None: ...

class AudioCounters(_message.Message):
    __slots__ = ("received", "duplicates", "late", "lost", "concealed_plc", "recovered_fec", "garbage")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    CONCEALED_PLC_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FEC_FIELD_NUMBER: _ClassVar[int]
    GARBAGE_FIELD_NUMBER: _ClassVar[int]
    received: int
    duplicates: int
    late: int
    lost: int
    concealed_plc: int
    recovered_fec: int
    garbage: int
    def __init__(self, received: _Optional[int] = ..., duplicates: _Optional[int] = ..., late: _Optional[int] = ..., lost: _Optional[int] = ..., concealed_plc: _Optional[int] = ..., recovered_fec: _Optional[int] = ..., garbage: _Optional[int] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("code", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: EventCode
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[_Union[EventCode, str]] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InterruptAck(_message.Message):
    __slots__ = ("generated_until", "dropped_samples", "next_frame_index", "replace_from_pts", "played_until", "unheard_samples")
    GENERATED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FROM_PTS_FIELD_NUMBER: _ClassVar[int]
    PLAYED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    UNHEARD_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    generated_until: int
    dropped_samples: int
    next_frame_index: int
    replace_from_pts: int
    played_until: int
    unheard_samples: int
    def __init__(self, generated_until: _Optional[int] = ..., dropped_samples: _Optional[int] = ..., next_frame_index: _Optional[int] = ..., replace_from_pts: _Optional[int] = ..., played_until: _Optional[int] = ..., unheard_samples: _Optional[int] = ...) -> None: ...

class SessionEnded(_message.Message):
    __slots__ = ("resume_token", "blocks_generated", "frames_generated")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    resume_token: str
    blocks_generated: int
    frames_generated: int
    def __init__(self, resume_token: _Optional[str] = ..., blocks_generated: _Optional[int] = ..., frames_generated: _Optional[int] = ...) -> None: ...

class DeviceTelemetry(_message.Message):
    __slots__ = ("index", "name", "memory_used_bytes", "memory_total_bytes", "utilization_percent", "temperature_celsius")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int
    temperature_celsius: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., utilization_percent: _Optional[int] = ..., temperature_celsius: _Optional[int] = ...) -> None: ...
