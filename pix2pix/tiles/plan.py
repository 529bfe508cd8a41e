"""What a translation run reads and writes: shards of the input listing, done tiles, work units.

Listing a city's prefix in one go is slow and holds every key in one place, so the input is
cut into shards: XYZ columns (``[prefix/]z/x/``) or, for other layouts, directories a few
levels down. Each shard is listed by one task, together with its counterpart under the output
prefix (tiles already written there are skipped), and becomes work units:

- plain: one unit per tile;
- with context: one unit per block of up to BLOCK_TILES x BLOCK_TILES neighbouring tiles plus
  the ring of tiles around it. Blocks are aligned to the tile grid and hold every input tile of
  their cell, whatever is selected or already done, so a tile's output never depends on the run.

Raster input (pix2pix.tiles.rasters) is not listed: its tiles are the XYZ tiles covering the
rasters' footprints at the zoom, planned on the driver as RasterShards of columns; units carry
the rasters they read, and a context block is one warped window of its tiles plus the margin.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mercantile
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pix2pix import storage
from pix2pix.errors import JobError
from pix2pix.tiles.keys import BadKey, check_key, output_key
from pix2pix.tiles.rows import TileRef, Unit
from pix2pix.tiles.xyz import TileKey, parse_tile_key

# Context blocks are BLOCK_TILES x BLOCK_TILES tiles plus a ring of neighbours: reading the
# ring costs (1 + 2/8)^2 = 1.56x the block's bytes, the model sees (1 + 2m/8T)^2 more pixels.
BLOCK_TILES = 8
DISCOVERY_DEPTH = 3  # "city/17/38591" is a column; deeper layouts are listed as whole trees
# Columns listed by one planning task. A city's columns hold a few to a few hundred tiles each;
# one task per column made planning (a task's fixed cost, thousands of times) most of a run.
SHARD_COLUMNS = 32
LIST_THREADS = 16  # concurrent listings per planning task: object stores answer in tens of ms
MANIFEST_SHARD_KEYS = 1000
MAX_REPORTED_KEY = 300
MAX_LATITUDE = 85.051129  # Web Mercator's limit, as mercantile clamps it


@dataclass
class ListingShard:
    """Directories (relative to the input root) to list; the tiles under ``core`` are
    translated, the rest only read (a context block's neighbours)."""

    dirs: list[str]
    core: list[str]
    recursive: bool = True

    def wanted(self, listed: list[str], manifest: storage.Location | None) -> list[str]:
        return [key for key in listed if _under(key, set(self.core), self.recursive)]


@dataclass
class BboxShard(ListingShard):
    """XYZ columns crossing --bbox: only the core tiles inside [z, x0, x1, y0, y1]."""

    recursive: bool = False
    bbox: list[int] = field(default_factory=list)

    def wanted(self, listed: list[str], manifest: storage.Location | None) -> list[str]:
        return [key for key in super().wanted(listed, manifest) if _selected(key, self.bbox)]


@dataclass
class ManifestShard:
    """A piece of a manifest, [file, row group], translated without listing the input."""

    part: list
    dirs: list[str] = field(default_factory=list)  # nothing is listed

    def wanted(self, listed: list[str], manifest: storage.Location | None) -> list[str]:
        return read_manifest_part(manifest.filesystem, *self.part)


@dataclass
class ManifestBlockShard(ListingShard):
    """A manifest's keys with --context: one block column's keys, its columns and the two
    beside it listed for neighbours (or, for keys outside any XYZ column, nothing listed)."""

    recursive: bool = False
    keys: list[str] = field(default_factory=list)

    def wanted(self, listed: list[str], manifest: storage.Location | None) -> list[str]:
        return self.keys


@dataclass
class RasterShard:
    """XYZ columns over raster footprints: ``columns`` rows [x, [[y0, y1], ...]] (the footprint's
    tiles, inclusive ranges), ``selection`` [x0, x1, y0, y1] (--bbox) or None, ``sources`` rows
    [uri, west, south, east, north] (Web Mercator metres, priority order) near these columns."""

    zoom: int
    columns: list
    sources: list
    selection: list | None = None
    dirs: list[str] = field(default_factory=list)  # nothing is listed

    @property
    def core(self) -> list[str]:
        return [f"{self.zoom}/{x}" for x, _ in self.columns]

    def tiles(self) -> list[tuple[int, int]]:
        """The footprint's tiles (x, y), column by column."""
        return [(x, y) for x, ranges in self.columns for y0, y1 in ranges for y in range(y0, y1 + 1)]

    def wanted(self, listed: list[str], manifest: storage.Location | None) -> list[str]:
        return [f"{self.zoom}/{x}/{y}" for x, y in self.tiles() if _in_selection(x, y, self.selection)]


Shard = ListingShard | BboxShard | ManifestShard | ManifestBlockShard | RasterShard


@dataclass(frozen=True)
class PlanSettings:
    image_format: str = "png"
    margin: int = 0                 # 0: no context, one unit per tile
    overwrite: bool = False
    block_tiles: int = BLOCK_TILES
    # Outputs modified at or after this time (ns since the epoch) are this run's own writes and
    # do not count as done. Planning then depends only on what existed when the run started,
    # so a planning task that Ray retries after its worker died plans exactly what its first
    # attempt did: Ray drops the retry's outputs up to the count the first attempt delivered,
    # by position, and a retry that skipped the tiles written meanwhile shifted every later
    # tile into the dropped positions - they were silently never translated.
    written_before_ns: int | None = None


def list_directory(location: storage.Location) -> tuple[list[str], list[str]]:
    """(file names, directory names) directly inside a directory; hidden and '_' names left out."""
    selector = pafs.FileSelector(location.path, recursive=False, allow_not_found=True)
    files, dirs = [], []
    for info in storage.file_info(location.filesystem, selector):
        name = posixpath.basename(info.path)
        if name.startswith((".", "_")):
            continue
        if info.type == pafs.FileType.File:
            files.append(name)
        elif info.type == pafs.FileType.Directory:
            dirs.append(name)
    return sorted(files), sorted(dirs)


def _join(root: storage.Location, relative: str) -> storage.Location:
    return root.join(relative) if relative else root


def list_keys(root: storage.Location, relative_dir: str, recursive: bool) -> list[str]:
    """Relative keys of the files under one directory of ``root``."""
    location = _join(root, relative_dir)
    if recursive:
        return [posixpath.relpath(path, root.path) for path in storage.list_files(location)]
    files, _ = list_directory(location)
    return [posixpath.join(relative_dir, name) for name in files]


def column_of(relative_dir: str) -> tuple[str, int, int] | None:
    """(prefix, z, x) when a directory is an XYZ column ``[prefix/]z/x``."""
    tile = parse_tile_key(relative_dir + "/0.x")
    if tile is None:
        return None
    return _prefix(relative_dir, 2), tile.z, tile.x


def _prefix(path: str, parts: int) -> str:
    return "/".join(path.split("/")[:-parts])


def discover_shards(root: storage.Location, settings: PlanSettings) -> list[Shard]:
    """Walk the top of the input (non-recursive listings only) and cut it into shards."""
    columns: list[str] = []
    shards: list[Shard] = []
    pending = [""]
    while pending:
        relative = pending.pop(0)
        files, dirs = list_directory(_join(root, relative))
        if files:
            shards.append(ListingShard(dirs=[relative], core=[relative], recursive=False))
        for name in dirs:
            child = posixpath.join(relative, name)
            if column_of(child) is not None:
                columns.append(child)
            elif child.count("/") + 1 >= DISCOVERY_DEPTH:
                shards.append(ListingShard(dirs=[child], core=[child]))
            else:
                pending.append(child)
    if settings.margin == 0:
        shards += [ListingShard(dirs=group, core=group) for group in column_groups(sorted(columns, key=column_of))]
    else:
        shards += block_column_shards(columns, settings.block_tiles)
    return shards


def column_groups(columns: list[str]) -> list[list[str]]:
    """Consecutive columns, SHARD_COLUMNS at a time."""
    return [columns[start:start + SHARD_COLUMNS] for start in range(0, len(columns), SHARD_COLUMNS)]


def block_column_shards(columns: list[str], block_tiles: int, bbox: list[int] | None = None) -> list[Shard]:
    """Group XYZ columns into block columns; each also lists the two columns beside it."""
    by_block: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    existing = set(columns)
    for column in columns:
        prefix, z, x = column_of(column)
        by_block[prefix, z, x // block_tiles].append(column)
    shards = []
    for (prefix, z, block_x), core in sorted(by_block.items()):
        first, last = block_x * block_tiles - 1, (block_x + 1) * block_tiles
        names = [posixpath.join(prefix, str(z), str(x)) for x in range(first, last + 1)]
        dirs = [name for name in names if name in existing]
        shards.append(BboxShard(dirs=dirs, core=sorted(core), recursive=True, bbox=bbox) if bbox
                      else ListingShard(dirs=dirs, core=sorted(core)))
    return shards


def bbox_tile_range(bbox: tuple[float, float, float, float], zoom: int) -> tuple[int, int, int, int] | None:
    """(x0, x1, y0, y1): the range of the tiles ``mercantile.tiles(*bbox, zoom)`` yields, from the
    box's corners in constant time (a city at zoom 19 is ~10^5 tiles to walk otherwise). Same
    rules: latitudes clamped to Web Mercator's, a box across the antimeridian (west > east) in two
    halves, and south and east edges exclusive, so a tile's own bounds give that one tile."""
    west, south, east, north = bbox
    halves = [(-180.0, east), (west, 180.0)] if west > east else [(west, east)]
    ranges = []
    for w, e in halves:
        upper_left = mercantile.tile(max(-180.0, w), min(MAX_LATITUDE, north), zoom)
        lower_right = mercantile.tile(min(180.0, e) - mercantile.LL_EPSILON,
                                      max(-MAX_LATITUDE, south) + mercantile.LL_EPSILON, zoom)
        if upper_left.x <= lower_right.x and upper_left.y <= lower_right.y:
            ranges.append((upper_left.x, lower_right.x, upper_left.y, lower_right.y))
    if not ranges:
        return None
    return (min(r[0] for r in ranges), max(r[1] for r in ranges), min(r[2] for r in ranges),
            max(r[3] for r in ranges))


def bbox_shards(root: storage.Location, bbox: tuple[float, float, float, float], zoom: int,
                settings: PlanSettings) -> list[Shard]:
    """Columns of ``root/zoom/x/`` crossing the bbox; one listing finds which exist."""
    tile_range = bbox_tile_range(bbox, zoom)
    if tile_range is None:
        return []
    x0, x1, y0, y1 = tile_range
    _, names = list_directory(_join(root, str(zoom)))
    columns = [f"{zoom}/{name}" for name in names if name.isdigit()]
    selection = [zoom, x0, x1, y0, y1]
    if settings.margin == 0:
        inside = [c for c in columns if x0 <= int(c.split("/")[1]) <= x1]
        return [BboxShard(dirs=group, core=group, bbox=selection) for group in column_groups(inside)]
    block = settings.block_tiles
    near = [c for c in columns if x0 // block * block - 1 <= int(c.split("/")[1]) <= (x1 // block + 1) * block]
    return [shard for shard in block_column_shards(near, block, selection)
            if any(x0 <= int(c.split("/")[1]) <= x1 for c in shard.core)]


def footprint_columns(footprints, zoom: int) -> dict[int, list[list[int]]]:
    """The XYZ tiles covering footprints (W, S, E, N in degrees) at a zoom: each column x's
    merged, inclusive y ranges. Memory grows with the columns, not the tiles."""
    ranges: dict[int, list[list[int]]] = defaultdict(list)
    for footprint in footprints:
        tile_range = bbox_tile_range(footprint, zoom)
        if tile_range is None:
            continue
        x0, x1, y0, y1 = tile_range
        for x in range(x0, x1 + 1):
            ranges[x].append([y0, y1])
    merged = {}
    for x, spans in sorted(ranges.items()):
        spans.sort()
        out = [spans[0]]
        for y0, y1 in spans[1:]:
            if y0 <= out[-1][1] + 1:
                out[-1] = [out[-1][0], max(out[-1][1], y1)]
            else:
                out.append([y0, y1])
        merged[x] = out
    return merged


def selected_tile_count(columns: dict[int, list[list[int]]], selection: list[int] | None) -> int:
    """How many of the columns' tiles lie in the selection [x0, x1, y0, y1] (None: all)."""
    if selection is None:
        return sum(y1 - y0 + 1 for spans in columns.values() for y0, y1 in spans)
    x0, x1, sy0, sy1 = selection
    return sum(max(0, min(y1, sy1) - max(y0, sy0) + 1)
               for x, spans in columns.items() if x0 <= x <= x1 for y0, y1 in spans)


def raster_shards(sources, columns: dict[int, list[list[int]]], zoom: int, selection: list[int] | None,
                  settings: PlanSettings) -> list[Shard]:
    """Shards of footprint columns: SHARD_COLUMNS at a time, or with context one block column
    each. ``sources``: objects with ``uri`` and ``bounds`` (Web Mercator), in priority order; a
    shard carries those within a tile of its columns (a context margin is at most a tile)."""
    if selection is not None:
        wanted_x = [x for x in columns if selection[0] <= x <= selection[1]]
    else:
        wanted_x = list(columns)
    if settings.margin == 0:
        groups = column_groups(wanted_x)
    else:
        by_block: dict[int, list[int]] = defaultdict(list)
        for x in columns:
            by_block[x // settings.block_tiles].append(x)
        groups = [by_block[block] for block in sorted({x // settings.block_tiles for x in wanted_x})]
    shards = []
    for group in groups:
        west, _, _, _ = mercantile.xy_bounds(min(group) - 1, 0, zoom)
        _, _, east, _ = mercantile.xy_bounds(max(group) + 1, 0, zoom)
        near = [[source.uri, *source.bounds] for source in sources
                if source.bounds[0] < east and source.bounds[2] > west]
        shards.append(RasterShard(zoom, [[x, columns[x]] for x in group], near, selection))
    return shards


def manifest_context_shards(keys, settings: PlanSettings) -> list[Shard]:
    """With --context, a manifest's keys are grouped by block column (held in memory)."""
    blocks: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    others: list = []  # unsafe keys go here too, to be recorded by plan_shard
    for key in keys:
        try:
            tile = parse_tile_key(check_key(key))
        except BadKey:
            tile = None
        if tile is None:
            others.append(key)
        else:
            column = posixpath.dirname(key)
            blocks[_prefix(column, 2), tile.z, tile.x // settings.block_tiles].append(key)
    shards = []
    for (prefix, z, block_x), wanted in sorted(blocks.items()):
        first, last = block_x * settings.block_tiles, (block_x + 1) * settings.block_tiles
        core = [posixpath.join(prefix, str(z), str(x)) for x in range(first, last)]
        beside = [posixpath.join(prefix, str(z), str(x)) for x in (first - 1, last) if 0 <= x < 2**z]
        shards.append(ManifestBlockShard(dirs=sorted(core + beside, key=column_of), core=core, keys=wanted))
    for start in range(0, len(others), MANIFEST_SHARD_KEYS):
        shards.append(ManifestBlockShard(dirs=[], core=[], keys=others[start:start + MANIFEST_SHARD_KEYS]))
    return shards


class ManifestError(JobError):
    """A manifest that is missing, unreadable or has no ``key`` column."""


def manifest_parts(location: storage.Location) -> list[list]:
    """The pieces of a Parquet or CSV manifest (a file or a folder of them), as [file, row
    group] (-1 for a CSV file, read whole), so that planning tasks read them in parallel."""
    if not storage.exists(location):
        raise ManifestError(f"manifest not found: {location.uri}")
    files = [location.path] if not storage.is_dir(location) else \
        sorted(storage.list_files(location, (".parquet", ".csv")))
    parts = []
    for path in files:
        try:
            if path.lower().endswith(".csv"):
                columns = _read_csv(location.filesystem, path).column_names
                parts.append([path, -1])
            else:
                with location.filesystem.open_input_file(path) as handle:
                    metadata = pq.ParquetFile(handle).metadata
                columns = metadata.schema.names
                parts += [[path, group] for group in range(metadata.num_row_groups)]
        except (pa.ArrowInvalid, OSError) as error:
            raise ManifestError(f"cannot read manifest {path}: {error}") from None
        if "key" not in columns:
            raise ManifestError(f"manifest {path} has no 'key' column (columns: {', '.join(columns)})")
    if not parts:  # else it would read as no manifest at all, and the whole input be planned
        raise ManifestError(f"manifest {location.uri} holds no keys: no .csv or .parquet file, or Parquet files "
                            "with no row group")
    return parts


@storage.store_errors()
def read_manifest_part(filesystem: pafs.FileSystem, path: str, row_group: int) -> list:
    if row_group < 0:
        return _read_csv(filesystem, path).column("key").to_pylist()
    with filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle).read_row_group(row_group, columns=["key"]).column("key").to_pylist()


def _read_csv(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    with filesystem.open_input_stream(path) as stream:
        return pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(column_types={"key": pa.string()}))


def done_keys(output: storage.Location, relative_dirs, recursive: bool, before_ns: int | None = None) -> set[str]:
    """Output keys under the directories (hidden and '_' names left out), only those last
    modified before ``before_ns`` when given."""
    def listing(relative: str):
        location = _join(output, relative)
        selector = pafs.FileSelector(location.path, recursive=recursive, allow_not_found=True)
        return location, storage.file_info(location.filesystem, selector)

    done = set()
    for location, infos in _concurrently(listing, list(relative_dirs)):
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if any(part.startswith((".", "_")) for part in posixpath.relpath(info.path, location.path).split("/")):
                continue
            if before_ns is not None and info.mtime_ns is not None and info.mtime_ns >= before_ns:
                continue
            done.add(posixpath.relpath(info.path, output.path))
    return done


def _concurrently(function, items: list) -> list:
    """``[function(item) for item in items]``, LIST_THREADS at a time, in order."""
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(LIST_THREADS, len(items))) as pool:
        return list(pool.map(function, items))


def _checked(keys: list) -> tuple[list[Unit], list[str]]:
    """(failure units for unsafe keys, the safe keys, each once)."""
    failures, valid = [], []
    for key in dict.fromkeys(keys):
        try:
            valid.append(check_key(key))
        except BadKey as error:
            failures.append(Unit(unit=str(key), key=str(key)[:MAX_REPORTED_KEY], reason=str(error)))
    return failures, valid


def _one_per_output(keys: list[str], image_format: str) -> tuple[list[Unit], list[str]]:
    """(failure units, the keys that write) where several inputs would write one output file
    (1/0/0.png, 1/0/0.jpg and 1/0/0.webp all write 1/0/0.png): the first in key order wins."""
    winners: dict[str, str] = {}
    for key in sorted(keys):
        winners.setdefault(output_key(key, image_format), key)
    kept = set(winners.values())
    failures = [Unit(unit=key, key=key, reason=f"output {output_key(key, image_format)} is also that of "
                     f"{winners[output_key(key, image_format)]}, which is written (first in key order)")
                for key in keys if key not in kept]
    return failures, [key for key in keys if key in kept]


def _single_units(keys: list[str], done: set[str], settings: PlanSettings) -> list[Unit]:
    units, skipped = [], []
    for key in keys:
        if output_key(key, settings.image_format) in done:
            skipped.append(key)
        else:
            units.append(Unit(unit=output_key(key, settings.image_format), key=key, tiles=[TileRef(key)],
                              margin=settings.margin))
    if skipped:
        units.append(Unit(unit="", key=skipped[0], skipped=len(skipped)))
    return units


def plan_shard(shard: Shard, input_root: storage.Location, output: storage.Location,
               settings: PlanSettings, manifest: storage.Location | None = None) -> list[Unit]:
    if isinstance(shard, RasterShard):
        return plan_raster_shard(shard, output, settings)
    listed = [key for keys in _concurrently(lambda d: list_keys(input_root, d, shard.recursive), shard.dirs)
              for key in keys]
    # Listed names are as untrusted as a manifest's: a key like "a%2F..%2Fb" or one holding
    # control characters is recorded, never written (S3 resolves ".." in a written key).
    units, wanted = _checked(shard.wanted(listed, manifest))
    collisions, wanted = _one_per_output(wanted, settings.image_format)
    if collisions:  # the neighbours a block reads are the winners too
        losers = {unit.key for unit in collisions}
        listed = [key for key in listed if key not in losers]
    units += collisions
    before = settings.written_before_ns
    if settings.overwrite:
        done = set()
    elif shard.dirs:
        done = done_keys(output, shard.core, shard.recursive, before)
    else:
        done = done_keys(output, sorted({posixpath.dirname(k) for k in wanted}), False, before)
    if settings.margin == 0:
        return units + _single_units(wanted, done, settings)
    listed_set = set(listed)
    singles, xyz = [], []
    for key in wanted:
        if parse_tile_key(key) is None:
            singles.append(key)
        elif key in listed_set:
            xyz.append(key)
        else:
            units.append(Unit(unit=key, key=key, reason="not found in the input listing"))
    core_tiles = [key for key in listed if _under(key, set(shard.core), shard.recursive)]
    return units + _single_units(singles, done, settings) + plan_blocks(listed, core_tiles, xyz, done, settings)


def _under(key: str, dirs: set[str], recursive: bool) -> bool:
    parent = posixpath.dirname(key)
    if parent in dirs:
        return True
    return recursive and any(parent.startswith(d + "/") or d == "" for d in dirs)


def _in_selection(x: int, y: int, selection: list[int] | None) -> bool:
    return selection is None or (selection[0] <= x <= selection[1] and selection[2] <= y <= selection[3])


def _selected(key: str, bbox: list[int] | None) -> bool:
    if bbox is None:
        return True
    tile = parse_tile_key(key)
    z, x0, x1, y0, y1 = bbox
    return tile is not None and tile.z == z and x0 <= tile.x <= x1 and y0 <= tile.y <= y1


def plan_blocks(listed: list[str], core: list[str], wanted: list[str], done: set[str],
                settings: PlanSettings) -> list[Unit]:
    """Context units: group the core XYZ tiles into grid-aligned blocks; each block keeps every
    core tile of its cell and the listed tiles around it, and writes the wanted, undone ones."""
    n = settings.block_tiles
    grid: dict[tuple[str, int], dict[tuple[int, int], str]] = defaultdict(dict)
    for key in listed:
        tile = parse_tile_key(key)
        if tile is not None:
            grid[_prefix(key, 3), tile.z].setdefault((tile.x, tile.y), key)
    blocks: dict[tuple[str, int, int, int], list[tuple[TileKey, str]]] = defaultdict(list)
    for key in core:
        tile = parse_tile_key(key)
        if tile is not None and grid[_prefix(key, 3), tile.z].get((tile.x, tile.y)) == key:
            blocks[_prefix(key, 3), tile.z, tile.x // n, tile.y // n].append((tile, key))
    wanted_set = set(wanted)
    units, skipped = [], []
    for (prefix, z, block_x, block_y), members in sorted(blocks.items()):
        todo = [key for _, key in members if key in wanted_set
                and output_key(key, settings.image_format) not in done]
        skipped += [key for _, key in members if key in wanted_set and key not in todo]
        if not todo:
            continue
        x0, x1 = min(t.x for t, _ in members), max(t.x for t, _ in members)
        y0, y1 = min(t.y for t, _ in members), max(t.y for t, _ in members)
        todo_set = set(todo)
        tiles = [TileRef(key, t.x - x0, t.y - y0, key in todo_set) for t, key in members]
        cells = grid[prefix, z]
        for y in range(y0 - 1, y1 + 2):
            for x in range(x0 - 1, x1 + 2):
                if (x0 <= x <= x1 and y0 <= y <= y1) or (x, y) not in cells:
                    continue
                tiles.append(TileRef(cells[x, y], x - x0, y - y0, write=False))
        units.append(Unit(unit=f"{prefix}|{z}|{block_x}|{block_y}", key=todo[0], tiles=tiles,
                          columns=x1 - x0 + 1, rows=y1 - y0 + 1, margin=settings.margin))
    if skipped:
        units.append(Unit(unit="", key=skipped[0], skipped=len(skipped)))
    return units


def plan_raster_shard(shard: RasterShard, output: storage.Location, settings: PlanSettings) -> list[Unit]:
    """Units of raster input: the shard's wanted tiles that are not done, each with the
    rasters it reads (the tile's, or with context its block's plus a tile around)."""
    done = set() if settings.overwrite else done_keys(output, shard.core, False, settings.written_before_ns)
    z, units, skipped = shard.zoom, [], []

    def near(x0: int, x1: int, y0: int, y1: int, ring: int) -> list[str]:
        west, _, _, north = mercantile.xy_bounds(x0 - ring, y0 - ring, z)
        _, south, east, _ = mercantile.xy_bounds(x1 + ring, y1 + ring, z)
        return [row[0] for row in shard.sources if row[1] < east and row[3] > west and row[2] < north
                and row[4] > south]

    if settings.margin == 0:
        for key in shard.wanted([], None):
            if output_key(key, settings.image_format) in done:
                skipped.append(key)
                continue
            _, x, y = map(int, key.split("/"))
            units.append(Unit(unit=output_key(key, settings.image_format), key=key, tiles=[TileRef(key)],
                              sources=near(x, x, y, y, 0)))
    else:
        n = settings.block_tiles
        blocks: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for x, y in shard.tiles():  # every footprint tile of a cell, whatever is selected or done
            blocks[x // n, y // n].append((x, y))
        for (block_x, block_y), members in sorted(blocks.items()):
            keys = {(x, y): f"{z}/{x}/{y}" for x, y in members}
            wanted = [xy for xy in members if _in_selection(*xy, shard.selection)]
            todo = {xy for xy in wanted if output_key(keys[xy], settings.image_format) not in done}
            skipped += [keys[xy] for xy in wanted if xy not in todo]
            if not todo:
                continue
            x0, x1 = min(x for x, _ in members), max(x for x, _ in members)
            y0, y1 = min(y for _, y in members), max(y for _, y in members)
            tiles = [TileRef(keys[x, y], x - x0, y - y0, (x, y) in todo) for x, y in members]
            units.append(Unit(unit=f"|{z}|{block_x}|{block_y}", key=keys[min(todo)], tiles=tiles,
                              columns=x1 - x0 + 1, rows=y1 - y0 + 1, margin=settings.margin,
                              sources=near(x0, x1, y0, y1, 1)))
    if skipped:
        units.append(Unit(unit="", key=skipped[0], skipped=len(skipped)))
    return units
