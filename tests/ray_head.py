"""A real Ray head for job-submission tests: own ports, own temp dir, own process group.

Stopping it kills only its own process group; a bare ``ray stop`` would kill every Ray
process on the machine, including the test session's own instance.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

VENV_BIN = Path(sys.executable).parent


@contextlib.contextmanager
def ray_head(env: dict[str, str] | None = None, num_cpus: int = 2, port: int | None = None,
             extra_args: list[str] = (), temp_dir: str | None = None):
    """Yield (dashboard address, environment for `ray job submit`). The head's temp dir (its
    logs under ``session_latest/logs``) is ``temp_dir`` if given, and is deleted at the end."""
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths are length-limited
    port, dashboard_port = port or free_port(), free_port()
    # Agent ports too: their defaults (e.g. 52365) may be held by another Ray on the machine,
    # such as the test session's own, and a head without its agent accepts no job.
    agent_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    head_env = {**os.environ, **(env or {}), "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
                "RAY_USAGE_STATS_ENABLED": "0"}
    head_env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
         f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats", *agent_ports, *extra_args],
        env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard_port}"
    client_env = {**head_env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}")
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 until the client sends the auth token)
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("the Ray head's dashboard did not come up in 120 s")
        yield address, client_env
    finally:
        stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop(process: subprocess.Popen, grace_s: float = 2.0) -> None:
    """End the head's process group: SIGTERM, then SIGKILL after ``grace_s``. On SIGTERM a head
    drains for about a minute before it exits (measured: 62 s), and nothing here needs that:
    its logs have been read by then, and its temp dir is deleted next."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 15)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)
            if sig == signal.SIGKILL or not group_alive(process.pid):
                return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def submit(client_env: dict[str, str], working_dir: str, *entrypoint: str, timeout: int = 300):
    """`ray job submit` and wait; returns the CompletedProcess (stdout holds the job's logs).

    A head that has just started may not have its job agent yet: that answer is retried."""
    deadline = time.monotonic() + 180
    while True:
        completed = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--working-dir", working_dir, "--", *entrypoint],
            env=client_env, capture_output=True, text=True, timeout=timeout,
        )
        if "No available agent" not in completed.stderr or time.monotonic() > deadline:
            return completed
        time.sleep(2)
