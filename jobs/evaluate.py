"""Evaluate a generator on a split: L1, PSNR, SSIM, RMSE, pixel accuracy, palette IoU, a grid PNG.

    python jobs/evaluate.py --data s3://bucket/data --checkpoint s3://bucket/runs/recife --palette recife

With no --data and --checkpoint, evaluates the demo run on the demo data (Recife palette).
Single process, no Ray: the val split of a few hundred pairs takes about a minute on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--data", help="prepared dataset root (DATA/SPLIT/*.parquet) or raw pairs "
                        "(DATA/SPLIT/SOURCE_DIR/ + DATA/SPLIT/TARGET_DIR/, or side-by-side images); "
                        "local, file:// or s3:// (default: the demo dataset)")
    parser.add_argument("--checkpoint", help="generator export, checkpoint_* or run directory, local or s3:// "
                        "(default: the demo run)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="val")
    parser.add_argument("--palette", help="'recife' (built in) or a JSON file {\"class\": [r, g, b], ...}: "
                        "adds per-class IoU, mIoU, precision, recall and the confusion matrix, each pixel "
                        "taking its nearest palette colour "
                        "(default: the palette the model was trained with, if any)")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per generator call (default: 8)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on AMX CPUs and Ampere+ GPUs, fp16 on older GPUs, else fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--grid", default=None, help="grid PNG (source | generated | target), local or s3:// "
                        "(default: ./evaluate-SPLIT.png)")
    parser.add_argument("--grid-count", type=int, default=6, help="pairs in the grid, smallest keys first; 0: no grid")
    parser.add_argument("--paper-mode", action="store_true",
                        help="the paper's test setting: dropout on and batch norm on each image's own "
                        "statistics, one image at a time, seeded per pair")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs by key (quick checks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paper-mode dropout")
    parser.add_argument("--source-dir", default="sat", help="raw paired folders: folder name of the inputs")
    parser.add_argument("--target-dir", default="map", help="raw paired folders: folder name of the targets")
    args = parser.parse_args(argv)
    if (args.data is None) != (args.checkpoint is None):
        parser.error("give both --data and --checkpoint, or neither for the demo")
    for name in ("batch_size", "threads", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.grid_count < 0:
        parser.error("--grid-count must be 0 or more")
    if args.paper_mode and args.batch_size not in (None, 1):
        parser.error("--paper-mode runs one image at a time: leave out --batch-size")
    return args


def evaluate_options(args):
    """The parsed flags as the library's EvaluateOptions; no --data and --checkpoint: the demo's."""
    from pix2pix.evaluation import BATCH_SIZE, EvaluateOptions

    if args.data is None:
        args.data, args.checkpoint = demo_paths.DEMO_DATA, f"{demo_paths.DEMO_RUNS}/{demo_paths.DEMO_RUN_NAME}"
    grid = (args.grid or f"evaluate-{args.split}.png") if args.grid_count else None
    return EvaluateOptions(**{**cli.flag_values(args, EvaluateOptions), "batch_size": args.batch_size or BATCH_SIZE,
                              "grid": grid})


def main(argv=None) -> int:
    args = parse_args(argv)
    from pix2pix.evaluation import evaluate

    summary = evaluate(evaluate_options(args))
    cli.print_summary(summary)
    return 0


if __name__ == "__main__":
    cli.run(main)
