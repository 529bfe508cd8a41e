"""The stages of the translation pipeline, for Ray Data's map_batches.

Work units flow through as Arrow rows (pix2pix.tiles.rows: Unit, then Canvas, then Status);
a unit that failed carries a reason and passes the later stages untouched, so bad tiles end as
status rows. Planning is in translate_planning.

Reading and writing run in small, long-lived CPU actor pools (ReadStage, WriteStage) rather
than tasks: a Ray node keeps only as many idle workers as it has CPUs, so on a small node the
task workers were killed and restarted between tasks, each restart re-importing numpy, Pillow,
OpenCV and albumentations (seconds each), which made start-up slow and throughput uneven.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pix2pix import storage
from pix2pix.images import BadImage, decode_image, encode_image
from pix2pix.model.palette import NODATA_CLASS, encode_paletted_png
from pix2pix.tiles.canvases import assemble_canvas, crop_tile, fill_invalid, fit_tile, tile_pixel_limit
from pix2pix.tiles.keys import BadKey, check_key, output_key
from pix2pix.tiles.rows import CANVAS_SCHEMA, Status, binary_column, pixel_views, to_table

PIXELS = CANVAS_SCHEMA.get_field_index("pixels")
VALID = CANVAS_SCHEMA.get_field_index("valid")
IO_THREADS = 16  # concurrent reads/writes per task: object stores answer in tens of ms
# zlib level of RGB PNG tiles: level 1 encodes a generator's raw output several times faster
# than the usual 6 for a few percent more bytes (bench/README.md, City output); next to a GPU,
# encoding is the bound.
RGB_PNG_LEVEL = 1

_io_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _io_pool
    if _io_pool is None:
        _io_pool = ThreadPoolExecutor(IO_THREADS)
    return _io_pool


def _read(root: storage.Location, key: str) -> bytes | str:
    """The tile's bytes, or the reason it cannot be read."""
    try:
        return storage.read_bytes(root.filesystem, posixpath.join(root.path, check_key(key)))
    except BadKey as error:
        return f"unsafe key: {error}"
    except FileNotFoundError:
        return "not found"
    except OSError as error:
        return storage.redact(f"cannot read: {error}")


def load_units(batch: pa.Table, input_root, image_size: int, on_size: str) -> pa.Table:
    """Units -> canvases: every tile of each unit read (concurrently), decoded and laid out."""
    units = batch.to_pylist()
    keys = sorted({tile["key"] for unit in units if not unit["reason"] for tile in unit["tiles"]})
    contents = dict(zip(keys, _pool().map(lambda key: _read(input_root, key), keys)))
    rows, canvases = zip(*(_load_unit(unit, contents, image_size, on_size) for unit in units)) if units \
        else ((), ())
    table = pa.Table.from_pylist(list(rows), schema=CANVAS_SCHEMA)
    return table.set_column(PIXELS, "pixels", binary_column(list(canvases)))


def _load_unit(unit: dict, contents: dict, image_size: int, on_size: str) -> tuple[dict, np.ndarray | None]:
    row = dict(unit, failed=[], empty=[], bytes_read=0, tile_bytes=0)
    images = {}
    max_pixels = tile_pixel_limit(image_size)
    for tile in unit["tiles"]:
        data = contents[tile["key"]]
        try:
            if isinstance(data, str):
                raise BadImage(data)
            row["bytes_read"] += len(data)
            images[tile["col"], tile["row"]] = fit_tile(decode_image(data, max_pixels), image_size, on_size)
            if tile["write"]:
                row["tile_bytes"] += len(data)
        except BadImage as error:
            if tile["write"]:  # a neighbour that cannot be used is treated as absent
                row["failed"].append({"key": tile["key"], "reason": str(error)})
                tile["write"] = False
    if not any(tile["write"] for tile in unit["tiles"]):
        return row, None
    canvas = assemble_canvas(images, unit["columns"], unit["rows"], image_size, unit["margin"])
    row.update(height=canvas.shape[0], width=canvas.shape[1])
    return row, canvas


def load_raster_units(batch: pa.Table, image_size: int) -> pa.Table:
    """Raster units -> canvases: each unit's window warped from its rasters (concurrently)."""
    rows, canvases, valids = zip(*_pool().map(lambda unit: _load_raster_unit(unit, image_size),
                                              batch.to_pylist())) if len(batch) else ((), (), ())
    table = pa.Table.from_pylist(list(rows), schema=CANVAS_SCHEMA)
    table = table.set_column(PIXELS, "pixels", binary_column(list(canvases)))
    return table.set_column(VALID, "valid", binary_column(list(valids)))


def _load_raster_unit(unit: dict, image_size: int) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    from rasterio.errors import RasterioError

    from pix2pix.tiles.rasters import read_window, unit_window

    row = dict(unit, failed=[], empty=[], bytes_read=0, tile_bytes=0)
    if unit["reason"] or not any(tile["write"] for tile in unit["tiles"]):
        return row, None, None
    first = unit["tiles"][0]
    bounds, width, height = unit_window(first["key"], first["col"], first["row"], unit["columns"], unit["rows"],
                                        unit["margin"], image_size)
    try:
        pixels, valid = read_window(unit["sources"], bounds, width, height)
    except RasterioError as error:  # corrupt data in this window: its tiles fail, the job goes on
        reason = storage.redact(f"cannot read the rasters here: {error}")
        row["failed"] = [{"key": tile["key"], "reason": reason} for tile in unit["tiles"] if tile["write"]]
        return row, None, None
    for tile in unit["tiles"]:
        if tile["write"] and not crop_tile(valid, tile["col"], tile["row"], image_size, unit["margin"]).any():
            row["empty"].append(tile["key"])
            tile["write"] = False
    if not any(tile["write"] for tile in unit["tiles"]):
        return row, None, None
    row.update(height=height, width=width)
    if valid.all():
        return row, pixels, None
    return row, fill_invalid(pixels, valid), valid.view(np.uint8)


class ReadStage:
    """Read + decode actor (or, for raster input, warped-read actor)."""

    def __init__(self, input_root, image_size: int, on_size: str, rasters: bool = False):
        self.input_root, self.image_size, self.on_size, self.rasters = input_root, image_size, on_size, rasters

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.rasters:
            return load_raster_units(batch, self.image_size)
        return load_units(batch, self.input_root, self.image_size, self.on_size)


class GeneratorStage:
    """The actor-pool stage: one generator per actor, loaded once. Canvases reach the model as
    views of the batch's Arrow buffer and leave it as one new buffer: no per-tile objects."""

    def __init__(self, checkpoint_uri: str, device: str, precision: str, threads: int,
                 micro_batch: int, stochastic: bool, seed: int, palette: dict | None = None):
        # torch only here: the read and write actors import this module too, and torch's import
        # would cost each of them seconds of CPU and hundreds of MB at start-up.
        from pix2pix import checkpoint
        from pix2pix.model.precision import inference_precision, set_threads
        from pix2pix.tiles.translator import Translator

        set_threads(threads)
        generator, info = checkpoint.load_generator(checkpoint_uri, device=device)
        precision = inference_precision(precision, device, info.precision)  # "auto": the driver could not tell
        self.translator = Translator(generator, device, precision, micro_batch=micro_batch, stochastic=stochastic,
                                     palette=palette)
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
        canvases = [None if view is None else np.frombuffer(view, np.uint8).reshape(height, width, 3)
                    for view, height, width in zip(pixel_views(batch.column("pixels")), heights, widths)]
        from pix2pix.tiles.translator import translate_canvases

        # With a palette, class indices travel to the writers: a third of the bytes.
        translated = translate_canvases(self.translator, canvases, batch.column("unit").to_pylist(), self.seed)
        return batch.set_column(PIXELS, "pixels", binary_column(translated))


class WriteStage:
    """Encode + write actor."""

    def __init__(self, output, image_format: str, image_size: int, palette: dict | None = None):
        self.output, self.image_format, self.image_size, self.palette = output, image_format, image_size, palette

    def __call__(self, batch: pa.Table) -> pa.Table:
        return write_units(batch, self.output, self.image_format, self.image_size, self.palette)


def write_units(batch: pa.Table, output, image_format: str, image_size: int, palette: dict | None = None) -> pa.Table:
    """Crop, encode and write each unit's tiles; one status row per tile (skips summarised).
    With a palette the canvases hold class indices and tiles become paletted PNGs. Pixels a
    raster left invalid are nodata: NODATA_CLASS with a palette, else transparent (PNG, WebP)
    or black (JPEG). Encoding runs in the I/O threads: Pillow's PNG and JPEG encoders release
    the GIL."""
    units = []  # (unit, its statuses in order: Status rows, and (key, tile, valid) to write)
    views = zip(batch.drop_columns(["pixels", "valid"]).to_pylist(), pixel_views(batch.column("pixels")),
                pixel_views(batch.column("valid")))
    for unit, view, valid_view in views:
        items: list = []
        if unit["reason"]:
            items.append(Status(unit["key"], "failed", unit["reason"]))
        if unit["skipped"]:
            items.append(Status(unit["key"], "skipped", count=unit["skipped"]))
        items += [Status(failure["key"], "failed", failure["reason"]) for failure in unit["failed"]]
        items += [Status(key, "empty") for key in unit["empty"]]
        if view is not None:
            shape = (unit["height"], unit["width"]) if palette else (unit["height"], unit["width"], 3)
            canvas = np.frombuffer(view, np.uint8).reshape(shape)
            valid = None if valid_view is None else \
                np.frombuffer(valid_view, np.bool_).reshape(unit["height"], unit["width"])
            items += [(tile["key"], crop_tile(canvas, tile["col"], tile["row"], image_size, unit["margin"]),
                       None if valid is None else crop_tile(valid, tile["col"], tile["row"], image_size,
                                                            unit["margin"]))
                      for tile in unit["tiles"] if tile["write"]]
        units.append((unit, items))

    def write(item):
        key, image, valid = item
        try:
            target = posixpath.join(output.path, check_key(output_key(key, image_format)))
            image = _with_nodata(np.ascontiguousarray(image), valid, image_format, palette)
            data = encode_paletted_png(image, palette) if palette else encode_image(image, image_format,
                                                                                     png_level=RGB_PNG_LEVEL)
            storage.write_bytes(output.filesystem, target, data)
            return Status(key, "written")
        except BadKey as error:  # the planner refuses these; this is the last line of defence
            return Status(key, "failed", f"unsafe key: {error}")
        except OSError as error:
            return Status(key, "failed", storage.redact(f"cannot write: {error}"))

    written = iter(_pool().map(write, [item for _, items in units for item in items if isinstance(item, tuple)]))
    statuses = []
    for unit, items in units:
        rows = [next(written) if isinstance(item, tuple) else item for item in items]
        if rows:  # every unit that read bytes reports a tile
            rows[0].bytes_read, rows[0].tile_bytes = unit["bytes_read"], unit["tile_bytes"]
        statuses += rows
    return to_table(statuses, Status)


def _with_nodata(image: np.ndarray, valid: np.ndarray | None, image_format: str, palette: dict | None) -> np.ndarray:
    """A tile with its invalid pixels marked: the nodata class, an alpha channel, or black."""
    if valid is None or valid.all():
        return image
    if palette:
        return np.where(valid, image, np.uint8(NODATA_CLASS))
    if image_format == "jpeg":
        return np.where(valid[..., None], image, np.uint8(0))
    return np.dstack([image, np.where(valid, np.uint8(255), np.uint8(0))])
