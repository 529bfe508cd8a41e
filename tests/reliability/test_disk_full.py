"""A full disk and a read-only output, injected for real: tests run as root, so a chmod would not
stop a write; a tiny tmpfs and a read-only bind mount do (skipped where mounting is not allowed).
The outcome must be a clear error and no half-written tile or checkpoint."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.model.export import CheckpointError, ExportInfo
from tests.conftest import REPO
from tests.reliability.conftest import TILES, contents, hidden_files
from tests.test_translate_job import failures, translate

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _mount(*args: str) -> None:
    completed = subprocess.run(["mount", *args], capture_output=True, text=True)
    if completed.returncode:
        pytest.skip(f"cannot mount here ({completed.stderr.strip() or completed.returncode}): needs root "
                    "with CAP_SYS_ADMIN")


@contextlib.contextmanager
def tiny_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def read_only(path: Path):
    source = path.with_name(path.name + "-source")
    source.mkdir(parents=True)
    path.mkdir(parents=True)
    _mount("--bind", str(source), str(path))
    try:
        _mount("-o", "remount,ro,bind", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(240)
def test_translation_onto_a_disk_that_fills_up(corpus, tmp_path, record):
    """48 tiles of ~9.5 kB onto a 64 kB disk: the tiles that fit are whole, the rest are recorded
    with the reason; after space is freed a rerun writes exactly the missing ones."""
    with tiny_disk(tmp_path / "disk", "64k") as disk:
        out = disk / "out"
        summary = translate(corpus["local"], str(out), corpus["model"])
        written = contents(out)
        assert summary["written"] == len(written) and summary["written"] + summary["failed"] == TILES, summary
        assert 0 < summary["written"] < TILES
        assert all(reason.startswith("cannot write: [Errno 28] No space left on device")
                   for reason in failures(summary).values())
        assert written == {key: corpus["reference"][key] for key in written}  # the tiles that are there are whole
        assert not hidden_files(out)  # no temporary left behind

        subprocess.run(["mount", "-o", "remount,size=2m", str(disk)], check=True)  # space freed
        started = time.monotonic()
        rerun = translate(corpus["local"], str(out), corpus["model"])
        recovered = time.monotonic() - started
        assert (rerun["written"], rerun["skipped"], rerun["failed"]) == (summary["failed"], summary["written"], 0)
        assert contents(out) == corpus["reference"]
        assert not hidden_files(out)
    record("translate: output disk full (64 kB tmpfs) mid-run",
           f"{summary['written']} whole tiles, {summary['failed']} recorded 'No space left on device'; "
           "no partial file; after freeing space the rerun wrote exactly the missing ones",
           "none after the rerun", recovered)


@pytest.mark.timeout(120)
def test_a_read_only_output_fails_before_any_work(corpus, tmp_path, record):
    with read_only(tmp_path / "ro") as folder:
        started = time.monotonic()
        completed = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "translate.py"), "--input", corpus["local"], "--output",
             str(folder / "out"), "--checkpoint", corpus["model"]], capture_output=True, text=True, timeout=120)
        seconds = time.monotonic() - started
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 1 and len(lines) == 1, completed.stderr[-2000:]
        assert lines[0] == f"error: cannot write to --output {folder / 'out'}: Read-only file system"
        assert not list(folder.iterdir())
    record("translate: read-only output (ro bind mount)",
           "refused before Ray starts: one line 'cannot write to --output ...: Read-only file system', exit 1",
           "nothing written", seconds)


@pytest.mark.timeout(60)
def test_the_failure_list_on_a_full_disk_is_a_clear_error(tmp_path):
    """When even OUTPUT/_failures cannot be written, the run ends saying so, with the count and
    the first failure; no partial list is left."""
    from pix2pix.distributed.translate import FailureLog, TranslateError

    with tiny_disk(tmp_path / "disk", "16k") as disk:
        (disk / "filler").write_bytes(b"\0" * 16384)  # nothing left
        output = storage.resolve(str(disk / "out"))
        with pytest.raises(TranslateError) as raised:
            with FailureLog(output) as log:
                for index in range(500):
                    log.add(f"12/{index}/0.jpg", "cannot write: [Errno 28] No space left on device")
        message = str(raised.value)
        assert message.startswith("500 tiles failed (first: 12/0/0.jpg: cannot write: [Errno 28]")
        assert "their list could not be written to" in message and "_failures" in message
        assert not [path for path in (disk / "out").rglob("*") if path.is_file()]


def _checkpoint_dir(directory: Path, step: int) -> None:
    """A checkpoint as the training loop writes it to its local temp folder."""
    torch.manual_seed(step)
    from pix2pix.model.networks import GeneratorConfig, UNetGenerator

    config = GeneratorConfig(ngf=8, depth=6)
    location = storage.resolve(str(directory))
    checkpoint.save_training_state({"step": step, "weights": torch.zeros(64), "config": {}}, location)
    checkpoint.export_generator(UNetGenerator(config), ExportInfo(config, 64, step=step), location)


@pytest.mark.timeout(60)
def test_checkpoints_onto_a_full_disk(tmp_path, record):
    """Checkpoint files are written whole or not at all; a checkpoint that Ray Train's copy left
    truncated on a full disk is passed over, and the run resolves to the last complete one."""
    _checkpoint_dir(tmp_path / "local" / "a", step=1)
    _checkpoint_dir(tmp_path / "local" / "b", step=2)
    size = sum(path.stat().st_size for path in (tmp_path / "local" / "a").iterdir())
    with tiny_disk(tmp_path / "disk", f"{size // 1024 + 400}k") as disk:
        # Our own writes: an error, and no temporary left.
        with pytest.raises(OSError, match="No space left on device"):
            for step in range(3, 10):
                _checkpoint_dir(disk / f"direct-{step}", step)
        assert not hidden_files(disk)
        for path in disk.glob("direct-*"):
            subprocess.run(["rm", "-rf", str(path)], check=True)

        # Ray Train's way: pyarrow.fs.copy_files of the local checkpoint into storage.
        run = disk / "run"
        local = pafs.LocalFileSystem()

        def persist(source: str, name: str) -> None:  # as ray.train's StorageContext does
            local.create_dir(str(run / name))
            pafs.copy_files(str(tmp_path / "local" / source), str(run / name),
                            source_filesystem=local, destination_filesystem=local)

        persist("a", "checkpoint_2026-01-01_00-00-00.000000")
        with pytest.raises(OSError, match="No space left on device"):
            persist("b", "checkpoint_2026-01-02_00-00-00.000000")
        partial = run / "checkpoint_2026-01-02_00-00-00.000000"
        assert partial.is_dir()  # the copy left a half-written checkpoint behind
        generator, info = checkpoint.load_generator(str(run))
        assert info.step == 1  # ... which is never used: the newest complete one is
        with pytest.raises(CheckpointError):
            checkpoint.load_generator(str(partial))  # named explicitly: a clear error, not garbage
    record("checkpoint: storage disk full while a checkpoint is copied",
           "our writes fail whole (no temporary); the copy Ray Train left truncated is skipped, the run "
           "resolves to the previous complete checkpoint", "the unfinished checkpoint only", None)
