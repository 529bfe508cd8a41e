"""pix2pix DDP training on Ray Train: the per-worker loop and the trainer.

Ray Data reads the Parquet shards and decodes + augments them in CPU tasks (see ingest); each
worker only computes, iterating its part of the run's training stream with
``iter_torch_batches`` and cutting it into epochs by count. Validation reads the whole val
split on every worker, but each pair is evaluated by exactly one worker (chosen by a hash of
its key), and the metric sums are all-reduced, so the result covers the whole split once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from PIL import Image

from pix2pix import checkpoint, storage
from pix2pix.distributed.ingest import DatasetError, batches_per_epoch, build_datasets, data_config
from pix2pix.metrics import MetricAccumulator, to_uint8
from pix2pix.precision import set_threads
from pix2pix.tiles import image_grid
from pix2pix.training import LOSS_NAMES, Pix2Pix, TrainConfig, balance_warning

SAMPLES_FILE = "samples.png"
SAMPLE_PAIRS = 6
SHUFFLE_BUFFER = 64


@dataclass
class JobConfig:
    """Everything the workers need besides the model recipe."""

    train: TrainConfig
    data_uri: str
    batches_per_epoch: int = 0  # per worker; fit() counts it from the shards
    run_uri: str = ""  # the run's folder in the storage path; fit() sets it
    direction: str = "AtoB"
    threads: int = 1
    checkpoint_every: int = 1
    palette: dict | None = None
    extra: dict = field(default_factory=dict)  # test hooks (e.g. crash at a step)


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


def training_batches(shard, config: JobConfig):
    """This worker's part of the run's training stream (one Ray Data execution for all epochs)."""
    return iter(shard.iter_torch_batches(batch_size=config.train.batch_size, drop_last=True,
                                         local_shuffle_buffer_size=SHUFFLE_BUFFER, device="cpu"))


def train_epoch(model: Pix2Pix, stream, config: JobConfig) -> EpochResult:
    """The next ``config.batches_per_epoch`` batches of this worker's stream."""
    started = time.perf_counter()
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    waits: list[float] = []
    steps = 0
    crash_at = config.extra.get("crash_at_step")
    progress = config.extra.get("progress_dir")
    for _ in range(config.batches_per_epoch):
        asked = time.perf_counter()
        batch = next(stream, None)
        waits.append(time.perf_counter() - asked)
        if batch is None:
            break
        steps += 1
        parts = model.train_step(batch["source"], batch["target"])
        for name in LOSS_NAMES:
            sums[name] += float(parts[name])
        if progress is not None:
            _record_progress(progress, model.step)
        if crash_at is not None and model.step == crash_at and _first_attempt(config):
            os._exit(1)  # a test hook: the worker dies like a lost node
    totals = all_reduce_sum([*sums.values(), float(steps)])
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


def sample_grid(model: Pix2Pix, samples) -> Image.Image:
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


def restore_latest(model: Pix2Pix, run_uri: str) -> None:
    """Load the run's newest checkpoint whose files are whole, read from storage: Ray Train
    registers a reported checkpoint only when its controller next polls the workers (every
    2 s), so a group that dies right after a report would restart from the one before."""
    for candidate in checkpoint.complete_checkpoints(storage.resolve(run_uri)):
        try:
            state = checkpoint.load_training_state(candidate)
        except (checkpoint.CheckpointError, FileNotFoundError):  # the export was whole, the state not
            continue
        model.load_state_dict(state)
        return


def train_loop_per_worker(job: dict) -> None:
    config: JobConfig = job["config"]
    set_threads(config.threads)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    model = Pix2Pix(config.train, ray.train.torch.get_device(), wrap=ray.train.torch.prepare_model)
    restore_latest(model, config.run_uri)
    resumed_from_epoch = model.epoch
    stream = training_batches(ray.train.get_dataset_shard("train"), config)
    val_shard = ray.train.get_dataset_shard("val") if job["has_val"] else None
    history: list[dict[str, float]] = []
    while model.epoch < config.train.total_epochs:
        epoch = train_epoch(model, stream, config)
        if epoch.batches == 0:
            raise DatasetError("the training stream ended early")
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


def check_resume(run: storage.Location, config: TrainConfig) -> int:
    """The epoch the run resumes from (0 for a new run). Refuse, in one line and before any
    worker starts, to resume a run whose latest checkpoint is of another architecture (every
    worker attempt would fail on it)."""
    latest = checkpoint.latest_checkpoint(run)
    if latest is None:
        return 0
    info = checkpoint.read_export_info(latest)
    try:
        checkpoint.check_architecture(info.generator, config.generator_config(), latest.uri)
    except checkpoint.CheckpointError as error:
        raise checkpoint.CheckpointError(f"cannot resume: {error}; pass the run's own --recipe (or --ngf/--ndf), "
                                         "or use another --name to start a new run") from None
    return info.epoch


def fit(config: JobConfig, resources: Resources, storage_uri: str, name: str, max_failures: int = 0,
        keep_checkpoints: int | None = 2) -> ray.train.Result:
    location = storage.resolve(storage_uri)
    first_epoch = check_resume(location.join(name), config.train)
    data = build_datasets(config.data_uri, config.train.image_size, config.train.seed,
                          range(first_epoch, config.train.total_epochs))
    config = replace(config, run_uri=location.join(name).uri, batches_per_epoch=batches_per_epoch(
        data.train_rows, resources.num_workers, config.train.batch_size))
    if config.batches_per_epoch == 0:
        raise DatasetError(f"{data.train_rows} training pairs make no full batch per worker "
                           f"({resources.num_workers} workers x --batch-size {config.train.batch_size})")
    if isinstance(location.filesystem, pafs.LocalFileSystem):
        os.makedirs(location.path, exist_ok=True)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "has_val": "val" in data.datasets},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker, **({"GPU": 1} if resources.use_gpu else {})},
        ),
        datasets=data.datasets,
        dataset_config=data_config(),
        run_config=ray.train.RunConfig(
            name=name, storage_path=location.path, storage_filesystem=location.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )
    return trainer.fit()
