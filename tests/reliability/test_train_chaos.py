"""Chaos for preparation and training: the whole path runs against S3 behind the fault proxy
(503 SlowDown, 500 InternalError and dropped connections on a fixed schedule), and one DDP
worker process is SIGKILLed in the middle of an epoch once the first checkpoint is stored.

One training run carries both faults: on this 2-core machine a Ray Train run costs about two
minutes, and a run that has to survive both at once is the stronger test. It is also the suite's
two-worker training run against S3 (data, checkpoints and export there).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.reliability.conftest import Background, kill, wait_for
from tests.reliability.fault_proxy import Schedule
from tests.step_hooks import RecordProgress
from tests.test_train_job import TINY, assert_export_reproduces_training_state, two_cpu_workers, write_pairs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PAIRS = 24
STEPS_PER_EPOCH = PAIRS // (2 * TINY.batch_size)  # 2 workers
KILL_AT_STEP = STEPS_PER_EPOCH + STEPS_PER_EPOCH // 2  # the middle of epoch 2; epoch 1 is checkpointed


def read_progress(directory: Path, rank: int) -> list[tuple[int, int, float]]:
    """(pid, step, time) lines written by the progress hook of pix2pix.distributed.train."""
    path = directory / f"rank{rank}.log"
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) == 3:
            lines.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return lines


def stored_checkpoints(s3, bucket: str, prefix: str) -> list[str]:
    """Complete checkpoints under a run, seen directly in the store (not through the proxy)."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(entry["Key"] for entry in listing if entry["Key"].endswith("/generator.json"))


@pytest.mark.timeout(480)
def test_prepare_and_training_survive_s3_faults_and_a_killed_worker(ray_session, s3_endpoint, fault_proxy,
                                                                    tmp_path, record):
    import boto3

    from pix2pix.distributed.prepare import prepare
    from pix2pix.distributed.train import JobConfig, fit

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)  # the test's own view, past the proxy
    bucket = "train-chaos-" + os.urandom(4).hex()
    s3.create_bucket(Bucket=bucket)
    write_pairs(tmp_path / "raw", PAIRS)
    raw = {}
    for path in sorted((tmp_path / "raw" / "train").rglob("*.*")):  # train only: no validation pass
        key = f"raw/{path.relative_to(tmp_path / 'raw')}"
        raw[key] = path.read_bytes()
        s3.put_object(Bucket=bucket, Key=key, Body=raw[key])

    proxy = fault_proxy(Schedule(period=3, failures=1))  # a third of all requests fail once

    # Prepare through the faults: every pair arrives, byte for byte.
    started = time.monotonic()
    summary = prepare(f"s3://{bucket}/raw", f"s3://{bucket}/data")
    prepare_seconds = time.monotonic() - started
    assert summary["pairs"] == {"train": PAIRS} and summary["skipped"] == 0, summary
    prepare_faults = sum(proxy.stats.faults.values())
    shards = [entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket, Prefix="data/train/")["Contents"]
              if entry["Key"].endswith(".parquet")]
    rows = []
    for key in shards:
        rows += pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(f"{i:04d}" for i in range(PAIRS))
    for row in rows:
        assert row["source"] == raw[f"raw/train/sat/{row['key']}.jpg"]
        assert row["target"] == raw[f"raw/train/map/{row['key']}.png"]

    # Train through the faults; kill one worker in the middle of epoch 2.
    progress = tmp_path / "progress"
    progress.mkdir()
    config = JobConfig(train=TINY, data_uri=f"s3://{bucket}/data", threads=1, checkpoint_every=1,
                       on_step=RecordProgress(str(progress)))
    faults_before = sum(proxy.stats.faults.values())
    run = Background(fit, config, two_cpu_workers(), f"s3://{bucket}/runs", "chaos", max_failures=1)
    wait_for(lambda: stored_checkpoints(s3, bucket, "runs/chaos/checkpoint_"), 300, "the first checkpoint",
             interval=0.2, background=run)
    victim = wait_for(lambda: next((pid for pid, step, _ in read_progress(progress, 1) if step >= KILL_AT_STEP),
                                   None), 120, f"worker 1 at step {KILL_AT_STEP}", interval=0.005, background=run)
    kill(victim)
    killed_at = time.time()
    before_kill = [entry for rank in (0, 1) for entry in read_progress(progress, rank) if entry[2] <= killed_at]
    step_at_kill = max(step for _, step, _ in before_kill)
    result = run.result(timeout=400)

    assert result.error is None, result.error
    metrics = result.metrics
    assert metrics["epoch"] == 2 and metrics["step"] == 2 * STEPS_PER_EPOCH, metrics
    resumed_step = metrics["resumed_from_epoch"] * STEPS_PER_EPOCH
    assert metrics["resumed_from_epoch"] == 1  # from the epoch-1 checkpoint, not from scratch
    steps_lost = step_at_kill - resumed_step
    assert 0 < steps_lost <= STEPS_PER_EPOCH  # at most one checkpoint interval
    # Recovered: the restarted group is back at the step where the kill struck.
    after = [entry for entry in read_progress(progress, 1) if entry[0] != victim and entry[2] > killed_at]
    back = min(when for _, step, when in after if step >= step_at_kill)
    assert {pid for pid, _, _ in after} and victim not in {pid for pid, _, _ in after}

    training_faults = sum(proxy.stats.faults.values()) - faults_before
    assert prepare_faults > 0 and training_faults > 0 and set(proxy.stats.faults) == {"503", "500", "drop"}
    uri = f"s3://{bucket}/runs/chaos"
    info, _ = assert_export_reproduces_training_state(uri, f"s3://{result.checkpoint.path}")
    assert info.epoch == 2  # the export on S3 is the final epoch's
    record(f"prepare: S3 behind the proxy, {prepare_faults} faults (503/500/drop) in "
           f"{proxy.stats.requests} requests so far",
           f"finished through retries; {PAIRS}/{PAIRS} pairs, shard bytes equal the raw files",
           "none", prepare_seconds)
    record(f"train: SIGKILL of DDP worker 1 at step {step_at_kill} (epoch 2 of 2, {STEPS_PER_EPOCH} steps/epoch), "
           f"with {training_faults} S3 faults on data and checkpoints",
           "group restarted from the epoch-1 checkpoint (max_failures=1) and finished; final export = "
           "training state", f"{steps_lost} steps recomputed (bound: {STEPS_PER_EPOCH}); no data",
           back - killed_at)
