"""The stages of the translation pipeline, for Ray Data's map_batches.

Work units flow through as Arrow rows (see pix2pix.tiles.plan.Unit); a unit that failed
carries a reason and passes the later stages untouched, so bad tiles end as status rows.

Reading and writing run in small, long-lived CPU actor pools (ReadStage, WriteStage) rather
than tasks: a Ray node keeps only as many idle workers as it has CPUs, so on a small node the
task workers were killed and restarted between tasks, each restart re-importing numpy, Pillow,
OpenCV and albumentations (seconds each), which made start-up slow and throughput uneven.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pix2pix import checkpoint, storage
from pix2pix.images import BadImage, decode_image, encode_image
from pix2pix.model.palette import encode_paletted_png
from pix2pix.model.precision import inference_precision, set_threads
from pix2pix.tiles.keys import BadKey, check_key, output_key
from pix2pix.tiles.plan import PlanSettings, Shard, Unit, plan_shard
from pix2pix.tiles.translation import Translator, assemble_canvas, crop_tile, fit_tile, tile_pixel_limit, unit_seed

IO_THREADS = 16  # concurrent reads/writes per task: object stores answer in tens of ms
# zlib level of RGB PNG tiles: level 1 encodes a generator's raw output several times faster
# than the usual 6 for a few percent more bytes (bench/README.md, City output); next to a GPU,
# encoding is the bound.
RGB_PNG_LEVEL = 1

_TILE = pa.struct([("key", pa.string()), ("col", pa.int32()), ("row", pa.int32()), ("write", pa.bool_())])
_FAILURE = pa.struct([("key", pa.string()), ("reason", pa.string())])
UNIT_SCHEMA = pa.schema([
    ("unit", pa.string()), ("key", pa.string()), ("tiles", pa.list_(_TILE)), ("columns", pa.int32()),
    ("rows", pa.int32()), ("margin", pa.int32()), ("skipped", pa.int64()), ("reason", pa.string()),
])
LOADED_SCHEMA = UNIT_SCHEMA.append(pa.field("pixels", pa.large_binary())).append(
    pa.field("height", pa.int32())).append(pa.field("width", pa.int32())).append(
    pa.field("failed", pa.list_(_FAILURE))).append(pa.field("bytes_read", pa.int64())).append(
    pa.field("tile_bytes", pa.int64()))
# status: written | skipped (count = tiles) | failed | read (bytes accounting, count = 0)
STATUS_SCHEMA = pa.schema([
    ("key", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("count", pa.int64()),
    ("bytes_read", pa.int64()), ("tile_bytes", pa.int64()),
])


def plan_shards(batch: pa.Table, input_root, output, settings: PlanSettings, manifest=None, tally=None) -> pa.Table:
    """Plan each shard (a row with its "index") and report its tile count to ``tally``."""
    units: list[Unit] = []
    for row in batch.to_pylist():
        index = row.pop("index")
        planned = plan_shard(Shard(**row), input_root, output, settings, manifest)
        if tally is not None:
            tally.add.remote(index, sum(planned_tiles(unit) for unit in planned))
        units += planned
    return pa.Table.from_pylist([vars(unit) for unit in units], schema=UNIT_SCHEMA)


def planned_tiles(unit: Unit) -> int:
    """The tiles a unit will report a status for: failed at planning, skipped or to write."""
    return 1 if unit.reason else unit.skipped + sum(tile["write"] for tile in unit.tiles)


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
    """Read and decode every tile of each unit (concurrently) and lay them on its canvas."""
    units = batch.to_pylist()
    keys = sorted({tile["key"] for unit in units if not unit["reason"] for tile in unit["tiles"]})
    contents = dict(zip(keys, _pool().map(lambda key: _read(input_root, key), keys)))
    rows = [_load_unit(unit, contents, image_size, on_size) for unit in units]
    return pa.Table.from_pylist(rows, schema=LOADED_SCHEMA)


def _load_unit(unit: dict, contents: dict, image_size: int, on_size: str) -> dict:
    row = dict(unit, pixels=None, height=0, width=0, failed=[], bytes_read=0, tile_bytes=0)
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
    if any(tile["write"] for tile in unit["tiles"]):
        canvas = assemble_canvas(images, unit["columns"], unit["rows"], image_size, unit["margin"])
        row.update(pixels=canvas.tobytes(), height=canvas.shape[0], width=canvas.shape[1])
    return row


class ReadStage:
    """Read + decode actor; the planning tasks before it are fused into it by Ray Data."""

    def __init__(self, input_root, image_size: int, on_size: str):
        self.input_root, self.image_size, self.on_size = input_root, image_size, on_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        return load_units(batch, self.input_root, self.image_size, self.on_size)


class WriteStage:
    """Encode + write actor."""

    def __init__(self, output, image_format: str, image_size: int, palette: dict | None = None):
        self.output, self.image_format, self.image_size, self.palette = output, image_format, image_size, palette

    def __call__(self, batch: pa.Table) -> pa.Table:
        return write_units(batch, self.output, self.image_format, self.image_size, self.palette)


class GeneratorStage:
    """The actor-pool stage: one generator per actor, loaded once."""

    def __init__(self, checkpoint_uri: str, device: str, precision: str, threads: int,
                 micro_batch: int, stochastic: bool, seed: int, palette: dict | None = None):
        set_threads(threads)
        generator, info = checkpoint.load_generator(checkpoint_uri, device=device)
        precision = inference_precision(precision, device, info.precision)  # "auto": the driver could not tell
        self.translator = Translator(generator, device, precision, micro_batch=micro_batch, stochastic=stochastic,
                                     palette=palette)
        self.seed = seed

    def __call__(self, batch: pa.Table) -> pa.Table:
        pixels = batch.column("pixels").to_pylist()
        heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
        units = batch.column("unit").to_pylist()
        by_shape = defaultdict(list)
        for index, data in enumerate(pixels):
            if data is not None:
                by_shape[heights[index], widths[index]].append(index)
        for (height, width), indices in by_shape.items():
            images = np.stack([np.frombuffer(pixels[i], np.uint8).reshape(height, width, 3) for i in indices])
            seeds = [unit_seed(units[i], self.seed) for i in indices] if self.translator.stochastic else None
            # With a palette, class indices travel to the writers: a third of the bytes.
            translate = self.translator.classes if self.translator.palette else self.translator
            for index, image in zip(indices, translate(images, seeds)):
                pixels[index] = image.tobytes()
        column = batch.schema.get_field_index("pixels")
        return batch.set_column(column, "pixels", pa.array(pixels, pa.large_binary()))


def write_units(batch: pa.Table, output, image_format: str, image_size: int, palette: dict | None = None) -> pa.Table:
    """Crop, encode and write each unit's tiles; one status row per tile (skips summarised).
    With a palette the canvases hold class indices and tiles become paletted PNGs. Encoding
    runs in the I/O threads: Pillow's PNG and JPEG encoders release the GIL."""
    statuses, writes = [], []
    for unit in batch.to_pylist():
        if unit["reason"]:
            statuses.append(_status(unit["key"], "failed", unit["reason"]))
        if unit["skipped"]:
            statuses.append(_status(unit["key"], "skipped", count=unit["skipped"]))
        statuses += [_status(failure["key"], "failed", failure["reason"]) for failure in unit["failed"]]
        if unit["pixels"] is not None:
            shape = (unit["height"], unit["width"]) if palette else (unit["height"], unit["width"], 3)
            canvas = np.frombuffer(unit["pixels"], np.uint8).reshape(shape)
            writes += [(tile["key"], crop_tile(canvas, tile["col"], tile["row"], image_size, unit["margin"]))
                       for tile in unit["tiles"] if tile["write"]]
        if unit["bytes_read"]:
            statuses.append(_status(unit["key"], "read", count=0, bytes_read=unit["bytes_read"],
                                    tile_bytes=unit["tile_bytes"]))

    def write(item):
        key, image = item
        try:
            target = posixpath.join(output.path, check_key(output_key(key, image_format)))
            image = np.ascontiguousarray(image)
            data = encode_paletted_png(image, palette) if palette else encode_image(image, image_format,
                                                                                     png_level=RGB_PNG_LEVEL)
            storage.write_bytes(output.filesystem, target, data)
            return _status(key, "written")
        except BadKey as error:  # the planner refuses these; this is the last line of defence
            return _status(key, "failed", f"unsafe key: {error}")
        except OSError as error:
            return _status(key, "failed", storage.redact(f"cannot write: {error}"))

    statuses += list(_pool().map(write, writes))
    return pa.Table.from_pylist(statuses, schema=STATUS_SCHEMA)


def _status(key, status, reason=None, count=1, bytes_read=0, tile_bytes=0) -> dict:
    return {"key": key, "status": status, "reason": reason, "count": count,
            "bytes_read": bytes_read, "tile_bytes": tile_bytes}
