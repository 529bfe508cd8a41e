"""Georeferenced rasters (GeoTIFF/COG) as translation input: finding and checking them, their
footprints, the default zoom, and reading a Web Mercator window warped from them.

An input is rasters when it is a .tif/.tiff file, a .txt list of raster URIs (one a line, local
or s3://), or a folder or prefix whose top level holds .tif/.tiff files of which the first has a
CRS. A folder of XYZ tiles (z/x/y.tif) holds only folders at its top: it stays tile input.

Overlaps: the first source wins each pixel (a folder's files in key order, a list's in its
order). rasterio (GDAL) does the warping; GDAL reads S3 through storage.gdal_settings().
"""

from __future__ import annotations

import math
import posixpath
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import mercantile
import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds

from pix2pix import storage
from pix2pix.errors import JobError

RASTER_SUFFIXES = (".tif", ".tiff")
LIST_SUFFIX = ".txt"
WEB_MERCATOR = "EPSG:3857"
EARTH_CIRCUMFERENCE_M = 2 * math.pi * 6378137.0  # Web Mercator's extent in metres
# Bilinear, as GDAL's warper runs it: its kernel widens with the downsampling ratio, so a zoom
# coarser than the rasters averages their pixels instead of picking every n-th.
RESAMPLING = Resampling.bilinear
OPEN_THREADS = 16  # sources opened and checked at once on the driver


class RasterError(JobError):
    """A raster input that cannot be used: unreadable, not georeferenced, wrong bands or type."""


@dataclass(frozen=True)
class Source:
    """A checked raster: its URI, footprint in Web Mercator metres and in degrees, and its
    native pixel size in Web Mercator metres."""

    uri: str
    bounds: tuple[float, float, float, float]
    lonlat: tuple[float, float, float, float]
    resolution: float


def raster_uri(location: storage.Location) -> str:
    """What rasterio opens: a local path, or s3://bucket/key (read by GDAL's range requests)."""
    return location.path if location.is_local else "s3://" + location.path.lstrip("/")


def find_rasters(input_uri: str) -> list[str] | None:
    """The input's raster URIs in priority order, or None when the input is XYZ tiles."""
    location = storage.resolve(input_uri)
    lower = location.path.lower()
    if lower.endswith(LIST_SUFFIX):
        return _listed(location)
    if lower.endswith(RASTER_SUFFIXES):
        if not storage.exists(location):
            raise RasterError(f"raster not found: {input_uri}")
        return [raster_uri(location)]
    if not storage.is_dir(location):
        return None
    from pix2pix.tiles.plan import list_directory  # plan never imports this module: no rasterio there

    files, _ = list_directory(location)
    rasters = [raster_uri(location.join(name)) for name in files if name.lower().endswith(RASTER_SUFFIXES)]
    if not rasters or not _has_crs(rasters[0]):
        return None  # flat tiles (a folder of .tif tiles without a CRS) stay tile input
    return rasters


def _listed(location: storage.Location) -> list[str]:
    if not storage.exists(location):
        raise RasterError(f"raster list not found: {location.uri}")
    folder = posixpath.dirname(location.path)
    uris = []
    for line in storage.read_text(location).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" in line or line.startswith("/"):
            uris.append(raster_uri(storage.resolve(line)))
        else:  # relative to the list's own folder
            uris.append(raster_uri(storage.Location(location.filesystem, posixpath.join(folder, line), line)))
    if not uris:
        raise RasterError(f"raster list {location.uri} names no raster")
    return list(dict.fromkeys(uris))


def _has_crs(uri: str) -> bool:
    try:
        with rasterio.Env(**storage.gdal_settings()), rasterio.open(uri) as dataset:
            return dataset.crs is not None
    except RasterioError:
        return False


def open_sources(uris: list[str]) -> list[Source]:
    """Every raster checked (concurrently), in the given order; the first unusable one ends the
    run with a RasterError naming it. S3 rasters that are not cloud-optimized get a warning."""
    with ThreadPoolExecutor(min(OPEN_THREADS, max(1, len(uris)))) as pool:
        sources = list(pool.map(check_source, uris))
    slow = [uri for uri in uris if uri.startswith("s3://") and not is_cloud_optimized(uri)]
    if slow:
        print(f"warning: {len(slow)} S3 raster(s) are not cloud-optimized (first: {slow[0]}): each window may "
              "cost a read of whole strips or of the full file; convert them with rio cogeo", file=sys.stderr,
              flush=True)
    return sources


def check_source(uri: str) -> Source:
    try:
        with rasterio.Env(**storage.gdal_settings()), rasterio.open(uri) as dataset:
            check_image_bands(uri, dataset)
            check_georeferenced(uri, dataset)
            lonlat = transform_bounds(dataset.crs, "EPSG:4326", *dataset.bounds, densify_pts=21)
            bounds = transform_bounds(dataset.crs, WEB_MERCATOR, *dataset.bounds, densify_pts=21)
            transform, _, _ = calculate_default_transform(dataset.crs, WEB_MERCATOR, dataset.width,
                                                          dataset.height, *dataset.bounds)
    except RasterioError as error:
        raise RasterError(storage.redact(f"{uri} is not a raster GDAL can read: {error}")) from None
    return Source(uri, tuple(bounds), tuple(lonlat), abs(transform.a))


def check_georeferenced(uri: str, dataset) -> None:
    """A CRS and a geotransform: what places a raster's pixels (translation and training chips alike)."""
    if dataset.crs is None:
        raise RasterError(f"{uri} has no CRS: georeference it (e.g. gdal_edit.py -a_srs)")
    if dataset.gcps[0]:
        raise RasterError(f"{uri} is georeferenced by ground control points only: warp it first "
                          "(gdalwarp) so that it has a geotransform")
    if dataset.transform.is_identity:
        raise RasterError(f"{uri} has no geotransform: georeference it (e.g. gdal_edit.py -a_ullr)")


def check_image_bands(uri: str, dataset) -> None:
    """Imagery is uint8 RGB: 3 bands (with an internal mask or nodata where it has gaps) or RGBA."""
    if set(dataset.dtypes) != {"uint8"}:
        raise RasterError(f"{uri} holds {dataset.dtypes[0]} pixels; rasters must be uint8 RGB "
                          "(scale them first, e.g. gdal_translate -ot Byte -scale)")
    if dataset.count == 4 and dataset.colorinterp[3] != ColorInterp.alpha:
        raise RasterError(f"{uri} has 4 bands and the 4th is not alpha (RGBN?): rasters must be RGB, RGBA "
                          "or RGB with an internal mask")
    if dataset.count not in (3, 4):
        raise RasterError(f"{uri} has {dataset.count} band(s); rasters must be RGB, RGBA or RGB with an "
                          "internal mask")


def is_cloud_optimized(uri: str) -> bool:
    from rio_cogeo.cogeo import cog_validate

    with rasterio.Env(**storage.gdal_settings()):
        valid, _, _ = cog_validate(uri, quiet=True)
    return valid


def tile_resolution(zoom: int, image_size: int) -> float:
    """Web Mercator metres per pixel of a tile of ``image_size`` pixels at ``zoom``."""
    return EARTH_CIRCUMFERENCE_M / (image_size * 2 ** zoom)


def default_zoom(sources: list[Source], image_size: int, max_zoom: int) -> int:
    """The zoom whose pixels are closest (in log scale) to the finest raster's."""
    finest = min(source.resolution for source in sources)
    zoom = round(math.log2(EARTH_CIRCUMFERENCE_M / (image_size * finest)))
    return max(0, min(max_zoom, zoom))


def ground_resolution(zoom: int, image_size: int, latitude: float) -> float:
    """Metres on the ground per pixel at a latitude (Web Mercator stretches by 1/cos)."""
    return tile_resolution(zoom, image_size) * math.cos(math.radians(latitude))


def intersecting(sources, bounds: tuple[float, float, float, float]) -> list:
    """The sources (anything with .bounds, or [uri, w, s, e, n] rows) whose footprint meets bounds."""
    west, south, east, north = bounds
    found = []
    for source in sources:
        w, s, e, n = source.bounds if isinstance(source, Source) else source[1:]
        if w < east and e > west and s < north and n > south:
            found.append(source)
    return found


def read_window(uris: list[str], bounds: tuple[float, float, float, float], width: int,
                height: int) -> tuple[np.ndarray, np.ndarray]:
    """A Web Mercator window warped from the sources: (height, width, 3) uint8 pixels (0 where
    invalid) and an (height, width) bool validity mask (the sources' alpha or mask). The first
    source valid at a pixel wins it. RasterioError when a source cannot be read there."""
    pixels = np.zeros((height, width, 3), np.uint8)
    valid = np.zeros((height, width), bool)
    transform = from_bounds(*bounds, width, height)
    with rasterio.Env(**storage.gdal_settings()):
        for uri in uris:
            dataset = _open_dataset(uri)
            with WarpedVRT(dataset, crs=WEB_MERCATOR, transform=transform, width=width, height=height,
                           resampling=RESAMPLING, add_alpha=not _has_alpha(dataset)) as warped:
                data = warped.read(indexes=[1, 2, 3, 4])  # one warp: colours and alpha together
            fresh = (data[3] > 0) & ~valid
            pixels[fresh] = np.moveaxis(data[:3], 0, -1)[fresh]
            valid |= fresh
            if valid.all():
                break
    return pixels, valid


def read_tile(sources: list[Source], key: str, size: int) -> np.ndarray | None:
    """The pixels of the tile at ``key`` ("z/x/y") warped from the sources, white where no
    source is valid (the previews' background); None where no source is valid or readable."""
    z, x, y = map(int, key.split("/"))
    bounds = tuple(mercantile.xy_bounds(x, y, z))
    try:
        pixels, valid = read_window([source.uri for source in intersecting(sources, bounds)], bounds, size, size)
    except RasterioError:
        return None
    if not valid.any():
        return None
    pixels[~valid] = 255
    return pixels


# Each I/O thread keeps its rasters open: reopening one per window cost as much as warping it
# (header parsing, and GDAL's block cache is dropped with the handle, so neighbouring windows
# decompressed the same source blocks again). A handle is used by one thread only.
_OPEN_PER_THREAD = 64
_open = threading.local()


def _open_dataset(uri: str):
    datasets = getattr(_open, "datasets", None)
    if datasets is None:
        datasets = _open.datasets = OrderedDict()
    if uri in datasets:
        datasets.move_to_end(uri)
        return datasets[uri]
    if len(datasets) >= _OPEN_PER_THREAD:
        datasets.popitem(last=False)[1].close()
    datasets[uri] = rasterio.open(uri)
    return datasets[uri]


def _has_alpha(dataset) -> bool:
    return dataset.count == 4 or any(MaskFlags.alpha in flags for flags in dataset.mask_flag_enums)


def unit_window(first_key: str, column: int, row: int, columns: int, rows: int, margin: int,
                image_size: int) -> tuple[tuple[float, float, float, float], int, int]:
    """(Web Mercator bounds, width, height) of a unit's canvas: its tiles, from the top-left
    one's place (``first_key`` = z/x/y sits at column, row), plus ``margin`` pixels around."""
    z, x, y = map(int, first_key.split("/"))
    x0, y0 = x - column, y - row
    west, _, _, north = mercantile.xy_bounds(x0, y0, z)
    _, south, east, _ = mercantile.xy_bounds(x0 + columns - 1, y0 + rows - 1, z)
    pixel = (east - west) / (columns * image_size)
    bounds = (west - margin * pixel, south - margin * pixel, east + margin * pixel, north + margin * pixel)
    return bounds, columns * image_size + 2 * margin, rows * image_size + 2 * margin
