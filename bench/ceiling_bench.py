"""The ceiling a GPU would hit: the jobs with the model's cost taken out, against what the same
cores do for the same work in plain processes (issue "GPU scale"). Run on an idle machine:

    python bench/ceiling_bench.py                # translation and training, ~10 min on 2 cores
    python bench/ceiling_bench.py --only translate

Translation: the three Recife scenes in ../shared sliced into 256 px XYZ tiles, --copies times
under other keys (8: 3,024 tiles), translated by an export of width ngf 1 (depth 8, resize
decoder, the Recife palette: the same pipeline, formats and outputs as a real model, ~4,000x
fewer FLOPs than ngf 64). Reported, each over the steady window (10% to 90% of the tiles
written):
- tiles/s of jobs/translate.py (default flags, then --batch-size 64, the GPU batch) and of the
  plain loop below in 1 and in N processes (N = the CPUs);
- CPU ms per tile outside the generator's forward: all processes of the job (driver, Ray's
  daemons and workers, from /proc) minus the forward's own cost (generator + class indices, as
  the N-process loop measured it), over the steady window (what a long run pays a tile), and
  over the whole run less a rerun with every tile done (start-up, imports and listing taken
  out; it moves with which helper processes Ray starts in either run);
- when the last input shard was planned, as a share of the run.
Targets (2 cores, idle): job >= 0.8x the N-process loop at the GPU batch, >= 0.6x at the CPU
batch; <= 3 ms per tile outside the forward at the GPU batch; planning done in the first quarter.

The plain loop (``plain_loop``) is the baseline: keep its code as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.translate_bench import RECIFE, run_sampled, slice_scenes  # noqa: E402

MICRO_BATCH = 8  # the CPU's generator call
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- the baseline: one plain process, fixed once written -------------------------------------

def plain_loop(input_dir: str, output_dir: str, export: str, part: int, parts: int, go: str) -> dict:
    """read, decode, generator (micro-batch 8) + class indices, paletted PNG, write; every
    ``parts``-th tile from ``part``. Waits for the file ``go`` after loading, so that N of these
    start their work together."""
    import numpy as np

    from pix2pix import checkpoint, storage
    from pix2pix.images import decode_image
    from pix2pix.model.palette import encode_paletted_png
    from pix2pix.model.precision import set_threads
    from pix2pix.tiles.keys import output_key
    from pix2pix.tiles.translator import Translator

    set_threads(1)
    generator, info = checkpoint.load_generator(export)
    translator = Translator(generator, "cpu", "fp32", micro_batch=MICRO_BATCH, palette=info.palette)
    root, output = storage.resolve(input_dir), storage.resolve(output_dir)
    paths = sorted(storage.list_files(root))[part::parts]
    while not os.path.exists(go):
        time.sleep(0.01)
    started, marks, forward = time.time(), [], 0.0
    for start in range(0, len(paths), MICRO_BATCH):
        chunk = paths[start:start + MICRO_BATCH]
        images = np.stack([decode_image(storage.read_bytes(root.filesystem, path)) for path in chunk])
        clock = time.thread_time()
        translated = translator.classes(images)
        forward += time.thread_time() - clock
        for path, classes in zip(chunk, translated):
            key = output_key(posixpath.relpath(path, root.path), "png")
            storage.write_bytes(output.filesystem, posixpath.join(output.path, key),
                                encode_paletted_png(classes, info.palette))
        marks.append((time.time(), start + len(chunk)))
    return {"tiles": len(paths), "started": started, "marks": marks, "forward_cpu_s": forward}


def forward_ms(export: str, micro_batch: int = MICRO_BATCH, tiles: int = 256) -> float:
    """ms per tile of the generator's forward + class indices alone, one thread, real tiles."""
    import numpy as np

    from pix2pix import checkpoint
    from pix2pix.images import decode_image
    from pix2pix.model.precision import set_threads
    from pix2pix.tiles.translator import Translator

    set_threads(1)
    generator, info = checkpoint.load_generator(export)
    translator = Translator(generator, "cpu", "fp32", micro_batch=micro_batch, palette=info.palette)
    sources = sorted((RECIFE / "val" / "sat").glob("*.jpg"))[:tiles]
    images = np.stack([decode_image(path.read_bytes()) for path in sources])
    translator.classes(images[:micro_batch])  # warm-up
    clock = time.perf_counter()
    translator.classes(images)
    return 1000 * (time.perf_counter() - clock) / len(images)


def width1_export(directory: Path) -> str:
    import torch

    from pix2pix import checkpoint, storage
    from pix2pix.model.export import ExportInfo
    from pix2pix.model.networks import GeneratorConfig, UNetGenerator
    from pix2pix.model.palette import RECIFE_PALETTE

    torch.manual_seed(0)
    config = GeneratorConfig(ngf=1, depth=8, upsample="resize")
    checkpoint.export_generator(UNetGenerator(config).eval(), ExportInfo(config, image_size=256,
                                precision="fp32", palette=dict(RECIFE_PALETTE)), storage.resolve(str(directory)))
    return str(directory)


# ---- measuring a process tree ----------------------------------------------------------------

DAEMONS = "Ray daemons (raylet, GCS, dashboard)"
ROLES = (("GeneratorStage", "generator actors"), ("ReadStage", "read actors"), ("WriteStage", "write actors"),
         ("ray::", "other Ray workers (planning, Ray Data's helpers)"))


def tree_cpu_seconds(root_pid: int, seen: dict | None = None) -> dict[str, float]:
    """utime + stime of a process and every live descendant, summed by role (from each
    process's command line: Ray names its workers after what they run). ``seen`` keeps each
    process's last figure (pid -> (role, seconds)), for processes that exit before the end."""
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    by_role: dict[str, float] = {}
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        # A process's role from its first readable command line: an ending one has none left.
        role = "driver" if pid == root_pid else _role(pid) or (seen or {}).get(pid, (DAEMONS,))[0]
        by_role[role] = by_role.get(role, 0.0) + times.get(pid, 0.0)
        if seen is not None and pid in times:
            seen[pid] = (role, times[pid])
    return by_role


def _role(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().decode(errors="replace")
    except OSError:
        return None
    if not command:  # a process ending, or not yet started
        return None
    return next((role for marker, role in ROLES if marker in command), DAEMONS)


def count_files(folder: Path) -> int:
    count, pending = 0, [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.name.endswith(".png"):
                        count += 1
        except FileNotFoundError:
            pass
    return count


def steady_window(samples: list[tuple[float, int, dict]], total: int) -> dict:
    """(time, tiles written, CPU s by role) samples -> rate and CPU per tile between 10% and 90%
    written."""
    low = next(s for s in samples if s[1] >= 0.1 * total)
    high = next(s for s in samples if s[1] >= 0.9 * total)
    tiles, seconds = high[1] - low[1], high[0] - low[0]
    if tiles == 0 or seconds <= 0:
        raise SystemExit(f"{total} tiles were written too fast to measure a steady rate: use more --copies")
    roles = {role: 1000 * (high[2].get(role, 0.0) - low[2].get(role, 0.0)) / tiles for role in high[2] | low[2]}
    return {"tiles_per_s": tiles / seconds, "cpu_ms_per_tile": sum(roles.values()), "roles": roles}


def run_job(repo: Path, input_dir: Path, output_dir: Path, export: str, total: int, *flags: str) -> dict:
    """jobs/translate.py of ``repo`` (its workers import that checkout too), then again over its
    own output, every tile done: the CPU of the first run less that of the second is what the
    tiles cost, without Ray's start-up, imports and listing."""
    shutil.rmtree(output_dir, ignore_errors=True)
    job = _job(repo, input_dir, output_dir, export, total, *flags)
    again = _job(repo, input_dir, output_dir, export, total, *flags)
    if again["summary"]["skipped"] != total:
        raise SystemExit(f"the rerun skipped {again['summary']['skipped']} of {total} tiles")
    cpu = {role: job["cpu_s"].get(role, 0.0) - again["cpu_s"].get(role, 0.0) for role in job["cpu_s"]}
    return {**job, "run_ms_per_tile": 1000 * sum(cpu.values()) / total,
            "run_roles": {role: 1000 * seconds / total for role, seconds in cpu.items()}}


def _job(repo: Path, input_dir: Path, output_dir: Path, export: str, total: int, *flags: str) -> dict:
    command = [sys.executable, str(repo / "jobs" / "translate.py"), "--input", str(input_dir),
               "--output", str(output_dir), "--checkpoint", export, *flags]
    started = time.monotonic()
    samples: list[tuple[float, int, dict]] = []
    seen: dict[int, tuple[str, float]] = {}

    def sample(pid: int) -> None:  # by role over every process seen: one that ended in the window counts too
        tree_cpu_seconds(pid, seen)
        by_role: dict[str, float] = {}
        for role, seconds in seen.values():
            by_role[role] = by_role.get(role, 0.0) + seconds
        samples.append((time.monotonic(), count_files(output_dir), by_role))

    summary = run_sampled(command, sample, 0.5, f"translate {' '.join(flags)}", cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    window = steady_window(samples, total) if summary["written"] else {}
    cpu: dict[str, float] = {}
    for role, seconds in seen.values():
        cpu[role] = cpu.get(role, 0.0) + seconds
    return {**window, "summary": summary, "seconds": time.monotonic() - started, "cpu_s": cpu}


def run_plain(input_dir: Path, output_dir: Path, export: str, processes: int) -> dict:
    shutil.rmtree(output_dir, ignore_errors=True)
    go = output_dir.parent / f".go-{processes}"
    go.unlink(missing_ok=True)
    children = [subprocess.Popen([sys.executable, __file__, "--plain", str(input_dir), str(output_dir), export,
                                  str(part), str(processes), str(go)], stdout=subprocess.PIPE, text=True)
                for part in range(processes)]
    time.sleep(1)
    while not _all_loaded(children):
        if any(child.poll() is not None for child in children):
            raise SystemExit("a plain-loop process ended before its start")
    go.touch()
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    # Merge the processes' marks into one (time, tiles written) curve.
    events = sorted((t, n - previous) for result in results
                    for (t, n), previous in zip(result["marks"], [0] + [n for _, n in result["marks"]]))
    total, written, curve = sum(r["tiles"] for r in results), 0, []
    for t, n in events:
        written += n
        curve.append((t, written, {}))
    window = steady_window(curve, total)
    return {"tiles_per_s": window["tiles_per_s"], "tiles": total,
            "forward_ms": 1000 * sum(r["forward_cpu_s"] for r in results) / total}


def _all_loaded(children) -> bool:
    """The children load torch and the export before waiting: give them until their CPU use stops."""
    before = sum(sum(tree_cpu_seconds(child.pid).values()) for child in children)
    time.sleep(0.5)
    return sum(sum(tree_cpu_seconds(child.pid).values()) for child in children) - before < 0.05


# ---- the report ------------------------------------------------------------------------------

def translation(work: Path, copies: int, repos: list[Path]) -> None:
    scenes = work / "scenes"
    if not scenes.is_dir():
        slice_scenes(scenes, copies=copies)
    total = sum(1 for _ in scenes.rglob("*.jpg"))
    export = width1_export(work / "width1")
    cpus = os.cpu_count()
    forward = forward_ms(export)
    one = run_plain(scenes, work / "out-plain-1", export, 1)
    many = run_plain(scenes, work / "out-plain-n", export, cpus)
    jobs = {}
    for repo in repos:
        name = "" if repo == REPO else f" ({repo})"
        jobs[f"CPU batch (8){name}"] = run_job(repo, scenes, work / "out-job-8", export, total)
        jobs[f"GPU batch (64){name}"] = run_job(repo, scenes, work / "out-job-64", export, total, "--batch-size", "64")
    print(f"\ntranslation: {total} real 256 px tiles ({copies} copies of the 3 scenes), width-1 export "
          f"(ngf 1, depth 8, resize, Recife palette), fp32, {cpus} CPUs {cpu_flags()}")
    print(f"  forward + class indices: {forward:.2f} ms/tile alone (1 thread, micro-batch {MICRO_BATCH}), "
          f"{many['forward_ms']:.2f} in the {cpus}-process loop (its CPU time, beside the other processes)")
    print(f"  plain loop, 1 process:          {one['tiles_per_s']:7.1f} tiles/s (steady)")
    print(f"  plain loop, {cpus} processes:        {many['tiles_per_s']:7.1f} tiles/s (steady)")
    for name, job in jobs.items():
        summary = job["summary"]
        planned = summary.get("planning_s")
        planned_share = f"{planned / summary['seconds']:.2f}" if planned is not None else "n/a"
        print(f"  jobs/translate.py, {name}: {job['tiles_per_s']:7.1f} tiles/s steady "
              f"({job['tiles_per_s'] / many['tiles_per_s']:.2f}x the {cpus}-process loop; the job's own figure "
              f"{summary['steady_tiles_per_s']}); {summary['written']} written in {summary['seconds']} s, start-up "
              f"{summary['startup_s']} s, last shard planned at {planned} s ({planned_share} of the run)")
        print(f"      CPU per tile in the steady window: {job['cpu_ms_per_tile']:.2f} ms, "
              f"{job['cpu_ms_per_tile'] - many['forward_ms']:.2f} outside the forward; by role: "
              + by_role(job["roles"]))
        print(f"      CPU per tile over the run less a rerun with every tile done: {job['run_ms_per_tile']:.2f} ms, "
              f"{job['run_ms_per_tile'] - many['forward_ms']:.2f} outside the forward; by role: "
              + by_role(job["run_roles"]))
    print("  targets: >= 0.8x at the GPU batch, >= 0.6x at the CPU batch; <= 3 ms/tile outside the forward at "
          "the GPU batch; planning within the first 0.25 of the run")


def by_role(roles: dict[str, float]) -> str:
    return ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(roles.items(), key=lambda item: -item[1]))


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as handle:
        flags = set(handle.read().split())
    native = sorted(flag for flag in flags if flag.startswith("amx") or flag == "avx512_bf16")
    return f"(flags: {', '.join(native) or 'no amx, no avx512_bf16'})"


def main() -> None:
    parser = argparse.ArgumentParser(description="the GPU ceiling, measured without the model")
    parser.add_argument("--work", default="/tmp/pix2pix-ceiling-bench", help="scratch folder")
    parser.add_argument("--copies", type=int, default=8, help="copies of the three scenes (8: 3,024 tiles)")
    parser.add_argument("--only", choices=("translate", "train"))
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="also run the jobs of another checkout (e.g. a git worktree of an earlier commit)")
    parser.add_argument("--plain", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        input_dir, output_dir, export, part, parts, go = args.plain
        print(json.dumps(plain_loop(input_dir, output_dir, export, int(part), int(parts), go)), flush=True)
        return
    if not (RECIFE / "scenes").is_dir():
        raise SystemExit(f"needs the real scenes in {RECIFE}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "translate"):
        translation(work, args.copies, [*args.compare, REPO])
    if args.only in (None, "train"):
        from bench.ceiling_training import training

        training(work)


if __name__ == "__main__":
    main()
