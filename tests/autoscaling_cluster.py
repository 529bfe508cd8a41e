"""A real autoscaling Ray cluster on this machine, built from the node types of a cluster config.

Ray's fake multi-node provider (the one behind ``ray.cluster_utils.AutoscalingCluster``) lets the
real autoscaler launch and terminate worker nodes as local processes. AutoscalingCluster itself
runs a bare ``ray stop --force`` (it would kill every Ray process on the machine) and reads a
defaults file the Ray wheel does not ship, so the head is started here the way tests/ray_head.py
starts one (own ports, own temp dir, own process group) with the provider loaded as an
external module.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import yaml

from tests.conftest import free_port
from tests.ray_head import ray_head

HEAD_TYPE = "ray.head.default"  # the fake provider names its head node type so
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# Each worker node is a raylet with its own object store: keep them small on a 24 GiB machine.
NODE_OBJECT_STORE_BYTES = 200 * 1024**2


def scaled_node_types(node_types: dict[str, dict], cpu_divisor: int, max_nodes: int) -> dict[str, dict]:
    """A cluster's worker node types at a size this machine can run: CPU counts divided by
    ``cpu_divisor`` (at least 1), other resources (GPU) kept, every type from 0 nodes up to
    ``max_nodes``."""
    scaled = {}
    for name, node_type in node_types.items():
        resources = dict(node_type.get("resources", {}))
        if "CPU" in resources:
            resources["CPU"] = max(1, math.floor(resources["CPU"] / cpu_divisor))
        scaled[name] = {"resources": {**resources, "object_store_memory": NODE_OBJECT_STORE_BYTES},
                        "node_config": {}, "min_workers": 0,
                        "max_workers": min(node_type.get("max_workers", max_nodes), max_nodes)}
    return scaled


def aws_node_types(path: Path) -> tuple[dict, dict[str, dict]]:
    """(head resources, worker node types) of a cluster-launcher config."""
    config = yaml.safe_load(path.read_text())
    types = dict(config["available_node_types"])
    head = types.pop(config["head_node_type"])
    return dict(head.get("resources", {})), types


def autoscaler_config(head_resources: dict, worker_types: dict[str, dict], gcs_address: str,
                      idle_timeout_s: float) -> dict:
    return {
        "cluster_name": "pix2pix-local",
        "max_workers": sum(node_type["max_workers"] for node_type in worker_types.values()),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": gcs_address,
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {**worker_types,
                                 HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0}},
        "head_node_type": HEAD_TYPE,
        "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@contextlib.contextmanager
def autoscaling_head(head_resources: dict, worker_types: dict[str, dict], idle_timeout_s: float,
                     env: dict[str, str] | None = None):
    """Yield (dashboard address, environment for `ray job submit`, the autoscaler's log tail) of
    a head whose autoscaler launches ``worker_types`` nodes on demand and terminates them after
    ``idle_timeout_s``. The log tail is a function: what the autoscaler logged last, for a
    failure's message."""
    port = free_port()
    config = autoscaler_config(head_resources, worker_types, f"127.0.0.1:{port}", idle_timeout_s)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(config, file)
    assert set(head_resources) <= {"CPU"}, "a head with resources other than CPUs is not supported here"
    fake_env = {**(env or {}), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    try:
        with ray_head(env=fake_env, num_cpus=int(head_resources.get("CPU", 0)), port=port, temp_dir=temp_dir,
                      extra_args=[f"--autoscaling-config={file.name}"]) as (address, client_env):
            yield address, client_env, lambda: autoscaler_log_tail(Path(temp_dir))
    finally:
        os.unlink(file.name)


def autoscaler_log_tail(temp_dir: Path, lines: int = 60) -> str:
    """The last lines of the autoscaler's (the monitor's) logs under a head's temp dir."""
    tails = []
    for path in sorted((temp_dir / "session_latest" / "logs").glob("monitor.*")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        tails.append(f"--- {path.name} ---\n" + "\n".join(text))
    return "\n".join(tails) or f"no monitor log under {temp_dir}"


def _state(address: str, resource: str) -> list[dict]:
    """Every entry of one kind (nodes, actors; alive or dead) from Ray's state API. The head
    started by `ray start` uses token authentication with the token `ray start` generated."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    client = StateApiClient(address=address, headers={"Authorization": f"Bearer {token}"})
    entries = client.list(StateResource(resource), ListApiOptions(detail=True, limit=1000),
                          raise_on_missing_output=False)
    return [entry if isinstance(entry, dict) else entry.__dict__ for entry in entries]


def worker_nodes(address: str) -> list[dict]:
    """Every worker node the cluster has had (alive or dead)."""
    return [node for node in _state(address, "nodes") if not node["is_head_node"]]


def head_node_id(address: str) -> str:
    [head] = [node["node_id"] for node in _state(address, "nodes") if node["is_head_node"]]
    return head


def actor_nodes(address: str, class_name: str) -> list[str]:
    """The node ids of every actor of that class the cluster has had (alive or dead)."""
    return [actor["node_id"] for actor in _state(address, "actors") if actor["class_name"] == class_name]


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
