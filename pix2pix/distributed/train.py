"""pix2pix DDP training on Ray Train, the driver's side: plan the workers' resources, refuse a
resume that cannot work, and run the trainer (the workers' loop: train_worker.py).

Why a run cannot deadlock: after the workers start, a run needs no Ray resource beyond the
workers' own bundles. No data stage runs as a Ray task or actor, so no stage can hold a CPU
that another stage (or validation) waits for, on any cluster size; ``plan_train_resources`` only
sizes the workers' bundles to fit the nodes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import pyarrow.fs as pafs
import ray
import ray.train
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

from pix2pix import checkpoint, storage
from pix2pix.distributed import capacity, session
from pix2pix.distributed.lean_trainer import LeanTorchTrainer
from pix2pix.distributed.train_worker import JobConfig, train_loop_per_worker
from pix2pix.errors import ConfigError
from pix2pix.model.export import CheckpointError, check_architecture
from pix2pix.training.shards import DatasetError, batches_per_epoch, find_shards
from pix2pix.training.step import TrainConfig

# CPUs of a GPU node left out of its workers' bundles: Ray's own processes, the shard reads.
CPUS_LEFT_FOR_RAY = 1.0


@dataclass
class TrainResources:
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    threads: int

    @property
    def decode_workers(self) -> int:
        """Processes decoding a worker's input: the whole CPUs of its bundle beyond its torch threads;
        1 means a thread (on CPUs the torch threads take them all: the step costs ~60x the decoding)."""
        return max(1, int(self.cpus_per_worker) - self.threads)


def plan_train_resources(num_workers: int | None, gpu: bool | None, cpus_per_worker: float | None,
                         threads: int | None, nodes: list[dict[str, float]] | None = None) -> TrainResources:
    """Workers' bundles that fit the nodes (``nodes``: the alive nodes' resources). Training
    needs nothing else (see the module's docstring), so the workers share the CPUs: on CPUs,
    spread over the nodes, each worker gets an equal part of the smallest node; on GPUs each
    worker gets its GPU's share of its node's CPUs (less CPUS_LEFT_FOR_RAY), to decode its
    input with. On an autoscaling cluster with no such node yet, a worker asks for one CPU
    (plus its GPU). ``num_workers`` None: one per GPU of the node with the most GPUs (at least
    one), one on CPUs. Not every GPU of the cluster: DDP all-reduces ~229 MB of fp32 gradients per
    step (ngf/ndf 64), ~0.2 s over a 10 Gb/s link between nodes against ~10-20 ms of compute,
    while GPUs of one node exchange them over NVLink or PCIe (cluster/README.md, "Prefer several
    GPUs in one node"). --num-workers trains across nodes when asked."""
    nodes = capacity.alive_nodes() if nodes is None else nodes
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = gpus > 0 if gpu is None else gpu
    if num_workers is None:
        num_workers = max(1, int(max((node.get("GPU", 0) for node in nodes), default=0))) if use_gpu else 1
    if cpus_per_worker is None:
        cpus_per_worker = gpu_worker_cpus(nodes) if use_gpu else cpu_worker_cpus(num_workers, nodes)
    if threads is None:
        threads = 1 if use_gpu else max(1, int(cpus_per_worker))
    return TrainResources(num_workers, use_gpu, cpus_per_worker, threads)


def cpu_worker_cpus(num_workers: int, nodes: list[dict[str, float]]) -> float:
    """An equal part of the smallest node with CPUs (a head started with --num-cpus 0 has none)."""
    cpus = [node["CPU"] for node in nodes if node.get("CPU", 0) > 0]
    if not cpus:
        return 1.0
    share = min(cpus) / math.ceil(num_workers / len(cpus))
    return float(math.floor(share)) if share >= 1 else math.floor(share * 100) / 100


def gpu_worker_cpus(nodes: list[dict[str, float]]) -> float:
    """Each GPU's whole share of its node's CPUs, less CPUS_LEFT_FOR_RAY, on the GPU node with the
    fewest per GPU (so that a worker fits on any of them); at least one."""
    shares = [(node.get("CPU", 0.0) - CPUS_LEFT_FOR_RAY) / node["GPU"] for node in nodes if node.get("GPU", 0) > 0]
    return float(max(1, math.floor(min(shares)))) if shares else 1.0


def worker_bundle(resources: TrainResources) -> dict[str, float]:
    return {"CPU": resources.cpus_per_worker, **({"GPU": 1.0} if resources.use_gpu else {})}


def plan_on_cluster(num_workers: int | None, gpu: bool | None, cpus_per_worker: float | None,
                    threads: int | None) -> TrainResources:
    """plan_train_resources, once a node can hold one worker (capacity.wait_for_node). On an
    autoscaling cluster that starts with no worker node, the plan is made again for the node
    that came up, so CPU workers get its CPUs rather than the one CPU asked for."""
    resources = plan_train_resources(num_workers, gpu, cpus_per_worker, threads)
    hint = "ask for less with --cpus-per-worker" + (", or train on CPUs with --cpu" if resources.use_gpu else "")
    if capacity.wait_for_node(worker_bundle(resources), "a training worker", hint) > 0:
        resources = plan_train_resources(num_workers, gpu, cpus_per_worker, threads)
    return resources


def check_resume(run: storage.Location, config: TrainConfig) -> int:
    """The epoch the run resumes from (0 for a new run). Refuse, in one line and before any
    worker starts, to resume a run whose latest checkpoint is of another architecture (every
    worker attempt would fail on it)."""
    latest = checkpoint.latest_checkpoint(run)
    if latest is None:
        return 0
    info = checkpoint.read_export_info(latest)
    saved = checkpoint.read_training_config(latest)  # None in checkpoints older than the file
    try:
        saved = None if saved is None else TrainConfig.from_dict(saved)
    except ConfigError as error:
        raise CheckpointError(f"cannot resume {latest.uri}: {error}") from None
    try:
        check_architecture(info.generator, config.generator_config(), latest.uri)
        if saved is not None:
            check_architecture(saved.discriminator_config(), config.discriminator_config(), latest.uri)
    except CheckpointError as error:
        raise CheckpointError(f"cannot resume: {error}; pass the run's own --recipe (or "
                              "--ngf/--ndf/--upsample), or use another --name to start a new run") from None
    return info.epoch


def final_error(error: Exception) -> Exception | None:
    """A worker's DatasetError in a failed worker group, else None: what every retry would meet
    again, reading the same data."""
    failures = error.worker_failures.values() if isinstance(error, ray.train.WorkerGroupError) else ()
    return next((failure for failure in failures if isinstance(failure, DatasetError)), None)


class DataErrorsEndTheRun(DefaultFailurePolicy):
    """Ray Train's failure policy (--max-failures restarts of the worker group), except that a
    worker's data error ends the run at once."""

    def make_decision(self, training_failed_error: ray.train.TrainingFailedError) -> FailureDecision:
        if final_error(training_failed_error) is not None:
            return FailureDecision.RAISE
        return super().make_decision(training_failed_error)


class Trainer(LeanTorchTrainer):
    """The job's trainer, with DataErrorsEndTheRun as its failure policy. Ray Train builds its
    default policy inside fit() and hands it to the controller through this private method, which
    has no public way in."""

    def _initialize_and_run_controller(self, **controller_init_kwargs) -> ray.train.Result:
        policy = DataErrorsEndTheRun(self.run_config.failure_config)
        return super()._initialize_and_run_controller(**{**controller_init_kwargs, "failure_policy": policy})


def fit(config: JobConfig, resources: TrainResources, storage_uri: str, name: str, max_failures: int = 0,
        keep_checkpoints: int | None = 2, verbose: bool = False) -> ray.train.Result:
    location = storage.resolve(storage_uri)
    check_resume(location.join(name), config.train)
    train_shards, val_shards = find_shards(config.data_uri)
    if batches_per_epoch(train_shards.total_rows, resources.num_workers, config.train.batch_size) == 0:
        raise DatasetError(f"{train_shards.total_rows} training pairs make no full batch per worker "
                           f"({resources.num_workers} workers x --batch-size {config.train.batch_size})")
    config = replace(config, run_uri=location.join(name).uri, train_shards=train_shards, val_shards=val_shards,
                     decode_workers=resources.decode_workers)
    if isinstance(location.filesystem, pafs.LocalFileSystem):
        os.makedirs(location.path, exist_ok=True)
    trainer = Trainer(
        train_loop_per_worker,
        train_loop_config={"config": config},
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.num_workers, use_gpu=resources.use_gpu,
            resources_per_worker=worker_bundle(resources),
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=location.path, storage_filesystem=location.filesystem,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
        owns_instance=session.owns_instance(),
    )
    try:
        return trainer.fit()
    except ray.train.WorkerGroupError as error:
        data_error = final_error(error)
        if data_error is None:
            raise
        raise data_error from None  # one line for the user; the workers' tracebacks are in Ray's logs
