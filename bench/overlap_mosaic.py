"""A picture of the translation across two overlapping COGs, for a person to look at:

    python bench/overlap_mosaic.py --checkpoint RUN_DIR --output /tmp/overlap-mosaic.png

Recife scene 1 (tests' ASSIGNED georeference) cut into a west and an east COG that share a strip
of columns, translated together with --context 64 at the default zoom, packed into a class COG;
the picture is the source warped onto that COG's grid above the classes, with the two COGs'
edges drawn in (the overlap between the dashed lines: the west COG wins there). The picture
shows ../shared's imagery, which stays out of the repository: look at it locally.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

OVERLAP_COLUMNS = 800  # 400 m of the scene in both COGs
WIDTH = 1600  # of the picture


def run(*command: str) -> dict:
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output", default="/tmp/overlap-mosaic.png")
    args = parser.parse_args()

    import cv2
    import rasterio
    from PIL import Image
    from rasterio.warp import transform as transform_points

    from pix2pix.model.palette import NODATA_CLASS
    from pix2pix.tiles.rasters import read_window
    from tests.geo_fixtures import assigned_transform, overlapping_cogs, scene_pixels

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "cogs").mkdir()
        pixels = scene_pixels(1)
        west, east = overlapping_cogs(work / "cogs", pixels, assigned_transform(), OVERLAP_COLUMNS)
        summary = run("jobs/translate.py", "--input", str(work / "cogs"), "--output", str(work / "maps"),
                      "--checkpoint", args.checkpoint, "--context", "64")
        run("jobs/pack.py", "--input", str(work / "maps"), "--output", str(work / "city.tif"))
        with rasterio.open(work / "city.tif") as cog:
            classes = cog.read(1)
            colours = np.zeros((256, 3), np.uint8)
            for index, rgba in cog.colormap(1).items():
                colours[index] = rgba[:3]
            bounds, transform = tuple(cog.bounds), cog.transform
        height, width = classes.shape
        source, valid = read_window([str(west), str(east)], bounds, width, height)
        colours[NODATA_CLASS] = (255, 255, 255)
        rows, columns = np.nonzero(valid | (classes != NODATA_CLASS))
        top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
        crop = (slice(top, bottom), slice(left, right))
        mosaic = np.concatenate([np.where(valid[..., None], source, 255)[crop], colours[classes][crop]], axis=0)
        # the COGs' west and east edges, and the overlap's two edges, as vertical lines
        edges = []
        for path in (west, east):
            with rasterio.open(path) as dataset:
                xs, _ = transform_points(dataset.crs, "EPSG:3857", [dataset.bounds.left, dataset.bounds.right],
                                         [dataset.bounds.top] * 2)
                edges += [int(round((~transform * (x, bounds[3]))[0])) - left for x in xs]
        for column in sorted(set(edges)):
            for top in range(0, mosaic.shape[0], 24):
                mosaic[top:top + 12, max(0, column - 1):column + 1] = (0, 0, 0)
        scale = WIDTH / mosaic.shape[1]
        picture = cv2.resize(mosaic, (WIDTH, int(mosaic.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        Image.fromarray(picture).save(args.output, optimize=True)
        print(json.dumps({"output": args.output, "zoom": summary.get("zoom"), "tiles": summary["written"],
                          "empty": summary.get("empty"), "size": list(picture.shape[:2])}))


if __name__ == "__main__":
    main()
