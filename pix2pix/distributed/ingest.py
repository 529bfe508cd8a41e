"""The prepared shards as Ray Data datasets for Ray Train.

Training reads one stream for the whole run: every remaining epoch's shards, each epoch in its
own shuffled shard order, one epoch after the other, decoded and augmented in Ray Data tasks.
Iterating a dataset once per epoch instead makes Ray Data start a new streaming execution
(and split coordinator) every epoch, and each worker waits seconds for its first batch every
time; short GPU epochs would feel that most. Workers cut the stream into epochs by count
(``rows // world_size`` each); their local shuffle buffer mixes a few rows across each epoch
boundary, as a repeated-then-shuffled stream does. Validation is read whole every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import ray.train

from pix2pix import storage
from pix2pix.data import paired_transform, preprocess_records

DECODE_BATCH = 16
MAX_STREAM_BLOCKS = 100_000  # read tasks planned for a run; beyond it, a task reads several shards


class DatasetError(ValueError):
    """The prepared dataset is missing, empty or too small for the run."""


@dataclass
class TrainingData:
    datasets: dict[str, ray.data.Dataset]  # "train": the whole run's stream; "val" if the split exists
    train_rows: int  # pairs in one epoch


def shard_files(data: storage.Location, split: str) -> list[str]:
    return list(storage.list_files(data.join(split), (".parquet",)))


def check_dataset(data_uri: str) -> tuple[list[str], list[str]]:
    """The train and val shard files; a clear error when there is nothing to train on."""
    data = storage.resolve(data_uri)
    if not storage.is_dir(data):
        raise DatasetError(f"dataset not found: {data_uri} (prepare one with jobs/prepare.py)")
    train_files, val_files = shard_files(data, "train"), shard_files(data, "val")
    if not train_files:
        raise DatasetError(f"no training shards under {data_uri}/train: run jobs/prepare.py first")
    return train_files, val_files


def count_rows(files: list[str], filesystem) -> int:
    """Rows in Parquet files, from their footers."""
    return pads.dataset(files, filesystem=filesystem, format="parquet").count_rows()


def batches_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    return train_rows // world_size // batch_size


def shard_order(shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order an epoch reads the shards in: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(shards)


def read_epoch_shards(batch: dict[str, np.ndarray], files: list[str], filesystem, seed: int, first_epoch: int):
    """map_batches function: stream position i (epoch-major) -> the rows of that epoch's i-th shard."""
    for position in batch["id"]:
        epoch, index = divmod(int(position), len(files))
        yield pq.read_table(files[shard_order(len(files), seed, first_epoch + epoch)[index]], filesystem=filesystem)


def decode_batch(batch: pa.Table, image_size: int, train: bool, keep_keys: bool) -> dict[str, np.ndarray]:
    """map_batches function: decode (+ augment for training) shard rows into uint8 NCHW arrays."""
    out = preprocess_records(batch.to_pylist(), paired_transform(image_size, train=train))
    if not keep_keys:
        del out["key"]
    return out


def training_stream(files: list[str], filesystem, image_size: int, seed: int, epochs: range) -> ray.data.Dataset:
    positions = len(epochs) * len(files)
    return ray.data.range(positions, override_num_blocks=min(positions, MAX_STREAM_BLOCKS)).map_batches(
        read_epoch_shards, fn_kwargs={"files": files, "filesystem": filesystem, "seed": seed,
                                      "first_epoch": epochs.start},
        batch_size=None, batch_format="numpy",
    ).map_batches(decode_batch, fn_kwargs={"image_size": image_size, "train": True, "keep_keys": False},
                  batch_size=DECODE_BATCH, batch_format="pyarrow")


def build_datasets(data_uri: str, image_size: int, seed: int, epochs: range) -> TrainingData:
    """The training stream for ``epochs`` and the val split (keys kept: it is evaluated by key)."""
    data = storage.resolve(data_uri)
    train_files, val_files = check_dataset(data_uri)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    datasets = {"train": training_stream(train_files, data.filesystem, image_size, seed, epochs)}
    if val_files:
        datasets["val"] = ray.data.read_parquet(val_files, filesystem=data.filesystem).map_batches(
            decode_batch, fn_kwargs={"image_size": image_size, "train": False, "keep_keys": True},
            batch_size=DECODE_BATCH, batch_format="pyarrow")
    return TrainingData(datasets, count_rows(train_files, data.filesystem))


def data_config() -> ray.train.DataConfig:
    """Split the training stream between the workers, in order (so that epochs follow each other)."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return ray.train.DataConfig(datasets_to_split=["train"], execution_options={"train": options})
