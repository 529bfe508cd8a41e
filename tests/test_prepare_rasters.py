"""jobs/prepare.py --image/--labels on georeferenced rasters mosaicked from the real Recife pairs
(tests/geo_fixtures.py's assigned georeference): chips are cut without Ray here, and the job's
runs on Ray are marked slow."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.warp import Resampling, calculate_default_transform, reproject

from pix2pix.model.palette import NODATA_CLASS, RECIFE_PALETTE, palette_classes
from pix2pix.tiles.chips import MOSTLY_NODATA, cut_chips, plan_chips
from pix2pix.tiles.rasters import RasterError
from pix2pix.training.pairs import decode_pair, split_for_key
from tests.conftest import REPO, load_job
from tests.geo_fixtures import ASSIGNED_CRS, assigned_transform, write_geotiff

COLUMNS, ROWS, SIZE = 4, 3, 256
COLOURS = np.array(list(RECIFE_PALETTE.values()), np.uint8)


def decoded(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def classes_of(maps: np.ndarray) -> np.ndarray:
    """(H, W, 3) map colours -> (H, W) uint8 nearest Recife class."""
    images = torch.from_numpy(np.array(maps)).permute(2, 0, 1)
    return palette_classes(images, RECIFE_PALETTE)[0].numpy().astype(np.uint8)


@pytest.fixture(scope="module")
def pairs(recife) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """(row, column) in the mosaic -> the decoded (sat, map) of a real train pair."""
    stems = sorted(path.stem for path in (recife / "train" / "sat").glob("*.jpg"))[:COLUMNS * ROWS]
    return {(index // COLUMNS, index % COLUMNS): (decoded(recife / "train" / "sat" / f"{stem}.jpg"),
                                                  decoded(recife / "train" / "map" / f"{stem}.png"))
            for index, stem in enumerate(stems)}


def mosaic(pairs, side: int) -> np.ndarray:
    canvas = np.zeros((ROWS * SIZE, COLUMNS * SIZE, 3), np.uint8)
    for (row, column), images in pairs.items():
        canvas[row * SIZE:(row + 1) * SIZE, column * SIZE:(column + 1) * SIZE] = images[side]
    return canvas


@pytest.fixture(scope="module")
def rasters(pairs, tmp_path_factory) -> Path:
    """scene.tif (the sat mosaic) and labels.tif (the map mosaic) on one assigned grid."""
    folder = tmp_path_factory.mktemp("rasters")
    write_geotiff(folder / "scene.tif", mosaic(pairs, 0), assigned_transform())
    write_geotiff(folder / "labels.tif", mosaic(pairs, 1), assigned_transform())
    return folder


def cut(images: list[str], labels: list[str], size: int = SIZE, stride: int = SIZE) -> dict:
    """key -> Chip, cut without Ray."""
    plan = plan_chips(images, labels, size, stride)
    return {chip.key: chip for group in plan.groups for chip in cut_chips(group, size, stride)}


def test_chips_of_a_mosaic_are_its_pairs_pixel_for_pixel(pairs, rasters, tmp_path):
    chips = cut([str(rasters / "scene.tif")], [str(rasters / "labels.tif")])
    assert len(chips) == ROWS * COLUMNS
    for (row, column), (sat, labels) in pairs.items():
        chip = chips[f"scene/r{row * SIZE}_c{column * SIZE}"]
        assert chip.skipped is None
        assert np.array_equal(chip.image, sat) and np.array_equal(chip.labels, labels)
    # The same labels on a larger grid (same CRS and pixel size, another corner and extent) go
    # through the warped reading: nearest on whole-pixel offsets moves nothing.
    padded = np.zeros((ROWS * SIZE + 100, COLUMNS * SIZE + 70, 3), np.uint8)
    padded[64:64 + ROWS * SIZE, 32:32 + COLUMNS * SIZE] = mosaic(pairs, 1)
    write_geotiff(tmp_path / "wider.tif", padded, assigned_transform(-32, -64))
    wider = cut([str(rasters / "scene.tif")], [str(tmp_path / "wider.tif")])
    assert all(np.array_equal(wider[key].labels, chips[key].labels) for key in chips)


def test_overlapping_chips_at_a_stride(pairs, rasters):
    chips = cut([str(rasters / "scene.tif")], [str(rasters / "labels.tif")], size=256, stride=128)
    assert len(chips) == (2 * ROWS - 1) * (2 * COLUMNS - 1)
    chip, (sat, labels), (next_sat, next_labels) = chips["scene/r256_c384"], pairs[1, 1], pairs[1, 2]
    assert np.array_equal(chip.image, np.concatenate([sat[:, 128:], next_sat[:, :128]], axis=1))
    assert np.array_equal(chip.labels, np.concatenate([labels[:, 128:], next_labels[:, :128]], axis=1))


def reprojected(source: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray, rasterio.Affine]:
    """(H, W, 3) pixels on the assigned grid warped by nearest to ``crs``: (pixels, valid, transform)."""
    height, width = source.shape[:2]
    left, top = assigned_transform() @ (0, 0)
    right, bottom = assigned_transform() @ (width, height)
    transform, out_width, out_height = calculate_default_transform(ASSIGNED_CRS, crs, width, height,
                                                                   left, bottom, right, top)
    bands = np.concatenate([np.moveaxis(source, -1, 0), np.full((1, height, width), 255, np.uint8)])
    out = np.zeros((4, out_height, out_width), np.uint8)
    reproject(bands, out, src_transform=assigned_transform(), src_crs=ASSIGNED_CRS, dst_transform=transform,
              dst_crs=crs, resampling=Resampling.nearest)
    return np.moveaxis(out[:3], 0, -1), out[3] > 0, transform


def grown(mask: np.ndarray) -> np.ndarray:
    """``mask`` and its 8 neighbours."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def near_a_boundary(classes: np.ndarray, reach: int) -> np.ndarray:
    """Pixels at most ``reach`` pixels (8-neighbourhood steps) from a pixel of another class."""
    edge = np.zeros(classes.shape, bool)
    across, down = classes[:, 1:] != classes[:, :-1], classes[1:] != classes[:-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:] |= down
    edge[:-1] |= down
    for _ in range(reach - 1):
        edge = grown(edge)
    return edge


def test_labels_in_another_crs_agree_except_along_class_boundaries(pairs, rasters, tmp_path):
    pixels, valid, transform = reprojected(mosaic(pairs, 1), "EPSG:4326")
    write_geotiff(tmp_path / "labels_4326.tif", pixels, transform, crs="EPSG:4326", valid=valid)
    warped = cut([str(rasters / "scene.tif")], [str(tmp_path / "labels_4326.tif")])
    assert sorted(warped) == sorted(f"scene/r{row * SIZE}_c{column * SIZE}" for row, column in pairs)
    found = np.zeros((ROWS * SIZE, COLUMNS * SIZE, 3), np.uint8)
    for row, column in pairs:
        found[row * SIZE:(row + 1) * SIZE, column * SIZE:(column + 1) * SIZE] = \
            warped[f"scene/r{row * SIZE}_c{column * SIZE}"].labels
    expected = classes_of(mosaic(pairs, 1))
    wrong = classes_of(found) != expected
    share, near = wrong.mean(), (wrong & near_a_boundary(expected, 2)).sum() / wrong.sum()
    print(f"labels warped to EPSG:4326 and back: {share:.3%} of pixels ({wrong.sum()}) change class, "
          f"{near:.1%} of them within 2 px of a class boundary")
    assert 0 < share < 0.005 and near > 0.95


def write_classes(path: Path, classes: np.ndarray, transform, nodata: int | None = None) -> Path:
    profile = dict(driver="GTiff", width=classes.shape[1], height=classes.shape[0], count=1, dtype="uint8",
                   crs=ASSIGNED_CRS, transform=transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", nodata=nodata)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(classes, 1)
        dataset.write_colormap(1, {index: (*colour, 255) for index, colour in enumerate(RECIFE_PALETTE.values())})
    return path


def test_class_indices_with_a_colour_table_give_the_rgb_maps_pairs(pairs, rasters, tmp_path):
    classes = classes_of(mosaic(pairs, 1))
    write_geotiff(tmp_path / "snapped.tif", COLOURS[classes], assigned_transform())
    classes[:SIZE, :SIZE] = NODATA_CLASS  # chip r0_c0: no labels at all
    classes[:SIZE // 4, SIZE:2 * SIZE] = NODATA_CLASS  # chip r0_c256: a quarter without labels
    write_classes(tmp_path / "classes.tif", classes, assigned_transform())
    from_classes = cut([str(rasters / "scene.tif")], [str(tmp_path / "classes.tif")])
    from_rgb = cut([str(rasters / "scene.tif")], [str(tmp_path / "snapped.tif")])
    assert from_classes["scene/r0_c0"].skipped == MOSTLY_NODATA and from_classes["scene/r0_c256"].skipped is None
    for key, chip in from_classes.items():
        if key in ("scene/r0_c0", "scene/r0_c256"):
            continue
        assert np.array_equal(chip.labels, from_rgb[key].labels) and np.array_equal(chip.image, from_rgb[key].image)
    assert (from_classes["scene/r0_c256"].labels[:SIZE // 4] == 0).all()  # no label: no class colour


def write_with_alpha(path: Path, pixels: np.ndarray, valid: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=4,
                       dtype="uint8", crs=ASSIGNED_CRS, transform=assigned_transform(), tiled=True) as dataset:
        dataset.write(np.concatenate([np.moveaxis(pixels, -1, 0), np.where(valid, 255, 0)[None]]).astype(np.uint8))
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return path


@pytest.mark.parametrize("gaps", ["mask", "alpha"])
def test_image_gaps_skip_chips_mostly_without_data(pairs, rasters, tmp_path, gaps):
    valid = np.ones((ROWS * SIZE, COLUMNS * SIZE), bool)
    valid[SIZE:, :SIZE + SIZE // 2] = False  # chips r256_c0 and r512_c0 wholly, r256_c256 and r512_c256 half
    valid[SIZE:SIZE + 10, SIZE:SIZE + 2 * SIZE // 3] = False  # r256_c256 just over half
    if gaps == "mask":
        write_geotiff(tmp_path / "gappy.tif", mosaic(pairs, 0), assigned_transform(), valid=valid)
    else:
        write_with_alpha(tmp_path / "gappy.tif", mosaic(pairs, 0), valid)
    chips = cut([str(tmp_path / "gappy.tif")], [str(rasters / "labels.tif")])
    assert np.array_equal(chips["gappy/r0_c0"].image, pairs[0, 0][0])
    skipped = sorted(key for key, chip in chips.items() if chip.skipped == MOSTLY_NODATA)
    assert skipped == ["gappy/r256_c0", "gappy/r256_c256", "gappy/r512_c0"]


def test_label_rasters_under_a_prefix_are_read_together(pairs, rasters, tmp_path):
    """The labels cut into a west and an east raster that overlap by 100 columns: the chips
    across the cut get their labels from both, as from the whole."""
    labels, cut_at = mosaic(pairs, 1), 2 * SIZE + 40
    (tmp_path / "labels").mkdir()
    write_geotiff(tmp_path / "labels" / "a_west.tif", labels[:, :cut_at], assigned_transform())
    write_geotiff(tmp_path / "labels" / "b_east.tif", labels[:, cut_at - 100:], assigned_transform(cut_at - 100))
    chips = cut([str(rasters / "scene.tif")], [str(tmp_path / "labels")])
    for (row, column), (_, expected) in pairs.items():
        assert np.array_equal(chips[f"scene/r{row * SIZE}_c{column * SIZE}"].labels, expected)
    # A group of chips reads only the label rasters over its window (32 px chips: two groups a row).
    west = str(tmp_path / "labels" / "a_west.tif")
    write_geotiff(tmp_path / "labels" / "a_west.tif", labels[:, :400], assigned_transform())
    plan = plan_chips([str(rasters / "scene.tif")], [west], 32, 32)
    assert {group.column: group.labels for group in plan.groups if group.row == 0} == {0: (west,), 512: ()}
    assert all(chip.skipped == MOSTLY_NODATA for chip in cut_chips(plan.groups[1], 32, 32))


def write_plain(path: Path, crs: str | None, transform) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8", crs=crs,
                       transform=transform) as dataset:
        dataset.write(np.zeros((3, 512, 512), np.uint8))
    return path


def run_prepare(*args):
    return subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), *args],
                          capture_output=True, text=True, timeout=120)


def bad_inputs(case: str, rasters: Path, folder: Path) -> tuple[Path, Path]:
    image, labels = rasters / "scene.tif", rasters / "labels.tif"
    if case == "not a raster":
        labels = folder / "labels.tif"
        labels.write_text("class,colour\n")
    elif case == "no CRS":
        image = write_plain(folder / "scene.tif", None, assigned_transform())
    elif case == "no geotransform":
        image = write_plain(folder / "scene.tif", ASSIGNED_CRS, rasterio.Affine.identity())
    elif case == "no overlap":
        labels = write_plain(folder / "labels.tif", ASSIGNED_CRS, assigned_transform(column_offset=5000))
    else:
        labels = write_geotiff(folder / "gray.tif", np.zeros((512, 512), np.uint8), assigned_transform())
    return image, labels


@pytest.mark.parametrize("case,message", [
    ("not a raster", "not recognized as being in a supported file format"),
    ("no CRS", "has no CRS"),
    ("no geotransform", "has no geotransform"),
    ("no overlap", "does not overlap the image"),
    ("one band, no colour table", "no colour table"),
])
def test_bad_rasters_are_one_line(rasters, tmp_path, case, message):
    image, labels = bad_inputs(case, rasters, tmp_path)
    with pytest.raises(RasterError, match=message) as raised:
        plan_chips([str(image)], [str(labels)], SIZE, SIZE)
    assert "\n" not in str(raised.value)


def test_the_job_checks_every_raster_before_it_writes(rasters, tmp_path):
    image, labels = bad_inputs("no overlap", rasters, tmp_path)
    completed = run_prepare("--image", str(image), "--labels", str(labels), "--output", str(tmp_path / "data"))
    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1 and len(lines) == 1 and "does not overlap the image" in lines[0], completed.stderr
    assert not (tmp_path / "data").exists()


def test_inputs_are_found_under_prefixes_and_named_by_their_path(rasters, tmp_path):
    (tmp_path / "city" / "north").mkdir(parents=True)
    (tmp_path / "city" / "north" / "scene.tif").symlink_to(rasters / "scene.tif")
    (tmp_path / "city" / "scene.tif").symlink_to(rasters / "scene.tif")
    plan = plan_chips([str(tmp_path / "city")], [str(rasters)], SIZE, SIZE)
    assert sorted({group.name for group in plan.groups}) == ["north/scene", "scene"]
    assert plan.chips == 2 * ROWS * COLUMNS
    with pytest.raises(RasterError, match="same keys: scene"):
        plan_chips([str(rasters / "scene.tif"), str(tmp_path / "city" / "scene.tif")], [str(rasters)], SIZE, SIZE)


def read_rows(folder: Path) -> list[dict]:
    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


@pytest.mark.slow
def test_the_job_writes_the_pairs_as_shards_with_the_hash_split(ray_session, pairs, rasters, tmp_path):
    from pix2pix.distributed.prepare_rasters import prepare_rasters

    valid = np.ones((ROWS * SIZE, COLUMNS * SIZE), bool)
    valid[:SIZE, :SIZE] = False
    write_geotiff(tmp_path / "scene.tif", mosaic(pairs, 0), assigned_transform(), valid=valid)
    plan = plan_chips([str(tmp_path / "scene.tif")], [str(rasters / "labels.tif")], SIZE, SIZE)
    summary = prepare_rasters(plan, str(tmp_path / "data"), val_fraction=0.3)
    assert summary["chips"] == ROWS * COLUMNS and summary["skipped_chips"] == {MOSTLY_NODATA: 1}
    rows = {split: read_rows(tmp_path / "data" / split) for split in ("train", "val")}
    assert summary["pairs"] == {split: len(found) for split, found in rows.items()}
    assert len(rows["train"]) + len(rows["val"]) == ROWS * COLUMNS - 1 and rows["val"]
    for split, found in rows.items():
        for row in found:
            assert row["layout"] == "paired" and split_for_key(row["key"], 0.3) == split
            position = tuple(int(part[1:]) // SIZE for part in row["key"].split("/")[1].split("_"))
            source, target = decode_pair(row)  # as training decodes a shard row
            assert np.array_equal(source, pairs[position][0]) and np.array_equal(target, pairs[position][1])


@pytest.mark.slow
def test_rasters_on_s3(ray_session, s3_endpoint, s3_bucket, pairs, rasters, tmp_path):
    import boto3

    from pix2pix.distributed.prepare_rasters import prepare_rasters

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.upload_file(str(rasters / "scene.tif"), s3_bucket, "scenes/recife.tif")
    client.upload_file(str(rasters / "labels.tif"), s3_bucket, "labels/recife_labels.tif")
    plan = plan_chips([f"s3://{s3_bucket}/scenes/recife.tif"], [f"s3://{s3_bucket}/labels"], SIZE, SIZE)
    summary = prepare_rasters(plan, f"s3://{s3_bucket}/data", direction="BtoA", val_fraction=0.0)
    assert summary["pairs"] == {"train": ROWS * COLUMNS} and summary["skipped"] == 0
    local = tmp_path / "data"
    local.mkdir()
    for entry in client.list_objects_v2(Bucket=s3_bucket, Prefix="data/train/")["Contents"]:
        client.download_file(s3_bucket, entry["Key"], str(local / Path(entry["Key"]).name))
    row = next(row for row in read_rows(local) if row["key"] == "recife/r256_c512")
    assert np.array_equal(png_pixels(row["source"]), pairs[1, 2][1])  # BtoA: the map is the input
    assert np.array_equal(png_pixels(row["target"]), pairs[1, 2][0])


def test_raster_flags_parse_and_exclude_the_pair_input():
    job = load_job("prepare")
    args = job.parse_args(["--image", "a.tif", "s3://b/scenes", "--labels", "s3://b/labels", "--output", "s3://b/d",
                           "--image-size", "512", "--stride", "384"])
    assert (args.image, args.labels, args.image_size, args.stride) == (["a.tif", "s3://b/scenes"], ["s3://b/labels"],
                                                                        512, 384)
    assert job.parse_args(["--image", "a.tif", "--labels", "l.tif", "--output", "d"]).image_size == 256
    for bad in (["--image", "a.tif", "--output", "d"], ["--image", "a.tif", "--labels", "l.tif"],
                ["--image", "a.tif", "--labels", "l.tif", "--output", "d", "--input", "raw"],
                ["--image", "a.tif", "--labels", "l.tif", "--output", "d", "--stride", "0"]):
        with pytest.raises(SystemExit):
            job.parse_args(bad)
