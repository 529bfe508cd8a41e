"""Connecting to Ray the same way from every job."""

from __future__ import annotations

import logging
import os

import ray
from ray._private import services

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def starts_local_instance(address: str | None) -> bool:
    """Whether ``ray.init(address)`` would start a new Ray instance in this process rather than
    join a running cluster (RAY_ADDRESS, or a head started on this machine with `ray start`)."""
    services.find_gcs_addresses.cache_clear()
    return services.canonicalize_bootstrap_address(address) is None


def init(verbose: bool = False, dashboard: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (or a running local one), else start a local one.
    Ray's own warnings (e.g. that token authentication is on) only with ``verbose``.

    A local instance starts lean: without the dashboard's modules (unless ``dashboard``; Ray's
    minimal dashboard and its agent still serve the job API) and without Ray Train's preemption
    watcher (nothing drains the nodes of an instance this process owns). Each idle Ray process
    wakes ~100 times a second; on a 2-core machine, where torch's two threads wait for each other
    at every parallel region, that costs training about twice its CPU share (bench/README.md,
    Training). A cluster keeps all of it."""
    if ray.is_initialized():
        return
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    address = os.environ.get("RAY_ADDRESS")
    if starts_local_instance(address):
        os.environ.setdefault(PREEMPTION_WATCHER, "0")  # read by Ray Train's controller; a user's setting wins
    ray.init(
        address=address,
        include_dashboard=dashboard,  # ignored when joining a cluster
        logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=True,
        # Ray Train's print patch tees each worker print to stdout and to a logger that prints it
        # again: every epoch line would reach the driver twice.
        runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )
    if not verbose:  # Ray Data's execution plan, resource lines and progress-bar notices
        logging.getLogger("ray.data").setLevel(logging.ERROR)
