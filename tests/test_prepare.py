"""jobs/prepare.py and its Ray Data job on real image files (the job's runs are marked slow: Ray;
the reading and checking of each pair is tested without it)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pix2pix.demo import write_pairs
from pix2pix.training.pairs import decode_pair
from tests.conftest import REPO, concurrently, load_job


def read_shards(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return sorted(rows, key=lambda row: row["key"])


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_paired_folders_round_trip_with_hash_split(ray_session, tmp_path):
    from pix2pix.distributed.prepare import prepare

    keys = write_pairs(str(tmp_path / "raw"), count=12, size=64)
    summary = prepare(str(tmp_path / "raw"), str(tmp_path / "data"), val_fraction=0.3)
    assert summary["skipped"] == 0
    train, val = read_shards(tmp_path / "data" / "train"), read_shards(tmp_path / "data" / "val")
    assert summary["pairs"] == {"train": len(train), "val": len(val)} and len(train) + len(val) == 12
    assert len(val) > 0 and len(train) > 0
    assert sorted(row["key"] for row in train + val) == sorted(keys)
    for row in train + val:  # the original bytes, not re-encoded
        assert row["source"] == (tmp_path / "raw" / "sat" / f"{row['key']}.jpg").read_bytes()
        assert row["target"] == (tmp_path / "raw" / "map" / f"{row['key']}.png").read_bytes()
        assert row["layout"] == "paired" and row["image"] is None
    info = json.loads((tmp_path / "data" / "_dataset.json").read_text())
    assert info["layout"] == "paired" and info["direction"] == "AtoB"
    # re-running replaces the shards instead of adding duplicates
    prepare(str(tmp_path / "raw"), str(tmp_path / "data"), val_fraction=0.3)
    assert len(read_shards(tmp_path / "data" / "train")) == len(train)


@pytest.mark.slow
def test_existing_split_kept_and_bad_files_reported(ray_session, tmp_path):
    from pix2pix.distributed.prepare import prepare

    raw = tmp_path / "raw"
    write_pairs(str(raw / "train"), count=4, size=64)
    write_pairs(str(raw / "val"), count=2, size=64, seed=1)
    (raw / "train" / "sat" / "9000.jpg").write_text("not an image")  # unreadable
    (raw / "train" / "map" / "9000.png").write_bytes((raw / "train" / "map" / "0000.png").read_bytes())
    (raw / "train" / "sat" / "9001.jpg").write_bytes((raw / "train" / "sat" / "0000.jpg").read_bytes())  # unpaired
    truncated = (raw / "train" / "sat" / "0001.jpg").read_bytes()
    (raw / "train" / "sat" / "9002.jpg").write_bytes(truncated[: len(truncated) // 3])
    (raw / "train" / "map" / "9002.png").write_bytes((raw / "train" / "map" / "0001.png").read_bytes())
    (raw / "train" / "sat" / "9003.png").write_bytes(png(np.zeros((32, 32, 3), np.uint8)))  # mis-sized
    (raw / "train" / "map" / "9003.png").write_bytes(png(np.zeros((64, 64, 3), np.uint8)))
    summary = prepare(str(raw), str(tmp_path / "data"))
    assert summary["pairs"] == {"train": 4, "val": 2}
    reasons = {entry["path"]: entry["reason"] for entry in summary["skipped_files"]}
    assert reasons["train/sat/9000.jpg"] == "not a recognised image format"
    assert "no matching file in map/" in reasons["train/sat/9001.jpg"]
    assert "cannot decode" in reasons["train/sat/9002.jpg"]
    assert "32x32 but target is 64x64" in reasons["train/sat/9003.png"]
    assert summary["skipped"] == 4


@pytest.mark.slow
def test_side_by_side_layout_and_direction(ray_session, tmp_path):
    from pix2pix.distributed.prepare import prepare

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    for split in ("train", "val"):
        (raw / split).mkdir(parents=True)
        for i in range(3):
            left = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            (raw / split / f"{i}.png").write_bytes(png(np.concatenate([left, 255 - left], axis=1)))
    (raw / "train" / "odd.png").write_bytes(png(np.zeros((64, 100, 3), np.uint8)))
    summary = prepare(str(raw), str(tmp_path / "data"), direction="BtoA")
    assert summary["pairs"] == {"train": 3, "val": 3}
    assert "twice as wide" in summary["skipped_files"][0]["reason"]
    row = read_shards(tmp_path / "data" / "train")[0]
    assert row["layout"] == "side-by-side" and row["source_side"] == "right"
    assert row["image"] == (raw / "train" / f"{row['key']}.png").read_bytes()
    source, target = decode_pair(row)
    assert np.array_equal(source, 255 - target)


def test_each_pair_is_read_and_checked_with_its_reason_without_ray(tmp_path):
    from pix2pix import storage
    from pix2pix.distributed.prepare import load_pair
    from pix2pix.training.pairs import discover_pairs

    raw = tmp_path / "raw"
    write_pairs(str(raw), count=2, size=64)
    whole = (raw / "sat" / "0001.jpg").read_bytes()
    (raw / "sat" / "9000.jpg").write_bytes(whole[: len(whole) // 3])  # truncated
    (raw / "map" / "9000.png").write_bytes((raw / "map" / "0000.png").read_bytes())
    (raw / "sat" / "9003.png").write_bytes(png(np.zeros((32, 32, 3), np.uint8)))
    (raw / "map" / "9003.png").write_bytes(png(np.zeros((64, 64, 3), np.uint8)))
    relative = sorted(str(path.relative_to(raw)) for path in raw.rglob("*") if path.is_file())
    specs, skipped = discover_pairs(relative, "auto", "sat", "map", "AtoB", 0.0)
    assert not skipped
    rows = {spec.key: load_pair(spec, storage.resolve(str(raw)), 4096 * 4096) for spec in specs}
    assert rows["0000"]["error"] is None and rows["0000"]["source"] == (raw / "sat" / "0000.jpg").read_bytes()
    assert "cannot decode" in rows["9000"]["error"]
    assert "32x32 but target is 64x64" in rows["9003"]["error"]


def run_prepare(*args):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), *args],
                          capture_output=True, text=True, timeout=120)


BAD_INPUT = [
    (["--input", "gs://b/raw", "--output", "/tmp/x"], 1, "unsupported URI scheme 'gs'"),
    (["--input", "/nonexistent/raw", "--output", "/tmp/x"], 1, "input not found"),
    (["--input", "/tmp"], 2, "give both --input and --output"),
    (["--layout", "mosaic"], 2, "invalid choice"),
]


@pytest.fixture(scope="module")
def bad_input_runs() -> dict[tuple, subprocess.CompletedProcess]:
    """The job run once per case below, all at once: args -> its run."""
    return {tuple(args): done for (args, _, _), done in
            zip(BAD_INPUT, concurrently(*(partial(run_prepare, *args) for args, _, _ in BAD_INPUT)))}


@pytest.mark.parametrize("args,code,message", BAD_INPUT)
def test_bad_input_is_one_line(bad_input_runs, args, code, message):
    completed = bad_input_runs[tuple(args)]
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == code and len(lines) == 1 and message in lines[0]


def test_every_flag_parses_in_process():
    job = load_job("prepare")
    args = job.parse_args(["--input", "s3://b/raw", "--output", "s3://b/data", "--layout", "paired",
                           "--direction", "BtoA", "--source-dir", "aerial", "--target-dir", "osm",
                           "--val-fraction", "0.2", "--rows-per-shard", "64", "--demo-pairs", "12"])
    assert (args.input, args.output, args.layout, args.direction) == ("s3://b/raw", "s3://b/data", "paired", "BtoA")
    assert (args.source_dir, args.target_dir, args.val_fraction) == ("aerial", "osm", 0.2)
    assert (args.rows_per_shard, args.demo_pairs) == (64, 12)
    for bad in (["--val-fraction", "1"], ["--rows-per-shard", "0"]):
        with pytest.raises(SystemExit):
            job.parse_args(bad)
