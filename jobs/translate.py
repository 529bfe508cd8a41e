"""Translate satellite tiles into map tiles with a trained generator, bucket to bucket.

    python jobs/translate.py --input s3://bucket/sat --output s3://bucket/maps --checkpoint s3://bucket/runs/city

Keys are kept: INPUT/17/38591/49283.jpg becomes OUTPUT/17/38591/49283.png. Tiles already in
OUTPUT are skipped, so a stopped run is resumed by running it again. Failed tiles are listed
in OUTPUT/_failures/*.parquet. Ends with one JSON line: tiles, written, skipped, failed,
seconds, tiles_per_s (written tiles per second), then details.

--input may also be georeferenced rasters (GeoTIFF/COG, RGB uint8, RGBA or RGB with an internal
mask): a .tif/.tiff file, a .txt list of raster URIs (one a line, local or s3://), or a folder or
prefix whose top level holds .tif/.tiff files, the first with a CRS (a folder of z/x/y tiles
stays tile input). The Web Mercator XYZ tiles covering their footprint at --zoom are written as
OUTPUT/z/x/y.png; where rasters overlap, the first wins (a folder's in key order, a list's in
its order). Pixels outside every raster or masked are nodata: transparent (PNG, WebP), black
(JPEG, which has no alpha), or the palette's nodata index; a tile with none valid is not
written (counted as "empty").
With no flags, translates the demo tiles with the demo run's latest checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths  # noqa: E402
from pix2pix.errors import JobError  # noqa: E402
from pix2pix.tiles.canvases import ON_SIZE  # noqa: E402
from pix2pix.tiles.keys import OUTPUT_EXTENSIONS  # noqa: E402

DEMO_INPUT = os.path.join(demo_paths.DEMO_TILES, "sat")
DEMO_CHECKPOINT = os.path.join(demo_paths.DEMO_RUNS, demo_paths.DEMO_RUN_NAME)
DEMO_PREVIEW = demo_paths.DEMO_TRANSLATED + "-preview.png"


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_argument_group("what to translate")
    where.add_argument("--input", help="prefix holding the source tiles: local folder, file:// or s3:// URI; or "
                       "rasters: a .tif/.tiff file, a .txt list of them, or a folder or prefix of them")
    where.add_argument("--output", help="prefix the translated tiles are written under, same relative keys")
    where.add_argument("--checkpoint", help="generator export, Ray Train checkpoint dir, or run dir "
                       "(its latest complete checkpoint), local or s3://")
    where.add_argument("--manifest", help="Parquet or CSV file (or folder) with a 'key' column of keys "
                       "relative to --input: translate these instead of listing the input")
    where.add_argument("--bbox", help="W,S,E,N in degrees: only the XYZ tiles INPUT/ZOOM/x/y.* covering this "
                       "box (needs --zoom), or the part of the rasters' footprint in it; write --bbox=W,S,E,N "
                       "when W starts with '-'")
    where.add_argument("--zoom", type=int, help="zoom level of --bbox; with rasters, of the tiles written "
                       "(default: the one whose pixels are closest to the finest raster's, said on stderr)")
    where.add_argument("--max-tiles", type=int, default=1_000_000,
                       help="with rasters: refuse a run that plans more tiles than this")
    how = parser.add_argument_group("how")
    how.add_argument("--format", dest="image_format", choices=tuple(OUTPUT_EXTENSIONS), default="png",
                     help="output encoding")
    how.add_argument("--image-size", type=int, help="model input size in pixels (default: the checkpoint's)")
    how.add_argument("--on-size", choices=ON_SIZE, default="resize",
                     help="a tile of another size is resized, or recorded as failed")
    how.add_argument("--context", type=int, default=0, metavar="PIXELS",
                     help="translate neighbouring XYZ tiles together in blocks with at least this many pixels "
                     "of their neighbours around them, so the mosaic has no seams (0: each tile alone)")
    how.add_argument("--stochastic", action="store_true",
                     help="keep dropout on, seeded per tile from its key and --seed (reproducible)")
    how.add_argument("--seed", type=int, default=0, help="seed for --stochastic")
    palette = how.add_mutually_exclusive_group()
    palette.add_argument("--palette", help="'recife' (built in) or a JSON file {\"class\": [r, g, b], ...}: every "
                         "output pixel becomes its nearest palette colour, so maps carry exact class colours, "
                         "written as 8-bit paletted PNGs (default: the palette the model was trained with, if any; "
                         "PNG only)")
    palette.add_argument("--no-palette", action="store_true",
                         help="write the generator's raw colours, even if the model was trained with a palette")
    how.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                     help="auto: bf16 on CPUs with AMX/AVX512-BF16 and on GPUs that have it, else fp32 "
                     "(CPU) or fp16 (GPU)")
    run = parser.add_argument_group("resources")
    run.add_argument("--threads", type=int, help="torch threads per generator actor (default: 1 on CPU, with one "
                     "actor per CPU; 2 on GPU)")
    run.add_argument("--batch-size", type=int, help="tiles per call to a generator actor (default: 8 on CPU, "
                     "64 on GPU), rounded up to whole micro-batches; outputs do not depend on it: the generator "
                     "always runs micro-batches of 8 (CPU) or 16 (GPU) tiles, padded")
    run.add_argument("--actors", type=int, help="fixed number of generator actors (same as --min-actors = "
                     "--max-actors)")
    run.add_argument("--min-actors", type=int, help="smallest generator actor pool (default 1)")
    run.add_argument("--max-actors", type=int, help="largest generator actor pool (default: one per GPU, or "
                     "cluster CPUs / --threads)")
    device = run.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="gpu", action="store_const", const=True,
                        help="generator actors on GPUs, one each (default: when the cluster has GPUs)")
    device.add_argument("--cpu", dest="gpu", action="store_const", const=False, help="generator actors on CPUs")
    out = parser.add_argument_group("output")
    out.add_argument("--overwrite", action="store_true", help="translate tiles whose output already exists")
    out.add_argument("--max-failed-fraction", type=float, default=0.05,
                     help="exit with an error when more than this share of the tiles failed")
    out.add_argument("--preview", metavar="PATH", help="also write a PNG of a region, source | translation "
                     "side by side, to this local path or URI")
    out.add_argument("--verbose", action="store_true", help="show Ray's own logs and progress bars")
    args = parser.parse_args(argv)

    named = [args.input, args.output, args.checkpoint]
    if any(named) and not all(named):
        parser.error("give --input, --output and --checkpoint together, or no flags for the demo")
    if not any(named) and (args.manifest or args.bbox):
        parser.error("--manifest and --bbox need --input, --output and --checkpoint")
    if args.bbox and args.manifest:
        parser.error("give --bbox or --manifest, not both")
    if args.bbox:
        from pix2pix.tiles.xyz import parse_bbox

        try:
            args.bbox = parse_bbox(args.bbox)
        except JobError as error:
            parser.error(str(error))
    if args.zoom is not None:
        from pix2pix.tiles.xyz import MAX_ZOOM

        if not 0 <= args.zoom <= MAX_ZOOM:
            parser.error(f"--zoom must be in 0..{MAX_ZOOM}")
    if args.actors is not None:
        if args.min_actors is not None or args.max_actors is not None:
            parser.error("give --actors or --min-actors/--max-actors, not both")
        args.min_actors = args.max_actors = args.actors
    for name in ("image_size", "threads", "batch_size", "min_actors", "max_actors", "max_tiles"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.min_actors and args.max_actors and args.min_actors > args.max_actors:
        parser.error("--min-actors must not exceed --max-actors")
    if args.palette and args.image_format != "png":
        parser.error("--palette needs --format png: lossy encodings blur the exact colours")
    if args.context < 0:
        parser.error("--context must be >= 0")
    if not 0.0 <= args.max_failed_fraction <= 1.0:
        parser.error("--max-failed-fraction must be in [0, 1]")
    return args


def translate_options(args):
    """The parsed flags as the library's TranslateOptions (--actors is min = max already; the
    failure threshold is the job's own)."""
    from pix2pix.distributed.translate import TranslateOptions

    return TranslateOptions(**cli.flag_values(args, TranslateOptions))


def main() -> int:
    args = parse_args()
    if args.input is None:
        args.input, args.output, args.checkpoint = DEMO_INPUT, demo_paths.DEMO_TRANSLATED, DEMO_CHECKPOINT
        args.preview = args.preview or DEMO_PREVIEW
        if not os.path.isdir(args.input):
            raise cli.JobError(f"no demo tiles in {args.input}: run `python jobs/prepare.py` first")
        if not os.path.isdir(DEMO_CHECKPOINT):
            raise cli.JobError(f"no demo model in {DEMO_CHECKPOINT}: run `python jobs/train.py` first")

    from pix2pix.distributed import session
    from pix2pix.distributed.translate import check_run, translate

    options = translate_options(args)
    run = check_run(options)
    session.init(args.verbose)
    summary = translate(options, run)
    cli.print_summary(summary)
    if summary["failed"] and summary["failed_fraction"] > args.max_failed_fraction:
        raise cli.JobError(
            f"{summary['failed']} of {summary['tiles']} tiles failed, more than --max-failed-fraction "
            f"{args.max_failed_fraction}; reasons in {summary['failures']}"
        )
    return 0


if __name__ == "__main__":
    cli.run(main)
