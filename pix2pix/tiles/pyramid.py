"""The zoom levels below a translated zoom, for a map zoomed out: each tile made from its four
children, one level at a time, so memory holds a few tiles whatever the area. Class tiles take
each 2x2 block's mode, as GDAL builds the class COG's overviews, so a level equals that COG's
overview at its zoom pixel for pixel; colour tiles are averaged. No Ray.

GDAL's mode (3.10, measured: tests/test_pyramid.py holds it to that) is cascaded: each overview
is computed from the one above it, not from the full resolution, over 2x2 blocks. Nodata is left
out of the count (a block of nodata only stays nodata). It reads a block's pixels in row order
(top left, top right, bottom left, bottom right) and takes a class when its count passes the
highest so far: the most frequent class wins, and of classes equally frequent, the one whose
last pixel comes first in that order (top left and bottom right against top right and bottom
left: the latter wins).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from functools import partial

import numpy as np

from pix2pix import storage
from pix2pix.images import encode_image
from pix2pix.model.palette import NODATA_CLASS, Palette, encode_paletted_png
from pix2pix.tiles.tile_pixels import embedded_palette, is_paletted, tile_classes, tile_rgba
from pix2pix.tiles.tileset import TileSet, ordered_map
from pix2pix.tiles.xyz import TileKey, tile_key_path

FIT_TILES = 4  # the default lowest zoom shows the whole area in this many tiles each way at most: about a screen


def default_min_zoom(tiles: Iterable[TileKey]) -> int:
    """The deepest zoom at which the tiles of the deepest zoom fit in FIT_TILES x FIT_TILES
    tiles: the whole area in a few tiles, below which a pyramid would show nothing more."""
    tiles = list(tiles)
    deepest = max(tile.z for tile in tiles)
    tiles = [tile for tile in tiles if tile.z == deepest]
    for zoom in range(deepest, 0, -1):
        shift = deepest - zoom
        columns = (max(t.x for t in tiles) >> shift) - (min(t.x for t in tiles) >> shift) + 1
        rows = (max(t.y for t in tiles) >> shift) - (min(t.y for t in tiles) >> shift) + 1
        if columns <= FIT_TILES and rows <= FIT_TILES:
            return zoom
    return 0


def _block_quarters(pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four pixels of every 2x2 block, in GDAL's reading order."""
    return pixels[0::2, 0::2], pixels[0::2, 1::2], pixels[1::2, 0::2], pixels[1::2, 1::2]


def mode_of_blocks(classes: np.ndarray) -> np.ndarray:
    """(2H, 2W) uint8 class indices -> (H, W): each 2x2 block's class by GDAL's mode (above)."""
    quarters = _block_quarters(classes)
    best = np.full(quarters[0].shape, -1, np.int16)
    result = np.full(quarters[0].shape, NODATA_CLASS, np.uint8)
    for position, value in enumerate(quarters):
        count = sum((other == value).astype(np.int16) for other in quarters)
        # A class's count reaches its total at its last pixel; only that pixel competes.
        last = value != NODATA_CLASS
        for later in quarters[position + 1:]:
            last &= later != value
        score = np.where(last, count * 4 + (3 - position), -1)
        better = score > best
        best = np.where(better, score, best)
        result = np.where(better, value, result)
    return result


def average_of_blocks(rgba: np.ndarray) -> np.ndarray:
    """(2H, 2W, 4) uint8 RGBA -> (H, W, 4): each 2x2 block's colour averaged over its pixels
    weighted by their alpha (a transparent pixel adds no colour), its alpha averaged."""
    wide = rgba.astype(np.uint32)
    alpha = wide[..., 3]
    alpha_sum = sum(_block_quarters(alpha))
    colour_sum = sum(_block_quarters(wide[..., :3] * alpha[..., None]))
    colour = (colour_sum + alpha_sum[..., None] // 2) // np.maximum(alpha_sum, 1)[..., None]
    return np.dstack([colour, (alpha_sum + 2) // 4]).astype(np.uint8)


def encode_colour(rgba: np.ndarray, extension: str) -> bytes:
    """RGBA as a tile of ``extension``: without alpha when opaque, or when JPEG (no alpha there:
    where no child tile was, it is black)."""
    keep_alpha = extension not in (".jpg", ".jpeg") and (rgba[..., 3] < 255).any()
    return encode_image(np.ascontiguousarray(rgba if keep_alpha else rgba[..., :3]), extension.lstrip("."))


def build_pyramid(tileset: TileSet, min_zoom: int, palette: Palette | None) -> dict[TileKey, str]:
    """Write the levels below the tile set's deepest zoom, down to ``min_zoom``, into its folder
    (replacing tiles there); returns the tiles written and their keys. A parent without one
    valid pixel is not written, as translation writes no such tile. ``palette`` (the folder's)
    encodes class tiles; without one, they take the colours of the translated tiles."""
    deepest = tileset.zooms[1]
    size = tileset.tile_size()
    children = dict(tileset.at_zoom(deepest).keys)
    first = tileset.read(min(children))
    paletted = is_paletted(first)
    palette = (palette or embedded_palette(first)) if paletted else None
    written: dict[TileKey, str] = {}
    for zoom in range(deepest - 1, min_zoom - 1, -1):
        parents = sorted({TileKey(zoom, tile.x // 2, tile.y // 2) for tile in children})
        make = partial(_make_parent, tileset=tileset, children=children, size=size, palette=palette)
        children = {parent: key for parent, key in ordered_map(make, parents) if key is not None}
        written.update(children)
    return written


def _make_parent(parent: TileKey, tileset: TileSet, children: dict[TileKey, str], size: int,
                 palette: Palette | None) -> tuple[TileKey, str | None]:
    root = tileset.root
    if palette is not None:
        canvas = np.full((2 * size, 2 * size), NODATA_CLASS, np.uint8)
    else:
        canvas = np.zeros((2 * size, 2 * size, 4), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            child = TileKey(parent.z + 1, 2 * parent.x + dx, 2 * parent.y + dy)
            if child not in children:
                continue
            data = storage.read_bytes(root.filesystem, posixpath.join(root.path, children[child]))
            where = root.join(children[child]).uri
            pixels = tile_classes(data, where, size) if palette is not None else tile_rgba(data, where, size)
            canvas[dy * size:(dy + 1) * size, dx * size:(dx + 1) * size] = pixels
    if palette is not None:
        classes = mode_of_blocks(canvas)
        if (classes == NODATA_CLASS).all():
            return parent, None
        data = encode_paletted_png(classes, palette)
    else:
        rgba = average_of_blocks(canvas)
        if not rgba[..., 3].any():
            return parent, None
        data = encode_colour(rgba, tileset.extension)
    key = tile_key_path(parent, tileset.extension)
    storage.write_bytes(root.filesystem, posixpath.join(root.path, key), data)
    return parent, key
