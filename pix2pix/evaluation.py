"""Evaluating a generator on one split: the pix2pix maps benchmark metrics, palette IoU, a grid.

Reads a prepared dataset (``DATA/<split>/*.parquet``) or raw pairs (``DATA/<split>/sat/`` +
``map/``, or side-by-side images), locally or on S3. One process, plain PyTorch: no Ray.

Metrics are those of ``pix2pix.model.metrics``: L1 on [-1, 1], PSNR and SSIM on [0, 1], RMSE and
pixel accuracy (max |dR|, |dG|, |dB| < 5) on 0..255, at the model's image size. With a palette,
each pixel's class is its nearest palette colour; IoU per class and their mean.
"""

from __future__ import annotations

import io
import math
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch

from pix2pix import checkpoint, storage
from pix2pix.errors import JobError
from pix2pix.hashing import stable_seed
from pix2pix.images import IMAGE_SUFFIXES, BadImage, image_grid
from pix2pix.model.inference import memory_format, run_generator
from pix2pix.model.metrics import MetricAccumulator, bootstrap_iou, class_report, confusion_counts, intersections_unions
from pix2pix.model.palette import snap_to_palette
from pix2pix.model.precision import inference_precision, set_threads
from pix2pix.model.ranges import to_model_range, to_uint8
from pix2pix.palette_files import load_palette
from pix2pix.training.augmentation import augment_pair, paired_transform
from pix2pix.training.pairs import SPLITS, decode_pair, discover_pairs

GRID_ROWS = 6
BATCH_SIZE = 8
PALETTE_TOLERANCE = 5  # a target pixel further than this from every palette colour is off-palette
SKIPPED_LISTED = 20

Palette = Mapping[str, tuple[int, int, int]]
Translate = Callable[[torch.Tensor, list[str]], torch.Tensor]


class EvaluationError(JobError):
    """Nothing to evaluate: data or split missing or empty."""


# ---- palette -------------------------------------------------------------------------------

def off_palette_pixels(targets: torch.Tensor, palette: Palette) -> int:
    """Target pixels (uint8 NCHW) whose nearest palette colour is still PALETTE_TOLERANCE or more away."""
    distance = (targets.short() - snap_to_palette(targets, palette).short()).abs().amax(dim=1)
    return int((distance >= PALETTE_TOLERANCE).sum())


# ---- reading a split -----------------------------------------------------------------------

@dataclass
class SplitSource:
    """The pairs of one split, sorted by key; ``records()`` yields shard-schema rows."""

    kind: str  # "prepared" or "raw"
    keys: list[str]
    records: Callable[[], Iterator[dict]]
    skipped: list[str] = field(default_factory=list)


def open_split(data_uri: str, split: str = "val", direction: str = "AtoB", source_dir: str = "sat",
               target_dir: str = "map", limit: int | None = None) -> SplitSource:
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    data = storage.resolve(data_uri)
    if not storage.is_dir(data):
        raise EvaluationError(f"data not found or not a folder: {data_uri}")
    folder = data.join(split)
    if not storage.is_dir(folder):
        raise EvaluationError(
            f"no {split}/ in {data_uri}: expected {split}/*.parquet (jobs/prepare.py) "
            f"or raw pairs in {split}/{source_dir}/ and {split}/{target_dir}/")
    shards = sorted(storage.list_files(folder, (".parquet",)))
    if shards:
        source = _prepared_split(folder, shards, limit)
    else:
        source = _raw_split(data, folder, direction, source_dir, target_dir, split, limit)
    if not source.keys:
        detail = f" ({'; '.join(source.skipped[:3])})" if source.skipped else ""
        raise EvaluationError(f"no image pairs in {folder.uri}{detail}")
    return source


def _prepared_split(folder: storage.Location, shards: list[str], limit: int | None) -> SplitSource:
    filesystem = folder.filesystem
    keys = []
    with storage.store_errors():
        for path in shards:
            keys += pq.read_table(path, columns=["key"], filesystem=filesystem).column("key").to_pylist()
    keys = sorted(keys)[:limit]

    def records() -> Iterator[dict]:
        wanted = set(keys)
        for path in shards:
            with storage.store_errors(), filesystem.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=64):
                    yield from (row for row in batch.to_pylist() if row["key"] in wanted)

    return SplitSource("prepared", keys, records)


def _raw_split(data: storage.Location, folder: storage.Location, direction: str, source_dir: str,
               target_dir: str, split: str, limit: int | None) -> SplitSource:
    relative = sorted(posixpath.relpath(path, data.path) for path in storage.list_files(folder, IMAGE_SUFFIXES))
    specs, skipped = discover_pairs(relative, "auto", source_dir, target_dir, direction)
    specs = [spec for spec in specs if spec.split == split][:limit]

    def read(path: str | None) -> bytes | None:
        return None if path is None else storage.read_bytes(data.filesystem, posixpath.join(data.path, path))

    def records() -> Iterator[dict]:
        for spec in specs:
            record = {"key": spec.key, "layout": spec.layout, "source_side": spec.source_side}
            try:
                record.update(image=read(spec.image_path), source=read(spec.source_path),
                              target=read(spec.target_path))
            except OSError as error:
                record["error"] = storage.redact(str(error))
            yield record

    return SplitSource("raw", [spec.key for spec in specs], records,
                       [f"{entry.path}: {entry.reason}" for entry in skipped])


# ---- running the generator -----------------------------------------------------------------

def pair_seed(key: str, seed: int) -> int:
    return stable_seed(f"{seed}:{key}")


def make_translate(generator: torch.nn.Module, device: torch.device, precision: str,
                   paper_mode: bool = False, seed: int = 0) -> Translate:
    """uint8 NCHW sources (+ their keys) -> generated images as float32 NCHW in [-1, 1], on the CPU.

    Default: eval mode (dropout off, batch norm with running statistics). ``paper_mode``: the
    pix2pix paper's test setting, train mode (dropout on, batch norm with the statistics of
    the image itself) one image at a time, seeded by the pair's key so a pair's output does
    not depend on which pairs come before it.
    """
    layout = memory_format(None, device, precision)
    generator = generator.to(device, memory_format=layout).eval()
    if paper_mode:  # dropout and batch statistics; a palette generator still draws one class per pixel
        for module in generator.modules():
            if isinstance(module, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)):
                module.train()

    @torch.no_grad()  # not inference_mode: train-mode batch norm updates its running buffers
    def translate(sources: torch.Tensor, keys: list[str]) -> torch.Tensor:
        seeds = [pair_seed(key, seed) for key in keys] if paper_mode else None
        return run_generator(generator, sources, device, precision, layout, seeds).cpu()

    return translate


# ---- evaluating ----------------------------------------------------------------------------

@dataclass
class Evaluation:
    metrics: dict[str, float]  # MetricAccumulator.summarize
    pairs: int
    skipped: list[str]
    grid_rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]  # key, source, generated, target (HWC)
    target_off_palette: float | None
    pair_confusions: torch.Tensor | None = None  # (pairs, K, K) pixels by target and predicted class


def evaluate_records(records: Iterable[dict], translate: Translate, image_size: int,
                     batch_size: int = BATCH_SIZE, palette: Palette | None = None,
                     grid_count: int = GRID_ROWS) -> Evaluation:
    """Decode shard-schema rows, translate them in batches and accumulate the metrics.

    Pairs that cannot be read or decoded are skipped and listed. Pairs whose size is not
    ``image_size`` are resized as validation during training does.
    """
    accumulator = MetricAccumulator(palette=palette)
    resize = paired_transform(image_size, train=False)
    skipped: list[str] = []
    grid_rows: list = []
    counts = {"pairs": 0, "off_palette": 0, "pixels": 0}
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []
    pair_confusions: list[torch.Tensor] = []  # per pair, for the bootstrap intervals

    def flush() -> None:
        nonlocal grid_rows
        keys = [key for key, _, _ in batch]
        sources = torch.from_numpy(np.stack([s for _, s, _ in batch])).permute(0, 3, 1, 2)
        targets = torch.from_numpy(np.stack([t for _, _, t in batch])).permute(0, 3, 1, 2)
        generated = translate(sources, keys)
        accumulator.update(generated, to_model_range(targets))
        counts["pairs"] += len(batch)
        if palette:
            for one, target in zip(generated, to_model_range(targets)):
                pair_confusions.append(confusion_counts(one[None], target[None], palette))
            counts["off_palette"] += off_palette_pixels(targets, palette)
            counts["pixels"] += targets.shape[0] * targets.shape[2] * targets.shape[3]
        if grid_count:
            pictures = to_uint8(generated).permute(0, 2, 3, 1).numpy()
            candidates = grid_rows + [(key, s, g, t) for (key, s, t), g in zip(batch, pictures)]
            grid_rows = sorted(candidates, key=lambda row: row[0])[:grid_count]
        batch.clear()

    for record in records:
        if record.get("error"):
            skipped.append(f"{record['key']}: {record['error']}")
            continue
        try:
            source, target = decode_pair(record)
        except BadImage as error:
            skipped.append(f"{record['key']}: {error}")
            continue
        if source.shape[:2] != (image_size, image_size):
            source, target = augment_pair(resize, source, target)
        batch.append((record["key"], source, target))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not counts["pairs"]:
        raise EvaluationError(f"no pair could be read ({'; '.join(skipped[:3])})")
    off_palette = counts["off_palette"] / counts["pixels"] if palette else None
    per_pair = torch.stack(pair_confusions) if pair_confusions else None
    return Evaluation(MetricAccumulator.summarize(accumulator.totals()), counts["pairs"], skipped, grid_rows,
                      off_palette, per_pair)


def write_grid(rows, uri: str) -> None:
    """PNG of source | generated | target, one pair per row."""
    buffer = io.BytesIO()
    image_grid([[source, generated, target] for _, source, generated, target in rows], gap=4).save(buffer, "PNG")
    location = storage.resolve(uri)
    storage.write_bytes(location.filesystem, location.path, buffer.getvalue())


@dataclass
class EvaluateOptions:
    data: str
    checkpoint: str
    split: str = "val"
    palette: str | None = None  # "recife" or a JSON file; None: the one the model was trained with, if any
    batch_size: int = BATCH_SIZE
    precision: str = "auto"
    threads: int | None = None
    grid: str | None = None  # where to write the PNG; None: no grid
    grid_count: int = GRID_ROWS
    paper_mode: bool = False
    limit: int | None = None
    seed: int = 0
    source_dir: str = "sat"
    target_dir: str = "map"
    device: str | None = None  # default: cuda when available


def evaluate(options: EvaluateOptions) -> dict:
    """Evaluate and return the summary (the job's JSON line)."""
    started = time.perf_counter()
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_threads(options.threads)
    torch.manual_seed(options.seed)
    generator, info = checkpoint.load_generator(options.checkpoint)
    palette = load_palette(options.palette) or info.palette
    precision = inference_precision(options.precision, device, info.precision)
    # Raw pairs follow the checkpoint's direction; prepared shards carry the one they were prepared with.
    split = open_split(options.data, options.split, info.direction, options.source_dir, options.target_dir,
                       options.limit)
    translate = make_translate(generator, device, precision, options.paper_mode, options.seed)
    result = evaluate_records(split.records(), translate, info.image_size, options.batch_size, palette,
                              options.grid_count if options.grid else 0)
    if options.grid and result.grid_rows:
        write_grid(result.grid_rows, options.grid)
    skipped = split.skipped + result.skipped
    summary = {
        "data": options.data, "split": options.split, "source": split.kind, "checkpoint": options.checkpoint,
        "pairs": result.pairs, "skipped": len(skipped), "skipped_pairs": skipped[:SKIPPED_LISTED],
        "image_size": info.image_size, "mode": "paper" if options.paper_mode else "eval",
        "batch_size": 1 if options.paper_mode else options.batch_size, "precision": precision,
        "device": device.type,
        **{name: _number(result.metrics[metric]) for name, metric in
           (("l1", "L1"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("rmse", "RMSE"), ("pixel_accuracy", "pixel_accuracy"))},
    }
    if palette:
        summary["per_class_iou"] = {name: _number(result.metrics[f"IoU/{name}"])
                                    for name in palette if f"IoU/{name}" in result.metrics}
        summary["miou"] = _number(result.metrics.get("mIoU", math.nan))
        intersections, unions = intersections_unions(result.pair_confusions)
        intervals = bootstrap_iou(intersections.numpy(), unions.numpy(), list(palette))
        summary["iou_interval_95"] = {name: [round(low, 4), round(high, 4)] for name, (low, high) in intervals.items()}
        summary["pixel_accuracy_snapped"] = _number(result.metrics["pixel_accuracy_snapped"])
        summary["target_off_palette"] = _number(result.target_off_palette)
        summary.update(class_report(result.pair_confusions.sum(0), list(palette)))
    summary["grid"] = options.grid if result.grid_rows else None
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _number(value: float) -> float | None:
    """Rounded for the JSON line; a non-finite value (PSNR of an exact match) becomes null."""
    return round(value, 6) if math.isfinite(value) else None
