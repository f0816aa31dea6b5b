from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToWorker(_message.Message):
    __slots__ = ("request_id", "open_npc", "push_audio", "control", "close_npc", "npc_query", "reset_npc", "delete_npc", "worker_info_query", "drop_character", "shutdown", "ping")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OPEN_NPC_FIELD_NUMBER: _ClassVar[int]
    PUSH_AUDIO_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    CLOSE_NPC_FIELD_NUMBER: _ClassVar[int]
    NPC_QUERY_FIELD_NUMBER: _ClassVar[int]
    RESET_NPC_FIELD_NUMBER: _ClassVar[int]
    DELETE_NPC_FIELD_NUMBER: _ClassVar[int]
    WORKER_INFO_QUERY_FIELD_NUMBER: _ClassVar[int]
    DROP_CHARACTER_FIELD_NUMBER: _ClassVar[int]
    SHUTDOWN_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    open_npc: OpenNpc
    push_audio: PushAudio
    control: Control
    close_npc: CloseNpc
    npc_query: NpcQuery
    reset_npc: ResetNpc
    delete_npc: DeleteNpc
    worker_info_query: WorkerInfoQuery
    drop_character: DropCharacter
    shutdown: Shutdown
    ping: Ping
    def __init__(self, request_id: _Optional[int] = ..., open_npc: _Optional[_Union[OpenNpc, _Mapping]] = ..., push_audio: _Optional[_Union[PushAudio, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ..., close_npc: _Optional[_Union[CloseNpc, _Mapping]] = ..., npc_query: _Optional[_Union[NpcQuery, _Mapping]] = ..., reset_npc: _Optional[_Union[ResetNpc, _Mapping]] = ..., delete_npc: _Optional[_Union[DeleteNpc, _Mapping]] = ..., worker_info_query: _Optional[_Union[WorkerInfoQuery, _Mapping]] = ..., drop_character: _Optional[_Union[DropCharacter, _Mapping]] = ..., shutdown: _Optional[_Union[Shutdown, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ...) -> None: ...

class FromWorker(_message.Message):
    __slots__ = ("request_id", "npc_opened", "frame_block", "interrupt_done", "npc_closed", "npc_list", "worker_info", "error", "ack", "utterance_done", "pong")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_OPENED_FIELD_NUMBER: _ClassVar[int]
    FRAME_BLOCK_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_DONE_FIELD_NUMBER: _ClassVar[int]
    NPC_CLOSED_FIELD_NUMBER: _ClassVar[int]
    NPC_LIST_FIELD_NUMBER: _ClassVar[int]
    WORKER_INFO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    UTTERANCE_DONE_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    npc_opened: NpcOpened
    frame_block: FrameBlock
    interrupt_done: InterruptDone
    npc_closed: NpcClosed
    npc_list: NpcList
    worker_info: WorkerInfo
    error: WorkerError
    ack: Ack
    utterance_done: UtteranceDone
    pong: Pong
    def __init__(self, request_id: _Optional[int] = ..., npc_opened: _Optional[_Union[NpcOpened, _Mapping]] = ..., frame_block: _Optional[_Union[FrameBlock, _Mapping]] = ..., interrupt_done: _Optional[_Union[InterruptDone, _Mapping]] = ..., npc_closed: _Optional[_Union[NpcClosed, _Mapping]] = ..., npc_list: _Optional[_Union[NpcList, _Mapping]] = ..., worker_info: _Optional[_Union[WorkerInfo, _Mapping]] = ..., error: _Optional[_Union[WorkerError, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., utterance_done: _Optional[_Union[UtteranceDone, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ...) -> None: ...

class OpenNpc(_message.Message):
    __slots__ = ("session_id", "npc_id", "character_id", "width", "height", "fps", "seed", "reset_memory", "resume_token", "character", "prompt_guidance")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESET_MEMORY_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npc_id: str
    character_id: str
    width: int
    height: int
    fps: int
    seed: int
    reset_memory: bool
    resume_token: str
    character: CharacterSpec
    prompt_guidance: float
    def __init__(self, session_id: _Optional[str] = ..., npc_id: _Optional[str] = ..., character_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[int] = ..., seed: _Optional[int] = ..., reset_memory: _Optional[bool] = ..., resume_token: _Optional[str] = ..., character: _Optional[_Union[CharacterSpec, _Mapping]] = ..., prompt_guidance: _Optional[float] = ...) -> None: ...

class CharacterSpec(_message.Message):
    __slots__ = ("character_id", "revision", "base_prompt", "emotion_prompts", "action_prompts")
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
    REVISION_FIELD_NUMBER: _ClassVar[int]
    BASE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EMOTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    ACTION_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    revision: int
    base_prompt: str
    emotion_prompts: _containers.ScalarMap[str, str]
    action_prompts: _containers.ScalarMap[str, str]
    def __init__(self, character_id: _Optional[str] = ..., revision: _Optional[int] = ..., base_prompt: _Optional[str] = ..., emotion_prompts: _Optional[_Mapping[str, str]] = ..., action_prompts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NpcOpened(_message.Message):
    __slots__ = ("session_id", "npc", "resumed", "first_block_frames", "block_frames", "start_frame_index", "prompt_guidance")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npc: NpcState
    resumed: bool
    first_block_frames: int
    block_frames: int
    start_frame_index: int
    prompt_guidance: float
    def __init__(self, session_id: _Optional[str] = ..., npc: _Optional[_Union[NpcState, _Mapping]] = ..., resumed: _Optional[bool] = ..., first_block_frames: _Optional[int] = ..., block_frames: _Optional[int] = ..., start_frame_index: _Optional[int] = ..., prompt_guidance: _Optional[float] = ...) -> None: ...

class PushAudio(_message.Message):
    __slots__ = ("session_id", "num_samples")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    num_samples: int
    def __init__(self, session_id: _Optional[str] = ..., num_samples: _Optional[int] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("session_id", "emotion_prompt", "action_prompt", "listening", "end_of_utterance", "interrupt", "reset_prompt", "intensity", "played_until", "at_voice_sample")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EMOTION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ACTION_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LISTENING_FIELD_NUMBER: _ClassVar[int]
    END_OF_UTTERANCE_FIELD_NUMBER: _ClassVar[int]
    INTERRUPT_FIELD_NUMBER: _ClassVar[int]
    RESET_PROMPT_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    PLAYED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    AT_VOICE_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    emotion_prompt: str
    action_prompt: str
    listening: bool
    end_of_utterance: bool
    interrupt: bool
    reset_prompt: bool
    intensity: float
    played_until: int
    at_voice_sample: int
    def __init__(self, session_id: _Optional[str] = ..., emotion_prompt: _Optional[str] = ..., action_prompt: _Optional[str] = ..., listening: _Optional[bool] = ..., end_of_utterance: _Optional[bool] = ..., interrupt: _Optional[bool] = ..., reset_prompt: _Optional[bool] = ..., intensity: _Optional[float] = ..., played_until: _Optional[int] = ..., at_voice_sample: _Optional[int] = ...) -> None: ...

class CloseNpc(_message.Message):
    __slots__ = ("session_id", "finish_voice")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_VOICE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    finish_voice: bool
    def __init__(self, session_id: _Optional[str] = ..., finish_voice: _Optional[bool] = ...) -> None: ...

class NpcClosed(_message.Message):
    __slots__ = ("session_id", "npc")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NPC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    npc: NpcState
    def __init__(self, session_id: _Optional[str] = ..., npc: _Optional[_Union[NpcState, _Mapping]] = ...) -> None: ...

class FrameBlock(_message.Message):
    __slots__ = ("session_id", "block_index", "first_frame_index", "num_frames", "width", "height", "audio_start", "audio_end", "speaking", "voice_samples", "compute_ms", "audio_queued_samples", "devices", "gap_samples", "batch_size", "pauses")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDEX_FIELD_NUMBER: _ClassVar[int]
    FIRST_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_END_FIELD_NUMBER: _ClassVar[int]
    SPEAKING_FIELD_NUMBER: _ClassVar[int]
    VOICE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_QUEUED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    GAP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAUSES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    block_index: int
    first_frame_index: int
    num_frames: int
    width: int
    height: int
    audio_start: int
    audio_end: int
    speaking: bool
    voice_samples: int
    compute_ms: float
    audio_queued_samples: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceTelemetry]
    gap_samples: int
    batch_size: int
    pauses: _containers.RepeatedCompositeFieldContainer[SampleRange]
    def __init__(self, session_id: _Optional[str] = ..., block_index: _Optional[int] = ..., first_frame_index: _Optional[int] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., audio_start: _Optional[int] = ..., audio_end: _Optional[int] = ..., speaking: _Optional[bool] = ..., voice_samples: _Optional[int] = ..., compute_ms: _Optional[float] = ..., audio_queued_samples: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceTelemetry, _Mapping]]] = ..., gap_samples: _Optional[int] = ..., batch_size: _Optional[int] = ..., pauses: _Optional[_Iterable[_Union[SampleRange, _Mapping]]] = ...) -> None: ...

class SampleRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class InterruptDone(_message.Message):
    __slots__ = ("session_id", "generated_until", "dropped_samples", "next_frame_index", "replace_from", "played_until")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FROM_FIELD_NUMBER: _ClassVar[int]
    PLAYED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    generated_until: int
    dropped_samples: int
    next_frame_index: int
    replace_from: int
    played_until: int
    def __init__(self, session_id: _Optional[str] = ..., generated_until: _Optional[int] = ..., dropped_samples: _Optional[int] = ..., next_frame_index: _Optional[int] = ..., replace_from: _Optional[int] = ..., played_until: _Optional[int] = ...) -> None: ...

class UtteranceDone(_message.Message):
    __slots__ = ("session_id", "timeline_end")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_END_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    timeline_end: int
    def __init__(self, session_id: _Optional[str] = ..., timeline_end: _Optional[int] = ...) -> None: ...

class NpcQuery(_message.Message):
    __slots__ = ("npc_id", "character_id")
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    character_id: str
    def __init__(self, npc_id: _Optional[str] = ..., character_id: _Optional[str] = ...) -> None: ...

class NpcList(_message.Message):
    __slots__ = ("npcs",)
    NPCS_FIELD_NUMBER: _ClassVar[int]
    npcs: _containers.RepeatedCompositeFieldContainer[NpcState]
    def __init__(self, npcs: _Optional[_Iterable[_Union[NpcState, _Mapping]]] = ...) -> None: ...

class ResetNpc(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class DeleteNpc(_message.Message):
    __slots__ = ("npc_id",)
    NPC_ID_FIELD_NUMBER: _ClassVar[int]
    npc_id: str
    def __init__(self, npc_id: _Optional[str] = ...) -> None: ...

class DropCharacter(_message.Message):
    __slots__ = ("character_id",)
    CHARACTER_ID_FIELD_NUMBER: _ClassVar[int]
    character_id: str
    def __init__(self, character_id: _Optional[str] = ...) -> None: ...

class NpcState(_message.Message):
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

class WorkerInfoQuery(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("model_name", "config_json", "random_weights", "weights_sha256", "parameters", "device", "devices", "sizes", "pid", "fps", "default_width", "default_height", "default_fps", "first_block_frames", "block_frames", "denoising_steps", "prompt_guidance", "prompt_onset_latents")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    RANDOM_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    DENOISING_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ONSET_LATENTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    config_json: str
    random_weights: bool
    weights_sha256: str
    parameters: int
    device: str
    devices: _containers.RepeatedCompositeFieldContainer[DeviceTelemetry]
    sizes: _containers.RepeatedCompositeFieldContainer[SizeMemory]
    pid: int
    fps: _containers.RepeatedScalarFieldContainer[int]
    default_width: int
    default_height: int
    default_fps: int
    first_block_frames: int
    block_frames: int
    denoising_steps: int
    prompt_guidance: float
    prompt_onset_latents: int
    def __init__(self, model_name: _Optional[str] = ..., config_json: _Optional[str] = ..., random_weights: _Optional[bool] = ..., weights_sha256: _Optional[str] = ..., parameters: _Optional[int] = ..., device: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DeviceTelemetry, _Mapping]]] = ..., sizes: _Optional[_Iterable[_Union[SizeMemory, _Mapping]]] = ..., pid: _Optional[int] = ..., fps: _Optional[_Iterable[int]] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., default_fps: _Optional[int] = ..., first_block_frames: _Optional[int] = ..., block_frames: _Optional[int] = ..., denoising_steps: _Optional[int] = ..., prompt_guidance: _Optional[float] = ..., prompt_onset_latents: _Optional[int] = ...) -> None: ...

class SizeMemory(_message.Message):
    __slots__ = ("width", "height", "npc_memory_bytes")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NPC_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    npc_memory_bytes: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., npc_memory_bytes: _Optional[int] = ...) -> None: ...

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

class Shutdown(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Ping(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Pong(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerError(_message.Message):
    __slots__ = ("session_id", "code", "message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    code: str
    message: str
    def __init__(self, session_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
