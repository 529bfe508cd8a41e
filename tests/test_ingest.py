"""The training stream: every epoch's pairs once each, epoch after epoch, in per-epoch shard orders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pix2pix import storage
from pix2pix.data import encode_image
from pix2pix.distributed import ingest
from pix2pix.distributed.prepare import SHARD_SCHEMA

SHARDS, ROWS_PER_SHARD = 6, 2
PAIRS = SHARDS * ROWS_PER_SHARD


def level(pair: int) -> int:
    """Pair i is a flat image of this grey level: crops, flips and resizes keep it."""
    return 10 + 20 * pair


@pytest.fixture
def shards(tmp_path) -> str:
    (tmp_path / "train").mkdir()
    for shard in range(SHARDS):
        rows = []
        for pair in range(shard * ROWS_PER_SHARD, (shard + 1) * ROWS_PER_SHARD):
            image = encode_image(np.full((40, 40, 3), level(pair), np.uint8))
            rows.append({"key": f"{pair:02d}", "layout": "paired", "image": None, "source_side": None,
                         "source": image, "target": image})
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), tmp_path / "train" / f"{shard}.parquet")
    return str(tmp_path)


def test_each_epoch_reads_every_shard_once_in_its_own_order(shards):
    files = sorted(ingest.shard_files(storage.resolve(shards), "train"))
    first_key = {path: f"{int(Path(path).stem) * ROWS_PER_SHARD:02d}" for path in files}
    positions = {"id": np.arange(3 * SHARDS)}  # three epochs
    tables = list(ingest.read_epoch_shards(positions, files, None, seed=7, first_epoch=4))
    epochs = [[table["key"][0].as_py() for table in tables[e * SHARDS:(e + 1) * SHARDS]] for e in range(3)]
    for keys in epochs:
        assert sorted(keys) == sorted(first_key.values())
    assert len({tuple(keys) for keys in epochs}) == 3  # reshuffled every epoch
    # epoch numbers are absolute: a run resumed at epoch 4 reads it as an uninterrupted run would
    assert epochs[0] == [first_key[files[i]] for i in ingest.shard_order(SHARDS, seed=7, epoch=4)]


def test_the_stream_runs_epoch_after_epoch(ray_session, shards):
    data = ingest.build_datasets(shards, 32, seed=0, epochs=range(2, 5))
    assert data.train_rows == PAIRS and "val" not in data.datasets
    stream = data.datasets["train"]
    stream.context.execution_options.preserve_order = True  # as ingest.data_config() asks of Ray Train
    pairs = []
    for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
        assert batch["source"].shape[1:] == (3, 32, 32) and "key" not in batch
        pairs += [int(round((image.mean() - 10) / 20)) for image in batch["source"]]
    assert len(pairs) == 3 * PAIRS
    for epoch in range(3):  # each epoch: every pair once, before any pair of the next epoch
        assert sorted(pairs[epoch * PAIRS:(epoch + 1) * PAIRS]) == list(range(PAIRS))
    assert len({tuple(pairs[e * PAIRS:(e + 1) * PAIRS]) for e in range(3)}) == 3


def test_batches_per_epoch():
    assert ingest.batches_per_epoch(265, world_size=2, batch_size=4) == 33
    assert ingest.batches_per_epoch(7, world_size=2, batch_size=4) == 0
