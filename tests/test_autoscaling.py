"""Autoscaling for real: the node types of cluster/aws.yaml, scaled down to this machine, launched
from zero by Ray's autoscaler for the jobs' requests and terminated again when idle.

The cluster is Ray's fake multi-node provider (tests/autoscaling_cluster.py): worker nodes are
local raylets that the real autoscaler starts and stops. The jobs go through `ray job submit`
as a user's would: prepare, train, translate, then a request no node type can hold.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.autoscaling_cluster import (
    actor_nodes,
    autoscaling_head,
    aws_node_types,
    head_node_id,
    scaled_node_types,
    wait_until,
    worker_nodes,
)
from tests.conftest import REPO
from tests.ray_head import VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CPU_DIVISOR = 8  # c6i.4xlarge's 16 CPUs -> 2, g5.2xlarge's 8 -> 1 (its GPU stays 1)
IDLE_TIMEOUT_S = 8.0  # aws.yaml: 5 minutes; the test waits it out at its end (a node launches in ~5-15 s here)
TINY_TRAINING = ("--image-size", "64", "--ngf", "8", "--ndf", "8", "--epochs", "1", "--epochs-decay", "0",
                 "--batch-size", "2", "--precision", "fp32", "--max-failures", "0")


@pytest.fixture(scope="module")
def cluster():
    head, types = aws_node_types(REPO / "cluster" / "aws.yaml")
    assert head == {"CPU": 0}, "the config's head runs no tasks"
    scaled = scaled_node_types(types, CPU_DIVISOR, max_nodes=2)
    with autoscaling_head(head, scaled, IDLE_TIMEOUT_S) as (address, client_env, autoscaler_log):
        yield address, client_env, scaled, autoscaler_log


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from tests.test_train_job import write_pairs

    root = tmp_path_factory.mktemp("autoscaling")
    write_pairs(root / "raw", 16)
    return root


def node_type(node: dict, types: dict[str, dict]) -> str:
    """The node type whose (scaled) CPU and GPU counts the node has."""
    total = node["resources_total"]
    matches = [name for name, spec in types.items()
               if all(total.get(key, 0) == spec["resources"].get(key, 0) for key in ("CPU", "GPU"))]
    assert len(matches) == 1, total
    return matches[0]


def submit(client_env: dict, *entrypoint: str, timeout: int = 400,
           env_vars: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """`ray job submit` as a user would, with ``env_vars`` in the job's runtime environment."""
    started = time.time()
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
    completed = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--working-dir", str(REPO), *runtime_env,
                                "--", "python", *entrypoint], env=client_env, capture_output=True, text=True,
                               timeout=timeout)
    return completed, started


def summary_of(completed: subprocess.CompletedProcess) -> dict:
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(lines[-1])


def timeline(address: str, types: dict, since: float) -> list[str]:
    """One line per worker node: its type, when it came up and went away, relative to ``since``."""
    rows = []
    for node in sorted(worker_nodes(address), key=lambda node: node["start_time_ms"]):
        up = node["start_time_ms"] / 1000 - since
        down = f"{node['end_time_ms'] / 1000 - since:.0f} s" if node["end_time_ms"] else "alive"
        rows.append(f"{node_type(node, types)} node up at {up:.0f} s, gone at {down}")
    return rows


def test_the_city_pipeline_scales_cpu_nodes_up_from_zero_and_back(cluster, workspace):
    from pix2pix.demo import DEMO_TILE_COLUMNS, DEMO_TILE_ROWS, DEMO_TILE_X0, DEMO_TILE_Y0, DEMO_ZOOM, write_tile_grid

    address, client_env, types, autoscaler_log = cluster
    assert worker_nodes(address) == [], "every worker type starts at 0 nodes"
    tiles = write_tile_grid(str(workspace / "city"), DEMO_ZOOM, DEMO_TILE_X0, DEMO_TILE_Y0, DEMO_TILE_COLUMNS,
                            DEMO_TILE_ROWS, tile_size=64)
    data, runs, maps = workspace / "data", workspace / "runs", workspace / "maps"
    began = time.time()
    stages = {}
    for stage, entrypoint in (
        ("prepare", ("jobs/prepare.py", "--input", str(workspace / "raw"), "--output", str(data))),
        ("train", ("jobs/train.py", "--data", str(data), "--storage", str(runs), "--name", "city", *TINY_TRAINING)),
        ("translate", ("jobs/translate.py", "--input", str(workspace / "city" / "sat"), "--output", str(maps),
                       "--checkpoint", str(runs / "city"), "--threads", "1")),
    ):
        completed, started = submit(client_env, *entrypoint)
        assert completed.returncode == 0, (f"{stage}: " + completed.stdout[-3000:] + completed.stderr[-3000:]
                                           + "\nthe autoscaler's log:\n" + autoscaler_log())
        if stage == "train":  # quiet by default: Ray Train's ERROR line about its own PreemptionWatcher is filtered
            assert "PreemptionWatcher" not in completed.stdout + completed.stderr
        stages[stage] = (started - began, time.time() - began, summary_of(completed))
        print(*(f"{stage}| {line}" for line in completed.stdout.splitlines()
                if "autoscaler" in line or "node for" in line), sep="\n")

    launched = worker_nodes(address)
    assert launched and {node_type(node, types) for node in launched} == {"cpu"}, \
        "CPU jobs launch cpu nodes only (the head has no CPUs, no gpu node is needed)"
    assert stages["train"][2]["workers"] == 1 and stages["train"][2]["checkpoint"], stages["train"][2]
    # --recipe auto on CPUs is compact: its learning rate, the widths given on the command line
    assert stages["train"][2]["recipe"] == {"name": "compact", "ngf": 8, "ndf": 8, "lr": 0.0004}
    assert stages["translate"][2]["written"] == len(tiles) and stages["translate"][2]["failed"] == 0
    assert len(list(maps.rglob("*.png"))) == len(tiles)
    # The job's zero-CPU helper lived beside the driver (on the head), not on a node the
    # autoscaler retires once idle: there it failed a job that had written every tile.
    assert actor_nodes(address, "PlanTally") == [head_node_id(address)]

    wait_until(lambda: all(node["state"] == "DEAD" for node in worker_nodes(address)), IDLE_TIMEOUT_S + 90,
               "the idle nodes to be terminated")
    for node in worker_nodes(address):
        assert node["end_time_ms"] - node["start_time_ms"] >= IDLE_TIMEOUT_S * 1000, "a node goes only once idle"
    report = [f"{stage}: submitted at {start:.0f} s, finished at {end:.0f} s"
              for stage, (start, end, _) in stages.items()]
    print("\n".join(["autoscaling sequence (seconds from the first submission):", *report,
                     *timeline(address, types, began)]))


def test_a_worker_no_node_type_can_hold_fails_in_one_line(cluster, workspace):
    address, client_env, types, _ = cluster
    data = workspace / "data"
    if not data.is_dir():
        completed, _ = submit(client_env, "jobs/prepare.py", "--input", str(workspace / "raw"), "--output", str(data))
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    before = len(worker_nodes(address))
    # The job's wait for a launch, set the way a user sets it (the default 60 s: the test below).
    completed, started = submit(client_env, "jobs/train.py", "--data", str(data), "--storage", str(workspace / "runs"),
                                "--name", "too-big", "--cpus-per-worker", "64", *TINY_TRAINING, timeout=300,
                                env_vars={"PIX2PIX_AUTOSCALER_WAIT_S": "3"})
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert re.search(r"error: no node can hold a training worker \{CPU: 64\}: the largest node has .*launched "
                     r"nothing for it in 3 s", output), output[-3000:]
    assert "Traceback" not in output
    assert len(worker_nodes(address)) == before, "nothing was launched for it"


# A job's driver: another requester replaces its request for a node right after it is sent, as
# Ray Data's AutoscalingCoordinator (a detached actor left by any earlier Ray Data job) does every
# 20 s with its own requests, an empty list when it has none.
REPLACED_REQUEST_JOB = """
import json, threading, time
import ray
from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.autoscaler.sdk import request_resources
from ray.experimental.internal_kv import _internal_kv_get
from pix2pix.distributed.capacity import wait_for_node

ray.init()

def replace_the_first_request():
    while json.loads(_internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL) or b"[]") == []:
        time.sleep(0.005)
    request_resources(bundles=[])
    print("another requester replaced the request", flush=True)

threading.Thread(target=replace_the_first_request, daemon=True).start()
print(json.dumps({"waited": wait_for_node({"CPU": 1.0}, "a task", "ask for less", idle_limit_s=20)}))
"""


def test_a_request_replaced_by_another_requester_still_gets_its_node(cluster):
    address, client_env, _, autoscaler_log = cluster
    wait_until(lambda: all(node["state"] == "DEAD" for node in worker_nodes(address)), IDLE_TIMEOUT_S + 90,
               "no worker node, so that the job must ask for one")
    before = len(worker_nodes(address))
    completed, _ = submit(client_env, "-c", REPLACED_REQUEST_JOB, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:] + "\nthe autoscaler's log:\n" + autoscaler_log()
    assert "another requester replaced the request" in output
    assert summary_of(completed)["waited"] > 0 and len(worker_nodes(address)) > before


def test_without_room_and_without_a_launch_the_wait_ends_in_one_line(ray_session, monkeypatch):
    from pix2pix.distributed import capacity
    from pix2pix.distributed.capacity import CapacityError, wait_for_node

    monkeypatch.setattr(capacity, "POLL_S", 0.25)  # the limits below are what is checked, not the polling
    lines = []
    assert wait_for_node({"CPU": 1.0}, "a worker", "ask for less", log=lines.append) == 0.0 and lines == []
    refusal = (r"^no node can hold a worker \{CPU: 64\}: the largest node has \{CPU: 2\}, "
               r"and the autoscaler launched nothing .* in 3 s .*; ask for less$")
    with pytest.raises(CapacityError, match=refusal):
        wait_for_node({"CPU": 64.0}, "a worker", "ask for less", log=lines.append, idle_limit_s=3)
    assert lines == ["waiting for a node for a worker {CPU: 64}: asking the autoscaler"]
    monkeypatch.setenv("PIX2PIX_AUTOSCALER_WAIT_S", "2")  # what a job's runtime environment sets
    with pytest.raises(CapacityError, match=r"launched nothing for it in 2 s"):
        wait_for_node({"CPU": 64.0}, "a worker", "ask for less", log=lines.append)


def test_the_wait_for_a_launch_is_60_s_unless_the_environment_says_otherwise(monkeypatch):
    from pix2pix.distributed.capacity import configured_idle_limit_s
    from pix2pix.errors import JobError

    monkeypatch.delenv("PIX2PIX_AUTOSCALER_WAIT_S", raising=False)
    assert configured_idle_limit_s() == 60.0
    for value, seconds in (("", 60.0), ("300", 300.0), (" 7.5 ", 7.5)):
        monkeypatch.setenv("PIX2PIX_AUTOSCALER_WAIT_S", value)
        assert configured_idle_limit_s() == seconds, value
    for value in ("ten", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("PIX2PIX_AUTOSCALER_WAIT_S", value)
        with pytest.raises(JobError, match=r"^PIX2PIX_AUTOSCALER_WAIT_S must be a number of seconds above 0"):
            configured_idle_limit_s()
