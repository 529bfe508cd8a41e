"""A training worker's input: each pair's augmentation seeded by (run seed, epoch, key), decoded by
several threads into the same batches as by one."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pix2pix.images import encode_image
from pix2pix.training import shards
from pix2pix.training.augmentation import EpochAugmentation, paired_transform, seed_transform
from pix2pix.training.shards import SHARD_SCHEMA, ordered_map

SIZE = 32  # resized to 36, then a random 32 crop: 5 x 5 positions and a flip


def noise(seed: int, size: int = 40) -> np.ndarray:
    """Textured, so that every crop position and flip gives other pixels."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def record(key: str, seed: int) -> dict:
    image = encode_image(noise(seed))
    return {"key": key, "layout": "paired", "image": None, "source_side": None, "source": image, "target": image}


RECORDS = [record(f"pair-{number:02d}", number) for number in range(16)]


def augmented(augment: EpochAugmentation, records: list[dict]) -> dict[str, bytes]:
    return {item["key"]: b"".join(part.tobytes() for part in augment(item)) for item in records}


def test_a_pairs_augmentation_depends_on_seed_epoch_and_key_alone():
    expected = augmented(EpochAugmentation(SIZE, seed=3, epoch=1), RECORDS)
    shuffled = random.Random(0).sample(RECORDS, len(RECORDS))
    assert augmented(EpochAugmentation(SIZE, seed=3, epoch=1), shuffled) == expected  # any order
    shared = EpochAugmentation(SIZE, seed=3, epoch=1)
    with ThreadPoolExecutor(4) as pool:  # any thread, several at once on one augmentation
        parts = list(pool.map(lambda item: augmented(shared, [item]), shuffled))
    assert {key: value for part in parts for key, value in part.items()} == expected
    assert len(set(expected.values())) == len(RECORDS)
    for other in (EpochAugmentation(SIZE, seed=3, epoch=2), EpochAugmentation(SIZE, seed=4, epoch=1)):
        changed = augmented(other, RECORDS)
        assert sum(changed[key] != expected[key] for key in expected) >= len(RECORDS) // 2


def test_the_flip_does_not_follow_the_crop():
    """One stream for all the steps: seeded one by one with the same number, the flip's draw
    would equal the crop's first one (flipped exactly when the crop is in the top half)."""
    rows, columns = np.mgrid[0:36, 0:36]
    image = np.stack([columns * 7, rows * 7, np.zeros_like(rows)], axis=2).astype(np.uint8)  # 36 px: no resize
    transform = paired_transform(SIZE, train=True)
    seen = set()
    for seed in range(64):
        seed_transform(transform, seed)
        crop = transform(image=image, target=image)["image"]
        flipped = bool(crop[0, 0, 0] > crop[0, -1, 0])
        top = int(crop[0, 0, 1]) // 7 < 2  # crop rows start at 0..4
        seen.add((flipped, top))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


@pytest.fixture
def dataset(tmp_path) -> str:
    (tmp_path / "train").mkdir()
    for shard in range(3):
        rows = [record(f"pair-{number:02d}", number) for number in range(shard * 6, shard * 6 + 6)]
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), tmp_path / "train" / f"{shard}.parquet")
    return str(tmp_path)


def epoch_batches(dataset: str, epoch: int, decode_workers: int, batch_size: int = 4) -> list[torch.Tensor]:
    train, _ = shards.find_shards(dataset)
    with contextlib.closing(shards.TrainingPairs(dataset, train, SIZE, batch_size, seed=7,
                                                 decode_workers=decode_workers)) as reader:
        epoch_batches = list(reader.epoch(epoch))
    assert len(epoch_batches) == reader.batches == 18 // batch_size
    for batch in epoch_batches:  # NCHW, channels_last in memory: the crops as made, the layout a GPU trains in
        assert batch["source"].shape == (batch_size, 3, SIZE, SIZE)
        assert batch["source"].is_contiguous(memory_format=torch.channels_last)
    batches = [torch.cat([batch["source"], batch["target"]]) for batch in epoch_batches]
    return batches


def test_the_batches_are_the_same_from_a_decode_thread_and_from_decode_processes(dataset):
    one = epoch_batches(dataset, 2, decode_workers=1)
    assert all(torch.equal(a, b) for a, b in zip(one, epoch_batches(dataset, 2, decode_workers=3)))
    assert not all(torch.equal(a, b) for a, b in zip(one, epoch_batches(dataset, 3, decode_workers=1)))


def test_ordered_map_keeps_the_order_and_runs_the_workers_at_once():
    running, most = 0, 0
    lock = threading.Lock()

    def slow_first(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05 if item % 4 == 0 else 0.005)  # later items finish before earlier ones
        with lock:
            running -= 1
        return item * 10

    assert list(ordered_map(slow_first, iter(range(24)), workers=4, ahead=8)) == [item * 10 for item in range(24)]
    assert most == 4


def test_ordered_map_raises_an_items_error_in_its_place_and_stops_its_threads():
    def fails_at_three(item: int) -> int:
        if item == 3:
            raise ValueError("bad pair 3")
        return item

    results = ordered_map(fails_at_three, iter(range(10)), workers=3, ahead=4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad pair 3"):
        next(results)
    taken = ordered_map(lambda item: item, iter(range(100)), workers=3, ahead=4)
    assert next(taken) == 0
    taken.close()  # a consumer that stops early
    deadline = time.monotonic() + 5
    while any(thread.name.startswith("pix2pix-decode") for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "decode threads still running"
        time.sleep(0.01)
