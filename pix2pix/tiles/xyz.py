"""XYZ (slippy map) tile keys, bounding boxes, neighbours and tile mosaics."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import mercantile
from PIL import Image

from pix2pix.errors import ConfigError
from pix2pix.images import ImageLike, to_pil

# Web Mercator is undefined at the poles; tiles cover latitudes within this limit.
MAX_LATITUDE = 85.0511287798066
MAX_ZOOM = 30

_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True, order=True)
class TileKey:
    z: int
    x: int
    y: int


def in_grid(z: int, x: int, y: int) -> bool:
    """Whether z/x/y names a tile of the Web Mercator grid (zoom at most MAX_ZOOM)."""
    return 0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z


def parse_tile_key(path: str, extension: bool = True) -> TileKey | None:
    """TileKey from a key ending in z/x/y.ext ("17/38591/49283.jpg", "city/17/38591/49283.png"),
    or with ``extension=False`` in z/x/y (the keys of tiles warped from rasters: "17/38591/49283").

    Returns None when the last three parts are not a valid z/x/y with an extension.
    """
    parts = path.replace("\\", "/").split("/")
    if len(parts) < 3:
        return None
    z_text, x_text, filename = parts[-3:]
    y_text, dot, ext = filename.partition(".")
    if extension != bool(dot and ext):
        return None
    if not all(_NUMBER.fullmatch(t) for t in (z_text, x_text, y_text)):
        return None
    z, x, y = int(z_text), int(x_text), int(y_text)
    return TileKey(z, x, y) if in_grid(z, x, y) else None


def tile_key_path(tile: TileKey, ext: str) -> str:
    """Relative key "z/x/y.ext"; `ext` may be given with or without the dot."""
    return f"{tile.z}/{tile.x}/{tile.y}.{ext.lstrip('.')}"


def _validate_bbox(west: float, south: float, east: float, north: float) -> None:
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ConfigError(f"bbox values must be finite numbers, got {(west, south, east, north)}")
    if not (-180.0 <= west < east <= 180.0):
        raise ConfigError(f"bbox needs -180 <= west < east <= 180, got west={west}, east={east}")
    if not (-MAX_LATITUDE <= south < north <= MAX_LATITUDE):
        raise ConfigError(
            f"bbox needs -{MAX_LATITUDE:.4f} <= south < north <= {MAX_LATITUDE:.4f} "
            f"(Web Mercator range), got south={south}, north={north}"
        )


def tiles_in_bbox(west: float, south: float, east: float, north: float, zoom: int) -> list[TileKey]:
    """All tiles at `zoom` intersecting the bbox (degrees, WGS84), sorted."""
    _validate_bbox(west, south, east, north)
    if not (isinstance(zoom, int) and 0 <= zoom <= MAX_ZOOM):
        raise ConfigError(f"zoom must be an integer in 0..{MAX_ZOOM}, got {zoom!r}")
    return sorted(TileKey(t.z, t.x, t.y) for t in mercantile.tiles(west, south, east, north, zoom))


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """"W,S,E,N" (degrees) -> (west, south, east, north), validated."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ConfigError(f"bbox must be 'west,south,east,north', got {text!r}")
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"bbox values must be numbers, got {text!r}") from None
    _validate_bbox(west, south, east, north)
    return west, south, east, north


def neighbours(tile: TileKey) -> dict[tuple[int, int], TileKey]:
    """The up to 8 surrounding tiles keyed by (dx, dy); those off the grid are dropped (no wrap)."""
    result = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if (dx, dy) != (0, 0) and in_grid(tile.z, tile.x + dx, tile.y + dy):
                result[(dx, dy)] = TileKey(tile.z, tile.x + dx, tile.y + dy)
    return result


def mosaic(tiles: Mapping[TileKey, ImageLike], background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Place same-zoom, same-size tiles on one image: x grows to the right, y downwards (north on top).

    The canvas spans the min..max x and y present; missing tiles are `background`.
    """
    if not tiles:
        raise ValueError("mosaic needs at least one tile")
    zooms = {key.z for key in tiles}
    if len(zooms) > 1:
        raise ValueError(f"all tiles must share one zoom, got zooms {sorted(zooms)}")
    images = {key: to_pil(img) for key, img in tiles.items()}
    sizes = {img.size for img in images.values()}
    if len(sizes) > 1:
        raise ValueError(f"all tiles must have the same size, got {sorted(sizes)}")
    (width, height), = sizes
    min_x = min(k.x for k in images)
    min_y = min(k.y for k in images)
    columns = max(k.x for k in images) - min_x + 1
    rows = max(k.y for k in images) - min_y + 1
    canvas = Image.new("RGB", (columns * width, rows * height), tuple(background))
    for key, img in images.items():
        canvas.paste(img, ((key.x - min_x) * width, (key.y - min_y) * height))
    return canvas


