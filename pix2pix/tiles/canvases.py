"""Canvases for the generator: the size policy for tiles, context margins, and laying a
block's tiles (and the ring of neighbours around it) on one canvas and cropping them back.
numpy and OpenCV; no Ray, no storage, no torch."""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from pix2pix.errors import ConfigError
from pix2pix.images import DEFAULT_MAX_PIXELS, BadImage

ON_SIZE = ("resize", "error")
HOLE_VALUE = 128  # a missing tile inside a block: mid-grey, ~0 in the model's range
# A tile may be up to this many times the model's size per side (it is resized); anything
# declaring more is refused from its header, before a pixel is decoded (image bombs).
MAX_TILE_SCALE = 8

def tile_pixel_limit(image_size: int) -> int:
    """The most pixels a tile may declare, from the size the job expects."""
    return min(DEFAULT_MAX_PIXELS, (MAX_TILE_SCALE * image_size) ** 2)


def fit_tile(image: np.ndarray, size: int, on_size: str) -> np.ndarray:
    """Apply the size policy: a tile of another size is resized or rejected (BadImage)."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    if on_size == "error":
        raise BadImage(f"tile is {width}x{height}, expected {size}x{size} (--on-size error)")
    shrinking = width * height > size * size
    try:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    except cv2.error as error:  # e.g. a size OpenCV cannot allocate: a bad tile, not a failed job
        raise BadImage(f"cannot resize the {width}x{height} tile to {size}x{size}: {error.err}") from None


def context_margin(pixels: int, tile_size: int, depth: int) -> int:
    """The margin of real pixels around a block: at least ``pixels``, rounded up so that the
    padded block stays a multiple of 2^depth (tile_size already is one)."""
    if pixels <= 0:
        return 0
    step = 2 ** (depth - 1)
    margin = math.ceil(pixels / step) * step
    if margin > tile_size:
        raise ConfigError(
            f"--context {pixels} needs a {margin} px margin, more than one {tile_size} px tile; "
            f"use at most {tile_size // step * step}"
        )
    return margin


def assemble_canvas(
    tiles: Mapping[tuple[int, int], np.ndarray], columns: int, rows: int, tile_size: int, margin: int
) -> np.ndarray:
    """Place a block's tiles, keyed (column, row) from the block's top-left, on one canvas with
    ``margin`` pixels around it. Positions outside the block are its neighbour ring: their
    pixels fill the margin where present; elsewhere the margin reflects the block. Tiles
    missing inside the block are mid-grey."""
    size = tile_size
    block = np.full((rows * size, columns * size, 3), HOLE_VALUE, dtype=np.uint8)
    for (column, row), image in tiles.items():
        if 0 <= column < columns and 0 <= row < rows:
            block[row * size:(row + 1) * size, column * size:(column + 1) * size] = image
    if margin == 0:
        return block
    canvas = np.pad(block, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    height, width = canvas.shape[:2]
    for (column, row), image in tiles.items():
        if 0 <= column < columns and 0 <= row < rows:
            continue
        top, left = margin + row * size, margin + column * size
        y0, y1 = max(top, 0), min(top + size, height)
        x0, x1 = max(left, 0), min(left + size, width)
        if y0 < y1 and x0 < x1:
            canvas[y0:y1, x0:x1] = image[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


def fill_invalid(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """What the generator sees where a raster has no valid pixel: its nearest valid pixel's
    colour. Mid-grey changed the class of 13% of the valid pixels within 8 px of the edge (9%
    further away: a U-Net sees the whole canvas), edge-extension 2% (bench/raster_nodata_fill.py)."""
    _, labels = cv2.distanceTransformWithLabels((~valid).view(np.uint8), cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    colours = np.zeros((int(labels.max()) + 1, 3), np.uint8)
    colours[labels[valid]] = pixels[valid]
    pixels[~valid] = colours[labels[~valid]]
    return pixels


def crop_tile(canvas: np.ndarray, column: int, row: int, tile_size: int, margin: int) -> np.ndarray:
    top, left = margin + row * tile_size, margin + column * tile_size
    return canvas[top:top + tile_size, left:left + tile_size]
