"""What reading georeferenced rasters costs, against pre-cut XYZ tiles of the same area (issue
"Georeferenced imagery in"). Run on an idle machine:

    python bench/raster_bench.py            # ~5 min on 2 cores

The three Recife scenes in ../shared as COGs with the tests' ASSIGNED georeference (EPSG:31985,
0.5 m; tests/geo_fixtures.py), each --copies times side by side further south (8: 24 COGs),
and the XYZ tiles covering them at the default zoom (the one closest to 0.5 m) cut from them
as JPEG (quality 95). Reported:
- CPU ms per tile, one process, one thread: a warped read of the tile from the local COGs; the
  same from the COGs on a loopback S3 server (moto, its own process: its CPU is not counted);
  reading + decoding the pre-cut JPEG tile;
- jobs/translate.py, default flags, with a width-1 export (the model's cost taken out, see
  bench/ceiling_bench.py) or a real model (--checkpoint): tiles/s over the steady window and CPU
  ms per tile over all its processes, from the COGs against from the JPEG tiles.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ceiling_bench import cpu_flags, run_job, width1_export  # noqa: E402

SCENE_GAP_ROWS = 400  # scenes of the same region, not adjacent: a strip of no data between them


def make_cogs(folder: Path, copies: int) -> list[Path]:
    from tests.geo_fixtures import assigned_transform, scene_pixels, write_cog

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for copy in range(copies):
        for number in (1, 2, 3):
            pixels = scene_pixels(number)
            height, width = pixels.shape[:2]
            row = ((number - 1) + 3 * copy) * (height + SCENE_GAP_ROWS)
            paths.append(write_cog(folder / f"scene{copy:02d}_{number}.tif", pixels, assigned_transform(0, row)))
    return paths


def covering_tiles(cogs: list[Path]) -> tuple[int, list]:
    import mercantile

    from pix2pix.tiles.rasters import default_zoom, open_sources

    sources = open_sources([str(path) for path in cogs])
    zoom = default_zoom(sources, 256, 24)
    tiles = sorted({tile for source in sources for tile in mercantile.tiles(*source.lonlat, zoom)})
    return zoom, tiles


def read_ms_per_tile(uris: list[str], tiles: list) -> tuple[float, list]:
    import mercantile

    from pix2pix.tiles.rasters import intersecting, open_sources, read_window

    sources = open_sources(uris)
    images = []
    started = time.process_time()
    for tile in tiles:
        bounds = tuple(mercantile.xy_bounds(tile))
        pixels, valid = read_window([source.uri for source in intersecting(sources, bounds)], bounds, 256, 256)
        images.append((tile, pixels, valid))
    return 1000 * (time.process_time() - started) / len(tiles), images


def write_jpeg_tiles(images: list, root: Path) -> int:
    from pix2pix.images import encode_image

    count = 0
    for tile, pixels, valid in images:
        if not valid.any():
            continue
        path = root / str(tile.z) / str(tile.x) / f"{tile.y}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(pixels, "jpeg", quality=95))
        count += 1
    return count


def decode_ms_per_tile(root: Path) -> float:
    from pix2pix.images import decode_image

    paths = sorted(root.rglob("*.jpg"))
    started = time.process_time()
    for path in paths:
        decode_image(path.read_bytes())
    return 1000 * (time.process_time() - started) / len(paths)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3_read_ms_per_tile(cogs: list[Path], tiles: list) -> float:
    """The same reads from a loopback S3 server in its own process."""
    import boto3

    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    try:
        client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        for _ in range(50):
            try:
                client.create_bucket(Bucket="scenes")
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        for path in cogs:
            client.upload_file(str(path), "scenes", path.name)
        ms, _ = read_ms_per_tile([f"s3://scenes/{path.name}" for path in cogs], tiles)
        return ms
    finally:
        server.terminate()
        server.wait()
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/pix2pix-raster-bench", help="scratch folder")
    parser.add_argument("--copies", type=int, default=8, help="copies of the three scenes")
    parser.add_argument("--skip-jobs", action="store_true", help="only the one-process read costs")
    parser.add_argument("--checkpoint", help="run the jobs with this model instead of the width-1 export")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    cogs = make_cogs(work / "cogs", args.copies)
    zoom, tiles = covering_tiles(cogs)
    local_ms, images = read_ms_per_tile([str(path) for path in cogs], tiles)
    jpeg_count = write_jpeg_tiles(images, work / "jpeg")
    print(f"raster bench {cpu_flags()}: {len(cogs)} COGs, zoom {zoom}, {len(tiles)} tiles covering them "
          f"({jpeg_count} with data)")
    print(f"  CPU ms per tile, one thread: warped read from local COGs {local_ms:.2f}; "
          f"from loopback S3 {s3_read_ms_per_tile(cogs, tiles):.2f}; "
          f"pre-cut JPEG read + decode {decode_ms_per_tile(work / 'jpeg'):.2f}")
    if args.skip_jobs:
        return
    export = args.checkpoint or width1_export(work / "width1")
    for name, source in (("COGs", work / "cogs"), ("JPEG tiles", work / "jpeg")):
        job = run_job(REPO, source, work / f"out-{name.split()[0]}", export, jpeg_count)
        print(f"  jobs/translate.py from {name}: {job.get('tiles_per_s', 0):.1f} tiles/s steady, "
              f"{job['run_ms_per_tile']:.2f} CPU ms per tile (all processes), {job['seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
