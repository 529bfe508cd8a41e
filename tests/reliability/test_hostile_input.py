"""Hostile and broken input: keys that try to leave the output prefix, image bombs, tampered
checkpoints. Already covered elsewhere, not repeated here: check_key's rules
(tests/test_translation.py), unsafe keys in a manifest end to end, truncated and empty tiles
(tests/test_translate_job.py), truncated weights, architecture mismatch on load and a pickled
training state (tests/test_checkpoint.py)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix import checkpoint, storage
from pix2pix.model.export import CONFIG_FILE, TRAINING_STATE_FILE, WEIGHTS_FILE, CheckpointError
from pix2pix.model.networks import GeneratorConfig
from pix2pix.tiles.canvases import tile_pixel_limit
from pix2pix.tiles.plan import ManifestShard, PlanSettings, discover_shards, plan_shard
from tests.reliability.conftest import contents
from tests.test_translate_job import encoded, export, failures, smooth_image, translate, write_manifest

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header is rewritten to declare width x height (a few dozen bytes)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])  # IHDR: size, depth, colour, ...
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(data)


def snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


HOSTILE_NAMES = {  # file name in the input folder -> what the recorded reason says
    "a%2F..%2Fescape.jpg": "URL-encoded",
    "%2e%2e.jpg": "URL-encoded",
    "back\\slash.jpg": "backslash",
    "line\nbreak.jpg": "control character",
    "bell\x07.jpg": "control character",
}


@pytest.mark.timeout(240)
def test_listed_names_that_try_to_escape_and_image_bombs_are_recorded(ray_session, tmp_path, record):
    """A whole run over an input folder holding hostile names and image bombs: they are refused
    and recorded, the good tiles translated, and nothing appears outside the output."""
    root = tmp_path / "job"
    inp, out = root / "in", root / "out"
    model = export(str(root / "model"))
    good = {"12/1/1.jpg": encoded(smooth_image(1)), "12/1/2.jpg": encoded(smooth_image(2)),
            "long/" + "n" * 251 + ".jpg": encoded(smooth_image(3))}
    bombs = {"bomb/huge.png": png_declaring(10_000, 10_000),        # 100 MP: Pillow only warns
             "bomb/over-tile-limit.png": png_declaring(2_000, 2_000)}  # 4 MP: fine for Pillow and data.py
    for name, data in {**good, **bombs, **{f"hostile/{n}": encoded(smooth_image(4)) for n in HOSTILE_NAMES}}.items():
        (inp / name).parent.mkdir(parents=True, exist_ok=True)
        (inp / name).write_bytes(data)
    before = snapshot(tmp_path) - snapshot(out) if out.exists() else snapshot(tmp_path)

    summary = translate(str(inp), str(out), model)
    reasons = failures(summary)
    assert summary["written"] == len(good) and summary["failed"] == len(bombs) + len(HOSTILE_NAMES), (summary, reasons)
    for name, fragment in HOSTILE_NAMES.items():
        assert fragment in reasons[f"hostile/{name}"], (name, reasons)
    limit = tile_pixel_limit(64)
    # 100 MP is past Pillow's own warning threshold, which decode_image turns into a refusal at open
    assert "exceeds" in reasons["bomb/huge.png"] and "100000000 pixels" in reasons["bomb/huge.png"]
    assert reasons["bomb/over-tile-limit.png"] == f"declared size 2000x2000 exceeds the {limit}-pixel limit"
    assert sorted(contents(out)) == sorted(key[:-4] + ".png" for key in good)
    after = {name for name in snapshot(tmp_path) if not name.startswith("job/out/")} - {"job/out"}
    assert after == before  # nothing written anywhere but under the output
    record(f"translate: {len(HOSTILE_NAMES)} listed names with encoded '..', backslash, control characters",
           "refused by the planner and recorded in _failures; nothing outside the output",
           "none (the hostile tiles are not translated by design)", None)
    record("translate: a legal 255-byte tile name",
           "written (failed before the fix: the temporary file's name went past the 255-byte limit)", "none", None)
    record("translate: PNG bombs declaring 10000x10000 and 2000x2000 (a few dozen bytes each)",
           f"refused from the header: the job's limit is {limit} px (8x the 64 px tile side), before decoding",
           "none", None)


@pytest.mark.timeout(120)
def test_an_image_bomb_is_refused_before_any_pixel_is_allocated(tmp_path, record):
    """Measured in a fresh process: the read stage refuses the 10000x10000 header in
    milliseconds, and its peak memory does not grow (decoding would need 400 MB)."""
    bomb = tmp_path / "12" / "0" / "0.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(png_declaring(10_000, 10_000))
    script = f"""
import resource, time, pyarrow as pa
from pix2pix import storage
from pix2pix.distributed.translate_stages import load_units
from pix2pix.tiles.rows import TileRef, Unit, to_table
batch = to_table([Unit("12/0/0.png", "12/0/0.png", [TileRef("12/0/0.png")])], Unit)
root = storage.resolve({str(tmp_path)!r})
load_units(batch, root, 64, "resize")  # warm up: imports, thread pool
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
row = load_units(batch, root, 64, "resize").to_pylist()[0]
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(time.perf_counter() - started, grown, row["failed"][0]["reason"])
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                               cwd=Path(__file__).resolve().parents[2])
    assert completed.returncode == 0, completed.stderr[-2000:]
    seconds, grown_kb, reason = completed.stdout.strip().split(" ", 2)
    assert "exceeds" in reason and "100000000 pixels" in reason, reason  # refused by Image.open's header check
    assert float(seconds) < 0.5 and int(grown_kb) < 10_000, (seconds, grown_kb)
    record("decode: 10000x10000 PNG header (bomb) in the read stage",
           f"refused in {float(seconds) * 1000:.1f} ms, peak memory +{int(grown_kb) / 1024:.1f} MB", "none", None)


@pytest.mark.timeout(60)
def test_keys_that_try_to_escape_an_s3_prefix(s3_bucket):
    """On S3 a written key's '..' is resolved (a PUT of maps/../x lands at x): the planner refuses
    such listed names, and the writer refuses any unsafe key it is handed."""
    import boto3

    from pix2pix.distributed.translate_stages import write_units
    from pix2pix.tiles.rows import Canvas, TileRef, to_table

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    hostile = ["sat/a%2F..%2Fb.jpg", "sat/back\\slash.jpg", "sat/ctl\x01.jpg", "sat/../escape.jpg",
               "sat/12/1/../../../escape2.jpg"]
    for key in ["sat/12/1/1.jpg", *hostile]:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=encoded(smooth_image(0)))
    before = {entry["Key"] for entry in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    root, output = storage.resolve(f"s3://{s3_bucket}/sat"), storage.resolve(f"s3://{s3_bucket}/maps")
    units = [unit for shard in discover_shards(root, PlanSettings()) for unit in plan_shard(shard, root, output,
                                                                                           PlanSettings())]
    planned = {unit.key for unit in units if unit.reason is None}
    assert planned == {"12/1/1.jpg"}, units
    assert {unit.key for unit in units if unit.reason} == {"a%2F..%2Fb.jpg", "back\\slash.jpg", "ctl\x01.jpg"}

    # The writer's own check: a unit carrying an escaping key (as a buggy planner might hand it).
    pixels = np.zeros((64, 64, 3), np.uint8).tobytes()
    rows = [Canvas(key, key, [TileRef(key)], pixels=pixels, height=64, width=64)
            for key in ["../escape.jpg", "a/../../b.jpg"]]
    statuses = write_units(to_table(rows, Canvas), output, "png", 64).to_pylist()
    assert [status["status"] for status in statuses] == ["failed", "failed"]
    assert all(status["reason"].startswith("unsafe key:") for status in statuses)
    assert {entry["Key"] for entry in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]} == before


@pytest.mark.timeout(60)
def test_manifest_keys_beyond_the_covered_ones(tmp_path):
    """Manifest keys (planner only, no Ray): an absolute path to a real file outside the input,
    dot segments, and an over-long key are refused with reasons; nothing is read."""
    (tmp_path / "outside.jpg").write_bytes(encoded(smooth_image(0)))
    (tmp_path / "in" / "ok").mkdir(parents=True)
    (tmp_path / "in" / "ok" / "1.jpg").write_bytes(encoded(smooth_image(1)))
    keys = [str(tmp_path / "outside.jpg"), "ok/../../outside.jpg", "ok/./1.jpg", "ok//1.jpg", "%2E%2E/outside.jpg",
            "ok/1.jpg\x00.png", "é" * 600 + ".jpg", "ok/1.jpg"]
    manifest = write_manifest(tmp_path / "keys.parquet", keys)
    root, output = storage.resolve(str(tmp_path / "in")), storage.resolve(str(tmp_path / "out"))
    shard = ManifestShard([manifest, 0])
    units = plan_shard(shard, root, output, PlanSettings(), storage.resolve(manifest))
    refused = {unit.key: unit.reason for unit in units if unit.reason}
    assert [unit.key for unit in units if not unit.reason] == ["ok/1.jpg"]
    assert len(refused) == len(keys) - 1 and all(refused.values())
    assert "longer than 1024 bytes" in refused[("é" * 600 + ".jpg")[:300]]


class WouldCreateMarker:
    """Unpickling this runs os.mkdir(marker): a checkpoint that executes code when loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.timeout(60)
def test_tampered_checkpoints_never_run_code_and_fail_clearly(tmp_path, record):
    marker = tmp_path / "code-ran"
    good = tmp_path / "good"
    export(str(good))
    payload = io.BytesIO()
    torch.save({"generator": WouldCreateMarker(str(marker)), "epoch": 1}, payload)

    # training_state.pt replaced by a torch.save'd object that runs code on unpickling
    location = storage.resolve(str(good))
    (good / TRAINING_STATE_FILE).write_bytes(payload.getvalue())
    with pytest.raises(CheckpointError, match="cannot read training_state.pt"):
        checkpoint.load_training_state(location)
    # the weights file replaced by the same payload, or by a plain pickle
    for data in (payload.getvalue(), pickle.dumps(WouldCreateMarker(str(marker)))):
        tampered = tmp_path / f"tampered-{len(data)}"
        tampered.mkdir()
        (tampered / CONFIG_FILE).write_text((good / CONFIG_FILE).read_text())
        (tampered / WEIGHTS_FILE).write_bytes(data)
        with pytest.raises(CheckpointError, match="cannot read generator.safetensors"):
            checkpoint.load_generator(str(tampered))
    assert not marker.exists()  # nothing was executed

    # a truncated training state
    state = storage.resolve(str(tmp_path / "state"))
    checkpoint.save_training_state({"step": 1, "weights": torch.ones(1000), "config": {}}, state)
    path = tmp_path / "state" / TRAINING_STATE_FILE
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(CheckpointError, match="cannot read training_state.pt"):
        checkpoint.load_training_state(state)

    # generator.json edited to declare a huge network: refused before it is built
    (good / CONFIG_FILE).write_text((good / CONFIG_FILE).read_text()
                                               .replace('"ngf": 8', '"ngf": 200000'))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit the declared architecture"):
        checkpoint.load_generator(str(good))  # building it would need ~10 TB
    refused_in = time.perf_counter() - started
    record("checkpoint: pickle payloads as training_state.pt / generator.safetensors; truncated state; "
           "generator.json declaring ngf 200000",
           f"each a CheckpointError naming the file; no code ran; the oversized network refused in "
           f"{refused_in:.2f} s without allocating it", "none", None)


@pytest.mark.timeout(60)
def test_resuming_a_run_of_another_architecture_is_refused_naming_the_mismatch(tmp_path):
    """Before any worker starts (each would otherwise fail on it, --max-failures times)."""
    from pix2pix.distributed.train import JobConfig, TrainResources, fit
    from pix2pix.training.step import TrainConfig

    run = tmp_path / "runs" / "city"
    export(str(run / "checkpoint_2026-01-01_00-00-00.000000"), GeneratorConfig(ngf=8, depth=5))
    for train, message in ((TrainConfig(image_size=64, ngf=8, depth=6), "depth is 5, expected 6"),
                           (TrainConfig(image_size=64, ngf=8, depth=5, norm="batch"),
                            "norm is 'instance', expected 'batch'")):
        job = JobConfig(train=train, data_uri=str(tmp_path / "no-data-needed"))
        with pytest.raises(CheckpointError, match=message) as raised:
            fit(job, TrainResources(1, False, 1.0, 1), str(tmp_path / "runs"), "city")
        assert "use another --name" in str(raised.value)


DEEP = "[" * 100_000 + "]" * 100_000


def _generator_json(tmp_path) -> dict:
    import json

    directory = str(tmp_path / "export")
    export(directory)
    return json.loads((tmp_path / "export" / CONFIG_FILE).read_text())


@pytest.mark.parametrize("tamper, message", [
    (lambda raw: [raw], "is not a pix2pix-generator"),
    (lambda raw: {**raw, "generator": {**raw["generator"], "depth": 6.5}}, "depth must be int, got 6.5"),
    (lambda raw: {**raw, "generator": {**raw["generator"], "ngf": 4.5}}, "ngf must be int"),
    (lambda raw: {**raw, "generator": {**raw["generator"], "ngf": 1e12}}, "ngf must be int"),
    (lambda raw: {**raw, "generator": {**raw["generator"], "ngf": True}}, "ngf must be int"),
    (lambda raw: {**raw, "generator": [1, 2]}, "must be a JSON object"),
    (lambda raw: {**raw, "precision": 5}, "precision must be one of"),
    (lambda raw: {**raw, "image_size": 32768}, "image_size must be an integer 1..4096, got 32768"),
    (lambda raw: {**raw, "image_size": "64"}, "image_size must be an integer"),
    (lambda raw: {**raw, "step": -1}, "step must be an integer >= 0"),
], ids=["list", "depth float", "ngf float", "ngf 1e12", "ngf bool", "generator list", "precision int",
        "image size 32768", "image size string", "negative step"])
def test_a_malformed_generator_json_is_one_checkpoint_error(tmp_path, tamper, message):
    """Before: tracebacks (TypeError, AttributeError), or a 32768 px image size accepted, each
    small tile then resized to a 3 GiB array."""
    import json

    raw = _generator_json(tmp_path)
    (tmp_path / "export" / CONFIG_FILE).write_text(json.dumps(tamper(raw)))
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(".", r"\.")):
        checkpoint.load_generator(str(tmp_path / "export"))


def test_deeply_nested_or_wrongly_typed_json_files_are_one_line(tmp_path, record):
    """generator.json, a --palette file and a tiles.json 100,000 brackets deep, and a tiles.json
    palette of the wrong type: one line each from the job, no RecursionError or TypeError."""
    _generator_json(tmp_path)
    (tmp_path / "export" / CONFIG_FILE).write_text(DEEP)
    (tmp_path / "deep.json").write_text(DEEP)
    maps = tmp_path / "maps"
    (maps / "3" / "2").mkdir(parents=True)
    (maps / "3" / "2" / "5.png").write_bytes(encoded(smooth_image(0), "PNG"))
    lines = {}
    for name, tiles_json, args in (
            ("generator.json", None,
             ("jobs/evaluate.py", "--data", str(maps), "--checkpoint", str(tmp_path / "export"))),
            ("--palette", None, ("jobs/train.py", "--data", str(tmp_path), "--palette", str(tmp_path / "deep.json"))),
            ("tiles.json", DEEP, ("jobs/pack.py", "--input", str(maps), "--output", str(tmp_path / "a.pmtiles"))),
            ("tiles.json palette", '{"palette": ["#ff0000"]}',
             ("jobs/pack.py", "--input", str(maps), "--output", str(tmp_path / "b.pmtiles"))),
            ("tiles.json colour", '{"palette": {"road": [1, 2, 3]}}',
             ("jobs/view.py", "--map", str(maps), "--port", "0"))):
        if tiles_json is not None:
            (maps / "tiles.json").write_text(tiles_json)
        completed = subprocess.run([sys.executable, *args], cwd=Path(__file__).parents[2], capture_output=True,
                                   text=True, timeout=120)
        lines[name] = completed.stderr.strip().splitlines()
        assert completed.returncode == 1 and len(lines[name]) == 1 and lines[name][0].startswith("error: "), \
            (name, completed.stderr[-1500:])
    assert "nested too deeply" in lines["generator.json"][0] and "nested too deeply" in lines["--palette"][0]
    assert "not a TileJSON file" in lines["tiles.json"][0]
    assert "#rrggbb" in lines["tiles.json palette"][0] and "#rrggbb" in lines["tiles.json colour"][0]
    record("JSON 100,000 brackets deep (generator.json, --palette, tiles.json); a tiles.json palette of the "
           "wrong type", "one line each, exit 1 (RecursionError and TypeError tracebacks before)", "none")


def test_a_tile_opencv_cannot_resize_is_a_bad_tile():
    from pix2pix.images import BadImage
    from pix2pix.tiles.canvases import fit_tile

    with pytest.raises(BadImage, match="cannot resize the 0x4 tile to 64x64"):
        fit_tile(np.zeros((4, 0, 3), np.uint8), 64, "resize")


def test_an_empty_manifest_is_an_error_not_the_whole_input(tmp_path):
    """A manifest folder with no .csv or .parquet, and a Parquet manifest with no row group, read
    as 'no manifest' before: the whole input was planned."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pix2pix.tiles.plan import ManifestError, manifest_parts

    (tmp_path / "no-files").mkdir()
    (tmp_path / "no-files" / "readme.txt").write_text("keys go here")
    pq.ParquetWriter(tmp_path / "empty.parquet", pa.schema([("key", pa.string())])).close()
    assert pq.ParquetFile(tmp_path / "empty.parquet").metadata.num_row_groups == 0
    for name in ("no-files", "empty.parquet"):
        with pytest.raises(ManifestError, match="holds no keys"):
            manifest_parts(storage.resolve(str(tmp_path / name)))


def test_a_training_state_rezipped_with_compression_is_refused_unread(tmp_path, record):
    """A zip bomb: a state of 64 MiB of zeros re-zipped with deflate is ~64 KiB on disk; torch.load
    (weights_only or not) would inflate all of it. torch.save writes stored entries only."""
    import zipfile

    state = storage.resolve(str(tmp_path / "state"))
    checkpoint.save_training_state({"weights": torch.zeros(16 * 2**20), "config": {}}, state)
    path = tmp_path / "state" / TRAINING_STATE_FILE
    stored = path.read_bytes()
    bomb = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(stored)) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            target.writestr(entry.filename, source.read(entry.filename))
    path.write_bytes(bomb.getvalue())
    assert len(bomb.getvalue()) < len(stored) / 100
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="cannot read training_state.pt in .*compressed entries"):
        checkpoint.load_training_state(state)
    refused_in = time.perf_counter() - started
    path.write_bytes(stored)  # the state as torch.save wrote it still loads
    assert checkpoint.load_training_state(state)["weights"].numel() == 16 * 2**20
    record("checkpoint: training_state.pt re-zipped with compression (a zip bomb)",
           f"refused before loading, in {refused_in:.3f} s; the state as written still loads", "none")


@pytest.mark.parametrize("margin", [0, 16], ids=["tiles", "context"])
def test_inputs_that_would_write_one_output_are_recorded_first_in_key_order_wins(tmp_path, margin):
    """1/0/0.png, .jpg and .webp all write 1/0/0.png: before, the write that landed last won
    (or, with --context, the later keys were silently never planned)."""
    for key in ("1/0/0.png", "1/0/0.webp", "1/0/0.jpg", "1/0/1.jpg", "1/1/0.png", "1/1/1.png"):
        (tmp_path / "in" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / key).write_bytes(encoded(smooth_image(0)))
    root, output = storage.resolve(str(tmp_path / "in")), storage.resolve(str(tmp_path / "out"))
    settings = PlanSettings(margin=margin)
    units = [unit for shard in discover_shards(root, settings) for unit in plan_shard(shard, root, output, settings)]
    refused = {unit.key: unit.reason for unit in units if unit.reason}
    assert sorted(refused) == ["1/0/0.png", "1/0/0.webp"]
    assert all("is also that of 1/0/0.jpg, which is written" in reason for reason in refused.values())
    written = sorted(tile.key for unit in units if not unit.reason for tile in unit.tiles if tile.write)
    assert written == ["1/0/0.jpg", "1/0/1.jpg", "1/1/0.png", "1/1/1.png"]
    read = {tile.key for unit in units if not unit.reason for tile in unit.tiles}
    assert not read & set(refused)  # a loser is not a neighbour either
