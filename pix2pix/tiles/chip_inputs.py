"""The rasters training chips are cut from: finding them (files or prefixes, local or s3://),
opening them with GDAL's S3 settings, and checking them before anything is written.

An image raster is uint8 RGB: 3 bands, 3 bands and a mask (or nodata value), or 4 with alpha.
A label raster is uint8 too: one band of class indices with a colour table, or a 3-band RGB map.
Both need a CRS and a geotransform; a label raster must overlap the image it labels.
"""

from __future__ import annotations

import contextlib
import posixpath
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform_bounds

from pix2pix import storage
from pix2pix.tiles.rasters import RasterError, check_georeferenced, check_image_bands

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
IMAGE, CLASSES, RGB = "image", "classes", "rgb"


@dataclass(frozen=True)
class RasterInfo:
    """What the planning needs of one raster (its header only)."""

    uri: str  # what rasterio opens: a local path or s3://bucket/key
    name: str  # the first part of its chips' keys: the file's stem, or its path under the given prefix
    kind: str  # IMAGE, CLASSES or RGB
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int


@contextlib.contextmanager
def open_raster(uri: str) -> Iterator[rasterio.DatasetReader]:
    """A raster opened for reading, local or on S3 (GDAL reads the AWS environment)."""
    with rasterio.Env(**storage.gdal_settings()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # checked, and said better, by describe
                dataset = rasterio.open(uri)
        except RasterioError as error:
            raise RasterError(f"cannot open {uri} as a raster: {storage.redact(str(error))}") from None
        with dataset:
            yield dataset


def find_rasters(uris: list[str], role: str) -> list[tuple[str, str]]:
    """(URI for rasterio, key name) of each raster given as a file or found under a prefix."""
    found = []
    for uri in uris:
        location = storage.resolve(uri)
        info = storage.file_info(location.filesystem, location.path)
        if info.type == pafs.FileType.File:
            found.append((location.uri_of(location.path), posixpath.splitext(posixpath.basename(location.path))[0]))
        elif info.type == pafs.FileType.Directory:
            paths = sorted(storage.list_files(location, RASTER_SUFFIXES))
            if not paths:
                raise RasterError(f"no {role} rasters ({', '.join(RASTER_SUFFIXES)}) under {uri}")
            found += [(location.uri_of(path), posixpath.splitext(posixpath.relpath(path, location.path))[0])
                      for path in paths]
        else:
            raise RasterError(f"{role} raster not found: {uri}")
    return found


def describe(uri: str, name: str, role: str) -> RasterInfo:
    """The raster's header, checked for its role ("image" or "labels")."""
    with open_raster(uri) as dataset:
        check_georeferenced(uri, dataset)
        if role == "image":
            check_image_bands(uri, dataset)
            kind = IMAGE
        else:
            kind = label_kind(uri, dataset)
        return RasterInfo(uri, name, kind, dataset.crs, dataset.transform, dataset.width, dataset.height)


def label_kind(uri: str, dataset) -> str:
    if set(dataset.dtypes) != {"uint8"}:
        raise RasterError(f"{uri} holds {dataset.dtypes[0]} pixels; label rasters must be uint8")
    if dataset.count == 3:
        return RGB
    if dataset.count == 1:
        colour_table(dataset)
        return CLASSES
    raise RasterError(f"{dataset.name} has {dataset.count} bands; a label raster needs 1 band of class "
                           "indices with a colour table, or 3 (an RGB map)")


def colour_table(dataset) -> np.ndarray:
    """(256, 3) uint8: the RGB colour of each class index of a one-band label raster."""
    try:
        table = dataset.colormap(1)
    except ValueError:
        raise RasterError(f"{dataset.name} has one band but no colour table: give the class colours "
                               "in the raster (e.g. gdalattachpct.py) or an RGB map") from None
    colours = np.zeros((256, 3), np.uint8)
    for index, rgba in table.items():
        colours[index] = rgba[:3]
    return colours


def footprint(raster: RasterInfo, crs) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of the raster in ``crs``."""
    xs, ys = zip(*(raster.transform @ corner for corner in
                   ((0, 0), (raster.width, 0), (0, raster.height), (raster.width, raster.height))))
    bounds = (min(xs), min(ys), max(xs), max(ys))
    return bounds if raster.crs == crs else transform_bounds(raster.crs, crs, *bounds, densify_pts=21)


def pixel_extent(image: RasterInfo, other: RasterInfo) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of ``other``'s footprint in ``image``'s pixel columns and rows."""
    left, bottom, right, top = footprint(other, image.crs)
    columns, rows = zip(*(~image.transform @ corner for corner in
                          ((left, bottom), (left, top), (right, bottom), (right, top))))
    return min(columns), min(rows), max(columns), max(rows)


def intersects(extent: tuple[float, float, float, float], left: float, top: float, right: float,
               bottom: float) -> bool:
    return extent[0] < right and left < extent[2] and extent[1] < bottom and top < extent[3]


def overlaps(image: RasterInfo, labels: RasterInfo) -> bool:
    return intersects(pixel_extent(image, labels), 0, 0, image.width, image.height)
