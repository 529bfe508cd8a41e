"""The map server (jobs/view.py) under hostile and careless clients, for real: a server on a
loopback port, raw sockets and HTTP requests against it. Slow clients, a foreign Host, bad
coordinates."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import numpy as np
import pytest

from pix2pix.model.palette import RECIFE_PALETTE, encode_paletted_png
from pix2pix.tiles.viewer import host_name, open_layer, serve

pytestmark = pytest.mark.reliability


@pytest.fixture
def tiles(tmp_path):
    data = encode_paletted_png(np.full((64, 64), 1, np.uint8), RECIFE_PALETTE)
    path = tmp_path / "maps" / "3" / "2" / "5.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return str(tmp_path / "maps"), data


@pytest.fixture
def server(tiles):
    """start(**serve options) -> (host, port) of a running server; stopped at the end."""
    running = []

    def start(**options):
        instance = serve({"map": open_layer("map", tiles[0])}, "127.0.0.1", 0, **options)
        threading.Thread(target=instance.serve_forever, daemon=True).start()
        running.append(instance)
        return instance.server_address[:2]

    yield start
    for instance in running:
        instance.shutdown()
        instance.server_close()


def get(address, path: str, host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_host_names_are_read_without_their_port():
    assert [host_name(value) for value in ("localhost:8000", "[::1]:80", "Example.COM", "127.0.0.1", "", None)] == \
        ["localhost", "::1", "example.com", "127.0.0.1", None, None]


def test_only_this_machines_names_and_allowed_ones_are_served(server, tiles, record):
    address = server(allow_hosts=("maps.internal",))
    port = address[1]
    assert get(address, "/map/3/2/5.png") == (200, tiles[1])
    for host in (f"localhost:{port}", "127.0.0.1:1234", f"[::1]:{port}", "maps.internal:443", "MAPS.internal"):
        assert get(address, "/map.json", host)[0] == 200, host  # behind ssh -L the port differs
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.2"):
        status, body = get(address, "/map.json", host)
        assert status == 403 and b"map" not in body, host
    assert get(address, "/map/3/2/5.png", "rebinding.attacker.example")[0] == 403
    record("view: requests with a foreign Host (DNS rebinding)", "403, nothing served; localhost at any port "
           "and --allow-host names still served", "none")


def test_bad_coordinates_are_404s_and_the_server_goes_on(server, tiles):
    address = server()
    for path in (f"/map/{'9' * 5000}/0/0.png", "/map/40/0/0.png", "/map/3/8/0.png", "/map/3/0/8.png",
                 "/map/3/-1/0.png", "/map/99999999999/0/0.png"):
        assert get(address, path)[0] == 404, path[:40]
    assert get(address, "/map/3/2/5.png") == (200, tiles[1])


def test_slow_clients_time_out_and_the_connection_cap_holds(server, tiles, record):
    address = server(timeout=1.0, max_connections=4)
    stalled = []
    for _ in range(10):  # each sends half a request line and waits
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(b"GET /map/3/2/5.png HT")
        stalled.append(sock)
    started = time.monotonic()
    try:
        # Over the cap: closed at once rather than queued behind the stalled ones.
        while True:
            try:
                status, body = get(address, "/map/3/2/5.png", timeout=5)
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                assert time.monotonic() - started < 10, "the server never came back"
                time.sleep(0.2)
        assert (status, body) == (200, tiles[1])
        waited = time.monotonic() - started
        assert waited < 5  # the stalled connections were dropped after their 1 s
        for sock in stalled:  # each of them closed by the server, none answered, none left open
            sock.settimeout(5)
            try:
                assert sock.recv(1024) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in stalled:
            sock.close()
    record("view: 10 connections that stall mid-request, cap 4, timeout 1 s",
           "those over the cap closed at once, the rest dropped after 1 s; a normal request served", "none", waited)


def test_links_to_files_outside_the_folder_are_neither_served_nor_packed(server, tiles, tmp_path, record):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    secret = tmp_path / "private.png"
    secret.write_bytes(b"\x89PNG not a tile but a file of the user's")
    folder = tmp_path / "maps"
    (folder / "2" / "0").mkdir(parents=True)
    (folder / "2" / "0" / "0.png").symlink_to(secret)
    (folder / "3" / "2" / "6.png").symlink_to(folder / "3" / "2" / "5.png")  # inside the folder: a tile
    address = server()
    assert get(address, "/map/2/0/0.png")[0] == 404
    assert get(address, "/map/3/2/6.png") == (200, tiles[1])
    packed = subprocess.run([sys.executable, "jobs/pack.py", "--input", str(folder), "--output",
                             str(tmp_path / "a.pmtiles")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    summary = json.loads(packed.stdout.strip().splitlines()[-1])
    assert (summary["tiles"], summary["links_outside_skipped"]) == (2, 1)
    assert secret.read_bytes() not in (tmp_path / "a.pmtiles").read_bytes()
    record("view/pack: a tile that is a link to a file outside the folder", "skipped and counted: 404, not "
           "packed (served and packed before)", "none")


def _archive(path, metadata) -> str:
    from pix2pix.tiles.tileset import write_pmtiles
    from pix2pix.tiles.xyz import TileKey

    with open(path, "wb") as handle:
        write_pmtiles(handle, [(TileKey(3, 2, 5), b"\x89PNG tile")], ".png", metadata, (0.0, -45.0, 45.0, 0.0),
                      (22.5, -22.5, 3))
    return str(path)


def _bomb(path, unpacked: int) -> str:
    """A PMTiles archive whose root directory is `unpacked` bytes of zeros, gzipped to ~1/1000."""
    import gzip

    from pmtiles.tile import Compression, deserialize_header, serialize_header

    header = deserialize_header(open(_archive(path, {}), "rb").read()[:127])
    root = gzip.compress(b"\0" * unpacked, compresslevel=9)
    metadata = gzip.compress(b"{}")
    header.update(root_offset=127, root_length=len(root), metadata_offset=127 + len(root),
                  metadata_length=len(metadata), leaf_directory_offset=127 + len(root) + len(metadata),
                  leaf_directory_length=0, tile_data_offset=127 + len(root) + len(metadata), tile_data_length=0,
                  internal_compression=Compression.GZIP)
    with open(path, "wb") as handle:
        handle.write(serialize_header(header) + root + metadata)
    return str(path)


HOSTILE_METADATA = {
    "extension": ({"extension": ".exe"}, "tile extension '.exe' is not one of"),
    "css url": ({"palette": {"road": "url(http://127.0.0.1:9/beacon)"}}, "palette colour for 'road' is not #rrggbb"),
    "colour range": ({"palette": {"road": [1, 2, 300]}}, "palette colour for 'road'"),
    "float zoom": ({"minzoom": 2.5}, "minzoom must be an integer"),
    "list": ([1, 2, 3], "metadata is not a JSON object"),
}


@pytest.fixture(scope="module")
def hostile_archives_served(tmp_path_factory) -> dict:
    """jobs/view.py on an archive of each metadata above, the runs all at once (each is mostly
    the job's start-up): name -> its run."""
    import subprocess
    import sys
    from functools import partial

    from tests.conftest import REPO, concurrently

    def serve(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "jobs/view.py", "--map", path, "--port", "0"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    paths = {name: _archive(tmp_path_factory.mktemp("hostile") / "city.pmtiles", metadata)
             for name, (metadata, _) in HOSTILE_METADATA.items()}
    return dict(zip(paths, concurrently(*(partial(serve, path) for path in paths.values()))))


@pytest.mark.parametrize("name", HOSTILE_METADATA)
def test_a_hostile_archive_is_refused_in_one_line_before_serving(hostile_archives_served, name):
    completed, message = hostile_archives_served[name], HOSTILE_METADATA[name][1]
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1 and len(lines) == 1 and "cannot be served" in lines[0] and message in lines[0], \
        completed.stderr[-1500:]


def test_an_archive_whose_directory_unpacks_huge_is_refused_at_once(tmp_path, record):
    from pix2pix.tiles.archive import MAX_DIRECTORY_BYTES, Archive
    from pix2pix.tiles.tileset import TileSetError

    path = _bomb(tmp_path / "bomb.pmtiles", MAX_DIRECTORY_BYTES + 2**20)
    started = time.perf_counter()
    with pytest.raises(TileSetError, match="unpacks to more than"):
        Archive(path)
    refused_in = time.perf_counter() - started
    good = Archive(_archive(tmp_path / "good.pmtiles", {"palette": {"road": [127, 127, 127]}}))
    try:
        assert good.get(3, 2, 5) == b"\x89PNG tile" and good.get(3, 2, 6) is None and good.get(40, 0, 0) is None
        assert good.metadata["palette"] == {"road": "#7f7f7f"}
        assert good.get(3, 2, 5) == b"\x89PNG tile" and good._leaf.cache_info().maxsize == 256
    finally:
        good.close()
    record("view: a .pmtiles whose root directory unpacks to 33 MiB from a few KiB; metadata with an unknown "
           "extension, a CSS url() as a colour, a list", f"refused in one line ({refused_in:.2f} s for the bomb); "
           "before, every tile request unpacked the directory again, and the metadata reached the page", "none")
