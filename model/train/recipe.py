"""The training recipe: every knob of a run, one frozen object, recorded in the weights' manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from avatar_backend.generator.config import DECODE_PRECISIONS

# Held out of training so evaluation can measure unseen voices: one language and one speaker.
HELD_OUT_LANGUAGE = "pl"
HELD_OUT_SPEAKER = "f5"
TRAIN_LANGUAGES = ("en", "fr", "de", "es", "it", "pt", "nl")
TRAIN_SPEAKERS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")

# Where the VAE stage centres half of its crops: on the mouth, or on the face from the brows to the mouth.
VAE_CROP_CENTRES = ("mouth", "face")


@dataclass(frozen=True)
class TrainRecipe:
    seed: int = 0
    config: str = "tiny"
    # data
    clips: int = 480
    clip_seconds: float = 6.0
    data_seed: int = 1
    # VAE: clips of vae_frames frames, the mouth region weighted up (vae_expression_weight: the eyes, brows and a
    # visible hand too, and half of the crops centred on the face instead of the mouth: vae_crop_centre "face")
    vae_steps: int = 16200
    vae_batch: int = 4
    vae_frames: int = 9
    vae_crop: int = 64
    vae_lr: float = 1e-3
    vae_mse_weight: float = 10.0
    vae_kl_weight: float = 1e-4
    mouth_weight: float = 4.0
    vae_expression_weight: float = 4.0
    vae_crop_centre: str = "face"
    # This share of the windows starts on a frame that shows a hand, their crop centred on it: a wave's raised arm
    # swings at the frame's edge, left of the crops centred on the face. At 0.25 the VAE keeps the arm, but the DiT
    # still draws none, so the shipped weights have none (docs/TINY_EXPERIMENTS.md, "The whole recipe with hand
    # crops").
    vae_hand_crops: float = 0.0
    # What the VAE, decoder_scratch and decoder stages compute in (generator.config.DECODE_PRECISIONS; weights,
    # optimiser and loss stay float32): "bfloat16" runs them under autocast, 1.4-1.7x faster steps on a CPU with
    # bf16 matrix units (python -m model.train.bench --stage vae); "auto" takes it on such CPUs only, as serving's
    # decode_precision does. The whole recipe so took 106 minutes on 2 cores of an AVX512-BF16 CPU, its weights
    # within what two runs of it differ by (docs/TINY_EXPERIMENTS.md, "The VAE's stages in bfloat16"); the shipped
    # weights' stages ran in float32.
    vae_precision: str = "float32"
    # Decoder: the VAE's windows are too short for its causal convs to reach their steady state (a stream's
    # frames after the ninth decoded 5-10 dB worse), so the decoder then learns long windows, encoder frozen
    # (its latents, which the DiT learns, stay the same).
    # A serving decoder narrower than the VAE stage's (the config's VAEConfig.light_decoder_dims) starts from
    # scratch on the frozen encoder: this many steps on the VAE stage's short windows, then the long ones below.
    decoder_scratch_steps: int = 10000
    decoder_steps: int = 4000
    decoder_batch: int = 1
    decoder_frames: int = 33
    decoder_lr: float = 3e-4
    # Each latent decodes to 4 frames from one code, so the decoder's error moves with each latent: fit frame by
    # frame, it flickers inside latents and steps into each latent's first frame, and a stream shows that step at
    # every block start. An L1 term on the decoded frame-to-frame changes against the clip's, the changes into each
    # latent's first frame weighted up (docs/TINY_EXPERIMENTS.md, "A decoder that does not step between latents").
    decoder_motion_weight: float = 6.0
    decoder_boundary_weight: float = 8.0
    # The eyes', brows' and a visible hand's extra weight in both decoder stages (the VAE stage's is
    # vae_expression_weight). At 12 the narrow decoder keeps a little more of the eyes and less of the mouth
    # (docs/TINY_EXPERIMENTS.md, "The narrow decoder's eyes").
    decoder_expression_weight: float = 4.0
    # DiT: one 4-block clip per step (6 + 8 + 8 + 8 latents), every block at the same step's noise level
    dit_clips: int = 480           # clips encoded once for the DiT
    dit_steps: int = 7200
    dit_blocks: int = 4
    dit_lr: float = 5e-4
    dit_warmup: int = 200
    # The shift of the sampler's timesteps (generator.config.flow_timesteps), which the DiT and control stages
    # train at and the weights are served with. 5 is LiveAct's (1000, 937.5, 833.33); 1 (1000, 750, 500) drew
    # cleaner frames with fewer emotions and events shown, and no arm either (docs/TINY_EXPERIMENTS.md, "A sampler
    # that ends at less noise").
    sampler_shift: float = 5.0
    # Extra loss weight in the DiT and control stages on a visible hand, and while a wave raises the arm on the
    # box from the hand to the elbow (a few latent cells; a hand shows in a tenth of the frames). At 8 the DiT still
    # drew no arm and lip sync fell (docs/TINY_EXPERIMENTS.md, "The hand and forearm weighted up in the DiT's loss").
    hand_weight: float = 0.0
    # The DiT's width and depth, 0 for the config's. A wider DiT keeps the config's head width (more heads) and
    # its feed-forward width per unit of width; the weights' config records what was trained. At width 192 the DiT
    # fit its clips better and still drew no arm, and crossed the seam target (docs/TINY_EXPERIMENTS.md, "A wider
    # DiT").
    dit_dim: int = 0
    dit_layers: int = 0
    # Control: the DiT continued on other clips whose emotion changes and actions start where serving shows
    # them, at block starts (in the DiT stage's clips they start anywhere in a block, so a block's prompt says
    # only that an action may start somewhere in it and little of it shows), with the eyes, brows and hand
    # weighted up as the mouth is.
    control_clips: int = 240
    control_data_seed: int = 2
    control_steps: int = 2000
    control_lr: float = 2e-4
    control_warmup: int = 50
    expression_weight: float = 4.0
    grad_clip: float = 1.0
    # The DiT's blocks compiled for the DiT and control stages (WanModel.compile_blocks): the same gradients to
    # float rounding, 1.28x faster steps here (python -m model.train.bench), and about a minute of compiling.
    compile_dit: bool = True
    checkpoint_every_s: float = 120.0

    def __post_init__(self) -> None:
        if self.vae_crop_centre not in VAE_CROP_CENTRES:
            raise ValueError(f"vae_crop_centre must be one of {', '.join(VAE_CROP_CENTRES)}, got {self.vae_crop_centre!r}")
        if self.vae_precision not in DECODE_PRECISIONS:
            raise ValueError(f"vae_precision must be one of {', '.join(DECODE_PRECISIONS)}, got {self.vae_precision!r}")
        if not 0.0 <= self.vae_hand_crops <= 1.0:
            raise ValueError(f"vae_hand_crops must be a share from 0 to 1, got {self.vae_hand_crops}")
        if not self.hand_weight >= 0.0:
            raise ValueError(f"hand_weight must be 0 or more, got {self.hand_weight}")
        if not self.sampler_shift > 0.0:
            raise ValueError(f"sampler_shift must be positive, got {self.sampler_shift}")
        if self.dit_dim < 0 or self.dit_layers < 0:
            raise ValueError(f"dit_dim and dit_layers must be 0 (the config's) or more, got {self.dit_dim} and "
                             f"{self.dit_layers}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


TINY_RECIPE = TrainRecipe()
# Every stage's steps cut to fit 90 minutes on 2 cores of an AVX2 CPU (76.9 minutes there, 52.7-56.4 on an AVX512
# one): the seam target kept in three runs, the lip-sync target in two of them (r 0.849, 0.813, 0.797), fewer emotions
# and events shown (docs/TINY_EXPERIMENTS.md, "The recipe cut to 90 minutes on the AVX2 CPU", "The 90-minute recipe
# again, on another CPU" and "The 90-minute recipe from another seed").
SHORT_RECIPE = dataclasses.replace(TINY_RECIPE, vae_steps=5000, decoder_scratch_steps=3000, decoder_steps=2000,
                                   dit_steps=3000, control_steps=1000)
# The whole recipe's steps cut by a fifth to a quarter (the decoder stage's kept), its VAE-side stages in bf16 on a CPU
# with bf16 matrix units: 87.5 minutes on 2 cores of an AVX512-BF16 CPU (computed from one run and its decoder stage
# run again) and 91.5 from seed 1, its weights keeping the lip-sync, swapped-audio and seam targets from both seeds with
# fewer emotions and events shown than the shipped weights'; without bf16 units it runs in float32, about 2.5 hours on
# the AVX2 CPU (computed; docs/TINY_EXPERIMENTS.md, "The bfloat16 recipe cut to 90 minutes" and "The bfloat16 recipe
# from another seed").
BF16_RECIPE = dataclasses.replace(TINY_RECIPE, vae_precision="auto", vae_steps=12000, decoder_scratch_steps=8000,
                                  dit_steps=5600, control_steps=1600)
# A few steps of everything on a few clips: the CI smoke test and a quick check of a changed recipe.
SMOKE_RECIPE = TrainRecipe(clips=3, clip_seconds=6.0, vae_steps=12, vae_frames=5, decoder_scratch_steps=4,
                           decoder_steps=4, decoder_frames=9, dit_clips=3, dit_steps=12, dit_warmup=2, control_clips=2,
                           control_steps=4, control_warmup=1, checkpoint_every_s=0.0, compile_dit=False)
# The recipes ``python -m model.train --recipe NAME`` runs; "tiny" is the shipped weights'.
RECIPES = {"tiny": TINY_RECIPE, "short": SHORT_RECIPE, "bf16": BF16_RECIPE, "smoke": SMOKE_RECIPE}


def with_overrides(recipe: TrainRecipe, settings: list[str]) -> TrainRecipe:
    """``recipe`` with ``FIELD=VALUE`` settings applied, each value parsed as the field's type; ValueError names an
    unknown field or a value that does not parse."""
    defaults = recipe.to_dict()
    changes: dict = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"{setting!r}: expected FIELD=VALUE with FIELD one of {', '.join(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key}: expected true or false, got {text!r}")
            changes[key] = text.lower() in ("true", "1")
        else:
            try:
                changes[key] = kind(text)
            except ValueError:
                raise ValueError(f"{key}: expected a {kind.__name__}, got {text!r}") from None
    return dataclasses.replace(recipe, **changes)
