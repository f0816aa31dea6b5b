"""Stages 2 and 3: the VAE, trained as the Wan VAE is: decode a sample of the encoder's posterior, reconstruct
the clip (L1 and squared error, the mouth weighted up so lip shapes survive the 8x compression, and optionally the
eyes, brows and a visible hand), plus a small KL term; then its decoder alone on windows long enough for its
causal convs to reach the steady state of a stream, its frame-to-frame changes held to the clip's so that it does
not step at latent boundaries."""

from __future__ import annotations

import numpy as np
import torch

from avatar_backend.generator.vae import WanVAE

from .clips import TrainingClip, face_weight, hand_in_picture, latent_first_frames, video_to_tensor
from .recipe import TrainRecipe


def vae_crop(truth: dict[str, np.ndarray], start: int, height: int, width: int, crop: int, centre: str | None,
             rng: np.random.Generator) -> tuple[slice, slice]:
    """Rows and columns of a ``crop``-pixel crop on the latent grid for a window from frame ``start``: anywhere
    (``centre`` None), or centred, with some jitter, on the mouth ("mouth"), on the face from the brows' top to
    the mouth's bottom ("face") or on the hand that frame shows ("hand")."""
    if centre is None:
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
    elif centre == "hand":
        x, y = truth["hand"][start]
        if x < 0:
            raise ValueError(f"frame {start} shows no hand to centre a crop on")
        jitter = crop // 4
        top = int(np.clip(round(y) - crop // 2 + rng.integers(-jitter, jitter + 1), 0, height - crop))
        left = int(np.clip(round(x) - crop // 2 + rng.integers(-jitter, jitter + 1), 0, width - crop))
    else:
        x0, y0, x1, y1 = truth["mouth_box"][start]
        jitter = crop // 4
        if centre == "face":
            # Brows to mouth fit a 64-pixel crop at 128x128 with less jitter.
            y0, jitter = truth["brow_box"][start][1], crop // 8
        top = int(np.clip((y0 + y1) // 2 - crop // 2 + rng.integers(-jitter, jitter + 1), 0, height - crop))
        left = int(np.clip((x0 + x1) // 2 - crop // 2 + rng.integers(-jitter, jitter + 1), 0, width - crop))
    top, left = top // 8 * 8, left // 8 * 8
    return slice(top, top + crop), slice(left, left + crop)


def hand_window(clips: list[TrainingClip], frames: int, rng: np.random.Generator) -> tuple[TrainingClip, int] | None:
    """A random clip and start of a ``frames``-frame window whose first frame shows a hand inside the picture, or
    None when no clip has one."""
    for index in rng.permutation(len(clips)):
        clip = clips[int(index)]
        _, height, width, _ = clip.frames.shape
        starts = np.flatnonzero(hand_in_picture(clip.truth, height, width)[:len(clip.frames) - frames + 1])
        if len(starts):
            return clip, int(rng.choice(starts))
    return None


def vae_loss_weight(truth: dict[str, np.ndarray], window: slice, height: int, width: int,
                    recipe: TrainRecipe, expression_weight: float) -> np.ndarray:
    """[T, height, width] per-pixel loss weights of a window: 1 plus :func:`face_weight` under the recipe's
    ``mouth_weight`` and the stage's ``expression_weight``."""
    return 1.0 + face_weight(truth, window, height, width, mouth_weight=recipe.mouth_weight,
                             expression_weight=expression_weight)


def vae_step(vae: WanVAE, clips: list[TrainingClip], recipe: TrainRecipe, rng: np.random.Generator,
             generator: torch.Generator, *, batch: int, frames: int, expression_weight: float,
             motion_weight: float = 0.0, boundary_weight: float = 1.0,
             autocast: torch.dtype | None = None) -> dict[str, float]:
    """One optimiser step's loss on ``batch`` random windows of ``frames`` frames (backward included): the VAE
    stage's short windows, or the decoder stage's long ones with the encoder frozen.

    ``expression_weight``: the eyes', brows' and a visible hand's extra weight (:func:`vae_loss_weight`).
    ``motion_weight``, ``boundary_weight``: :func:`motion_error`'s term and its latent boundaries' weight (the
    decoder stage's; see ``TrainRecipe.decoder_motion_weight``).
    ``autocast``: the dtype the VAE's forward runs in under CPU autocast (None: float32); the loss is float32.

    Every convolution is local, so the VAE trains on ``vae_crop``-pixel crops (about 4x faster than whole
    128-pixel frames); ``vae_hand_crops`` of them are centred on a hand (:func:`hand_window`), half of the others
    on ``vae_crop_centre`` (:func:`vae_crop`).
    """
    videos, weights = [], []
    for _ in range(batch):
        # Drawn only when asked, so that a recipe without hand crops samples the windows it always did.
        on_hand = hand_window(clips, frames, rng) if recipe.vae_hand_crops and rng.random() < recipe.vae_hand_crops \
            else None
        if on_hand is not None:
            (clip, start), centre = on_hand, "hand"
        else:
            clip = clips[int(rng.integers(len(clips)))]
            start = int(rng.integers(0, len(clip.frames) - frames + 1))
            centre = recipe.vae_crop_centre if rng.random() < 0.5 else None
        window = slice(start, start + frames)
        _, height, width, _ = clip.frames.shape
        crop = min(recipe.vae_crop, height, width)
        rows, cols = vae_crop(clip.truth, start, height, width, crop, centre, rng)
        videos.append(video_to_tensor(clip.frames[window, rows, cols]))
        window_weight = vae_loss_weight(clip.truth, window, height, width, recipe, expression_weight)
        weights.append(torch.from_numpy(window_weight[:, rows, cols]))
    video = torch.cat(videos)
    weight = torch.stack(weights)[:, None]                                   # [B, 1, T, H, W]

    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        mu, log_var = (part.float() for part in vae.posterior(video))
        log_var = log_var.clamp(-30.0, 20.0)
        sample = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator)
        normalised = (sample - vae.latent_mean) * vae.latent_inv_std
        recon = vae.decode(normalised, latents_per_pass=mu.shape[2]).float()
    error = recon - video
    l1 = (error.abs() * weight).mean() / weight.mean()
    # L1 alone settles on per-pixel medians and leaves flat areas off-colour for long; the squared term
    # pulls large errors (a wrong background or clothes colour) in first.
    mse = (error.square() * weight).mean() / weight.mean()
    kl = 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).mean()
    loss = l1 + recipe.vae_mse_weight * mse + recipe.vae_kl_weight * kl
    metrics = {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}
    if motion_weight:
        motion = motion_error(error, weight, boundary_weight, vae.config.temporal_stride)
        loss = loss + motion_weight * motion
        metrics["motion"] = motion.item()
    loss.backward()
    return {"loss": loss.item(), **metrics}


def motion_error(error: torch.Tensor, weight: torch.Tensor, boundary_weight: float = 1.0,
                 stride: int = 4) -> torch.Tensor:
    """Weighted L1 of the reconstruction's frame-to-frame changes against the clip's, from the reconstruction
    error [B, C, T, H, W] (the error's change is the one minus the other) and the per-pixel weights [B, 1, T, H, W]:
    zero for an error that holds still, however large, and large for a picture that steps between frames the
    clip moves smoothly through. The changes into each latent's first frame (a window's first latent is one
    frame, then every ``stride``-th frame starts one) weigh ``boundary_weight`` times the others: the error of one
    latent's frames moves together, so a decoder steps there."""
    pair_weight = torch.maximum(weight[:, :, 1:], weight[:, :, :-1]).clone()
    # Change k is the change into frame k + 1.
    pair_weight[:, :, torch.from_numpy(latent_first_frames(error.shape[2], stride) - 1)] *= boundary_weight
    return ((error[:, :, 1:] - error[:, :, :-1]).abs() * pair_weight).mean() / pair_weight.mean()


# The VAE's encoder side: the encoder and the conv that gives its posterior.
ENCODER_SIDE = ("encoder", "conv1")


def trainable_parameters(stage: str, vae: WanVAE) -> list[torch.nn.Parameter]:
    """The parameters VAE-side ``stage`` trains, the others frozen: the whole VAE in "vae"; the decoder side alone in
    the decoder stages, so that the encoder's latents stay the ones the DiT learns."""
    vae.requires_grad_(True)
    if stage != "vae":
        for name in ENCODER_SIDE:
            getattr(vae, name).requires_grad_(False)
    return [p for p in vae.parameters() if p.requires_grad]


def encoder_state(vae: WanVAE) -> dict[str, torch.Tensor]:
    """The encoder side's weights, keyed as in the VAE's state dict."""
    return {f"{name}.{key}": value for name in ENCODER_SIDE for key, value in getattr(vae, name).state_dict().items()}


@torch.no_grad()
def latent_statistics(vae: WanVAE, clips: list[TrainingClip], frames: int = 33, max_clips: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over the first ``frames`` frames of some clips: the
    DiT-space normalisation of this VAE (as WAN_LATENT_MEAN / WAN_LATENT_STD are for the published one)."""
    mus = [vae.posterior(video_to_tensor(c.frames[:frames]))[0] for c in clips[:max_clips]]
    stacked = torch.cat(mus, dim=2)                                          # [1, z, n, h, w]
    mean = stacked.mean(dim=(0, 2, 3, 4))
    std = stacked.std(dim=(0, 2, 3, 4))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]
