"""The TorchTrainer the training job runs: Ray Train's, less two helper actors it does not use.

Each Ray actor is a Python process that wakes ~100 times a second even when idle; on a 2-core
machine, where torch's two threads wait for each other at every parallel region, that costs
training about twice its CPU share (bench/README.md, Training). Ray Train V2 starts six of them
beside the workers. Two do nothing for this job:

- DatasetManager serves the Ray Datasets passed to the trainer. The job passes none (each worker
  reads its own shards, pix2pix/training/shards.py): without datasets it is dropped, on every cluster.
- PlacementGroupCleaner is a detached actor that frees the workers' placement group when the
  controller dies ungracefully on a cluster that stays up. An instance the job started itself
  goes down with the job, the group with it; there it is dropped. (It also polls the
  controller's state through the dashboard once a second.)

Both are Ray Train's default callbacks, picked out of its private ``_create_default_callbacks``;
tests/test_session.py fails if Ray renames either or stops creating them.
"""

from __future__ import annotations

import ray.train.torch
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback


class LeanTorchTrainer(ray.train.torch.TorchTrainer):
    """``owns_instance``: the Ray instance was started by this process (session.owns_instance)."""

    def __init__(self, *args, owns_instance: bool = False, **kwargs):
        self.owns_instance = owns_instance
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self):
        unused = (() if self.datasets else (DatasetsCallback,)) + \
            ((PlacementGroupCleanerCallback,) if self.owns_instance else ())
        return [callback for callback in super()._create_default_callbacks() if not isinstance(callback, unused)]
