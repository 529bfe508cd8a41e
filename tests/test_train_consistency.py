"""Training that stays consistent across workers and resumes: optimizer state in its parameters'
layout whatever layout it was saved in, workers that run out of data together, dropout masks
of each worker's own that a resumed run draws again."""

from __future__ import annotations

import multiprocessing
import os
import queue
import sys
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.images import encode_image
from pix2pix.training.shards import SHARD_SCHEMA, DatasetError, Shards, TrainingPairs
from pix2pix.training.step import Pix2Pix, TrainConfig
from tests.conftest import free_port

TINY = TrainConfig(image_size=64, ngf=8, ndf=8, epochs=1, epochs_decay=0, batch_size=2, precision="fp32")


def batch(seed=0, n=2, size=64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8),
            torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8))


# -- item 4: resuming across memory layouts


@pytest.mark.parametrize("saved_channels_last, resumed_channels_last", [(False, True), (True, False)])
def test_optimizer_state_takes_its_parameters_layout_on_resume(tmp_path, saved_channels_last, resumed_channels_last):
    saved = Pix2Pix(replace(TINY, channels_last=saved_channels_last))
    saved.train_step(*batch(1))
    location = storage.resolve(str(tmp_path))
    checkpoint.save_training_state(saved.state_dict(), location)
    state = checkpoint.load_training_state(location)
    resumed = Pix2Pix(replace(TINY, channels_last=resumed_channels_last))
    resumed.load_state_dict(state)

    changed = 0
    for name in ("optimizer_g", "optimizer_d"):
        optimizer = getattr(resumed, name)
        parameters = optimizer.param_groups[0]["params"]
        for index, parameter in enumerate(parameters):
            for key, value in optimizer.state[parameter].items():
                if value.shape != parameter.shape:  # Adam's step count
                    continue
                saved_value = state[name]["state"][index][key]
                changed += saved_value.stride() != parameter.stride()
                assert value.stride() == parameter.stride(), (name, index, key)
                assert torch.equal(value, saved_value), (name, index, key)
    assert changed > 0  # the checkpoint's layout really was the other one
    parts = resumed.train_step(*batch(2))
    assert all(torch.isfinite(value) for value in parts.values())


# -- item 6: dropout masks by (seed, rank, epoch)


def dropout_masks(model: Pix2Pix, rank: int) -> list[torch.Tensor]:
    """The masks of the generator's dropout layers in one training step at the model's epoch,
    seeded as the worker loop seeds it."""
    masks = []
    hooks = [module.register_forward_hook(lambda _, inputs, output: masks.append(output.ne(0)))
             for module in model.generator.modules() if isinstance(module, torch.nn.Dropout)]
    try:
        model.seed_epoch(rank)
        model.train_step(*batch())
    finally:
        for hook in hooks:
            hook.remove()
    assert masks  # the generator has dropout
    return masks


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_each_worker_draws_its_own_dropout_masks_and_a_resumed_run_draws_them_again():
    uninterrupted = Pix2Pix(TINY)
    first = dropout_masks(uninterrupted, rank=0)
    uninterrupted.end_epoch()
    state = uninterrupted.state_dict()
    second = dropout_masks(uninterrupted, rank=0)
    assert not same(first, second)  # a new epoch, new masks

    other_rank = Pix2Pix(TINY)  # the same initial weights, as on every worker
    assert not same(dropout_masks(other_rank, rank=1), first)

    resumed = Pix2Pix(TINY)
    resumed.load_state_dict(state)  # at epoch 1, as after a restart from the epoch-1 checkpoint
    assert same(dropout_masks(resumed, rank=0), second)


# -- item 5: a worker that runs out of batches


def write_shard(path, pairs: int) -> None:
    image = encode_image(np.full((40, 40, 3), 128, np.uint8))
    rows = [{"key": f"{i:02d}", "layout": "paired", "image": None, "source_side": None, "source": image,
             "target": image} for i in range(pairs)]
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)


def test_a_shard_shorter_than_when_the_job_started_is_a_dataset_error(tmp_path):
    write_shard(tmp_path / "0.parquet", 3)
    listed = Shards((str(tmp_path / "0.parquet"),), (4,))  # the row count the job started with
    reader = TrainingPairs(str(tmp_path), listed, 32, batch_size=1, seed=0)
    with pytest.raises(DatasetError, match=r"0\.parquet holds 3 pairs, 4 when the job started"):
        list(reader.epoch(0))


STEPS = 3
SMALL = TrainConfig(image_size=32, ngf=4, ndf=4, epochs=1, epochs_decay=0, batch_size=2, precision="fp32")


def short_epoch(batches: int, reader_error: bool):
    """``batches`` batches of 32 px, then the end of the data, or the error a reader raises on
    finding a shard shorter than when the job started."""
    for seed in range(batches):
        yield dict(zip(("source", "target"), batch(seed, size=32)))
    if reader_error:
        raise DatasetError("0.parquet holds 3 pairs, 4 when the job started")


def run_rank(rank: int, port: int, results) -> None:
    """One of two gloo processes: DDP training epochs in which rank 1's data ends after one batch."""
    from torch.nn.parallel import DistributedDataParallel

    from pix2pix.distributed.train_worker import JobConfig, Progress, train_epoch
    from pix2pix.training.schedule import EpochSchedule

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=30))
    try:
        model = Pix2Pix(SMALL, wrap=DistributedDataParallel)
        for reader_error in (False, True):
            batches = short_epoch(STEPS if rank == 0 else 1, reader_error)
            try:
                train_epoch(model, batches, STEPS, JobConfig(train=SMALL, data_uri=""),
                            Progress(0, STEPS, 4, enabled=False), EpochSchedule(1, 0))
                results.put((rank, reader_error, "finished", ""))
            except Exception as error:  # noqa: BLE001 - reported to the test, which judges it
                results.put((rank, reader_error, type(error).__name__, str(error)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing the worker loop (and so Ray): ~7-17 s
def test_a_worker_whose_data_ends_early_stops_every_worker_with_a_dataset_error():
    context = multiprocessing.get_context("spawn")  # a fresh process: no Ray, no threads inherited
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=run_rank, args=(rank, port, results), daemon=True) for rank in (0, 1)]
    for worker in workers:
        worker.start()
    try:
        reports = {}
        for _ in range(4):
            rank, reader_error, kind, message = results.get(timeout=180)  # spawning imports torch and Ray
            reports[rank, reader_error] = (kind, message)
    except queue.Empty:
        pytest.fail(f"the workers hung; they reported only {reports}")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert {key: kind for key, (kind, _) in reports.items()} == {
        (0, False): "DatasetError", (1, False): "DatasetError", (0, True): "DatasetError", (1, True): "DatasetError"}
    ended = "the training data ended at batch 2 of 3 of epoch 1: "
    assert reports[0, False][1] == reports[0, True][1] == ended + "on another worker"
    assert reports[1, False][1] == ended + "this worker's batches ran out"
    assert reports[1, True][1] == ended + "0.parquet holds 3 pairs, 4 when the job started"


class FailsOnData:
    """A step callback that records each call in DIRECTORY and raises a DatasetError, as a worker
    does whose data ended early."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self, step: int) -> None:
        with open(os.path.join(self.directory, "calls"), "a") as calls:
            calls.write(f"{os.getpid()} {step}\n")
        raise DatasetError("the training data ended at batch 2 of 4 of epoch 1: this worker's batches ran out")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_data_error_ends_the_run_in_one_line_without_restarts(ray_session, tmp_path):
    import ray.cloudpickle

    from pix2pix.distributed.train import JobConfig, TrainResources, fit

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers need not import the tests
    (tmp_path / "data" / "train").mkdir(parents=True)
    write_shard(tmp_path / "data" / "train" / "0.parquet", 8)
    config = JobConfig(train=replace(SMALL, epochs=2), data_uri=str(tmp_path / "data"), threads=1,
                       on_step=FailsOnData(str(tmp_path)))
    one_worker = TrainResources(num_workers=1, use_gpu=False, cpus_per_worker=1.0, threads=1)
    with pytest.raises(DatasetError) as raised:
        fit(config, one_worker, str(tmp_path / "runs"), "data-error", max_failures=2)
    assert str(raised.value) == "the training data ended at batch 2 of 4 of epoch 1: this worker's batches ran out"
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # one attempt: no restart
