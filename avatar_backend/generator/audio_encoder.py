"""Audio front ends: 16 kHz PCM -> per-video-frame features [frames, layers, channels].

The DiT's audio adapter reads, for every video frame, a stack of ``layers`` feature vectors of ``channels``
each (wav2vec2-base: the 12 transformer layers' hidden states of width 768). Video frame n at ``fps`` covers
samples [n * sr / fps, (n + 1) * sr / fps); a buffer of N samples yields floor(N * fps / sr) frames (a partial
last frame is dropped).

The worker computes features block by block on a rolling PCM buffer, so a front end states how much audio
before a window it needs (:meth:`AudioEncoder.context_frames`) for the window's features to equal those of an
unbounded stream.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def build_audio_encoder(config: AudioEncoderConfig) -> AudioEncoder:
    """The audio front end named by ``config.kind``."""
    if config.kind == "learned":
        return LearnedAudioEncoder(config)
    if config.kind == "wav2vec2":
        raise NotImplementedError(
            "the wav2vec2-base audio front end (layers 1..12, CNN features interpolated to the video rate before "
            "the transformer, LIVEACT_SPEC.md §6.2) is not implemented yet; use kind='learned'"
        )
    raise ValueError(f"unknown audio encoder kind {config.kind!r}; known: 'learned', 'wav2vec2'")
