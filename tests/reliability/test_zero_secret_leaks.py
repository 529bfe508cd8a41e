"""Credentials: with AWS keys in the environment of the jobs, the Ray head and every worker, no
log line, exception, JSON summary or Ray job log contains the secret. Searched: every byte the
jobs print here (failures, directly and through `ray job submit`), and every log file of both
Ray instances: a fresh head's, and the test session's own, which by then holds the logs of every
worker and driver of this suite's runs (successful jobs on S3 with these keys, faults, kills).
The file is named to run last in the suite for that reason."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, S3_SECRET_KEY

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SECRET = S3_SECRET_KEY.encode()


def files_holding_the_secret(folder: Path) -> tuple[list[str], int, int]:
    """(files containing the secret, files searched, bytes searched)."""
    found, count, size = [], 0, 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".sock"):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            count, size = count + 1, size + len(data)
            if SECRET in data:
                found.append(str(path))
    return found, count, size


@pytest.mark.timeout(480)
def test_the_secret_appears_in_no_output_or_log(corpus, s3_endpoint, monkeypatch, record):
    import ray

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

    # The test session's own Ray: the logs of every worker of the in-process runs of this suite.
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    own_found, own_files, own_bytes = files_holding_the_secret(session / "logs")

    assert not [text for text in outputs if S3_SECRET_KEY in text]
    assert head_files > 10 and not head_found, head_found
    assert not own_found, own_found
    record("credentials: AWS keys in the environment of jobs, head and workers; the suite's jobs on S3, failing "
           "jobs direct and via ray job submit, a secret pasted into a URI",
           f"secret absent from all job output and from {head_files + own_files} Ray log files "
           f"({(head_bytes + own_bytes) / 2**20:.1f} MB)", "nothing leaked", None)
