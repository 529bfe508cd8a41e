"""--preview: a picture of a translated region, source and translation side by side.

The source side comes from a loader: the input tile for XYZ input (``input_tiles``), the
window warped from the rasters for raster input (``rasters.read_tile``)."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable

import numpy as np

from pix2pix import storage
from pix2pix.images import BadImage, decode_image, image_grid, side_by_side
from pix2pix.tiles.canvases import fit_tile
from pix2pix.tiles.keys import output_key
from pix2pix.tiles.xyz import TileKey, mosaic, parse_tile_key

PREVIEW_TILES = 4     # a 4x4-tile region
MAX_SAMPLES = 256
MAX_LOOSE = 6         # rows of source | translation when the keys are not XYZ


class PreviewSamples:
    """A bounded sample of translated keys, enough to choose a region after the run."""

    def __init__(self):
        self.group: tuple[str, int] | None = None
        self.tiles: dict[TileKey, str] = {}
        self.loose: list[str] = []

    def offer(self, key: str) -> None:
        tile = parse_tile_key(key) or parse_tile_key(key, extension=False)
        if tile is None:
            if len(self.loose) < MAX_LOOSE:
                self.loose.append(key)
            return
        group = ("/".join(key.split("/")[:-3]), tile.z)
        self.group = self.group or group
        if group == self.group and len(self.tiles) < MAX_SAMPLES:
            self.tiles[tile] = key


SourceLoader = Callable[[str], np.ndarray | None]


def input_tiles(input_root: storage.Location, tile_size: int) -> SourceLoader:
    """The source side of XYZ input: the input tile at a key, fitted to the tile size."""
    return lambda key: _load(input_root, key, tile_size)


def write_preview(uri: str, load_source: SourceLoader, output: storage.Location, samples: PreviewSamples,
                  image_format: str, tile_size: int) -> bool:
    """Write a PNG of a region of the run's tiles; False when no tile could be shown."""
    pairs = _region_pairs(load_source, output, samples, image_format, tile_size)
    if not pairs:
        return False
    if all(isinstance(k, TileKey) for k in pairs):
        sources = {k: source for k, (source, _) in pairs.items()}
        outputs = {k: translated for k, (_, translated) in pairs.items()}
        picture = side_by_side(mosaic(sources), mosaic(outputs), gap=8, background=(255, 255, 255))
    else:
        picture = image_grid([list(pair) for pair in pairs.values()], gap=4, background=(255, 255, 255))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    target = storage.resolve(uri)
    storage.write_bytes(target.filesystem, target.path, buffer.getvalue())
    return True


def _region_pairs(load_source: SourceLoader, output, samples: PreviewSamples, image_format: str,
                  tile_size: int) -> dict:
    if samples.tiles:
        # The region starts at the sampled tile nearest the sample's top-left corner.
        left = min(t.x for t in samples.tiles)
        top = min(t.y for t in samples.tiles if t.x == left)
        sample_key = samples.tiles[TileKey(samples.group[1], left, top)]
        prefix, extension = posixpath.dirname(posixpath.dirname(posixpath.dirname(sample_key))), \
            posixpath.splitext(sample_key)[1]
        keys = {
            TileKey(samples.group[1], x, y): posixpath.join(prefix, f"{samples.group[1]}/{x}/{y}{extension}")
            for x in range(left, left + PREVIEW_TILES) for y in range(top, top + PREVIEW_TILES)
        }
    else:
        keys = {key: key for key in samples.loose}
    pairs = {}
    for name, key in keys.items():
        source = load_source(key)
        translated = _load(output, output_key(key, image_format), tile_size)
        if source is not None and translated is not None:
            pairs[name] = (source, translated)
    return pairs


def _load(root: storage.Location, key: str, tile_size: int):
    try:
        return fit_tile(decode_image(storage.read_bytes(root.filesystem, posixpath.join(root.path, key))),
                        tile_size, "resize")
    except (OSError, BadImage):
        return None
