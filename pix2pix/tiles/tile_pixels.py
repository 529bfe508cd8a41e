"""A packed tile's pixels: the class indices of a paletted tile, the RGBA of any other, and the
palette a paletted tile carries. Every tile of a set has one size; a tile that is not an image
of that size ends the job with its key. No Ray."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from pix2pix.model.palette import MAX_CLASSES, Palette
from pix2pix.tiles.tileset import TileSetError

TILE_FORMATS = ("PNG", "JPEG", "WEBP")  # what tileset.TILE_TYPES packs; nothing else is decoded


def open_tile(data: bytes, where: str, size: int) -> Image.Image:
    """The tile's image, checked to be ``size`` x ``size`` before its pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=TILE_FORMATS)
            if image.size != (size, size):
                raise TileSetError(f"{where} is {image.size[0]}x{image.size[1]}, the other tiles {size}x{size}")
            image.load()
    except TileSetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise TileSetError(f"{where} is not a readable tile: {error}") from None
    return image


def is_paletted(data: bytes) -> bool:
    """Whether a tile holds class indices (a paletted image) rather than colours."""
    with Image.open(io.BytesIO(data), formats=TILE_FORMATS) as image:
        return image.mode == "P"


def tile_classes(data: bytes, where: str, size: int) -> np.ndarray:
    """(size, size) uint8 class indices of a paletted tile."""
    image = open_tile(data, where, size)
    if image.mode != "P":
        raise TileSetError(f"{where} is not a paletted tile of class indices (mode {image.mode})")
    return np.asarray(image, dtype=np.uint8)


def tile_rgba(data: bytes, where: str, size: int) -> np.ndarray:
    """(size, size, 4) uint8 RGBA of any tile; opaque where the tile has no alpha."""
    return np.asarray(open_tile(data, where, size).convert("RGBA"), dtype=np.uint8)


def embedded_palette(data: bytes) -> Palette:
    """The colours of a paletted tile, named by index ("0", "1", ...): the palette of a folder
    without a tiles.json. Index NODATA_CLASS and above are not classes."""
    with Image.open(io.BytesIO(data), formats=TILE_FORMATS) as image:
        raw = image.getpalette() or []
    count = min(len(raw) // 3, MAX_CLASSES)
    return {str(index): tuple(raw[3 * index:3 * index + 3]) for index in range(count)}
