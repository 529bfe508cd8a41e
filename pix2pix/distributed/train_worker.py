"""The training loop each Ray Train worker runs, top to bottom: restore, then per epoch train,
checkpoint, validate, report.

Each worker reads its own part of every epoch from the prepared shards and decodes it in
processes of its own, one per CPU its bundle holds beside the step, or in one thread when the
step takes them all (pix2pix/training/shards.py); validation reads the val split the same way, each pair on exactly
one worker (chosen by a hash of its key), and the metric sums are all-reduced, so the result
covers the whole split once. The schedule (the
paper's epochs or a user's budget, pix2pix/training/schedule.py) sets the lr and ends the run.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pix2pix import checkpoint, storage
from pix2pix.hashing import stable_hash
from pix2pix.model.export import CheckpointError
from pix2pix.model.metrics import MetricAccumulator
from pix2pix.model.palette import balanced_class_weights, class_counts
from pix2pix.model.precision import set_threads
from pix2pix.progress import duration
from pix2pix.training.budget import Budget
from pix2pix.training.decode_processes import SHARED_MEMORY
from pix2pix.training.schedule import BUDGET_SECONDS, BudgetSchedule, EpochSchedule
from pix2pix.training.shards import (
    LOADED_PAIRS_BYTES,
    DatasetError,
    Shards,
    TrainingPairs,
    evaluation_batches,
    key_hash,
    owner_rank,
    records_where,
)
from pix2pix.training.step import Pix2Pix, TrainConfig, balance_warning, sample_grid

SAMPLES_FILE = "samples.png"
HISTORY_FILE = "metrics.jsonl"
SAMPLE_PAIRS = 6
CLASS_SAMPLE = 8  # one train pair in 8 gives the palette term's class frequencies
VALIDATION_BATCH = 16
PROGRESS_SECONDS = 30.0
# A worker keeps its decoded share of the val split up to this size (the Recife split: 40 MB in
# all): re-reading and decoding it at every validation cost more than a GPU epoch.
VALIDATION_CACHE_BYTES = 2 * 2**30
# The workers of one node keep at most this share of its memory in decoded train pairs (each
# up to LOADED_PAIRS_BYTES): 8 workers on a 16 GB laptop keep 250 MB each, not 2 GB.
KEPT_PAIRS_MEMORY_SHARE = 1 / 8


@dataclass
class JobConfig:
    """Everything the workers need besides the model recipe."""

    train: TrainConfig
    data_uri: str
    run_uri: str = ""  # the run's folder in the storage path; fit() sets it
    train_shards: Shards | None = None  # fit() finds them
    val_shards: Shards | None = None
    direction: str = "AtoB"
    threads: int = 1
    decode_workers: int = 1  # processes decoding the training pairs (1: a thread); fit() sets it from the CPUs
    checkpoint_every: int = 1
    # When set, checkpoint when this many minutes have passed since the last checkpoint instead
    # of every checkpoint_every epochs (GPU epochs take seconds; a checkpoint is ~0.9 GB).
    checkpoint_minutes: float | None = None
    validate_every: int = 1
    palette: dict | None = None
    budget: Budget | None = None  # replaces the epoch schedule: train until it is spent
    started_at: float = 0.0  # time.time() when the job started: where a budget's minutes count from
    verbose: bool = False  # Ray Train's own log lines in the workers
    # Called on every worker after each training step with the global step: progress reporting,
    # fault injection. Pickled to the workers with the config.
    on_step: Callable[[int], None] | None = None


def train_loop_per_worker(job: dict) -> None:
    config: JobConfig = job["config"]
    if not config.verbose:  # e.g. "Reporting training result ..." at every report, on a logger of its own
        logging.getLogger().setLevel(logging.WARNING)
    set_threads(config.threads)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if rank == 0:
        remove_unsent_checkpoints(config)
    # The input first: its decode processes start (and map the memory of the pairs they keep)
    # while the model is built and restored.
    with contextlib.closing(training_pairs(config, rank, world_size)) as pairs:  # ends decode processes
        model = build_model(config, rank)
        restored = restore_latest(model, config.run_uri)
        resumed_from_epoch = model.epoch
        if rank == 0 and pairs.decode_workers > 1:
            print(input_line(pairs), flush=True)
        pairs_per_step = config.train.batch_size * world_size
        schedule = job_schedule(config, restored, pairs_per_step)
        samples = sample_pairs(config) if rank == 0 and config.val_shards else None
        validation_pairs = ValidationPairs(config, rank, world_size) if config.val_shards else None
        history = History(config.run_uri) if rank == 0 else None
        flag_group = host_group()
        last_checkpoint = time.monotonic()
        losses: list[dict[str, float]] = []
        while not schedule.done(model):
            progress = Progress(model.epoch, pairs.batches, pairs_per_step, enabled=rank == 0)
            model.seed_epoch(rank)
            epoch = train_epoch(model, pairs.epoch(model.epoch), pairs.batches, config, progress, schedule, flag_group)
            if schedule.done(model):  # a budget runs out inside an epoch: its schedule ends at lr 0
                model.set_learning_rate_factor(schedule.lr_factor(model))
            elif epoch.batches == 0:
                raise DatasetError("the training data ended early")
            metrics = {"epoch": model.epoch + 1, "step": model.step, "pairs": model.step * pairs_per_step,
                       "resumed_from_epoch": resumed_from_epoch, "lr": model.learning_rate, **epoch.losses,
                       "pairs_per_s": epoch.batches * config.train.batch_size / epoch.seconds,
                       "epoch_seconds": epoch.seconds, "first_batch_seconds": epoch.first_batch_seconds,
                       "input_wait_fraction": epoch.input_wait_seconds / epoch.seconds, **schedule.metrics(model)}
            model.end_epoch()
            losses.append(epoch.losses)
            last = schedule.done(model)
            checkpointing = last or checkpoint_due(model, config, last_checkpoint)
            validating = validation_pairs is not None and (model.epoch % config.validate_every == 0 or last)
            if checkpointing:
                # Reported before validation, so that a slow or failing validation never costs the
                # epoch; the validation metrics then go in a report of their own.
                started = time.perf_counter()
                report_checkpoint(model, config, metrics, samples, schedule, rank)
                metrics["checkpoint_seconds"] = time.perf_counter() - started
                last_checkpoint = time.monotonic()
            if validating:
                started = time.perf_counter()
                validated = validate(model, config, validation_pairs)
                metrics.update({f"val_{name}": value for name, value in validated.items()})
                metrics["validation_seconds"] = time.perf_counter() - started
            warning = balance_warning(losses)
            if history is not None:
                print(_epoch_line(metrics) + (f"\nwarning: {warning}" if warning else ""), flush=True)
                history.append(metrics)
            if validating or not checkpointing:
                ray.train.report(metrics)


def training_pairs(config: JobConfig, rank: int, world_size: int) -> TrainingPairs:
    kept = kept_pairs_bytes(ray.train.get_context().get_local_world_size(), node_memory())
    return TrainingPairs(config.data_uri, config.train_shards, config.train.image_size, config.train.batch_size,
                         config.train.seed, rank, world_size, pin_memory=ray.train.torch.get_device().type == "cuda",
                         crop_size=config.train.crop_size, flips=config.train.flips,
                         decode_workers=config.decode_workers, loaded_bytes=kept)


def input_line(pairs: TrainingPairs) -> str:
    """What a worker's input runs on, said once: a warning where the processes could not start."""
    kept = f"decoded pairs kept up to {pairs.loaded.limit_bytes / 1e9:.1f} GB a worker"
    if pairs.processes:
        return f"input: {pairs.decode_workers} decode processes a worker, {kept}"
    return (f"warning: input: one decode thread a worker, not {pairs.decode_workers} processes: {SHARED_MEMORY} has no "
            "room for their shared memory (give the container more, e.g. docker run --shm-size); " + kept)


def build_model(config: JobConfig, rank: int) -> Pix2Pix:
    """The model on this worker's device, wrapped for DDP, with the palette term's class weights."""
    palette_term = config.palette and config.train.palette_weight > 0
    class_weights = palette_class_weights(config) if palette_term else None
    if class_weights and rank == 0:
        print("palette term, class weights: " + ", ".join(
            f"{name} {weight:.2f}" for name, weight in zip(config.palette, class_weights)), flush=True)
    return Pix2Pix(config.train, ray.train.torch.get_device(), wrap=ray.train.torch.prepare_model,
                   palette=config.palette, class_weights=class_weights)


def job_schedule(config: JobConfig, restored: dict, pairs_per_step: int) -> EpochSchedule | BudgetSchedule:
    """The budget's schedule when the job has one, else the paper's epochs."""
    if config.budget is None:
        return EpochSchedule(config.train.epochs, config.train.epochs_decay)
    return BudgetSchedule(config.budget, config.started_at, restored.get(BUDGET_SECONDS, 0.0), pairs_per_step,
                          agree=broadcast_from_rank0)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _collective_tensor(values: list[float]) -> torch.Tensor:
    """float64 values where the process group's backend can reduce them (nccl: on the GPU)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.cuda() if dist.get_backend() == "nccl" else tensor


def broadcast_from_rank0(value: float) -> float:
    if not _distributed():
        return value
    tensor = _collective_tensor([value])
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    if not _distributed():
        return values
    tensor = _collective_tensor(values)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def host_group() -> dist.ProcessGroup | None:
    """The group for ``on_every_worker``'s flags: beside nccl a gloo group of the same workers, whose
    collectives on CPU tensors never wait for the GPU's queued work; None (the default group)
    where that is gloo already, or with one process. Every worker must call it, at the same point."""
    if not _distributed() or dist.get_backend() != "nccl":
        return None
    return dist.new_group(backend="gloo")


def on_every_worker(flag: bool, group: dist.ProcessGroup | None = None) -> bool:
    """Whether ``flag`` holds on every worker: one all-reduce of one number."""
    if not _distributed():
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=group)
    return bool(tensor.item())


@dataclass
class EpochResult:
    losses: dict[str, float]  # averaged over all workers
    batches: int  # over all workers
    seconds: float
    first_batch_seconds: float  # this worker's wait for its first batch
    input_wait_seconds: float  # all of this worker's waits for input, the first included


class Progress:
    """Rank 0's line every PROGRESS_SECONDS: epoch, step of steps, pairs/s, ETA of the epoch."""

    def __init__(self, epoch: int, steps: int, pairs_per_step: int, enabled: bool):
        self.epoch, self.steps, self.pairs_per_step, self.enabled = epoch, steps, pairs_per_step, enabled
        self.started = self.last = time.perf_counter()

    def step(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < PROGRESS_SECONDS or done == self.steps:
            return
        self.last = now
        rate = done / (now - self.started)
        eta = (self.steps - done) / rate
        print(f"epoch {self.epoch + 1}: step {done}/{self.steps}, {rate * self.pairs_per_step:.2f} pairs/s, "
              f"ETA {duration(eta)}", flush=True)


def train_epoch(model: Pix2Pix, batches, steps: int, config: JobConfig, progress: Progress,
                schedule: EpochSchedule | BudgetSchedule, flag_group: dist.ProcessGroup | None = None) -> EpochResult:
    """``steps`` batches (the same count on every worker), fewer when the schedule ends.

    Before each step the workers agree that every one of them has its batch (``flag_group``: the group
    of host_group). A worker whose data ends early would otherwise leave the step's collectives
    while the others wait in them until Ray's timeout; now all of them raise a DatasetError. The
    flag costs one all-reduce of one number per step; agreeing on a step count up front cannot
    work, since a worker learns that its data is short only when it reads it."""
    started = time.perf_counter()
    names = model.loss_names
    sums = torch.zeros(len(names), device=model.device)  # summed on the device: no sync per step
    waits: list[float] = []
    done = 0
    for _ in range(steps):
        if schedule.done(model):
            break
        model.set_learning_rate_factor(schedule.lr_factor(model))
        asked = time.perf_counter()
        batch, problem = next_batch(batches)
        waits.append(time.perf_counter() - asked)
        if not on_every_worker(batch is not None, flag_group):
            raise DatasetError(f"the training data ended at batch {done + 1} of {steps} of epoch {model.epoch + 1}: "
                               + (problem or "on another worker"))
        parts = model.train_step(batch["source"], batch["target"])
        sums += torch.stack([parts[name].detach().float() for name in names])
        done += 1
        progress.step(done)
        if config.on_step is not None:
            config.on_step(model.step)
    totals = all_reduce_sum([*sums.tolist(), float(done)])
    count = max(totals[-1], 1.0)
    return EpochResult(losses={name: total / count for name, total in zip(names, totals)},
                       batches=int(totals[-1]), seconds=time.perf_counter() - started,
                       first_batch_seconds=waits[0] if waits else 0.0, input_wait_seconds=sum(waits))


def next_batch(batches) -> tuple[dict | None, str | None]:
    """The next batch, or None and what went wrong: the batches ran out, or the reader found the
    data changed (a DatasetError the other workers must hear of before they raise it too)."""
    try:
        batch = next(batches, None)
    except DatasetError as error:
        return None, str(error)
    return batch, None if batch is not None else "this worker's batches ran out"


def checkpoint_due(model: Pix2Pix, config: JobConfig, last_checkpoint: float) -> bool:
    """Every checkpoint_every epochs, or by wall time with checkpoint_minutes: rank 0's clock
    decides, so that every worker enters the report together."""
    if config.checkpoint_minutes is None:
        return model.epoch % config.checkpoint_every == 0
    return broadcast_from_rank0(time.monotonic() - last_checkpoint) >= config.checkpoint_minutes * 60


def report_checkpoint(model: Pix2Pix, config: JobConfig, metrics: dict, samples: dict | None,
                      schedule: EpochSchedule | BudgetSchedule, rank: int) -> None:
    """Rank 0 writes the checkpoint to a local folder that the report uploads. The upload is
    synchronous: with Ray Train's ASYNC mode a worker killed while the upload ran lost that
    checkpoint, and the chaos test's run restarted from the one before (from scratch)."""
    with tempfile.TemporaryDirectory(prefix=checkpoint_folder_prefix(config)) as directory:
        if rank == 0:
            save_checkpoint(model, config, directory, samples, schedule)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None)


def checkpoint_folder_prefix(config: JobConfig) -> str:
    return f"pix2pix-checkpoint-{stable_hash(config.run_uri) % 16**8:08x}-"


def remove_unsent_checkpoints(config: JobConfig) -> None:
    """Local checkpoint folders of this run that a killed worker group left behind (a folder is
    deleted once its report returns): a restarted group's rank 0 removes them."""
    pattern = os.path.join(tempfile.gettempdir(), checkpoint_folder_prefix(config) + "*")
    for folder in glob.glob(pattern):
        shutil.rmtree(folder, ignore_errors=True)


def kept_pairs_bytes(workers_here: int, node_memory: int) -> int:
    """The decoded train pairs a worker may keep: LOADED_PAIRS_BYTES, less where its node's
    ``workers_here`` would together pass KEPT_PAIRS_MEMORY_SHARE of the node's memory."""
    return int(min(LOADED_PAIRS_BYTES, node_memory * KEPT_PAIRS_MEMORY_SHARE / workers_here))


def node_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class ValidationPairs:
    """This worker's share of the val split (each pair on exactly one worker), as evaluation
    batches: decoded at the first validation and kept for the later ones, unless they pass
    VALIDATION_CACHE_BYTES, in which case they are read and decoded again each time."""

    def __init__(self, config: JobConfig, rank: int, world_size: int):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.kept: list[dict] | None = None

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        mine = records_where(self.config.data_uri, self.config.val_shards,
                             lambda key: owner_rank(key, self.world_size) == self.rank)
        kept: list[dict] | None = []
        size = 0
        for batch in evaluation_batches(mine, self.config.train.image_size, VALIDATION_BATCH):
            size += sum(value.nbytes for value in batch.values() if isinstance(value, np.ndarray))
            if size > VALIDATION_CACHE_BYTES:
                kept = None
            elif kept is not None:
                kept.append(batch)
            yield batch
        self.kept = kept


def validate(model: Pix2Pix, config: JobConfig, pairs: ValidationPairs) -> dict[str, float]:
    """Metrics over the whole val split: each worker evaluates the pairs it owns, sums are all-reduced."""
    accumulator = MetricAccumulator(palette=config.palette)
    for batch in pairs:
        target = model.prepare_inputs(torch.from_numpy(batch["target"])).float()
        accumulator.update(model.translate(torch.from_numpy(batch["source"])), target)
    totals = accumulator.totals()
    names = sorted(totals)
    summed = dict(zip(names, all_reduce_sum([totals[name] for name in names])))
    return MetricAccumulator.summarize(summed) if summed.get("image_count") else {}


def sample_pairs(config: JobConfig) -> dict[str, np.ndarray] | None:
    """The val pairs with the SAMPLE_PAIRS smallest keys (the same every epoch), decoded once."""
    records = heapq.nsmallest(SAMPLE_PAIRS, records_where(config.data_uri, config.val_shards, lambda _: True),
                              key=lambda record: record["key"])
    return next(evaluation_batches(iter(records), config.train.image_size, SAMPLE_PAIRS), None)


def save_checkpoint(model: Pix2Pix, config: JobConfig, directory: str, samples: dict | None,
                    schedule: EpochSchedule | BudgetSchedule) -> None:
    location = storage.resolve(directory)
    checkpoint.save_training_state({**model.state_dict(), **schedule.checkpoint_state()}, location)
    checkpoint.export_generator(model.inference_generator, model.export_info(config.direction, config.palette),
                                location)
    if samples is not None:
        sample_grid(model, samples["source"], samples["target"]).save(os.path.join(directory, SAMPLES_FILE))


def palette_class_weights(config: JobConfig) -> list[float]:
    """Balanced class weights from the class frequencies of a fixed sample of the train split's
    targets (every CLASS_SAMPLE-th pair by key hash): the same on every worker and every attempt."""
    sample = records_where(config.data_uri, config.train_shards, lambda key: key_hash(key) % CLASS_SAMPLE == 0)
    counts = torch.zeros(len(config.palette), dtype=torch.float64)
    for batch in evaluation_batches(sample, config.train.image_size, VALIDATION_BATCH):
        counts += class_counts(torch.from_numpy(batch["target"]), config.palette)
    return balanced_class_weights(counts, config.train.palette_balance)


def restore_latest(model: Pix2Pix, run_uri: str) -> dict:
    """Load the run's newest checkpoint whose files are whole, read from storage: Ray Train
    registers a reported checkpoint only when its controller next polls the workers (every
    2 s), so a group that dies right after a report would restart from the one before."""
    for candidate in checkpoint.complete_checkpoints(storage.resolve(run_uri)):
        try:
            state = checkpoint.load_training_state(candidate)
        except (CheckpointError, FileNotFoundError):  # the export was whole, the state not
            continue
        model.load_state_dict(state)
        return state
    return {}


class History:
    """RUN/metrics.jsonl: one line per epoch, validation included (Ray Train keeps only the
    metrics reported with checkpoints). Read once (a resumed run continues it), then rewritten
    whole from memory at each epoch: object stores cannot append."""

    def __init__(self, run_uri: str):
        self.location = storage.resolve(run_uri).join(HISTORY_FILE)
        self.text = storage.read_text(self.location) if storage.exists(self.location) else ""

    def append(self, metrics: dict) -> None:
        self.text += json.dumps(metrics) + "\n"
        storage.write_text(self.location, self.text)


def read_history(run_uri: str) -> list[dict]:
    location = storage.resolve(run_uri).join(HISTORY_FILE)
    return [json.loads(line) for line in storage.read_text(location).splitlines()] if storage.exists(location) else []


def _epoch_line(metrics: dict) -> str:
    shown = ["epoch", "step", "lr", "budget_used", "G_GAN", "G_L1", "G_palette", "D_real", "D_fake",
             "val_L1", "val_PSNR", "val_SSIM", "val_mIoU",
             *sorted(name for name in metrics if name.startswith("val_IoU/")), "pairs_per_s",
             "epoch_seconds", "first_batch_seconds", "checkpoint_seconds", "validation_seconds",
             "input_wait_fraction"]
    return " ".join(f"{name}={metrics[name]:.4g}" if isinstance(metrics[name], float) else f"{name}={metrics[name]}"
                    for name in shown if name in metrics)
