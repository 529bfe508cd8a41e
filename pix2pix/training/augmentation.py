"""The paper's augmentation of training pairs (albumentations), identical for source and target,
and shard rows turned into model-ready batches.

Rows come in the shard schema (``pix2pix.training.shards.SHARD_SCHEMA``). Bytes are never
re-encoded; pairs are split and decoded when they are read.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pix2pix.hashing import stable_seed  # noqa: E402
from pix2pix.training.pairs import decode_pair  # noqa: E402


def load_size_for(image_size: int) -> int:
    """The paper resizes 256 px images to 286 before a random 256 crop: the same ratio."""
    return int(round(image_size * 286 / 256))


def paired_transform(image_size: int, train: bool, seed: int | None = None,
                     target_interpolation: int = cv2.INTER_NEAREST, crop_size: int | None = None,
                     flips: str = "horizontal") -> A.Compose:
    """The paper's augmentation, identical for source and target: resize to 286, random
    crop 256, random horizontal flip. Evaluation and inference: resize only. ``crop_size``
    (training): a smaller random crop of the resized pair (None: ``image_size``); ``flips``
    "square" (training): one of the square's eight symmetries (rotations by 90 degrees and
    reflections) instead of the horizontal flip, for aerial tiles, which have no up.

    The target is resized with nearest-neighbour interpolation: maps are flat colours, and a
    cubic resize invents in-between colours along every class edge (2.5% of a Recife map's
    pixels), which the generator would then learn to paint. (The paper's code resizes both
    bicubically: ``target_interpolation=cv2.INTER_CUBIC``.)"""
    if train:
        steps = [_resize(load_size_for(image_size), target_interpolation), *_random_steps(image_size, crop_size, flips)]
    else:
        steps = [_resize(image_size, target_interpolation)]
    return _paired(steps, seed)


def random_transform(image_size: int, crop_size: int | None = None, flips: str = "horizontal") -> A.Compose:
    """The rest of ``paired_transform(train=True)``: its random crop and flip, for a pair already at
    the load size (``resize_pair``). Seeded as the whole (``seed_transform``), it draws the same
    numbers as the whole does, so it equals ``paired_transform`` byte for byte after the resize:
    each Compose draws one number for its own p, and albumentations (2.0) draws none for a step of
    p=1 without random parameters, which the Resize is; the crop and flip come next in both."""
    return _paired(_random_steps(image_size, crop_size, flips))


def resize_pair(source: np.ndarray, target: np.ndarray, size: int, into: np.ndarray | None = None) -> np.ndarray:
    """``paired_transform``'s resize for training, byte for byte (its ``A.Resize`` is this
    ``cv2.resize``): (source, target) -> a (2, size, size, 3) uint8 pair, written into ``into``
    when given (a kept pair's room: no copy to keep it)."""
    pair = np.empty((2, size, size, 3), np.uint8) if into is None else into
    for image, resized, interpolation in ((source, pair[0], cv2.INTER_CUBIC), (target, pair[1], cv2.INTER_NEAREST)):
        if cv2.resize(image, (size, size), dst=resized, interpolation=interpolation) is not resized:
            raise ValueError(f"cannot resize a {image.shape} {image.dtype} image into the pair")
    return pair


def _resize(size: int, target_interpolation: int) -> A.Resize:
    return A.Resize(size, size, interpolation=cv2.INTER_CUBIC, mask_interpolation=target_interpolation)


def _random_steps(image_size: int, crop_size: int | None, flips: str) -> list:
    crop = crop_size or image_size
    return [A.RandomCrop(crop, crop), A.HorizontalFlip(p=0.5) if flips == "horizontal" else A.SquareSymmetry(p=1.0)]


def _paired(steps: list, seed: int | None = None) -> A.Compose:
    return A.Compose(steps, additional_targets={"target": "mask"}, seed=seed)


def augment_pair(transform: A.Compose, source: np.ndarray, target: np.ndarray):
    result = transform(image=source, target=target)
    return result["image"], result["target"]


def pair_seed(seed: int, epoch: int, key: str) -> int:
    """The seed of one pair's augmentation in one epoch of a run."""
    return stable_seed(f"{seed}/{epoch}/{key}")


def seed_transform(transform: A.Compose, seed: int) -> None:
    """Seed every step of ``transform`` from one stream. (``Compose.set_random_seed`` gives each
    step a generator of its own with the same seed: their first draws are equal, and the flip
    would follow the crop's position.)"""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


class EpochAugmentation:
    """Decodes and augments one epoch's shard rows, each pair with its own seed (``pair_seed``):
    a pair's crop and flip depend on (run seed, epoch, key) alone, never on which thread or
    process decoded it, nor after which pairs. Safe to call from several threads at once."""

    def __init__(self, image_size: int, seed: int, epoch: int, crop_size: int | None = None,
                 flips: str = "horizontal"):
        self.image_size, self.seed, self.epoch, self.crop_size, self.flips = image_size, seed, epoch, crop_size, flips
        self._local = threading.local()  # one transform per thread: seeding one is a change of its state

    def __call__(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
        """A shard row -> (source, target), uint8 HWC."""
        transform = self._transform("whole", lambda: paired_transform(self.image_size, train=True,
                                                                      crop_size=self.crop_size, flips=self.flips))
        return self._augmented(transform, record["key"], *decode_pair(record))

    def load(self, record: dict, into: np.ndarray | None = None) -> np.ndarray:
        """A shard row decoded and resized to the load size: a (2, L, L, 3) uint8 pair, the same in
        every epoch, written into ``into`` when given (``resize_pair``)."""
        return resize_pair(*decode_pair(record), load_size_for(self.image_size), into)

    def crop_and_flip(self, key: str, pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The random rest on a pair from ``load``, drawn as for ``key`` in this epoch: uint8 HWC, and
        ``crop_and_flip(key, load(record))`` equals ``self(record)`` byte for byte. Reads the pair
        and never writes it (it may be shared)."""
        transform = self._transform("random", lambda: random_transform(self.image_size, self.crop_size, self.flips))
        return self._augmented(transform, key, pair[0], pair[1])

    def _augmented(self, transform: A.Compose, key: str, source: np.ndarray, target: np.ndarray):
        seed_transform(transform, pair_seed(self.seed, self.epoch, key))
        return augment_pair(transform, source, target)

    def _transform(self, name: str, build: Callable[[], A.Compose]) -> A.Compose:
        if not hasattr(self._local, name):
            setattr(self._local, name, build())
        return getattr(self._local, name)


def stack_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """(source, target) pairs of images -> {"source", "target"} uint8 arrays of them: NHWC for
    HWC images, NCHW for CHW ones."""
    return {"source": np.ascontiguousarray(np.stack([source for source, _ in pairs])),
            "target": np.ascontiguousarray(np.stack([target for _, target in pairs]))}


def preprocess_records(records: list[dict], transform: A.Compose) -> dict[str, np.ndarray]:
    """Shard rows -> {"key", "source", "target"} with uint8 NCHW arrays, ready for the model.

    uint8 keeps the batches 4x smaller in transit; scaling to [-1, 1] happens on the device
    (see ``ranges.to_model_range``).
    """
    pairs = [augment_pair(transform, *decode_pair(record)) for record in records]
    return {"key": np.array([record["key"] for record in records], dtype=object),
            **stack_pairs([(source.transpose(2, 0, 1), target.transpose(2, 0, 1)) for source, target in pairs])}


