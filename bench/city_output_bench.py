"""City output: bytes and encode time per tile, paletted against RGB PNGs; the translation job
end to end with the model's palette (paletted tiles, the default) against --no-palette (the
generator's raw colours, what a user got by default before); packing the result into PMTiles.

    python bench/city_output_bench.py            # ~10 min on 2 cores; run it on an idle machine

Inputs: the three Recife scenes sliced into 256 px XYZ tiles (two zoom levels' worth, 756
tiles), a generator fitted for a few L1 steps towards the real maps (so its outputs are
map-like) and exported with the Recife palette, and the 100 real val maps for the encoding
figures. The translation runs are `jobs/translate.py` as a user runs it, alternated
(paletted, raw, paletted, raw) so that this VM's drift hits both.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.train_bench import cpu_flags  # noqa: E402
from bench.translate_bench import RECIFE, fitted_export, slice_scenes  # noqa: E402
from pix2pix import checkpoint, storage  # noqa: E402
from pix2pix.images import encode_image  # noqa: E402
from pix2pix.model.export import ExportInfo  # noqa: E402
from pix2pix.model.palette import (  # noqa: E402
    RECIFE_PALETTE,
    encode_paletted_png,
    palette_classes,  # noqa: E402
)


def timed(function, items, repeats: int = 3) -> tuple[float, int]:
    """Best-of-repeats ms per item, and bytes per item."""
    best, size = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        outputs = [function(item) for item in items]
        best = min(best, (time.perf_counter() - started) / len(items))
        size = sum(map(len, outputs)) / len(items)
    return round(best * 1000, 3), int(size)


def encoding_figures(export_uri: str) -> dict:
    """Snapped real val maps as RGB PNG and paletted PNG; the generator's raw outputs at PNG
    compress levels 6 (the default) and 1."""
    maps = [np.asarray(Image.open(path).convert("RGB"))
            for path in sorted(glob.glob(str(RECIFE / "val" / "map" / "*.png")))]
    classes = [palette_classes(torch.from_numpy(image).permute(2, 0, 1)[None], RECIFE_PALETTE)[0]
               .to(torch.uint8).numpy() for image in maps]
    colours = np.array(list(RECIFE_PALETTE.values()), np.uint8)
    snapped = [colours[indices] for indices in classes]
    generator, _ = checkpoint.load_generator(export_uri)
    sources = [np.asarray(Image.open(path).convert("RGB"))
               for path in sorted(glob.glob(str(RECIFE / "val" / "sat" / "*.jpg")))[:60]]
    with torch.inference_mode():
        raw = [((generator(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)[0] + 1) * 127.5)
               .round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy() for image in sources]

    def level(value):
        def encode(image):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", compress_level=value)
            return buffer.getvalue()
        return encode

    figures = {}
    for name, function, items in (
            ("snapped_rgb_png", lambda image: encode_image(image, "png"), snapped),
            ("snapped_paletted_png", lambda indices: encode_paletted_png(indices, RECIFE_PALETTE), classes),
            ("raw_rgb_png_level6", level(6), raw), ("raw_rgb_png_level1", level(1), raw)):
        ms, size = timed(function, items)
        figures[name] = {"encode_ms_per_tile": ms, "bytes_per_tile": size, "tiles": len(items)}
    return figures


def translate(tiles: Path, output: Path, model: str, *flags: str) -> dict:
    command = [sys.executable, str(REPO / "jobs" / "translate.py"), "--input", str(tiles), "--output", str(output),
               "--checkpoint", model, *flags]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"translate failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    files = [path for path in output.rglob("*.png")]
    summary["bytes_per_tile"] = int(sum(path.stat().st_size for path in files) / len(files))
    summary["progress_lines"] = sum(line.startswith("translate: ") for line in done.stdout.splitlines())
    return {key: summary[key] for key in ("written", "seconds", "tiles_per_s", "steady_tiles_per_s", "startup_s",
                                          "bytes_per_tile", "palette", "progress_lines")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="L1 steps fitting the generator")
    args = parser.parse_args()
    if not (RECIFE / "scenes").is_dir():
        raise SystemExit(f"needs the Recife data in {RECIFE}")
    print(json.dumps({"cpu_flags": cpu_flags(), "cores": os.cpu_count()}), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        count = slice_scenes(root / "sat", copies=2)
        fitted = fitted_export(root / "fitted", ngf=32, depth=8, steps=args.steps)
        generator, info = checkpoint.load_generator(fitted)
        model = str(root / "model")
        checkpoint.export_generator(generator, ExportInfo(info.generator, info.image_size,
                                                                     palette=RECIFE_PALETTE), storage.resolve(model))
        print(json.dumps({"encoding": encoding_figures(model)}), flush=True)
        runs = {"paletted": [], "raw": []}
        for attempt in range(2):
            for name, flags in (("paletted", ()), ("raw", ("--no-palette",))):
                output = root / f"{name}-{attempt}"
                runs[name].append(translate(root / "sat", output, model, *flags))
                print(json.dumps({"translate": name, "tiles": count, **runs[name][-1]}), flush=True)
        for name, results in runs.items():
            steady = [result["steady_tiles_per_s"] for result in results if result["steady_tiles_per_s"]]
            mean = round(float(np.mean([result["tiles_per_s"] for result in results])), 2)
            print(json.dumps({"translate_mean": name, "tiles_per_s": mean,
                              "steady_tiles_per_s": round(float(np.mean(steady)), 2) if steady else None,
                              "bytes_per_tile": results[-1]["bytes_per_tile"]}), flush=True)
        started = time.perf_counter()
        packed = subprocess.run([sys.executable, str(REPO / "jobs" / "pack.py"), "--input", str(root / "paletted-1"),
                                 "--output", str(root / "city.pmtiles")], capture_output=True, text=True, cwd=REPO)
        if packed.returncode:
            raise SystemExit(f"pack failed: {packed.stderr}")
        summary = json.loads(packed.stdout.strip().splitlines()[-1])
        summary["command_seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps({"pack": {key: summary[key] for key in ("tiles", "unique_tiles", "tile_bytes", "archive_bytes",
                                                                 "seconds", "tiles_per_s", "command_seconds")}}),
              flush=True)


if __name__ == "__main__":
    main()
