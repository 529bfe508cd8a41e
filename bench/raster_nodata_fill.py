"""What the generator should see where a raster has no valid pixel: the effect of the fill on
the valid pixels beside it. Real Recife scene crops, the west part masked; each fill's class
maps are compared with those of the unmasked crop, over valid pixels within N px of the edge.

    python bench/raster_nodata_fill.py      # ~1 min on 2 cores, no Ray

The model is tests/test_translate_job.fitted_generator (a few L1 steps on the real pairs),
with the Recife palette: a stand-in for a trained model, not one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix.model.networks import GeneratorConfig  # noqa: E402
from pix2pix.model.palette import RECIFE_PALETTE  # noqa: E402
from pix2pix.tiles.canvases import HOLE_VALUE, fill_invalid  # noqa: E402
from pix2pix.tiles.translator import Translator  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402
from tests.geo_fixtures import scene_pixels  # noqa: E402
from tests.test_translate_job import fitted_generator  # noqa: E402

SIZE, MASKED, BANDS = 256, 96, (8, 32, 96)  # canvas, masked west columns, distances from the edge


def grey(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = pixels.copy()
    out[~valid] = HOLE_VALUE
    return out


def edge(pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return fill_invalid(pixels.copy(), valid)  # the pipeline's fill


def main() -> None:
    config = GeneratorConfig(ngf=8, depth=6)
    torch.set_num_threads(2)
    translator = Translator(fitted_generator(config, SHARED_DATA / "recife"), palette=RECIFE_PALETTE)
    crops = [scene_pixels(n)[r:r + SIZE, c:c + SIZE] for n in (1, 2, 3) for r in (0, 512, 1024)
             for c in range(0, 4800 - SIZE, 4 * SIZE)]
    crops = np.ascontiguousarray(np.stack(crops))
    valid = np.ones((SIZE, SIZE), bool)
    valid[:, :MASKED] = False
    reference = translator.classes(crops)
    distance = np.arange(SIZE) - MASKED  # columns east of the edge
    print(f"{len(crops)} crops of {SIZE} px, west {MASKED} px masked; share of valid pixels whose class changes")
    for name, fill in (("grey 128", grey), ("edge-extend", edge)):
        filled = np.stack([fill(crop, valid) for crop in crops])
        changed = translator.classes(filled) != reference
        shares = [changed[:, :, (distance >= 0) & (distance < band)].mean() for band in BANDS]
        print(f"  {name:12s}" + "  ".join(f"within {band:3d} px: {share:6.1%}" for band, share in zip(BANDS, shares))
              + f"  rest: {changed[:, :, distance >= BANDS[-1]].mean():6.1%}")


if __name__ == "__main__":
    main()
