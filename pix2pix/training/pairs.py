"""Image pairs: finding them in a listing of raw files, the train/val split, and decoding a
shard row into its two images.

Two input layouts:
- side-by-side: one image per pair, source and target as its halves (the pix2pix datasets);
- paired folders: ``<source_dir>/`` and ``<target_dir>/`` (e.g. sat/ and map/) with files
  matched by relative path and stem, any mix of image extensions.

A split already present as top-level ``train/``, ``val/`` (and ``test/``) folders is kept;
input without one is split by a hash of each pair's key, so the split never changes when
files are added or the job is re-run.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pix2pix.hashing import stable_hash
from pix2pix.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImage, decode_image

SPLITS = ("train", "val", "test")
SIDE_BY_SIDE = "side-by-side"
PAIRED = "paired"
LAYOUTS = (SIDE_BY_SIDE, PAIRED)
DIRECTIONS = ("AtoB", "BtoA")


@dataclass(frozen=True)
class PairSpec:
    """Where one pair's files are; the prepare job reads and checks them."""

    key: str
    split: str
    layout: str
    image_path: str | None = None
    source_side: str | None = None
    source_path: str | None = None
    target_path: str | None = None


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def split_for_key(key: str, val_fraction: float) -> str:
    return "val" if stable_hash(key) / 2**64 < val_fraction else "train"


def detect_layout(relative_paths: list[str], source_dir: str, target_dir: str) -> str:
    for path in relative_paths:
        parts = path.split("/")[:-1]
        if source_dir in parts or target_dir in parts:
            return PAIRED
    return SIDE_BY_SIDE


def discover_pairs(
    relative_paths: list[str],
    layout: str = "auto",
    source_dir: str = "sat",
    target_dir: str = "map",
    direction: str = "AtoB",
    val_fraction: float = 0.1,
) -> tuple[list[PairSpec], list[Skipped]]:
    """Group relative file paths into pairs. Returns (pairs sorted by split and key, skipped)."""
    images = [path for path in relative_paths if path.lower().endswith(IMAGE_SUFFIXES)]
    skipped = [Skipped(path, "not an image file") for path in relative_paths if path not in set(images)]
    if layout == "auto":
        layout = detect_layout(images, source_dir, target_dir)
    has_split = any(path.split("/")[0] in SPLITS for path in images)

    def split_and_rest(path: str) -> tuple[str | None, str]:
        first, _, rest = path.partition("/")
        if has_split:
            return (first, rest) if first in SPLITS and rest else (None, path)
        return "", path

    if direction == "BtoA":
        source_dir, target_dir = target_dir, source_dir
    pairs: list[PairSpec] = []
    if layout == SIDE_BY_SIDE:
        source_side = "left" if direction == "AtoB" else "right"
        seen: dict[tuple[str, str], str] = {}
        for path in images:
            split, rest = split_and_rest(path)
            if split is None:
                skipped.append(Skipped(path, "outside the train/val/test folders"))
                continue
            key = posixpath.splitext(rest)[0]
            if (split, key) in seen:
                skipped.append(Skipped(path, f"duplicate key {key!r} (also {seen[split, key]})"))
                continue
            seen[split, key] = path
            pairs.append(PairSpec(key, split or split_for_key(key, val_fraction), SIDE_BY_SIDE,
                                  image_path=path, source_side=source_side))
    elif layout == PAIRED:
        roles: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for path in images:
            split, rest = split_and_rest(path)
            parts = rest.split("/")
            role = next((part for part in parts[:-1] if part in (source_dir, target_dir)), None)
            if split is None or role is None:
                where = "the train/val/test folders" if split is None else f"{source_dir}/ or {target_dir}/"
                skipped.append(Skipped(path, f"outside {where}"))
                continue
            parts.remove(role)
            key = posixpath.splitext("/".join(parts))[0]
            roles[split, key][role].append(path)
        for (split, key), found in sorted(roles.items()):
            sources, targets = found.get(source_dir, []), found.get(target_dir, [])
            if len(sources) != 1 or len(targets) != 1:
                for path in sources + targets:
                    skipped.append(Skipped(path, _pairing_problem(key, sources, targets, source_dir, target_dir)))
                continue
            pairs.append(PairSpec(key, split or split_for_key(key, val_fraction), PAIRED,
                                  source_path=sources[0], target_path=targets[0]))
    else:
        raise ValueError(f"unknown layout {layout!r}: use auto, {SIDE_BY_SIDE} or {PAIRED}")
    pairs.sort(key=lambda pair: (pair.split, pair.key))
    return pairs, skipped


def _pairing_problem(key, sources, targets, source_dir, target_dir) -> str:
    if not targets:
        return f"no matching file in {target_dir}/ for {key!r}"
    if not sources:
        return f"no matching file in {source_dir}/ for {key!r}"
    return f"ambiguous pair {key!r}: {len(sources)} source and {len(targets)} target files share the stem"


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
