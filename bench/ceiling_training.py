"""The training half of the GPU ceiling (issue "GPU scale"): a worker's input stream with the
model taken out, against what the same CPUs do for the same work in plain processes.

    .venv/bin/python bench/ceiling_training.py [--work DIR] [--no-job]
    (bench/ceiling_bench.py imports ``training`` and runs it too)

Over the real Recife train split (1,500 pairs, prepared by jobs/prepare.py into WORK/recife),
all at once in one run, so that the machine's load hits them alike; N = os.cpu_count():
- the input stream alone (``TrainingPairs``: shard reads, decode, the paper's augmentation)
  as a CPU worker runs it, 1 decode thread and batches of 1, and as a GPU worker does, N decode
  processes (pix2pix/training/decode_processes.py; their start-up is timed apart) and the GPU
  batch (16; batches of 1 gave it 0.58-0.64x the plain processes where 16 gave 0.65-0.92x): its
  first epoch, which decodes every pair and keeps it resized, and its second on the same
  reader, which only crops and flips the kept pairs and reads no shard ("kept");
- the ceiling: N plain processes, each decoding and augmenting its share of the same epoch's
  pairs (records read before the clock starts); and 1 such process, whose rate gives the CPU
  ms per pair;
- the alternative that sends whole tensors: a process pool (torch's DataLoader, N worker processes, 8 pairs
  per task, tensors back through shared memory).
Target: the stream with N decode workers >= 0.8x the N plain processes (which decode every pair, as
a first epoch must).

Then (not with --no-job) the fixed costs of an epoch of a width-1 training job (ngf 1, ndf 1,
batch 1, 2 epochs: the second is reported): the wait for the first batch (the first shard's
read), all shard reads of an epoch timed alone, the metrics file's rewrite, the checkpoint
(save + report), the validation; and their share of an epoch at 1,000 pairs/s (arithmetic on
the measured seconds, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pix2pix.training.step import GPU_BATCH_SIZE  # noqa: E402 - a GPU worker's default batch

RECIFE = REPO.parent / "shared" / "data" / "recife"
IMAGE_SIZE = 256
SEED = 0
CHUNK = 8  # pairs per process-pool task
ROUNDS = 3  # the best round of each figure is the one least hit by other load
TARGET_PAIRS_PER_S = 1000.0  # the rate the fixed costs are weighed against


def prepared(work: Path) -> str:
    """The Recife split prepared by jobs/prepare.py (once per work folder), on a Ray instance of its own."""
    data = work / "recife"
    if not (data / "train").is_dir():
        subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "--input", str(RECIFE), "--output",
                        str(data)], check=True, capture_output=True, env={**os.environ, "RAY_ADDRESS": "local"})
    return str(data)


def reader(data: str, decode_workers: int = 1, batch_size: int = 1):
    from pix2pix.training.shards import TrainingPairs, find_shards

    return TrainingPairs(data, find_shards(data)[0], IMAGE_SIZE, batch_size, SEED, decode_workers=decode_workers)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


# ---- the stream, the pool, the plain processes -------------------------------------------------

def stream(data: str, decode_workers: int, batch_size: int = 1) -> tuple[dict, dict]:
    """Pairs/s and CPU ms per pair of the input stream's first epoch (shard reads, decoding, pairs
    kept) and of its second on the same reader (from the kept pairs); the first says how long
    the reader took to start (its decode processes)."""
    started = time.perf_counter()
    pairs = reader(data, decode_workers, batch_size)
    if pairs.processes:  # their start (and the memory of the pairs they keep) overlaps a worker's model build
        pairs.processes.wait_started()
    start_s = time.perf_counter() - started
    try:
        return stream_epoch(pairs, 0) | {"start_s": start_s}, stream_epoch(pairs, 1)
    finally:
        pairs.close()


def stream_epoch(pairs, epoch: int) -> dict:
    """The epoch's rate; its CPU is this process's and its decode processes' (from /proc: a child's
    CPU reaches ``os.times`` only once it has been waited for, at the reader's close)."""
    started, cpu = time.perf_counter(), cpu_seconds() + decode_cpu_seconds(pairs)
    count = sum(batch["source"].shape[0] for batch in pairs.epoch(epoch))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() + decode_cpu_seconds(pairs) - cpu
    return {"pairs_per_s": count / seconds, "cpu_ms_per_pair": 1000 * cpu / count}


def decode_cpu_seconds(pairs) -> float:
    if pairs.processes is None:
        return 0.0
    total = 0.0
    for process in pairs.processes._processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def process_pool(data: str, processes: int) -> dict:
    """The same epoch through torch's DataLoader: ``processes`` worker processes, CHUNK pairs a task."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pix2pix.training.augmentation import EpochAugmentation, stack_pairs

    class Chunks(Dataset):
        augment = EpochAugmentation(IMAGE_SIZE, SEED, 0)

        def __getitem__(self, records: list[dict]):
            batch = stack_pairs([self.augment(record) for record in records])
            return torch.from_numpy(batch["source"]), torch.from_numpy(batch["target"])

        def __len__(self) -> int:
            return 0

    def chunks():
        records = []
        for record in reader(data).records(0):
            records.append(record)
            if len(records) == CHUNK:
                yield records
                records = []

    started, cpu = time.perf_counter(), cpu_seconds()
    loader = DataLoader(Chunks(), batch_size=None, sampler=chunks(), num_workers=processes, prefetch_factor=4)
    count = 0
    for source, _ in loader:
        count += source.shape[0]
    seconds = time.perf_counter() - started
    return {"pairs_per_s": count / seconds, "cpu_ms_per_pair": 1000 * (cpu_seconds() - cpu) / count}


def plain_process(data: str, part: int, parts: int, ready: str, go: str) -> dict:
    """Decode and augment every ``parts``-th pair of the epoch from ``part``, once ``go`` exists."""
    from pix2pix.training.augmentation import EpochAugmentation

    records = list(reader(data).records(0))[part::parts]
    augment = EpochAugmentation(IMAGE_SIZE, SEED, 0)
    augment(records[0])  # the transform's first build
    Path(ready).touch()
    while not os.path.exists(go):
        time.sleep(0.005)
    started = time.time()
    for record in records:
        augment(record)
    return {"pairs": len(records), "started": started, "ended": time.time()}


def plain_processes(data: str, processes: int, work: Path) -> dict:
    """Pairs/s of ``processes`` plain processes started together: all pairs over first start to last end."""
    flags = work / "flags"
    flags.mkdir(exist_ok=True)
    go = flags / f"go-{processes}"
    go.unlink(missing_ok=True)
    ready = [flags / f"ready-{processes}-{part}" for part in range(processes)]
    for flag in ready:
        flag.unlink(missing_ok=True)
    children = [subprocess.Popen([sys.executable, __file__, "--plain", data, str(part), str(processes),
                                  str(ready[part]), str(go)], stdout=subprocess.PIPE, text=True)
                for part in range(processes)]
    while not all(flag.exists() for flag in ready):
        if any(child.poll() is not None for child in children):
            raise SystemExit("a plain process ended before its start")
        time.sleep(0.05)
    go.touch()
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {"pairs_per_s": sum(r["pairs"] for r in results) / seconds}


def input_figures(data: str, work: Path) -> list[dict]:
    cpus = os.cpu_count()
    rounds = []
    for _ in range(ROUNDS):  # interleaved: the load's drift hits every figure of a round alike
        figures = {f"plain {cpus} processes": plain_processes(data, cpus, work)}
        name = f"stream, {cpus} decode processes"
        figures[name], figures[f"{name}, kept"] = stream(data, cpus, GPU_BATCH_SIZE)
        figures["plain 1 process"] = plain_processes(data, 1, work)
        figures["stream, 1 decode thread"], figures["stream, 1 decode thread, kept"] = stream(data, 1)
        figures[f"process pool, {cpus} processes"] = process_pool(data, cpus)
        rounds.append(figures | {"load": os.getloadavg()[0]})
    return rounds


# ---- the fixed costs of an epoch -------------------------------------------------------------

def width1_job(data: str, work: Path) -> dict:
    """Epoch 2's line of jobs/train.py at width 1, on a Ray instance of its own."""
    runs = tempfile.mkdtemp(prefix="runs-", dir=work)
    command = [sys.executable, str(REPO / "jobs" / "train.py"), "--data", data, "--storage", runs, "--name", "width1",
               "--ngf", "1", "--ndf", "1", "--batch-size", "1", "--epochs", "2", "--epochs-decay", "0"]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": "local"})
    lines = [dict(re.findall(r"(\w+)=([-\w.+]+)", line)) for line in completed.stdout.splitlines()]
    epochs = [line for line in lines if "epoch" in line and "epoch_seconds" in line]
    if completed.returncode or not epochs:
        raise SystemExit(f"the width-1 job failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    return {name: float(value) for name, value in epochs[-1].items() if name != "epoch"} | {"runs": runs}


def shard_reads_seconds(data: str) -> float:
    """An epoch's shard reads alone, rows taken and turned into records as the stream does."""
    pairs = reader(data)
    started = time.perf_counter()
    sum(1 for _ in pairs.records(0))
    return time.perf_counter() - started


def metrics_write_seconds(runs: str, lines: int = 100) -> float:
    """One epoch's rewrite of metrics.jsonl after ``lines`` epochs (local storage)."""
    from pix2pix.distributed.train_worker import History

    run = Path(runs) / "metrics-write"
    run.mkdir()
    metrics = {"epoch": 1, "step": 1500, "G_L1": 0.1, "val_L1": 0.1, "epoch_seconds": 1.5}
    history = History(str(run))
    for _ in range(lines - 1):
        history.append(metrics)
    started = time.perf_counter()
    history.append(metrics)
    return time.perf_counter() - started


def fixed_costs(data: str, work: Path) -> dict:
    job = width1_job(data, work)
    pairs = reader(data).batches
    costs = {"wait for the first batch (first shard read)": job["first_batch_seconds"],
             "checkpoint (save + report)": job["checkpoint_seconds"],
             "validation (100 pairs)": job["validation_seconds"],
             "metrics.jsonl rewrite (after 100 epochs)": metrics_write_seconds(job["runs"])}
    return {"job": job, "pairs": pairs, "costs": costs, "shard_reads": shard_reads_seconds(data)}


# ---- the report ------------------------------------------------------------------------------

def training(work: Path, job: bool = True) -> None:
    work.mkdir(parents=True, exist_ok=True)
    data = prepared(work)
    cpus = os.cpu_count()
    rounds = input_figures(data, work)
    print(f"\ntraining input: the real Recife train split ({reader(data).batches} pairs, {IMAGE_SIZE} px; "
          f"the thread in batches of 1, the processes of {GPU_BATCH_SIZE}), {cpus} CPUs, {ROUNDS} interleaved "
          "rounds (load average at each round's end: "
          + ", ".join(f"{r['load']:.1f}" for r in rounds) + ")")
    for name in (name for name in rounds[0] if name != "load"):
        figures = [r[name] for r in rounds]
        cpu = [f"{f['cpu_ms_per_pair']:.2f}" for f in figures if "cpu_ms_per_pair" in f]
        print(f"  {name:38s} " + ", ".join(f"{f['pairs_per_s']:7.1f}" for f in figures) + " pairs/s"
              + (f"; CPU {', '.join(cpu)} ms/pair" if cpu else ""))
    print(f"  start-up of the {cpus} decode processes (not in their rates): " + ", ".join(
        f"{r[f'stream, {cpus} decode processes']['start_s']:.2f}" for r in rounds) + " s")
    rates = [{name: figures["pairs_per_s"] for name, figures in r.items() if name != "load"} for r in rounds]
    for label, rate in [*((f"round {n}", rate) for n, rate in enumerate(rates, 1)),
                        ("best of each", {name: max(r[name] for r in rates) for name in rates[0]})]:
        ceiling = rate[f"plain {cpus} processes"]
        print(f"  {label}: stream with {cpus} processes {rate[f'stream, {cpus} decode processes'] / ceiling:.2f}x "
              f"the {cpus} plain processes (target >= 0.8), with 1 thread "
              f"{rate['stream, 1 decode thread'] / ceiling:.2f}x, process pool "
              f"{rate[f'process pool, {cpus} processes'] / ceiling:.2f}x; 1 plain process "
              f"{1000 / rate['plain 1 process']:.2f} ms/pair")
        print(f"    kept pairs (second epoch): stream with {cpus} processes "
              f"{rate[f'stream, {cpus} decode processes, kept'] / ceiling:.2f}x the {cpus} plain processes "
              f"({rate[f'stream, {cpus} decode processes, kept'] / rate[f'stream, {cpus} decode processes']:.2f}x "
              f"its first epoch), with 1 thread {rate['stream, 1 decode thread, kept'] / ceiling:.2f}x "
              f"({rate['stream, 1 decode thread, kept'] / rate['stream, 1 decode thread']:.2f}x its first epoch)")
    if job:
        report_fixed_costs(fixed_costs(data, work))


def report_fixed_costs(found: dict) -> None:
    job, costs, pairs = found["job"], found["costs"], found["pairs"]
    epoch_at_target = pairs / TARGET_PAIRS_PER_S
    total = sum(costs.values())
    print(f"\nper-epoch fixed costs, width-1 job (ngf 1, ndf 1, batch 1), epoch 2 of 2: its {pairs} pairs took "
          f"{job['epoch_seconds']:.1f} s ({job['pairs_per_s']:.0f} pairs/s, input wait "
          f"{job['input_wait_fraction']:.2f} of it)")
    for name, seconds in costs.items():
        print(f"  {name:45s} {seconds:6.2f} s")
    print(f"  {'shard reads of a whole epoch, alone':45s} {found['shard_reads']:6.2f} s (overlap the decoding: "
          "a reader thread reads the next shard)")
    print(f"  at {TARGET_PAIRS_PER_S:.0f} pairs/s an epoch of {pairs} pairs trains in {epoch_at_target:.1f} s: the "
          f"{total:.1f} s above would be {total / (epoch_at_target + total):.0%} of each epoch (arithmetic)")


def main() -> None:
    parser = argparse.ArgumentParser(description="the training input's ceiling, measured without the model")
    parser.add_argument("--work", default="/tmp/pix2pix-ceiling-bench", help="scratch folder")
    parser.add_argument("--no-job", action="store_true", help="leave out the width-1 job's fixed costs")
    parser.add_argument("--plain", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        data, part, parts, ready, go = args.plain
        print(json.dumps(plain_process(data, int(part), int(parts), ready, go)), flush=True)
        return
    if not (RECIFE / "train").is_dir():
        raise SystemExit(f"needs the real Recife pairs in {RECIFE}")
    training(Path(args.work), job=not args.no_job)


if __name__ == "__main__":
    main()
