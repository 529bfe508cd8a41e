"""A training worker keeps its pairs decoded and resized (``TrainingPairs.kept``), in its decode
thread (``loaded``) or in its decode processes: later epochs crop and flip them alone, give the
batches of a decode from scratch byte for byte, stay within a memory cap, and read no shard whose
rows they all keep. Processes that fail or stop early lose nothing and leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pix2pix.images import BadImage
from pix2pix.training import decode_processes, shards
from pix2pix.training.augmentation import EpochAugmentation, load_size_for, stack_pairs
from pix2pix.training.decode_processes import DecodeProcessError
from pix2pix.training.kept_pairs import KeptPairs
from pix2pix.training.shards import SHARD_SCHEMA, in_batches
from tests.test_training_input import SIZE, record

SEED = 7
THREAD, PROCESSES = 1, 2  # decode workers: one thread, or two processes (each starts in ~2 s: few tests start them)


def write_shards(folder: Path, records: list[dict], per_shard: int) -> str:
    (folder / "train").mkdir(parents=True)
    for shard, start in enumerate(range(0, len(records), per_shard)):
        rows = records[start:start + per_shard]
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), folder / "train" / f"{shard}.parquet")
    return str(folder)


def recife_records(recife: Path, count: int) -> list[dict]:
    """Real pairs (256 px JPEG photos, PNG maps), as prepare writes a paired-folders dataset."""
    names = sorted(path.stem for path in (recife / "train" / "sat").glob("*.jpg"))[:count]
    return [{"key": name, "layout": "paired", "image": None, "source_side": None,
             "source": (recife / "train" / "sat" / f"{name}.jpg").read_bytes(),
             "target": (recife / "train" / "map" / f"{name}.png").read_bytes()} for name in names]


@pytest.fixture
def noise_dataset(tmp_path) -> str:
    return write_shards(tmp_path, [record(f"pair-{number:02d}", number) for number in range(18)], per_shard=6)


@pytest.fixture
def readers():
    """``reader_of``, each reader closed at the test's end."""
    with contextlib.ExitStack() as stack:
        yield lambda *args, **options: stack.enter_context(contextlib.closing(reader_of(*args, **options)))


def reader_of(dataset: str, image_size: int = SIZE, **options) -> shards.TrainingPairs:
    options = {"batch_size": 2, "decode_workers": THREAD, **options}
    return shards.TrainingPairs(dataset, shards.find_shards(dataset)[0], image_size, seed=SEED, **options)


def served(reader: shards.TrainingPairs, epoch: int) -> list[bytes]:
    return [batch["source"].numpy().tobytes() + batch["target"].numpy().tobytes() for batch in reader.epoch(epoch)]


def from_scratch(reader: shards.TrainingPairs, epoch: int) -> list[bytes]:
    """The epoch as a decode of every row with the whole augmentation (resize, crop, flip) gives it,
    in NCHW order."""
    augment = EpochAugmentation(reader.image_size, reader.seed, epoch, reader.crop_size, reader.flips)
    batches = in_batches(map(augment, reader.records(epoch)), reader.batch_size)
    return [b"".join(stack_pairs(batch)[name].transpose(0, 3, 1, 2).tobytes() for name in ("source", "target"))
            for batch in batches]


@pytest.mark.parametrize(("workers", "options"), [(THREAD, {}), (THREAD, {"flips": "square", "crop_size": 200}),
                                                  (PROCESSES, {"flips": "square", "crop_size": 200})])
def test_kept_pairs_give_the_batches_of_a_decode_from_scratch_on_real_images(tmp_path, recife, readers, workers,
                                                                            options):
    dataset = write_shards(tmp_path, recife_records(recife, 12), per_shard=4)
    reader = readers(dataset, 256, rank=1, world_size=2, decode_workers=workers, **options)  # half the pairs an epoch
    kept = []
    for epoch in range(4):
        assert served(reader, epoch) == from_scratch(reader, epoch)
        kept.append(len(reader.kept))
    assert kept[0] == reader.batches * reader.batch_size and kept[-1] > kept[0]  # new pairs met were kept too
    if workers == THREAD:
        key, pair = reader.loaded.get(next(iter(reader.loaded)))
        assert pair.shape == (2, load_size_for(256), load_size_for(256), 3)


def test_pairs_beyond_the_memory_cap_are_decoded_in_every_epoch(noise_dataset, readers):
    pair_bytes = 2 * load_size_for(SIZE) ** 2 * 3
    reader = readers(noise_dataset, loaded_bytes=5 * pair_bytes + pair_bytes // 2)
    for epoch in range(3):
        assert served(reader, epoch) == from_scratch(reader, epoch)
        assert len(reader.loaded) == 5 and reader.loaded.size_bytes == 5 * pair_bytes
    nothing_kept = readers(noise_dataset, loaded_bytes=0)
    assert served(nothing_kept, 1) == from_scratch(nothing_kept, 1) and len(nothing_kept.loaded) == 0


def test_decode_processes_reuse_their_ring_for_batches_across_chunks(tmp_path, readers):
    """Batches of 10 span the processes' chunks of 8 pairs, in an epoch longer than their ring."""
    dataset = write_shards(tmp_path, [record(f"pair-{number:02d}", number) for number in range(90)], per_shard=30)
    reader = readers(dataset, decode_workers=PROCESSES, batch_size=10)
    assert reader.batches * reader.batch_size > len(reader.processes.ring)
    for epoch in range(2):
        assert served(reader, epoch) == from_scratch(reader, epoch)


def test_decode_processes_fill_the_memory_they_are_given(noise_dataset, readers):
    """A GPU worker's batches are made in pinned memory, tensors the pinned allocator owns (it
    then knows when a copy to the GPU still reads them): the processes fill the array
    ``allocate`` gives and hand out what owns it."""
    reader = readers(noise_dataset, decode_workers=PROCESSES)
    made = []

    def allocate(shape):
        made.append(torch.empty(shape, dtype=torch.uint8))
        return made[-1].numpy(), made[-1]

    rows = [((0, row), record) for row, record in enumerate(reader.records(0))]
    batches = list(reader.processes.batches(0, rows, allocate))
    augment = EpochAugmentation(SIZE, SEED, 0)
    expected = [stack_pairs(batch) for batch in in_batches((augment(record) for _, record in rows), 2)]
    handed_out = [tensor for batch in batches for tensor in (batch["source"], batch["target"])]
    assert len(handed_out) == len(made) and all(out is mine for out, mine in zip(handed_out, made))
    assert all(torch.equal(batch[name], torch.from_numpy(wanted[name]))
               for batch, wanted in zip(batches, expected, strict=True) for name in ("source", "target"))


def test_decode_processes_share_the_memory_cap(noise_dataset, readers):
    pair_bytes = 2 * load_size_for(SIZE) ** 2 * 3
    reader = readers(noise_dataset, decode_workers=PROCESSES, loaded_bytes=PROCESSES * 2 * pair_bytes - 1)
    kept = []
    for epoch in range(3):
        assert served(reader, epoch) == from_scratch(reader, epoch)
        kept.append(len(reader.kept))
    assert kept == [PROCESSES, PROCESSES, PROCESSES]  # one pair each: a second would pass its share


@pytest.mark.parametrize("workers", [THREAD, PROCESSES])
def test_an_epoch_of_kept_pairs_reads_no_shard(noise_dataset, readers, workers):
    reader = readers(noise_dataset, decode_workers=workers)
    expected = from_scratch(reader, 1)
    served(reader, 0)
    for shard in Path(noise_dataset, "train").glob("*.parquet"):
        shard.unlink()
    assert served(reader, 1) == expected


@pytest.mark.parametrize("workers", [THREAD, PROCESSES])
def test_a_shard_read_for_pairs_not_kept_is_still_checked(noise_dataset, readers, workers):
    reader = readers(noise_dataset, world_size=2, decode_workers=workers)  # keeps half the pairs in epoch 0
    served(reader, 0)
    for shard in Path(noise_dataset, "train").glob("*.parquet"):  # the dataset changes under the run
        table = pq.read_table(shard)
        pq.write_table(table.slice(0, table.num_rows - 1), shard)
    with pytest.raises(shards.DatasetError, match="holds 5 pairs, 6 when the job started"):
        served(reader, 1)


def test_pairs_kept_from_many_threads_at_once_stay_within_the_cap_and_lose_no_room():
    """Eight threads keep pairs at once, the first ten of each failing to be made: their rooms go
    back (else those 80 would take the 50 there are), and each kept pair is its own."""
    kept = KeptPairs((2, 4, 4, 3), limit_bytes=50 * 2 * 4 * 4 * 3)
    barrier = threading.Barrier(8)

    def value(place) -> int:
        return (place[0] * 100 + place[1]) % 251

    def maker(place):
        def make(room):
            if place[1] < 10:
                raise BadImage("cannot decode image")
            pair = np.empty((2, 4, 4, 3), np.uint8) if room is None else room
            pair[...] = value(place)
            return pair
        return make

    def keep_all(thread: int) -> None:
        barrier.wait()
        for row in range(100):
            with contextlib.suppress(BadImage):
                kept.keep_made((thread, row), f"{thread}/{row}", maker((thread, row)))

    threads = [threading.Thread(target=keep_all, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kept) == 50 and kept.size_bytes == 50 * kept.pair_bytes
    for place in kept:
        key, pair = kept.get(place)
        assert key == f"{place[0]}/{place[1]}" and (pair == value(place)).all() and not pair.flags.writeable


def resident_bytes(pid: int | str = "self") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def test_rooms_reserved_hold_their_memory_at_once_within_the_cap_and_take_the_pairs_kept():
    pair_shape, mib = (2, 256, 256, 8), 2**20  # 1 MiB a pair
    kept = KeptPairs(pair_shape, limit_bytes=80 * mib)
    before = resident_bytes()
    kept.reserve(1_000)  # more than the cap holds
    assert 76 * mib <= resident_bytes() - before <= 84 * mib
    for row in range(100):
        kept.keep_made((0, row), str(row), lambda room: room)
    assert len(kept) == 80 and resident_bytes() - before <= 84 * mib  # the pairs went into the rooms reserved


def test_decode_processes_hold_the_memory_of_their_first_epochs_pairs_before_it(tmp_path, readers):
    """They start while the worker builds its model: the pages of the pairs they will keep are
    faulted in then (~0.16 ms a pair on a 2-vCPU VM), not while the epoch waits for them."""
    dataset = write_shards(tmp_path, [record(f"pair-{number:02d}", number) for number in range(90)], per_shard=30)
    reserving = readers(dataset, image_size=256, decode_workers=PROCESSES, batch_size=10)
    keeping_none = readers(dataset, image_size=256, decode_workers=PROCESSES, batch_size=10, loaded_bytes=0)
    for reader in (reserving, keeping_none):
        reader.processes.wait_started()
    pair_bytes = 2 * load_size_for(256) ** 2 * 3
    share = 45 * pair_bytes  # 90 pairs an epoch, half a process: 22 MB, in blocks of 64 pairs
    for process, without in zip(reserving.processes._processes, keeping_none.processes._processes, strict=True):
        grown = resident_bytes(process.pid) - resident_bytes(without.pid)
        assert 0.95 * share <= grown <= KeptPairs.BLOCK_PAIRS * pair_bytes * 1.05


@pytest.mark.parametrize("workers", [THREAD, PROCESSES])
def test_a_pair_that_cannot_be_decoded_fails_the_epoch_with_its_reason(tmp_path, readers, workers):
    records = [record(f"pair-{number:02d}", number) for number in range(6)]
    records[3] = {**records[3], "source": b"not an image"}
    reader = readers(write_shards(tmp_path, records, per_shard=6), decode_workers=workers)
    with pytest.raises(BadImage, match="not a recognised image format"):
        served(reader, 0)


def test_an_epoch_stopped_early_leaves_the_next_one_whole_and_a_killed_process_fails_it(noise_dataset, readers):
    reader = readers(noise_dataset, decode_workers=PROCESSES, loaded_bytes=0)
    batches = reader.epoch(0)
    next(batches)
    batches.close()  # a budget that ran out inside the epoch: the processes still owe answers
    assert served(reader, 1) == from_scratch(reader, 1)
    os.kill(reader.processes._processes[0].pid, 9)
    with pytest.raises(DecodeProcessError, match="a decode process ended"):  # not a hang
        served(reader, 2)


def test_closing_ends_the_decode_processes_and_frees_their_shared_memory(noise_dataset):
    reader = reader_of(noise_dataset, decode_workers=PROCESSES)
    served(reader, 0)
    processes, ring = reader.processes._processes, Path("/dev/shm", reader.processes._memory.name)
    assert ring.exists() and all(process.poll() is None for process in processes)
    reader.close()
    assert not ring.exists() and all(process.poll() is not None for process in processes)


def test_decode_processes_start_inside_a_ray_worker(noise_dataset, ray_session):
    """Where a GPU worker starts them: a Ray worker process, whose main module is Ray's script."""

    @ray_session.remote(num_cpus=0.5)
    def first_epoch(dataset: str) -> tuple[bool, list[bytes]]:
        with contextlib.closing(reader_of(dataset, decode_workers=PROCESSES)) as reader:
            return reader.processes is not None, served(reader, 0)

    in_processes, batches = ray_session.get(first_epoch.remote(noise_dataset))
    assert in_processes and batches == from_scratch(reader_of(noise_dataset), 0)


def test_a_worker_says_what_its_input_runs_on_and_warns_without_shared_memory(noise_dataset, readers, monkeypatch):
    from pix2pix.distributed.train_worker import input_line

    line = input_line(readers(noise_dataset, decode_workers=PROCESSES, loaded_bytes=2 * 10**9))
    assert line == "input: 2 decode processes a worker, decoded pairs kept up to 2.0 GB a worker"
    monkeypatch.setattr(decode_processes, "shared_memory_room", lambda: 100_000)  # a /dev/shm all but full
    reader = readers(noise_dataset, decode_workers=PROCESSES)
    assert reader.processes is None and served(reader, 0) == from_scratch(reader, 0)
    assert input_line(reader).startswith("warning: input: one decode thread a worker, not 2 processes: "
                                                    "/dev/shm has no room")
