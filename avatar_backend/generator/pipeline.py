"""The LiveAct generator as the worker uses it: characters in, NPC memories kept, one block of frames per NPC
per call, for one NPC or a batch of them.

Per block: audio features from the NPC's rolling PCM (its memory keeps the tail the audio window reaches back
into) -> the DiT's 3 denoising steps against the NPC's ConvKV memory -> the streaming VAE decoder, which keeps
its causal cache in the memory too -> uint8 RGB frames. Everything per character (image features, the VAE code
of the reference image, text contexts and their cross-attention keys/values) is computed once and cached.

Batches: NPCs whose next blocks have the same size and kind (first, second, or a later, compressing block) run
through the DiT and the decoder together, each with its own caches, conditioning and noise; each NPC gets the
frames it would get alone (to float rounding: batched matrix products sum in another order).

Weights: one safetensors file whose keys are prefixed by module (``dit.``, ``vae.``, ``audio_encoder.``,
``image_encoder.``, ``text_encoder.``), what the tiny model ships; or a directory of the published files
(published.py). Without either, every module is initialised from a fixed seed and the pipeline reports
``random_weights`` (refused for configs that run the published encoders: those are only useful trained).

How the model runs (attention backend, FP8 GEMM, torch.compile) is an :class:`ExecutionConfig`, applied once
the weights are in place.

Sequence parallelism: every rank runs the DiT; only rank 0 holds the encoders and the VAE. It computes each
block's conditioning (:class:`BlockConditioning`: the audio window and the prompt's text embedding) and each
character's (image features, reference code, base text), which the follower ranks are sent; a follower's
pipeline is built ``dit_only`` and runs :meth:`LiveActPipeline.follow_blocks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from avatar_backend.store import CharacterRecord, now_ms

from .attention import set_attention_backend
from .audio_encoder import build_audio_encoder
from .conditioning import (audio_tail_frames, block_audio_rows, blended_text, is_base_prompt, padded_text,
                           prompt_key, reference_pixels)
from .config import ExecutionConfig, ModelConfig, config_for_weights, is_prompt_guidance, load_model_config
from .convkv import ConvKVMemory, SlotLayout, cache_bytes
from .dit import CrossAttentionContext, PromptOnset, WanModel
from .fp8 import fp8_gemm_supported, quantize_linears
from .image_encoder import build_image_encoder
from .memory import NpcMemory, memory_layout_name
from .parallel import SequenceParallel
from .published import load_published
from .runner import BlockInput
from .sampler import BatchNoise, GeneratorNoise, PromptGuidance, denoise_block, onset_weights
from .schedule import BlockLayout, StreamSchedule, audio_window
from .text_encoder import build_text_encoder
from .vae import CausalCache, WanVAE, decoder_state_bytes, frames_to_uint8

__all__ = ["BlockConditioning", "BlockInput", "CharacterConditioning", "GeneratorError", "LiveActPipeline",
           "PromptContext", "shipped_weights"]

# Weights trained in this repository (model/train), by config name: ``<name>.safetensors`` beside its manifest.
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "model" / "weights"
MODULE_PREFIXES = ("dit", "vae", "audio_encoder", "image_encoder", "text_encoder")
RANDOM_WEIGHTS_SEED = 0
# The compiled graphs of the DiT's block a process keeps (``--compile``): six per batch size and frame size.
COMPILED_GRAPHS_LIMIT = 64
# Cross-attention contexts kept per character. Each holds every layer's text/image K/V: small for tiny,
# about 0.6 GB for liveact-18b, so keep few.
PROMPT_CACHE_SIZE = 8



class GeneratorError(ValueError):
    """A request the generator cannot serve (unsupported size or fps, bad reference image)."""


@dataclass
class PromptContext:
    """A prompt's padded text embedding (what a follower rank is sent) and the DiT's cross-attention context of
    it with the character's image features."""

    text: torch.Tensor                      # [text_len, text_dim]
    context: CrossAttentionContext


@dataclass
class BlockConditioning:
    """What the encoders give one NPC's next block: everything the DiT reads besides the character and the
    memory. Rank 0 computes it; a follower rank is sent the audio rows and, unless it is the base prompt's, which a
    follower holds already, the text."""

    audio_rows: torch.Tensor                # [rows, layers, channels], the DiT's dtype: the features the
    audio_start: int                        # block's audio window reads, and the row of its first frame
    text: torch.Tensor | None               # [text_len, text_dim]: the block's prompt, blended by intensity
    # [text_len, text_dim]: the last block's prompt, when this block's prompt onset sets in from it (else None)
    previous_text: torch.Tensor | None = None
    pcm: torch.Tensor | None = None         # rank 0: [tail | block | look-ahead], the next tail is cut from it

    def audio_window(self, plan: BlockLayout, radius: int, device: str) -> torch.Tensor:
        """[1, audio frames, 2 * radius + 1, layers, channels] on ``device``."""
        return audio_window(self.audio_rows.to(device), self.audio_start, plan.audio_frames, radius)


@dataclass
class CharacterConditioning:
    """Everything about one character at one frame size that is computed once and reused for every block."""

    character_id: str
    revision: int
    width: int
    height: int
    base_prompt: str
    clip_fea: torch.Tensor                  # [1, tokens, clip_dim]
    y: torch.Tensor                         # [1, 4 + z, 14, h, w]: frame mask + VAE code of the reference image
    base_text: torch.Tensor                 # [text_len, text_dim]: the base prompt's padded text embedding
    # (prompt or None for the base prompt, intensity) -> its text and context
    contexts: OrderedDict[tuple[str | None, float], PromptContext] = field(default_factory=OrderedDict)


# Latents per decoder pass when a block is decoded. With the light decoder at 128x128 on 2 CPU cores two per pass
# decode a block 1.1-1.2x faster than one, for one NPC or four at once; four or eight per pass are slower for four.
DECODE_LATENTS_PER_PASS = 2
# On a GPU, a whole block per pass: the Wan VAE at 512x512 on an H200 decodes 5-7% faster with eight per pass than
# with two (docs/PERFORMANCE.md, 2026-12-04).
GPU_DECODE_LATENTS_PER_PASS = 8


class LiveActPipeline:
    def __init__(self, config: ModelConfig, modules: dict[str, torch.nn.Module], *, device: str,
                 random_weights: bool, weights_sha256: str = "", parallel: SequenceParallel | None = None,
                 decode_precision: str = ExecutionConfig.decode_precision):
        self.config = config
        self.device = device
        # The VAE decoder's compute dtype under autocast (its weights and states stay float32); None: float32.
        self.decode_autocast = decode_autocast_dtype(decode_precision, device)
        self.decode_latents_per_pass = decode_latents_per_pass(device)
        # Sequence parallelism: this rank's place among the ranks that run each DiT call together. Every rank
        # holds its heads' shard of each NPC's ConvKV caches and draws the same noise; rank 0 decodes.
        self.parallel = parallel
        if parallel is not None:
            parallel.check(config.dit.num_heads, config.sampler.block_sizes)
        self.random_weights = random_weights
        self.weights_sha256 = weights_sha256
        self.dit: WanModel = modules["dit"]
        # None on a follower rank (``dit_only``): rank 0 encodes for every rank.
        self.vae: WanVAE | None = modules.get("vae")
        self.audio_encoder = modules.get("audio_encoder")
        self.image_encoder = modules.get("image_encoder")
        self.text_encoder = modules.get("text_encoder")
        self.parameters = sum(p.numel() for m in modules.values() for p in m.parameters())
        self.sample_rate = config.audio_encoder.sample_rate
        self.layout = SlotLayout.from_config(config.sampler, config.dit)
        # Recorded in every NPC memory: caches made under another grouping must not be continued under this one.
        self.memory_layout = memory_layout_name(self.layout)
        self._schedules: dict[tuple[int, int], StreamSchedule] = {}
        # Seconds of the last generate_blocks call by stage (audio features, DiT steps, decode), for benchmarks.
        self.last_timings: dict[str, float] = {}

    @property
    def decode_dtype_name(self) -> str:
        """What the VAE decoder computes in: "float32" or "bfloat16"."""
        return str(self.decode_autocast or torch.float32).removeprefix("torch.")

    def decode_stream(self, latents: torch.Tensor, state: CausalCache) -> torch.Tensor:
        """The VAE's streaming decode of a block's latents in the decode precision this pipeline runs."""
        return decode_block(self.vae, latents, state, self.decode_autocast, self.decode_latents_per_pass)

    # -- construction ---------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ModelConfig | str | Path, weights: str | Path | None = None,
                    device: str = "cpu", parallel: SequenceParallel | None = None,
                    execution: ExecutionConfig | None = None, dit_only: bool = False) -> "LiveActPipeline":
        """The pipeline of ``config`` on ``device``: ``weights`` is a prefixed safetensors file, a directory of
        the published files, or None (random weights from a fixed seed); a file that records the config it was
        trained with is served with it (:func:`config_for_weights`). ``dit_only``: a follower rank's pipeline, the
        DiT alone (no encoders, no VAE; see :meth:`follow_blocks`)."""
        if not isinstance(config, ModelConfig):
            config = load_model_config(config)
        if weights is not None and Path(weights).is_file():
            config = config_for_weights(config, Path(weights))
        execution = execution or ExecutionConfig()
        config = execution.serving(config)
        dtype = getattr(torch, config.dtype)
        if weights is not None and Path(weights).is_dir():
            published = load_published(config, weights, device=device,
                                       text_encoder_device=execution.text_encoder_device, dit_only=dit_only)
            modules, sha = published.modules, published.fingerprint
        else:
            if weights is None and config.runs_published_encoders:
                raise GeneratorError(f"model {config.name!r} runs the published encoders and needs its weights: "
                                     "pass the directory of the published files (README: 'The published model')")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                modules = {
                    "audio_encoder": build_audio_encoder(config.audio_encoder),
                    "image_encoder": build_image_encoder(config.image_encoder),
                    "text_encoder": build_text_encoder(config.text_encoder),
                    "vae": WanVAE(config.vae),
                    "dit": WanModel(config.dit),
                }
                if weights is None:
                    modules["dit"].init_weights(zero_head=False)
            if dit_only:  # built with the rest all the same, so random weights are those of rank 0
                modules = {"dit": modules["dit"]}
            sha = ""
            if weights is not None:
                sha = _load_weights(modules, Path(weights))
            for name, module in modules.items():
                module.to(device=device, dtype=dtype if name == "dit" else torch.float32).eval().requires_grad_(False)
        apply_execution(modules["dit"], execution, device)
        pipeline = cls(config, modules, device=device, random_weights=weights is None, weights_sha256=sha,
                       parallel=parallel, decode_precision=execution.decode_precision)
        if pipeline.vae is not None:
            # One-time costs (decoder cache shapes, lazy torch imports) here rather than in the first session.
            pipeline.vae.init_decoder_state(config.width, config.height, device="meta")
            if execution.compile and compiles_decoder(device):
                pipeline.vae.compile_decoder()
        return pipeline

    # -- sizes ----------------------------------------------------------------------------------------------

    def check_format(self, width: int, height: int, fps: int) -> None:
        if not self.config.supports_size(width, height):
            raise GeneratorError(f"size {width}x{height} is not supported by model {self.config.name}; "
                                 f"supported: {self.config.sizes_text()}")
        if fps <= 0 or self.sample_rate % fps:
            raise GeneratorError(f"fps {fps} does not divide the {self.sample_rate} Hz audio clock")

    @property
    def follower(self) -> bool:
        """A rank other than 0 of a sequence-parallel group: it runs its share of the DiT and nothing else."""
        return self.parallel is not None and self.parallel.rank != 0

    def samples_per_frame(self, fps: int) -> int:
        return self.sample_rate // fps

    def schedule(self, width: int, height: int) -> StreamSchedule:
        key = (width, height)
        if key not in self._schedules:
            self._schedules[key] = StreamSchedule.from_model_config(self.config, width, height)
        return self._schedules[key]

    def audio_tail_frames(self, fps: int) -> int:
        """Video frames of past audio kept per NPC (see :func:`conditioning.audio_tail_frames`)."""
        schedule = self.schedule(self.config.width, self.config.height)
        return audio_tail_frames(schedule, self.audio_encoder.context_frames(fps))

    def memory_bytes(self, width: int, height: int, fps: int | None = None) -> int:
        """One NPC's memory, from the config alone (nothing is allocated)."""
        fps = fps or self.config.fps
        tail = self.audio_tail_frames(fps) * self.samples_per_frame(fps) * 4
        noise_state = GeneratorNoise(0).get_state().numel()
        return (cache_bytes(self.config, width, height) + decoder_state_bytes(self.config.vae, width, height)
                + tail + noise_state)

    # -- characters -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare_character(self, record: CharacterRecord, reference_png: bytes, width: int,
                          height: int) -> CharacterConditioning:
        self._check_encoders("prepare_character")
        try:
            image = Image.open(io.BytesIO(reference_png)).convert("RGB")
        except Exception as err:  # Pillow raises many types for bad files
            raise GeneratorError(f"character {record.character_id!r}: reference image cannot be decoded: {err}") from None
        pixels = reference_pixels(image, width, height).to(self.device)
        latent_frames = sum(self.config.sampler.block_sizes)
        conditioning = CharacterConditioning(
            character_id=record.character_id, revision=record.revision, width=width, height=height,
            base_prompt=record.base_prompt,
            clip_fea=self.image_encoder(pixels),
            y=self.vae.encode_reference_image(pixels, latent_frames).to(self.dit.dtype),
            base_text=self._text_embedding(record.base_prompt),
        )
        self.context_for(conditioning, None)
        return conditioning

    def character_from(self, record: CharacterRecord, width: int, height: int, clip_fea: torch.Tensor,
                       y: torch.Tensor, base_text: torch.Tensor) -> CharacterConditioning:
        """A character conditioning from the tensors rank 0's :meth:`prepare_character` computed (a follower
        rank has no encoders to compute them)."""
        conditioning = CharacterConditioning(
            character_id=record.character_id, revision=record.revision, width=width, height=height,
            base_prompt=record.base_prompt, clip_fea=clip_fea.to(self.device), y=y.to(self.device, self.dit.dtype),
            base_text=base_text.to(self.device, self.dit.dtype))
        self.context_for(conditioning, None)   # as rank 0 does, outside any block's collectives
        return conditioning

    def _check_encoders(self, what: str) -> None:
        if self.vae is None:
            raise GeneratorError(f"{what} needs the encoders, which only rank 0 of a sequence-parallel group holds")

    @torch.inference_mode()
    def context_for(self, conditioning: CharacterConditioning, prompt: str | None, intensity: float = 1.0,
                    text: torch.Tensor | None = None) -> PromptContext:
        """The text and cross-attention context of a prompt (None: the base prompt), cached per character.

        ``intensity`` < 1 blends the prompt's text embedding with the base prompt's (both zero-padded to the
        model's text length, as the model pads them anyway), in steps of 0.05 so the cache stays small.
        ``text``: that embedding as rank 0 computed it (a follower rank has no text encoder).
        """
        key = prompt, intensity = prompt_key(conditioning.base_prompt, prompt, intensity)
        cached = conditioning.contexts.get(key)
        if cached is not None:
            conditioning.contexts.move_to_end(key)
            return cached
        if text is not None:
            embedding = text.to(self.device, self.dit.dtype)
        elif prompt is None:
            embedding = conditioning.base_text
        else:
            embedding = blended_text(conditioning.base_text, self._text_embedding(prompt), intensity)
        context = PromptContext(embedding, self.dit.encode_context(embedding, conditioning.clip_fea.to(self.dit.dtype)))
        conditioning.contexts[key] = context
        while len(conditioning.contexts) > PROMPT_CACHE_SIZE:
            conditioning.contexts.popitem(last=False)
        return context

    def _text_embedding(self, text: str) -> torch.Tensor:
        """[text_len, text_dim]: the encoder's output zero-padded to the model's text length."""
        return padded_text(self.text_encoder.encode(text).to(self.device, self.dit.dtype), self.config.dit.text_len)

    # -- NPC memories ---------------------------------------------------------------------------------------

    def allocate_convkv(self, width: int, height: int, *, whole_on_host: bool = False) -> ConvKVMemory:
        """Zeroed ConvKV caches of one NPC: this rank's head shard on its device, or all heads on the host."""
        shards = 1 if whole_on_host or self.parallel is None else self.parallel.world_size
        return ConvKVMemory.allocate(self.config, width, height, device="cpu" if whole_on_host else self.device,
                                     dtype=getattr(torch, self.config.dtype), head_shards=shards)

    def new_memory(self, npc_id: str, character_id: str, width: int, height: int, fps: int,
                   seed: int, *, whole_on_host: bool = False) -> NpcMemory:
        """A fresh NPC memory, live on this rank (its shard of the caches), or whole on the host (parked)."""
        self.check_format(width, height, fps)
        device = "cpu" if whole_on_host else self.device
        if self.vae is None:  # a follower rank keeps only its cache shard and the stream's counters
            decoder, tail = CausalCache(), torch.zeros(0, device=device)
        else:
            decoder = self.vae.init_decoder_state(width, height, device=device)
            tail = torch.zeros(self.audio_tail_frames(fps) * self.samples_per_frame(fps), device=device)
        return NpcMemory(
            npc_id=npc_id, character_id=character_id, model_name=self.config.name, width=width, height=height,
            fps=fps, seed=seed, memory_layout=self.memory_layout,
            convkv=self.allocate_convkv(width, height, whole_on_host=whole_on_host), decoder=decoder,
            audio_tail=tail, noise_state=GeneratorNoise(seed).get_state())

    # One rank: a live memory is the whole memory on this device; parking moves it to the host.
    def activate(self, memory: NpcMemory) -> NpcMemory:
        return memory.to(self.device)

    def park(self, memory: NpcMemory) -> NpcMemory:
        return memory.to("cpu")

    def host_copy(self, memory: NpcMemory) -> NpcMemory:
        return memory.host_copy()

    def discard(self, memory: NpcMemory) -> None:
        pass

    def block_audio_samples(self, memory: NpcMemory) -> tuple[int, int]:
        """(16 kHz samples the next block covers, samples of look-ahead after them it reads)."""
        schedule = self.schedule(memory.width, memory.height)
        plan = schedule.block(memory.blocks_generated)
        spf = self.samples_per_frame(memory.fps)
        return plan.video_frames * spf, (plan.audio_required - plan.video_end) * spf

    def batch_key(self, memory: NpcMemory) -> tuple:
        """NPCs whose next blocks have equal keys can run in one :meth:`generate_blocks` call."""
        plan = self.schedule(memory.width, memory.height).block(memory.blocks_generated)
        return (memory.width, memory.height, memory.fps, plan.window_start, plan.latent_frames, plan.update_cache,
                memory.decoder.first_chunk)

    def generate_block(self, memory: NpcMemory, conditioning: CharacterConditioning, audio: np.ndarray,
                       prompt: str | None = None, intensity: float = 1.0) -> np.ndarray:
        """One NPC's next block: uint8 RGB frames [T, H, W, 3]; advances the memory (see :meth:`generate_blocks`)."""
        return self.generate_blocks([BlockInput(memory, conditioning, audio, prompt, intensity)])[0]

    @torch.inference_mode()
    def generate_blocks(self, inputs: Sequence[BlockInput],
                        conditioning: Sequence[BlockConditioning] | None = None) -> list[np.ndarray]:
        """The next block of each NPC in ``inputs`` (equal :meth:`batch_key`), generated together.

        Each input's audio is its block's samples plus look-ahead (float32, 16 kHz), its prompt None for the
        character's base prompt. Returns each NPC's uint8 RGB frames [T, H, W, 3] and advances every memory.
        A batch works on copies of its NPCs' caches and writes them back only when the whole batch has run, so
        a batch that fails leaves its memories as they were; a single NPC is updated in place (no copies).
        ``conditioning``: the inputs' :meth:`block_conditioning`, when the caller has it already.
        """
        if not inputs:
            return []
        self._check_encoders("generate_blocks")
        self.check_batch(inputs)
        started = time.perf_counter()
        if conditioning is None:
            conditioning = self.block_conditioning(inputs)
        if len(conditioning) != len(inputs):
            raise GeneratorError(f"{len(conditioning)} block conditionings for {len(inputs)} blocks")
        return self._generate(inputs, conditioning, audio_s=time.perf_counter() - started)

    def follow_blocks(self, inputs: Sequence[BlockInput], conditioning: Sequence[BlockConditioning]) -> None:
        """A follower rank's share of rank 0's :meth:`generate_blocks` call: the DiT on this rank's heads with
        rank 0's conditioning (the inputs' audio is not read); the memories' caches and counters advance."""
        if not self.follower:
            raise GeneratorError("follow_blocks runs on the follower ranks of a sequence-parallel group")
        if len(conditioning) != len(inputs):
            raise GeneratorError(f"{len(conditioning)} block conditionings for {len(inputs)} blocks")
        self._generate(inputs, conditioning)

    def check_batch(self, inputs: Sequence[BlockInput]) -> None:
        """GeneratorError unless ``inputs`` can run as one batch (no memory is changed either way)."""
        key = self.batch_key(inputs[0].memory)
        for item in inputs:
            memory, conditioning = item.memory, item.conditioning
            if (conditioning.width, conditioning.height) != (memory.width, memory.height):
                raise GeneratorError(f"NPC {memory.npc_id!r}: character conditioning and memory are for different "
                                     "frame sizes")
            if self.batch_key(memory) != key:
                raise GeneratorError(f"NPC {memory.npc_id!r} is at another block kind or size than its batch")
            consume, lookahead = self.block_audio_samples(memory)
            if item.audio.shape != (consume + lookahead,):
                raise GeneratorError(f"NPC {memory.npc_id!r}: block {memory.blocks_generated} needs "
                                     f"{consume + lookahead} audio samples, got {item.audio.shape}")
            if item.prompt_guidance is not None and not is_prompt_guidance(item.prompt_guidance):
                raise GeneratorError(f"NPC {memory.npc_id!r}: prompt guidance must be finite and >= 1 (1: off), "
                                     f"got {item.prompt_guidance}")
        if len({id(item.memory) for item in inputs}) != len(inputs):
            raise GeneratorError("an NPC can have only one block in a batch")
        for item in inputs:  # prepared here, so a prompt that cannot be encoded fails before any work
            self.context_for(item.conditioning, item.prompt, item.intensity)

    @torch.inference_mode()
    def block_conditioning(self, inputs: Sequence[BlockInput]) -> list[BlockConditioning]:
        """Per input, what the encoders give its block: the audio features of [tail | the block's audio |
        look-ahead] cut to the rows the block's window reads, and the prompt's text embedding (cached per
        character)."""
        out = []
        for item in inputs:
            memory = item.memory
            schedule = self.schedule(memory.width, memory.height)
            tail = memory.audio_tail
            pcm = torch.cat([tail, torch.from_numpy(np.ascontiguousarray(item.audio, dtype=np.float32)).to(tail.device)])
            features = self.audio_encoder.features(pcm, memory.fps)
            plan = schedule.block(memory.blocks_generated)
            first_frame = plan.video_start - tail.shape[0] // self.samples_per_frame(memory.fps)  # of features[0]
            rows, start = block_audio_rows(features, first_frame, plan, schedule.audio_radius)
            text = self.context_for(item.conditioning, item.prompt, item.intensity).text
            previous_text = None
            if self._onset(item):
                previous_text = self.context_for(item.conditioning, memory.last_block_prompt,
                                                 memory.last_block_intensity).text
            out.append(BlockConditioning(audio_rows=rows.to(self.dit.dtype), audio_start=start, text=text,
                                         previous_text=previous_text, pcm=pcm))
        return out

    def _onset(self, item: BlockInput) -> bool:
        """Whether ``item``'s block sets its prompt in over its first frames: its prompt is not the last block's
        and the sampler has a prompt onset."""
        memory, base = item.memory, item.conditioning.base_prompt
        return self.config.sampler.prompt_onset_latents > 0 and (
            prompt_key(base, item.prompt, item.intensity)
            != prompt_key(base, memory.last_block_prompt, memory.last_block_intensity))

    def _prompt_onset(self, inputs: Sequence[BlockInput], conditioning: Sequence[BlockConditioning],
                      frames: int) -> PromptOnset | None:
        """The batch's prompt onset: None when every NPC's block is under the same prompt as its last."""
        rows = [row for row, item in enumerate(inputs) if self._onset(item)]
        if not rows:
            return None
        previous = [self.context_for(inputs[row].conditioning, inputs[row].memory.last_block_prompt,
                                     inputs[row].memory.last_block_intensity,
                                     text=conditioning[row].previous_text).context for row in rows]
        weights = onset_weights(frames, self.config.sampler.prompt_onset_latents)
        return PromptOnset(CrossAttentionContext.batch(previous), torch.tensor(rows, device=self.device),
                           torch.tensor([weights] * len(rows), dtype=torch.float32, device=self.device))

    @torch.inference_mode()
    def _generate(self, inputs: Sequence[BlockInput], conditioning: Sequence[BlockConditioning],
                  audio_s: float = 0.0) -> list[np.ndarray]:
        """The blocks of ``inputs`` from their conditioning (``audio_s``: the seconds it took, for the timings)."""
        memories = [item.memory for item in inputs]
        first = memories[0]
        schedule = self.schedule(first.width, first.height)
        plan = schedule.block(first.blocks_generated)  # the layout every NPC of the batch shares

        started = time.perf_counter()
        single = len(inputs) == 1
        convkv = first.convkv if single else ConvKVMemory.stack([m.convkv for m in memories])
        noises = [GeneratorNoise(m.seed) for m in memories]
        for noise, memory in zip(noises, memories):
            noise.set_state(memory.noise_state)
        contexts = [self.context_for(item.conditioning, item.prompt, item.intensity, text=block.text).context
                    for item, block in zip(inputs, conditioning)]
        result = denoise_block(
            self.dit, convkv, plan,
            y=inputs[0].conditioning.y if single else torch.cat([item.conditioning.y for item in inputs]),
            context=CrossAttentionContext.batch(contexts),
            audio_window=torch.cat([block.audio_window(plan, schedule.audio_radius, self.device)
                                    for block in conditioning]),
            noise=noises[0] if single else BatchNoise(noises), sampler=self.config.sampler, functional=False,
            parallel=self.parallel, guidance=self._prompt_guidance(inputs),
            onset=self._prompt_onset(inputs, conditioning, plan.latent_frames),
        )
        dit_done = time.perf_counter()
        if self.follower:
            # The DiT's share is done; rank 0 decodes and keeps the decoder states and audio tails.
            if not single:
                convkv.scatter_into([m.convkv for m in memories])
            self._advance(inputs, conditioning, noises)
            return []
        decoder = first.decoder if single else CausalCache.stack([m.decoder for m in memories])
        video = self.decode_stream(result.x0, decoder)
        frames = frames_to_uint8(video).cpu().numpy()     # [B, T, H, W, 3]
        self.last_timings = {"audio_s": audio_s, "dit_s": dit_done - started,
                             "decode_s": time.perf_counter() - dit_done}

        # Advance the memories. A single NPC's caches were updated in place; a batch's are written back now. The
        # decoder states, audio tails and noise states are replaced by tensors of the same shapes, so a memory's
        # size never changes.
        if not single:
            convkv.scatter_into([m.convkv for m in memories])
        if not single:
            for memory, own_decoder in zip(memories, decoder.unstack()):
                memory.decoder = own_decoder
        self._advance(inputs, conditioning, noises)
        return list(frames)

    def _prompt_guidance(self, inputs: Sequence[BlockInput]) -> PromptGuidance | None:
        """The batch's prompt guidance: None when every NPC is under its character's base prompt or has it off."""
        default = self.config.sampler.prompt_guidance
        factors = {row: default if item.prompt_guidance is None else item.prompt_guidance
                   for row, item in enumerate(inputs)}
        # A block whose prompt sets in from another than the base prompt is guided as well: its first frames
        # still show the last block's prompt, which was guided.
        rows = [row for row, item in enumerate(inputs) if factors[row] > 1.0 and (
                not is_base_prompt(item.conditioning.base_prompt, item.prompt, item.intensity)
                or self._onset(item) and not is_base_prompt(item.conditioning.base_prompt,
                                                            item.memory.last_block_prompt,
                                                            item.memory.last_block_intensity))]
        if not rows:
            return None
        base = [self.context_for(inputs[row].conditioning, None).context for row in rows]
        return PromptGuidance(CrossAttentionContext.batch(base), torch.tensor(rows, device=self.device),
                              torch.tensor([factors[row] for row in rows], dtype=torch.float32, device=self.device))

    def _advance(self, inputs: Sequence[BlockInput], conditioning: Sequence[BlockConditioning],
                 noises: list[GeneratorNoise]) -> None:
        """Move each memory's stream state past the block just made (the caches are written already)."""
        for item, block, noise in zip(inputs, conditioning, noises):
            memory = item.memory
            consume, lookahead = self.block_audio_samples(memory)
            if block.pcm is not None:
                memory.audio_tail = block.pcm[: block.pcm.shape[0] - lookahead][-memory.audio_tail.shape[0]:].clone()
            memory.noise_state = noise.get_state()
            memory.last_block_prompt, memory.last_block_intensity = prompt_key(
                item.conditioning.base_prompt, item.prompt, item.intensity)
            memory.blocks_generated += 1
            memory.frames_generated += self.config.frames_per_block(memory.blocks_generated - 1)
            memory.timeline_samples += consume
            memory.updated_unix_ms = now_ms()


def apply_execution(dit: WanModel, execution: ExecutionConfig, device: str) -> None:
    """Set up how the DiT runs (GeneratorError for a choice this machine cannot run)."""
    try:
        set_attention_backend(execution.attention)
    except ValueError as err:
        raise GeneratorError(str(err)) from None
    if execution.gemm == "fp8":
        if not fp8_gemm_supported(device):
            raise GeneratorError(f"FP8 GEMM needs a GPU of compute capability 8.9 or newer (Ada, Hopper, "
                                 f"Blackwell); {device} has none")
        quantize_linears(dit)
    if execution.compile:
        # Each block kind, with and without audio, is a graph (six), and so is each batch size and frame size
        # after: past dynamo's default limit of 8 a new one would run uncompiled, silently.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILED_GRAPHS_LIMIT)
        dit.compile_blocks()


def decode_block(vae: WanVAE, latents: torch.Tensor, state: CausalCache, autocast: torch.dtype | None,
                 latents_per_pass: int = DECODE_LATENTS_PER_PASS) -> torch.Tensor:
    """The VAE's streaming decode of a block's latents as serving runs it: float32 weights and state, computed under
    ``autocast`` (None: float32), ``latents_per_pass`` latents per decoder pass."""
    with torch.autocast(latents.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        return vae.decode_stream(latents.float(), state, latents_per_pass=latents_per_pass)


def compiles_decoder(device: str) -> bool:
    """Whether ``--compile`` compiles the VAE decoder on ``device`` as well as the DiT's blocks: on GPUs, where it
    decodes a frame in about half the eager time; not on CPUs, where the compiled decoder was the slower
    (``avatar-backend bench --compiled``: README, "Performance")."""
    return torch.device(device).type == "cuda"


def decode_latents_per_pass(device: str) -> int:
    """Latents per decoder pass when a block is decoded on ``device``."""
    return GPU_DECODE_LATENTS_PER_PASS if torch.device(device).type == "cuda" else DECODE_LATENTS_PER_PASS


def decode_autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of the VAE decoder for an ExecutionConfig.decode_precision on ``device`` (None: run in
    float32). ``auto`` takes bfloat16 where it is fast: GPUs, and CPUs with bf16 matrix units (AMX, AVX512-BF16)."""
    if precision == "bfloat16":
        return torch.bfloat16
    kind = torch.device(device).type
    if precision == "auto" and (kind == "cuda" or kind == "cpu" and cpu_has_bf16_units()):
        return torch.bfloat16
    return None


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16); torch builds without the probes
    (other architectures) answer False."""
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe() for probe in probes if probe is not None)


def shipped_weights(config_name: str | Path) -> Path | None:
    """The shipped weights of a named config, or None when there are none."""
    path = SHIPPED_WEIGHTS_DIR / f"{Path(config_name).name}.safetensors"
    return path if path.is_file() and str(config_name) == path.stem else None


def _load_weights(modules: dict[str, torch.nn.Module], path: Path) -> str:
    """Load a prefixed safetensors file strictly into the modules; returns its SHA-256."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    unknown = [k for k in state if k.split(".", 1)[0] not in MODULE_PREFIXES]
    if unknown:
        raise ValueError(f"{path}: unknown weight names {unknown[:5]}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
