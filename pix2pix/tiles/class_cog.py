"""One translated zoom of class tiles as a class COG: a single-band uint8 Cloud-Optimized GeoTIFF
in EPSG:3857 whose internal tiles are the XYZ tiles, the palette its colour table, NODATA_CLASS
its nodata, overviews by mode down to a given zoom (each one equal to that zoom's pyramid level,
tiles/pyramid.py), the class names in its tags and in a ``.aux.xml`` sidecar, where GDAL, and so
QGIS, reads category names (rasterio has no category API, rasterio #3185). No Ray.

rasterio's COG driver builds the whole raster in memory (rasterio #3211): the tiles go window by
window into a tiled GeoTIFF on disk, which rio-cogeo converts on disk too, so that memory stays
flat in the area's size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable
from dataclasses import dataclass

import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from pix2pix.model.palette import NODATA_CLASS, Palette
from pix2pix.tiles.tile_pixels import tile_classes
from pix2pix.tiles.tileset import TileSet, ordered_map
from pix2pix.tiles.xyz import TileKey

SIDECAR_SUFFIX = ".aux.xml"
WORLD_M = 2 * math.pi * 6378137.0  # the width of the Web Mercator world, in metres
GDAL_CACHE_MB = 256  # GDAL's block cache while writing and building overviews


@dataclass(frozen=True)
class CogGrid:
    """The raster's place among the tiles of ``zoom``: ``columns`` x ``rows`` tiles from tile
    (``left``, ``top``). Both are whole tiles of ``zoom - levels``: GDAL decimates overviews
    from the raster's origin, so overview k's pixels are then the pixels of zoom - k's tiles."""

    zoom: int
    levels: int
    tile_size: int
    left: int
    top: int
    columns: int
    rows: int

    @property
    def width(self) -> int:
        return self.columns * self.tile_size

    @property
    def height(self) -> int:
        return self.rows * self.tile_size

    @property
    def transform(self) -> Affine:
        span = WORLD_M / 2**self.zoom
        return Affine(span / self.tile_size, 0.0, -WORLD_M / 2 + self.left * span,
                      0.0, -span / self.tile_size, WORLD_M / 2 - self.top * span)

    def window(self, tile: TileKey) -> Window:
        return Window((tile.x - self.left) * self.tile_size, (tile.y - self.top) * self.tile_size,
                      self.tile_size, self.tile_size)


def cog_grid(tiles: Iterable[TileKey], levels: int, tile_size: int) -> CogGrid:
    """The smallest grid of whole tiles of ``zoom - levels`` that holds the tiles (one zoom)."""
    tiles = list(tiles)
    block = 2**levels
    left, top = min(t.x for t in tiles) // block * block, min(t.y for t in tiles) // block * block
    right, bottom = (max(t.x for t in tiles) // block + 1) * block, (max(t.y for t in tiles) // block + 1) * block
    return CogGrid(tiles[0].z, levels, tile_size, left, top, right - left, bottom - top)


def colour_table(palette: Palette) -> dict[int, tuple[int, int, int, int]]:
    table = {index: (*colour, 255) for index, colour in enumerate(palette.values())}
    table[NODATA_CLASS] = (0, 0, 0, 0)
    return table


def category_sidecar(names: Iterable[str]) -> str:
    """GDAL's PAM sidecar (``file.tif.aux.xml``) naming band 1's classes, in index order."""
    dataset = ElementTree.Element("PAMDataset")
    band = ElementTree.SubElement(dataset, "PAMRasterBand", band="1")
    categories = ElementTree.SubElement(band, "CategoryNames")
    for name in names:
        ElementTree.SubElement(categories, "Category").text = name
    ElementTree.indent(dataset)
    return ElementTree.tostring(dataset, encoding="unicode") + "\n"


def write_class_cog(tileset: TileSet, levels: int, palette: Palette, path: str) -> dict:
    """Write the tile set's class tiles (one zoom, paletted) as a class COG at the local
    ``path`` with ``levels`` overviews, and its sidecar beside it; a mosaic the size of the
    COG passes through ``path``'s folder. Returns what was written."""
    size = tileset.tile_size()
    grid = cog_grid(tileset.keys, levels, size)
    mosaic = path + ".mosaic.tif"
    names = list(palette)
    tags = {"CLASS_NAMES": json.dumps(names)}
    if size == 256:  # GDAL's name for the grid (its WebMercatorQuad has 256-pixel tiles)
        tags.update(TILING_SCHEME_NAME="WebMercatorQuad", TILING_SCHEME_ZOOM_LEVEL=str(grid.zoom),
                    TILING_SCHEME_ALIGNED_LEVELS=str(levels))
    profile = {**cog_profiles.get("deflate"), "blockxsize": size, "blockysize": size}
    gdal_log = logging.getLogger("rasterio._env")
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            with rasterio.open(mosaic, "w", driver="GTiff", width=grid.width, height=grid.height, count=1,
                               dtype="uint8", crs="EPSG:3857", transform=grid.transform, nodata=NODATA_CLASS,
                               tiled=True, blockxsize=size, blockysize=size, compress="deflate",
                               sparse_ok=True) as raster:
                raster.write_colormap(1, colour_table(palette))  # rio-cogeo carries it to the COG
                # Blocks no tile covers are never written: sparse, they read as nodata.
                for tile, classes in ordered_map(lambda tile: (tile, _classes(tileset, tile, size)),
                                                 sorted(tileset.keys)):
                    raster.write(classes, 1, window=grid.window(tile))
            gdal_log.addFilter(_without_palette_warning)
            cog_translate(mosaic, path, profile, nodata=NODATA_CLASS, overview_level=levels,
                          overview_resampling="mode", in_memory=False, allow_intermediate_compression=True,
                          additional_cog_metadata=tags, quiet=True)
    finally:
        gdal_log.removeFilter(_without_palette_warning)
        if os.path.exists(mosaic):
            os.remove(mosaic)
    with open(path + SIDECAR_SUFFIX, "w", encoding="utf-8") as handle:
        handle.write(category_sidecar(names))
    return {"tiles": len(tileset.keys), "width": grid.width, "height": grid.height,
            "overview_zooms": [grid.zoom - level for level in range(1, levels + 1)],
            "cog_bytes": os.path.getsize(path)}


def _without_palette_warning(record: logging.LogRecord) -> bool:
    """False for GDAL's warning that an overview is computed from a band without a palette: GDAL
    computes each overview from the one above, whose band has none; the mode needs none (the
    nodata value marks nodata), and the COG's levels are held equal to the pyramid's by test."""
    return "overviews on palette index raster bands without a palette" not in record.getMessage()


def _classes(tileset: TileSet, tile: TileKey, size: int):
    return tile_classes(tileset.read(tile), tileset.root.join(tileset.keys[tile]).uri, size)
