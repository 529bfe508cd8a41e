"""Waiting for a node a job can use, and saying so when none can ever come.

A worker or an actor waits until a node can hold it. On an autoscaling cluster the autoscaler
adds such a node if one of its node types is big enough; if none is, Ray waits forever and the
autoscaler only logs it. So before a job starts its work it checks that some alive node could
hold one of its bundles; if none can, it asks the autoscaler for one (``request_resources``) and
waits, saying what it waits for, until such a node is up. It gives up in one line when nothing
can come: no autoscaler runs, or the autoscaler launches nothing for ``IDLE_LIMIT_S``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import ray
from ray.autoscaler.sdk import request_resources

from pix2pix.errors import JobError

# The autoscaler decides every 5 s (AUTOSCALER_UPDATE_INTERVAL_S), slower on a busy head (a
# 2-core test cluster once launched nothing in 30 s while it retired the last job's nodes):
# twelve rounds that launch nothing is its verdict. A launching node keeps the wait going.
IDLE_LIMIT_S = 60.0
POLL_S = 2.0
REPORT_EVERY_S = 30.0
_STATUS_KEY = "__autoscaling_status"  # ray_constants.DEBUG_AUTOSCALING_STATUS (autoscaler v1)


class CapacityError(JobError):
    """The cluster has no node for the job's workers, and none is coming."""


def describe(resources: dict[str, float]) -> str:
    """CPUs always, GPUs when there are any: '{CPU: 16, GPU: 1}'."""
    shown = {"CPU": resources.get("CPU", 0.0), **({"GPU": resources["GPU"]} if resources.get("GPU") else {})}
    return "{" + ", ".join(f"{name}: {value:g}" for name, value in shown.items()) + "}"


def holds(node: dict[str, float], bundle: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in bundle.items() if amount > 0)


def alive_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def autoscaler_launching() -> bool | None:
    """None when no autoscaler runs; else whether it is launching or starting a node now."""
    from ray.experimental.internal_kv import _internal_kv_get

    status = _internal_kv_get(_STATUS_KEY)
    if status:
        report = json.loads(status).get("autoscaler_report") or {}
        return bool(report.get("pending_launches") or report.get("pending_nodes"))
    from ray.autoscaler.v2.utils import is_autoscaler_v2

    if not is_autoscaler_v2(fetch_from_server=True):
        return None
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    return bool(status.pending_launches or status.pending_nodes)


def _say(line: str) -> None:
    print(line, flush=True)


def wait_for_node(bundle: dict[str, float], what: str, hint: str, log: Callable[[str], None] = _say,
                  idle_limit_s: float = IDLE_LIMIT_S) -> float:
    """Return once an alive node can hold ``bundle`` (seconds waited); raise CapacityError when
    none can and none is coming. ``what`` names the bundle's user ("a training worker"),
    ``hint`` says how to ask for less."""
    if any(holds(node, bundle) for node in alive_nodes()):
        return 0.0

    def refusal(reason: str) -> CapacityError:
        largest = max(alive_nodes(), key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
        return CapacityError(f"no node can hold {what} {describe(bundle)}: the largest node has "
                             f"{describe(largest)}, and {reason}; {hint}")

    if autoscaler_launching() is None:
        raise refusal("no autoscaler runs to add one")
    started = last_launch = last_report = time.monotonic()
    log(f"waiting for a node for {what} {describe(bundle)}: asking the autoscaler")
    request_resources(bundles=[bundle])
    try:
        while not any(holds(node, bundle) for node in alive_nodes()):
            now = time.monotonic()
            if autoscaler_launching():
                last_launch = now
            elif now - last_launch > idle_limit_s:
                raise refusal(f"the autoscaler launched nothing for it in {idle_limit_s:.0f} s "
                              "(no node type is that large)")
            if now - last_report > REPORT_EVERY_S:
                log(f"still waiting for a node for {what} ({now - started:.0f} s)")
                last_report = now
            time.sleep(POLL_S)
    finally:
        request_resources(bundles=[])  # the request persists until replaced: the job's own demand takes over
    waited = time.monotonic() - started
    log(f"a node for {what} is up after {waited:.0f} s")
    return waited
