import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from pix2pix.demo import (
    DEMO_TILE_X0,
    DEMO_TILE_Y0,
    DEMO_ZOOM,
    MARKER_NAME,
    PALETTE,
    generate_demo,
    render_scene,
    write_pairs,
    write_tile_grid,
)


def colour_codes(image) -> np.ndarray:
    """One integer per RGB colour, so colours compare as numbers."""
    rgb = np.asarray(image, np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


PALETTE_CODES = colour_codes(list(PALETTE.values()))


def class_masks(label_map: np.ndarray) -> dict[str, np.ndarray]:
    codes = colour_codes(label_map)
    return {name: codes == code for name, code in zip(PALETTE, PALETTE_CODES)}


def is_palette(image: np.ndarray) -> np.ndarray:
    """Per pixel: is its colour one of the palette's?"""
    return np.isin(colour_codes(image), PALETTE_CODES)


@pytest.fixture(scope="module")
def scene():
    """A 512 x 512 scene; seed 3 has a river, ponds, fields, wetland and roads."""
    return render_scene(3, 512, 512)


def test_same_seed_same_scene_and_different_seed_differs():
    aerial, label_map = render_scene(11, 192, 160)
    again_aerial, again_map = render_scene(11, 192, 160)
    other_aerial, other_map = render_scene(12, 192, 160)
    assert aerial.shape == label_map.shape == (160, 192, 3)
    assert aerial.dtype == label_map.dtype == np.uint8
    np.testing.assert_array_equal(aerial, again_aerial)
    np.testing.assert_array_equal(label_map, again_map)
    assert not np.array_equal(aerial, other_aerial)
    assert not np.array_equal(label_map, other_map)


def test_map_holds_only_palette_colours_and_several_classes(scene):
    _, label_map = scene
    assert is_palette(label_map).all()
    present = [name for name, mask in class_masks(label_map).items() if mask.any()]
    assert len(present) >= 4, present


def test_aerial_is_not_the_map_but_follows_it(scene):
    aerial, label_map = scene
    assert is_palette(aerial).mean() < 0.01
    masks = class_masks(label_map)
    mean = {name: aerial[mask].astype(float).mean(axis=0) for name, mask in masks.items() if mask.sum() > 500}
    for name in ("water", "vegetation", "soil"):
        assert name in mean, f"the scene lacks {name}"
    # Water is darker than vegetation and soil, and bluer relative to its green than vegetation.
    assert mean["water"].sum() < mean["vegetation"].sum() < mean["soil"].sum()
    assert mean["water"][2] / mean["water"][1] > mean["vegetation"][2] / mean["vegetation"][1]
    # Vegetation is green-dominant, soil is red-dominant.
    assert mean["vegetation"][1] > mean["vegetation"][0]
    assert mean["soil"][0] > mean["soil"][1] > mean["soil"][2]
    # Each class is far more uniform in colour than the image as a whole.
    spread = aerial.reshape(-1, 3).astype(float).std(axis=0).mean()
    for name in ("water", "soil"):
        assert aerial[masks[name]].astype(float).std(axis=0).mean() < spread


def test_write_pairs(tmp_path):
    keys = write_pairs(str(tmp_path), count=3, size=256, seed=2)
    assert keys == ["0000", "0001", "0002"]
    sat_names = sorted(os.listdir(tmp_path / "sat"))
    map_names = sorted(os.listdir(tmp_path / "map"))
    assert sat_names == [f"{key}.jpg" for key in keys]
    assert map_names == [f"{key}.png" for key in keys]
    for key in keys:
        with Image.open(tmp_path / "sat" / f"{key}.jpg") as sat:
            assert (sat.format, sat.size, sat.mode) == ("JPEG", (256, 256), "RGB")
        with Image.open(tmp_path / "map" / f"{key}.png") as label_map:
            assert (label_map.format, label_map.size) == ("PNG", (256, 256))
            assert is_palette(np.asarray(label_map.convert("RGB"))).all()
    # The written map is exactly the rendered one (lossless).
    _, first_map = render_scene(2 * 100003, 256, 256)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "map" / "0000.png").convert("RGB")), first_map)


def test_tile_grid_is_one_contiguous_scene(tmp_path):
    columns, rows, size = 3, 2, 64
    keys = write_tile_grid(str(tmp_path), zoom=17, x0=100, y0=200, columns=columns, rows=rows, tile_size=size, seed=7)
    assert len(keys) == columns * rows
    assert sorted(keys) == sorted(f"17/{100 + c}/{200 + r}.jpg" for c in range(columns) for r in range(rows))
    aerial, label_map = render_scene(7, columns * size, rows * size)
    mosaic = np.zeros_like(label_map)
    for key in keys:
        z, x, y = (int(part) for part in key[:-len(".jpg")].split("/"))
        column, row = x - 100, y - 200
        with Image.open(tmp_path / "sat" / key) as sat:
            assert sat.size == (size, size)
            # JPEG is lossy: close to the scene's window, not equal.
            window = aerial[row * size:(row + 1) * size, column * size:(column + 1) * size].astype(float)
            assert np.abs(np.asarray(sat, float) - window).mean() < 6
        with Image.open(tmp_path / "map" / f"{z}/{x}/{y}.png") as tile_map:
            mosaic[row * size:(row + 1) * size, column * size:(column + 1) * size] = np.asarray(tile_map.convert("RGB"))
    np.testing.assert_array_equal(mosaic, label_map)


def test_demo_tile_origin_is_recife():
    # The tile grid is centred on the zoom-17 tile of Recife (lat -8.05, lon -34.9).
    n = 2**DEMO_ZOOM
    x = int((-34.9 + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(-8.05))) / math.pi) / 2 * n)
    assert (DEMO_TILE_X0, DEMO_TILE_Y0) == (x - 3, y - 2)


def test_generate_demo_is_idempotent(tmp_path):
    root = str(tmp_path / "demo")
    first = generate_demo(root, pairs=4, size=64, columns=2, rows=2)
    assert first["generated"] is True
    assert (first["pairs"], first["tiles"], first["root"]) == (4, 4, root)
    assert len(os.listdir(os.path.join(root, "raw", "sat"))) == 4
    tile_files = sorted(os.path.relpath(os.path.join(folder, name), root)
                        for folder, _, names in os.walk(os.path.join(root, "tiles")) for name in names)
    assert len(tile_files) == 8
    recorded = json.loads((tmp_path / "demo" / MARKER_NAME).read_text())
    assert recorded["pairs"] == 4

    every_file = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names)
    stamps = {path: os.stat(path).st_mtime_ns for path in every_file}
    second = generate_demo(root, pairs=4, size=64, columns=2, rows=2)
    assert second["generated"] is False
    assert {path: os.stat(path).st_mtime_ns for path in every_file} == stamps
    assert sorted(os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names) == every_file

    # Different parameters rebuild, leaving no stale pairs behind.
    third = generate_demo(root, pairs=2, size=64, columns=2, rows=2)
    assert third["generated"] is True
    assert sorted(os.listdir(os.path.join(root, "raw", "map"))) == ["0000.png", "0001.png"]


def test_generate_demo_redoes_an_incomplete_run(tmp_path):
    root = str(tmp_path / "demo")
    generate_demo(root, pairs=2, size=64, columns=1, rows=1)
    os.remove(os.path.join(root, "raw", "sat", "0001.jpg"))
    again = generate_demo(root, pairs=2, size=64, columns=1, rows=1)
    assert again["generated"] is True
    assert sorted(os.listdir(os.path.join(root, "raw", "sat"))) == ["0000.jpg", "0001.jpg"]
