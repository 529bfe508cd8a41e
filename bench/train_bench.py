"""Training throughput: what a user runs against the library's own loop, on real pairs.

    .venv/bin/python bench/train_bench.py                 # the headline: real size (below)
    .venv/bin/python bench/train_bench.py --toy [--pairs 48] [--batch-size 4] [--ngf 64]
    .venv/bin/python bench/train_bench.py --toy --side-by-side --pairs 64   # both at once, a core each

Real size (the default): the whole Recife train split (1,500 pairs) prepared by
jobs/prepare.py, then bare loop, job, bare loop, job, bare loop. The job is `jobs/train.py`
with its default flags; the first job trains epoch 1 of a new run, the second resumes it and
trains epoch 2 (each is stopped once its epoch line, printed after the checkpoint and the
validation, appears). The bare loop is Pix2Pix.train_step in this process, same recipe,
precision and threads, on the same shards through the same reader (pix2pix/training/shards.py), so
it decodes and augments the real pairs while it trains. The CPU share of every process is read
from /proc for 30 s in the middle of each job's epoch.

Toy modes (--toy, small numbers of pairs; quick checks that decide nothing):

Run it on an idle machine: Ray workers run at nice 15, so any other load starves them.
In the toy modes the bare loop trains on pairs decoded beforehand; the Ray job's workers decode
and augment their own shards (TrainingPairs: a background thread in each worker, no Ray Data
stage) while they train, on the same cores, which is part of what it costs. This VM's speed
drifts by up to 30% over minutes, so the bare loop runs before and after the Ray job and the
ratios use their mean. The Ray figures are of the job's last epoch (workers warm); "steady"
leaves out that epoch's wait for its first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from pix2pix.model.precision import cpu_has_native_bf16, set_threads  # noqa: E402
from pix2pix.training.augmentation import paired_transform, preprocess_records  # noqa: E402
from pix2pix.training.step import Pix2Pix, TrainConfig  # noqa: E402

RECIFE = REPO.parent / "shared" / "data" / "recife"
CPU_WINDOW_S = 30.0


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text()
    return sorted(set(re.findall(r"\b(amx\w*|avx512_bf16)\b", text)))


def process_cpu_seconds() -> dict[int, tuple[float, str]]:
    ticks = os.sysconf("SC_CLK_TCK")
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60].strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        seen[int(pid)] = ((int(fields[11]) + int(fields[12])) / ticks, name or stat.split()[1])
    return seen


def cpu_shares(seconds: float) -> list[tuple[str, float]]:
    """Every process's CPU over ``seconds``, as a share of one core, busiest first."""
    before = process_cpu_seconds()
    time.sleep(seconds)
    after = process_cpu_seconds()
    shares = [(after[pid][1], (after[pid][0] - before[pid][0]) / seconds) for pid in after if pid in before]
    return sorted((entry for entry in shares if entry[1] >= 0.005), key=lambda entry: -entry[1])


def bare_real(config: TrainConfig, data: str, threads: int, pairs: int, epoch: int, warmup: int = 5) -> float:
    """Pairs/s of the library's loop reading, decoding and augmenting the prepared shards."""
    from pix2pix.training.shards import TrainingPairs, find_shards

    set_threads(threads)
    model = Pix2Pix(config)
    batches = TrainingPairs(data, find_shards(data)[0], config.image_size, config.batch_size, config.seed).epoch(epoch)
    for _ in range(warmup):
        batch = next(batches)
        model.train_step(batch["source"], batch["target"])
    started = time.perf_counter()
    for _ in range(pairs // config.batch_size):
        batch = next(batches)
        model.train_step(batch["source"], batch["target"])
    return pairs // config.batch_size * config.batch_size / (time.perf_counter() - started)


def run_job(data: str, runs: str) -> dict:
    """jobs/train.py with its default flags until its next epoch line; figures from that line."""
    started = time.time()
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "train.py"), "--data", data, "--storage", runs,
                            "--name", "bench"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    figures: dict = {}
    sampler = None
    try:
        for line in job.stdout:
            if "step " in line and sampler is None:  # the first progress line: mid-epoch from here
                sampler = ThreadPoolExecutor(1).submit(cpu_shares, CPU_WINDOW_S)
            found = dict(re.findall(r"(\w+)=([-\w.+]+)", line))
            if "epoch" in found and "pairs_per_s" in found:
                figures = {name: float(value) for name, value in found.items()}
                figures["job_seconds"] = time.time() - started
                break
    finally:
        os.killpg(job.pid, signal.SIGINT)
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    if not figures:
        raise RuntimeError("the job printed no epoch line")
    figures["cpu_share"] = [(name, round(share, 3)) for name, share in sampler.result()[:8]] if sampler else []
    figures["started_at"] = started
    return figures


def real_size(args) -> dict:
    from pix2pix.training.step import RECIPES, default_recipe

    work = Path(tempfile.mkdtemp(prefix="train-bench-real-"))
    data, runs = str(work / "data"), str(work / "runs")
    subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "--input", str(RECIFE), "--output", data],
                   check=True, capture_output=True)
    # The job's defaults on this machine: the CPU recipe, precision auto, threads of one worker.
    config = TrainConfig(**RECIPES[default_recipe(False)])
    threads = os.cpu_count()
    results: dict = {"cpu_flags": cpu_flags(), "precision": Pix2Pix(config).precision, "threads": threads,
                     "recipe": default_recipe(False), "bare_pairs": args.bare_pairs}
    bare, jobs = [], []
    try:
        for round_ in range(3):
            bare.append(bare_real(config, data, threads, args.bare_pairs, epoch=round_))
            print(json.dumps({"bare_pairs_per_s": bare[-1]}), file=sys.stderr, flush=True)
            if round_ < 2:
                jobs.append(run_job(data, runs))
                print(json.dumps(jobs[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["bare_pairs_per_s"] = [round(value, 3) for value in bare]
    for number, job in enumerate(jobs, start=1):
        around = (bare[number - 1] + bare[number]) / 2
        pairs = job["pairs_per_s"] * job["epoch_seconds"]
        results[f"job{number}"] = {
            "epoch": int(job["epoch"]), "pairs_per_s": job["pairs_per_s"],
            "epoch_vs_bare": round(job["pairs_per_s"] / around, 3),
            "whole_run_pairs_per_s": round(pairs / job["job_seconds"], 3),
            "whole_run_vs_bare": round(pairs / job["job_seconds"] / around, 3),
            "job_seconds": round(job["job_seconds"], 1), "epoch_seconds": job["epoch_seconds"],
            "start_to_first_step_s": round(job["job_seconds"] - job["epoch_seconds"] + job["first_batch_seconds"]
                                           - job["checkpoint_seconds"] - job["validation_seconds"], 1),
            "checkpoint_seconds": job["checkpoint_seconds"], "validation_seconds": job["validation_seconds"],
            "input_wait_fraction": job["input_wait_fraction"], "val_L1": job["val_L1"],
            "cpu_share": job["cpu_share"],
        }
    return results


def copy_pairs(count: int, destination: Path) -> None:
    for folder, ext in (("sat", "jpg"), ("map", "png")):
        (destination / folder).mkdir(parents=True)
        for path in sorted((RECIFE / "train" / folder).glob(f"*.{ext}"))[:count]:
            shutil.copy(path, destination / folder / path.name)


def bare_loop(config: TrainConfig, batches, threads: int, warmup: int = 1) -> float:
    """Pairs/s of Pix2Pix.train_step in this process on pre-decoded batches."""
    set_threads(threads)
    model = Pix2Pix(config)
    for source, target in batches[:warmup]:
        model.train_step(source, target)
    started = time.perf_counter()
    for source, target in batches[warmup:]:
        model.train_step(source, target)
    return (len(batches) - warmup) * config.batch_size / (time.perf_counter() - started)


def decoded_batches(raw: Path, config: TrainConfig, count: int):
    records = [{"key": path.stem, "layout": "paired", "source": path.read_bytes(),
                "target": (raw / "map" / f"{path.stem}.png").read_bytes()}
               for path in sorted((raw / "sat").glob("*.jpg"))]
    out = preprocess_records(records, paired_transform(config.image_size, train=True, seed=0))
    source, target = torch.from_numpy(out["source"]), torch.from_numpy(out["target"])
    size = config.batch_size
    return [(source[i:i + size], target[i:i + size]) for i in range(0, size * count, size)]


def steady_pairs_per_s(epoch: dict[str, float]) -> float:
    """An epoch's pairs/s without its wait for the first batch."""
    pairs = epoch["pairs_per_s"] * epoch["epoch_seconds"]
    return pairs / (epoch["epoch_seconds"] - epoch["first_batch_seconds"])


def ray_job(config: TrainConfig, data: str, storage_uri: str, threads: int) -> dict[str, float]:
    from pix2pix.distributed import session, train

    session.init()
    resources = train.TrainResources(num_workers=1, use_gpu=False, cpus_per_worker=1.0, threads=threads)
    job = train.JobConfig(train=config, data_uri=data, threads=threads, checkpoint_every=100)
    result = train.fit(job, resources, storage_uri, "bench")
    if result.error:
        raise RuntimeError(result.error)
    last = result.metrics  # the last epoch: workers warm
    return {"ray_fp32_pairs_per_s": last["pairs_per_s"], "ray_steady_pairs_per_s": steady_pairs_per_s(last),
            "ray_epoch_start_s": last["first_batch_seconds"],
            "ray_input_wait_fraction": last["input_wait_fraction"]}


def bare_child(raw: Path, config: TrainConfig, log: Path, stop: Path) -> None:
    """Side by side: the bare loop on core 0, one thread, logging each step's end until told to stop."""
    os.sched_setaffinity(0, {0})
    set_threads(1)
    batches = decoded_batches(raw, config, 8)
    model = Pix2Pix(config)
    with open(log, "w") as out:
        while not stop.exists():
            for source, target in batches:
                model.train_step(source, target)
                out.write(f"{time.time()}\n")
                out.flush()


def side_by_side(config: TrainConfig, work: Path) -> dict[str, float]:
    """The Ray job (driver, Ray's daemons, workers and data tasks all pinned to core 1) and the
    bare loop (core 0) at once, one torch thread each: the VM's drift hits both alike."""
    import subprocess

    from pix2pix.distributed import session, train
    from pix2pix.distributed.prepare import prepare

    log, stop = work / "bare.log", work / "stop"
    child = subprocess.Popen([sys.executable, __file__, "--bare-child", str(work / "raw"), str(log), str(stop),
                              "--ngf", str(config.ngf), "--batch-size", str(config.batch_size)])
    try:
        os.sched_setaffinity(0, {1})  # Ray's processes inherit it
        session.init()
        prepare(str(work / "raw"), str(work / "data"), val_fraction=0.0)
        resources = train.TrainResources(num_workers=1, use_gpu=False, cpus_per_worker=0.5, threads=1)
        job = train.JobConfig(train=config, data_uri=str(work / "data"), threads=1, checkpoint_every=100)
        result = train.fit(job, resources, str(work / "runs"), "bench")
        ended = time.time()
        if result.error:
            raise RuntimeError(result.error)
    finally:
        stop.touch()
        child.wait()
    last = result.metrics
    steps = [float(line) for line in log.read_text().split()]
    window = [t for t in steps if ended - last["epoch_seconds"] <= t <= ended]
    bare = (len(window) - 1) * config.batch_size / (window[-1] - window[0])
    steady = steady_pairs_per_s(last)
    return {"bare_1core_pairs_per_s": bare, "ray_1core_pairs_per_s": last["pairs_per_s"],
            "ray_1core_steady_pairs_per_s": steady, "ray_vs_bare_side_by_side": last["pairs_per_s"] / bare,
            "ray_steady_vs_bare_side_by_side": steady / bare, "ray_epoch_start_s": last["first_batch_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", action="store_true", help="the small modes below instead of the real-size run")
    parser.add_argument("--bare-pairs", type=int, default=400, help="real size: pairs per bare-loop measurement")
    parser.add_argument("--pairs", type=int, default=48, help="toy: training pairs (one epoch)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ngf", type=int, default=64, help="generator/discriminator width (paper: 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--epochs", type=int, default=2, help="Ray job epochs (the last one is reported)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per bare-loop measurement")
    parser.add_argument("--side-by-side", action="store_true",
                        help="Ray job and bare loop at once, one core and one thread each (cancels VM drift)")
    parser.add_argument("--bare-child", nargs=3, help=argparse.SUPPRESS)  # raw log stop
    args = parser.parse_args()
    if args.bare_child:
        raw, log, stop = (Path(part) for part in args.bare_child)
        return bare_child(raw, TrainConfig(image_size=256, ngf=args.ngf, ndf=args.ngf, batch_size=args.batch_size,
                                           precision="fp32"), log, stop)
    if not RECIFE.is_dir():
        sys.exit(f"real data not found at {RECIFE}")
    if not args.toy:
        print(json.dumps(real_size(args)))
        return
    fp32 = TrainConfig(image_size=256, ngf=args.ngf, ndf=args.ngf, batch_size=args.batch_size, epochs=args.epochs,
                       epochs_decay=0, precision="fp32")
    bf16 = TrainConfig(**{**fp32.to_dict(), "precision": "bf16"})
    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    if args.side_by_side:
        try:
            copy_pairs(args.pairs, work / "raw")
            results = side_by_side(fp32, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.update(batch_size=args.batch_size, ngf=args.ngf, pairs=args.pairs, epochs=args.epochs)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}))
        return
    try:
        copy_pairs(args.pairs, work / "raw")
        batches = decoded_batches(work / "raw", fp32, args.steps + 1)
        results = {
            "bare_fp32_before_pairs_per_s": bare_loop(fp32, batches, args.threads),
            "bare_bf16_pairs_per_s": bare_loop(bf16, batches, args.threads),
        }
        from pix2pix.distributed import session
        from pix2pix.distributed.prepare import prepare

        session.init()
        prepare(str(work / "raw"), str(work / "data"), val_fraction=0.0)
        results.update(ray_job(fp32, str(work / "data"), str(work / "runs"), args.threads))
        results["bare_fp32_after_pairs_per_s"] = bare_loop(fp32, batches, args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = (results["bare_fp32_before_pairs_per_s"] + results["bare_fp32_after_pairs_per_s"]) / 2
    results["ray_vs_bare"] = results["ray_fp32_pairs_per_s"] / bare
    results["ray_steady_vs_bare"] = results["ray_steady_pairs_per_s"] / bare
    results["bf16_vs_fp32"] = results["bare_bf16_pairs_per_s"] / results["bare_fp32_before_pairs_per_s"]
    results.update(native_bf16=cpu_has_native_bf16(), threads=args.threads, batch_size=args.batch_size,
                   ngf=args.ngf, image_size=256, pairs=args.pairs)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
