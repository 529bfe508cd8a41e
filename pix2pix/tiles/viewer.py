"""The map page's server: the viewer (viewer.html), a TileJSON per layer and the tiles, from a
folder of XYZ tiles (local or s3://) or a local PMTiles archive. Serving the archive's tiles
from here means the browser needs no HTTP Range requests and no PMTiles library. No Ray."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pix2pix import storage
from pix2pix.tiles.tileset import Archive, TileSetError, folder_palette, scan, tilejson
from pix2pix.tiles.xyz import TileKey

PAGE = Path(__file__).with_name("viewer.html")
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_TILE_PATH = re.compile(r"^/(map|satellite)/(\d+)/(\d+)/(\d+)\.\w+$")


@dataclass
class Layer:
    """One layer's tiles and its TileJSON (with the tile URL this server answers)."""

    name: str
    spec: dict
    extension: str
    get: object  # (TileKey) -> bytes | None


def folder_layer(name: str, uri: str) -> Layer:
    root = storage.resolve(uri)
    if not storage.is_dir(root):
        raise TileSetError(f"not a folder of tiles: {uri}")
    tiles = scan(root)
    spec = tilejson(tiles, f"{name}/{{z}}/{{x}}/{{y}}{tiles.extension}", folder_palette(root), name)

    def get(tile: TileKey) -> bytes | None:
        return tiles.read(tile) if tile in tiles.keys else None

    return Layer(name, spec, tiles.extension, get)


def archive_layer(name: str, path: str) -> Layer:
    archive = Archive(path)
    metadata = archive.metadata
    extension = metadata.get("extension", ".png")
    spec = {key: value for key, value in metadata.items() if key != "extension"}
    spec["tiles"] = [f"{name}/{{z}}/{{x}}/{{y}}{extension}"]

    def get(tile: TileKey) -> bytes | None:
        return archive.get(tile.z, tile.x, tile.y)

    return Layer(name, spec, extension, get)


def open_layer(name: str, uri: str) -> Layer:
    return archive_layer(name, uri) if uri.endswith(".pmtiles") else folder_layer(name, uri)


def serve(layers: dict[str, Layer], host: str, port: int) -> ThreadingHTTPServer:
    """A server (not yet serving: call serve_forever) for the page, map.json, satellite.json and
    the tiles."""
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # one line per tile otherwise
            pass

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", page)
            if path.endswith(".json") and path[1:-5] in layers:
                return self._send(200, "application/json", json.dumps(layers[path[1:-5]].spec).encode())
            match = _TILE_PATH.match(path)
            if match and match[1] in layers:
                layer = layers[match[1]]
                try:
                    data = layer.get(TileKey(int(match[2]), int(match[3]), int(match[4])))
                except (OSError, FileNotFoundError):
                    data = None
                if data is not None:
                    return self._send(200, CONTENT_TYPES[layer.extension], data)
            self._send(404, "text/plain", b"not found")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
