"""How much of a raised arm the DiT draws from a clip's own latents (teacher forcing), without the sampler.

Each clip is encoded by the weights' VAE; every block is noised to one sampler step's level and run in order
through that step's cache, exactly as a training step runs it (``model.train.dit_stage.neighbor_forcing``), and the
DiT's prediction of the clean block is compared with the truth over the hand-and-forearm cells of each latent whose
frame raises the arm more than halfway. The score is one minus the prediction's squared error there over that of
the latent before the arm rose: 0 draws no arm, 1 draws the truth's. Blocks are prompted as the evaluation sends
events live. A DiT that takes the arm out of a block's own latents has none to give the sampler, and the measure
takes seconds, where generating and classifying the clips takes minutes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from avatar_backend.generator.pipeline import LiveActPipeline
from avatar_backend.generator.schedule import StreamSchedule
from model.train.clips import LATENT_STRIDE, TrainingClip, box_mask, hand_and_forearm_boxes
from model.train.dit_stage import encode_example, neighbor_forcing

RAISED = 0.5        # arm_raise above which a latent's frame counts as showing the raised arm
# The truth's mean squared latent change over the arm's cells below which its VAE keeps too little of the arm for
# a DiT to be judged on it (the shipped VAE: 0.2 to 0.8 on single waving clips; an untrained one: under 0.002).
MIN_ARM_CHANGE = 0.05


def raised_arm_cells(truth: dict[str, np.ndarray], latent_frames: int, height: int, width: int,
                     vae_scale: int = 4) -> tuple[np.ndarray, torch.Tensor]:
    """The latents whose last frame raises the arm more than halfway, each paired with the latent just before its
    raise began ([n, 2] indices), and their hand-and-forearm cells ([n, h, w] bool)."""
    frames = [0] + [vae_scale * j for j in range(1, latent_frames)]
    raised = truth["arm_raise"][frames] > RAISED
    cells = box_mask(hand_and_forearm_boxes(truth, height, width)[frames], height, width, LATENT_STRIDE) > 0
    pairs, before = [], None
    for j in range(1, latent_frames):
        if raised[j] and not raised[j - 1]:
            before = j - 1
        if raised[j] and before is not None:
            pairs.append((j, before))
    index = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return index, torch.from_numpy(cells[index[:, 0]] if len(index) else cells[:0])


def arm_errors(predicted: torch.Tensor, truth: torch.Tensor, index: np.ndarray,
               cells: torch.Tensor) -> tuple[float, float, int]:
    """Squared error of ``predicted`` [z, n, h, w] against ``truth`` over each raised latent's cells, that of the
    latent before the raise against the truth there (the error of drawing no arm), and how many values they sum."""
    drawn = absent = 0.0
    for (latent, before), mask in zip(index, cells):
        drawn += (predicted[:, latent] - truth[:, latent])[:, mask].square().sum().item()
        absent += (truth[:, before] - truth[:, latent])[:, mask].square().sum().item()
    return drawn, absent, int(cells.sum()) * truth.shape[0]


def arm_score(drawn: float, absent: float, values: int) -> float | None:
    """1 - drawn / absent; None where the truth's arm changes its latents by less than ``MIN_ARM_CHANGE``."""
    return None if values == 0 or absent / values < MIN_ARM_CHANGE else 1.0 - drawn / absent


@torch.no_grad()
def teacher_forced_arm(pipeline: LiveActPipeline, clips: list[TrainingClip], timesteps: tuple[float, ...] | None = None,
                       seed: int = 0) -> dict:
    """Per sampler step (or per noise level of ``timesteps``, of 1000), the arm score pooled over the clips'
    raised-arm latents (:func:`raised_arm_cells`)."""
    config, fps = pipeline.config, pipeline.config.fps
    if timesteps is not None:
        config = dataclasses.replace(config, sampler=dataclasses.replace(config.sampler, timesteps=(*timesteps, 0.0)))
    modules = {"dit": pipeline.dit, "audio_encoder": pipeline.audio_encoder, "image_encoder": pipeline.image_encoder,
               "text_encoder": pipeline.text_encoder}
    sums = np.zeros((config.sampler.num_steps, 3))
    latents_counted = 0
    schedule = StreamSchedule.from_model_config(config, config.width, config.height)
    for clip in clips:
        if len(clip.frames) < schedule.first_video_frames:
            continue
        blocks = schedule.whole_blocks(len(clip.frames))
        example = encode_example(pipeline.vae, clip, config, blocks, fps)
        truth = example.latents[0]
        index, cells = raised_arm_cells(clip.truth, truth.shape[1], config.height, config.width,
                                        config.vae.temporal_stride)
        if not len(index):
            continue
        latents_counted += len(index)
        for step in range(config.sampler.num_steps):
            generator = torch.Generator().manual_seed(seed)
            predicted = torch.cat([block.predicted_x0 for block in neighbor_forcing(
                modules, example, config, blocks, step, fps, generator)], dim=2)[0]
            sums[step] += arm_errors(predicted, truth, index, cells)
    absent, values = sums[0, 1:]
    return {"timesteps": list(config.sampler.timesteps[:-1]), "raised_arm_latents": latents_counted,
            "truth_arm_change": float(absent / values) if values else None,
            "arm_score": [arm_score(drawn, absent, int(values)) for drawn, absent, values in sums]}
