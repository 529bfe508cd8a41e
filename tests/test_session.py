"""How the jobs start or join Ray (pix2pix/distributed/session.py) and which of Ray Train's
helper actors a run leaves out (pix2pix/distributed/lean_trainer.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

TINY_TRAINING = ("--image-size", "64", "--ngf", "8", "--ndf", "8", "--epochs", "1", "--epochs-decay", "0",
                 "--batch-size", "2", "--precision", "fp32", "--threads", "1", "--max-failures", "0")
LEFT_OUT = {"PlacementGroupCleaner", "DatasetManager", "PreemptionWatcher"}
# What the job itself prints: rank 0's lines (forwarded with Ray's actor prefix) and its summary.
OWN_LINE = re.compile(r"^(\x1b\[\d+m)?\(RayTrainWorker pid=\d+\)(\x1b\[0m)? (epoch|palette term)|^\{\"run\"")


def callbacks(trainer) -> set[str]:
    return {type(callback).__name__ for callback in trainer._create_default_callbacks()}


def test_ray_trains_helpers_the_job_leaves_out_are_still_ray_trains_defaults():
    """Fails when Ray renames or stops creating them: then the job's filter would drop nothing."""
    import ray.train
    import ray.train.torch

    from pix2pix.distributed.lean_trainer import LeanTorchTrainer

    scaling = ray.train.ScalingConfig(num_workers=1)
    ray_defaults = callbacks(ray.train.torch.TorchTrainer(lambda: None, scaling_config=scaling))
    assert {"DatasetsCallback", "PlacementGroupCleanerCallback", "BackendSetupCallback"} <= ray_defaults
    on_cluster = callbacks(LeanTorchTrainer(lambda: None, scaling_config=scaling))
    assert on_cluster == ray_defaults - {"DatasetsCallback"}
    owned = callbacks(LeanTorchTrainer(lambda: None, scaling_config=scaling, owns_instance=True))
    assert owned == ray_defaults - {"DatasetsCallback", "PlacementGroupCleanerCallback"}


def test_only_an_unset_address_or_local_starts_an_instance():
    from pix2pix.distributed.session import starts_local_instance

    assert starts_local_instance("local")
    assert not starts_local_instance("127.0.0.1:6379")


def actors_started(temp_dir: Path) -> set[str]:
    """The actor classes of a Ray instance's session, from the names its workers log."""
    names = set()
    for log in temp_dir.glob("**/session_*/logs/worker-*.out"):
        names.update(re.findall(r"^:actor_name:(\w+)", log.read_text(errors="replace"), re.MULTILINE))
    return names


def without_ray_settings() -> dict:
    return {key: value for key, value in os.environ.items()
            if key not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_on_its_own_instance_starts_fewer_helpers_and_prints_only_its_own_lines(prepared_dataset, tmp_path):
    temp_dir = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**without_ray_settings(), "RAY_TMPDIR": str(temp_dir)}
    try:
        completed = subprocess.run(
            [sys.executable, "jobs/train.py", "--data", prepared_dataset, "--storage", str(tmp_path), "--name", "own",
             "--palette", "recife", *TINY_TRAINING], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        started = actors_started(temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = (completed.stdout + completed.stderr).splitlines()
    assert [line for line in lines if line.strip() and not OWN_LINE.search(line)] == []
    assert sum("epoch=1" in line for line in lines) == 1
    assert {"TrainController", "RayTrainWorker"} <= started, started
    assert started & LEFT_OUT == set(), started


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_job_that_joins_a_cluster_leaves_its_preemption_watcher_on(ray_session):
    import ray

    script = ("import json, os; from pix2pix.distributed import session; session.init(); "
              "print(json.dumps([session.owns_instance(), os.environ.get(session.PREEMPTION_WATCHER)]))")
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=100,
                               env={**without_ray_settings(), "RAY_ADDRESS": ray._private.worker._global_node.address})
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [False, None]
