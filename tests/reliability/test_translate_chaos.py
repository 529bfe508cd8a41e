"""Chaos for batch translation: real processes killed with SIGKILL while a run is in flight.

Every kill is triggered by an event, never by a sleep: the input is read from S3 through the
fault proxy, which holds the reads of the second half of the tiles until the test lets them
go; the test acts when the proxy reports a held read, when a Ray actor's process title shows
it executing a batch, or when N tiles are in the output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, S3_SECRET_KEY
from tests.reliability.conftest import (
    COLUMNS,
    TILES,
    Background,
    actor_pids,
    contents,
    hidden_files,
    kill,
    process_title,
    visible_files,
    wait_for,
)
from tests.reliability.fault_proxy import NO_FAULTS, Request
from tests.test_translate_job import translate

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

HALF = TILES // 2


def second_half(request: Request) -> bool:
    """GETs of the tiles of columns 4..7: held by the gate."""
    parts = request.path.rsplit("/", 3)
    return request.method == "GET" and len(parts) == 4 and parts[1] == "12" and int(parts[2]) >= COLUMNS // 2


@pytest.mark.timeout(240)
def test_inference_actor_and_decode_worker_killed_mid_run(corpus, fault_proxy, tmp_path, record):
    """SIGKILL the generator actor while it runs a batch, and the read/decode actor while it is
    blocked in a read: Ray restarts both and retries their batches; every tile is written
    once, byte-identical to an uninterrupted run."""
    proxy = fault_proxy(NO_FAULTS)
    proxy.hold(second_half)
    out = tmp_path / "out"
    # HALF tiles per call: the generator is busy long enough to be caught inside a batch.
    run = Background(translate, corpus["s3"], str(out), corpus["model"], batch_size=HALF)
    written = lambda: len(visible_files(out))  # noqa: E731
    kills = {}

    def busy_generator():
        return next((pid for pid in actor_pids("GeneratorStage") if process_title(pid).endswith(".submit")), None)

    def kill_and_time(name: str, pid: int, after=None) -> None:
        title, before = process_title(pid), written()
        kill(pid)
        killed_at = time.monotonic()
        if after:
            after()
        wait_for(lambda: written() > before, 120, f"a tile after the {name} kill", background=run)
        kills[name] = (title, time.monotonic() - killed_at)

    def kill_blocked_reader() -> None:
        """The second half's reads are held at the gate: the read actor is inside a read."""
        wait_for(lambda: written() == HALF and proxy.stats.held, 120, "the first half written and the rest held",
                 background=run)
        [reader] = actor_pids("ReadStage")
        kill_and_time("reader", reader, after=proxy.release)

    # The generator inside its first batch; should that be missed, inside its second one.
    def generator_busy_or_first_half_done():
        pid = busy_generator()
        if pid is not None:
            return ("busy", pid)
        return ("missed", None) if written() == HALF and proxy.stats.held else None

    state, pid = wait_for(generator_busy_or_first_half_done, 180, "the generator running a batch", interval=0.002,
                          background=run)
    if state == "busy":
        kill_and_time("generator", pid)
        kill_blocked_reader()
    else:
        kill_blocked_reader()
        pid = wait_for(busy_generator, 120, "the generator running a batch", interval=0.002, background=run)
        kill_and_time("generator", pid)

    summary = run.result(timeout=180)
    assert all(title.endswith(".submit") for title, _ in kills.values()), kills  # both killed inside a task
    assert (summary["written"], summary["failed"], summary["skipped"]) == (TILES, 0, 0), summary
    assert contents(out) == corpus["reference"]  # every tile, once, the same bytes
    assert not hidden_files(out)
    record("translate: generator actor SIGKILLed inside a batch",
           f"actor restarted, batch retried; {TILES}/{TILES} tiles written once, bytes identical",
           "none", kills["generator"][1])
    record("translate: read/decode actor SIGKILLed inside a read",
           f"actor restarted, batch retried; {TILES}/{TILES} tiles written once, bytes identical "
           "(lost 24 tiles silently before the fix)", "none", kills["reader"][1])


@pytest.mark.timeout(240)
def test_progress_tally_killed_mid_run_the_job_still_finishes(corpus, fault_proxy, tmp_path, record, capsys):
    """SIGKILL the zero-CPU actor that tallies the planned tiles (as an autoscaler retiring its
    node would) while the run is in flight: progress goes on without a total, said once, and
    the job writes every tile and returns its summary."""
    proxy = fault_proxy(NO_FAULTS)
    proxy.hold(second_half)
    out = tmp_path / "out"
    run = Background(translate, corpus["s3"], str(out), corpus["model"])
    [tally] = wait_for(lambda: actor_pids("PlanTally"), 120, "the plan tally actor", background=run)
    kill(tally)
    killed_at = time.monotonic()
    wait_for(lambda: len(visible_files(out)) == HALF and proxy.stats.held, 120,
             "the first half written and the rest held", background=run)
    proxy.release()
    summary = run.result(timeout=180)
    assert (summary["written"], summary["failed"], summary["skipped"]) == (TILES, 0, 0), summary
    assert contents(out) == corpus["reference"]
    printed = capsys.readouterr().out
    assert printed.count("progress goes on without the planned total") == 1, printed
    record("translate: the progress tally actor SIGKILLed mid-run",
           f"progress went on without a total; {TILES}/{TILES} tiles written, rc 0 "
           "(the job failed at its last progress line before the fix)", "none", time.monotonic() - killed_at)


@pytest.mark.timeout(300)
def test_driver_killed_at_half_then_rerun_writes_only_the_missing_tiles(corpus, fault_proxy, tmp_path, record):
    """Kill the whole driver (its process group) once half the tiles are written; a rerun writes
    exactly the missing half and the output equals an uninterrupted run's byte for byte."""
    import ray

    proxy = fault_proxy(NO_FAULTS)
    proxy.hold(second_half)
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ray._private.worker._global_node.address}  # the test's own cluster
    command = [sys.executable, str(REPO / "jobs" / "translate.py"), "--input", corpus["s3"], "--output", str(out),
               "--checkpoint", corpus["model"], "--threads", "1", "--max-actors", "1"]
    logs = tmp_path / "first.log"
    with open(logs, "w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: len(visible_files(out)) >= HALF and proxy.stats.held, 240,
                     f"{HALF} tiles written and the rest held", interval=0.05)
            os.killpg(driver.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            driver.wait(timeout=30)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    proxy.release()
    written_by_first = len(visible_files(out))
    assert driver.returncode == -signal.SIGKILL and written_by_first == HALF

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    recovered = time.monotonic() - killed_at
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["written"], summary["skipped"], summary["failed"]) == (TILES - HALF, HALF, 0), summary
    assert contents(out) == corpus["reference"]
    assert not hidden_files(out)
    for text in (logs.read_text(), rerun.stdout, rerun.stderr):
        assert S3_SECRET_KEY not in text
    record(f"translate: driver process group SIGKILLed at {HALF}/{TILES} tiles",
           f"rerun planned {HALF} skipped + {TILES - HALF} missing; output byte-identical to an uninterrupted run",
           f"none (the {HALF} written tiles kept, the rest rewritten)", recovered)
