"""Batch translation end to end: Ray Data on local storage and S3, resume, bad tiles, modes,
batch independence, context seams on a real scene, CLI errors (`ray job submit`: tests/test_autoscaling.py)."""

from __future__ import annotations

import glob
import io
import json
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pix2pix import checkpoint, storage
from pix2pix.model.export import ExportInfo
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.model.palette import RECIFE_PALETTE, snap_to_palette
from pix2pix.tiles.tileset import TILEJSON_FILE
from tests.conftest import REPO, S3_SECRET_KEY, concurrently, load_job

TINY = GeneratorConfig(ngf=8, depth=6)  # 64 px tiles; depth 6 has a dropout block for --stochastic
GRID = [(x, y) for x in range(10, 13) for y in range(20, 23)]  # 3x3 XYZ tiles at zoom 12

def slow(test):
    return pytest.mark.slow(pytest.mark.timeout(240)(test))


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """Aerial-like smooth content (not noise: noise makes PNG encoding unrepresentatively slow)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC))


def encoded(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def put(root: str, key: str, data: bytes) -> None:
    location = storage.resolve(root)
    storage.write_bytes(location.filesystem, f"{location.path}/{key}", data)


def write_grid(root: str, grid=GRID, zoom: int = 12, size: int = 64) -> list[str]:
    keys = []
    for index, (x, y) in enumerate(grid):
        keys.append(f"{zoom}/{x}/{y}.jpg")
        put(root, keys[-1], encoded(smooth_image(index, size)))
    return keys


def export(uri: str, config: GeneratorConfig = TINY, image_size: int = 64, generator=None, palette=None) -> str:
    torch.manual_seed(0)
    generator = generator or UNetGenerator(config)
    checkpoint.export_generator(generator, ExportInfo(config, image_size=image_size, palette=palette),
                                storage.resolve(uri))
    return uri


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    return export(str(tmp_path_factory.mktemp("checkpoint")))


def translate(input_uri, output_uri, checkpoint_uri, **options) -> dict:
    from pix2pix.distributed.translate import TranslateOptions, translate

    options.setdefault("threads", 1)
    options.setdefault("max_actors", 1)  # one generator process to start per run keeps the tests quick
    return translate(TranslateOptions(input=input_uri, output=output_uri, checkpoint=checkpoint_uri, **options))


def outputs(root: Path) -> dict[str, bytes]:
    """The tiles written under root (not the failure log, not tiles.json)."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.*"))
            if "_failures" not in path.parts and path.name != TILEJSON_FILE}


def failures(summary: dict) -> dict[str, str]:
    location = storage.resolve(summary["failures"])
    table = pq.read_table(location.path, filesystem=location.filesystem)
    return dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist()))


def write_manifest(path: Path, keys: list[str]) -> str:
    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}), path)
    return str(path)


@slow
@pytest.mark.timeout(420)  # four runs: ~150 s on an idle 2-core machine
def test_local_run_keeps_keys_skips_done_tiles_and_overwrites(ray_session, tiny_checkpoint, tmp_path):
    keys = write_grid(str(tmp_path / "in")) + ["misc/photo.jpg", "flat.png"]
    put(str(tmp_path / "in"), "misc/photo.jpg", encoded(smooth_image(50)))
    put(str(tmp_path / "in"), "flat.png", encoded(smooth_image(51), "PNG"))
    summary = translate(str(tmp_path / "in"), str(tmp_path / "out"), tiny_checkpoint,
                        preview=str(tmp_path / "preview.png"))
    assert (summary["tiles"], summary["written"], summary["skipped"], summary["failed"]) == (11, 11, 0, 0)
    assert list(summary)[:6] == ["tiles", "written", "skipped", "failed", "seconds", "tiles_per_s"]
    first = outputs(tmp_path / "out")
    assert sorted(first) == sorted(key.rsplit(".", 1)[0] + ".png" for key in keys)
    assert all(Image.open(io.BytesIO(data)).size == (64, 64) for data in first.values())
    preview = Image.open(tmp_path / "preview.png")
    assert preview.width > 2 * 3 * 64 and preview.height == 3 * 64  # source | translation of the 3x3 grid

    again = translate(str(tmp_path / "in"), str(tmp_path / "out"), tiny_checkpoint)
    assert (again["written"], again["skipped"]) == (0, 11)
    redone = translate(str(tmp_path / "in"), str(tmp_path / "out"), tiny_checkpoint, overwrite=True)
    assert (redone["written"], redone["skipped"]) == (11, 0)
    assert outputs(tmp_path / "out") == first
    assert not list((tmp_path / "out").rglob(".*.tmp"))

    snapped = translate(str(tmp_path / "in"), str(tmp_path / "snapped"), tiny_checkpoint, palette="recife")
    assert snapped["written"] == 11
    for key, data in outputs(tmp_path / "snapped").items():
        raw = torch.from_numpy(np.asarray(Image.open(io.BytesIO(first[key])))).permute(2, 0, 1)[None]
        expected = snap_to_palette(raw, RECIFE_PALETTE)[0].permute(1, 2, 0).numpy()
        image = Image.open(io.BytesIO(data))
        assert image.mode == "P" and len(data) < len(first[key]), key  # paletted: fewer bytes
        assert np.array_equal(np.asarray(image.convert("RGB")), expected), key

    # A model trained with a palette snaps to it with no flag; --no-palette writes raw colours.
    trained = export(str(tmp_path / "trained"), palette=RECIFE_PALETTE)
    default = translate(str(tmp_path / "in"), str(tmp_path / "default"), trained)
    assert default["palette"] == list(RECIFE_PALETTE)
    assert outputs(tmp_path / "default") == outputs(tmp_path / "snapped")
    raw = translate(str(tmp_path / "in"), str(tmp_path / "raw"), trained, no_palette=True)
    assert raw["palette"] is None and outputs(tmp_path / "raw") == first

    document = json.loads((tmp_path / "default" / TILEJSON_FILE).read_text())
    assert default["tilejson"].endswith(TILEJSON_FILE) and document["tiles"] == [default["xyz"]]
    assert default["xyz"] == f"file://{tmp_path / 'default'}/{{z}}/{{x}}/{{y}}.png"
    assert (document["minzoom"], document["maxzoom"], document["tileSize"]) == (12, 12, 64)
    assert document["palette"]["building"] == "#ff0000"
    west, south, east, north = document["bounds"]  # the 3x3 grid x 10-12, y 20-22 at zoom 12
    assert (round(west, 4), round(east, 4)) == (round(10 / 4096 * 360 - 180, 4), round(13 / 4096 * 360 - 180, 4))
    assert north > south


@slow
def test_s3_run_with_a_bad_tile_and_no_secret_in_the_summary(ray_session, s3_bucket, tmp_path):
    root = f"s3://{s3_bucket}"
    keys = write_grid(f"{root}/sat")
    put(f"{root}/sat", "12/10/23.jpg", b"")
    export(f"{root}/model")
    summary = translate(f"{root}/sat", f"{root}/maps", f"{root}/model", image_format="webp")
    assert (summary["written"], summary["failed"]) == (9, 1)
    assert failures(summary) == {"12/10/23.jpg": "empty file"}
    assert summary["failures"].startswith(f"{root}/maps/_failures/")
    output = storage.resolve(f"{root}/maps")
    for key in keys:
        data = storage.read_bytes(output.filesystem, f"{output.path}/{key[:-4]}.webp")
        assert Image.open(io.BytesIO(data)).format == "WEBP"
    assert S3_SECRET_KEY not in json.dumps(summary)

    # --bbox (one listing of the zoom level, then only the crossed columns) with --context, on S3.
    import mercantile

    west, _, _, north = mercantile.bounds(10, 20, 12)
    _, south, east, _ = mercantile.bounds(11, 21, 12)
    inset = 1e-3
    boxed = translate(f"{root}/sat", f"{root}/boxed", f"{root}/model", bbox=(west + inset, south + inset,
                      east - inset, north - inset), zoom=12, context=32)
    assert (boxed["written"], boxed["failed"], boxed["context_pixels"]) == (4, 0, 32)
    written = storage.resolve(f"{root}/boxed")
    found = sorted(path.rsplit("/", 3)[-3] + "/" + path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]
                   for path in storage.list_files(written, (".png",)))
    assert found == ["12/10/20.png", "12/10/21.png", "12/11/20.png", "12/11/21.png"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_stopped_run_resumed_equals_an_uninterrupted_one(ray_session, tiny_checkpoint, tmp_path):
    """With --context (blocks of tiles that read their neighbours, done or not). Without it (one
    unit per tile) the same is checked by tests/reliability/test_translate_chaos.py's driver
    killed at half (the rerun writes the missing tiles, skips the rest, byte-identical output)
    and test_every_bad_tile_kind_is_recorded_and_the_rest_written (a manifest run writes its keys)."""
    context = 32
    grid = [(x, y) for x in range(6, 11) for y in range(0, 3)]  # crosses the x=8 block border
    keys = write_grid(str(tmp_path / "in"), grid)
    reference = translate(str(tmp_path / "in"), str(tmp_path / "ref"), tiny_checkpoint, context=context)
    assert reference["written"] == len(keys)
    half = write_manifest(tmp_path / "half.parquet", keys[::2])
    stopped = translate(str(tmp_path / "in"), str(tmp_path / "out"), tiny_checkpoint, context=context, manifest=half)
    assert stopped["written"] == len(keys[::2])
    resumed = translate(str(tmp_path / "in"), str(tmp_path / "out"), tiny_checkpoint, context=context)
    assert (resumed["written"], resumed["skipped"]) == (len(keys) - len(keys[::2]), len(keys[::2]))
    assert outputs(tmp_path / "out") == outputs(tmp_path / "ref")


CONVERTIBLE = {  # tile key -> (format, mode): every mode a tile may come in that converts to RGB
    "modes/l.png": ("PNG", "L"), "modes/la.png": ("PNG", "LA"), "modes/p.png": ("PNG", "P"),
    "modes/rgba.png": ("PNG", "RGBA"), "modes/i16.png": ("PNG", None), "modes/cmyk.jpg": ("JPEG", "CMYK"),
}


@pytest.fixture(scope="module")
def manifest_run(ray_session, tiny_checkpoint, tmp_path_factory) -> dict:
    """One run of the job's main, shared by the tests below (a run's start-up is most of its
    time): good tiles, every kind of bad tile and unsafe key, a missing key, and a tile in every
    convertible mode, listed in a manifest, with --on-size error and a failure threshold below
    their share. Its summary (the JSON line the job prints before its error) and its error."""
    import contextlib

    tmp_path = tmp_path_factory.mktemp("manifest-run")
    good = write_grid(str(tmp_path / "in"))
    jpeg = encoded(smooth_image(7))
    bad = {
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/empty.jpg": b"",
        "bad/text.jpg": b"this is not an image\n",
        "bad/wrong-size.jpg": encoded(smooth_image(8, size=80)),
    }
    image = smooth_image(3)
    gray16 = (np.asarray(Image.fromarray(image).convert("L"), np.uint16) * 257)
    modes = {key: encoded(gray16 if mode is None else image, fmt, mode) for key, (fmt, mode) in CONVERTIBLE.items()}
    for key, data in {**bad, **modes}.items():
        put(str(tmp_path / "in"), key, data)
    unsafe = ["../outside.jpg", "/etc/passwd", "a%2F..%2Fb.jpg", "nul\x00.jpg", "x" * 2000 + ".jpg"]
    manifest = write_manifest(tmp_path / "keys.parquet", good + list(bad) + unsafe + ["missing/1.jpg"] + list(modes))
    job = load_job("translate")
    argv = ["translate.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--checkpoint", tiny_checkpoint, "--manifest", manifest, "--on-size", "error", "--threads", "1",
            "--max-actors", "1", "--max-failed-fraction", "0.2"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(sys, "argv", argv)
        try:
            job.main()
            error = None
        except Exception as raised:  # noqa: BLE001 - the test below checks it
            error = raised
    summary = json.loads([line for line in printed.getvalue().splitlines() if line.startswith("{")][-1])
    return {"summary": summary, "error": error, "out": tmp_path / "out", "root": tmp_path, "good": good,
            "bad": bad, "unsafe": unsafe, "modes": modes}


@slow
def test_every_bad_tile_kind_is_recorded_and_the_rest_written(manifest_run):
    summary, good, bad, unsafe = (manifest_run[name] for name in ("summary", "good", "bad", "unsafe"))
    written = good + list(manifest_run["modes"])
    assert (summary["written"], summary["failed"]) == (len(written), len(bad) + len(unsafe) + 1)
    reasons = failures(summary)
    assert "cannot decode" in reasons["bad/truncated.jpg"]
    assert reasons["bad/empty.jpg"] == "empty file"
    assert "not a recognised image" in reasons["bad/text.jpg"]
    assert "80x80, expected 64x64" in reasons["bad/wrong-size.jpg"]
    assert reasons["missing/1.jpg"] == "not found"
    assert "'..'" in reasons["../outside.jpg"] and "absolute" in reasons["/etc/passwd"]
    assert "URL-encoded" in reasons["a%2F..%2Fb.jpg"] and "NUL" in reasons["nul\x00.jpg"]
    assert any("longer than" in reason for reason in reasons.values())
    assert not (manifest_run["root"] / "outside.png").exists()
    assert sorted(outputs(manifest_run["out"])) == sorted(key[:-4] + ".png" for key in written)

    # The CLI turns too many failures into one line and a non-zero exit, after the summary.
    assert re.search(r"tiles failed, more than --max-failed-fraction 0.2", str(manifest_run["error"]))


@slow
def test_every_convertible_mode_is_translated(manifest_run):
    modes, written = manifest_run["modes"], outputs(manifest_run["out"])
    assert [Image.open(io.BytesIO(data)).mode for data in modes.values()] == \
        [mode or "I;16" for _, mode in CONVERTIBLE.values()]  # the inputs really are in those modes
    assert not set(modes) & set(failures(manifest_run["summary"]))
    assert all(Image.open(io.BytesIO(written[key[:-4] + ".png"])).mode == "RGB" for key in modes)


@slow
def test_a_tile_never_depends_on_batch_mates_batch_size_or_actors(ray_session, tiny_checkpoint, tmp_path):
    put(str(tmp_path / "a"), "12/0/0.jpg", encoded(smooth_image(99)))
    write_grid(str(tmp_path / "a"), [(1, y) for y in range(4)])
    put(str(tmp_path / "b"), "12/0/0.jpg", encoded(smooth_image(99)))
    write_grid(str(tmp_path / "b"), [(2, y) for y in range(7)], zoom=12)
    runs = {
        "a": translate(str(tmp_path / "a"), str(tmp_path / "a-out"), tiny_checkpoint, batch_size=8),
        "b": translate(str(tmp_path / "b"), str(tmp_path / "b-out"), tiny_checkpoint, batch_size=16,
                       min_actors=2, max_actors=2),
    }
    assert runs["b"]["actors"] == [2, 2] and (runs["a"]["batch_size"], runs["b"]["batch_size"]) == (8, 16)
    tile = "12/0/0.png"
    assert (tmp_path / "a-out" / tile).read_bytes() == (tmp_path / "b-out" / tile).read_bytes()

    stochastic = [translate(str(tmp_path / name), str(tmp_path / f"{name}-stochastic"), tiny_checkpoint,
                            stochastic=True, seed=5, batch_size=size) for name, size in (("a", 8), ("b", 16))]
    assert all(run["written"] for run in stochastic)
    noisy = (tmp_path / "a-stochastic" / tile).read_bytes()
    assert noisy == (tmp_path / "b-stochastic" / tile).read_bytes()
    assert noisy != (tmp_path / "a-out" / tile).read_bytes()


def fitted_generator(config: GeneratorConfig, recife: Path, steps: int = 60) -> UNetGenerator:
    """A generator fitted for a few L1 steps on real pairs: a fresh one outputs texture-like
    noise with no seams to speak of; a lightly fitted one paints map-like regions, and
    translating tiles alone shows their borders."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pairs = []
    for source in sorted(glob.glob(str(recife / "train" / "sat" / "*.jpg")))[:64]:
        target = source.replace("/sat/", "/map/").replace(".jpg", ".png")
        pairs.append((np.asarray(Image.open(source).convert("RGB")), np.asarray(Image.open(target).convert("RGB"))))
    generator = UNetGenerator(config)
    optimizer = torch.optim.Adam(generator.parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(steps):
        crops = []
        for _ in range(8):
            source, target = pairs[rng.integers(len(pairs))]
            i, j = rng.integers(0, 256 - 64, 2)
            crops.append((source[i:i + 64, j:j + 64], target[i:i + 64, j:j + 64]))
        x, y = (torch.from_numpy(np.stack(side)).permute(0, 3, 1, 2).float() / 127.5 - 1 for side in zip(*crops))
        loss = (generator(x) - y).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return generator.eval()


def border_and_inside_differences(mosaic: np.ndarray, tile: int) -> tuple[float, float]:
    """Mean absolute difference between horizontally adjacent pixel columns: across tile
    borders, and inside tiles."""
    steps = np.abs(np.diff(mosaic.astype(np.float32), axis=1)).mean(axis=(0, 2))
    borders = np.arange(tile - 1, len(steps), tile)
    return float(steps[borders].mean()), float(np.delete(steps, borders).mean())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_context_removes_seams_on_a_real_scene(ray_session, recife, tmp_path):
    scene = np.asarray(Image.open(recife / "scenes" / "01.jpg").convert("RGB"))
    size, columns, rows, x0 = 256, 12, 3, 4  # x 4..15 crosses the block border at x = 8
    for column in range(columns):
        for row in range(rows):
            tile = scene[row * size:(row + 1) * size, column * size:(column + 1) * size]
            put(str(tmp_path / "in"), f"16/{x0 + column}/{row}.jpg", encoded(np.ascontiguousarray(tile)))
    config = GeneratorConfig(ngf=8, depth=6)
    model = export(str(tmp_path / "model"), config, image_size=size, generator=fitted_generator(config, recife))

    def mosaic(output: Path) -> np.ndarray:
        return np.concatenate([
            np.concatenate([np.asarray(Image.open(output / f"16/{x0 + c}/{r}.png")) for c in range(columns)], axis=1)
            for r in range(rows)])

    alone = translate(str(tmp_path / "in"), str(tmp_path / "alone"), model)
    context = translate(str(tmp_path / "in"), str(tmp_path / "context"), model, context=32)
    assert alone["written"] == context["written"] == columns * rows
    assert context["context_pixels"] == 32 and context["read_ratio"] <= 1.6
    alone_border, alone_inside = border_and_inside_differences(mosaic(tmp_path / "alone"), size)
    context_border, context_inside = border_and_inside_differences(mosaic(tmp_path / "context"), size)
    assert alone_border > 1.25 * alone_inside, (alone_border, alone_inside)       # seams without context
    assert context_border < 1.15 * context_inside, (context_border, context_inside)  # none with it
    assert context_border < 0.75 * alone_border


# ---- the command line: mistakes end in one line, before Ray starts ----------------------------

def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "translate.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_every_flag_reaches_the_translate_options():
    job = load_job("translate")
    args = job.parse_args([
        "--input", "s3://b/sat", "--output", "s3://b/map", "--checkpoint", "s3://b/run",
        "--bbox=-35.02,-8.16,-34.86,-7.93", "--zoom", "17", "--format", "png", "--image-size", "128",
        "--on-size", "error", "--context", "16", "--stochastic", "--seed", "7", "--palette", "recife",
        "--precision", "fp32", "--threads", "2", "--batch-size", "4", "--actors", "3", "--gpu", "--overwrite",
        "--max-failed-fraction", "0.5", "--preview", "/tmp/p.png", "--verbose"])
    assert args.max_failed_fraction == 0.5  # the job's own, not the library's
    options = job.translate_options(args)
    assert options.bbox == (-35.02, -8.16, -34.86, -7.93) and options.zoom == 17
    assert (options.input, options.output, options.checkpoint) == ("s3://b/sat", "s3://b/map", "s3://b/run")
    assert (options.image_format, options.image_size, options.on_size, options.context) == ("png", 128, "error", 16)
    assert (options.stochastic, options.seed, options.palette, options.no_palette) == (True, 7, "recife", False)
    assert (options.precision, options.threads, options.batch_size) == ("fp32", 2, 4)
    assert (options.min_actors, options.max_actors, options.gpu) == (3, 3, True)
    assert (options.overwrite, options.preview, options.verbose) == (True, "/tmp/p.png", True)
    manifest = job.translate_options(job.parse_args(["--input", "i", "--output", "o", "--checkpoint", "c",
                                                     "--manifest", "m.csv", "--cpu", "--no-palette",
                                                     "--min-actors", "1", "--max-actors", "4"]))
    assert (manifest.manifest, manifest.gpu, manifest.no_palette) == ("m.csv", False, True)
    assert (manifest.min_actors, manifest.max_actors, manifest.bbox) == (1, 4, None)


BAD_FLAGS = [
    (["--input", "x"], 2, "give --input, --output and --checkpoint together"),
    (["--input", "ftp://host/tiles", "--output", "/tmp/o", "--checkpoint", "/tmp/c"], 1, "unsupported URI scheme"),
    (["--palette", "recife", "--format", "jpeg"], 2, "--palette needs --format png"),
]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, tiny_checkpoint) -> dict:
    """The job run once per bad flag below and once on a corrupt checkpoint, all at once (each
    run is mostly the job's start-up): tuple(args) or "corrupt" -> its run."""
    root = tmp_path_factory.mktemp("cli")
    write_grid(str(root / "in"), GRID[:1])
    (root / "corrupt").mkdir()
    (root / "corrupt" / "generator.safetensors").write_bytes(b"garbage")
    (root / "corrupt" / "generator.json").write_text(Path(tiny_checkpoint, "generator.json").read_text())
    runs = {tuple(args): args for args, _, _ in BAD_FLAGS}
    runs["corrupt"] = ["--input", str(root / "in"), "--output", str(root / "out"),
                       "--checkpoint", str(root / "corrupt")]
    return dict(zip(runs, concurrently(*(partial(run_job, *args) for args in runs.values()))))


@pytest.mark.parametrize("args, code, message", BAD_FLAGS)
def test_bad_flags_and_uris_are_one_line(cli_runs, args, code, message):
    completed = cli_runs[tuple(args)]
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == code and len(lines) == 1 and message in lines[0], completed.stderr


def test_a_corrupt_checkpoint_is_one_line(cli_runs):
    completed = cli_runs["corrupt"]
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1 and len(lines) == 1 and "cannot read generator.safetensors" in lines[0]


def test_every_other_mistake_is_caught_before_ray_starts(tmp_path, tiny_checkpoint):
    """The job runs check_run before starting Ray, and cli.run prints its errors as one line."""
    from pix2pix.distributed.translate import TranslateOptions, check_run
    from pix2pix.errors import JobError
    from pix2pix.tiles.xyz import parse_bbox

    write_grid(str(tmp_path / "in"), GRID[:1])
    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "checkpoint": tiny_checkpoint}
    (tmp_path / "keys.csv").write_text("path\n12/10/20.jpg\n")
    for changes, message in (
        ({"input": str(tmp_path / "missing")}, "input not found"),
        ({"output": str(tmp_path / "in" / "maps")}, "must not be the input or inside it"),
        ({"checkpoint": str(tmp_path / "missing")}, "checkpoint not found"),
        ({"image_size": 100}, "not a multiple of 2^6"),
        ({"image_size": 8192}, "--image-size must be at most 4096"),
        ({"context": 100}, "more than one 64 px tile"),
        ({"manifest": str(tmp_path / "none.parquet")}, "manifest not found"),
        ({"manifest": str(tmp_path / "keys.csv")}, "no 'key' column"),
        ({"palette": str(tmp_path / "none.json")}, "palette file not found"),
    ):
        with pytest.raises(JobError, match=re.escape(message)):
            check_run(TranslateOptions(**{**base, **changes}))
    with pytest.raises(JobError, match="bbox must be"):
        parse_bbox("1,2,3")


def test_the_demo_says_what_to_run_first(tmp_path):
    import os

    run = [sys.executable, str(REPO / "jobs" / "translate.py")]
    (tmp_path / "prepared" / "tiles" / "sat" / "1" / "0").mkdir(parents=True)
    (tmp_path / "nothing").mkdir()
    nothing, prepared = concurrently(*(
        partial(subprocess.run, run, capture_output=True, text=True, timeout=120,
                env={**os.environ, "PIX2PIX_DEMO_ROOT": str(tmp_path / name)}) for name in ("nothing", "prepared")))
    assert nothing.returncode == 1 and "python jobs/prepare.py" in nothing.stderr
    assert prepared.returncode == 1 and "python jobs/train.py" in prepared.stderr
    assert len(prepared.stderr.strip().splitlines()) == 1
