"""Audio front ends: 16 kHz PCM -> per-video-frame features [frames, layers, channels].

The DiT's audio adapter reads, for every video frame, a stack of ``layers`` feature vectors of ``channels``
each (wav2vec2-base: the 12 transformer layers' hidden states of width 768). Video frame n at ``fps`` covers
samples [n * sr / fps, (n + 1) * sr / fps); a buffer of N samples yields floor(N * fps / sr) frames (a partial
last frame is dropped).

Two front ends: :class:`LearnedAudioEncoder`, the tiny model's causal convnet, and :class:`Wav2Vec2AudioEncoder`,
the published model's chinese-wav2vec2-base run through transformers' ``Wav2Vec2Model`` with the reference's
recipe around it (tempo, gain, normalisation, the interpolation to the video rate).

The worker computes features block by block on a rolling PCM buffer, so a front end states how much audio
before a window it needs (:meth:`AudioEncoder.context_frames`) for the window's features to equal those of an
unbounded stream.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_keys
from .config import AudioEncoderConfig


@runtime_checkable
class AudioEncoder(Protocol):
    """What the generator needs from an audio front end."""

    sample_rate: int  # Hz of the PCM that ``features`` takes
    layers: int
    channels: int

    def features(self, pcm: Tensor, fps: float) -> Tensor:
        """Mono float32 PCM [n] at ``sample_rate`` -> [floor(n * fps / sample_rate), layers, channels]."""
        ...

    def context_frames(self, fps: float) -> int:
        """Video frames of audio before a window that the window's first frame depends on."""
        ...


def video_frame_count(num_samples: int, sample_rate: int, fps: float) -> int:
    """Whole video frames covered by ``num_samples`` of audio."""
    return math.floor(num_samples * fps / sample_rate + 1e-9)


class LearnedAudioEncoder(nn.Module):
    """A small causal front end for the tiny model: log-mel windows -> per-frame pooling -> causal conv stack.

    1. Each video frame gets the ``n_fft``-sample analysis windows that end at its last sample and every ``hop``
       (10 ms) before it, as many as fit in the frame (5 at 20 fps). Windows are placed per frame, not on a
       global grid, so a buffer that starts on any video-frame boundary sees the same windows.
    2. Each window's log-mel spectrum is projected (Linear + GELU) and the frame takes their mean.
    3. ``layers`` residual convs over video frames (kernel 3: the frame and the two before it); each layer's
       output, read out to ``channels``, is one of the stacked feature layers, like wav2vec2's hidden states.

    Receptive field of video frame n, with spf = sample_rate / fps samples per frame: [(n - 2 * layers) * spf - o,
    (n + 1) * spf), where o is how far its first window reaches before the frame (240 samples at 20 fps). At 20 fps
    with 3 layers that is 0.315 s of history and no look-ahead. With a whole number of samples per frame, a
    window's features equal those of the unbounded stream from frame ``context_frames(fps)`` on; otherwise frame
    boundaries round to whole samples and equality holds to within that rounding.
    """

    def __init__(self, config: AudioEncoderConfig, n_fft: int = 400, hop: int = 160, n_mels: int = 40):
        super().__init__()
        self.sample_rate = config.sample_rate
        self.layers = config.layers
        self.channels = config.channels
        self.n_fft = n_fft
        self.hop = hop

        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel_filters", _mel_filterbank(n_fft, n_mels, config.sample_rate), persistent=False)
        self.stem = nn.Linear(n_mels, config.hidden)
        self.blocks = nn.ModuleList(_CausalConvBlock(config.hidden) for _ in range(config.layers))
        self.readouts = nn.ModuleList(nn.Linear(config.hidden, config.channels) for _ in range(config.layers))

    def context_frames(self, fps: float) -> int:
        samples_per_frame = self.sample_rate / fps
        # Samples before a frame's start read by its earliest window (+1 for rounding frame boundaries).
        history = self.n_fft + self.hop * (self._windows_per_frame(fps) - 1) - samples_per_frame + 1
        return 2 * self.layers + max(0, math.ceil(history / samples_per_frame))

    def features(self, pcm: Tensor, fps: float) -> Tensor:
        if pcm.dim() != 1:
            raise ValueError(f"expected mono PCM [n], got {tuple(pcm.shape)}")
        if not 0 < fps <= self.sample_rate / self.hop:
            raise ValueError(f"fps must be in (0, {self.sample_rate / self.hop}], got {fps}")
        frames = video_frame_count(pcm.shape[0], self.sample_rate, fps)

        mel = self._log_mel(self._frame_windows(pcm.to(self.window.dtype), frames, fps))  # [frames, windows, n_mels]
        x = F.gelu(self.stem(mel)).mean(dim=1)  # [frames, hidden]
        outputs = []
        for block, readout in zip(self.blocks, self.readouts):
            x = block(x)
            outputs.append(readout(x))
        return torch.stack(outputs, dim=1)

    forward = features

    def _windows_per_frame(self, fps: float) -> int:
        return max(1, int(self.sample_rate / fps // self.hop))

    def _frame_windows(self, pcm: Tensor, frames: int, fps: float) -> Tensor:
        """[frames, windows per frame, n_fft]: the analysis windows of each video frame, zeros before the buffer."""
        frame_ends = torch.arange(1, frames + 1, dtype=torch.float64) * (self.sample_rate / fps)
        frame_ends = (frame_ends + 1e-9).floor().long()
        per_frame = self._windows_per_frame(fps)
        window_ends = frame_ends[:, None] - self.hop * torch.arange(per_frame - 1, -1, -1)
        sample_index = window_ends[..., None] + torch.arange(-self.n_fft, 0)
        padded = F.pad(pcm, (self.n_fft, 0))
        return padded[sample_index + self.n_fft]

    def _log_mel(self, windows: Tensor) -> Tensor:
        power = torch.fft.rfft(windows * self.window, dim=-1).abs().square()
        return torch.log(power @ self.mel_filters + 1e-6)


class _CausalConvBlock(nn.Module):
    """x + conv(gelu(norm(x))), with a kernel-3 conv over the current and the two previous frames."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size)

    def forward(self, x: Tensor) -> Tensor:  # [frames, dim]
        h = F.gelu(self.norm(x)).T[None]
        h = self.conv(F.pad(h, (self.conv.kernel_size[0] - 1, 0)))
        return x + h[0].T


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular filters on the HTK mel scale, [n_fft // 2 + 1, n_mels]."""

    def hz_to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(0, float(hz_to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bins_hz[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class Wav2Vec2AudioEncoder(nn.Module):
    """wav2vec2-base hidden states at the video frame rate, the reference's way (LIVEACT_SPEC.md §6.1-6.2).

    1. Tempo ``25 / fps`` (pitch kept), so that 25 Hz wav2vec frames of the changed audio fall 1:1 on video frames:
       the model always hears 25 fps-rate speech. The reference uses sox's ``tempo``; this uses FFmpeg's
       ``atempo`` through PyAV (both time-stretch by overlap-add; their samples differ slightly).
    2. Gain x 3, then the model's feature extractor (zero mean, unit variance when its ``do_normalize`` is set,
       which cancels the gain but for its epsilon).
    3. The CNN features, linearly interpolated (align_corners) to one per video frame BEFORE the feature
       projection and the transformer, which therefore run at the video rate. Here a forward hook on the
       model's ``feature_extractor`` does the interpolation, so transformers' own forward runs unchanged.
    4. The hidden states of transformer layers 1..L (not the embedding output) stacked per frame.

    The transformer attends over the whole buffer, so no window reproduces an unbounded stream's features
    exactly. The worker embeds each block's window (its audio and look-ahead, no extra history), as the
    reference does in its streaming mode (a crop per block), so :meth:`context_frames` is 0.
    """

    GAIN = 3.0
    WAV2VEC_RATE = 25   # wav2vec2's frame rate at 16 kHz is 50 Hz; the reference interpolates to 25 fps audio

    def __init__(self, model: nn.Module, feature_extractor, sample_rate: int = 16000):
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.sample_rate = sample_rate
        self.layers = model.config.num_hidden_layers
        self.channels = model.config.hidden_size
        self._video_frames = 0
        model.feature_extractor.register_forward_hook(self._to_video_rate)

    def _to_video_rate(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        """CNN features [B, C, T at 50 Hz] -> [B, C, video frames]."""
        return F.interpolate(output, size=self._video_frames, mode="linear", align_corners=True)

    def context_frames(self, fps: float) -> int:
        return 0

    def hidden_states(self, input_values: Tensor, frames: int) -> Tensor:
        """Normalised input [1, n] -> the stacked layer outputs [frames, layers, channels]."""
        self._video_frames = frames
        parameter = next(self.model.parameters())
        output = self.model(input_values.to(parameter.device, parameter.dtype), output_hidden_states=True)
        return torch.stack(output.hidden_states[1:], dim=2)[0]

    def features(self, pcm: Tensor, fps: float) -> Tensor:
        if pcm.dim() != 1:
            raise ValueError(f"expected mono PCM [n], got {tuple(pcm.shape)}")
        frames = video_frame_count(pcm.shape[0], self.sample_rate, fps)
        samples = pcm.detach().float().cpu().numpy()
        if fps != self.WAV2VEC_RATE:
            samples = change_tempo(samples, self.sample_rate, self.WAV2VEC_RATE / fps)
        inputs = self.feature_extractor(samples * self.GAIN, sampling_rate=self.sample_rate, return_tensors="pt")
        return self.hidden_states(inputs.input_values, frames)

    forward = features


def change_tempo(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """Mono float32 PCM played ``factor`` times faster at the same pitch (FFmpeg's atempo filter)."""
    graph = av.filter.Graph()
    source = graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono",
                               time_base=Fraction(1, sample_rate))
    tempo = graph.add("atempo", f"{factor:.10g}")
    sink = graph.add("abuffersink")
    source.link_to(tempo)
    tempo.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None], format="flt",
                                       layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    graph.push(frame)
    graph.push(None)
    out = []
    while True:
        try:
            out.append(graph.pull().to_ndarray()[0])
        except (av.BlockingIOError, av.EOFError):
            break
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


# Heads of the self-supervised pretraining model that published wav2vec2 checkpoints carry (the features are
# the base model's hidden states, so these are never used).
PRETRAINING_HEADS = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features")


def load_wav2vec2(directory: Path | str, config: AudioEncoderConfig, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.bfloat16) -> Wav2Vec2AudioEncoder:
    """chinese-wav2vec2-base (or any wav2vec2 of that layout) from its local directory: ``config.json``, the
    weights (``pytorch_model.bin`` or ``model.safetensors``) and ``preprocessor_config.json``. Nothing is
    downloaded. Every parameter of the base model must come from the files; tensors other than the base model's
    and the pretraining heads' fail the load."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a wav2vec2 model directory (no config.json)")
    # transformers reports the pretraining heads it skipped and shows a progress bar; the check below is the
    # report that counts.
    from transformers.utils import logging as transformers_logging

    library_log = logging.getLogger("transformers")
    level = library_log.level
    library_log.setLevel(logging.ERROR)
    transformers_logging.disable_progress_bar()
    try:
        model, info = Wav2Vec2Model.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                                    dtype=dtype)
    finally:
        library_log.setLevel(level)
        transformers_logging.enable_progress_bar()
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(PRETRAINING_HEADS)]
    found = set(model.state_dict()) - set(info["missing_keys"])
    check_keys(directory, model.state_dict(), found | set(unexpected))
    if (model.config.num_hidden_layers, model.config.hidden_size) != (config.layers, config.channels):
        raise CheckpointError(f"{directory}: {model.config.num_hidden_layers} layers of width "
                              f"{model.config.hidden_size}; the model config needs {config.layers} of "
                              f"{config.channels}")
    if (directory / "preprocessor_config.json").is_file():
        extractor = Wav2Vec2FeatureExtractor.from_pretrained(directory, local_files_only=True)
    else:
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=config.sample_rate, do_normalize=True)
    if extractor.sampling_rate != config.sample_rate:
        raise CheckpointError(f"{directory}: the feature extractor expects {extractor.sampling_rate} Hz, the model "
                              f"config {config.sample_rate} Hz")
    model.to(device).eval().requires_grad_(False)
    return Wav2Vec2AudioEncoder(model, extractor, config.sample_rate)


def build_audio_encoder(config: AudioEncoderConfig) -> AudioEncoder:
    """The audio front end named by ``config.kind``, with fresh weights (wav2vec2: random, of its size)."""
    if config.kind == "learned":
        return LearnedAudioEncoder(config)
    if config.kind == "wav2vec2":
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        heads = max(1, config.channels // 64)
        model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=config.channels, num_hidden_layers=config.layers,
                                             num_attention_heads=heads, intermediate_size=4 * config.channels))
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=config.sample_rate, do_normalize=True)
        return Wav2Vec2AudioEncoder(model.eval(), extractor, config.sample_rate)
    raise ValueError(f"unknown audio encoder kind {config.kind!r}; known: 'learned', 'wav2vec2'")
