"""A training run in a Ray instance of its own (2 CPUs), for tests that may hang: the test
runs this module in a subprocess with a timeout, so a hang never blocks the shared session.

    python -m tests.isolated_training DATA STORAGE WORKERS CPUS_PER_WORKER IMAGE_SIZE NGF

Prints one JSON line: the run's result and what the cluster looked like while it ran.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time

import ray

from pix2pix.distributed import train
from pix2pix.training.step import TrainConfig


def watch(stop: threading.Event, seen: dict) -> None:
    """The least CPU ever free, and the class of every actor that ever existed."""
    while not stop.is_set():
        seen["min_free_cpu"] = min(seen["min_free_cpu"], ray.available_resources().get("CPU", 0.0))
        for actor in ray._private.state.actors().values():  # the GCS's table: no dashboard needed
            seen["actors"].add(actor["ActorClassName"])
        time.sleep(0.2)


def main() -> None:
    data, storage_uri, workers, cpus = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    image_size, ngf = int(sys.argv[5]), int(sys.argv[6])
    # A small object store: a data stream behind a slower trainer is then soon backpressured.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             object_store_memory=100 * 2**20,
             _temp_dir=tempfile.mkdtemp(prefix="rt", dir="/tmp"),
             runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    config = TrainConfig(image_size=image_size, ngf=ngf, ndf=ngf, depth=4, epochs=1, epochs_decay=1, batch_size=1,
                         precision="fp32")
    resources = train.plan_train_resources(workers, False, None if cpus == "auto" else float(cpus), 1)
    seen = {"min_free_cpu": float("inf"), "actors": set()}
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop, seen), daemon=True)
    watcher.start()
    result = train.fit(train.JobConfig(train=config, data_uri=data, threads=1), resources, storage_uri, "isolated")
    stop.set()
    watcher.join()
    print(json.dumps({"error": str(result.error) if result.error else None, "metrics": result.metrics,
                      "checkpoint": result.checkpoint.path if result.checkpoint else None,
                      "cpus_per_worker": resources.cpus_per_worker, "min_free_cpu": seen["min_free_cpu"],
                      "actors": sorted(seen["actors"])}))
    ray.shutdown()


if __name__ == "__main__":
    main()
