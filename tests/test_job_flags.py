"""The flags users have stay the same, and each reaches the library's options.

Each job's --help, as a user's terminal shows it at 100 columns, is compared with the copy in
tests/golden/. A change to a job's flags shows up here as a diff;
when it is meant, regenerate the copy and say so in the commit:

    for job in prepare train translate evaluate pack view; do
        COLUMNS=100 .venv/bin/python jobs/$job.py --help > tests/golden/$job.help; done
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from functools import partial

import pytest

from tests.conftest import REPO, concurrently, load_job

JOBS = ("prepare", "train", "translate", "evaluate", "pack", "view")


def job_help(job: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every job's --help, the jobs run all at once: job -> its run."""
    return dict(zip(JOBS, concurrently(*(partial(job_help, job) for job in JOBS))))


@pytest.mark.parametrize("job", JOBS)
def test_the_flags_of_each_job_stay_the_same(helps, job):
    completed = helps[job]
    assert completed.returncode == 0, completed.stderr[-2000:]
    golden = (REPO / "tests" / "golden" / f"{job}.help").read_text()
    diff = "".join(difflib.unified_diff(golden.splitlines(True), completed.stdout.splitlines(True),
                                        f"tests/golden/{job}.help", f"jobs/{job}.py --help"))
    assert not diff, "\n" + diff


def test_every_recipe_flag_reaches_the_training_configuration():
    """The recipe's flags are TrainConfig's fields: each one, given a value unlike its default,
    arrives in the configuration the job trains with."""
    from dataclasses import fields

    from pix2pix.training.step import TrainConfig

    job = load_job("train")
    chosen = {"epochs": 3, "epochs_decay": 4, "batch_size": 5, "lr": 0.01, "beta1": 0.25, "lambda_l1": 7.0,
              "image_size": 128, "crop_size": 64, "flips": "square", "norm": "batch", "ngf": 12, "ndf": 10,
              "depth": 6, "dropout": 0.25, "precision": "fp16", "channels_last": False, "seed": 9,
              "upsample": "resize", "ema_decay": 0.9, "palette_weight": 2.0, "palette_temperature": 0.5,
              "palette_balance": 2.0}
    assert set(chosen) == {field.name for field in fields(TrainConfig)}
    argv = ["--data", "/d", "--palette", "recife"]
    for name, value in chosen.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    config = job.train_config(job.parse_args(argv), demo=False, recipe="paper")
    assert {name: getattr(config, name) for name in chosen} == chosen
    # Not given: the recipe's values, then the dataclass's.
    plain = job.train_config(job.parse_args(["--data", "/d"]), demo=False, recipe="compact")
    assert (plain.ngf, plain.ndf, plain.lr, plain.beta1, plain.channels_last) == (32, 16, 4e-4, 0.5, None)


def test_every_evaluate_flag_reaches_the_evaluate_options():
    job = load_job("evaluate")
    options = job.evaluate_options(job.parse_args([
        "--data", "/d", "--checkpoint", "/c", "--split", "test", "--palette", "recife", "--batch-size", "3",
        "--precision", "fp32", "--threads", "2", "--grid", "g.png", "--grid-count", "4", "--limit", "5",
        "--seed", "6", "--source-dir", "a", "--target-dir", "b"]))
    assert (options.data, options.checkpoint, options.split, options.palette) == ("/d", "/c", "test", "recife")
    assert (options.batch_size, options.precision, options.threads) == (3, "fp32", 2)
    assert (options.grid, options.grid_count, options.limit, options.seed) == ("g.png", 4, 5, 6)
    assert (options.source_dir, options.target_dir, options.paper_mode) == ("a", "b", False)
    demo = job.evaluate_options(job.parse_args(["--paper-mode", "--grid-count", "0"]))
    assert demo.paper_mode and demo.grid is None and demo.batch_size == 8 and demo.checkpoint.endswith("/runs/demo")
