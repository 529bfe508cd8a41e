"""How the jobs start or join Ray (pix2pix/distributed/session.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Prints whether this process started the instance, how many of the dashboard's modules run
# (processes named ray-dashboard-*Head* under it: none in Ray's minimal dashboard) and the
# preemption watcher's setting.
WHAT_STARTED = """
import json, os, time, ray
from pix2pix.distributed import session
session.init(dashboard={dashboard})
node = ray._private.worker._global_node
time.sleep(5)  # the dashboard starts its modules after ray.init returns

def parent(pid):
    stat = open(f"/proc/{{pid}}/stat").read()
    return int(stat[stat.rfind(")") + 2:].split()[1])

def descends(pid, ancestor):
    while pid > 1:
        pid = parent(pid)
        if pid == ancestor:
            return True
    return False

modules = 0
if "dashboard" in node.all_processes:
    dashboard = node.all_processes["dashboard"][0].process.pid
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            named = open(f"/proc/{{pid}}/cmdline").read().startswith("ray-dashboard-")
            modules += named and descends(int(pid), dashboard)
        except OSError:
            pass
print(json.dumps({{"head": node.head, "dashboard_modules": modules,
                   "watcher": os.environ.get(session.PREEMPTION_WATCHER)}}))
"""


def started(dashboard: bool, env: dict) -> dict:
    completed = subprocess.run([sys.executable, "-c", WHAT_STARTED.format(dashboard=dashboard)], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_local_instance_starts_lean_and_a_cluster_is_joined_as_it_is(ray_session):
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")}
    assert started(False, env) == {"head": True, "dashboard_modules": 0, "watcher": "0"}
    assert started(True, env)["dashboard_modules"] >= 5
    # joining a running cluster (the test session's own) changes nothing there: the watcher stays on
    import ray

    joined = started(False, {**env, "RAY_ADDRESS": ray._private.worker._global_node.address})
    assert joined["head"] is False and joined["watcher"] is None


def test_only_an_unset_address_or_local_starts_an_instance():
    from pix2pix.distributed.session import starts_local_instance

    assert starts_local_instance("local")
    assert not starts_local_instance("127.0.0.1:6379")
