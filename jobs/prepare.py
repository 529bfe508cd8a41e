"""Prepare raw image pairs as Parquet shards for training and evaluation.

    python jobs/prepare.py --input s3://bucket/raw --output s3://bucket/data

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
    parser.add_argument("--output", help="prepared dataset root; shards go to OUTPUT/train/ and OUTPUT/val/ "
                        "(default: the demo dataset)")
    parser.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                        help="side-by-side: both halves in one image; paired: SOURCE_DIR/ and TARGET_DIR/ "
                        "matched by stem; auto: paired if such folders exist")
    parser.add_argument("--direction", choices=DIRECTIONS, default="AtoB",
                        help="AtoB: the left half (or SOURCE_DIR) is the model's input; BtoA: the other way")
    parser.add_argument("--source-dir", default="sat", help="paired layout: folder name of the inputs")
    parser.add_argument("--target-dir", default="map", help="paired layout: folder name of the targets")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of pairs hashed into val when the input has no train/ and val/ folders")
    parser.add_argument("--rows-per-shard", type=int, default=256, help="minimum pairs per Parquet file")
    parser.add_argument("--demo-pairs", type=int, default=300, help="pairs to generate for the demo (no --input)")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("give both --input and --output, or neither for the demo")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error("--val-fraction must be in [0, 1)")
    if args.rows_per_shard < 1:
        parser.error("--rows-per-shard must be at least 1")
    return args


def main() -> int:
    args = parse_args()
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


if __name__ == "__main__":
    cli.run(main)
