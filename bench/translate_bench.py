"""Translation benchmark: the Ray Data pipeline against a bare serial loop, memory at 1,000 vs
8,000 tiles, time per stage, the cost of --context. Prints ratios; run on an idle machine.

    python bench/translate_bench.py                      # ~10-15 min on 2 cores
    python bench/translate_bench.py --checkpoint RUN_DIR # a trained generator instead of a fitted one

Inputs are real aerial tiles (../shared/data/recife: the three scenes sliced into 256 px XYZ
tiles, and the 1,600 train/val tiles for the memory runs). Without --checkpoint, the
generators are fitted for a few L1 steps towards the real maps, so that their outputs are
map-like (PNG-encoding a fresh generator's texture is far slower than encoding maps).
Each measured run is a child process; memory is the summed PSS of its whole process tree
(driver, Ray's daemons and workers), sampled every 2 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import posixpath
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIFE = REPO.parent / "shared" / "data" / "recife"
TILE = 256
SCENE_ZOOM = 17


# ---- inputs and generators -------------------------------------------------------------------

def slice_scenes(root: Path, columns_limit: int | None = None, copies: int = 2) -> int:
    """The three 4800x1890 scenes as 256 px XYZ tiles (18x7 each), stacked along y; ``copies``
    zoom levels of them, so that start-up is a small part of a run."""
    import numpy as np
    from PIL import Image

    from pix2pix.images import encode_image

    count = 0
    for index, scene_path in enumerate(sorted((RECIFE / "scenes").glob("*.jpg"))):
        scene = np.asarray(Image.open(scene_path).convert("RGB"))
        rows, columns = scene.shape[0] // TILE, min(scene.shape[1] // TILE, columns_limit or 10**6)
        for column in range(columns):
            for row in range(rows):
                tile = np.ascontiguousarray(scene[row * TILE:(row + 1) * TILE, column * TILE:(column + 1) * TILE])
                data = encode_image(tile, "jpeg", quality=90)
                for copy in range(copies):
                    path = root / str(SCENE_ZOOM + copy) / str(column) / f"{index * (rows + 2) + row}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    count += 1
    return count


def many_tiles(root: Path, count: int) -> None:
    """``count`` tiles in a 100-column XYZ layout, cycling over the 1,600 real tiles (hard links)."""
    sources = sorted(glob.glob(str(RECIFE / "*" / "sat" / "*.jpg")))
    for index in range(count):
        path = root / "16" / str(index % 100) / f"{index // 100}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[index % len(sources)], path)


def fitted_export(directory: Path, ngf: int, depth: int, steps: int) -> str:
    """A generator fitted with L1 for a few steps on real pairs, exported."""
    import numpy as np
    import torch
    from PIL import Image

    from pix2pix import checkpoint, storage
    from pix2pix.model.export import ExportInfo
    from pix2pix.model.networks import GeneratorConfig, UNetGenerator

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sources = sorted(glob.glob(str(RECIFE / "train" / "sat" / "*.jpg")))[:200]
    config = GeneratorConfig(ngf=ngf, depth=depth)
    generator = UNetGenerator(config)
    optimizer = torch.optim.Adam(generator.parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        batch = [sources[i] for i in rng.integers(len(sources), size=4)]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in batch]
        maps = [np.asarray(Image.open(p.replace("/sat/", "/map/")[:-4] + ".png").convert("RGB")) for p in batch]
        x, y = (torch.from_numpy(np.stack(side)).permute(0, 3, 1, 2).float() / 127.5 - 1 for side in (images, maps))
        loss = (generator(x) - y).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint.export_generator(generator.eval(), ExportInfo(config, image_size=TILE),
                                storage.resolve(str(directory)))
    return str(directory)


# ---- the two contestants (run as children) ---------------------------------------------------

def bare_loop(input_dir: str, output_dir: str, checkpoint_uri: str, threads: int) -> dict:
    """read, decode, generator, encode, write: serially, one micro-batch of tiles at a time
    (the generator sees the same batches as in the pipeline), one process."""
    import numpy as np

    from pix2pix import checkpoint, storage
    from pix2pix.distributed.translate_stages import RGB_PNG_LEVEL
    from pix2pix.images import decode_image, encode_image
    from pix2pix.model.precision import resolve_precision, set_threads
    from pix2pix.tiles.keys import output_key
    from pix2pix.tiles.translator import Translator

    started = time.perf_counter()
    set_threads(threads)
    precision = resolve_precision("auto", "cpu")
    generator, _ = checkpoint.load_generator(checkpoint_uri)
    translator = Translator(generator, "cpu", precision)
    root, output = storage.resolve(input_dir), storage.resolve(output_dir)
    stages = dict.fromkeys(("read", "decode", "model", "encode", "write"), 0.0)
    paths = list(storage.list_files(root))
    first = None
    for start in range(0, len(paths), translator.micro_batch):
        chunk = paths[start:start + translator.micro_batch]
        clock = time.perf_counter()
        data = [storage.read_bytes(root.filesystem, path) for path in chunk]
        clock = _lap(stages, "read", clock)
        images = np.stack([decode_image(item) for item in data])
        clock = _lap(stages, "decode", clock)
        translated = translator(images)
        clock = _lap(stages, "model", clock)
        encoded = [encode_image(np.ascontiguousarray(image), "png", png_level=RGB_PNG_LEVEL) for image in translated]
        clock = _lap(stages, "encode", clock)
        for path, item in zip(chunk, encoded):
            key = output_key(posixpath.relpath(path, root.path), "png")
            storage.write_bytes(output.filesystem, posixpath.join(output.path, key), item)
        _lap(stages, "write", clock)
        first = first or (time.perf_counter(), start + len(chunk))
    finished = time.perf_counter()
    seconds = finished - started
    tiles = len(paths)
    return {"tiles": tiles, "seconds": seconds, "tiles_per_s": tiles / seconds, "precision": precision,
            "startup_s": first[0] - started, "steady_tiles_per_s": (tiles - first[1]) / (finished - first[0]),
            "micro_batch": translator.micro_batch,
            "ms_per_tile": {stage: 1000 * total / tiles for stage, total in stages.items()}}


def precision_probe(checkpoint_uri: str, threads: int) -> dict:
    """ms per tile of the bare generator, fp32 vs bf16 autocast (with channels_last)."""
    import numpy as np

    from pix2pix import checkpoint
    from pix2pix.model.precision import cpu_has_native_bf16, set_threads
    from pix2pix.tiles.translator import Translator

    set_threads(threads)
    generator, _ = checkpoint.load_generator(checkpoint_uri)
    images = np.random.default_rng(0).integers(0, 256, (16, TILE, TILE, 3), dtype=np.uint8)
    result = {"native_bf16": cpu_has_native_bf16()}
    for precision in ("fp32", "bf16"):
        translator = Translator(generator, "cpu", precision)
        translator(images[:8])  # warm-up
        clock = time.perf_counter()
        translator(images)
        result[precision] = 1000 * (time.perf_counter() - clock) / len(images)
    return result


def _lap(stages: dict, stage: str, clock: float) -> float:
    now = time.perf_counter()
    stages[stage] += now - clock
    return now


def pipeline(input_dir: str, output_dir: str, checkpoint_uri: str, threads: int, context: int,
             actors: int | None) -> dict:
    import ray

    from pix2pix.distributed.translate import TranslateOptions, translate

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    summary = translate(TranslateOptions(input=input_dir, output=output_dir, checkpoint=checkpoint_uri,
                                         threads=threads, context=context, min_actors=actors, max_actors=actors))
    ray.shutdown()
    return summary


# ---- the parent: children, memory sampling, the report ---------------------------------------

def process_tree_pss(root_pid: int) -> int:
    """Summed proportional set size (bytes) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, pending = 0, [root_pid]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def run_sampled(command: list[str], sample, interval: float, what: str, **popen) -> dict:
    """Run ``command`` to its end, calling ``sample(pid)`` every ``interval`` s meanwhile; the
    JSON of its last line of output."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **popen)

    def sampling():
        while process.poll() is None:
            sample(process.pid)
            time.sleep(interval)

    sampler = threading.Thread(target=sampling, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{what} failed with exit code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def child(kind: str, *args) -> dict:
    peak = [0]

    def sample(pid: int) -> None:
        peak[0] = max(peak[0], process_tree_pss(pid))

    # every 2 s: reading smaps is not free, and the runs are minutes long
    result = run_sampled([sys.executable, __file__, "--child", kind, *map(str, args)], sample, 2, f"{kind} run")
    result["peak_pss_mib"] = peak[0] / 2**20
    return result


def run_child(kind: str, args: list[str]) -> None:
    input_dir, output_dir, checkpoint_uri, threads = args[0], args[1], args[2], int(args[3])
    if kind == "bare":
        result = bare_loop(input_dir, output_dir, checkpoint_uri, threads)
    elif kind == "precision":
        result = precision_probe(checkpoint_uri, threads)
    else:
        result = pipeline(input_dir, output_dir, checkpoint_uri, threads, int(args[4]), int(args[5]) or None)
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="translation benchmark")
    parser.add_argument("--work", default="/tmp/pix2pix-translate-bench", help="scratch folder (recreated)")
    parser.add_argument("--checkpoint", help="a trained generator (default: fit one for --fit-steps)")
    parser.add_argument("--fit-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the bare loop")
    parser.add_argument("--small-ngf", type=int, default=8, help="generator width for the memory runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: few tiles, small generators")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return run_child(args.child, rest)
    if not (RECIFE / "scenes").is_dir():
        raise SystemExit(f"needs the real tiles in {RECIFE}")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    scene_tiles = slice_scenes(work / "scenes", columns_limit=3 if args.quick else None, copies=1 if args.quick else 2)
    few, many = (100, 400) if args.quick else (1000, 8000)
    many_tiles(work / "many-few", few)
    many_tiles(work / "many-many", many)
    full_ngf = 8 if args.quick else 64
    full = args.checkpoint or fitted_export(work / "full", ngf=full_ngf, depth=8, steps=args.fit_steps)
    small = fitted_export(work / "small", ngf=args.small_ngf, depth=8, steps=args.fit_steps)
    print(f"inputs and generators ready in {time.monotonic() - started:.0f} s", flush=True)

    t = args.threads
    precision = child("precision", "-", "-", full, t)
    bare = child("bare", work / "scenes", work / "out-bare", full, t)
    piped = child("pipeline", work / "scenes", work / "out-pipeline", full, 1, 0, 0)  # the defaults
    one = child("pipeline", work / "scenes", work / "out-one", full, t, 0, 1)
    context = child("pipeline", work / "scenes", work / "out-context", full, 1, 128, 0)
    small_few = child("pipeline", work / "many-few", work / "out-few", small, 1, 0, 0)
    small_many = child("pipeline", work / "many-many", work / "out-many", small, 1, 0, 0)

    print(f"\n{scene_tiles} real 256 px tiles (recife scenes, twice), JPEG in, PNG out, unet depth 8 ngf {full_ngf}, "
          f"{bare['precision']}, {t} torch threads")
    print("  tiles/s: end to end (start-up s) | steady, after the first tiles are written | peak memory")
    rows = [(f"bare serial loop, {t} threads", bare), (f"pipeline (default: {t} actors x 1 thread)", piped),
            (f"pipeline, 1 actor x {t} threads", one), ("pipeline --context 128 (default)", context)]
    for name, result in rows:
        steady = result["steady_tiles_per_s"] or result["tiles_per_s"]  # None: all written in one go
        print(f"  {name:34s} {result['tiles_per_s']:6.2f} ({result['startup_s'] or 0:4.1f} s) | "
              f"{steady:6.2f} | {result['peak_pss_mib']:6.0f} MiB   "
              f"ratio to bare: {result['tiles_per_s'] / bare['tiles_per_s']:.2f}x | "
              f"{steady / bare['steady_tiles_per_s']:.2f}x")
    print(f"  --context costs {piped['tiles_per_s'] / context['tiles_per_s']:.2f}x the time (end to end) and "
          f"reads {context['read_ratio']}x the tiles' bytes; target for the pipeline: >= 0.9x")
    print(f"  generator alone: fp32 {precision['fp32']:.0f} ms/tile, bf16 autocast {precision['bf16']:.0f} ms/tile "
          f"(native bf16 on this CPU: {precision['native_bf16']}; auto picks {bare['precision']})")
    print("  time per stage, bare loop (ms/tile): " +
          ", ".join(f"{stage} {ms:.1f}" for stage, ms in bare["ms_per_tile"].items()))
    print(f"\nmemory (default pipeline), unet depth 8 ngf {args.small_ngf} (smaller, so that {many:,} tiles fit "
          "the time budget):")
    print(f"  {few:>5,} tiles  {small_few['tiles_per_s']:6.2f} tiles/s   peak {small_few['peak_pss_mib']:6.0f} MiB")
    print(f"  {many:>5,} tiles  {small_many['tiles_per_s']:6.2f} tiles/s   peak {small_many['peak_pss_mib']:6.0f} MiB"
          f"   ratio {small_many['peak_pss_mib'] / small_few['peak_pss_mib']:.2f}x (target <= 1.25x)")
    print(f"\nwhole benchmark: {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
