"""Per-step callbacks (``JobConfig.on_step``) that the training tests inject into the workers.
Registered to be pickled by value: the Ray workers need not be able to import this module."""

from __future__ import annotations

import os
import sys
import time

import ray.cloudpickle


class CrashOnce:
    """The worker that reaches ``step`` first dies like a lost node, on the first attempt only
    (the marker file remembers it across the restart)."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def __call__(self, step: int) -> None:
        if step == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)


class RecordProgress:
    """Each worker appends "pid step time" to DIRECTORY/rank<r>.log after every step, so that a
    chaos test can kill one mid-epoch and count the steps lost."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self, step: int) -> None:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(self.directory, f"rank{rank}.log"), "a") as log:
            log.write(f"{os.getpid()} {step} {time.time():.3f}\n")


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
