"""Training chips cut from georeferenced rasters: an image raster and the label rasters over it,
read window by window on the image's pixel grid, so memory stays flat whatever the scene's size.

Label rasters on another grid (CRS, resolution or origin) are read through a GDAL warped VRT onto
the image's grid by nearest neighbour: classes are never blended. Class indices become their
colour-table colours, so a chip pair is an RGB image and an RGB map like any other pair. Where
several label rasters cover a pixel, the first in order that has a label there wins.

A chip is `size` pixels square; chips start every `stride` pixels and lie wholly inside the image.
Its key is `<image name>/r<row>_c<column>`, the pixel window's corner in the image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pix2pix.model.palette import NODATA_CLASS
from pix2pix.tiles.chip_inputs import (
    RasterInfo,
    colour_table,
    describe,
    find_rasters,
    intersects,
    open_raster,
    overlaps,
    pixel_extent,
)
from pix2pix.tiles.rasters import RasterError

# A chip with more than this share of its pixels without data, in the image or the labels, is
# skipped: it would teach the model mostly the fill colour.
MAX_NODATA_SHARE = 0.5
MOSTLY_NODATA = "mostly nodata"
# Chips read in one window: 16 chips of 256 px are ~6 MB of pixels, and one open of each raster.
CHIPS_PER_GROUP = 16
NO_LABELS = "no label raster overlaps it"


@dataclass(frozen=True)
class ChipGroup:
    """Up to CHIPS_PER_GROUP chips side by side in one row of an image's chip grid: one read."""

    image: str
    name: str
    labels: tuple[str, ...]
    row: int
    column: int
    count: int


@dataclass(frozen=True)
class ChipPlan:
    """Every chip to cut, in groups, and the image rasters left out."""

    images: list[str]  # as the user gave them
    labels: list[str]
    size: int
    stride: int
    groups: list[ChipGroup]
    skipped_files: list[tuple[str, str]]  # (image raster, reason)

    @property
    def chips(self) -> int:
        return sum(group.count for group in self.groups)


@dataclass(frozen=True)
class Chip:
    """One chip: (size, size, 3) uint8 image and map pixels, or the reason it was skipped."""

    key: str
    image: np.ndarray | None
    labels: np.ndarray | None
    skipped: str | None = None


def chip_key(name: str, row: int, column: int) -> str:
    return f"{name}/r{row}_c{column}"


def group_keys(group: ChipGroup, stride: int) -> list[str]:
    return [chip_key(group.name, group.row, group.column + index * stride) for index in range(group.count)]


def chip_offsets(length: int, size: int, stride: int) -> range:
    return range(0, length - size + 1, stride)


def plan_chips(image_uris: list[str], label_uris: list[str], size: int, stride: int) -> ChipPlan:
    """Find and check every raster (headers only) and group the chips; a RasterError before
    anything is written when an input cannot be used."""
    images = [describe(uri, name, "image") for uri, name in find_rasters(image_uris, "image")]
    labels = [describe(uri, name, "labels") for uri, name in find_rasters(label_uris, "label")]
    names = [image.name for image in images]
    if len(set(names)) < len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise RasterError(f"two image rasters would give their chips the same keys: {', '.join(twice)} "
                               "(give their folder as a prefix instead)")
    groups, skipped = [], []
    for image in images:
        over = [(label.uri, pixel_extent(image, label)) for label in labels if overlaps(image, label)]
        if not over:
            skipped.append((image.uri, NO_LABELS))
        elif min(image.width, image.height) < size:
            skipped.append((image.uri, f"{image.width}x{image.height} is smaller than one {size}-pixel chip"))
        else:
            groups += image_groups(image, over, size, stride)
    if not groups:
        if len(images) == len(labels) == 1 and skipped[0][1] == NO_LABELS:
            raise RasterError(f"the label raster {labels[0].uri} does not overlap the image {images[0].uri}")
        reasons = "; ".join(f"{uri}: {reason}" for uri, reason in skipped[:3])
        raise RasterError(f"no chips to cut from {len(images)} image raster(s): {reasons}")
    return ChipPlan(image_uris, label_uris, size, stride, groups, skipped)


def image_groups(image: RasterInfo, labels: list[tuple[str, tuple]], size: int, stride: int) -> list[ChipGroup]:
    """The image's chips in groups, each with the label rasters (URI, pixel extent) over its window."""
    columns = list(chip_offsets(image.width, size, stride))
    per_group = max(1, CHIPS_PER_GROUP * size // max(stride, size))  # a sparse stride must not widen the window
    groups = []
    for row in chip_offsets(image.height, size, stride):
        for start in range(0, len(columns), per_group):
            count = len(columns[start:start + per_group])
            right = columns[start] + stride * (count - 1) + size
            over = tuple(uri for uri, extent in labels if intersects(extent, columns[start], row, right, row + size))
            groups.append(ChipGroup(image.uri, image.name, over, row, columns[start], count))
    return groups


def cut_chips(group: ChipGroup, size: int, stride: int) -> list[Chip]:
    """The group's chips, read in one window of the image and of each label raster."""
    if not group.labels:
        return [Chip(key, None, None, MOSTLY_NODATA) for key in group_keys(group, stride)]
    window = Window(group.column, group.row, stride * (group.count - 1) + size, size)
    with open_raster(group.image) as image:
        pixels = np.moveaxis(image.read((1, 2, 3), window=window), 0, -1)
        valid = image.dataset_mask(window=window) > 0
        grid = (image.crs, image.transform, image.width, image.height)
    colours, labelled = read_labels(group.labels, grid, window)
    valid &= labelled
    chips = []
    for index, key in enumerate(group_keys(group, stride)):
        part = np.s_[:, index * stride:index * stride + size]
        if 1.0 - valid[part].mean() > MAX_NODATA_SHARE:
            chips.append(Chip(key, None, None, MOSTLY_NODATA))
        else:
            chips.append(Chip(key, np.ascontiguousarray(pixels[part]), np.ascontiguousarray(colours[part])))
    return chips


def read_labels(uris: tuple[str, ...], grid: tuple, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) label colours of the window on the image's grid and where there are labels."""
    colours = np.zeros((window.height, window.width, 3), np.uint8)
    labelled = np.zeros((window.height, window.width), bool)
    for uri in uris:
        with open_raster(uri) as dataset, on_grid(dataset, *grid) as aligned:
            mask = aligned.dataset_mask(window=window) > 0
            if dataset.count == 1:
                classes = aligned.read(1, window=window)
                found, mask = colour_table(dataset)[classes], mask & (classes != NODATA_CLASS)
            else:
                found = np.moveaxis(aligned.read((1, 2, 3), window=window), 0, -1)
        fill = mask & ~labelled
        colours[fill] = found[fill]
        labelled |= mask
        if labelled.all():
            break
    return colours, labelled


@contextlib.contextmanager
def on_grid(dataset, crs, transform, width: int, height: int) -> Iterator:
    """The dataset as it lies on the image's grid: itself when the grids agree, else warped by
    nearest neighbour (with an alpha band for where it has no data, unless a nodata value says so)."""
    if (dataset.crs == crs and dataset.transform.almost_equals(transform)
            and (dataset.width, dataset.height) == (width, height)):
        yield dataset
        return
    with WarpedVRT(dataset, crs=crs, transform=transform, width=width, height=height,
                   resampling=Resampling.nearest, add_alpha=dataset.nodata is None) as warped:
        yield warped

