"""Georeferenced test rasters made from the real Recife imagery in ../shared.

The scenes and pairs have no published georeference: the one given here is ASSIGNED, chosen to
be plausible for Recife (SIRGAS 2000 / UTM zone 25S, 0.5 m pixels, upper-left corner near
8.05 S 34.9 W). Everything else (pixels, classes) is real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform as transform_points

from tests.conftest import SHARED_DATA

ASSIGNED_CRS = "EPSG:31985"  # SIRGAS 2000 / UTM zone 25S
ASSIGNED_PIXEL_M = 0.5
ASSIGNED_CORNER_LONLAT = (-34.9, -8.05)
SCENES = SHARED_DATA / "recife" / "scenes"


def assigned_origin() -> tuple[float, float]:
    """(easting, northing) of the assigned upper-left corner, in ASSIGNED_CRS."""
    xs, ys = transform_points("EPSG:4326", ASSIGNED_CRS, [ASSIGNED_CORNER_LONLAT[0]], [ASSIGNED_CORNER_LONLAT[1]])
    return round(xs[0]), round(ys[0])


def assigned_transform(column_offset: int = 0, row_offset: int = 0, pixel_m: float = ASSIGNED_PIXEL_M) -> Affine:
    """The geotransform of a scene's pixel (column_offset, row_offset) as the raster's corner."""
    east, north = assigned_origin()
    return from_origin(east + column_offset * pixel_m, north - row_offset * pixel_m, pixel_m, pixel_m)


def scene_pixels(number: int = 1) -> np.ndarray:
    """A real Recife scene (1..3) as (H, W, 3) uint8."""
    return np.asarray(Image.open(SCENES / f"{number:02d}.jpg").convert("RGB"))


def write_geotiff(path: Path, pixels: np.ndarray, transform: Affine, crs: str = ASSIGNED_CRS,
                  valid: np.ndarray | None = None, blocksize: int = 256, overviews: bool = True) -> Path:
    """Write (H, W, 3) or (H, W) uint8 pixels as a tiled, DEFLATE GeoTIFF laid out like a COG
    (internal tiles, overviews), with ``valid`` (H, W) bool as an internal mask when given."""
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    height, width, bands = pixels.shape
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype="uint8", crs=crs,
                   transform=transform, tiled=True, blockxsize=blocksize, blockysize=blocksize,
                   compress="deflate", interleave="pixel")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.moveaxis(pixels, -1, 0))
            if valid is not None:
                dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
            if overviews:
                factors = [f for f in (2, 4, 8, 16) if max(width, height) // f >= blocksize]
                if factors:
                    dst.build_overviews(factors, rasterio.enums.Resampling.average)
    return path


def write_cog(path: Path, pixels: np.ndarray, transform: Affine, crs: str = ASSIGNED_CRS,
              valid: np.ndarray | None = None) -> Path:
    """A Cloud-Optimized GeoTIFF (rio-cogeo's layout: IFDs first, then the tiles)."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    plain = path.with_name(path.stem + ".plain.tif")
    write_geotiff(plain, pixels, transform, crs, valid, overviews=False)
    cog_translate(str(plain), str(path), cog_profiles.get("deflate"), quiet=True, in_memory=True,
                  add_mask=valid is not None)
    plain.unlink()
    return path


def overlapping_cogs(folder: Path, pixels: np.ndarray, transform: Affine, overlap: int) -> tuple[Path, Path]:
    """Cut a scene into a west and an east COG that share ``overlap`` columns in the middle."""
    width = pixels.shape[1]
    west_end = (width + overlap) // 2
    east_start = west_end - overlap
    west = write_cog(folder / "a_west.tif", pixels[:, :west_end], transform)
    east = write_cog(folder / "b_east.tif", pixels[:, east_start:], transform * Affine.translation(east_start, 0))
    return west, east
