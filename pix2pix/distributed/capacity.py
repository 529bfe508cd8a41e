"""Waiting for a node a job can use, and saying so when none can ever come.

A worker or an actor waits until a node can hold it. On an autoscaling cluster the autoscaler
adds such a node if one of its node types is big enough; if none is, Ray waits forever and the
autoscaler only logs it. So before a job starts its work it checks that some alive node could
hold one of its bundles; if none can, it asks the autoscaler for one (``request_resources``) and
waits, saying what it waits for, until such a node is up (the request is sent again at every
poll, since other requesters on the cluster replace it). It gives up in one line when nothing
can come: no autoscaler runs, or the autoscaler launches nothing for ``IDLE_LIMIT_S`` (the
environment variable ``PIX2PIX_AUTOSCALER_WAIT_S`` sets another limit).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import ray
from ray.autoscaler.sdk import request_resources

from pix2pix.errors import JobError

# The autoscaler decides every 5 s (AUTOSCALER_UPDATE_INTERVAL_S), slower on a busy head:
# twelve rounds that launch nothing is its verdict. A launching node keeps the wait going.
IDLE_LIMIT_S = 60.0
# A cluster whose autoscaler decides less often (a larger AUTOSCALER_UPDATE_INTERVAL_S, a busy
# head) needs a longer wait before "nothing is coming" is true; a user who knows no node type
# is that large, or a pipeline that should fail fast, a shorter one.
IDLE_LIMIT_VARIABLE = "PIX2PIX_AUTOSCALER_WAIT_S"
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


def configured_idle_limit_s() -> float:
    """Seconds of the autoscaler launching nothing after which a job gives up waiting for a node:
    ``PIX2PIX_AUTOSCALER_WAIT_S`` if set, else ``IDLE_LIMIT_S``."""
    value = os.environ.get(IDLE_LIMIT_VARIABLE, "").strip()
    if not value:
        return IDLE_LIMIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise JobError(f"{IDLE_LIMIT_VARIABLE} must be a number of seconds above 0, not {value[:40]!r}")
    return seconds


def _say(line: str) -> None:
    print(line, flush=True)


def wait_for_node(bundle: dict[str, float], what: str, hint: str, log: Callable[[str], None] = _say,
                  idle_limit_s: float | None = None) -> float:
    """Return once an alive node can hold ``bundle`` (seconds waited); raise CapacityError when
    none can and none is coming (nothing launched for ``idle_limit_s`` seconds, by default
    ``configured_idle_limit_s()``). ``what`` names the bundle's user ("a training worker"),
    ``hint`` says how to ask for less."""
    if idle_limit_s is None:
        idle_limit_s = configured_idle_limit_s()
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
    try:
        while not any(holds(node, bundle) for node in alive_nodes()):
            # Sent again at every poll: a request is one value for the whole cluster, and other
            # requesters overwrite it. Ray Data's AutoscalingCoordinator, a detached actor that
            # outlives the job that started it, sends its merged requests every 20 s, an empty
            # list when it has none; once it had replaced ours before the autoscaler read it,
            # and the job gave up on a cluster whose node types could hold it.
            request_resources(bundles=[bundle])
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
        request_resources(bundles=[])  # it persists until replaced: the job's own demand takes over
    waited = time.monotonic() - started
    log(f"a node for {what} is up after {waited:.0f} s")
    return waited
