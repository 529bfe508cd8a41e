"""Prepare raw image pairs, or chips of georeferenced rasters, as Parquet shards for training.

    python jobs/prepare.py --input s3://bucket/raw --output s3://bucket/data
    python jobs/prepare.py --image scene.tif --labels labels.tif --output s3://bucket/data

With --image and --labels (each files or prefixes), the label rasters are read on each image's
grid (warped by nearest neighbour when their CRS or resolution differ) and both are cut into
--image-size chips every --stride pixels; chips mostly without data are skipped and counted.
Keys name each chip's image and pixel window: <image>/r<row>_c<column>.
With no flags, generates the demo pairs (if needed) and prepares them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli  # noqa: E402
from pix2pix.training.pairs import DIRECTIONS, LAYOUTS  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--input", help="raw pairs: local folder, file:// or s3:// URI "
                        "(default: the generated demo pairs)")
    parser.add_argument("--image", nargs="+", help="georeferenced image rasters (RGB uint8): files or prefixes, "
                        "local or s3:// (instead of --input)")
    parser.add_argument("--labels", nargs="+", help="with --image: label rasters (class indices with a colour "
                        "table, or RGB maps): files or prefixes")
    parser.add_argument("--image-size", type=int, default=256, help="with --image: chip size in pixels")
    parser.add_argument("--stride", type=int, help="with --image: pixels between chips (default: --image-size)")
    parser.add_argument("--output", help="prepared dataset root; shards go to OUTPUT/train/ and OUTPUT/val/ "
                        "(default: the demo dataset)")
    parser.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                        help="side-by-side: both halves in one image; paired: SOURCE_DIR/ and TARGET_DIR/ "
                        "matched by stem; auto: paired if such folders exist")
    parser.add_argument("--direction", choices=DIRECTIONS, default="AtoB",
                        help="AtoB: the left half (or SOURCE_DIR, or --image) is the model's input; "
                        "BtoA: the other way")
    parser.add_argument("--source-dir", default="sat", help="paired layout: folder name of the inputs")
    parser.add_argument("--target-dir", default="map", help="paired layout: folder name of the targets")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of pairs hashed into val when the input has no train/ and val/ folders")
    parser.add_argument("--rows-per-shard", type=int, default=256, help="minimum pairs per Parquet file")
    parser.add_argument("--demo-pairs", type=int, default=300, help="pairs to generate for the demo (no --input)")
    args = parser.parse_args(argv)
    if args.image is not None or args.labels is not None:
        if args.input is not None:
            parser.error("give --input (image pairs) or --image and --labels (rasters), not both")
        if args.image is None or args.labels is None or args.output is None:
            parser.error("give --image, --labels and --output together")
        if args.image_size < 1 or (args.stride is not None and args.stride < 1):
            parser.error("--image-size and --stride must be at least 1")
    elif (args.input is None) != (args.output is None):
        parser.error("give both --input and --output, or neither for the demo")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    if args.rows_per_shard < 1:
        parser.error("--rows-per-shard must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    if args.image is not None:
        return prepare_rasters(args)
    from pix2pix.distributed import prepare, session

    if args.input is None:
        session.init()
        cli.print_summary(prepare.prepare_demo(args.demo_pairs))
        return 0
    prepare.check_locations(args.input, args.output)  # before starting Ray: a wrong URI fails fast
    session.init()
    summary = prepare.prepare(args.input, args.output, args.layout, args.source_dir, args.target_dir,
                              args.direction, args.val_fraction, args.rows_per_shard)
    cli.print_summary(summary)
    return 0


def prepare_rasters(args) -> int:
    from pix2pix import storage
    from pix2pix.tiles.chips import plan_chips

    # Every input checked before Ray is imported or started: bad input fails fast, nothing written.
    storage.resolve(args.output)
    plan = plan_chips(args.image, args.labels, args.image_size, args.stride or args.image_size)
    from pix2pix.distributed import prepare_rasters, session

    session.init()
    cli.print_summary(prepare_rasters.prepare_rasters(plan, args.output, args.direction, args.val_fraction,
                                                      args.rows_per_shard))
    return 0


if __name__ == "__main__":
    cli.run(main)
