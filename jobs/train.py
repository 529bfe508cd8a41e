"""Train pix2pix with DDP on Ray Train, streaming prepared Parquet shards.

    ray job submit --working-dir . -- python jobs/train.py --data s3://bucket/data --storage s3://bucket/runs

With no flags, trains a small model on the demo data (prepared first if needed).
Re-running with the same --storage and --name resumes from the latest checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths, storage  # noqa: E402
from pix2pix.errors import ConfigError  # noqa: E402
from pix2pix.palette_files import load_palette  # noqa: E402
from pix2pix.training.budget import DECAY_FRACTION, Budget  # noqa: E402
from pix2pix.training.step import RECIPES, TrainConfig, default_recipe, recipe_config  # noqa: E402

# A Recife epoch is ~20 s on one GPU and a checkpoint of the paper's widths ~0.9 GB (G, D, Adam
# states, export): every epoch would spend a fifth of the run writing checkpoints.
GPU_EVERY = 5
GPU_CHECKPOINT_MINUTES = 10.0


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
    where = parser.add_argument_group("data and storage")
    where.add_argument("--data", help="prepared dataset root (DATA/train/*.parquet, DATA/val/*.parquet); "
                       "local, file:// or s3:// (default: the demo dataset, prepared if missing)")
    where.add_argument("--storage", help="Ray Train storage path for checkpoints, local or s3:// "
                       "(default: the demo runs folder)")
    where.add_argument("--name", help="run name under --storage; the same name resumes (default: demo)")
    scale = parser.add_argument_group("scaling")
    scale.add_argument("--num-workers", type=int, default=None,
                       help="DDP workers (default: 1 per GPU of the node with the most GPUs, else 1)")
    device = scale.add_mutually_exclusive_group()
    device.add_argument("--gpu", dest="gpu", action="store_true", default=None,
                        help="train on GPUs (nccl); needed on an autoscaling cluster that starts with no GPU node")
    device.add_argument("--cpu", dest="gpu", action="store_false", help="train on CPUs (gloo)")
    scale.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs reserved per worker (default: on CPUs the nodes' CPUs shared among the workers, "
                       "since each worker decodes its own data; on GPUs each GPU's share of its node's CPUs, less one)")
    scale.add_argument("--threads", type=int, default=None,
                       help="torch threads per worker (default: its whole CPUs; 1 on GPU)")
    scale.add_argument("--max-failures", type=int, default=3,
                       help="worker-group restarts from the latest checkpoint before the run fails")
    recipe = parser.add_argument_group("recipe (the paper's, with instance norm)")
    recipe.add_argument("--recipe", choices=("auto", *RECIPES), default="auto",
                        help="widths and learning rate: paper (ngf = ndf = 64, lr 2e-4) or compact (ngf 32, ndf 16, "
                        "lr 4e-4: better on a CPU budget, see bench/README.md, Quality); auto: compact when "
                        "training on CPUs, paper on GPUs. --ngf, --ndf and --lr override it")
    cli.add_field_flags(recipe, TrainConfig)
    budget = parser.add_argument_group("budget (replaces --epochs/--epochs-decay)")
    budget.add_argument("--max-minutes", type=float, default=None,
                        help="train for this long, counted from the job's start (start-up, validation and "
                        "checkpoints included): the lr stays constant, then decays linearly (see "
                        "--decay-fraction) to 0 at the end, where the run stops with a final checkpoint; a "
                        "resumed run keeps what is left")
    budget.add_argument("--max-pairs", type=int, default=None,
                        help="the same in training pairs seen (over all workers); with --max-minutes, whichever "
                        "runs out first")
    budget.add_argument("--decay-fraction", type=float, default=None,
                        help="the last share of the budget over which the lr decays linearly to 0 (default: "
                        f"{DECAY_FRACTION:g}, the paper's half and half; 1: from the first step)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="checkpoint every N epochs, and at the end (default: 1 on CPUs; on GPUs, whose epochs "
                        "take seconds, by time: see --checkpoint-minutes)")
    parser.add_argument("--checkpoint-minutes", type=float, default=None,
                        help=f"checkpoint when this many minutes have passed since the last checkpoint, at the end "
                        f"of an epoch, and at the end (default: {GPU_CHECKPOINT_MINUTES:g} on GPUs unless "
                        "--checkpoint-every is given)")
    parser.add_argument("--validate-every", type=int, default=None,
                        help=f"validate every N epochs, and at the end (default: 1 on CPUs, {GPU_EVERY} on GPUs)")
    parser.add_argument("--keep-checkpoints", type=int, default=2,
                        help="checkpoints kept (each holds G, D, optimizers)")
    parser.add_argument("--palette", help="'recife' (built in) or a JSON file {\"class\": [r, g, b], ...} for "
                        "colour-coded targets: validation adds per-class IoU and mIoU, and the export records the "
                        "palette, so translation snaps to it (default for the demo: recife)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs (quiet by default)")
    parser.add_argument("--direction", choices=("AtoB", "BtoA"), default=None,
                        help="recorded in the export (default: the one the dataset was prepared with)")
    args = parser.parse_args(argv)
    if args.palette_weight and args.data is not None and not args.palette:
        parser.error("--palette-weight needs --palette (the classes it weighs)")
    if args.decay_fraction is not None and args.max_minutes is None and args.max_pairs is None:
        parser.error("--decay-fraction needs --max-minutes or --max-pairs (the budget it shares out)")
    if args.checkpoint_every is not None and args.checkpoint_minutes is not None:
        parser.error("give --checkpoint-every or --checkpoint-minutes, not both")
    if args.checkpoint_minutes is not None and args.checkpoint_minutes <= 0:
        parser.error("--checkpoint-minutes must be positive")
    for name in ("num_workers", "checkpoint_every", "validate_every", "keep_checkpoints"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        args.budget = job_budget(args)  # the Budget checks its own values
    except ConfigError as error:
        parser.error(str(error))
    return args


def train_config(args, demo: bool, recipe: str, gpu: bool = False) -> TrainConfig:
    return recipe_config(recipe, demo, gpu, **cli.flag_values(args, TrainConfig))


def epoch_intervals(args, use_gpu: bool) -> dict:
    minutes = args.checkpoint_minutes
    if minutes is None and use_gpu and args.checkpoint_every is None:
        minutes = GPU_CHECKPOINT_MINUTES
    return {"checkpoint_every": args.checkpoint_every or 1, "checkpoint_minutes": minutes,
            "validate_every": args.validate_every or (GPU_EVERY if use_gpu else 1)}


def job_budget(args) -> Budget | None:
    if args.max_minutes is None and args.max_pairs is None:
        return None
    return Budget(max_seconds=None if args.max_minutes is None else args.max_minutes * 60, max_pairs=args.max_pairs,
                  decay_fraction=DECAY_FRACTION if args.decay_fraction is None else args.decay_fraction)


def main() -> int:
    started_at = time.time()
    args = parse_args()
    demo = args.data is None
    # Validated once, before Ray starts: the recipe "auto" resolves to once the workers are
    # planned differs from the others only in widths, lr and loss weights, which validate alike.
    train_config(args, demo, "paper" if args.recipe == "auto" else args.recipe).validate()
    palette = load_palette(args.palette or ("recife" if demo else None))
    from pix2pix.distributed import session, train, train_worker
    from pix2pix.training import shards

    if not demo:
        shards.find_shards(args.data)  # before starting Ray: a wrong URI fails in a second
    session.init(args.verbose)
    if demo:
        from pix2pix.distributed.prepare import prepare_demo

        args.data = demo_paths.DEMO_DATA
        if not storage.exists(storage.resolve(demo_paths.DEMO_DATA).join("train")):
            prepare_demo()
    storage_uri = args.storage or demo_paths.DEMO_RUNS
    name = args.name or demo_paths.DEMO_RUN_NAME
    resources = train.plan_on_cluster(args.num_workers, args.gpu, args.cpus_per_worker, args.threads)
    recipe = default_recipe(resources.use_gpu) if args.recipe == "auto" else args.recipe
    config = train_config(args, demo, recipe, gpu=resources.use_gpu)
    job = train.JobConfig(train=config, data_uri=args.data,
                          direction=args.direction or shards.dataset_direction(args.data),
                          threads=resources.threads, palette=palette, verbose=args.verbose,
                          budget=args.budget, started_at=started_at,
                          **epoch_intervals(args, resources.use_gpu))
    started = time.perf_counter()
    result = train.fit(job, resources, storage_uri, name, args.max_failures, args.keep_checkpoints, args.verbose)
    if result.error:
        raise cli.JobError(f"training failed: {result.error}")
    final = storage.resolve(storage_uri).uri_of(result.checkpoint.path) if result.checkpoint else None
    run_uri = f"{storage_uri.rstrip('/')}/{name}"
    last = (train_worker.read_history(run_uri) or [result.metrics])[-1]
    cli.print_summary({
        "run": run_uri,
        "checkpoint": final,
        "samples": f"{final}/samples.png" if final else None,
        "epoch": last.get("epoch"),
        "step": last.get("step"),
        "pairs": last.get("pairs"),  # training pairs seen, all workers together
        "metrics": {key: value for key, value in last.items() if key.startswith(("val_", "G_", "D_"))},
        "history": f"{run_uri}/{train_worker.HISTORY_FILE}",
        "palette": list(palette) if palette else None,
        "recipe": {"name": recipe, "ngf": config.ngf, "ndf": config.ndf, "lr": config.lr},
        "workers": resources.num_workers,
        "device": "gpu" if resources.use_gpu else "cpu",
        "seconds": round(time.perf_counter() - started, 1),
    })
    return 0


if __name__ == "__main__":
    cli.run(main)
