"""Packing a city: the class COG against the PMTiles archive (seconds, bytes, peak memory, strict
validation) and the zoom pyramid the archive is built with (tiles per level, seconds).

    python bench/pack_bench.py                      # two areas, 24 x 24 and 48 x 48 tiles at zoom 17
    python bench/pack_bench.py --input s3://bucket/maps --sides 0   # a folder of your own instead

Input: real Recife class maps (../shared/data/recife/train/map, snapped to the palette) laid as
paletted z/x/y tiles, a missing tile in every 13 and a quarter of every 7th tile nodata. Each
pack is `jobs/pack.py` in its own process, timed and measured (its peak resident memory from
the kernel, wait4). Memory flat in the city's size means the peak barely moves from the small
area to the large one (4x the tiles).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mercantile  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pix2pix import storage  # noqa: E402
from pix2pix.model.palette import NODATA_CLASS, RECIFE_PALETTE, encode_paletted_png, palette_classes  # noqa: E402
from pix2pix.tiles.tileset import TILEJSON_FILE, hex_colour  # noqa: E402

MAPS = REPO.parent / "shared" / "data" / "recife" / "train" / "map"
ZOOM = 17
CORNER = mercantile.tile(-34.9, -8.05, ZOOM)


def city_folder(folder: Path, side: int) -> int:
    """side x side tiles of real class maps at ZOOM; returns the tiles written."""
    paths = sorted(MAPS.glob("*.png"))
    torch.set_num_threads(1)  # one small image a call: a pool's start costs more than the work
    written = 0
    for index in range(side * side):
        if index % 13 == 5:
            continue
        column, row = divmod(index, side)
        rgb = np.asarray(Image.open(paths[index % len(paths)]).convert("RGB"))
        classes = palette_classes(torch.from_numpy(rgb.copy()).permute(2, 0, 1), RECIFE_PALETTE)[0]
        classes = classes.numpy().astype(np.uint8)
        if index % 7 == 0:
            classes[:128, :128] = NODATA_CLASS
        path = folder / str(ZOOM) / str(CORNER.x + column) / f"{CORNER.y + row}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_paletted_png(classes, RECIFE_PALETTE))
        written += 1
    palette = {name: hex_colour(colour) for name, colour in RECIFE_PALETTE.items()}
    (folder / TILEJSON_FILE).write_text(json.dumps({"palette": palette}))
    return written


def measured(*args: str) -> dict:
    """jobs/pack.py in its own process: its summary, wall seconds and peak resident MB (wait4
    reads the peak as the process is reaped)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(REPO / "jobs" / "pack.py"), *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    if process.returncode:
        raise SystemExit(f"pack failed: {stderr.strip()[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    return {**summary, "wall_s": round(time.perf_counter() - started, 2), "peak_mb": round(usage.ru_maxrss / 1024)}


def validated(cog: str) -> list:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    with rasterio.Env(**storage.gdal_settings()):
        valid, errors, warnings = cog_validate(cog, strict=True)
    return [valid, *errors, *warnings]


def pyramid_against_overviews(folder: Path, cog: Path) -> dict[str, str]:
    """Per pyramid level: how many of its tiles equal the class COG's overview there."""
    import io

    import rasterio
    from rasterio.windows import from_bounds

    found = {}
    translated = max(int(child.name) for child in folder.iterdir() if child.name.isdigit())  # the COG's zoom
    with rasterio.open(cog) as dataset:
        for level in range(1, len(dataset.overviews(1)) + 1):
            zoom = translated - level
            paths = sorted((folder / str(zoom)).glob("*/*.png"))
            equal = 0
            with rasterio.open(cog, overview_level=level - 1) as overview:
                for path in paths:
                    box = mercantile.xy_bounds(int(path.parent.name), int(path.stem), zoom)
                    window = from_bounds(box.left, box.bottom, box.right, box.top, overview.transform)
                    pixels = overview.read(1, window=window.round_offsets().round_lengths())
                    equal += np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(path.read_bytes()))))
            found[str(zoom)] = f"{equal}/{len(paths)}"
    return found


def bench(source: str, output: Path, label: str) -> None:
    archive = measured("--input", source, "--output", str(output / f"{label}.pmtiles"), "--overwrite")
    cog = measured("--input", source, "--output", str(output / f"{label}.tif"), "--overwrite")
    print(json.dumps({
        "area": label, "translated_tiles": cog["tiles"],
        "cog": {"seconds": cog["wall_s"], "bytes": cog["cog_bytes"], "peak_mb": cog["peak_mb"],
                "pixels": f"{cog['width']}x{cog['height']}", "overview_zooms": cog["overview_zooms"],
                "strict_validation": validated(str(output / f"{label}.tif"))},
        "pmtiles": {"seconds": archive["wall_s"], "bytes": archive["archive_bytes"], "peak_mb": archive["peak_mb"],
                    "tiles": archive["tiles"], "unique_tiles": archive["unique_tiles"]},
        "cog_bytes_per_archive_byte": round(cog["cog_bytes"] / archive["archive_bytes"], 3),
        "pyramid": {"tiles_per_level": archive["pyramid_tiles"], "seconds": archive["pyramid_seconds"],
                    "equal_to_cog_overviews": pyramid_against_overviews(Path(source), output / f"{label}.tif")
                    if Path(source).is_dir() else None},
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", type=int, nargs="*", default=[24, 48], help="areas of side x side tiles to make")
    parser.add_argument("--input", help="also pack this folder of tiles (local or s3://)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for side in [side for side in args.sides if side > 0]:
            folder = work / f"city{side}"
            started = time.perf_counter()
            count = city_folder(folder, side)
            print(f"# {count} tiles made in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            bench(str(folder), work, f"{side}x{side}")
        if args.input:
            bench(args.input, work, "input")


if __name__ == "__main__":
    main()
