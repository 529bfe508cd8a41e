"""Ray Train end to end: DDP on 2 CPU workers, a budget, crash recovery, DDP equivalence.
A two-worker run against S3 (data, checkpoints and export there, the export equal to the
training state at epoch 2): tests/reliability/test_train_chaos.py, through S3 faults and a killed
worker. `ray job submit` of the training job: tests/test_autoscaling.py (and test_cluster.py's
remote submission)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix import checkpoint, storage
from pix2pix.model.export import CheckpointError
from pix2pix.model.networks import UNetGenerator
from pix2pix.training.step import Pix2Pix, TrainConfig
from tests.conftest import REPO, concurrently

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY = TrainConfig(image_size=64, ngf=8, ndf=8, epochs=1, epochs_decay=1, batch_size=2, precision="fp32")


def write_pairs(root: Path, count: int, size: int = 64) -> None:
    """Small paired folders: a smooth 'aerial' image and its 2-colour 'map'."""
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(2, count // 4))):
        for i in range(n):
            field = rng.normal(size=(size // 8, size // 8))
            field = np.kron(field, np.ones((8, 8)))
            aerial = np.stack([field * 40 + 100, field * 30 + 120, 90 - field * 20], -1).clip(0, 255)
            labels = np.where(field[..., None] > 0, [0, 255, 0], [0, 127, 255])
            for folder, array, ext in (("sat", aerial, "jpg"), ("map", labels, "png")):
                path = root / split / folder / f"{i:04d}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array.astype(np.uint8)).save(path)


def job_config(data_uri, train=TINY, **options):
    from pix2pix.distributed.train import JobConfig

    return JobConfig(train=train, data_uri=data_uri, threads=1, **options)


def two_cpu_workers():
    from pix2pix.distributed.train import TrainResources

    return TrainResources(num_workers=2, use_gpu=False, cpus_per_worker=0.5, threads=1)


def assert_export_reproduces_training_state(run_uri: str, checkpoint_path: str, weights: str = "generator"):
    exported, info = checkpoint.load_generator(run_uri)
    state = checkpoint.load_training_state(storage.resolve(checkpoint_path))
    trained = UNetGenerator(info.generator)
    trained.load_state_dict(state[weights])
    trained.eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported(x), trained(x))
    return info, state


def test_worker_crash_resumes_from_the_latest_checkpoint(prepared_dataset, tmp_path):
    from pix2pix.distributed.train import fit
    from tests.step_hooks import CrashOnce

    steps_per_epoch = 16 // (2 * 2)
    config = job_config(prepared_dataset, on_step=CrashOnce(steps_per_epoch + 1, str(tmp_path / "crashed")))
    result = fit(config, two_cpu_workers(), str(tmp_path / "runs"), "crash", max_failures=1)
    assert result.error is None
    assert (tmp_path / "crashed").exists()  # the worker really died once
    # the second attempt started from the epoch-1 checkpoint, not from scratch
    assert result.metrics["resumed_from_epoch"] == 1
    assert result.metrics["epoch"] == 2 and result.metrics["step"] == 2 * steps_per_epoch


def record_ddp_steps(job: dict) -> None:
    """A worker loop built from the production pieces that records what each rank saw."""
    import ray.train
    import ray.train.torch

    from pix2pix.model.precision import set_threads
    from pix2pix.training.shards import TrainingPairs, find_shards

    set_threads(1)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    model = Pix2Pix(job["train"], "cpu", wrap=ray.train.torch.prepare_model)
    initial = {k: v.clone() for k, v in model.generator.state_dict().items()}
    pairs = TrainingPairs(job["data"], find_shards(job["data"])[0], 64, 2, seed=0, rank=rank,
                          world_size=context.get_world_size())
    batches = []
    for batch in pairs.epoch(0):
        source, target = batch["source"], batch["target"]
        batches.append((source.clone(), target.clone()))
        model.train_step(source, target)
    torch.save({"batches": batches, "initial": initial, "generator": model.generator.state_dict(),
                "discriminator": model.discriminator.state_dict()}, os.path.join(job["out"], f"rank{rank}.pt"))
    ray.train.report({"steps": len(batches)})


def test_ddp_matches_one_process_on_the_combined_batches(prepared_dataset, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    # depth 4: no 1x1 bottleneck, whose instance norm would leave kernel weights without gradient
    train = TrainConfig(image_size=64, ngf=8, ndf=8, depth=4, batch_size=2, precision="fp32", dropout=0.0)
    trainer = TorchTrainer(
        record_ddp_steps, train_loop_config={"train": train, "out": str(tmp_path), "data": prepared_dataset},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="equivalence", storage_path=str(tmp_path / "runs")),
    )
    assert trainer.fit().error is None
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    steps = len(ranks[0]["batches"])
    assert steps == len(ranks[1]["batches"]) >= 3
    for (s0, _), (s1, _) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert not torch.equal(s0, s1)  # the workers read different shards
    for name, value in ranks[0]["generator"].items():
        assert torch.equal(value, ranks[1]["generator"][name]), name  # identical on both workers
    moved = max((ranks[0]["generator"][k] - ranks[0]["initial"][k]).abs().max() for k in ranks[0]["initial"])
    assert moved > 1e-4  # Adam moves a weight by about lr = 2e-4 per step

    single = Pix2Pix(train, "cpu")
    single.generator.load_state_dict(ranks[0]["initial"])
    for (s0, t0), (s1, t1) in zip(ranks[0]["batches"], ranks[1]["batches"]):
        single.train_step(torch.cat([s0, s1]), torch.cat([t0, t1]))
    for module, saved in ((single.generator, ranks[0]["generator"]), (single.discriminator, ranks[0]["discriminator"])):
        # A bias right before an instance norm has zero gradient in exact arithmetic; Adam turns
        # its rounding noise into full-size steps, so it differs between any two summation
        # orders without changing any output. The same can hit single weights whose true
        # gradient is near zero, so those may differ by at most Adam's step bound (lr per step).
        cancelled = biases_cancelled_by_instance_norm(module)
        assert cancelled  # the exclusion is about real tensors
        compared = differing = 0
        for name, value in module.state_dict().items():
            if name in cancelled:
                continue
            difference = (value - saved[name]).abs()
            assert float(difference.max()) <= 2 * train.lr * steps, name
            compared += difference.numel()
            differing += int((difference > 1e-5 + 1e-4 * saved[name].abs()).sum())
        assert differing <= 0.001 * compared, f"{differing} of {compared} weights differ"
    distributed = UNetGenerator(train.generator_config()).eval()
    distributed.load_state_dict(ranks[0]["generator"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(single.generator.eval()(x), distributed(x), atol=1e-4)


def biases_cancelled_by_instance_norm(module: torch.nn.Module) -> set[str]:
    names = set()
    for prefix, child in module.named_modules():
        if isinstance(child, torch.nn.Sequential):
            layers = list(child)
            for i, (layer, following) in enumerate(zip(layers, layers[1:])):
                if isinstance(following, torch.nn.InstanceNorm2d) and getattr(layer, "bias", None) is not None:
                    names.add(f"{prefix}.{i}.bias".lstrip("."))
    return names


def run_job(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


BAD_INPUT = [
    (["--data", "gs://bucket/data"], "unsupported URI scheme 'gs'"),
    (["--data", "/nonexistent/data"], "dataset not found"),
    (["--data", "/tmp", "--image-size", "100", "--depth", "6"], "image size 100 is not a multiple"),
    (["--epochs", "-1"], "epochs must be >= 0"),
]
MISUSED_FLAGS = (["--learning-rate", "1"], ["--max-pairs", "10", "--decay-fraction", "0"], ["--decay-fraction", "0.25"])


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[tuple, subprocess.CompletedProcess]:
    """The job run once per case of the two tests below, all at once (each run is mostly the
    job's start-up): tuple(args) or "empty dataset" -> its run."""
    empty = tmp_path_factory.mktemp("empty-dataset")
    (empty / "train").mkdir()
    runs = {tuple(args): args for args in [args for args, _ in BAD_INPUT] + list(MISUSED_FLAGS)}
    runs["empty dataset"] = ["--data", str(empty)]
    return dict(zip(runs, concurrently(*(partial(run_job, *args) for args in runs.values()))))


@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_is_one_line_and_nonzero(cli_runs, args, message):
    completed = cli_runs[tuple(args)]
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_empty_dataset_and_unknown_flag(cli_runs):
    empty = cli_runs["empty dataset"]
    assert empty.returncode == 1 and "no training shards" in empty.stderr
    unknown, no_fraction, no_budget = (cli_runs[tuple(args)] for args in MISUSED_FLAGS)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert no_fraction.returncode == 2 and no_fraction.stderr.strip().splitlines() == [
        "train.py: error: the decay fraction must be in (0, 1], not 0 (see --help)"]
    assert no_budget.returncode == 2 and no_budget.stderr.strip().splitlines() == [
        "train.py: error: --decay-fraction needs --max-minutes or --max-pairs (the budget it shares out) (see --help)"]


def test_too_few_pairs_for_one_batch_per_worker(prepared_dataset, tmp_path):
    from pix2pix.distributed.train import fit
    from pix2pix.training.shards import DatasetError

    with pytest.raises(DatasetError) as raised:  # before any worker starts
        fit(job_config(prepared_dataset, train=replace(TINY, batch_size=9)), two_cpu_workers(), str(tmp_path), "few")
    assert str(raised.value) == "16 training pairs make no full batch per worker (2 workers x --batch-size 9)"



@pytest.mark.parametrize("widths, differs", [({"ngf": 16}, "ngf is 8, expected 16"),
                                             ({"ndf": 16}, "ndf is 8, expected 16")])
def test_resuming_another_architecture_is_refused_before_any_worker_starts(tmp_path, widths, differs):
    from pix2pix.distributed.train import check_resume

    model = Pix2Pix(TINY)
    directory = storage.resolve(str(tmp_path / "run" / "checkpoint_0001"))
    os.makedirs(directory.path)
    checkpoint.save_training_state(model.state_dict(), directory)
    checkpoint.export_generator(model.generator, model.export_info(), directory)
    assert check_resume(storage.resolve(str(tmp_path / "run")), TINY) == 0  # the saved epoch
    with pytest.raises(CheckpointError, match=f"cannot resume: .*{differs}.*--ndf"):
        check_resume(storage.resolve(str(tmp_path / "run")), replace(TINY, **widths))


def test_resuming_a_run_that_used_a_retired_option_is_refused_in_one_line(tmp_path):
    from pix2pix.distributed.train import check_resume

    model = Pix2Pix(TINY)
    directory = storage.resolve(str(tmp_path / "run" / "checkpoint_0001"))
    os.makedirs(directory.path)
    state = model.state_dict()
    checkpoint.save_training_state({**state, "config": {**state["config"], "palette_iou_weight": 3.0}}, directory)
    checkpoint.export_generator(model.generator, model.export_info(), directory)
    with pytest.raises(CheckpointError, match=r"^cannot resume .*checkpoint_0001: this run used --palette-iou-weight, "
                                              r"which was retired .*use another --name to start a new run$"):
        check_resume(storage.resolve(str(tmp_path / "run")), TINY)


def test_two_worker_run_with_a_pairs_budget_the_palette_term_and_a_weight_average(prepared_dataset, tmp_path):
    from pix2pix.distributed.train import JobConfig, fit
    from pix2pix.distributed.train_worker import read_history
    from pix2pix.model.palette import RECIFE_PALETTE
    from pix2pix.training.budget import Budget
    from pix2pix.training.schedule import BUDGET_SECONDS

    # 2 workers x batch 2 = 4 pairs a step, 4 steps an epoch: 24 pairs end in epoch 2, at step 6,
    # although the epoch schedule (1 + 1 epochs) would have stopped at step 8.
    train = replace(TINY, palette_weight=1.0, ema_decay=0.9)
    config = JobConfig(train=train, data_uri=prepared_dataset, threads=1, budget=Budget(max_pairs=24),
                       started_at=time.time(), palette=RECIFE_PALETTE)
    result = fit(config, two_cpu_workers(), str(tmp_path / "runs"), "budget")
    assert result.error is None
    history = read_history(str(tmp_path / "runs" / "budget"))
    assert [line["step"] for line in history] == [4, 6] and [line["pairs"] for line in history] == [16, 24]
    assert history[0]["lr"] == TINY.lr  # half the budget (12 pairs) passed at step 3: still constant
    assert history[-1]["lr"] == 0.0 and history[-1]["budget_used"] == 1.0
    for name in ("G_GAN", "G_L1", "G_palette", "D_real", "D_fake", "val_L1", "val_PSNR", "val_SSIM", "val_mIoU"):
        assert np.isfinite(history[-1][name]), name
    final = Path(result.checkpoint.path)
    assert {"generator.safetensors", "generator.json", "training_state.pt", "samples.png"} <= set(os.listdir(final))
    grid = Image.open(final / "samples.png")
    assert grid.width > 3 * 64 and grid.height >= 4 * 64  # source | generated | target for the 4 val pairs
    state = checkpoint.load_training_state(storage.resolve(result.checkpoint.path))
    assert state["step"] == 6 and state[BUDGET_SECONDS] > 0
    assert all(group["lr"] == 0.0 for group in state["optimizer_g"]["param_groups"])
    # the export is the weight average, with the palette it was trained on
    info, _ = assert_export_reproduces_training_state(str(tmp_path / "runs" / "budget"), str(final),
                                                      weights="generator_average")
    assert info.step == 6 and info.palette == RECIFE_PALETTE
