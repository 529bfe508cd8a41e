"""Prepared Parquet shards, read and decoded inside the process that trains on them.

Each training worker reads its own part of every epoch straight from storage and decodes it
itself: in ``decode_workers`` processes of its own (the CPUs its reservation leaves beside the
training step, see pix2pix/distributed/train.py; ``decode_processes.py``), or in one thread
beside the step on a CPU worker, whose torch threads take its CPUs. Processes that keep the
pairs and send back only crops through shared memory, not threads (one GIL: two reached ~0.55x
two plain processes on 2 cores) nor a process pool that sends whole tensors (torch's DataLoader:
~1 ms more CPU per pair on copies; bench/ceiling_training.py). A worker whose data needs no
other Ray stage can never wait for a CPU that another stage holds.

An epoch is the train split in a shard order fixed by (seed, epoch), each shard's rows in an
order fixed by (seed, epoch, shard), cut into one contiguous slice per worker of exactly
``batches_per_epoch * batch_size`` rows, so every worker takes the same number of steps. Each
pair's crop and flip are seeded by (seed, epoch, key), so the batches are the same whatever
decodes them, a thread or any number of processes. Epoch numbers are absolute: a resumed run reads epoch 5 as an
uninterrupted run would.

A worker decodes each pair it meets and resizes it to the load size once, and keeps it in memory
(up to ``LOADED_PAIRS_BYTES``): later epochs only crop and flip it, and read no shard whose rows
they need are all kept. On a GPU the decoding is the limit (Pillow's decode and OpenCV's resize
were ~55% of a pair's time), and an epoch re-read every shard from storage. The crop and flip
draw exactly what the whole augmentation draws, so the batches are byte for byte those of a
decode from scratch.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pix2pix import storage
from pix2pix.errors import JobError
from pix2pix.hashing import stable_hash
from pix2pix.training.augmentation import (
    EpochAugmentation,
    load_size_for,
    paired_transform,
    preprocess_records,
)
from pix2pix.training.decode_processes import DecodeProcesses, chunked, ring_fits, uint8_array
from pix2pix.training.kept_pairs import KeptPairs, Place

# The shard schema: written by the prepare job, read by training and evaluation.
SHARD_SCHEMA = pa.schema([
    ("key", pa.string()),  # relative name of the pair, e.g. "0001" or "city/0001"
    ("layout", pa.string()),  # "side-by-side" or "paired"
    ("image", pa.binary()),  # side-by-side: the original encoded image holding both halves
    ("source_side", pa.string()),  # side-by-side: "left" or "right", the half that is the source
    ("source", pa.binary()),  # paired: the original encoded source file
    ("target", pa.binary()),  # paired: the original encoded target file
])
DATASET_INFO_FILE = "_dataset.json"  # beside the splits: layout, direction, pair counts, input
PREFETCH_PAIRS = 64  # decoded pairs a worker keeps ready: 25 MB at 256 px
# A worker's decoded pairs kept across epochs (``KeptPairs``): a pair at the load size of 256 px
# training, 286 x 286 x 3 bytes x 2 images, is 0.49 MB, so Recife's 1,500 train pairs take ~0.74 GB;
# 2 GB hold ~4,000 such pairs. Pairs beyond it are decoded in every epoch.
LOADED_PAIRS_BYTES = 2_000_000_000


class DatasetError(JobError):
    """The prepared dataset is missing, empty or too small for the run."""


@dataclass(frozen=True)
class Shards:
    """One split's shard files (paths on the dataset's filesystem) and their row counts."""

    files: tuple[str, ...]
    rows: tuple[int, ...]

    @property
    def total_rows(self) -> int:
        return sum(self.rows)


def find_shards(data_uri: str) -> tuple[Shards, Shards | None]:
    """The train and val splits of a prepared dataset; a clear error when there is nothing to train on."""
    data = storage.resolve(data_uri)
    if not storage.is_dir(data):
        raise DatasetError(f"dataset not found: {data_uri} (prepare one with jobs/prepare.py)")
    train, val = (_split(data, name) for name in ("train", "val"))
    if train is None:
        raise DatasetError(f"no training shards under {data_uri}/train: run jobs/prepare.py first")
    return train, val


def _split(data: storage.Location, name: str) -> Shards | None:
    files = sorted(storage.list_files(data.join(name), (".parquet",)))
    if not files:
        return None
    with storage.store_errors():
        rows = [pq.ParquetFile(data.filesystem.open_input_file(path)).metadata.num_rows for path in files]
    return Shards(tuple(files), tuple(rows))


def dataset_direction(data_uri: str) -> str:
    """The direction the dataset was prepared with (AtoB when it does not say)."""
    info = storage.resolve(data_uri).join(DATASET_INFO_FILE)
    return json.loads(storage.read_text(info)).get("direction", "AtoB") if storage.exists(info) else "AtoB"


def batches_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    return train_rows // world_size // batch_size


def key_hash(key: str) -> int:
    """A stable 32-bit number for a pair's key (the same in every process and run)."""
    return stable_hash(key) >> 32


def owner_rank(key: str, world_size: int) -> int:
    """The worker that evaluates a val pair: each pair on exactly one."""
    return key_hash(key) % world_size


def shard_order(shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(shards)


def epoch_slices(shards: Shards, seed: int, epoch: int, rank: int, rows: int) -> list[tuple[int, np.ndarray]]:
    """(file index, row indices in reading order) for worker ``rank``'s ``rows`` rows of ``epoch``."""
    start, stop = rank * rows, (rank + 1) * rows
    slices, position = [], 0
    for index in shard_order(len(shards.files), seed, epoch):
        count = shards.rows[index]
        low, high = max(start, position), min(stop, position + count)
        if low < high:
            order = np.random.default_rng([seed, epoch, int(index)]).permutation(count)
            slices.append((int(index), order[low - position:high - position]))
        position += count
    return slices


def read_shard(filesystem, path: str) -> pa.Table:
    """A whole shard, read with the storage module's retries."""
    # Not pq.read_table: its dataset layer imports pandas on first use (~0.4 s of a worker's first
    # epoch) and took 4.4 ms a shard where this takes 2.9.
    return pq.ParquetFile(pa.BufferReader(storage.read_bytes(filesystem, path))).read()


class TrainingPairs:
    """A worker's training batches, epoch by epoch: uint8 NCHW ``source`` and ``target`` tensors,
    channels_last in memory (``channels_first``), in pinned memory with ``pin_memory`` (a copy to
    a GPU then overlaps the work), decoded
    by ``decode_workers`` processes of its own (``DecodeProcesses``), or in a thread beside the
    training step with one (a CPU worker, whose torch threads take its CPUs) or where shared
    memory has no room; the batches are the same either way.

    Each pair it meets is decoded and resized once and kept (up to ``loaded_bytes``): later epochs
    crop and flip it alone (see the module's docstring). ``close`` ends the processes."""

    def __init__(self, data_uri: str, shards: Shards, image_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False, crop_size: int | None = None,
                 flips: str = "horizontal", decode_workers: int = 1, loaded_bytes: int = LOADED_PAIRS_BYTES):
        self.filesystem = storage.resolve(data_uri).filesystem
        self.shards, self.image_size, self.batch_size, self.seed = shards, image_size, batch_size, seed
        self.crop_size, self.flips = crop_size, flips
        self.rank, self.decode_workers = rank, decode_workers
        self.batches = batches_per_epoch(shards.total_rows, world_size, batch_size)
        load = load_size_for(image_size)
        self.loaded = KeptPairs((2, load, load, 3), loaded_bytes)
        # Pinned: a batch is made there, not copied there after; it stays the pinned allocator's
        # tensor, which records a copy to the GPU in flight before the memory is reused. Otherwise
        # numpy's memory, not torch.empty's: torch maps every batch's memory afresh (page faults,
        # ~0.1 ms a pair on a 2-vCPU VM), where numpy's allocator reuses it.
        self._allocate = pinned_uint8 if pin_memory else uint8_array
        self.processes = None
        if decode_workers > 1 and ring_fits(batch_size, crop_size or image_size):
            self.processes = DecodeProcesses(decode_workers, image_size, seed, batch_size, crop_size, flips,
                                             loaded_bytes, epoch_pairs=self.batches * batch_size)

    @property
    def kept(self) -> Container[Place]:
        """The places of the pairs kept (``len`` says how many)."""
        return self.processes.kept if self.processes else self.loaded

    def close(self) -> None:
        if self.processes:
            self.processes.close()

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """The epoch's batches, made ahead in a background thread (and the decode processes)."""
        make = self._processes_epoch if self.processes else self._decode_epoch
        return prefetched(lambda: make(epoch), max(2, PREFETCH_PAIRS // self.batch_size))

    def _processes_epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.processes.batches(epoch, self._rows(epoch, self.kept), self._allocate):
            yield {name: channels_first(torch.as_tensor(images)) for name, images in batch.items()}

    def _decode_epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        augment = EpochAugmentation(self.image_size, self.seed, epoch, self.crop_size, self.flips)
        ahead = max(PREFETCH_PAIRS, 4 * self.decode_workers)
        pairs = ordered_map(lambda row: self._augmented(augment, *row), self._rows(epoch, self.kept),
                            self.decode_workers, ahead)
        for batch in in_batches(pairs, self.batch_size):
            yield {name: channels_first(torch.as_tensor(self._stacked([pair[side] for pair in batch])))
                   for side, name in enumerate(("source", "target"))}

    def _stacked(self, images: list[np.ndarray]):
        """One side's images stacked straight into the batch's memory (pinned on a GPU host: one copy)."""
        array, handed_out = self._allocate((len(images), *images[0].shape))
        np.stack(images, out=array)
        return handed_out

    def _augmented(self, augment: EpochAugmentation, place: Place, record: dict | None):
        """A row's pair: loaded (and kept) from its record, or the kept one when the record is None."""
        if record is None:
            return augment.crop_and_flip(*self.loaded.get(place))
        pair, _ = self.loaded.keep_made(place, record["key"], lambda room: augment.load(record, into=room))
        return augment.crop_and_flip(record["key"], pair)

    def _rows(self, epoch: int, kept: Container[Place]) -> Iterator[tuple[Place, dict | None]]:
        """This worker's rows of ``epoch`` in reading order as (place, record), the record None for
        a pair kept when the epoch starts (kept for good, so still kept when it is decoded); only
        shards with a row not kept are read."""
        slices = self._slices(epoch)
        missing = [[int(row) for row in rows if (index, int(row)) not in kept] for index, rows in slices]
        records = self._read_rows([(index, rows) for (index, _), rows in zip(slices, missing) if rows])
        for (index, rows), not_kept in zip(slices, missing):
            found = dict(zip(not_kept, next(records))) if not_kept else {}
            yield from (((index, int(row)), found.get(int(row))) for row in rows)

    def records(self, epoch: int) -> Iterator[dict]:
        """This worker's rows of ``epoch`` in reading order, every shard read (nothing kept)."""
        for records in self._read_rows(self._slices(epoch)):
            yield from records

    def _slices(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        return epoch_slices(self.shards, self.seed, epoch, self.rank, self.batches * self.batch_size)

    def _read_rows(self, wanted: list[tuple[int, Sequence[int]]]) -> Iterator[list[dict]]:
        """For each (file index, row indices): those rows of the shard, which is checked (``check_rows``);
        the next shard is read while these rows decode."""
        with ThreadPoolExecutor(max_workers=1) as reader:
            def read(position: int) -> Future | None:
                if position == len(wanted):
                    return None
                return reader.submit(read_shard, self.filesystem, self.shards.files[wanted[position][0]])

            following = read(0)
            for position, (index, rows) in enumerate(wanted):
                table = following.result()
                check_rows(table, self.shards, index)
                following = read(position + 1)
                # The whole shard, then its rows: not ``table.take``, whose first call starts pyarrow's
                # compute module, 0.2-0.27 s of a worker's first epoch. A worker's slice is whole
                # shards but at its two ends.
                shard_records = table.to_pylist()
                records = [shard_records[row] for row in rows]
                del table, shard_records  # let the shard go while its rows decode
                yield records



def pinned_uint8(shape: tuple[int, ...]) -> tuple[np.ndarray, torch.Tensor]:
    """A batch's memory in pinned memory (``DecodeProcesses.batches``, ``_stacked``): (its numpy view, the tensor)."""
    tensor = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    return tensor.numpy(), tensor


def channels_first(images: torch.Tensor) -> torch.Tensor:
    """NHWC images as the NCHW tensor the model takes, not moved: channels_last, which the model's
    own layout on a GPU is (the device makes any other layout, where it costs nothing)."""
    return images.permute(0, 3, 1, 2)


def ordered_map(function: Callable, items: Iterable, workers: int, ahead: int) -> Iterator:
    """``function(item)`` for each item, in the items' order: in the caller's thread with one
    worker, else by ``workers`` threads, at most ``ahead`` items ahead of the consumer."""
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pix2pix-decode")
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def in_batches(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items; a short last one is dropped (every worker takes whole batches)."""
    return (chunk for chunk in chunked(items, size) if len(chunk) == size)


def check_rows(table: pa.Table, shards: Shards, index: int) -> None:
    """A shard read in an epoch holds the rows it held when the job listed it (the workers' slices
    are cut from those counts): else the dataset changed under the run."""
    if table.num_rows != shards.rows[index]:
        raise DatasetError(f"{shards.files[index]} holds {table.num_rows} pairs, {shards.rows[index]} when the job "
                           "started: the dataset changed under the run; prepare it to a new folder and train again")


def records_where(data_uri: str, shards: Shards, keep: Callable[[str], bool]) -> Iterator[dict]:
    """The rows of a split whose key passes ``keep``, shard by shard (one shard in memory at a time)."""
    filesystem = storage.resolve(data_uri).filesystem
    for path in shards.files:
        table = read_shard(filesystem, path)
        wanted = [i for i, key in enumerate(table.column("key").to_pylist()) if keep(key)]
        if wanted:
            yield from table.take(pa.array(wanted, type=pa.int64())).to_pylist()


def evaluation_batches(records: Iterator[dict], image_size: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Records -> resized (not augmented) batches with their keys."""
    transform = paired_transform(image_size, train=False)
    pending: list[dict] = []
    for record in records:
        pending.append(record)
        if len(pending) == batch_size:
            yield preprocess_records(pending, transform)
            pending = []
    if pending:
        yield preprocess_records(pending, transform)


_DONE = object()


def prefetched(produce: Callable[[], Iterator], depth: int) -> Iterator:
    """Run a generator in a daemon thread, ``depth`` items ahead of the consumer. Its errors are
    raised in the consumer; a consumer that stops early stops the thread at its next item."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(item) -> bool:
        while not stopped.is_set():
            try:
                items.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            with contextlib.closing(produce()) as produced:  # closed at once when the consumer stops
                for item in produced:
                    if not offer(item):
                        return
            offer(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who raises it
            offer(error)

    thread = threading.Thread(target=run, name="pix2pix-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
