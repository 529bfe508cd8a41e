"""Decoding, pairing and augmentation of image pairs. Pure numpy/Pillow/albumentations.

Rows come in the shard schema (``pix2pix.shards.SHARD_SCHEMA``). Bytes are never re-encoded;
pairs are split and decoded when they are read.
"""

from __future__ import annotations

import io
import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIDE_BY_SIDE = "side-by-side"
PAIRED = "paired"
LAYOUTS = (SIDE_BY_SIDE, PAIRED)
DIRECTIONS = ("AtoB", "BtoA")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Pillow only warns below 2x its own limit (~179 MP); a tile job knows the size it expects.
DEFAULT_MAX_PIXELS = 4096 * 4096


class BadImage(ValueError):
    """An image (or pair) that cannot be used; the message is the reason recorded for it."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB. Grayscale, palette, RGBA and 16-bit become RGB.

    The declared size is checked from the header before any pixel is decoded.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(f"declared size {width}x{height} exceeds the {max_pixels}-pixel limit")
            image.load()
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise BadImage(f"cannot decode image: {error}") from None
    return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def split_side_by_side(image: np.ndarray, source_side: str) -> tuple[np.ndarray, np.ndarray]:
    """One image holding two halves -> (source, target)."""
    height, width = image.shape[:2]
    if width % 2 or width // 2 != height:
        raise BadImage(f"side-by-side image must be twice as wide as high, got {width}x{height}")
    left, right = image[:, : width // 2], image[:, width // 2 :]
    if source_side == "left":
        return left, right
    if source_side == "right":
        return right, left
    raise BadImage(f"source_side must be 'left' or 'right', got {source_side!r}")


def decode_pair(record: dict, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """A shard row -> (source, target) HxWx3 uint8 arrays of equal size."""
    if record["layout"] == SIDE_BY_SIDE:
        return split_side_by_side(decode_image(record["image"], 2 * max_pixels), record["source_side"])
    if record["layout"] == PAIRED:
        source = decode_image(record["source"], max_pixels)
        target = decode_image(record["target"], max_pixels)
        if source.shape != target.shape:
            raise BadImage(
                f"source is {source.shape[1]}x{source.shape[0]} but target is "
                f"{target.shape[1]}x{target.shape[0]}"
            )
        return source, target
    raise BadImage(f"unknown layout {record['layout']!r}; expected one of {LAYOUTS}")


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


def encode_image(image: np.ndarray, image_format: str = "png", quality: int = 90, png_level: int = 6) -> bytes:
    """HxWx3 uint8 -> encoded bytes (png, jpeg or webp)."""
    buffer = io.BytesIO()
    pil_format = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}[image_format.lower()]
    options = {"quality": quality} if pil_format in ("JPEG", "WEBP") else {"compress_level": png_level}
    Image.fromarray(image).save(buffer, format=pil_format, **options)
    return buffer.getvalue()
