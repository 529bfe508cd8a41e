"""pix2pix DDP training on Ray Train: datasets, the per-worker loop, the trainer.

Ray Data reads the Parquet shards and decodes + augments them in CPU tasks; each worker only
computes, iterating its shard with ``iter_torch_batches``. Validation reads the whole val
split on every worker, but each pair is evaluated by exactly one worker (chosen by a hash of
its key), and the metric sums are all-reduced, so the result covers the whole split once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.data.datasource import FileShuffleConfig

from pix2pix import checkpoint, storage
from pix2pix.data import paired_transform, preprocess_records
from pix2pix.metrics import MetricAccumulator, to_uint8
from pix2pix.precision import set_threads
from pix2pix.tiles import image_grid
from pix2pix.training import LOSS_NAMES, Pix2Pix, TrainConfig, balance_warning

SAMPLES_FILE = "samples.png"
SAMPLE_PAIRS = 6
SHUFFLE_BUFFER = 64


class DatasetError(ValueError):
    """The prepared dataset is missing or empty."""


@dataclass
class JobConfig:
    """Everything the workers need besides the model recipe."""

    train: TrainConfig
    data_uri: str
    direction: str = "AtoB"
    threads: int = 1
    checkpoint_every: int = 1
    palette: dict | None = None
    extra: dict = field(default_factory=dict)  # test hooks (e.g. crash at a step)


def shard_files(data: storage.Location, split: str) -> list[str]:
    return [path for path in storage.list_files(data.join(split), (".parquet",))]


def augment_batch(batch: pa.Table, image_size: int, train: bool, keep_keys: bool) -> dict[str, np.ndarray]:
    """map_batches function: decode + augment shard rows into uint8 NCHW arrays."""
    records = batch.to_pylist()
    out = preprocess_records(records, paired_transform(image_size, train=train))
    if not keep_keys:
        del out["key"]
    return out


def check_dataset(data_uri: str) -> tuple[list[str], list[str]]:
    """The train and val shard files; a clear error when there is nothing to train on."""
    data = storage.resolve(data_uri)
    if not storage.is_dir(data):
        raise DatasetError(f"dataset not found: {data_uri} (prepare one with jobs/prepare.py)")
    train_files, val_files = shard_files(data, "train"), shard_files(data, "val")
    if not train_files:
        raise DatasetError(f"no training shards under {data_uri}/train: run jobs/prepare.py first")
    return train_files, val_files


def build_datasets(data_uri: str, image_size: int, seed: int) -> dict[str, ray.data.Dataset]:
    data = storage.resolve(data_uri)
    train_files, val_files = check_dataset(data_uri)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    datasets = {
        "train": ray.data.read_parquet(
            train_files, filesystem=data.filesystem,
            shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True),
        ).map_batches(augment_batch, fn_kwargs={"image_size": image_size, "train": True, "keep_keys": False},
                      batch_size=16, batch_format="pyarrow")
    }
    if val_files:
        datasets["val"] = ray.data.read_parquet(val_files, filesystem=data.filesystem).map_batches(
            augment_batch, fn_kwargs={"image_size": image_size, "train": False, "keep_keys": True},
            batch_size=16, batch_format="pyarrow")
    return datasets


def owner_rank(key: str, world_size: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % world_size


def all_reduce_sum(values: list[float]) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    backend = dist.get_backend()
    if backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


@dataclass
class EpochResult:
    losses: dict[str, float]  # averaged over all workers
    batches: int  # over all workers
    seconds: float
    first_batch_seconds: float  # this worker's wait for its first batch: the data stages' start-up
    input_wait_seconds: float  # all of this worker's waits for input, the first included


def train_epoch(model: Pix2Pix, shard, config: JobConfig) -> EpochResult:
    """One pass over this worker's shard."""
    started = time.perf_counter()
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    waits: list[float] = []
    crash_at = config.extra.get("crash_at_step")
    progress = config.extra.get("progress_dir")
    stream = iter(shard.iter_torch_batches(batch_size=config.train.batch_size, drop_last=True,
                                           local_shuffle_buffer_size=SHUFFLE_BUFFER, device="cpu"))
    while True:
        asked = time.perf_counter()
        batch = next(stream, None)
        waits.append(time.perf_counter() - asked)
        if batch is None:
            break
        parts = model.train_step(batch["source"], batch["target"])
        for name in LOSS_NAMES:
            sums[name] += float(parts[name])
        if progress is not None:
            _record_progress(progress, model.step)
        if crash_at is not None and model.step == crash_at and _first_attempt(config):
            os._exit(1)  # a test hook: the worker dies like a lost node
    totals = all_reduce_sum([*sums.values(), float(len(waits) - 1)])
    count = max(totals[-1], 1.0)
    return EpochResult(losses={name: total / count for name, total in zip(LOSS_NAMES, totals)},
                       batches=int(totals[-1]), seconds=time.perf_counter() - started,
                       first_batch_seconds=waits[0], input_wait_seconds=sum(waits))


def _record_progress(directory: str, step: int) -> None:
    """A test hook: each worker appends "pid step time" to DIRECTORY/rank<r>.log after every
    step, so that a chaos test can kill one mid-epoch and count the steps lost."""
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(directory, f"rank{rank}.log"), "a") as log:
        log.write(f"{os.getpid()} {step} {time.time():.3f}\n")


def _first_attempt(config: JobConfig) -> bool:
    marker = config.extra.get("crash_marker")
    if marker is None or os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def validate(model: Pix2Pix, shard, config: JobConfig, rank: int, world_size: int):
    """Metrics over the whole val split (each pair on one worker) and, on rank 0, sample rows."""
    accumulator = MetricAccumulator(palette=config.palette)
    samples: list[tuple[str, np.ndarray, np.ndarray]] = []  # the SAMPLE_PAIRS smallest keys
    for batch in shard.iter_batches(batch_size=16, batch_format="numpy"):
        keys = [str(key) for key in batch["key"]]
        mine = [i for i, key in enumerate(keys) if owner_rank(key, world_size) == rank]
        if mine:
            source = torch.from_numpy(batch["source"][mine])
            target = torch.from_numpy(batch["target"][mine])
            accumulator.update(model.translate(source), model.prepare_inputs(target).float())
        if rank == 0:  # the same pairs every epoch: the smallest keys
            candidates = samples + [(key, batch["source"][i], batch["target"][i]) for i, key in enumerate(keys)]
            samples = sorted(candidates, key=lambda entry: entry[0])[:SAMPLE_PAIRS]
    totals = accumulator.totals()
    names = sorted(totals)
    summed = dict(zip(names, all_reduce_sum([totals[name] for name in names])))
    metrics = MetricAccumulator.summarize(summed) if summed.get("image_count") else {}
    return metrics, samples


def sample_grid(model: Pix2Pix, samples) -> "Image":
    source = torch.from_numpy(np.stack([s for _, s, _ in samples]))
    generated = to_uint8(model.translate(source)).permute(0, 2, 3, 1).numpy()
    rows = [[s.transpose(1, 2, 0), g, t.transpose(1, 2, 0)] for (_, s, t), g in zip(samples, generated)]
    return image_grid(rows, gap=4)


def save_checkpoint(model: Pix2Pix, config: JobConfig, directory: str, samples) -> None:
    location = storage.resolve(directory)
    checkpoint.save_training_state(model.state_dict(), location)
    info = checkpoint.ExportInfo(generator=config.train.generator_config(), image_size=config.train.image_size,
                                 direction=config.direction, step=model.step, epoch=model.epoch)
    checkpoint.export_generator(model.generator, info, location)
    if samples:
        sample_grid(model, samples).save(os.path.join(directory, SAMPLES_FILE))


def train_loop_per_worker(job: dict) -> None:
    config: JobConfig = job["config"]
    set_threads(config.threads)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    model = Pix2Pix(config.train, ray.train.torch.get_device(), wrap=ray.train.torch.prepare_model)
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as directory:
            model.load_state_dict(checkpoint.load_training_state(storage.resolve(directory)))
    resumed_from_epoch = model.epoch
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if job["has_val"] else None
    history: list[dict[str, float]] = []
    while model.epoch < config.train.total_epochs:
        epoch = train_epoch(model, train_shard, config)
        if epoch.batches == 0:
            raise DatasetError("no full batch per worker: fewer training pairs than workers x --batch-size")
        learning_rate = model.learning_rate
        model.end_epoch()
        history.append(epoch.losses)
        metrics = {"epoch": model.epoch, "step": model.step, "resumed_from_epoch": resumed_from_epoch,
                   "lr": learning_rate, **epoch.losses,
                   "pairs_per_s": epoch.batches * config.train.batch_size / epoch.seconds,
                   "epoch_seconds": epoch.seconds, "first_batch_seconds": epoch.first_batch_seconds,
                   "input_wait_fraction": epoch.input_wait_seconds / epoch.seconds}
        samples = []
        if val_shard is not None:
            val_metrics, samples = validate(model, val_shard, config, rank, world_size)
            metrics.update({f"val_{name}": value for name, value in val_metrics.items()})
        warning = balance_warning(history)
        if rank == 0:
            print(_epoch_line(metrics) + (f"\nwarning: {warning}" if warning else ""), flush=True)
        due = model.epoch % config.checkpoint_every == 0 or model.epoch == config.train.total_epochs
        if due:
            with tempfile.TemporaryDirectory() as directory:
                if rank == 0:
                    save_checkpoint(model, config, directory, samples)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory)
                                 if rank == 0 else None)
        else:
            ray.train.report(metrics)


def _epoch_line(metrics: dict) -> str:
    shown = ["epoch", "step", "G_GAN", "G_L1", "D_real", "D_fake", "val_L1", "val_PSNR", "val_SSIM", "pairs_per_s",
             "input_wait_fraction"]
    return " ".join(f"{name}={metrics[name]:.4g}" if isinstance(metrics[name], float) else f"{name}={metrics[name]}"
                    for name in shown if name in metrics)


@dataclass
class Resources:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    threads: int


def plan_resources(num_workers: int, gpu: bool | None, cpus_per_worker: float | None,
                   threads: int | None) -> Resources:
    """Leave CPUs for the Ray Data stages: workers that reserve every CPU starve decoding and
    the run hangs. On a CPU cluster, workers share what is left after one CPU for data."""
    cluster = ray.cluster_resources()
    cluster_cpus = cluster.get("CPU", 1.0)
    use_gpu = cluster.get("GPU", 0) > 0 if gpu is None else gpu
    if cpus_per_worker is None:
        if use_gpu:
            cpus_per_worker = 1.0
        else:
            cpus_per_worker = min(1.0, max(0.25, (cluster_cpus - 1.0) / num_workers))
    if threads is None:
        threads = 1 if use_gpu else max(1, int(cluster_cpus // num_workers))
    return Resources(num_workers, use_gpu, cpus_per_worker, threads)


def check_resume(run: storage.Location, config: TrainConfig) -> None:
    """Refuse, in one line and before any worker starts, to resume a run whose latest
    checkpoint is of another architecture (every worker attempt would fail on it)."""
    latest = checkpoint.latest_checkpoint(run)
    if latest is None:
        return
    try:
        checkpoint.check_architecture(checkpoint.read_export_info(latest).generator, config.generator_config(),
                                      latest.uri)
    except checkpoint.CheckpointError as error:
        raise checkpoint.CheckpointError(f"cannot resume: {error}; pass the run's own --recipe (or --ngf/--ndf), "
                                         "or use another --name to start a new run") from None


def fit(config: JobConfig, resources: Resources, storage_uri: str, name: str, max_failures: int = 0,
        keep_checkpoints: int | None = 2) -> ray.train.Result:
    location = storage.resolve(storage_uri)
    check_resume(location.join(name), config.train)
    datasets = build_datasets(config.data_uri, config.train.image_size, config.train.seed)
    if isinstance(location.filesystem, pafs.LocalFileSystem):
        os.makedirs(location.path, exist_ok=True)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "has_val": "val" in datasets},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker, **({"GPU": 1} if resources.use_gpu else {})},
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=name, storage_path=location.path, storage_filesystem=location.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )
    return trainer.fit()
