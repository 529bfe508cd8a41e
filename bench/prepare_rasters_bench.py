"""Preparing training chips from rasters: chips/s of the Ray Data job against a bare serial loop.

    .venv/bin/python bench/prepare_rasters_bench.py              # 16x16 pairs: 256 chips, ~2-4 min on 2 cores
    .venv/bin/python bench/prepare_rasters_bench.py --grid 24 --repeats 3

The scene is a mosaic of --grid x --grid real Recife train pairs (../shared/data/recife, 256 px)
with tests/geo_fixtures.py's assigned georeference: an RGB GeoTIFF, and its maps as a label
raster on the same grid and warped (nearest) to EPSG:4326, which the job reads back through a
warped VRT. The bare loop is plan_chips, then cut_chips and the shard row (two PNG encodings)
of every chip in this process, one after another; the job is prepare_rasters on a local Ray
instance started beforehand (Ray's start-up is reported apart), its first run a warm-up.
Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.warp import Resampling, calculate_default_transform, reproject  # noqa: E402

from pix2pix.distributed.prepare_rasters import chip_row, prepare_rasters  # noqa: E402
from pix2pix.tiles.chips import cut_chips, plan_chips  # noqa: E402
from tests.geo_fixtures import ASSIGNED_CRS, assigned_transform, write_geotiff  # noqa: E402

RECIFE = REPO.parent / "shared" / "data" / "recife"
SIZE = 256


def mosaics(grid: int) -> tuple[np.ndarray, np.ndarray]:
    stems = sorted(path.stem for path in (RECIFE / "train" / "sat").glob("*.jpg"))[:grid * grid]
    if len(stems) < grid * grid:
        raise SystemExit(f"--grid {grid} needs {grid * grid} train pairs, found {len(stems)}")
    sat, maps = (np.zeros((grid * SIZE, grid * SIZE, 3), np.uint8) for _ in range(2))
    for index, stem in enumerate(stems):
        rows = np.s_[index // grid * SIZE:(index // grid + 1) * SIZE, index % grid * SIZE:(index % grid + 1) * SIZE]
        sat[rows] = np.asarray(Image.open(RECIFE / "train" / "sat" / f"{stem}.jpg").convert("RGB"))
        maps[rows] = np.asarray(Image.open(RECIFE / "train" / "map" / f"{stem}.png").convert("RGB"))
    return sat, maps


def write_warped(path: Path, maps: np.ndarray, crs: str) -> Path:
    height, width = maps.shape[:2]
    left, top = assigned_transform() @ (0, 0)
    right, bottom = assigned_transform() @ (width, height)
    transform, out_width, out_height = calculate_default_transform(ASSIGNED_CRS, crs, width, height,
                                                                   left, bottom, right, top)
    bands = np.concatenate([np.moveaxis(maps, -1, 0), np.full((1, height, width), 255, np.uint8)])
    out = np.zeros((4, out_height, out_width), np.uint8)
    reproject(bands, out, src_transform=assigned_transform(), src_crs=ASSIGNED_CRS, dst_transform=transform,
              dst_crs=crs, resampling=Resampling.nearest)
    return write_geotiff(path, np.moveaxis(out[:3], 0, -1), transform, crs=crs, valid=out[3] > 0)


def bare(image: Path, labels: Path) -> float:
    """Chips/s of planning, cutting and encoding every chip in this process."""
    started = time.perf_counter()
    plan = plan_chips([str(image)], [str(labels)], SIZE, SIZE)
    for group in plan.groups:
        for chip in cut_chips(group, SIZE, SIZE):
            chip_row(chip, 0.1, "AtoB")
    return plan.chips / (time.perf_counter() - started)


def job(image: Path, labels: Path, output: Path) -> float:
    started = time.perf_counter()
    plan = plan_chips([str(image)], [str(labels)], SIZE, SIZE)
    summary = prepare_rasters(plan, str(output))
    assert sum(summary["pairs"].values()) == plan.chips, summary
    return plan.chips / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=16, help="pairs per side of the mosaic")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs of each")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prepare-rasters-bench-"))
    try:
        sat, maps = mosaics(args.grid)
        image = write_geotiff(folder / "scene.tif", sat, assigned_transform())
        labels = {"labels on the image's grid": write_geotiff(folder / "labels.tif", maps, assigned_transform()),
                  "labels in EPSG:4326 (warped VRT)": write_warped(folder / "labels_4326.tif", maps, "EPSG:4326")}
        chips = args.grid * args.grid
        print(f"scene {sat.shape[1]}x{sat.shape[0]} px, {chips} chips of {SIZE} px")
        results = {name: [bare(image, path) for _ in range(args.repeats)] for name, path in labels.items()}

        from pix2pix.distributed import session

        started = time.perf_counter()
        session.init()
        print(f"Ray start-up: {time.perf_counter() - started:.1f} s")
        job(image, labels["labels on the image's grid"], folder / "warm-up")
        for name, path in labels.items():
            results[name] += [job(image, path, folder / f"data-{index}") for index in range(args.repeats)]
        print("| labels | bare loop, chips/s | job, chips/s | job vs bare |\n|---|---|---|---|")
        for name, rates in results.items():
            loop, ray_job = np.mean(rates[:args.repeats]), np.mean(rates[args.repeats:])
            print(f"| {name} | {loop:.1f} ({', '.join(f'{r:.1f}' for r in rates[:args.repeats])}) | "
                  f"{ray_job:.1f} ({', '.join(f'{r:.1f}' for r in rates[args.repeats:])}) | {ray_job / loop:.2f}x |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
