"""Per-epoch fixed costs of the training loop: validation pairs decoded once, the history read
once, checkpoints by wall time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pix2pix.distributed import train_worker
from pix2pix.distributed.train_worker import History, JobConfig, ValidationPairs, checkpoint_due
from pix2pix.training.shards import find_shards
from pix2pix.training.step import TrainConfig


def _config(data: str) -> JobConfig:
    train_shards, val_shards = find_shards(data)
    return JobConfig(train=TrainConfig(image_size=64), data_uri=data, train_shards=train_shards,
                     val_shards=val_shards)


def _arrays(batches) -> list[np.ndarray]:
    return [batch[name] for batch in batches for name in ("source", "target")]


def test_validation_pairs_are_decoded_at_the_first_validation_only(prepared_dataset, tmp_path):
    data = shutil.copytree(prepared_dataset, tmp_path / "data")
    config = _config(str(data))
    pairs = [ValidationPairs(config, rank, 2) for rank in (0, 1)]
    first = [_arrays(worker_pairs) for worker_pairs in pairs]
    assert sum(len(array) for arrays in first for array in arrays[::2]) == 4  # the 4 val pairs, each once
    shutil.rmtree(data / "val")  # a later validation that read storage again would fail or find nothing
    again = [_arrays(worker_pairs) for worker_pairs in pairs]
    for before, after in zip(first, again):
        assert len(before) == len(after) and all((a == b).all() for a, b in zip(before, after))


def test_validation_pairs_past_the_cap_are_read_again(prepared_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(train_worker, "VALIDATION_CACHE_BYTES", 1)
    data = shutil.copytree(prepared_dataset, tmp_path / "data")
    pairs = ValidationPairs(_config(str(data)), 0, 1)
    assert len(_arrays(pairs)) == 2
    shutil.rmtree(data / "val")
    with pytest.raises(Exception):  # not kept: the second validation reads the (now missing) shards
        list(pairs)


def test_history_is_read_once_and_continued(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / train_worker.HISTORY_FILE).write_text(json.dumps({"epoch": 1}) + "\n")
    history = History(str(run))
    (run / train_worker.HISTORY_FILE).write_text("")  # not read again: the lines come from memory
    history.append({"epoch": 2})
    history.append({"epoch": 3})
    lines = Path(run / train_worker.HISTORY_FILE).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert [entry["epoch"] for entry in train_worker.read_history(str(run))] == [1, 2, 3]


class _Model:
    def __init__(self, epoch: int):
        self.epoch = epoch


def test_checkpoints_by_epochs_or_by_wall_time():
    config = JobConfig(train=TrainConfig(), data_uri="", checkpoint_every=3)
    assert [checkpoint_due(_Model(epoch), config, 0.0) for epoch in (1, 2, 3, 6)] == [False, False, True, True]
    import time

    by_time = JobConfig(train=TrainConfig(), data_uri="", checkpoint_minutes=1.0)
    assert checkpoint_due(_Model(3), by_time, time.monotonic() - 61)
    assert not checkpoint_due(_Model(3), by_time, time.monotonic() - 5)


def test_a_restarted_run_removes_only_its_own_unsent_checkpoint_folders():
    import os
    import tempfile

    from pix2pix.distributed.train_worker import checkpoint_folder_prefix, remove_unsent_checkpoints

    mine, other = (JobConfig(train=TrainConfig(), data_uri="", run_uri=f"/runs/{name}") for name in ("a", "b"))
    left = tempfile.mkdtemp(prefix=checkpoint_folder_prefix(mine))
    kept = tempfile.mkdtemp(prefix=checkpoint_folder_prefix(other))
    try:
        remove_unsent_checkpoints(mine)
        assert not os.path.exists(left) and os.path.isdir(kept)
    finally:
        os.rmdir(kept)


def test_the_workers_of_a_node_keep_at_most_an_eighth_of_its_memory_in_decoded_pairs():
    from pix2pix.distributed.train_worker import kept_pairs_bytes, node_memory
    from pix2pix.training.shards import LOADED_PAIRS_BYTES

    assert kept_pairs_bytes(8, 16 * 10**9) == 250 * 10**6  # a 16 GB laptop running 8 workers
    assert kept_pairs_bytes(8, 1024 * 10**9) == LOADED_PAIRS_BYTES  # a GPU node: the cap per worker
    assert kept_pairs_bytes(1, 24 * 10**9) == LOADED_PAIRS_BYTES
    assert 2**30 < node_memory() < 2**50  # this machine's, from the kernel
