"""The flags users have stay the same: each job's --help, as a user's terminal shows it at 100
columns, against the copy in tests/golden/. A change to a job's flags shows up here as a diff;
when it is meant, regenerate the copy and say so in the commit:

    for job in prepare train translate evaluate pack view; do
        COLUMNS=100 .venv/bin/python jobs/$job.py --help > tests/golden/$job.help; done
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

JOBS = ("prepare", "train", "translate", "evaluate", "pack", "view")


@pytest.mark.parametrize("job", JOBS)
def test_the_flags_of_each_job_stay_the_same(job):
    env = {**os.environ, "COLUMNS": "100"}
    completed = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    golden = (REPO / "tests" / "golden" / f"{job}.help").read_text()
    diff = "".join(difflib.unified_diff(golden.splitlines(True), completed.stdout.splitlines(True),
                                        f"tests/golden/{job}.help", f"jobs/{job}.py --help"))
    assert not diff, "\n" + diff
