"""Errors that keep bugs visible: a user's mistake is one line, a bug keeps its traceback, and a
store's failure leaves the storage boundary as a project error."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest

from pix2pix import storage
from pix2pix.errors import JobError
from tests.conftest import REPO, S3_SECRET_KEY, concurrently

JOB = """
import sys
sys.path.insert(0, {repo!r})
from pix2pix import cli
from pix2pix.errors import ConfigError

def main():
    raise {error}

cli.run(main)
"""


def run_job(error: str) -> subprocess.CompletedProcess:
    env = {"AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", JOB.format(repo=str(REPO), error=error)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_a_users_mistake_is_one_line_and_a_bug_keeps_its_traceback_both_redacted():
    mistake, bug, value_error = concurrently(*(partial(run_job, error) for error in (
        f'ConfigError("--lr must be positive (key {S3_SECRET_KEY})")',
        f'TypeError("unsupported operand {S3_SECRET_KEY}")',
        'ValueError("a bug")')))
    assert mistake.returncode == 1
    assert mistake.stderr.splitlines() == ["error: --lr must be positive (key <AWS_SECRET_ACCESS_KEY>)"]
    assert bug.returncode == 1
    assert bug.stderr.startswith("Traceback (most recent call last):") and "in main" in bug.stderr
    assert bug.stderr.rstrip().endswith("TypeError: unsupported operand <AWS_SECRET_ACCESS_KEY>")
    assert S3_SECRET_KEY not in bug.stderr + bug.stdout
    # Before, every ValueError and OSError became one line: a bug among them lost its traceback.
    assert value_error.stderr.startswith("Traceback")


def test_a_store_that_fails_is_a_storage_error_that_stays_an_oserror(tmp_path, s3_endpoint):
    missing = storage.resolve(str(tmp_path / "missing.bin"))
    with pytest.raises(storage.NotInStorage) as raised:
        storage.read_bytes(missing.filesystem, missing.path)
    assert isinstance(raised.value, JobError) and isinstance(raised.value, FileNotFoundError)
    no_bucket = storage.resolve("s3://no-such-bucket-for-this-test/key")
    with pytest.raises(storage.StorageIOError) as raised:
        storage.write_bytes(no_bucket.filesystem, no_bucket.path, b"x")
    assert isinstance(raised.value, OSError) and "NO_SUCH_BUCKET" in str(raised.value)
    with pytest.raises(storage.StorageIOError) as raised:
        storage.read_bytes(no_bucket.filesystem, no_bucket.path)
    assert isinstance(raised.value, OSError)
