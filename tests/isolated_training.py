"""Training runs from a driver of their own, for tests that may hang: the test runs this module
in a subprocess with a timeout, so a hang never blocks the test session's driver.

    [RAY_ADDRESS=HOST:PORT] python -m tests.isolated_training DATA STORAGE IMAGE_SIZE NGF WORKERS:CPUS_PER_WORKER [...]

With RAY_ADDRESS, on that running instance (the test session's: starting one is the slow part,
and the runs then cost no second set of Ray's own processes on a 2-core machine); without it, in
a local instance of its own (2 CPUs, a small object store). One run per WORKERS:CPUS_PER_WORKER
layout, one after the other. Prints one JSON line per run: the run's result and what the cluster
looked like while it ran (the actors started during that run only).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time

import ray

from pix2pix.distributed import train
from pix2pix.training.step import TrainConfig


def actor_classes() -> dict[str, str]:
    """Every actor the instance has had (the GCS's table: no dashboard needed), id -> class."""
    return {actor_id: actor["ActorClassName"] for actor_id, actor in ray._private.state.actors().items()}


def watch(stop: threading.Event, seen: dict) -> None:
    """The least CPU ever free, and every actor that ever existed."""
    while not stop.is_set():
        seen["min_free_cpu"] = min(seen["min_free_cpu"], ray.available_resources().get("CPU", 0.0))
        seen["actors"].update(actor_classes())
        time.sleep(0.2)


def run(config: TrainConfig, data: str, storage_uri: str, workers: int, cpus: str) -> dict:
    resources = train.plan_train_resources(workers, False, None if cpus == "auto" else float(cpus), 1)
    before = set(actor_classes())
    seen = {"min_free_cpu": float("inf"), "actors": {}}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop, seen), daemon=True)
    watcher.start()
    result = train.fit(train.JobConfig(train=config, data_uri=data, threads=1), resources, storage_uri,
                       f"isolated-{workers}-{cpus}")
    stop.set()
    watcher.join()
    seen["actors"].update(actor_classes())
    return {"layout": f"{workers}:{cpus}", "error": str(result.error) if result.error else None,
            "metrics": result.metrics, "checkpoint": result.checkpoint.path if result.checkpoint else None,
            "cpus_per_worker": resources.cpus_per_worker, "min_free_cpu": seen["min_free_cpu"],
            "actors": sorted({name for actor_id, name in seen["actors"].items() if actor_id not in before})}


def main() -> None:
    data, storage_uri, image_size, ngf = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    layouts = [(int(workers), cpus) for workers, cpus in (layout.split(":") for layout in sys.argv[5:])]
    if os.environ.get("RAY_ADDRESS"):
        # No runtime environment: the instance's workers have the test session's variables.
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
    else:
        # A small object store: a data stream behind a slower trainer is then soon backpressured.
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
                 object_store_memory=100 * 2**20,
                 _temp_dir=tempfile.mkdtemp(prefix="rt", dir="/tmp"),
                 runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    config = TrainConfig(image_size=image_size, ngf=ngf, ndf=ngf, depth=4, epochs=1, epochs_decay=1, batch_size=1,
                         precision="fp32")
    for workers, cpus in layouts:
        print(json.dumps(run(config, data, storage_uri, workers, cpus)), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
