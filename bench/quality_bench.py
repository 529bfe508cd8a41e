"""Quality on the product path: candidates trained by `jobs/train.py` with a budget and scored
by `jobs/evaluate.py` on the val split, per-class IoU with bootstrap intervals over the pairs.

    python bench/quality_bench.py --max-pairs 3000 --seeds 0 1 --candidates base ema resize palette
    python bench/quality_bench.py --max-minutes 30 --seeds 0 --candidates base final

A candidate is a name from CANDIDATES or NAME=FLAGS (e.g. 'pal3=--palette-weight 3'): the flags
are added to `jobs/train.py --data DATA --palette recife --seed S` and the budget. Every run
is the job users run (Ray Train, one worker, the machine's defaults); runs go one after the
other, and a run whose result exists under --work is not trained again, so a screen can be
spread over sessions. Equal pairs (--max-pairs) is how candidates are compared: this VM's speed
drifts 20-30%, which would confound equal-time runs. Everything derived from the data (runs,
grids, results) stays under --work, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIFE = REPO.parent / "shared" / "data" / "recife"
CANDIDATES = {
    "defaults": "",  # jobs/train.py as it is
    "base": "--palette-weight 0 --upsample transposed",  # the defaults before this screen: GAN + L1
    "ema": "--palette-weight 0 --upsample transposed --ema-decay 0.999",
    "resize": "--palette-weight 0 --upsample resize",
    "palette": "--palette-weight 3 --upsample transposed",
    "final": "--palette-weight 3 --upsample resize",  # the winners combined: the compact defaults
    "balance2": "--palette-weight 3 --upsample resize --palette-balance 2",  # rare classes (roads) first
    "ndf32": "--ndf 32",  # the compact recipe's discriminator before 2026-12-06 (now ndf 16)
    "crop128": "--crop-size 128",  # train on 128 px crops (a 7-level U-Net), validate and translate at 256
    "decay1": "--decay-fraction 1",  # the budget's lr decays linearly from the first step (not half and half)
    "square": "--flips square",  # the square's eight symmetries instead of horizontal flips only
}
SHOWN = ("building", "road", "water", "vegetation", "soil", "other", "wetland")


def candidate_flags(spec: str) -> tuple[str, list[str]]:
    name, _, flags = spec.partition("=")
    if not flags and name not in CANDIDATES:
        raise SystemExit(f"unknown candidate {name!r}: use one of {', '.join(CANDIDATES)} or NAME=FLAGS")
    return name, shlex.split(flags or CANDIDATES[name])


def last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run(command: list[str], log: Path) -> str:
    print("  $ " + " ".join(command[1:]), flush=True)
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    log.write_text(completed.stdout + completed.stderr)
    if completed.returncode:
        raise SystemExit(f"failed ({completed.returncode}), see {log}")
    return completed.stdout


def prepared(work: Path, data: str | None) -> str:
    if data:
        return data
    folder = work / "data"
    if not (folder / "train").exists():
        if not RECIFE.exists():
            raise SystemExit(f"no data: {RECIFE} is missing; pass --data")
        run([sys.executable, "jobs/prepare.py", "--input", str(RECIFE), "--output", str(folder)], work / "prepare.log")
    return str(folder)


def train_and_score(work: Path, data: str, name: str, flags: list[str], seed: int, budget: list[str]) -> dict:
    run_name = f"{name}-s{seed}-{budget[0][6]}{budget[1]}"  # e.g. ema-s0-p3000, base-s0-m30
    result = work / "results" / f"{run_name}.json"
    if result.exists():
        return json.loads(result.read_text())
    for folder in ("results", "logs", "grids"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    trained = last_json(run([sys.executable, "jobs/train.py", "--data", data, "--storage", str(work / "runs"),
                             "--name", run_name, "--palette", "recife", "--seed", str(seed), *budget, *flags],
                            work / "logs" / f"{run_name}.train.log"))
    scored = last_json(run([sys.executable, "jobs/evaluate.py", "--data", data, "--checkpoint", trained["run"],
                            "--grid", str(work / "grids" / f"{run_name}.png")],
                           work / "logs" / f"{run_name}.evaluate.log"))
    history = [json.loads(line) for line in (Path(trained["run"]) / "metrics.jsonl").read_text().splitlines()]
    record = {"run": run_name, "candidate": name, "flags": flags, "seed": seed, "budget": budget,
              "pairs": trained["pairs"], "train_seconds": trained["seconds"], "evaluation": scored,
              "curve": [{"minutes_used": row.get("budget_used"), "pairs": row["pairs"],
                         "mIoU": row.get("val_mIoU"), "building": row.get("val_IoU/building"),
                         "road": row.get("val_IoU/road")} for row in history]}
    result.write_text(json.dumps(record, indent=1))
    return record


def interval(evaluation: dict, name: str) -> str:
    value = evaluation["miou"] if name == "mIoU" else evaluation["per_class_iou"].get(name)
    low, high = evaluation["iou_interval_95"].get(name, (None, None))
    return "-" if value is None else f"{value:.3f} [{low:.2f}, {high:.2f}]"


def report(records: list[dict]) -> None:
    print("\n| candidate | seed | pairs | train s | mIoU [95%] | building [95%] | road [95%] | "
          + " | ".join(SHOWN[2:]) + " |")
    print("|---" * (7 + len(SHOWN) - 2) + "|")
    for record in records:
        evaluation = record["evaluation"]
        others = " | ".join(f"{evaluation['per_class_iou'].get(name, float('nan')):.3f}" for name in SHOWN[2:])
        print(f"| {record['candidate']} | {record['seed']} | {record['pairs']} | {record['train_seconds']:.0f} | "
              f"{interval(evaluation, 'mIoU')} | {interval(evaluation, 'building')} | {interval(evaluation, 'road')} | "
              f"{others} |")
    by_candidate: dict[str, list[dict]] = {}
    for record in records:
        by_candidate.setdefault(record["candidate"], []).append(record["evaluation"])
    print("\nmean over seeds: " + "; ".join(
        f"{name} mIoU {statistics.mean(e['miou'] for e in runs):.3f}, building "
        f"{statistics.mean(e['per_class_iou'].get('building', 0) for e in runs):.3f}, road "
        f"{statistics.mean(e['per_class_iou'].get('road', 0) for e in runs):.3f}"
        for name, runs in by_candidate.items()))
    for record in records:
        if record["budget"][0] == "--max-minutes":
            minutes = float(record["budget"][1])
            print(f"\ncurve of {record['run']} (validation after each epoch): " + "; ".join(
                f"{(point['minutes_used'] or 0) * minutes:.1f} min, {point['pairs']} pairs: mIoU {point['mIoU']:.3f}, "
                f"building {point['building'] or 0:.3f}, road {point['road'] or 0:.3f}" for point in record["curve"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-pairs", type=int)
    budget.add_argument("--max-minutes", type=float)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--data", help="a prepared Recife dataset (default: prepared from ../shared under --work)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pix2pix-quality-bench"))
    args = parser.parse_args()
    data = prepared(args.work, args.data)
    budget = ["--max-pairs", str(args.max_pairs)] if args.max_pairs else ["--max-minutes", f"{args.max_minutes:g}"]
    records = []
    for spec in args.candidates:
        name, flags = candidate_flags(spec)
        for seed in args.seeds:
            print(f"{name}, seed {seed}", flush=True)
            records.append(train_and_score(args.work, data, name, flags, seed, budget))
    report(records)


if __name__ == "__main__":
    main()
