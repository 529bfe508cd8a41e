"""A translated tile set as map software consumes it: the XYZ tiles of a folder (local or
s3://), its TileJSON, and one PMTiles archive of it. No Ray."""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from urllib.parse import quote

import mercantile
from PIL import Image
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer

from pix2pix import storage
from pix2pix.errors import JobError
from pix2pix.model.palette import parse_palette
from pix2pix.tiles.xyz import TileKey, parse_tile_key

TILEJSON_FILE = "tiles.json"
HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
TILE_TYPES = {".png": TileType.PNG, ".jpg": TileType.JPEG, ".jpeg": TileType.JPEG, ".webp": TileType.WEBP}
READ_THREADS = 16
READ_AHEAD = 4 * READ_THREADS  # results held at once, whatever the number of tiles


class TileSetError(JobError):
    """No tiles where tiles were expected, mixed formats, an archive that exists."""


@dataclass(frozen=True)
class TileSet:
    """XYZ tiles under a root: ``keys`` maps each tile to its key relative to the root."""

    root: storage.Location
    keys: Mapping[TileKey, str]
    extension: str  # ".png"
    links_outside: int = 0  # symbolic links that resolve outside the folder: skipped, never read

    @property
    def zooms(self) -> tuple[int, int]:
        zooms = {tile.z for tile in self.keys}
        return min(zooms), max(zooms)

    def bounds(self) -> tuple[float, float, float, float]:
        """W, S, E, N in degrees of the tiles at the deepest zoom."""
        deepest = [tile for tile in self.keys if tile.z == self.zooms[1]]
        west, north = mercantile.ul(min(t.x for t in deepest), min(t.y for t in deepest), self.zooms[1])
        east, south = mercantile.ul(max(t.x for t in deepest) + 1, max(t.y for t in deepest) + 1, self.zooms[1])
        return west, south, east, north

    def center(self) -> tuple[float, float, int]:
        """A tile at the deepest zoom near the middle of the bounds: lon, lat, zoom of its centre."""
        west, south, east, north = self.bounds()
        z = self.zooms[1]
        middle = mercantile.tile((west + east) / 2, (south + north) / 2, z)
        tile = min((t for t in self.keys if t.z == z), key=lambda t: (t.x - middle.x) ** 2 + (t.y - middle.y) ** 2)
        box = mercantile.bounds(tile.x, tile.y, z)
        return (box.west + box.east) / 2, (box.south + box.north) / 2, z

    def at_zoom(self, zoom: int) -> TileSet:
        return replace(self, keys={tile: key for tile, key in self.keys.items() if tile.z == zoom})

    def read(self, tile: TileKey) -> bytes:
        return storage.read_bytes(self.root.filesystem, posixpath.join(self.root.path, self.keys[tile]))

    def tile_size(self) -> int:
        with Image.open(io.BytesIO(self.read(min(self.keys)))) as image:
            return image.size[0]


def scan(root: storage.Location) -> TileSet:
    """The tiles ``z/x/y.ext`` directly under ``root``, one format only. A local tile that is a
    link to a file outside the folder is skipped and counted: a folder of tiles must not serve or
    pack whatever file on the machine a link names."""
    keys: dict[TileKey, str] = {}
    extensions = set()
    links_outside = 0
    real_root = os.path.realpath(root.path) if root.is_local else None
    for path in storage.list_files(root, tuple(TILE_TYPES)):
        if real_root is not None and os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            links_outside += 1
            continue
        relative = posixpath.relpath(path, root.path)
        tile = parse_tile_key(relative)
        if tile is None or relative.count("/") != 2:
            continue
        keys[tile] = relative
        extensions.add(posixpath.splitext(relative)[1].lower())
    if not keys:
        raise TileSetError(f"no XYZ tiles (z/x/y.png, .jpg or .webp) under {root.uri}")
    if len(extensions) > 1:
        raise TileSetError(f"{root.uri} mixes tile formats ({', '.join(sorted(extensions))}): keep one per folder")
    return TileSet(root, keys, extensions.pop(), links_outside)


def xyz_template(root: storage.Location, extension: str) -> str:
    """The XYZ URL template of the folder, as QGIS and MapLibre take it."""
    tail = "{z}/{x}/{y}" + extension
    if root.is_local:
        return "file://" + quote(os.path.abspath(root.path)) + "/" + tail
    bucket, _, prefix = root.path.partition("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    base = f"{endpoint.rstrip('/')}/{bucket}" if endpoint else f"https://{bucket}.s3.amazonaws.com"
    return f"{base}/{quote(prefix)}/{tail}" if prefix else f"{base}/{tail}"


def tilejson(tileset: TileSet, template: str, palette: Mapping | None = None, name: str = "pix2pix") -> dict:
    """TileJSON 3.0.0, plus the palette (class -> colour) for a legend."""
    west, south, east, north = tileset.bounds()
    lon, lat, zoom = tileset.center()
    document = {
        "tilejson": "3.0.0", "name": name, "scheme": "xyz", "tiles": [template],
        "minzoom": tileset.zooms[0], "maxzoom": tileset.zooms[1],
        "bounds": [west, south, east, north], "center": [lon, lat, zoom],
        "tileSize": tileset.tile_size(),
    }
    if palette:
        document["palette"] = {name: hex_colour(colour) for name, colour in palette.items()}
    return document


def folder_palette(root: storage.Location) -> dict | None:
    """The palette in the folder's tiles.json (translate writes it), as class -> (r, g, b)."""
    written = root.join(TILEJSON_FILE)
    if not storage.exists(written):
        return None
    try:
        raw = json.loads(storage.read_text(written))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise TileSetError(f"{written.uri} is not a TileJSON file: {type(error).__name__}") from None
    palette = raw.get("palette") if isinstance(raw, dict) else None
    if not palette:
        return None
    if not isinstance(palette, dict) or not all(isinstance(colour, str) and HEX_COLOUR.fullmatch(colour)
                                                for colour in palette.values()):
        raise TileSetError(f"{written.uri}: its palette must map class names to #rrggbb colours")
    return parse_palette({name: [int(colour[i:i + 2], 16) for i in (1, 3, 5)] for name, colour in palette.items()},
                         written.uri)


def hex_colour(rgb) -> str:
    """(r, g, b) 0-255 -> "#rrggbb", as TileJSON palettes (and CSS) write colours."""
    return "#%02x%02x%02x" % tuple(rgb)


def archive_metadata(tileset: TileSet, palette: Mapping | None) -> dict:
    """An archive's metadata: its TileJSON without a tile URL, and the tiles' extension, so the
    archive alone can be viewed with its legend."""
    spec = tilejson(tileset, "", palette)
    spec.pop("tiles")
    return {**spec, "extension": tileset.extension}


def ordered_map(function: Callable, items: Iterable, threads: int = READ_THREADS) -> Iterator:
    """``function`` of each item, in the items' order, computed on threads with at most
    READ_AHEAD results waiting (``Executor.map`` would submit every item at once)."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_tiles(tileset: TileSet) -> Iterator[tuple[TileKey, bytes]]:
    """Every tile in PMTiles order (by tile id), read concurrently."""
    order = sorted(tileset.keys, key=lambda tile: zxy_to_tileid(tile.z, tile.x, tile.y))
    return ordered_map(lambda tile: (tile, tileset.read(tile)), order)


def write_pmtiles(handle, tiles: Iterable[tuple[TileKey, bytes]], extension: str, metadata: dict,
                  bounds: tuple[float, float, float, float], center: tuple[float, float, int]) -> dict:
    """Write tiles (in tile-id order) as one PMTiles v3 archive to a binary file; identical tiles
    are stored once. Returns counts."""
    writer = Writer(handle)
    count = size = 0
    zooms = set()
    for tile, data in tiles:
        writer.write_tile(zxy_to_tileid(tile.z, tile.x, tile.y), data)
        count, size = count + 1, size + len(data)
        zooms.add(tile.z)
    if not count:
        raise TileSetError("no tiles to pack")
    west, south, east, north = bounds
    e7 = lambda degrees: int(round(degrees * 10_000_000))  # noqa: E731
    writer.finalize({
        "tile_type": TILE_TYPES[extension], "tile_compression": Compression.NONE,
        "min_zoom": min(zooms), "max_zoom": max(zooms),
        "min_lon_e7": e7(west), "min_lat_e7": e7(south), "max_lon_e7": e7(east), "max_lat_e7": e7(north),
        "center_zoom": center[2], "center_lon_e7": e7(center[0]), "center_lat_e7": e7(center[1]),
    }, metadata)
    return {"tiles": count, "tile_bytes": size, "unique_tiles": len(writer.hash_to_offset)}
