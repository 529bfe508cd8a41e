"""The resource deadlock of the first real-size run, ruled out by construction.

It happened on 2 CPUs: the worker held one, the training stream's read/decode task (paused by
backpressure, with a whole large shard to go) the other, and validation needed a new read task
that could never be placed. The fix is that training needs no Ray resource beyond its workers'
bundles: no data stage exists at all (pix2pix/distributed/train.py says why). So here the
training data is one large shard, validation runs every epoch, and the workers take every CPU
there is (one worker: nothing is left for any other task, the hang's precondition) or share
them (two fractional workers); each run must finish, and no Ray Data actor may ever have existed.
(At this scale the old design's read task finished before validation and did not hang, so this
test checks the invariant that makes the hang impossible, not the hang itself.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_train_job import write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DATA_STAGES = {"SplitCoordinator", "_StatsActor"}  # what a Ray Data stream starts


@pytest.fixture(scope="module")
def one_large_shard(ray_session, tmp_path_factory) -> str:
    from pix2pix.distributed.prepare import prepare

    root = tmp_path_factory.mktemp("deadlock")
    write_pairs(root / "raw", 48)
    prepare(str(root / "raw"), str(root / "data"), rows_per_shard=1000)
    return str(root / "data")


LAYOUTS = {"1:auto": 1, "2:0.5": 2}  # WORKERS:CPUS_PER_WORKER -> workers


@pytest.fixture(scope="module")
def runs_in_a_driver_of_their_own(ray_session, one_large_shard, tmp_path_factory) -> dict[str, dict]:
    """Both layouts' runs, one after the other, from a driver of their own on the session's Ray
    instance (2 CPUs, nothing else running: the test's only need of an instance, and starting
    one is the slow part), in a subprocess with a timeout: a hang fails the tests, it never
    blocks the session. Layout -> its run."""
    env = {**os.environ, "RAY_ADDRESS": ray_session._private.worker._global_node.address}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.isolated_training", one_large_shard, str(tmp_path_factory.mktemp("runs")),
         "64", "8", *LAYOUTS], cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    return {run["layout"]: run for run in runs}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_validation_every_epoch_never_waits_for_the_training_data(runs_in_a_driver_of_their_own, layout):
    run, workers = runs_in_a_driver_of_their_own[layout], LAYOUTS[layout]
    assert run["error"] is None
    if workers == 1:  # the precondition of the hang: no CPU left beside the workers
        assert run["cpus_per_worker"] == 2.0 and run["min_free_cpu"] == 0.0
    metrics = run["metrics"]
    assert metrics["epoch"] == 2 and metrics["step"] == 2 * (48 // workers)
    assert all(name in metrics for name in ("val_L1", "val_PSNR", "checkpoint_seconds", "validation_seconds"))
    assert run["checkpoint"] and "RayTrainWorker" in run["actors"]
    assert not DATA_STAGES & set(run["actors"]), run["actors"]
