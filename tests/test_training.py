import json
import math
from dataclasses import replace

import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.errors import ConfigError
from pix2pix.model.export import CONFIG_FILE, CheckpointError
from pix2pix.model.palette import RECIFE_PALETTE
from pix2pix.training.schedule import EpochSchedule, linear_decay
from pix2pix.training.step import (
    Pix2Pix,
    TrainConfig,
    balance_warning,
    default_recipe,
    load_scaler_state,
    sample_grid,
)
from tests.conftest import load_job

TINY = TrainConfig(image_size=64, ngf=8, ndf=8, epochs=2, epochs_decay=2, batch_size=2, precision="fp32")


def batch(seed=0, n=2, size=64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8),
            torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8))


def test_train_step_moves_both_networks_and_returns_finite_losses():
    model = Pix2Pix(TINY)
    g_before = [p.detach().clone() for p in model.generator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    parts = model.train_step(*batch())
    assert set(parts) == {"G_GAN", "G_L1", "D_real", "D_fake"}
    assert all(math.isfinite(float(v)) for v in parts.values())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert all(p.requires_grad for p in model.discriminator.parameters())  # unfrozen after the G step
    assert model.step == 1


def test_l1_falls_when_fitting_one_pair():
    model = Pix2Pix(TrainConfig(image_size=64, ngf=8, ndf=8, batch_size=1, precision="fp32", dropout=0.0))
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    source = torch.stack([ramp.expand(64, 64), ramp.expand(64, 64).T, 255 - ramp.expand(64, 64)])[None]
    target = 255 - source  # a learnable mapping
    first = float(model.train_step(source, target)["G_L1"])
    for _ in range(40):
        last = float(model.train_step(source, target)["G_L1"])
    assert last < 0.8 * first


def test_linear_decay_matches_the_paper_schedule():
    factor = linear_decay(epochs=100, epochs_decay=100)
    assert factor(0) == 1.0 and factor(99) == 1.0
    assert factor(100) == pytest.approx(1 - 1 / 101)
    assert factor(199) == pytest.approx(1 - 100 / 101)
    model, schedule = Pix2Pix(TINY), EpochSchedule(TINY.epochs, TINY.epochs_decay)
    rates = []
    while not schedule.done(model):
        model.set_learning_rate_factor(schedule.lr_factor(model))
        rates.append(model.learning_rate)
        model.end_epoch()
    assert len(rates) == 4 and rates[:2] == [2e-4, 2e-4] and rates[2] < 2e-4 and rates[3] < rates[2]


def test_state_round_trip_resumes_identically(tmp_path):
    model = Pix2Pix(TINY)
    model.train_step(*batch(1))
    model.end_epoch()
    location = storage.resolve(str(tmp_path))
    checkpoint.save_training_state(model.state_dict(), location)
    restored = Pix2Pix(TINY)
    restored.load_state_dict(checkpoint.load_training_state(location))
    assert (restored.epoch, restored.step) == (1, 1) and restored.learning_rate == model.learning_rate
    torch.manual_seed(5)
    a = model.train_step(*batch(2))
    torch.manual_seed(5)
    b = restored.train_step(*batch(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for p, q in zip(model.generator.parameters(), restored.generator.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("network, widths", [("generator", {"ngf": 16}), ("discriminator", {"ndf": 16})])
def test_resuming_with_another_architecture_is_refused(network, widths):
    state = Pix2Pix(TINY).state_dict()
    other = TrainConfig(**{**TINY.to_dict(), **widths})
    with pytest.raises(ConfigError, match=f"checkpoint's {network} .* differs from the requested .*--ndf"):
        Pix2Pix(other).load_state_dict(state)


def test_invalid_configs_fail_with_a_clear_message():
    with pytest.raises(ConfigError, match="the image size must be between 1 and 4096, got 8192"):
        replace(TINY, image_size=8192).validate()
    with pytest.raises(ConfigError, match="not a multiple"):
        TrainConfig(image_size=96, depth=6).validate()
    with pytest.raises(ConfigError, match="at least 1"):
        TrainConfig(epochs=0, epochs_decay=0).validate()
    with pytest.raises(ConfigError, match="flips must be one of horizontal, square, not 'vertical'"):
        TrainConfig(flips="vertical").validate()
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Pix2Pix(TrainConfig(image_size=64, ngf=8, ndf=8, precision="fp16"))


def test_default_depth_follows_image_size():
    assert TrainConfig(image_size=256).generator_depth == 8
    assert TrainConfig(image_size=128).generator_depth == 7
    assert TrainConfig(image_size=512).generator_depth == 8
    assert TrainConfig(image_size=256, crop_size=128).generator_depth == 7  # what training sees


def test_training_on_crops_then_translating_whole_images():
    model = Pix2Pix(replace(TINY, crop_size=32))
    losses = model.train_step(*batch(size=32))
    assert all(torch.isfinite(value) for value in losses.values())
    assert model.translate(batch(size=64)[0]).shape == (2, 3, 64, 64)
    for bad, message in ((96, "between 1 and the image size"), (24, "crop size 24 is not a multiple of 2\\^4")):
        with pytest.raises(ConfigError, match=message):
            replace(TINY, crop_size=bad).validate()


def test_translate_is_deterministic_in_eval_mode():
    model = Pix2Pix(TINY)
    source, _ = batch()
    assert torch.equal(model.translate(source), model.translate(source))


def test_balance_warning():
    fine = {"G_GAN": 0.9, "G_L1": 0.3, "D_real": 0.6, "D_fake": 0.6}
    d_wins = {"G_GAN": 6.0, "G_L1": 0.3, "D_real": 0.01, "D_fake": 0.01}
    assert balance_warning([fine, fine]) is None
    assert balance_warning([d_wins]) is None  # one epoch is not a trend
    assert "discriminator is winning" in balance_warning([fine, d_wins, d_wins])
    g_wins = {"G_GAN": 0.1, "G_L1": 0.3, "D_real": 0.5, "D_fake": 3.5}
    assert "generator is winning" in balance_warning([g_wins, g_wins])


def test_train_job_recipes_and_their_overrides():
    job = load_job("train")
    args = job.parse_args([])
    assert job.train_config(args, False, "paper") == TrainConfig()
    compact = TrainConfig(ngf=32, ndf=16, lr=4e-4, palette_weight=3.0, upsample="resize")
    assert job.train_config(args, False, "compact") == compact
    demo = job.train_config(args, True, "compact")
    assert (demo.image_size, demo.ngf, demo.lr) == (128, 32, 4e-4)
    overridden = job.train_config(job.parse_args(["--ngf", "48", "--lr", "1e-3"]), False, "compact")
    assert (overridden.ngf, overridden.ndf, overridden.lr) == (48, 16, 1e-3)
    assert default_recipe(use_gpu=True) == "paper" and default_recipe(use_gpu=False) == "compact"
    # On GPUs: batch 16 and the recipe's lr x sqrt(16) unless chosen; the CPU defaults are unchanged.
    gpu = job.train_config(args, False, "paper", gpu=True)
    assert (gpu.batch_size, gpu.lr) == (16, 8e-4) and gpu.ngf == 64
    chosen = job.train_config(job.parse_args(["--batch-size", "4"]), False, "paper", gpu=True)
    assert (chosen.batch_size, chosen.lr) == (4, 2e-4)  # a chosen batch keeps the recipe's lr
    assert job.train_config(job.parse_args(["--lr", "5e-4"]), False, "compact", gpu=True).lr == 5e-4
    assert job.train_config(args, False, "compact", gpu=False) == compact


def test_bf16_training_step_on_the_cpu():
    # --precision auto picks bf16 on CPUs with AMX or AVX512-BF16; elsewhere autocast emulates it (slowly)
    model = Pix2Pix(TrainConfig(image_size=64, ngf=8, ndf=8, batch_size=2, precision="bf16"))
    parts = [model.train_step(*batch(seed)) for seed in range(3)]
    assert model.precision == "bf16" and all(math.isfinite(float(v)) for p in parts for v in p.values())
    assert model.translate(batch()[0]).dtype == torch.float32


def test_an_fp16_run_resumes_from_a_checkpoint_with_no_scaler_state():
    # a bf16, fp32 or CPU checkpoint saves the disabled scalers' empty state
    empty = Pix2Pix(TINY).state_dict()["scaler_g"]
    assert empty == {}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled, as an fp16 run's
    with pytest.raises(RuntimeError):
        scaler.load_state_dict(empty)  # what resuming did before
    load_scaler_state(scaler, empty)
    assert scaler.get_scale() == 1024.0  # a fresh scale
    # and a real fp16 scaler state round-trips: the GradScaler path steps, skips on inf, rescales
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for loss_factor in (1.0, math.inf):
        optimizer.zero_grad()
        scaler.scale((weight * loss_factor).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 512.0 and torch.allclose(weight, torch.full((3,), 0.9))  # the inf step skipped
    resumed = torch.amp.GradScaler("cpu")
    load_scaler_state(resumed, scaler.state_dict())
    assert resumed.get_scale() == 512.0


def test_the_sample_grid_runs_in_the_core():
    model = Pix2Pix(TINY)
    source, target = batch(n=3)
    grid = sample_grid(model, source.numpy(), target.numpy())
    assert grid.size == (3 * 64 + 2 * 4, 3 * 64 + 2 * 4)  # source | generated | target, 3 rows, 4 px gaps


def test_train_job_checkpoint_and_validation_intervals(capsys):
    job = load_job("train")
    args = job.parse_args([])
    assert job.epoch_intervals(args, use_gpu=False) == {"checkpoint_every": 1, "checkpoint_minutes": None,
                                                        "validate_every": 1}
    # GPU epochs take seconds: checkpoints by wall time, validation every 5 epochs
    assert job.epoch_intervals(args, use_gpu=True) == {"checkpoint_every": 1, "checkpoint_minutes": 10.0,
                                                       "validate_every": 5}
    given = job.parse_args(["--validate-every", "3", "--checkpoint-every", "4"])
    assert job.epoch_intervals(given, use_gpu=True) == {"checkpoint_every": 4, "checkpoint_minutes": None,
                                                        "validate_every": 3}
    by_time = job.parse_args(["--checkpoint-minutes", "2.5"])
    assert job.epoch_intervals(by_time, use_gpu=False)["checkpoint_minutes"] == 2.5
    with pytest.raises(SystemExit):
        job.parse_args(["--checkpoint-minutes", "2", "--checkpoint-every", "3"])
    with pytest.raises(SystemExit) as exit_:
        job.parse_args(["--validate-every", "0"])
    assert exit_.value.code == 2 and "--validate-every must be at least 1" in capsys.readouterr().err


def test_the_weight_average_is_what_validation_and_the_export_use_and_it_resumes(tmp_path):
    config = TrainConfig(image_size=64, ngf=8, ndf=8, batch_size=2, precision="fp32", ema_decay=0.99)
    model = Pix2Pix(config)
    for seed in range(3):
        model.train_step(*batch(seed))
    average, live = model.inference_generator, model.generator
    assert average is not live and not any(p.requires_grad for p in average.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(average.parameters(), live.parameters()))
    source = batch(7)[0]
    with torch.inference_mode():
        expected = average.eval()(model.prepare_inputs(source)).clamp(-1, 1)
    assert torch.equal(model.translate(source), expected)
    resumed = Pix2Pix(config)
    resumed.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed.inference_generator.parameters(), average.parameters()))
    # without a decay there is no average: the live generator is used
    plain = Pix2Pix(TINY)
    assert plain.generator_average is None and plain.inference_generator is plain.generator


def test_the_palette_term_trains_only_with_a_palette_and_reports_its_loss():
    from pix2pix.model.palette import RECIFE_PALETTE

    config = TrainConfig(image_size=64, ngf=8, ndf=8, batch_size=2, precision="fp32", palette_weight=2.0)
    assert "G_palette" not in Pix2Pix(config).train_step(*batch())  # no palette given: GAN + L1 only
    model = Pix2Pix(config, palette=RECIFE_PALETTE, class_weights=[1, 3, 1, 3, 1, 1, 1])
    parts = model.train_step(*batch())
    assert model.loss_names[-1] == "G_palette" and math.isfinite(float(parts["G_palette"]))
    assert model.palette_term.class_weights.tolist() == [1, 3, 1, 3, 1, 1, 1]


def test_checkpoints_that_recorded_the_retired_options_off_resume_and_load_the_rest_are_refused(tmp_path):
    """What the code before the retirement wrote: both options in every training configuration
    (off by default) and ``"palette": []`` in every export's generator config."""
    config = TrainConfig(image_size=64, ngf=8, ndf=8, precision="fp32")
    model = Pix2Pix(config)
    state = model.state_dict()
    assert not {"palette_output", "palette_iou_weight"} & set(state["config"])
    before = {**state, "config": {**state["config"], "palette_output": False, "palette_iou_weight": 0.0}}
    resumed = Pix2Pix(config)
    resumed.load_state_dict(before)
    assert torch.equal(resumed.generator.ups[-1][1].weight, model.generator.ups[-1][1].weight)
    for name, used in (("palette_output", True), ("palette_iou_weight", 3.0)):
        flag = "--" + name.replace("_", "-")
        with pytest.raises(ConfigError, match=f"this run used {flag}, which was retired"):
            Pix2Pix(config).load_state_dict({**state, "config": {**state["config"], name: used}})

    checkpoint.export_generator(model.generator, model.export_info(), storage.resolve(str(tmp_path)))
    written = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**written, "generator": {**written["generator"], "palette": []}}))
    loaded, _ = checkpoint.load_generator(str(tmp_path))
    source = batch()[0]
    with torch.inference_mode():
        assert torch.equal(loaded(model.prepare_inputs(source)), model.generator.eval()(model.prepare_inputs(source)))
    palette = [list(colour) for colour in RECIFE_PALETTE.values()]
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**written, "generator": {**written["generator"],
                                                                                 "palette": palette}}))
    with pytest.raises(CheckpointError, match=r"--palette-output\), which was retired"):
        checkpoint.load_generator(str(tmp_path))
