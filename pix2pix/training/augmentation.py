"""The paper's augmentation of training pairs (albumentations), identical for source and target,
and shard rows turned into model-ready batches.

Rows come in the shard schema (``pix2pix.training.shards.SHARD_SCHEMA``). Bytes are never
re-encoded; pairs are split and decoded when they are read.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

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
    interpolation = {"interpolation": cv2.INTER_CUBIC, "mask_interpolation": target_interpolation}
    if train:
        load = load_size_for(image_size)
        steps = [
            A.Resize(load, load, **interpolation),
            A.RandomCrop(crop_size or image_size, crop_size or image_size),
            A.HorizontalFlip(p=0.5) if flips == "horizontal" else A.SquareSymmetry(p=1.0),
        ]
    else:
        steps = [A.Resize(image_size, image_size, **interpolation)]
    return A.Compose(steps, additional_targets={"target": "mask"}, seed=seed)


def augment_pair(transform: A.Compose, source: np.ndarray, target: np.ndarray):
    result = transform(image=source, target=target)
    return result["image"], result["target"]


def preprocess_records(records: list[dict], transform: A.Compose) -> dict[str, np.ndarray]:
    """Shard rows -> {"key", "source", "target"} with uint8 NCHW arrays, ready for the model.

    uint8 keeps the batches 4x smaller in transit; scaling to [-1, 1] happens on the device
    (see ``ranges.to_model_range``).
    """
    sources, targets = [], []
    for record in records:
        source, target = augment_pair(transform, *decode_pair(record))
        sources.append(source.transpose(2, 0, 1))
        targets.append(target.transpose(2, 0, 1))
    return {
        "key": np.array([record["key"] for record in records], dtype=object),
        "source": np.ascontiguousarray(np.stack(sources)),
        "target": np.ascontiguousarray(np.stack(targets)),
    }


