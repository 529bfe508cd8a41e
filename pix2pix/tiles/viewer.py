"""The map page's server: the viewer (viewer.html), a TileJSON per layer and the tiles, from a
folder of XYZ tiles (local or s3://) or a local PMTiles archive. Serving the archive's tiles
from here means the browser needs no HTTP Range requests and no PMTiles library. No Ray.

A local viewer, not an internet-facing tile server: it answers only requests whose Host is
this machine or a name the user allows (a web page cannot reach it through DNS rebinding),
gives each connection a time limit and serves a bounded number of connections at once.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pix2pix import storage
from pix2pix.tiles.archive import Archive
from pix2pix.tiles.tileset import TileSetError, folder_palette, scan, tilejson
from pix2pix.tiles.xyz import TileKey, in_grid

PAGE = Path(__file__).with_name("viewer.html")
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
_TILE_PATH = re.compile(r"^/(map|satellite)/(\d{1,10})/(\d{1,10})/(\d{1,10})\.\w+$")
TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed
MAX_CONNECTIONS = 64  # served at once; more are closed at once rather than queued
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class Layer:
    """One layer's tiles and its TileJSON (with the tile URL this server answers)."""

    name: str
    spec: dict
    extension: str
    get: object  # (TileKey) -> bytes | None
    links_outside: int = 0  # links to files outside the folder, skipped (tileset.scan)


def folder_layer(name: str, uri: str) -> Layer:
    root = storage.resolve(uri)
    if not storage.is_dir(root):
        raise TileSetError(f"not a folder of tiles: {uri}")
    tiles = scan(root)
    spec = tilejson(tiles, f"{name}/{{z}}/{{x}}/{{y}}{tiles.extension}", folder_palette(root), name)

    def get(tile: TileKey) -> bytes | None:
        return tiles.read(tile) if tile in tiles.keys else None

    return Layer(name, spec, tiles.extension, get, tiles.links_outside)


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


def host_name(header: str | None) -> str | None:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1"), lowercased."""
    if not header:
        return None
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.index("]")] if "]" in header else None
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_names(host: str, allow: tuple[str, ...] = ()) -> frozenset[str]:
    """This machine's names, the bound address unless it is a wildcard, and the names allowed."""
    names = {*LOCAL_NAMES, *(name.lower() for name in allow)}
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            names.add(host)
    except ValueError:  # a name, not an address
        names.add(host.lower())
    return frozenset(names)


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once: one over the limit is
    closed at once (the client sees a reset, and may retry) rather than queued."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(layers: dict[str, Layer], host: str, port: int, allow_hosts: tuple[str, ...] = (),
          timeout: float = TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """A server (not yet serving: call serve_forever) for the page, map.json, satellite.json and
    the tiles. ``allow_hosts``: names besides this machine's that may appear in a request's Host
    (the name a proxy or a tunnel forwards)."""
    page = PAGE.read_bytes()
    names = allowed_names(host, allow_hosts)

    class Handler(BaseHTTPRequestHandler):
        def setup(self):
            self.timeout = timeout  # per connection: a client that stalls mid-request is dropped
            super().setup()

        def log_message(self, *args):  # one line per tile otherwise
            pass

        def do_GET(self):
            if host_name(self.headers.get("Host")) not in names:
                return self._send(403, "text/plain", b"this host name is not served here (see --allow-host)")
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._send(200, "text/html; charset=utf-8", page)
            if path.endswith(".json") and path[1:-5] in layers:
                return self._send(200, "application/json", json.dumps(layers[path[1:-5]].spec).encode())
            match = _TILE_PATH.match(path)
            tile = TileKey(*map(int, match.group(2, 3, 4))) if match else None
            if tile is not None and match[1] in layers and in_grid(tile.z, tile.x, tile.y):
                layer = layers[match[1]]
                try:
                    data = layer.get(tile)
                except OSError:
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

    return BoundedServer((host, port), Handler, max_connections)
