"""Reading a local PMTiles v3 archive that may be hostile: its metadata checked before it reaches
the map page, its directories decompressed with a cap, the root one cached and the leaves in a
bounded cache (a city's leaves do not all fit in memory at start-up)."""

from __future__ import annotations

import functools
import io
import json
import mmap
import zlib

from pmtiles.tile import Compression, Entry, deserialize_header, find_tile, read_varint, zxy_to_tileid

from pix2pix.tiles.tileset import HEX_COLOUR, TILE_TYPES, TileSetError, hex_colour
from pix2pix.tiles.xyz import MAX_ZOOM, in_grid

MAX_DIRECTORY_BYTES = 32 * 2**20  # unpacked; a directory of a million entries takes a few MB
MAX_METADATA_BYTES = 1 * 2**20
LEAF_DIRECTORIES_CACHED = 256
MAX_DEPTH = 4  # root and three levels of leaves, as the format's readers allow
class Archive:
    """``get(z, x, y)`` -> the tile's bytes or None; ``metadata``: checked (``checked_metadata``)."""

    def __init__(self, path: str):
        self.path = path
        self.handle = open(path, "rb")
        try:
            self.data = mmap.mmap(self.handle.fileno(), 0, access=mmap.ACCESS_READ)
            self.header = deserialize_header(self.data[:127])
            if self.header["internal_compression"] not in (Compression.GZIP, Compression.NONE):
                raise ValueError(f"internal compression {self.header['internal_compression']} is not supported")
            self.metadata = checked_metadata(json.loads(self._unpack(
                self.header["metadata_offset"], self.header["metadata_length"], MAX_METADATA_BYTES)))
            self.root = self._directory(self.header["root_offset"], self.header["root_length"])
        except TileSetError as error:
            self.close()
            raise TileSetError(f"{path} cannot be served: {error}") from None
        except Exception as error:  # the library raises bare exceptions on foreign files
            self.close()
            raise TileSetError(f"{path} is not a PMTiles v3 archive: {type(error).__name__}: {error}"[:300]) from None
        self._leaf = functools.lru_cache(maxsize=LEAF_DIRECTORIES_CACHED)(self._directory)

    def get(self, z: int, x: int, y: int) -> bytes | None:
        if not in_grid(z, x, y):
            return None
        tile_id = zxy_to_tileid(z, x, y)
        directory = self.root
        for _ in range(MAX_DEPTH):
            entry = find_tile(directory, tile_id)
            if entry is None:
                return None
            if entry.run_length > 0:
                start = self.header["tile_data_offset"] + entry.offset
                return self.data[start:start + entry.length]
            directory = self._leaf(self.header["leaf_directory_offset"] + entry.offset, entry.length)
        return None

    def close(self) -> None:
        if getattr(self, "data", None) is not None:
            self.data.close()
        self.handle.close()

    def _unpack(self, offset: int, length: int, cap: int) -> bytes:
        """Bytes of the archive, gunzipped when it says so, never more than ``cap`` of them."""
        raw = self.data[offset:offset + length]
        if self.header["internal_compression"] == Compression.NONE:
            if len(raw) > cap:
                raise TileSetError(f"a directory or metadata of {len(raw)} bytes, more than {cap}")
            return raw
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        unpacked = inflater.decompress(raw, cap)
        if inflater.unconsumed_tail:
            raise TileSetError(f"a directory or metadata unpacks to more than {cap} bytes")
        return unpacked

    def _directory(self, offset: int, length: int) -> list[Entry]:
        """A directory's entries (the format's four varint columns), from at most
        MAX_DIRECTORY_BYTES unpacked."""
        stream = io.BytesIO(self._unpack(offset, length, MAX_DIRECTORY_BYTES))
        count = read_varint(stream)
        if count > MAX_DIRECTORY_BYTES // 4:  # each entry takes at least four bytes
            raise TileSetError(f"a directory declares {count} entries")
        entries, last = [], 0
        for _ in range(count):
            last += read_varint(stream)
            entries.append(Entry(last, 0, 0, 0))
        for entry in entries:
            entry.run_length = read_varint(stream)
        for entry in entries:
            entry.length = read_varint(stream)
        for index, entry in enumerate(entries):
            value = read_varint(stream)
            entry.offset = entries[index - 1].offset + entries[index - 1].length if index and value == 0 else value - 1
        return entries


def checked_metadata(raw) -> dict:
    """What of an archive's metadata reaches the page: the TileJSON fields this project writes,
    each of its type; palette colours as #rrggbb (a CSS value from the file could make the
    browser fetch a URL). Raises TileSetError naming the first field that is wrong."""
    if not isinstance(raw, dict):
        raise TileSetError("its metadata is not a JSON object")
    extension = raw.get("extension", ".png")
    if extension not in TILE_TYPES:
        raise TileSetError(f"its tile extension {str(extension)[:20]!r} is not one of {', '.join(TILE_TYPES)}")
    checked = {"tilejson": "3.0.0", "scheme": "xyz", "extension": extension}
    for name, low, high in (("minzoom", 0, MAX_ZOOM), ("maxzoom", 0, MAX_ZOOM), ("tileSize", 1, 4096)):
        if name in raw:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise TileSetError(f"its {name} must be an integer in {low}..{high}")
            checked[name] = value
    for name, size in (("bounds", 4), ("center", 3)):
        if name in raw:
            value = raw[name]
            if not (isinstance(value, list) and len(value) == size and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise TileSetError(f"its {name} must be {size} numbers")
            checked[name] = value
    if "name" in raw:
        if not isinstance(raw["name"], str):
            raise TileSetError("its name must be a string")
        checked["name"] = raw["name"][:200]
    if raw.get("palette"):
        checked["palette"] = _checked_palette(raw["palette"])
    return checked


def _checked_palette(palette) -> dict[str, str]:
    if not isinstance(palette, dict) or len(palette) > 256:
        raise TileSetError("its palette must map at most 256 class names to colours")
    colours = {}
    for name, colour in palette.items():
        if isinstance(colour, str) and HEX_COLOUR.fullmatch(colour):
            colours[str(name)[:100]] = colour.lower()
        elif isinstance(colour, list) and len(colour) == 3 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour):
            colours[str(name)[:100]] = hex_colour(colour)
        else:
            raise TileSetError(f"its palette colour for {str(name)[:40]!r} is not #rrggbb or [r, g, b]")
    return colours
