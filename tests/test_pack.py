"""jobs/pack.py: a folder of XYZ tiles to one PMTiles archive that gives back every tile's
bytes, identical tiles stored once, with the default pyramid below a wide area, locally and on
S3; and the clear lines for bad input (pack and view). The class COG: tests/test_class_cog.py;
the pyramid's pixels: tests/test_pyramid.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from functools import partial

import boto3
import numpy as np
import pytest
from PIL import Image

from pix2pix.model.palette import RECIFE_PALETTE, encode_paletted_png
from pix2pix.tiles.archive import Archive
from tests.conftest import REPO, concurrently, load_job


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def folder(tmp_path):
    tiles = {}
    water = encode_paletted_png(np.zeros((64, 64), np.uint8), RECIFE_PALETTE)
    for x in range(3):
        for y in range(2):
            data = water if y == 0 else encode_paletted_png(np.full((64, 64), x + 1, np.uint8), RECIFE_PALETTE)
            path = tmp_path / "maps" / "15" / str(100 + x) / f"{200 + y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            tiles[15, 100 + x, 200 + y] = data
    return tmp_path / "maps", tiles


def test_the_archive_holds_every_tile_and_stores_repeats_once(folder, tmp_path):
    maps, tiles = folder
    done = run("jobs/pack.py", "--input", str(maps), "--output", str(tmp_path / "city.pmtiles"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["tiles"], summary["unique_tiles"]) == (6, 4)  # three identical water tiles
    archive = Archive(str(tmp_path / "city.pmtiles"))
    try:
        assert all(archive.get(*tile) == data for tile, data in tiles.items())
        assert archive.get(15, 100, 202) is None
        metadata = archive.metadata
        assert (metadata["minzoom"], metadata["maxzoom"], metadata["extension"]) == (15, 15, ".png")
    finally:
        archive.close()


def test_bad_input_ends_in_one_line(folder, tmp_path):
    maps, _ = folder
    target = tmp_path / "city.pmtiles"
    target.write_bytes(b"an archive from before")
    (tmp_path / "empty").mkdir()
    cases = [
        (("jobs/pack.py", "--input", str(maps), "--output", str(target)), "exists: pass --overwrite"),
        (("jobs/pack.py", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "x.pmtiles")), "no XYZ tiles"),
        (("jobs/pack.py", "--input", str(maps), "--output", str(tmp_path / "x.zip")), "must end in .pmtiles"),
        (("jobs/pack.py", "--input", str(maps), "--output", str(tmp_path / "x.pmtiles"), "--min-zoom", "-1"),
         "--min-zoom must be 0 or more"),
        (("jobs/view.py", "--map", str(tmp_path / "empty")), "no XYZ tiles"),
        (("jobs/view.py", "--map", str(tmp_path / "missing")), "not a folder of tiles"),
        (("jobs/view.py", "--map", str(target)), "not a PMTiles v3 archive"),
    ]
    for (args, message), done in zip(cases, concurrently(*(partial(run, *args) for args, _ in cases))):
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert target.read_bytes() == b"an archive from before"
    assert run("jobs/pack.py", "--input", str(maps), "--output", str(target), "--overwrite").returncode == 0
    assert target.read_bytes()[:7] == b"PMTiles"


def test_a_wide_area_is_packed_with_its_pyramid_down_to_a_few_tiles_and_goes_to_s3(tmp_path, s3_bucket, capsys):
    """Eight tiles in a row at zoom 15: the default lowest zoom is 14 (four tiles), its tiles
    each made of two classes side by side, in the folder and in the archive uploaded to S3."""
    maps = tmp_path / "maps"
    for x in range(100, 108):
        path = maps / "15" / str(x) / "200.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_paletted_png(np.full((64, 64), x % 7, np.uint8), RECIFE_PALETTE))
    uri = f"s3://{s3_bucket}/city.pmtiles"
    assert load_job("pack").main(["--input", str(maps), "--output", uri]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["zooms"], summary["pyramid_tiles"], summary["tiles"]) == ([14, 15], {"14": 4}, 12)
    local = tmp_path / "city.pmtiles"
    boto3.client("s3").download_file(s3_bucket, "city.pmtiles", str(local))
    archive = Archive(str(local))
    try:
        assert (archive.header["min_zoom"], archive.metadata["minzoom"], archive.metadata["maxzoom"]) == (14, 14, 15)
        for x in range(50, 54):
            written = (maps / "14" / str(x) / "100.png").read_bytes()
            assert archive.get(14, x, 100) == written
            classes = np.asarray(Image.open(io.BytesIO(written)))
            assert classes.shape == (64, 64) and (classes[:32, :32] == (2 * x) % 7).all()
            assert (classes[:32, 32:] == (2 * x + 1) % 7).all() and (classes[32:] == 255).all()
    finally:
        archive.close()
