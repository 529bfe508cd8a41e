"""The reliability suite's shared pieces: a fault proxy per test, finding and killing the test's
own Ray workers, waiting for events, and the table of measured results.

Every process killed here belongs to the test: a Ray actor of the test session's own Ray
instance (found through its GCS, by class name) or a subprocess the test started.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pix2pix.distributed.translate import BLOCK_UNITS
from pix2pix.tiles.tileset import TILEJSON_FILE
from tests.reliability.fault_proxy import NO_FAULTS, FaultProxy, Schedule

# Two of the pipeline's blocks (BLOCK_UNITS tiles travel together between its stages), so that
# the first half, columns 0-3, is written while the reads of the second half are held.
COLUMNS, ROWS = 8, 2 * BLOCK_UNITS // 8
GRID = [(x, y) for x in range(COLUMNS) for y in range(ROWS)]  # 128 tiles, 64 px, zoom 12
TILES = len(GRID)

RESULTS: list[dict] = []
RESULTS_FILE = os.environ.get("PIX2PIX_RELIABILITY_RESULTS")  # optional: the table as JSON lines


@pytest.fixture
def record():
    """record(fault, outcome, lost, recover_s): one row of the reliability table."""

    def add(fault: str, outcome: str, lost: str = "none", recover_s: float | None = None) -> None:
        row = {"fault": fault, "outcome": outcome, "lost": lost,
               "recover_s": None if recover_s is None else round(recover_s, 1)}
        RESULTS.append(row)
        if RESULTS_FILE:
            with open(RESULTS_FILE, "a") as handle:
                handle.write(json.dumps(row) + "\n")

    return add


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    terminalreporter.section("reliability: fault injected | what happened | data lost | time to recover")
    for row in RESULTS:
        recover = "-" if row["recover_s"] is None else f"{row['recover_s']} s"
        terminalreporter.write_line(f"{row['fault']} | {row['outcome']} | {row['lost']} | {recover}")


@pytest.fixture
def fault_proxy(s3_endpoint, monkeypatch):
    """fault_proxy(schedule) -> a started FaultProxy in front of the test S3 server, with this
    process's AWS_ENDPOINT_URL pointing at it (Ray workers keep theirs: jobs hand them the
    resolved filesystem, which carries the endpoint)."""
    proxies = []

    def start(schedule: Schedule = NO_FAULTS) -> FaultProxy:
        proxy = FaultProxy(s3_endpoint, schedule).__enter__()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        return proxy

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)


@pytest.fixture(scope="session")
def corpus(ray_session, s3_endpoint, tmp_path_factory):
    """The same 128 tiles locally and on S3, a tiny generator (ngf 8), and the output of an
    uninterrupted run: what every faulty run must reproduce byte for byte."""
    import boto3

    from tests.test_translate_job import export, translate, write_grid

    root = tmp_path_factory.mktemp("corpus")
    bucket = "corpus-" + os.urandom(4).hex()
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    write_grid(str(root / "in"), GRID)
    write_grid(f"s3://{bucket}/sat", GRID)
    model = export(str(root / "model"))
    summary = translate(str(root / "in"), str(root / "reference"), model)
    assert summary["written"] == TILES
    return {"local": str(root / "in"), "s3": f"s3://{bucket}/sat", "bucket": bucket, "model": model,
            "reference": contents(root / "reference")}


# ---- the test's own Ray workers -----------------------------------------------------------------

def actor_pids(class_fragment: str) -> list[int]:
    """PIDs of the live actors of this process's Ray instance whose class name contains the
    fragment (Ray Data names them e.g. 'MapWorker(MapBatches(GeneratorStage))')."""
    from ray._private import state

    return [actor["Pid"] for actor in state.actors().values()
            if actor["State"] == "ALIVE" and class_fragment in actor["ActorClassName"] and actor["Pid"]]


def process_title(pid: int) -> str:
    """Ray sets a worker's title to 'ray::Class.method' while it runs a task, 'ray::Class' idle."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def kill(pid: int) -> None:
    """SIGKILL a process this test session started: the test's own Ray instance (started by
    ray.init here) and every worker of it descend from this process; anything else is refused."""
    ancestor = pid
    while ancestor > 1:
        ancestor = _parent(ancestor)
        if ancestor == os.getpid():
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"refusing to kill pid {pid}: not a process of this test session")


def wait_for(condition, timeout: float, what: str, interval: float = 0.01, background=None):
    """Poll until condition() is truthy (returned); fail with `what` on timeout, or at once
    when the background run it waits on has died."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if background is not None:
            background.raise_if_failed()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Background:
    """Run a call in a thread; result() joins and re-raises its exception."""

    def __init__(self, function, *args, **kwargs):
        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(function, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, function, args, kwargs):
        try:
            self.value = function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error

    def raise_if_failed(self):
        """Re-raise the run's exception; an AssertionError when it ended without one (the test
        was still waiting on it)."""
        if self.thread.is_alive():
            return
        if self.error is not None:
            raise self.error
        raise AssertionError(f"the run ended while the test was still waiting on it: {self.value}")

    def result(self, timeout: float):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the run did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error
        return self.value


# ---- outputs ---------------------------------------------------------------------------------

def visible_files(root: Path) -> list[Path]:
    """The tiles a reader of the output sees (bookkeeping `_failures/`, hidden temporaries and
    tiles.json, which names the output's own path, left out)."""
    if not root.exists():
        return []
    return sorted(path for path in root.rglob("*") if path.is_file() and path.name != TILEJSON_FILE
                  and not any(part.startswith((".", "_")) for part in path.relative_to(root).parts))


def hidden_files(root: Path) -> list[Path]:
    """Temporaries (`.name.uuid.tmp`) or any other hidden file left under a folder."""
    if not root.exists():
        return []
    return sorted(path for path in root.rglob(".*") if path.is_file())


def contents(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in visible_files(root)}
