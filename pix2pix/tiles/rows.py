"""The rows the tile pipeline's stages pass each other, and their Arrow schemas.

    planning -> Unit -> reading -> Canvas (a Unit with its pixels) -> generator -> Canvas
    (translated pixels) -> writing -> Status

A dataclass is each row's one definition: its Arrow schema is derived from it. Stages read the
columns they need straight from Arrow (pixels as zero-copy views, see ``pixel_views``) rather
than building a Python object per row.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

_SCALARS = {str: pa.string(), int: pa.int64(), bool: pa.bool_(), bytes: pa.large_binary()}


def arrow_type(hint) -> pa.DataType:
    """The Arrow type of a field's annotation: scalars, ``X | None`` (nullable), ``list[X]``
    and nested row dataclasses (structs)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return arrow_type(inner)
    if typing.get_origin(hint) is list:
        return pa.list_(arrow_type(typing.get_args(hint)[0]))
    if dataclasses.is_dataclass(hint):
        return pa.struct([pa.field(name, kind) for name, kind in _fields(hint)])
    return _SCALARS[hint]


def _fields(cls) -> list[tuple[str, pa.DataType]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, arrow_type(hints[f.name])) for f in dataclasses.fields(cls)]


def arrow_schema(cls) -> pa.Schema:
    return pa.schema([pa.field(name, kind) for name, kind in _fields(cls)])


def to_table(rows: list, cls) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(row) for row in rows], schema=arrow_schema(cls))


@dataclass
class TileRef:
    """A tile a unit reads: its key and place in the unit (col/row -1 or columns/rows: the
    ring of neighbours around a context block); ``write``: translate it, or only read it."""

    key: str
    col: int = 0
    row: int = 0
    write: bool = True


@dataclass
class Unit:
    """One generator input: a tile, or a context block of tiles. A unit with a ``reason``
    failed at planning; one with ``skipped`` stands for that many tiles already done. With
    raster input, ``sources`` are the rasters its window is warped from (first wins), and its
    tiles' keys are z/x/y (no extension)."""

    unit: str
    key: str
    tiles: list[TileRef] = field(default_factory=list)
    columns: int = 1
    rows: int = 1
    margin: int = 0
    skipped: int = 0
    reason: str | None = None
    sources: list[str] = field(default_factory=list)


@dataclass
class Failure:
    key: str
    reason: str


@dataclass
class Canvas(Unit):
    """A unit with its tiles read and laid out: ``pixels`` (height x width x 3 uint8, or x 1
    class indices once translated with a palette) is None when no tile of it is left to write.
    ``failed``: tiles that could not be read or decoded. Raster input: ``valid`` (height x width,
    1 = valid) is None when every pixel is; ``empty``: tiles with no valid pixel, not written."""

    pixels: bytes | None = None
    valid: bytes | None = None
    empty: list[str] = field(default_factory=list)
    height: int = 0
    width: int = 0
    failed: list[Failure] = field(default_factory=list)
    bytes_read: int = 0   # every tile read, neighbours included
    tile_bytes: int = 0   # the tiles written: bytes_read / tile_bytes is what context costs in reads


@dataclass
class Status:
    """What became of tiles: ``written``, ``skipped`` (``count`` tiles), ``failed`` or ``empty``
    (raster input: no valid pixel, nothing written). A unit's
    byte counts ride on its first status row."""

    key: str
    status: str
    reason: str | None = None
    count: int = 1
    bytes_read: int = 0
    tile_bytes: int = 0


UNIT_SCHEMA = arrow_schema(Unit)
CANVAS_SCHEMA = arrow_schema(Canvas)
STATUS_SCHEMA = arrow_schema(Status)


def pixel_views(column: pa.ChunkedArray | pa.Array) -> list[memoryview | None]:
    """The values of a binary column as views of its buffer (no copy), None where null."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return []
    _, offsets_buffer, data = array.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, offset_type)[array.offset:array.offset + len(array) + 1]
    nulls = array.is_null().to_numpy(zero_copy_only=False)
    view = memoryview(data) if data is not None else memoryview(b"")
    return [None if null else view[start:end] for null, start, end in zip(nulls, offsets[:-1], offsets[1:])]


def binary_column(values: list[np.ndarray | bytes | None]) -> pa.Array:
    """A large_binary column from arrays or bytes (copied once, into one buffer); None: null."""
    raw = [None if value is None else np.frombuffer(np.ascontiguousarray(value) if isinstance(value, np.ndarray)
                                                    else value, np.uint8) for value in values]
    offsets = np.cumsum([0] + [0 if item is None else item.size for item in raw], dtype=np.int64)
    data = np.empty(int(offsets[-1]), np.uint8)
    for item, start, end in zip(raw, offsets[:-1], offsets[1:]):
        if item is not None:
            data[start:end] = item
    valid = np.array([item is not None for item in raw], bool)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.large_binary(), len(raw), [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int((~valid).sum()))
