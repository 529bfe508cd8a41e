"""Quality on real data at equal wall time and equal pairs: one of the project's recipes
(--recipe: "compact", the CPU default: half width, twice the learning rate; "paper-widths", the
GPU default; "compact-paper-lr": half width at the paper's rate; all with instance norm and the
target resized nearest-neighbour, pix2pix.training.RECIPES) against the paper's
plain recipe, on ../shared/data/recife (1,500 train / 100 val pairs, 256 px).

    python bench/quality_bench.py --minutes 15 --seeds 0 1 --recipe compact

For each seed the two recipes train side by side, each in its own process pinned to its own
CPU core with one torch thread, for the same wall-time budget (same machine, same moment, so
background load hits both alike). Both use the library's training step (pix2pix.training)
on pairs decoded once up front; augmentation runs inside the budget. Then every model is
evaluated on the whole val split (pix2pix.evaluation): the baseline the paper's way (dropout
on, batch statistics, batch size 1) and in eval mode, the better one reported; the project's
model in eval mode, at the end of the budget, and again trained from the start (same seed)
and stopped at exactly the baseline's number of training pairs (equal data; these runs go
two at a time, one per seed). Prints one table; writes grids and the per-run JSON under
--work (outside the repository: they derive from the data).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIFE = REPO.parent / "shared" / "data" / "recife"


def recipe(name: str, seed: int):
    """(TrainConfig, target interpolation) of a recipe."""
    import cv2

    from pix2pix.training import RECIPES, TrainConfig

    if name == "paper":  # Isola et al.: batch 1, batch norm, fp32, bicubic resize of both images
        paper = TrainConfig(ngf=64, ndf=64, norm="batch", batch_size=1, precision="fp32", seed=seed)
        return paper, cv2.INTER_CUBIC
    # The project's recipes: instance norm, batch 1, the target resized nearest-neighbour.
    if name == "compact-paper-lr":  # half width at the paper's lr: the first session's "compact"
        return TrainConfig(ngf=32, ndf=32, seed=seed), cv2.INTER_NEAREST
    library_name = {"compact": "compact", "paper-widths": "paper"}[name]
    return TrainConfig(**RECIPES[library_name], seed=seed), cv2.INTER_NEAREST


RECIPES = ("compact", "paper-widths", "compact-paper-lr")


def load_pairs(split: str) -> list:
    import numpy as np
    from PIL import Image

    pairs = []
    for source in sorted(glob.glob(str(RECIFE / split / "sat" / "*.jpg"))):
        target = source.replace("/sat/", "/map/").replace(".jpg", ".png")
        pairs.append(tuple(np.asarray(Image.open(path).convert("RGB")) for path in (source, target)))
    return pairs


def train(name: str, seed: int, minutes: float, core: int, out: Path, max_pairs: int = 0) -> dict:
    """One recipe on one core for ``minutes`` (or until ``max_pairs`` pairs); exports the generator."""
    import numpy as np
    import torch

    from pix2pix import checkpoint, storage
    from pix2pix.data import augment_pair, paired_transform
    from pix2pix.precision import set_threads
    from pix2pix.training import Pix2Pix

    os.sched_setaffinity(0, {core})
    set_threads(1)
    config, target_interpolation = recipe(name, seed)
    pairs = load_pairs("train")
    transform = paired_transform(config.image_size, train=True, seed=seed, target_interpolation=target_interpolation)
    model = Pix2Pix(config)
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    deadline = started + 60 * minutes
    seen, losses = 0, []

    def done() -> bool:
        return time.monotonic() >= deadline or 0 < max_pairs <= seen

    while not done():
        order = rng.permutation(len(pairs))
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            batch = [augment_pair(transform, *pairs[i]) for i in order[start:start + config.batch_size]]
            source, target = (torch.from_numpy(np.stack(side)).permute(0, 3, 1, 2) for side in zip(*batch))
            losses.append({k: float(v) for k, v in model.train_step(source, target).items()})
            seen += config.batch_size
            if done():
                break
        else:
            model.end_epoch()  # lr stays constant: the budget is far below the paper's 100 epochs
    seconds = time.monotonic() - started
    info = checkpoint.ExportInfo(config.generator_config(), image_size=config.image_size, step=model.step,
                                 extra={"pairs_seen": seen, "recipe": name})
    checkpoint.export_generator(model.generator, info, storage.resolve(str(out / "final")))
    last = losses[-50:]
    return {"recipe": name, "seed": seed, "pairs_seen": seen, "steps": model.step, "seconds": seconds,
            "pairs_per_s": seen / seconds, "final_losses": {k: sum(x[k] for x in last) / len(last) for k in last[0]}}


def evaluate(export: Path, paper_mode: bool, grid: Path) -> dict:
    from pix2pix.evaluation import EvaluateOptions, evaluate as run

    return run(EvaluateOptions(data=str(RECIFE), checkpoint=str(export), palette="recife", threads=os.cpu_count(),
                               paper_mode=paper_mode, batch_size=1 if paper_mode else 8, grid=str(grid),
                               grid_count=6))


def side_by_side(jobs: list[tuple[str, int, Path, int]], minutes: float) -> list[dict]:
    """Train (recipe, seed, out, max_pairs) jobs at once, one per core; their train.json."""
    processes = []
    for core, (name, seed, out, max_pairs) in enumerate(jobs):
        out.mkdir(parents=True, exist_ok=True)
        processes.append(subprocess.Popen([sys.executable, __file__, "--minutes", str(minutes), "--child", name,
                                           str(seed), str(core % os.cpu_count()), str(out), str(max_pairs)]))
    for (name, seed, out, _), process in zip(jobs, processes):
        if process.wait():
            raise SystemExit(f"{name} seed {seed} failed")
    return [json.loads((out / "train.json").read_text()) for _, _, out, _ in jobs]


def equal_time(work: Path, seed: int, minutes: float, project_recipe: str) -> dict:
    paper_out, project_out = work / f"paper-seed{seed}", work / f"{project_recipe}-seed{seed}"
    paper, project = side_by_side([("paper", seed, paper_out, 0), (project_recipe, seed, project_out, 0)], minutes)
    baseline = {mode: evaluate(paper_out / "final", mode == "paper", paper_out / f"grid-{mode}.png")
                for mode in ("paper", "eval")}
    best = max(baseline, key=lambda mode: baseline[mode]["miou"])
    return {"seed": seed, "paper": paper, "project": project, "baseline_mode": best, "baseline": baseline[best],
            "baseline_other": baseline["eval" if best == "paper" else "paper"],
            "equal_time": evaluate(project_out / "final", False, project_out / "grid-final.png")}


def equal_pairs(work: Path, rows: list[dict]) -> None:
    """The project's recipe again, stopped at exactly the baseline's number of pairs."""
    jobs = [(row["project"]["recipe"], row["seed"], work / f"{row['project']['recipe']}-seed{row['seed']}-equal",
             row["paper"]["pairs_seen"]) for row in rows]
    for row, run, (_, _, out, _) in zip(rows, side_by_side(jobs, 10**6), jobs):
        row["project_equal"] = run
        row["equal_pairs"] = evaluate(out / "final", False, out / "grid.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipe", choices=RECIPES, default="compact", help="the recipe set against the paper's")
    parser.add_argument("--work", default="/tmp/pix2pix-quality-bench")
    parser.add_argument("--equal-pairs-only", action="store_true",
                        help="only the equal-pairs runs, for the equal-time results already in --work")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)  # recipe seed core out max_pairs
    args = parser.parse_args()
    if args.child:
        name, seed, core, out, max_pairs = args.child
        result = train(name, int(seed), args.minutes, int(core), Path(out), int(max_pairs))
        (Path(out) / "train.json").write_text(json.dumps(result))
        return
    if not RECIFE.is_dir():
        raise SystemExit(f"needs the Recife pairs in {RECIFE}")
    work = Path(args.work)
    results = work / "results.json"
    if args.equal_pairs_only:
        rows = json.loads(results.read_text())
    else:
        rows = []
        for seed in args.seeds:
            rows.append(equal_time(work, seed, args.minutes, args.recipe))
            results.write_text(json.dumps(rows, indent=1))
    equal_pairs(work, rows)
    results.write_text(json.dumps(rows, indent=1))
    report(rows, args.minutes)


def report(rows: list[dict], minutes: float) -> None:
    def line(label: str, run: dict, pairs: int | None) -> str:
        ious = " ".join(f"{name[:4]} {value:.2f}" for name, value in run["per_class_iou"].items())
        return (f"  {label:34s} pairs {pairs or 0:5d} | mIoU {run['miou']:.3f} | pixel acc {run['pixel_accuracy']:.3f}"
                f" (snapped to the palette {run['pixel_accuracy_snapped']:.3f})"
                f" | L1 {run['l1']:.3f} PSNR {run['psnr']:.2f} SSIM {run['ssim']:.3f} | {ious}")

    print(f"\nRecife val (100 pairs, 256 px), {minutes:g} min of training per run, one core and one thread each")
    for row in rows:
        project = row["project"]["recipe"]
        print(f"seed {row['seed']}: paper {row['paper']['pairs_per_s']:.3f} pairs/s, "
              f"{project} {row['project']['pairs_per_s']:.3f} pairs/s")
        print(line(f"paper recipe ({row['baseline_mode']} mode, the better)", row["baseline"],
                   row["paper"]["pairs_seen"]))
        other = "eval" if row["baseline_mode"] == "paper" else "paper"
        print(line(f"paper recipe ({other} mode)", row["baseline_other"], row["paper"]["pairs_seen"]))
        print(line(f"{project}, equal time", row["equal_time"], row["project"]["pairs_seen"]))
        print(line(f"{project}, equal pairs", row["equal_pairs"], row["project_equal"]["pairs_seen"]))


if __name__ == "__main__":
    main()
