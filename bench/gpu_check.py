"""The Ray-free core on a GPU: training step and generator throughput, bf16 and fp16, channels_last
on and off, compiled and not at the GPU batch, the translation actor's core (translate_canvases:
uint8 tiles in, class indices out, transfers included) at the GPU batch, the sample grid, a run
resumed across memory layouts, an fp16 run resumed from a bf16 checkpoint, and the training
input's decoding on the machine's CPUs (the share of the input stream that needs no OpenCV or
albumentations: Pillow's decode of each pair, in 1 and in all processes). One JSON line per
measurement, each with its own peak memory; under 5 minutes on one GPU (--quick: 90 s). Needs
torch, numpy, Pillow, safetensors and torchmetrics (no Ray, no Arrow, no albumentations, no
OpenCV, no mercantile), so it runs on a device machine as is:

    python3 bench/gpu_check.py [--quick]

Without CUDA it says so and runs the same checks on the CPU at toy sizes (64 px, ngf 8), in the
precisions the CPU has; those figures decide nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pix2pix.images import decode_image  # noqa: E402
from pix2pix.model.palette import RECIFE_PALETTE  # noqa: E402
from pix2pix.model.precision import native_precisions  # noqa: E402
from pix2pix.tiles.translator import Translator, default_micro_batch, translate_canvases  # noqa: E402
from pix2pix.training.step import Pix2Pix, TrainConfig, sample_grid  # noqa: E402

GPU_TILE_BATCH = 64  # jobs/translate.py's --batch-size default on a GPU
RECIFE_TRAIN = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "recife" / "train"
INPUT_PAIRS = 512  # encoded pairs decoded per figure of the input check


def emit(**fields) -> None:
    """One JSON line, with the peak GPU memory since the last line (then reset)."""
    if torch.cuda.is_available():
        fields["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pairs(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW batches as the reader delivers them: channels_last in memory (NHWC crops), made
    in pinned memory on a GPU host (``shards.channels_first``, ``shards.pinned_uint8``)."""
    images = [torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8) for _ in range(2)]
    if device.type == "cuda":
        images = [image.pin_memory() for image in images]
    source, target = (image.permute(0, 3, 1, 2) for image in images)
    return source, target


def training_step(config: TrainConfig, device: torch.device, warmup: int, steps: int, compiled: bool = False) -> dict:
    model = Pix2Pix(config, device)
    if compiled:
        model.generator, model.discriminator = torch.compile(model.generator), torch.compile(model.discriminator)
    source, target = pairs(config.batch_size, config.image_size, device)
    for _ in range(warmup):
        model.train_step(source, target)
    synchronize(device)
    started = time.perf_counter()
    losses = [model.train_step(source, target) for _ in range(steps)]
    synchronize(device)
    seconds = time.perf_counter() - started
    finite = all(math.isfinite(float(value)) for parts in losses for value in parts.values())
    return {"pairs_per_s": steps * config.batch_size / seconds, "ms_per_step": 1000 * seconds / steps,
            "losses_finite": finite}


def generator_throughput(config: TrainConfig, device: torch.device, micro_batch: int, repeats: int) -> float:
    model = Pix2Pix(config, device)
    source, _ = pairs(micro_batch, config.image_size, device)
    model.translate(source)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        model.translate(source)
    synchronize(device)
    return repeats * micro_batch / (time.perf_counter() - started)


def tile_core(config: TrainConfig, device: torch.device, tiles: int, repeats: int) -> dict:
    """The generator actor's work per call: uint8 canvases (host memory) -> class indices (host
    memory), through translate_canvases as the pipeline calls it."""
    model = Pix2Pix(config, device)
    translator = Translator(model.generator, device, config.precision, palette=RECIFE_PALETTE)
    canvases = list(torch.randint(0, 256, (tiles, config.image_size, config.image_size, 3), dtype=torch.uint8).numpy())
    names = [str(i) for i in range(tiles)]
    translate_canvases(translator, canvases, names, 0)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        outputs = translate_canvases(translator, canvases, names, 0)
    seconds = time.perf_counter() - started
    return {"tiles_per_s": repeats * tiles / seconds, "ms_per_call": 1000 * seconds / repeats,
            "micro_batch": translator.micro_batch, "output_shape": list(outputs[0].shape)}


def resume_across_layouts(config: TrainConfig, device: torch.device) -> dict:
    """A run saved in one memory layout resumed in the other (fused Adam on CUDA refuses
    optimizer state whose strides differ from its parameters')."""
    results = {}
    for saved, resumed in ((False, True), (True, False)):
        first = Pix2Pix(TrainConfig(**{**config.to_dict(), "channels_last": saved}), device)
        first.train_step(*pairs(config.batch_size, config.image_size, device))
        second = Pix2Pix(TrainConfig(**{**config.to_dict(), "channels_last": resumed}), device)
        second.load_state_dict(first.state_dict())
        parts = [second.train_step(*pairs(config.batch_size, config.image_size, device)) for _ in range(2)]
        results[f"{'nhwc' if saved else 'nchw'}_to_{'nhwc' if resumed else 'nchw'}"] = all(
            math.isfinite(float(v)) for p in parts for v in p.values())
    return results


def encoded_pairs(count: int) -> tuple[list[tuple[bytes, bytes]], str]:
    """(JPEG source, PNG target) pairs: the real Recife ones where ../shared is beside the checkout,
    else made up at their size and formats (256 px; smooth noise, which compresses like imagery)."""
    sources = sorted((RECIFE_TRAIN / "sat").glob("*.jpg"))[:count]
    if sources:
        return [(path.read_bytes(), (RECIFE_TRAIN / "map" / f"{path.stem}.png").read_bytes())
                for path in sources], "recife"
    from PIL import Image

    generator, made = torch.Generator().manual_seed(0), []
    for _ in range(min(count, 64)):
        coarse = torch.randint(0, 256, (1, 3, 32, 32), generator=generator, dtype=torch.uint8).float()
        image = torch.nn.functional.interpolate(coarse, size=256, mode="bilinear").byte()[0].permute(1, 2, 0).numpy()
        encoded = []
        for image_format in ("JPEG", "PNG"):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format=image_format)
            encoded.append(buffer.getvalue())
        made.append(tuple(encoded))
    return [made[i % len(made)] for i in range(count)], "synthetic"


def decode_pairs(pairs: list[tuple[bytes, bytes]]) -> int:
    for source, target in pairs:
        decode_image(source), decode_image(target)
    return len(pairs)


def input_decode(count: int) -> dict:
    """Pairs/s of Pillow decoding a pair (the project's decode_image), in 1 process and in one per
    CPU: ~55% of a pair's CPU in the input stream on the CPU machine (the rest, the resize, crop and
    flip, needs OpenCV and albumentations, which the device machine lacks)."""
    pairs, origin = encoded_pairs(count)
    decode_pairs(pairs[:8])
    started = time.perf_counter()
    decode_pairs(pairs)
    one = len(pairs) / (time.perf_counter() - started)
    cpus = os.cpu_count() or 1
    chunks = [pairs[i:i + 16] for i in range(0, len(pairs), 16)]
    with multiprocessing.get_context("spawn").Pool(cpus) as pool:
        pool.map(decode_pairs, chunks[:cpus])  # the processes' imports
        started = time.perf_counter()
        decoded = sum(pool.map(decode_pairs, chunks * 4))
        every = decoded / (time.perf_counter() - started)
    return {"pairs": origin, "cpus": cpus, "pairs_per_s_1_process": one, "pairs_per_s_all_cpus": every}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        emit(check="device", name=torch.cuda.get_device_name(), torch=torch.__version__,
             capability=".".join(map(str, torch.cuda.get_device_capability())))
        base = TrainConfig(**{"image_size": 256, "ngf": 64, "ndf": 64})  # the paper's widths
        batches, micro_batches, steps = ((1, 16) if args.quick else (1, 16, 64)), (16, 64), (5 if args.quick else 20)
        tiles, compile_batch = GPU_TILE_BATCH, None if args.quick else 16
    else:
        emit(check="device", name="cpu", torch=torch.__version__,
             note="no CUDA device: the same checks on the CPU at toy sizes; these figures decide nothing")
        base = TrainConfig(image_size=64, ngf=8, ndf=8)
        batches, micro_batches, steps = (1, 4), (4,), 3
        tiles, compile_batch = default_micro_batch(device), None
    precisions = sorted(native_precisions(device) - ({"fp32"} if cuda else set()))
    for precision in precisions:
        for channels_last in (True, False):
            for batch in batches:
                config = TrainConfig(**{**base.to_dict(), "precision": precision, "channels_last": channels_last,
                                        "batch_size": batch})
                emit(check="train_step", precision=precision, channels_last=channels_last, batch=batch,
                     **training_step(config, device, warmup=3, steps=steps))
            for micro_batch in micro_batches:
                config = TrainConfig(**{**base.to_dict(), "precision": precision, "channels_last": channels_last})
                emit(check="generator", precision=precision, channels_last=channels_last, micro_batch=micro_batch,
                     tiles_per_s=generator_throughput(config, device, micro_batch, repeats=steps))

    best = "bf16" if "bf16" in precisions else precisions[0]
    if compile_batch:
        config = TrainConfig(**{**base.to_dict(), "precision": best, "batch_size": compile_batch})
        emit(check="train_step", precision=best, channels_last=config.channels_last, batch=compile_batch,
             compiled=True, **training_step(config, device, warmup=3, steps=steps, compiled=True))
    for channels_last in (True, False):
        config = TrainConfig(**{**base.to_dict(), "precision": best, "channels_last": channels_last})
        emit(check="tile_core", precision=best, channels_last=channels_last, tiles=tiles,
             **tile_core(config, device, tiles, repeats=steps))
    emit(check="resume_across_layouts", **resume_across_layouts(
        TrainConfig(**{**base.to_dict(), "precision": best, "batch_size": 2}), device))

    emit(check="input_decode", **input_decode(INPUT_PAIRS if cuda else 64))

    model = Pix2Pix(TrainConfig(**{**base.to_dict(), "precision": precisions[0]}), device)
    source, target = pairs(4, base.image_size, device)
    grid = sample_grid(model, source.numpy(), target.numpy())
    emit(check="sample_grid", device=device.type, size=list(grid.size),
         ok=grid.size == (3 * base.image_size + 8, 4 * base.image_size + 12))

    if cuda and "bf16" in precisions:
        bf16 = Pix2Pix(TrainConfig(**{**base.to_dict(), "precision": "bf16"}), device)
        bf16.train_step(*pairs(1, base.image_size, device))
        fp16 = Pix2Pix(TrainConfig(**{**base.to_dict(), "precision": "fp16"}), device)
        fp16.load_state_dict(bf16.state_dict())  # its scaler state is empty
        parts = [fp16.train_step(*pairs(1, base.image_size, device)) for _ in range(3)]
        emit(check="resume_fp16_from_bf16", losses_finite=all(math.isfinite(float(v)) for p in parts
                                                              for v in p.values()),
             scale=float(fp16.scaler_g.get_scale()), step=fp16.step)
    else:
        emit(check="resume_fp16_from_bf16", skipped="needs a GPU with bf16 (fp16 is refused on a CPU); "
             "tests/test_training.py drives the scalers on the CPU instead")


if __name__ == "__main__":
    main()
