"""Configuration objects for the LiveAct generator.

Every dimension of every module comes from these dataclasses; no module hard-codes a size. Field names
follow the published checkpoint's config.json where one exists (``dim``, ``ffn_dim``, ``num_heads`` ...),
so a diffusers ``config.json`` maps onto :class:`DiTConfig` key for key.

Named configurations live in :data:`CONFIGS`: ``tiny`` is the embedded CPU default, ``liveact-18b`` is the
published checkpoint (Wan2.1-I2V-14B backbone plus the audio adapter).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Latent normalisation of the Wan2.1 VAE (LIVEACT_SPEC.md §7.1).
WAN_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

MEMORY_GROUPINGS = ("single-device", "two-device", "sliding-window")  # the last: an ablation, see convkv.py
VAE_PARTS = ("wan", "light")
V_COMPRESSIONS = ("k_conv", "v_conv")
KV_CACHE_FORMATS = ("model", "fp8")


@dataclass(frozen=True)
class DiTConfig:
    """The LiveAct DiT (Wan2.1-I2V plus audio adapter). Defaults are the published 18B checkpoint."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    freq_dim: int = 256            # sinusoidal timestep embedding width
    text_len: int = 512            # text context is zero-padded to this many rows, all attended
    text_dim: int = 4096           # text encoder width (umT5-XXL)
    in_dim: int = 36               # 16 noisy latent + 4 mask + 16 reference VAE code
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    clip_dim: int = 1280           # image feature width (CLIP ViT-H/14)
    clip_tokens: int = 257         # image tokens; the text cross-attention splits its context here
    audio_window: int = 5          # audio feature frames per video frame (±2)
    audio_layers: int = 12         # audio feature layers per frame (wav2vec2-base)
    audio_channels: int = 768      # audio feature width (wav2vec2-base)
    vae_scale: int = 4             # video frames per latent frame
    intermediate_dim: int = 512    # AudioProjModel hidden width
    output_dim: int = 768          # audio token width
    context_tokens: int = 32       # audio tokens per latent frame
    norm_input_visual: bool = True
    norm_output_audio: bool = True
    memory_kernel: int = 5         # ConvKV: depthwise Conv1d kernel = stride
    rope_max_positions: int = 1024

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")


# The sampler settings that choose how weights are served rather than what they learned: weights trained under
# any values of these serve under any others.
SERVING_CHOICES = ("kv_cache", "prompt_guidance", "prompt_onset_latents")


def is_prompt_guidance(factor: float) -> bool:
    """Whether ``factor`` can be a prompt guidance factor: finite and at least 1 (1 turns it off)."""
    return 1.0 <= factor < math.inf  # NaN fails both


def is_prompt_onset(latents: int, most: float = math.inf) -> bool:
    """Whether ``latents`` can be a prompt onset: a whole number of latent frames, at most ``most`` (a block's)."""
    return isinstance(latents, int) and not isinstance(latents, bool) and 0 <= latents <= most


def flow_timesteps(shift: float, grid: tuple[float, ...] = (1.0, 0.75, 0.5)) -> tuple[float, ...]:
    """The sampler's timesteps (of 1000, then 0): the flow sigmas of ``grid`` shifted by ``shift``,
    shift * s / (1 + (shift - 1) * s). Shift 5 gives LiveAct's 1000, 937.5, 833.33 (LIVEACT_SPEC.md); a smaller
    shift ends the last step at less noise."""
    if not shift > 0.0:
        raise ValueError(f"a timestep shift must be positive, got {shift}")
    return (*(round(1000.0 * shift * s / (1.0 + (shift - 1.0) * s), 8) for s in grid), 0.0)


@dataclass(frozen=True)
class SamplerConfig:
    """The streaming loop: block sizes, the 3-step schedule and the memory layout options."""

    block_sizes: tuple[int, int] = (6, 8)        # latent frames in block 0, then in every later block
    timesteps: tuple[float, ...] = flow_timesteps(5.0)   # 1000, 937.5, 833.33333333, then 0
    memory_slots: int = 14                       # latent frames held per layer per step cache
    memory_grouping: str = "single-device"       # how ConvKV groups compressed frames (see convkv.py)
    v_compression: str = "k_conv"                # the reference compresses V with the K conv
    kv_cache: str = "model"                      # "model": the model's dtype; "fp8": e4m3 + a scale per token, head
    skip_audio_at_first_step: bool = True
    audio_cfg: float = 1.0                       # > 1 runs a second, audio-free pass at steps 1 and 2
    # > 1: streams under a prompt other than their character's base prompt run a second pass at the last step
    # with the base prompt, and their velocity moves away from it by this factor (see sampler.py). A serving
    # choice, like ``kv_cache``: any value works with any weights. The default of a stream whose session asks
    # for none (BlockInput.prompt_guidance).
    prompt_guidance: float = 1.0
    # > 0: a block whose prompt is not the last block's blends the two per latent frame, the new one's share
    # rising over its first this many latent frames (sampler.onset_weights), so that an emotion or action sets
    # in over them rather than jumping at the block's first frame. A serving choice as well.
    prompt_onset_latents: int = 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps) - 1

    def __post_init__(self) -> None:
        if self.memory_grouping not in MEMORY_GROUPINGS:
            raise ValueError(f"memory_grouping must be one of {MEMORY_GROUPINGS}, got {self.memory_grouping!r}")
        if self.v_compression not in V_COMPRESSIONS:
            raise ValueError(f"v_compression must be one of {V_COMPRESSIONS}, got {self.v_compression!r}")
        if self.kv_cache not in KV_CACHE_FORMATS:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_FORMATS}, got {self.kv_cache!r}")
        if not is_prompt_guidance(self.prompt_guidance):
            raise ValueError("prompt_guidance must be a finite factor >= 1 (1 turns it off), "
                             f"got {self.prompt_guidance}")
        if not is_prompt_onset(self.prompt_onset_latents, max(self.block_sizes)):
            raise ValueError(f"prompt_onset_latents must be 0-{max(self.block_sizes)} latent frames, "
                             f"got {self.prompt_onset_latents}")


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.1 causal 3D VAE. Defaults are the published Wan2.1_VAE.pth.

    ``encoder`` and ``decoder`` pick each half: ``wan`` (the published architecture) or ``light`` (small causal
    convnets for CPUs: per-frame 2D convs through ``light_dims`` channels at full to latent resolution, time
    handled by causal 3D convs at latent resolution; see vae.py). The latent layout is the same either way.
    """

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = WAN_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN_LATENT_STD
    encoder: str = "wan"
    decoder: str = "wan"
    light_dims: tuple[int, ...] = (64, 32, 16, 8)   # latent resolution first, full resolution last
    # The light decoder's widths where they differ from the encoder's mirror (empty: ``light_dims``): a narrower
    # decoder trained after the encoder, on its frozen latents (model/train's decoder_scratch and decoder stages).
    light_decoder_dims: tuple[int, ...] = ()
    path: str = ""                 # published layout: the .pth state dict, relative to the weights directory

    def __post_init__(self) -> None:
        for part in ("encoder", "decoder"):
            if getattr(self, part) not in VAE_PARTS:
                raise ValueError(f"{part} must be one of {VAE_PARTS}, got {getattr(self, part)!r}")
        if "light" in (self.encoder, self.decoder) and len(self.light_dims) != len(self.dim_mult):
            raise ValueError("light_dims needs one width per resolution level (len(dim_mult))")
        if self.light_decoder_dims and len(self.light_decoder_dims) != len(self.dim_mult):
            raise ValueError("light_decoder_dims needs one width per resolution level (len(dim_mult)), or none")

    @property
    def light_decoder_widths(self) -> tuple[int, ...]:
        """The light decoder's widths, latent resolution first: ``light_decoder_dims``, else the encoder's mirror."""
        return self.light_decoder_dims or self.light_dims

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)


@dataclass(frozen=True)
class AudioEncoderConfig:
    """Per-video-frame audio features [frames, layers, channels].

    ``learned``: a small convolutional front end trained with the tiny model.
    ``wav2vec2``: wav2vec2-base hidden states interpolated to the video rate (the published model).
    """

    kind: str = "wav2vec2"
    sample_rate: int = 16000
    layers: int = 12
    channels: int = 768
    hidden: int = 64               # learned front end only
    path: str = ""                 # wav2vec2 only: the HF model's directory, relative to the weights directory


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Reference-image features [tokens, dim] (``learned`` patch encoder, or CLIP ViT-H/14 penultimate block).

    ``layers``, ``heads`` and ``mlp_dim`` describe the CLIP vision tower as stored (32 blocks; its output is
    that of block 31); the learned encoder has a fixed architecture (image_encoder.py).
    """

    kind: str = "clip-vit-h-14"
    image_size: int = 224
    patch_size: int = 14
    tokens: int = 257
    dim: int = 1280
    layers: int = 32
    heads: int = 16
    mlp_dim: int = 5120
    path: str = ""                 # clip only: the Wan .pth file, relative to the weights directory

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        grid = self.image_size // self.patch_size
        if self.tokens != 1 + grid * grid:
            raise ValueError(f"tokens must be 1 + (image_size / patch_size)^2 = {1 + grid * grid}, got {self.tokens}")


@dataclass(frozen=True)
class TextEncoderConfig:
    """Prompt embeddings [tokens, dim] (``learned`` byte-level encoder, or the umT5-XXL encoder).

    ``heads`` .. ``relative_max_distance`` describe umT5 (gated-GELU FFN, a relative position bias per layer);
    the learned encoder reads only ``max_len``, ``dim`` and ``layers``.
    """

    kind: str = "umt5-xxl"
    max_len: int = 512
    dim: int = 4096
    layers: int = 24
    heads: int = 64
    head_dim: int = 64
    ffn_dim: int = 10240
    vocab_size: int = 256384
    relative_buckets: int = 32
    relative_max_distance: int = 128
    path: str = ""                 # umt5 only: the Wan .pth file, relative to the weights directory
    tokenizer: str = ""            # umt5 only: the tokenizer's directory, relative to the weights directory


ATTENTION_BACKENDS = ("sdpa", "flash", "sage", "math")
GEMM_FORMATS = ("model", "fp8")
DECODE_PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class ExecutionConfig:
    """How a loaded model is served: every choice here keeps the weights and the memory format.

    ``attention``: the backend behind the DiT's attention dispatch (attention.py). ``gemm``: ``model`` runs the
    DiT's linear layers in the model's dtype, ``fp8`` as FP8 GEMMs (fp8.py; the weights drop to e4m3).
    ``compile``: torch.compile each transformer block (one graph, reused by all layers), and on GPUs the VAE
    decoder (on CPUs the compiled decoder was slower than eager: ``pipeline.compiles_decoder``).
    ``text_encoder_device``: where umT5 runs (prompts are encoded once each and cached, so the CPU saves 11 GB of
    GPU memory).
    ``decode_precision``: what the VAE decoder computes in. Its weights and streaming state stay float32, so an
    NPC's memory is the same file either way; ``bfloat16`` runs it under autocast (frames within one level of
    255 of float32's on the tiny model, its decode 1.5x as fast on a CPU with bf16 matrix units, 1.3x on an
    H200); ``auto`` takes bfloat16 on GPUs and on CPUs with AMX or AVX512-BF16, float32 on other CPUs. ``prompt_guidance``: the sampler's
    (``SamplerConfig.prompt_guidance``; None keeps the model config's, 1 turns it off), the one choice here meant
    to change what is drawn: the frames of NPCs under a prompt other than their character's base prompt.
    ``prompt_onset_latents``: the sampler's as well (None keeps the model config's, 0 turns it off): over how
    many latent frames a new prompt sets in.
    """

    attention: str = "sdpa"
    gemm: str = "model"
    compile: bool = False
    text_encoder_device: str = "cpu"
    decode_precision: str = "auto"
    prompt_guidance: float | None = None
    prompt_onset_latents: int | None = None

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}")
        if self.gemm not in GEMM_FORMATS:
            raise ValueError(f"gemm must be one of {GEMM_FORMATS}, got {self.gemm!r}")
        if self.decode_precision not in DECODE_PRECISIONS:
            raise ValueError(f"decode_precision must be one of {DECODE_PRECISIONS}, got {self.decode_precision!r}")
        if self.prompt_guidance is not None and not is_prompt_guidance(self.prompt_guidance):
            raise ValueError("prompt_guidance must be a finite factor >= 1 (1 turns it off), "
                             f"got {self.prompt_guidance}")
        if self.prompt_onset_latents is not None and not is_prompt_onset(self.prompt_onset_latents):
            raise ValueError(f"prompt_onset_latents must be a whole number of latent frames >= 0 (0 turns it off), "
                             f"got {self.prompt_onset_latents}")

    def serving(self, config: "ModelConfig") -> "ModelConfig":
        """``config`` with the sampler choices made here (a ValueError names one the model cannot take)."""
        choices = {name: value for name, value in (("prompt_guidance", self.prompt_guidance),
                                                   ("prompt_onset_latents", self.prompt_onset_latents))
                   if value is not None}
        if not choices:
            return config
        return dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, **choices))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a generator: the DiT, the sampler, the VAE, the encoders and the video format."""

    name: str
    dit: DiTConfig = field(default_factory=DiTConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    width: int = 512
    height: int = 512
    fps: int = 20
    sizes: tuple[tuple[int, int], ...] = ((512, 512), (416, 720), (480, 832))  # (width, height) accepted
    dtype: str = "bfloat16"

    @property
    def runs_published_encoders(self) -> bool:
        """Whether it runs wav2vec2, CLIP or umT5 (not the tiny model's learned encoders): useful only with the
        published files."""
        kinds = (self.audio_encoder.kind, self.image_encoder.kind, self.text_encoder.kind)
        return any(kind != "learned" for kind in kinds)

    @property
    def pixel_stride(self) -> int:
        """Pixels per DiT token side: VAE spatial stride times the patch size."""
        return self.vae.spatial_stride * self.dit.patch_size[1]

    def supports_size(self, width: int, height: int) -> bool:
        """Whether ``width`` x ``height`` is one of the frame sizes this model generates."""
        return (width, height) in {tuple(size) for size in self.sizes}

    def sizes_text(self) -> str:
        """The accepted sizes for an error message: "128x128, 64x64, ..."."""
        return ", ".join(f"{w}x{h}" for w, h in self.sizes)

    def frame_tokens(self, width: int, height: int) -> int:
        """Tokens per latent frame (``frame_len`` in the reference)."""
        return (height // self.pixel_stride) * (width // self.pixel_stride)

    def frames_per_block(self, block_index: int) -> int:
        """Video frames a block yields: 21 for block 0 and 32 after (at the default block sizes)."""
        stride = self.vae.temporal_stride
        if block_index == 0:
            return 1 + (self.sampler.block_sizes[0] - 1) * stride
        return self.sampler.block_sizes[1] * stride

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        def build(kind, values):
            names = {f.name: f for f in dataclasses.fields(kind)}
            unknown = set(values) - set(names)
            if unknown:
                raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
            return kind(**{k: _tuplify(v) for k, v in values.items()})

        parts = {
            "dit": DiTConfig, "sampler": SamplerConfig, "vae": VAEConfig, "audio_encoder": AudioEncoderConfig,
            "image_encoder": ImageEncoderConfig, "text_encoder": TextEncoderConfig,
        }
        top = {k: v for k, v in data.items() if k not in parts}
        nested = {k: build(parts[k], v) for k, v in data.items() if k in parts}
        unknown = set(top) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**{k: _tuplify(v) for k, v in top.items()}, **nested)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))


def _tuplify(value: Any) -> Any:
    """JSON has no tuples; configs are frozen and hashable, so lists become tuples on the way in."""
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


# Latent statistics of the tiny model's trained VAE (``python -m model.train`` computes them; its manifest in
# model/weights records them too, and the shipped weights are refused under any other values).
TINY_LATENT_MEAN = (
    0.2003, -0.1365, -0.2621, 0.1624, -0.2779, 0.0978, 0.3787, -0.0701,
    0.0592, 0.0294, -0.3097, -0.4046, -0.3126, 0.102, 0.5247, -0.3121,
)
TINY_LATENT_STD = (
    0.4217, 0.526, 0.6993, 0.6003, 0.4863, 0.75, 0.8188, 1.0002,
    0.6362, 0.4335, 0.5018, 0.8054, 0.6472, 0.5381, 0.6787, 0.9017,
)

TINY = ModelConfig(
    name="tiny",
    dit=DiTConfig(
        dim=128, ffn_dim=256, num_heads=4, num_layers=4, freq_dim=64, text_len=16, text_dim=64,
        clip_dim=64, clip_tokens=17, audio_layers=3, audio_channels=32, intermediate_dim=64, output_dim=64,
        context_tokens=4,
    ),
    # The decoder that serves is narrower than the encoder's mirror, which decoded a block in 1.5-1.7x its time on
    # 2 AVX2 cores; trained, it keeps lip sync and seams and shows emotions a little less (docs/TINY_EXPERIMENTS.md,
    # "A narrower decoder").
    vae=VAEConfig(base_dim=8, encoder="light", decoder="light", light_dims=(64, 48, 24, 12),
                  light_decoder_dims=(64, 32, 16, 8), latent_mean=TINY_LATENT_MEAN, latent_std=TINY_LATENT_STD),
    audio_encoder=AudioEncoderConfig(kind="learned", layers=3, channels=32, hidden=64),
    image_encoder=ImageEncoderConfig(kind="learned", image_size=64, patch_size=16, tokens=17, dim=64),
    text_encoder=TextEncoderConfig(kind="learned", max_len=16, dim=64, layers=1),
    # The tiny model shows emotions and actions faintly unguided; guided away from the base prompt at factor 3 the
    # weights this was chosen on showed 15 of 36 events within a block (18 at factor 4, which drew more wrong
    # actions and cost lip sync), and setting each new prompt in over 3 latent frames keeps the seams within target
    # (docs/TINY_EXPERIMENTS.md, "A decoder that does not step between latents", "Prompt onset side by side").
    sampler=SamplerConfig(prompt_guidance=3.0, prompt_onset_latents=3),
    width=128,
    height=128,
    sizes=((128, 128), (64, 64), (192, 192), (256, 256)),
    dtype="float32",
)

# The published files (LIVEACT_SPEC.md section 1.1), by their names in the checkpoint directory; the DiT's
# config.json and shards lie at its top level.
LIVEACT_18B = ModelConfig(
    name="liveact-18b",
    vae=VAEConfig(path="Wan2.1_VAE.pth"),
    audio_encoder=AudioEncoderConfig(path="chinese-wav2vec2-base"),
    image_encoder=ImageEncoderConfig(path="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"),
    text_encoder=TextEncoderConfig(path="models_t5_umt5-xxl-enc-bf16.pth", tokenizer="google/umt5-xxl"),
)

CONFIGS: dict[str, ModelConfig] = {c.name: c for c in (TINY, LIVEACT_18B)}


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A named config (``tiny``, ``liveact-18b``) or a JSON file holding a ModelConfig."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return ModelConfig.from_json(path.read_text())
    return get_config(str(name_or_path))


def weights_config(path: str | Path) -> ModelConfig | None:
    """The config a weights file was trained with (recorded in its metadata), or None when it does not say;
    ValueError when the file is not safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # the header alone: no torch
            text = (f.metadata() or {}).get("config")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors weights file ({error})") from None
    return ModelConfig.from_json(text) if text else None


def config_for_weights(config: ModelConfig, path: Path) -> ModelConfig:
    """The config that serves the weights file ``path`` under ``config``: what the file records of its training
    (the DiT's shape, the VAE's latent statistics, the timesteps), which a retrained model changes, with
    ``config``'s serving choices (its frame size, dtype, cache format, prompt guidance and onset); ``config``
    itself when the file records none. ValueError when the file was trained for another model or does not take
    ``config``'s frame size."""
    trained = weights_config(path)
    if trained is None:
        return config
    if trained.name != config.name:
        raise ValueError(f"{path} was trained for config {trained.name!r}, not {config.name!r}; serve it with "
                         f"--config {trained.name}")
    if not trained.supports_size(config.width, config.height):
        raise ValueError(f"{path} was trained for config {trained.name!r} at {trained.sizes_text()}, not "
                         f"{config.width}x{config.height}")
    sampler = dataclasses.replace(trained.sampler, **{name: getattr(config.sampler, name) for name in SERVING_CHOICES})
    return dataclasses.replace(trained, width=config.width, height=config.height, dtype=config.dtype, sampler=sampler)


def get_config(name: str) -> ModelConfig:
    """A named configuration, or a clear error listing the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}") from None
