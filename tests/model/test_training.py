"""Training: every stage runs and exports weights the serving pipeline loads, a second run from scratch writes
the same bits, a run stopped by Ctrl-C continues exactly where it stopped, the serving decoder is trained narrower
on the encoder the DiT learned from, each VAE stage weights the eyes and brows by its own recipe field, a
checkpoint of other shapes is refused, the Neighbor-Forcing step lowers its loss at the timesteps of the recipe's
shift, a DiT of the recipe's width and depth is trained and served, and compiled blocks train with eager
gradients."""

import json
import logging
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from avatar_backend.generator.config import ModelConfig
from avatar_backend.generator.pipeline import LiveActPipeline
from model.data.speech import espeak_available
from model.train.loop import ResumableStage, log, setup_logging, step_rngs
from model.train.recipe import SMOKE_RECIPE, TINY_RECIPE, with_overrides
from model.train.run import RecipeMismatch, main_run

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    manifest = main_run(root / "work", root / "weights", SMOKE_RECIPE)
    return root, manifest


@pytest.fixture
def vae_step_calls(monkeypatch) -> list[dict]:
    """The keywords of every VAE-side step the trainer takes from here on, the steps still taken."""
    import model.train.run as run

    real_step, calls = run.vae_step, []

    def recording_step(*args, **kwargs):
        calls.append(kwargs)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(run, "vae_step", recording_step)
    return calls


@needs_espeak
@pytest.mark.slow
def test_a_smoke_run_exports_weights_that_the_pipeline_serves(smoke_run):
    root, manifest = smoke_run
    weights = root / "weights" / "tiny.safetensors"
    assert json.loads((root / "weights" / "tiny.json").read_text())["sha256"] == manifest["sha256"]
    pipeline = LiveActPipeline.from_config(ModelConfig.from_dict(manifest["config"]), weights=weights)
    assert not pipeline.random_weights
    assert pipeline.weights_sha256 == manifest["sha256"]
    assert manifest["training"]["dit"]["steps"] == SMOKE_RECIPE.dit_steps
    assert manifest["training"]["control"]["steps"] == SMOKE_RECIPE.control_steps
    assert manifest["data"]["held_out"] == {"language": "pl", "speaker": "f5"}

    # Every stage is done: running again loads the checkpoints and exports the same weights.
    again = main_run(root / "work", root / "weights2", SMOKE_RECIPE)
    assert again["sha256"] == manifest["sha256"]
    # Another recipe does not continue this run's checkpoints: refused, naming what differs, nothing written.
    with pytest.raises(RecipeMismatch, match="vae_expression_weight 4.0 there, 0.0 here"):
        main_run(root / "work", root / "weights3", with_overrides(SMOKE_RECIPE, ["vae_expression_weight=0"]))
    assert not (root / "weights3").exists()


@needs_espeak
@pytest.mark.slow
def test_a_second_run_from_scratch_writes_the_same_weights(smoke_run, tmp_path):
    # Clips rendered anew and every stage trained anew: one seed, one set of bits.
    _, manifest = smoke_run
    again = main_run(tmp_path / "work", tmp_path / "weights", SMOKE_RECIPE)
    assert again["sha256"] == manifest["sha256"]


@needs_espeak
@pytest.mark.slow
def test_the_serving_decoder_is_trained_narrower_on_the_encoder_the_dit_learned_from(smoke_run):
    from safetensors.torch import load_file

    root, manifest = smoke_run
    assert manifest["training"]["decoder_scratch"]["steps"] == SMOKE_RECIPE.decoder_scratch_steps
    assert manifest["training"]["decoder"]["steps"] == SMOKE_RECIPE.decoder_steps
    after_vae_stage = torch.load(root / "work" / "vae.ckpt", weights_only=False)["modules"]["vae"]
    after_scratch = torch.load(root / "work" / "decoder_scratch.ckpt", weights_only=False)["modules"]["vae"]
    exported = {k.removeprefix("vae."): v for k, v in load_file(root / "weights" / "tiny.safetensors").items()
                if k.startswith("vae.")}
    assert exported.keys() == after_vae_stage.keys()
    encoder_side = [k for k in exported if k.startswith(("encoder.", "conv1."))]
    decoder_side = [k for k in exported if k.startswith(("decoder.", "conv2."))]
    assert encoder_side and len(encoder_side) + len(decoder_side) == len(exported)
    assert all(torch.equal(exported[k], after_vae_stage[k]) for k in encoder_side)
    # The VAE stage's decoder mirrors the encoder; the one that serves has the config's narrower widths and
    # was trained after it, from scratch, then on long windows.
    narrowest = ModelConfig.from_dict(manifest["config"]).vae.light_decoder_dims[-1]
    assert exported["decoder.head.weight"].shape[1] == narrowest < after_vae_stage["decoder.head.weight"].shape[1]
    assert any(not torch.equal(exported[k], after_scratch[k]) for k in decoder_side)


@needs_espeak
@pytest.mark.slow
def test_the_vae_stage_and_the_decoder_stages_weight_the_eyes_and_brows_by_their_own_fields(smoke_run, tmp_path,
                                                                                             vae_step_calls):
    import model.train.run as run
    from model.train.clips import load_clips

    root, _ = smoke_run
    recipe = with_overrides(SMOKE_RECIPE, ["vae_expression_weight=3", "decoder_expression_weight=7"])
    clips = load_clips(root / "work" / "data")
    vae, _ = run.train_vae(tmp_path, recipe, clips)
    run.train_decoder(tmp_path, recipe, clips, vae)
    weights_seen = [call["expression_weight"] for call in vae_step_calls]
    assert weights_seen == [3.0] * recipe.vae_steps + [7.0] * (recipe.decoder_scratch_steps + recipe.decoder_steps)


@needs_espeak
@pytest.mark.slow
def test_the_vae_side_stages_compute_in_the_recipes_precision(smoke_run, tmp_path, vae_step_calls, caplog):
    import model.train.run as run
    from avatar_backend.generator.pipeline import cpu_has_bf16_units
    from model.train.clips import load_clips

    root, _ = smoke_run
    caplog.set_level(logging.INFO, logger="model.train")
    clips = load_clips(root / "work" / "data")
    steps = SMOKE_RECIPE.vae_steps + SMOKE_RECIPE.decoder_scratch_steps + SMOKE_RECIPE.decoder_steps
    auto = torch.bfloat16 if cpu_has_bf16_units() else None
    for precision, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("auto", auto)):
        vae_step_calls.clear()
        recipe = with_overrides(SMOKE_RECIPE, [f"vae_precision={precision}"])
        (tmp_path / precision).mkdir()
        vae, report = run.train_vae(tmp_path / precision, recipe, clips)
        run.train_decoder(tmp_path / precision, recipe, clips, vae)
        assert [call["autocast"] for call in vae_step_calls] == [dtype] * steps, precision
        assert all(map(math.isfinite, report["latent_std"])) and min(report["latent_std"]) > 0
    # The log says what each stage computed in.
    assert "vae: computing in bfloat16" in caplog.text and "decoder: computing in float32" in caplog.text
    with pytest.raises(ValueError, match="vae_precision must be one of auto, float32, bfloat16"):
        with_overrides(SMOKE_RECIPE, ["vae_precision=half"])


@needs_espeak
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vae", "decoder"])
def test_a_vae_side_step_in_bfloat16_follows_the_float32_gradient(smoke_run, stage, capsys):
    """The benchmark of a VAE-side stage runs its step in float32 and under bf16 autocast on a run's clips, from
    the stage's checkpoint: the same windows, crops and noise must give gradients pointing the same way."""
    from model.train import bench

    root, _ = smoke_run
    out = root / f"bench_{stage}.json"
    assert bench.main(["--work", str(root / "work"), "--stage", stage, "--steps", "3", "--first", "1",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["stage"] == stage and report["from_checkpoint"]
    assert report["float32_median_s"] > 0 and report["bfloat16_median_s"] > 0
    assert 0.99 < report["gradient_cosine"] <= 1.0 + 1e-6
    assert "speed-up" in capsys.readouterr().out


@needs_espeak
@pytest.mark.slow
def test_the_control_stage_continues_the_dit_on_clips_whose_events_start_at_block_starts(smoke_run):
    from safetensors.torch import load_file

    from model.data.dataset import read_manifest

    root, manifest = smoke_run
    starts = manifest["data"]["control_block_starts"]
    assert starts[:4] == [0.0, 1.05, 2.65, 4.25]          # 21 frames, then 32 per block, at 20 fps
    control = read_manifest(root / "work" / "control_data")
    assert len(control["clips"]) == SMOKE_RECIPE.control_clips
    changes = [e for clip in control["clips"] for e in clip["events"][1:] if e["kind"] in ("emotion", "action")]
    assert changes and all(e["time"] in starts for e in changes)
    after_dit = torch.load(root / "work" / "dit.ckpt", weights_only=False)["modules"]["dit"]
    exported = {k.removeprefix("dit."): v for k, v in load_file(root / "weights" / "tiny.safetensors").items()
                if k.startswith("dit.")}
    assert exported.keys() == after_dit.keys()
    assert any(not torch.equal(exported[k], after_dit[k]) for k in exported)


@needs_espeak
@pytest.mark.slow
def test_the_neighbor_forcing_step_lowers_its_loss(smoke_run):
    from model.train.dit_stage import dit_step
    from model.train.run import dit_modules

    root, manifest = smoke_run
    config = ModelConfig.from_dict(manifest["config"])
    example = torch.load(root / "work" / "latents.pt", weights_only=False)[0]
    torch.manual_seed(0)
    modules = dit_modules(config)
    optimizer = torch.optim.Adam([p for m in modules.values() for p in m.parameters()], lr=1e-3)

    def loss_at(step):  # the same noise and timestep each time it is asked
        optimizer.zero_grad()
        return dit_step(modules, example, config, SMOKE_RECIPE, 20, *step_rngs(0, "dit", step))["loss"]

    before = [loss_at(s) for s in range(3)]
    for step in range(3, 27):
        loss_at(step)
        optimizer.step()
    after = [loss_at(s) for s in range(3)]
    assert sum(after) < 0.8 * sum(before)


@needs_espeak
@pytest.mark.slow
def test_the_dit_trains_at_the_timesteps_of_the_recipes_shift(smoke_run, monkeypatch):
    from model.train.dit_stage import dit_step
    from model.train.run import dit_modules, trained_config

    root, manifest = smoke_run
    stats = {key: manifest["config"]["vae"][key] for key in ("latent_mean", "latent_std")}
    assert trained_config(SMOKE_RECIPE, stats).sampler.timesteps == (1000.0, 937.5, 833.33333333, 0.0)
    recipe = with_overrides(SMOKE_RECIPE, ["sampler_shift=1"])
    config = trained_config(recipe, stats)
    assert config.sampler.timesteps == (1000.0, 750.0, 500.0, 0.0)
    with pytest.raises(ValueError, match="sampler_shift must be positive"):
        with_overrides(SMOKE_RECIPE, ["sampler_shift=0"])

    example = torch.load(root / "work" / "latents.pt", weights_only=False)[0]
    modules = dit_modules(config)
    seen = []
    forward = type(modules["dit"]).forward

    def recording(self, x, t, *args, **kwargs):
        seen.append(float(t))
        return forward(self, x, t, *args, **kwargs)

    monkeypatch.setattr(type(modules["dit"]), "forward", recording)
    for step in range(12):
        dit_step(modules, example, config, recipe, 20, *step_rngs(0, "dit", step))
    assert set(seen) == {1000.0, 750.0, 500.0}


@needs_espeak
@pytest.mark.slow
def test_a_dit_of_another_width_and_depth_is_trained_recorded_and_served(smoke_run, tmp_path):
    import shutil

    from avatar_backend.generator.config import weights_config

    root, manifest = smoke_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work, ignore=shutil.ignore_patterns("dit.ckpt", "control.ckpt", "recipe.json"))
    recipe = with_overrides(SMOKE_RECIPE, ["dit_dim=64", "dit_layers=2"])
    narrow = main_run(work, tmp_path / "weights", recipe)
    dit = narrow["config"]["dit"]
    assert (dit["dim"], dit["num_heads"], dit["ffn_dim"], dit["num_layers"]) == (64, 2, 128, 2)
    assert narrow["parameters"] < manifest["parameters"]
    weights = tmp_path / "weights" / "tiny.safetensors"
    trained = weights_config(weights)
    assert trained.dit == ModelConfig.from_dict(narrow["config"]).dit
    # Served as `serve --weights` serves them, under the config's name: the DiT of the shape they were trained at.
    pipeline = LiveActPipeline.from_config("tiny", weights=weights)
    assert not pipeline.random_weights and len(pipeline.dit.blocks) == 2
    assert pipeline.config.dit == trained.dit
    with pytest.raises(ValueError, match="multiple of the tiny config's head width 32"):
        main_run(tmp_path / "other", tmp_path / "weights2", with_overrides(SMOKE_RECIPE, ["dit_dim=100"]))
    assert not (tmp_path / "other").exists()


def test_the_command_writes_over_the_shipped_weights_only_when_it_runs_the_shipped_recipe(monkeypatch, tmp_path,
                                                                                          capsys):
    import model.train.__main__ as command

    runs = []
    monkeypatch.setattr(command, "main_run",
                        lambda work, out, recipe, stop_after=None: runs.append((work, out, recipe)))
    monkeypatch.chdir(tmp_path)
    for argv in ([], ["--recipe", "smoke"], ["--set", "vae_hand_crops=0.25"], ["--seed", "7", "--work", "mine"],
                 ["--recipe", "short"], ["--recipe", "bf16"]):
        assert command.main(argv) == 0
    assert [(work, out) for work, out, _ in runs] == [
        (Path("runs/tiny"), command.SHIPPED_WEIGHTS), (Path("runs/smoke"), Path("runs/smoke/weights")),
        (Path("runs/tiny"), Path("runs/tiny/weights")), (Path("mine"), Path("mine/weights")),
        (Path("runs/short"), Path("runs/short/weights")), (Path("runs/bf16"), Path("runs/bf16/weights"))]
    # The 90-minute recipe is the shipped one with every stage's steps cut, nothing else changed.
    short, tiny = runs[4][2].to_dict(), TINY_RECIPE.to_dict()
    assert {key for key in tiny if short[key] != tiny[key]} == {
        "vae_steps", "decoder_scratch_steps", "decoder_steps", "dit_steps", "control_steps"}
    assert all(short[key] < tiny[key] for key in ("vae_steps", "decoder_scratch_steps", "dit_steps"))
    # The bf16 one cuts fewer steps, keeps the decoder stage's, and computes its VAE stages in bf16 where the CPU
    # has bf16 units.
    bf16 = runs[5][2].to_dict()
    assert {key for key in tiny if bf16[key] != tiny[key]} == {
        "vae_precision", "vae_steps", "decoder_scratch_steps", "dit_steps", "control_steps"}
    assert bf16["vae_precision"] == "auto"
    assert all(short[key] < bf16[key] < tiny[key] for key in ("vae_steps", "decoder_scratch_steps", "dit_steps"))
    # Clips too short for the recipe's blocks: refused by name before any work, not after the VAE stages.
    with pytest.raises(SystemExit):
        command.main(["--recipe", "smoke", "--set", "clip_seconds=5"])
    assert "100 frames at 20 fps: too few for dit_blocks=4 (117 frames)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--recipe", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
    assert len(runs) == 6


@needs_espeak
@pytest.mark.slow
def test_cached_latents_are_weighted_by_the_current_recipe(smoke_run):
    from avatar_backend.generator.vae import WanVAE
    from model.train.clips import dataset_fps, load_clips
    from model.train.dit_stage import example_weight
    from model.train.run import encode_examples

    root, manifest = smoke_run
    config = ModelConfig.from_dict(manifest["config"])
    data = root / "work" / "data"
    clips = load_clips(data)[: SMOKE_RECIPE.dit_clips]
    cached = torch.load(root / "work" / "latents.pt", weights_only=False)
    recipe = with_overrides(SMOKE_RECIPE, ["hand_weight=8"])
    examples = encode_examples(root / "work" / "latents.pt", WanVAE(config.vae), clips, config, recipe,
                               dataset_fps(data))
    assert any((clip.truth["hand"][:, 0] >= 0).any() for clip in clips)  # the smoke clips show a hand
    for example, before, clip in zip(examples, cached, clips, strict=True):
        assert torch.equal(example.latents, before.latents)             # read back, not encoded again
        assert torch.equal(example.weight, example_weight(clip, config, recipe))
        shows_hand = bool((clip.truth["hand"][: 1 + 4 * (example.latents.shape[2] - 1), 0] >= 0).any())
        assert torch.equal(example.weight, before.weight) != shows_hand


@needs_espeak
@pytest.mark.slow
def test_compiled_blocks_train_with_the_gradients_of_eager_blocks(smoke_run, capsys):
    """The recipe compiles the DiT's blocks for its DiT and control stages; the benchmark of that step runs both
    on a run's clips, and every gradient of a Neighbor-Forcing step (4 blocks, the ConvKV cache threaded
    through, compression included) must be the eager one to float rounding."""
    from model.train import bench

    root, _ = smoke_run
    assert bench.main(["--work", str(root / "work"), "--steps", "3", "--first", "1",
                       "--out", str(root / "bench.json")]) == 0
    report = json.loads((root / "bench.json").read_text())
    assert report["from_checkpoint"] and report["largest_gradient_difference"] < 1e-3
    assert report["eager_median_s"] > 0 and report["compiled_median_s"] > 0
    assert "speed-up" in capsys.readouterr().out


def test_a_run_recorded_before_a_recipe_field_existed_continues_under_its_default(tmp_path):
    from model.train.run import claim_work_folder

    claim_work_folder(tmp_path, SMOKE_RECIPE)
    recorded = json.loads((tmp_path / "recipe.json").read_text())
    del recorded["sampler_shift"]                       # a run from before the shift could be set
    (tmp_path / "recipe.json").write_text(json.dumps(recorded))
    claim_work_folder(tmp_path, SMOKE_RECIPE)           # it ran at the default, 5: the same recipe
    with pytest.raises(RecipeMismatch, match="sampler_shift 5.0 there, 1.0 here"):
        claim_work_folder(tmp_path, with_overrides(SMOKE_RECIPE, ["sampler_shift=1"]))


def test_a_checkpoint_of_other_shapes_is_refused_by_name(tmp_path):
    def stage(width):
        module = torch.nn.Linear(width, 2)
        return ResumableStage("decoder", tmp_path, {"vae": module}, torch.optim.Adam(module.parameters()), total=1,
                              seed=0, peak_lr=1e-3, warmup=0, checkpoint_every_s=0.0)

    stage(4).save()
    assert stage(4).resume()
    with pytest.raises(RecipeMismatch, match="decoder.ckpt holds a vae of other shapes than the config's"):
        stage(3).resume()


def test_the_decoder_motion_term_scores_steps_between_frames_not_a_steady_error():
    from model.train.vae_stage import motion_error

    clip = torch.linspace(-1, 1, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, 4, 4)      # a smooth fade
    weight = torch.ones(1, 1, 9, 4, 4)
    held = clip + 0.5                                                              # off by a steady colour
    stepped = clip.clone()
    stepped[:, :, 1:5] = clip[:, :, 1:2]                                           # frozen within each latent's
    stepped[:, :, 5:9] = clip[:, :, 5:6]                                           # four frames, then a jump
    assert motion_error(held - clip, weight).item() == pytest.approx(0.0, abs=1e-7)
    assert motion_error(stepped - clip, weight).item() > 0.1
    # Weighting the latent boundaries up scores the jump into frame 5 more than the drift inside the latents.
    assert motion_error(stepped - clip, weight, boundary_weight=4).item() > motion_error(stepped - clip, weight).item()
    # The L1 of the steady error is the larger one: the term tells apart what the frame error does not.
    assert (held - clip).abs().mean() > (stepped - clip).abs().mean()


def test_a_run_stopped_by_ctrl_c_mid_step_continues_with_exactly_the_steps_it_would_have_taken(tmp_path):
    def run(work, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        stage = ResumableStage("vae", work, {"m": model}, optimizer, total=60, seed=3, peak_lr=0.01, warmup=2,
                               checkpoint_every_s=0.0)
        resumed_from = stage.step if stage.resume() else None

        def step(index, rng, generator):
            x = torch.randn(5, 4, generator=generator)
            loss = (model(x) - float(rng.normal())).square().mean()
            if index == stop_at:
                os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C between the forward and the backward pass
            loss.backward()
            return {"loss": loss.item()}

        try:
            stage.run(step)
        except KeyboardInterrupt:
            pass
        return model.weight.detach().clone(), stage.step, resumed_from, stage.history

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, steps, _, history = run(tmp_path / "a")
    stopped, stopped_at, _, _ = run(tmp_path / "b", stop_at=30)
    resumed, steps_b, resumed_from, resumed_history = run(tmp_path / "b")
    # The step Ctrl-C fell in was finished and saved; the continued run took the rest.
    assert (steps, stopped_at, resumed_from, steps_b) == (60, 31, 31, 60)
    assert not torch.equal(stopped, straight)
    assert torch.equal(resumed, straight)
    # The loss averages the history records carried over the stop as well (its wall times differ).
    def losses(lines):
        return [{key: value for key, value in line.items() if key != "seconds"} for line in lines]

    assert [line["step"] for line in history] == [50, 60] and losses(resumed_history) == losses(history)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # Ctrl-C behaves as before once done


def test_a_second_training_run_in_one_process_logs_only_into_its_own_file(tmp_path):
    setup_logging(tmp_path / "first.log")
    log.info("first run")
    setup_logging(tmp_path / "second.log")
    log.info("second run")
    assert "second run" not in (tmp_path / "first.log").read_text()
    assert "first run" not in (tmp_path / "second.log").read_text()
    assert (tmp_path / "second.log").read_text().count("second run") == 1


def test_a_block_is_prompted_with_the_events_that_reached_the_worker_before_it_was_planned():
    """Serving plans a block once its audio has arrived, so an event during the block already applies to it."""
    import numpy as np

    from avatar_backend.generator.config import get_config
    from model.data.prompts import BlockPrompt
    from model.train.clips import TrainingClip, prompts_for_blocks
    from model.train.dit_stage import stream_plans

    plans = stream_plans(get_config("tiny"), 4)     # at 20 fps: frames 0-21, 21-53, 53-85, 85-117
    assert [(p.video_start, p.video_end) for p in plans] == [(0, 21), (21, 53), (53, 85), (85, 117)]
    events = [
        {"time": 0.0, "kind": "emotion", "name": "neutral", "intensity": 0.4, "on": False},
        {"time": 2.4, "kind": "emotion", "name": "angry", "intensity": 0.8, "on": False},    # late in block 1
        {"time": 2.8, "kind": "action", "name": "nod", "intensity": 1.0, "on": False},       # inside block 2,
        {"time": 3.0, "kind": "action", "name": "wave", "intensity": 1.0, "on": False},      # the later one shows
        {"time": 4.5, "kind": "listening", "name": "", "intensity": 1.0, "on": True},        # block 3 is silent
    ]
    entry = {"speech": {"spans": [[0.2, 4.0]]}, "events": events}
    clip = TrainingClip(np.zeros((117, 8, 8, 3), np.uint8), np.zeros(16000 * 6, np.float32), {}, entry)
    assert prompts_for_blocks(clip, plans, 20) == [
        BlockPrompt(None), BlockPrompt("angry", 0.8), BlockPrompt("wave"), BlockPrompt("listening")]
    # The worker's rule for the two actions: both sent before a block is planned, the later one prompts it.
    from stand_in_generator import StandInGenerator

    from avatar_backend.worker.scheduler import Scheduler
    from model.data.prompts import ACTION_PROMPTS

    generator = StandInGenerator(get_config("tiny"))
    scheduler = Scheduler(generator, clock=lambda: 0.0)
    scheduler.open_session("s", "npc", generator.new_memory("npc", "villager", 64, 64, 20, seed=0), conditioning=None)
    scheduler.start_action("s", ACTION_PROMPTS["nod"])
    scheduler.start_action("s", ACTION_PROMPTS["wave"])
    scheduler.push_voice("s", np.full(16000 * 3, 0.1, np.float32))
    scheduler.end_of_utterance("s")
    assert scheduler.next_block().prompt == ACTION_PROMPTS["wave"]


@pytest.mark.parametrize("seed", range(6))
def test_the_evaluation_of_timed_events_prompts_each_block_as_the_worker_does(seed):
    """A clip's emotions and actions, timed to its voice and sent to the worker's scheduler before the whole voice
    at once (a TTS flow), give its blocks the prompts and intensities the evaluation's ``--events timed`` drives
    the generator with."""
    import numpy as np
    from stand_in_generator import StandInGenerator

    from avatar_backend.generator.config import get_config
    from avatar_backend.worker.scheduler import Scheduler
    from model.data.dataset import random_events
    from model.data.prompts import ACTION_PROMPTS, EMOTION_PROMPTS
    from model.train.clips import TrainingClip, prompts_for_blocks, timed_prompts_for_blocks
    from model.train.dit_stage import stream_plans

    seconds, rate, fps = 12.0, 16_000, 20
    events = [e.to_dict() for e in random_events(np.random.default_rng(seed), seconds, [(0.0, seconds)])
              if e.kind != "listening"]
    config = get_config("tiny")
    plans = stream_plans(config, 7)
    clip = TrainingClip(np.zeros((plans[-1].video_end, 8, 8, 3), np.uint8), np.zeros(int(seconds * rate), np.float32),
                        {}, {"speech": {"spans": [[0.0, seconds]]}, "events": events})
    expected = [(p.prompt, p.intensity) for p in timed_prompts_for_blocks(clip, plans, fps)]

    generator = StandInGenerator(config)
    scheduler = Scheduler(generator, clock=lambda: 0.0)
    memory = generator.new_memory("npc", "villager", 64, 64, fps, seed=0)
    scheduler.open_session("s", "npc", memory, conditioning=None)
    for event in events:
        at_voice = round(event["time"] * rate)
        if event["kind"] == "emotion":
            neutral = event["name"] == "neutral"
            scheduler.set_prompt("s", None if neutral else EMOTION_PROMPTS[event["name"]],
                                 1.0 if neutral else event["intensity"], at_voice=at_voice)
        else:
            scheduler.start_action("s", ACTION_PROMPTS[event["name"]], at_voice=at_voice)
    scheduler.push_voice("s", clip.audio)
    scheduler.end_of_utterance("s")
    served = []
    for _ in plans:
        plan = scheduler.next_block()
        generator.generate_block(memory, None, plan.audio, plan.prompt, intensity=plan.intensity)
        scheduler.complete_block(plan)
        served.append((plan.prompt, plan.intensity))
    assert served == expected
    # Sent live instead (the evaluation's default), an event in a block's second half shows from that block.
    assert expected != [(p.prompt, p.intensity) for p in prompts_for_blocks(clip, plans, fps)]
