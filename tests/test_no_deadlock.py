"""The resource deadlock of the first real-size run, ruled out by construction.

It happened on 2 CPUs: the worker held one, the training stream's read/decode task (paused by
backpressure, with a whole large shard to go) the other, and validation needed a new read task
that could never be placed. The fix is that training needs no Ray resource beyond its workers'
bundles: no data stage exists at all (pix2pix/distributed/train.py says why). So here the
training data is one large shard, validation runs every epoch, and the workers take every CPU
there is (one worker: nothing is left for any other task, the hang's precondition) or share
them (two fractional workers); the run must finish, and no Ray Data actor may ever have existed.
(At this scale the old design's read task finished before validation and did not hang, so this
test checks the invariant that makes the hang impossible, not the hang itself.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_train_job import write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

DATA_STAGES = {"SplitCoordinator", "_StatsActor"}  # what a Ray Data stream starts


@pytest.fixture(scope="module")
def one_large_shard(tmp_path_factory) -> str:
    from pix2pix.distributed.prepare import prepare

    root = tmp_path_factory.mktemp("deadlock")
    write_pairs(root / "raw", 48)
    prepare(str(root / "raw"), str(root / "data"), rows_per_shard=1000)
    return str(root / "data")


@pytest.mark.parametrize("workers,cpus_per_worker", [(1, "auto"), (2, "0.5")])
def test_validation_every_epoch_never_waits_for_the_training_data(ray_session, one_large_shard, tmp_path,
                                                                   workers, cpus_per_worker):
    completed = subprocess.run(
        [sys.executable, "-m", "tests.isolated_training", one_large_shard, str(tmp_path / "runs"),
         str(workers), cpus_per_worker, "64", "8"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = json.loads(completed.stdout.strip().splitlines()[-1])
    assert run["error"] is None
    if workers == 1:  # the precondition of the hang: no CPU left beside the workers
        assert run["cpus_per_worker"] == 2.0 and run["min_free_cpu"] == 0.0
    metrics = run["metrics"]
    assert metrics["epoch"] == 2 and metrics["step"] == 2 * (48 // workers)
    assert all(name in metrics for name in ("val_L1", "val_PSNR", "checkpoint_seconds", "validation_seconds"))
    assert run["checkpoint"] and "RayTrainWorker" in run["actors"]
    assert not DATA_STAGES & set(run["actors"]), run["actors"]
