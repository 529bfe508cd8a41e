"""Translating georeferenced rasters end to end on Ray: a scene cut into two overlapping COGs
on S3 gives the uncut scene's tiles, masked pixels are nodata, empty tiles are not written,
done tiles are skipped; bad input ends in one line."""

from __future__ import annotations

import io
import re
import shutil
from functools import partial

import mercantile
import numpy as np
import pytest
from PIL import Image

from pix2pix import storage
from pix2pix.model.palette import NODATA_CLASS, RECIFE_PALETTE
from pix2pix.tiles import rasters
from tests.conftest import S3_SECRET_KEY, concurrently
from tests.geo_fixtures import assigned_transform, overlapping_cogs, scene_pixels, write_cog, write_geotiff
from tests.test_translate_job import export, outputs, run_job, translate

ZOOM = 18  # 32 tiles of 64 px over a 1024 x 2048 px crop


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(scene_pixels(1)[:1024, :2048])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return export(str(tmp_path_factory.mktemp("model")), palette=RECIFE_PALETTE)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_overlapping_cogs_on_s3_give_the_uncut_scenes_tiles(ray_session, s3_bucket, model, crop, tmp_path, capsys):
    whole = write_cog(tmp_path / "whole.tif", crop, assigned_transform())
    (tmp_path / "cut").mkdir()
    west, east = overlapping_cogs(tmp_path / "cut", crop, assigned_transform(), overlap=768)
    location = storage.resolve(f"s3://{s3_bucket}/scenes")
    for path in (west, east):
        storage.write_bytes(location.filesystem, f"{location.path}/{path.name}", path.read_bytes())

    reference = translate(str(whole), str(tmp_path / "whole-out"), model, zoom=ZOOM)
    cut = translate(f"s3://{s3_bucket}/scenes", f"s3://{s3_bucket}/maps", model, zoom=ZOOM)
    assert reference["written"] == cut["written"] == reference["tiles"] >= 30
    assert (cut["zoom"], cut["rasters"], cut["failed"], cut["empty"]) == (ZOOM, 2, 0, 0)

    expected = outputs(tmp_path / "whole-out")
    maps = storage.resolve(f"s3://{s3_bucket}/maps")
    west_edge = rasters.check_source(str(west)).bounds[2]
    same = 0
    for key, data in expected.items():
        z, x, y = map(int, key.removesuffix(".png").split("/"))
        bounds = mercantile.xy_bounds(x, y, z)
        got = storage.read_bytes(maps.filesystem, f"{maps.path}/{key}")
        if not bounds.left < west_edge < bounds.right:  # the west COG's edge: its kernel differs there
            assert got == data, key
            same += 1
    assert same >= len(expected) - 4
    printed = capsys.readouterr()
    assert S3_SECRET_KEY not in printed.out + printed.err + str(cut)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_masked_pixels_are_nodata_empty_tiles_unwritten_and_done_tiles_skipped(ray_session, model, crop, tmp_path):
    valid = np.ones(crop.shape[:2], bool)
    valid[:, :700] = False  # the west 350 m: more than two tile columns at zoom 18
    masked = write_geotiff(tmp_path / "masked.tif", crop, assigned_transform(), valid=valid)
    source = rasters.check_source(str(masked))
    tiles = list(mercantile.tiles(*source.lonlat, ZOOM))
    done = tiles[-1]  # the south-east tile, fully valid: written earlier, by hand
    done_key = f"{done.z}/{done.x}/{done.y}.png"
    (tmp_path / "out" / done_key).parent.mkdir(parents=True)
    (tmp_path / "out" / done_key).write_bytes(b"earlier")

    summary = translate(str(masked), str(tmp_path / "out"), model, zoom=ZOOM, context=16,
                        preview=str(tmp_path / "preview.png"))
    assert summary["skipped"] == 1 and summary["failed"] == 0 and summary["empty"] >= 2
    assert summary["tiles"] == len(tiles) == summary["written"] + summary["skipped"] + summary["empty"]
    assert (tmp_path / "out" / done_key).read_bytes() == b"earlier"
    written = outputs(tmp_path / "out")
    assert len(written) == summary["written"] + 1
    mask_edge = rasters.check_source(str(write_geotiff(tmp_path / "west.tif", crop[:, :700],
                                                       assigned_transform()))).bounds[2]
    partial = 0
    for key, data in written.items():
        if key == done_key:
            continue
        z, x, y = map(int, key.removesuffix(".png").split("/"))
        bounds = mercantile.xy_bounds(x, y, z)
        classes = np.asarray(Image.open(io.BytesIO(data)))
        assert bounds.right > mask_edge, key  # no tile wholly in the masked part is written
        if bounds.left < mask_edge:  # across the mask's edge: nodata on its west, classes on its east
            partial += 1
            assert (classes[:, 0] == NODATA_CLASS).all() and (classes[:, -1] < len(RECIFE_PALETTE)).any(), key
        else:
            assert (classes < len(RECIFE_PALETTE)).any(), key
    assert partial >= 2
    # The preview's source side is the rasters' window warped onto each tile (white where invalid),
    # from the written tile at the region's north-west corner.
    fresh = [tuple(map(int, key.removesuffix(".png").split("/"))) for key in written if key != done_key]
    left = min(x for _, x, _ in fresh)
    top = min(y for _, x, y in fresh if x == left)
    corner = rasters.read_tile([source], f"{ZOOM}/{left}/{top}", 64)
    assert corner is not None and (corner != 255).any()  # a partial tile: white where masked
    preview = np.asarray(Image.open(tmp_path / "preview.png").convert("RGB"))
    assert preview.shape[0] in (64, 128, 192, 256) and (preview[:64, :64] == corner).all()


def test_bad_raster_input_is_one_line(tmp_path, model, crop):
    from pix2pix.distributed.translate import TranslateOptions, check_run
    from pix2pix.errors import JobError

    scene = write_cog(tmp_path / "scene.tif", crop[:512, :512], assigned_transform())
    (tmp_path / "notes.tif").write_text("not a raster\n")
    (tmp_path / "list.txt").write_text(f"{scene}\nmissing.tif\n")
    base = {"input": str(scene), "output": str(tmp_path / "out"), "checkpoint": model}

    def in_process():
        for changes, message in (
            ({"zoom": 21, "max_tiles": 100}, "zoom 21 plans 225 tiles over the rasters, more than --max-tiles 100"),
            ({"input": str(tmp_path / "list.txt")}, "missing.tif is not a raster GDAL can read"),
            ({"manifest": str(tmp_path / "list.txt")}, "--manifest lists XYZ tiles to read; "),
        ):
            with pytest.raises(JobError, match=re.escape(message)):
                check_run(TranslateOptions(**{**base, **changes}))

    # The job's process starts (most of its time) while the checks run here.
    completed, _ = concurrently(partial(run_job, "--input", str(tmp_path / "notes.tif"), "--output",
                                        str(tmp_path / "out"), "--checkpoint", model), in_process)
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1 and len(lines) == 1 and "notes.tif is not a raster GDAL can read" in lines[0]
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
