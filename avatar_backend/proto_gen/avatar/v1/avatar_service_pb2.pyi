from avatar.v1 import converse_pb2 as _converse_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterCharacterRequest(_message.Message):
    __slots__ = ("character_id", "reference_image", "base_prompt", "emotion_prompts", "action_prompts", "replace")
    class EmotionPromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ActionPromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    BASE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EMOTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    reference_image: bytes
    base_prompt: str
    emotion_prompts: _containers.ScalarMap[str, str]
    action_prompts: _containers.ScalarMap[str, str]
    replace: bool
    def __init__(self, character_id: _Optional[str] = ..., reference_image: _Optional[bytes] = ..., base_prompt: _Optional[str] = ..., emotion_prompts: _Optional[_Mapping[str, str]] = ..., action_prompts: _Optional[_Mapping[str, str]] = ..., replace: _Optional[bool] = ...) -> None: ...

class Character(_message.Message):
    __slots__ = ("character_id", "base_prompt", "emotion_prompts", "action_prompts", "reference_width", "reference_height", "created_unix_ms", "npc_count")
    class EmotionPromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ActionPromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EMOTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NPC_COUNT_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    base_prompt: str
    emotion_prompts: _containers.ScalarMap[str, str]
    action_prompts: _containers.ScalarMap[str, str]
    reference_width: int
    reference_height: int
    created_unix_ms: int
    npc_count: int
    def __init__(self, character_id: _Optional[str] = ..., base_prompt: _Optional[str] = ..., emotion_prompts: _Optional[_Mapping[str, str]] = ..., action_prompts: _Optional[_Mapping[str, str]] = ..., reference_width: _Optional[int] = ..., reference_height: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., npc_count: _Optional[int] = ...) -> None: ...

class GetCharacterRequest(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    def __init__(self, character_id: _Optional[str] = ...) -> None: ...

class ListCharactersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCharactersResponse(_message.Message):
    __slots__ = ("characters",)
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    characters: _containers.RepeatedCompositeFieldContainer[Character]
    def __init__(self, characters: _Optional[_Iterable[_Union[Character, _Mapping]]] = ...) -> None: ...

class DeleteCharacterRequest(_message.Message):
    __slots__ = ("character_id", "delete_npcs")
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    DELETE_NPCS_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    delete_npcs: bool
    def __init__(self, character_id: _Optional[str] = ..., delete_npcs: _Optional[bool] = ...) -> None: ...

class DeleteCharacterResponse(_message.Message):
    __slots__ = ("npcs_deleted",)
    NPCS_DELETED_FIELD_NUMBER: _ClassVar[int]
    npcs_deleted: int
    def __init__(self, npcs_deleted: _Optional[int] = ...) -> None: ...

class Npc(_message.Message):
    __slots__ = ("npc_id", "character_id", "memory_bytes", "blocks_generated", "frames_generated", "live", "resume_token", "width", "height", "updated_unix_ms")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_GENERATED_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    character_id: str
    memory_bytes: int
    blocks_generated: int
    frames_generated: int
    live: bool
    resume_token: str
    width: int
    height: int
    updated_unix_ms: int
    def __init__(self, npc_id: _Optional[str] = ..., character_id: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., blocks_generated: _Optional[int] = ..., frames_generated: _Optional[int] = ..., live: _Optional[bool] = ..., resume_token: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ...) -> None: ...

class GetNpcRequest(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class ListNpcsRequest(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    def __init__(self, character_id: _Optional[str] = ...) -> None: ...

class ListNpcsResponse(_message.Message):
    __slots__ = ("npcs",)
    NPCS_FIELD_NUMBER: _ClassVar[int]
    npcs: _containers.RepeatedCompositeFieldContainer[Npc]
    def __init__(self, npcs: _Optional[_Iterable[_Union[Npc, _Mapping]]] = ...) -> None: ...

class ResetNpcRequest(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class DeleteNpcRequest(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class DeleteNpcResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "model", "video_sizes", "fps", "video_codecs", "audio_codecs", "audio_sample_rates", "limits", "devices", "worker_device", "worker_ready")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SIZES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_CODECS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CODECS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SAMPLE_RATES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    WORKER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    WORKER_READY_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: ModelInfo
    video_sizes: _containers.RepeatedCompositeFieldContainer[VideoSize]
    fps: _containers.RepeatedScalarFieldContainer[int]
    video_codecs: _containers.RepeatedScalarFieldContainer[_converse_pb2.VideoCodec]
    audio_codecs: _containers.RepeatedScalarFieldContainer[_converse_pb2.AudioCodec]
    audio_sample_rates: _containers.RepeatedScalarFieldContainer[int]
    limits: Limits
    devices: _containers.RepeatedCompositeFieldContainer[_converse_pb2.DeviceTelemetry]
    worker_device: str
    worker_ready: bool
    def __init__(self, version: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., video_sizes: _Optional[_Iterable[_Union[VideoSize, _Mapping]]] = ..., fps: _Optional[_Iterable[int]] = ..., video_codecs: _Optional[_Iterable[_Union[_converse_pb2.VideoCodec, str]]] = ..., audio_codecs: _Optional[_Iterable[_Union[_converse_pb2.AudioCodec, str]]] = ..., audio_sample_rates: _Optional[_Iterable[int]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[_converse_pb2.DeviceTelemetry, _Mapping]]] = ..., worker_device: _Optional[str] = ..., worker_ready: _Optional[bool] = ...) -> None: ...

class VideoSize(_message.Message):
    __slots__ = ("width", "height", "npc_memory_bytes")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NPC_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    npc_memory_bytes: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., npc_memory_bytes: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "config_json", "random_weights", "weights_sha256", "parameters", "denoising_steps", "first_block_frames", "block_frames", "default_width", "default_height", "default_fps", "prompt_guidance", "prompt_onset_latents")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STEPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ONSET_LATENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    random_weights: bool
    weights_sha256: str
    parameters: int
    denoising_steps: int
    first_block_frames: int
    block_frames: int
    default_width: int
    default_height: int
    default_fps: int
    prompt_guidance: float
    prompt_onset_latents: int
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ..., random_weights: _Optional[bool] = ..., weights_sha256: _Optional[str] = ..., parameters: _Optional[int] = ..., denoising_steps: _Optional[int] = ..., first_block_frames: _Optional[int] = ..., block_frames: _Optional[int] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., default_fps: _Optional[int] = ..., prompt_guidance: _Optional[float] = ..., prompt_onset_latents: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_audio_packet_bytes", "max_sessions", "max_prompt_chars", "max_reference_image_bytes", "outbound_queue_frames", "voice_jitter_budget_ms", "max_stored_npcs", "max_stored_npc_bytes", "max_parked_memory_bytes", "max_reference_image_pixels", "npc_snapshot_interval_s", "max_timed_events", "max_prompt_guidance")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_PACKET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFERENCE_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_QUEUE_FRAMES_FIELD_NUMBER: _ClassVar[int]
    VOICE_JITTER_BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_STORED_NPCS_FIELD_NUMBER: _ClassVar[int]
    MAX_STORED_NPC_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PARKED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REFERENCE_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    NPC_SNAPSHOT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_audio_packet_bytes: int
    max_sessions: int
    max_prompt_chars: int
    max_reference_image_bytes: int
    outbound_queue_frames: int
    voice_jitter_budget_ms: int
    max_stored_npcs: int
    max_stored_npc_bytes: int
    max_parked_memory_bytes: int
    max_reference_image_pixels: int
    npc_snapshot_interval_s: int
    max_timed_events: int
    max_prompt_guidance: float
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_audio_packet_bytes: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_reference_image_bytes: _Optional[int] = ..., outbound_queue_frames: _Optional[int] = ..., voice_jitter_budget_ms: _Optional[int] = ..., max_stored_npcs: _Optional[int] = ..., max_stored_npc_bytes: _Optional[int] = ..., max_parked_memory_bytes: _Optional[int] = ..., max_reference_image_pixels: _Optional[int] = ..., npc_snapshot_interval_s: _Optional[int] = ..., max_timed_events: _Optional[int] = ..., max_prompt_guidance: _Optional[float] = ...) -> None: ...
