"""Object-storage faults: a fault-injecting proxy in front of the S3 test server answers on a
fixed schedule with 503 SlowDown, 500 InternalError or a dropped connection (see
fault_proxy.py). Transient faults are retried with backoff and change nothing in the result;
what cannot succeed within the retry budget is recorded per tile or ends the job with one line.
(Preparation and training checkpoints through the same faults: test_train_chaos.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pix2pix import storage
from pix2pix.tiles.tileset import TILEJSON_FILE
from tests.conftest import REPO, S3_SECRET_KEY
from tests.reliability.conftest import TILES
from tests.reliability.fault_proxy import AnyOf, Schedule
from tests.test_translate_job import failures, translate

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

UNREADABLE = "12/7/5.jpg"   # every GET of this input tile fails
UNWRITABLE = "12/7/4"       # every upload of this output tile fails


@pytest.mark.timeout(240)
def test_translation_through_s3_faults(corpus, fault_proxy, monkeypatch, record):
    import boto3

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "4")  # the budget; the permanent faults exhaust it sooner
    proxy = fault_proxy(AnyOf(
        Schedule(always=True, kinds=("503",),
                 only=lambda r: r.method == "GET" and r.path.endswith("/sat/" + UNREADABLE)),
        Schedule(always=True, kinds=("500",), only=lambda r: r.method in ("PUT", "POST")
                 and r.path.endswith(f"/maps/{UNWRITABLE}.png")),
        Schedule(period=3, failures=1),  # and a third of everything else fails once
    ))
    bucket = corpus["bucket"]
    started = time.monotonic()
    summary = translate(corpus["s3"], f"s3://{bucket}/maps", corpus["model"])
    seconds = time.monotonic() - started
    assert (summary["written"], summary["failed"]) == (TILES - 2, 2), summary
    reasons = failures(summary)
    assert set(reasons) == {UNREADABLE, UNWRITABLE + ".jpg"}, reasons
    assert reasons[UNREADABLE].startswith("cannot read: AWS Error"), reasons
    assert reasons[UNWRITABLE + ".jpg"].startswith("cannot write:") and "AWS Error" in reasons[UNWRITABLE + ".jpg"]
    assert set(proxy.stats.faults) == {"503", "500", "drop"}

    s3 = boto3.client("s3", endpoint_url=proxy.upstream_url)
    stored = {entry["Key"][len("maps/"):] for entry in s3.list_objects_v2(Bucket=bucket, Prefix="maps/")["Contents"]
              if not entry["Key"].startswith("maps/_failures/") and not entry["Key"].endswith(("/", TILEJSON_FILE))}
    expected = set(corpus["reference"]) - {UNREADABLE[:-4] + ".png", UNWRITABLE + ".png"}
    assert stored == expected  # nothing half-written, nothing extra
    for key in expected:
        assert s3.get_object(Bucket=bucket, Key="maps/" + key)["Body"].read() == corpus["reference"][key]
    transient = sum(proxy.stats.faults.values())
    record(f"translate on S3: {transient} faults (503/500/drop) in {proxy.stats.requests} requests",
           f"{TILES - 2}/{TILES} tiles written, bytes identical to a fault-free run",
           "none", seconds)
    record("translate on S3: one input tile's GET always 503, one output's PUT always 500",
           "retried to the budget (AWS_MAX_ATTEMPTS=4), then recorded in _failures with the reason; "
           "the other tiles written", "the 2 tiles, recorded (not silent)", None)


@pytest.mark.timeout(120)
def test_retries_reach_ray_workers_and_small_objects(ray_session, s3_bucket, fault_proxy, record):
    """pyarrow's pickling drops an S3FileSystem's retry strategy, and the AWS SDK does not retry a
    throttled GET of an object smaller than the error body: both are retried now."""
    import boto3

    # Each GET fails 3 times: the 4th attempt is past pyarrow's default budget of 3.
    proxy = fault_proxy(Schedule(period=1, failures=3, kinds=("500",), only=lambda r: r.method == "GET"))
    s3 = boto3.client("s3", endpoint_url=proxy.upstream_url)
    s3.put_object(Bucket=s3_bucket, Key="tile.png", Body=b"x" * 4000)
    s3.put_object(Bucket=s3_bucket, Key="small.json", Body=b'{"a": 1}')
    location = storage.resolve(f"s3://{s3_bucket}")

    @ray_session.remote
    def read(location, name):
        from pix2pix import storage

        return storage.read_bytes(location.filesystem, f"{location.path}/{name}")

    started = time.monotonic()
    assert len(ray_session.get(read.remote(location, "tile.png"))) == 4000
    assert storage.read_bytes(location.filesystem, f"{location.path}/small.json") == b'{"a": 1}'
    assert proxy.stats.faults["500"] == 6
    record("S3: 3x 500 on a GET inside a Ray worker; 3x 500 on an 8-byte object",
           "both retried with backoff and read (were failures: a worker fell back to 3 attempts; "
           "the SDK does not retry an error body larger than the object)", "none", time.monotonic() - started)


@pytest.mark.timeout(180)
def test_a_store_that_never_answers_ends_each_job_in_one_line(corpus, s3_endpoint, fault_proxy, tmp_path, record):
    proxy = fault_proxy(Schedule(always=True))
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_MAX_ATTEMPTS": "3"}
    bucket = corpus["bucket"]
    jobs = {
        "translate": ["jobs/translate.py", "--input", corpus["s3"], "--output", f"s3://{bucket}/never",
                      "--checkpoint", corpus["model"]],
        "prepare": ["jobs/prepare.py", "--input", f"s3://{bucket}/sat", "--output", f"s3://{bucket}/data"],
        "train": ["jobs/train.py", "--data", f"s3://{bucket}/data", "--storage", f"s3://{bucket}/runs"],
    }
    started = time.monotonic()
    running = {name: subprocess.Popen([sys.executable, str(REPO / args[0]), *args[1:]], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, args in jobs.items()}
    results = {name: (process.communicate(timeout=150), process.returncode) for name, process in running.items()}
    seconds = time.monotonic() - started
    for name, ((stdout, stderr), code) in results.items():
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (name, code, stderr[-2000:])
        assert "AWS Error" in lines[0], (name, lines[0])
        assert S3_SECRET_KEY not in stdout + stderr
    assert sum(proxy.stats.faults.values()) >= 3 * 3
    record("S3 down for good (every request 503/500/drop), AWS_MAX_ATTEMPTS=3",
           "translate, prepare and train each exit 1 with one line naming the operation and the AWS error",
           "nothing written", seconds)
