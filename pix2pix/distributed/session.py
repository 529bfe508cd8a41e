"""Connecting to Ray the same way from every job."""

from __future__ import annotations

import logging
import os

import ray
from ray._private import services
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pix2pix.errors import JobError

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
_owns_instance = False


def starts_local_instance(address: str | None) -> bool:
    """Whether ``ray.init(address)`` would start a new Ray instance in this process rather than
    join a running cluster (RAY_ADDRESS, or a head started on this machine with `ray start`)."""
    services.find_gcs_addresses.cache_clear()
    return services.canonicalize_bootstrap_address(address) is None


def init(verbose: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (or a running local one), else start a local one.
    Ray's own warnings (e.g. that token authentication is on) only with ``verbose``.

    A local instance starts without Ray Train's preemption watcher: nothing drains the nodes of
    an instance this process owns, and every idle Ray process costs a 2-core machine's training
    about twice its CPU share (pix2pix/distributed/lean_trainer.py). A cluster keeps it."""
    global _owns_instance
    if ray.is_initialized():
        return
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    address = os.environ.get("RAY_ADDRESS")
    _owns_instance = starts_local_instance(address)
    if _owns_instance:
        os.environ.setdefault(PREEMPTION_WATCHER, "0")  # read by Ray Train's controller; a user's setting wins
    try:
        ray.init(
            address=address,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=True,
            # Ray Train's print patch tees each worker print to stdout and to a logger that prints it
            # again: every epoch line would reach the driver twice.
            runtime_env={"env_vars": {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        )
    except ConnectionError as error:
        raise JobError(f"cannot reach the Ray cluster at {address or 'the local head'}: {error}") from None
    if not verbose:  # Ray Data's execution plan, resource lines and progress-bar notices
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def owns_instance() -> bool:
    """Whether init() started the Ray instance this process runs on (it ends with the process)."""
    return _owns_instance


def on_driver_node() -> NodeAffinitySchedulingStrategy:
    """The scheduling strategy for a job's helper actors (progress, tallies): the driver's own
    node, as Ray Train pins its controller. A zero-CPU actor does not keep an autoscaled node
    busy: elsewhere the autoscaler may retire its node, and the actor with it."""
    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
