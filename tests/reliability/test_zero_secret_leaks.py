"""Credentials: with AWS keys in the environment of the jobs, the Ray head and every worker, no
log line, exception, JSON summary or Ray job log contains the secret. Searched here: every byte
the jobs print (failures, directly and through `ray job submit`) and every log file of a fresh
head. The test session's own Ray, which holds the logs of every worker and driver of the
suite's runs (successful jobs on S3 with these keys, faults, kills), is searched when it shuts
down at the end of the session (tests/conftest.py, ``ray_session``), whatever the test order."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, S3_SECRET_KEY, files_holding_the_secret

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

@pytest.mark.timeout(480)
def test_the_secret_appears_in_no_output_or_log(corpus, s3_endpoint, monkeypatch, record):
    import tests.ray_head as head

    assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET_KEY  # the keys are really in the environment
    bucket = corpus["bucket"]
    outputs: list[str] = []

    # Failing jobs, run directly (at once): a bucket that does not exist, a URI with credentials pasted into it.
    failing = {
        "input not found": ("translate.py", "--input", "s3://no-such-bucket-4e1f/sat", "--output", f"s3://{bucket}/x",
                            "--checkpoint", corpus["model"]),
        "not found": ("prepare.py", "--input", "s3://no-such-bucket-4e1f/raw", "--output", f"s3://{bucket}/d"),
        "error:": ("translate.py", "--input", corpus["s3"], "--output", f"s3://{bucket}/x",
                   "--checkpoint", f"s3://{os.environ['AWS_ACCESS_KEY_ID']}:{S3_SECRET_KEY}@{bucket}/model"),
    }
    running = {message: subprocess.Popen([sys.executable, str(REPO / "jobs" / args[0]), *args[1:]], text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for message, args in failing.items()}
    for message, process in running.items():
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 1 and message in stderr, stderr[-2000:]
        outputs += [stdout, stderr]

    # Through `ray job submit`, on a head that inherits the keys (a job that succeeds through a head:
    # tests/test_translate_job.py::test_real_job_submission; its logs are like this session's own).
    head_dirs: list[str] = []
    mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(head.tempfile, "mkdtemp", lambda *a, **k: head_dirs.append(mkdtemp(*a, **k)) or head_dirs[-1])
    with head.ray_head() as (_, client_env):
        monkeypatch.setattr(head.tempfile, "mkdtemp", mkdtemp)
        bad = head.submit(client_env, str(REPO), "python", "jobs/translate.py", "--input",
                          "s3://no-such-bucket-4e1f/sat", "--output", f"s3://{bucket}/y", "--checkpoint",
                          corpus["model"], timeout=120)
        assert bad.returncode != 0 and "error: input not found" in bad.stdout + bad.stderr
        outputs += [bad.stdout, bad.stderr]
        # Every log of the head's session (not runtime_resources/: the uploaded copy of this repository,
        # whose tests/conftest.py defines the fake secret).
        [head_session] = Path(head_dirs[0]).glob("session_2*")
        head_found, head_files, head_bytes = files_holding_the_secret(head_session / "logs")

    assert not [text for text in outputs if S3_SECRET_KEY in text]
    assert head_files > 10 and not head_found, head_found
    record("credentials: AWS keys in the environment of jobs, head and workers; the suite's jobs on S3, failing "
           "jobs direct and via ray job submit, a secret pasted into a URI",
           f"secret absent from all job output and from {head_files} Ray log files of a fresh head "
           f"({head_bytes / 2**20:.1f} MB); the session's own Ray logs are searched at its end", "nothing leaked", None)
