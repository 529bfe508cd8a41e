"""Shared fixtures: one local Ray instance and one loopback S3 server per test session."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# How often Ray Train's controller polls its workers (default 2 s): each start, report, failure
# and end of a run waits up to one interval for it. The workers' runs take a few seconds here,
# so the default is a good part of every run's time. Read by the controller, which Ray Train
# gives the driver's value (in this process, and in every job process the tests start).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
# Fake credentials, distinctive enough that a test can search every output for the secret.
S3_ACCESS_KEY = "AKIATESTPIX2PIXKEY00"
S3_SECRET_KEY = "test-secret-9f8e7d6c5b4a-do-not-print"


def load_job(name: str):
    """A job script's module (jobs/ is not a package): its parse_args and helpers, in process."""
    spec = importlib.util.spec_from_file_location(f"pix2pix_job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def concurrently(*calls):
    """Each call's result, in order, the calls made at once from threads. For tests that start a
    job process per case (a bad flag, a missing input): its start-up (Python, then the job's
    imports) is most of its time, and the cases wait on nothing of one another's."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(calls), 4)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto) on loopback; the code finds it through AWS_* variables only."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    variables = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    yield endpoint
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh bucket; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray instance for the whole session, started after the S3 variables are set
    so that its workers inherit them, as they inherit every variable set at the top of this file.
    No runtime environment: a worker of one starts through Ray's runtime-env agent and an extra
    Python process, about half a second more per actor on this 2-core machine (measured: 8
    actors started one after the other, 7-11 s without, 10-19 s with), and every translation
    run starts several."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    ray.shutdown()
    # Whatever ran in this session (jobs on S3 with the keys, faults, kills), at its end and in
    # any test order: no log of any worker or driver holds the secret.
    found, searched, _ = files_holding_the_secret(logs)
    assert searched and not found, f"the S3 secret is in Ray's logs: {found}"


def files_holding_the_secret(folder: Path) -> tuple[list[str], int, int]:
    """(files containing the S3 secret, files searched, bytes searched)."""
    found, count, size = [], 0, 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".sock"):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            count, size = count + 1, size + len(data)
            if S3_SECRET_KEY.encode() in data:
                found.append(str(path))
    return found, count, size


@pytest.fixture(scope="session")
def prepared_dataset(ray_session, tmp_path_factory) -> str:
    """16 train and 4 val pairs (tests.test_train_job.write_pairs, under ``raw/`` beside it)
    prepared into shards once for the session; the training tests read it and write elsewhere."""
    from pix2pix.distributed.prepare import prepare
    from tests.test_train_job import write_pairs

    root = tmp_path_factory.mktemp("train-data")
    write_pairs(root / "raw", 16)
    summary = prepare(str(root / "raw"), str(root / "data"))
    assert summary["pairs"] == {"train": 16, "val": 4}
    return str(root / "data")


@pytest.fixture(scope="session")
def recife() -> Path:
    if not (SHARED_DATA / "recife" / "train").is_dir():
        pytest.skip("real data ../shared/data/recife not present")
    return SHARED_DATA / "recife"
