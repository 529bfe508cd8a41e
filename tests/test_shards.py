"""Reading prepared shards in the training worker: every epoch's pairs once, split between
workers, in per-epoch orders; validation by key owner."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pix2pix.images import encode_image
from pix2pix.training import shards
from pix2pix.training.shards import SHARD_SCHEMA

ROWS_PER_SHARD = (4, 4, 4, 3)  # a short last shard, as prepare writes them
PAIRS = sum(ROWS_PER_SHARD)


def level(pair: int) -> int:
    """Pair i is a flat image of this grey level: crops, flips and resizes keep it."""
    return 10 + 15 * pair


def pair_of(image: np.ndarray) -> int:
    return int(round((image.mean() - 10) / 15))


@pytest.fixture
def dataset(tmp_path) -> str:
    pair = 0
    for split, sizes in (("train", ROWS_PER_SHARD), ("val", (3, 2))):
        (tmp_path / split).mkdir()
        for shard, size in enumerate(sizes):
            rows = []
            for _ in range(size):
                image = encode_image(np.full((40, 40, 3), level(pair % PAIRS), np.uint8))
                rows.append({"key": f"{split}-{pair:02d}", "layout": "paired", "image": None, "source_side": None,
                             "source": image, "target": image})
                pair += 1
            pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), tmp_path / split / f"{shard}.parquet")
    return str(tmp_path)


def epoch_pairs(dataset: str, epoch: int, rank: int = 0, world_size: int = 1, batch_size: int = 1) -> list[int]:
    train, _ = shards.find_shards(dataset)
    reader = shards.TrainingPairs(dataset, train, 32, batch_size, seed=7, rank=rank, world_size=world_size)
    pairs = []
    for batch in reader.epoch(epoch):
        assert batch["source"].shape == (batch_size, 3, 32, 32) and batch["source"].dtype == torch.uint8
        assert set(batch) == {"source", "target"}
        pairs += [pair_of(image.numpy()) for image in batch["source"]]
    assert len(pairs) == reader.batches * batch_size
    return pairs


def test_the_dataset_is_found_with_its_row_counts(dataset, tmp_path):
    train, val = shards.find_shards(dataset)
    assert train.rows == ROWS_PER_SHARD and train.total_rows == PAIRS and val.total_rows == 5
    with pytest.raises(shards.DatasetError, match="dataset not found"):
        shards.find_shards(str(tmp_path / "missing"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(shards.DatasetError, match="no training shards"):
        shards.find_shards(str(tmp_path / "empty"))


def test_each_epoch_is_every_pair_once_in_its_own_order(dataset):
    epochs = [epoch_pairs(dataset, epoch) for epoch in (4, 5, 6)]
    for pairs in epochs:
        assert sorted(pairs) == list(range(PAIRS))
    assert len({tuple(pairs) for pairs in epochs}) == 3
    # epoch numbers are absolute: a run resumed at epoch 5 reads it as an uninterrupted run would
    assert epoch_pairs(dataset, 5) == epochs[1]


def test_a_crop_size_gives_smaller_training_pairs(dataset):
    train, _ = shards.find_shards(dataset)
    reader = shards.TrainingPairs(dataset, train, 32, 2, seed=7, crop_size=16)
    batch = next(iter(reader.epoch(0)))
    assert batch["source"].shape == batch["target"].shape == (2, 3, 16, 16)


def test_workers_read_disjoint_equal_parts(dataset):
    parts = [epoch_pairs(dataset, 3, rank, world_size=2, batch_size=3) for rank in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == (PAIRS // 2 // 3) * 3  # the same step count on both
    assert not set(parts[0]) & set(parts[1])


def test_a_read_error_reaches_the_consumer(dataset, tmp_path):
    train, _ = shards.find_shards(dataset)
    broken = shards.Shards(train.files[:1] + (str(tmp_path / "gone.parquet"),), train.rows[:2])
    reader = shards.TrainingPairs(dataset, broken, 32, 1, seed=0)
    with pytest.raises(OSError):
        for epoch in range(4):  # some epoch's order reaches the missing shard
            list(reader.epoch(epoch))


def test_validation_pairs_are_split_by_key_owner(dataset):
    _, val = shards.find_shards(dataset)
    keys = []
    for rank in (0, 1, 2):
        mine = shards.records_where(dataset, val, lambda key, r=rank: shards.owner_rank(key, 3) == r)
        for batch in shards.evaluation_batches(mine, 32, batch_size=2):
            assert batch["source"].shape[1:] == (3, 32, 32)
            keys += list(batch["key"])
    assert sorted(keys) == [f"val-{i:02d}" for i in range(PAIRS, PAIRS + 5)]


def test_owner_rank_keeps_its_digest():
    # which worker validates a pair: the first 4 bytes of the key's SHA-256, as before
    assert shards.key_hash("0000") == 2599508787
    assert [shards.owner_rank(f"{i:04d}", 4) for i in range(8)] == [3, 0, 2, 2, 0, 2, 1, 1]


def test_batches_per_epoch():
    assert shards.batches_per_epoch(265, world_size=2, batch_size=4) == 33
    assert shards.batches_per_epoch(7, world_size=2, batch_size=4) == 0
