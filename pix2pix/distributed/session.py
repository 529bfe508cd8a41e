"""Connecting to Ray the same way from every job."""

from __future__ import annotations

import logging
import os

import ray


def init(verbose: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (or the job's own), else start a local one.
    Ray's own warnings (e.g. that token authentication is on) only with ``verbose``."""
    if ray.is_initialized():
        return
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    ray.init(
        address=os.environ.get("RAY_ADDRESS"),
        logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=True,
        # Ray Train's print patch tees each worker print to stdout and to a logger that prints it
        # again: every epoch line would reach the driver twice.
        runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )
    if not verbose:  # Ray Data's execution plan, resource lines and progress-bar notices
        logging.getLogger("ray.data").setLevel(logging.ERROR)
