"""Raster input without Ray: telling rasters from XYZ tiles, checking them, the default zoom,
planning tiles over footprints, and warped windows on a real scene cut in two."""

from __future__ import annotations

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pix2pix.tiles import rasters
from pix2pix.tiles.plan import PlanSettings, footprint_columns, plan_shard, raster_shards, selected_tile_count
from tests.geo_fixtures import assigned_transform, overlapping_cogs, scene_pixels, write_cog, write_geotiff

ZOOM = 18  # ~150 m tiles: a 1024 x 2048 px crop at 0.5 m is 32 of them


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(scene_pixels(1)[:1024, :2048])


def test_rasters_are_told_from_xyz_tiles(tmp_path, crop):
    (tmp_path / "rasters").mkdir()
    scene = write_cog(tmp_path / "rasters" / "scene.tif", crop[:256, :256], assigned_transform())
    assert rasters.find_rasters(str(scene)) == [str(scene)]
    assert rasters.find_rasters(str(tmp_path / "rasters")) == [str(scene)]
    (tmp_path / "list.txt").write_text(f"# scenes\n{scene}\n\nrasters/scene.tif\n")
    assert rasters.find_rasters(str(tmp_path / "list.txt")) == [str(scene)]  # listed twice: once
    # z/x/y.tif tiles, and a flat folder of .tif tiles with no CRS, stay tile input.
    (tmp_path / "xyz" / "18" / "1").mkdir(parents=True)
    write_geotiff(tmp_path / "xyz" / "18" / "1" / "2.tif", crop[:64, :64], assigned_transform())
    assert rasters.find_rasters(str(tmp_path / "xyz")) is None
    (tmp_path / "flat").mkdir()
    with rasterio.open(tmp_path / "flat" / "a.tif", "w", driver="GTiff", width=8, height=8, count=3,
                       dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    assert rasters.find_rasters(str(tmp_path / "flat")) is None


def test_unusable_rasters_are_one_line_naming_the_file(tmp_path, crop):
    (tmp_path / "text.tif").write_text("not a raster\n")
    gray = write_geotiff(tmp_path / "gray.tif", crop[:64, :64, 0], assigned_transform())
    rgbn = tmp_path / "rgbn.tif"  # near-infrared as the 4th band
    with rasterio.open(rgbn, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint8", crs="EPSG:31985",
                       transform=assigned_transform(), photometric="MINISBLACK") as dst:
        dst.write(np.zeros((4, 8, 8), np.uint8))
    wide = tmp_path / "uint16.tif"
    with rasterio.open(wide, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint16",
                       crs="EPSG:31985", transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint16))
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    unplaced = tmp_path / "unplaced.tif"
    with rasterio.open(unplaced, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs="EPSG:31985") as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    for path, message in ((tmp_path / "text.tif", "is not a raster GDAL can read"),
                          (gray, "has 1 band(s)"), (rgbn, "the 4th is not alpha"),
                          (wide, "holds uint16 pixels"), (bare, "has no CRS"),
                          (unplaced, "has no geotransform")):
        with pytest.raises(rasters.RasterError) as error:
            rasters.check_source(str(path))
        assert str(path) in str(error.value) and message in str(error.value)
        assert "\n" not in str(error.value)


def test_default_zoom_is_the_closest_to_the_native_resolution(tmp_path, crop):
    scene = rasters.check_source(str(write_cog(tmp_path / "scene.tif", crop[:256, :256], assigned_transform())))
    # 0.5 m on the ground at 8 S is ~0.505 m of Web Mercator; 256 px tiles: zoom 18 has 0.597.
    assert rasters.default_zoom([scene], 256, 22) == 18
    assert rasters.default_zoom([scene], 64, 22) == 20
    assert rasters.default_zoom([scene], 64, 19) == 19
    assert 0.5 < rasters.ground_resolution(18, 256, -8.05) < 0.6


def test_a_scene_cut_in_two_reads_as_the_uncut_scene_beside_the_cut(tmp_path, crop):
    """First wins: over the west COG (the overlap included) its pixels are the uncut scene's;
    east of it, the east COG's are. Only windows across the west COG's edge differ (the
    bilinear kernel meets that edge)."""
    whole = str(write_cog(tmp_path / "whole.tif", crop, assigned_transform()))
    west, east = (str(path) for path in overlapping_cogs(tmp_path, crop, assigned_transform(), overlap=768))
    west_edge = rasters.check_source(west).bounds[2]
    source = rasters.check_source(whole)
    tiles = list(mercantile.tiles(*source.lonlat, ZOOM))
    crossing, reversed_differ = set(), set()
    for tile in tiles:
        bounds = mercantile.xy_bounds(tile)
        expected, expected_valid = rasters.read_window([whole], bounds, 64, 64)
        if not np.array_equal(rasters.read_window([east, west], bounds, 64, 64)[0], expected):
            reversed_differ.add(tile)
        if bounds.left < west_edge < bounds.right:
            crossing.add(tile)
            continue
        pixels, valid = rasters.read_window([west, east], bounds, 64, 64)
        assert np.array_equal(valid, expected_valid) and np.array_equal(pixels, expected), tile
    assert len(tiles) - len(crossing) >= 24 and len(crossing) >= 2
    # Last wins instead: the east COG's own west edge, inside the overlap, shows there.
    assert reversed_differ and reversed_differ.isdisjoint(crossing)


def test_masked_pixels_are_invalid_and_planning_covers_the_footprint(tmp_path, crop):
    valid = np.ones(crop.shape[:2], bool)
    valid[:, :700] = False
    path = str(write_geotiff(tmp_path / "masked.tif", crop, assigned_transform(), valid=valid))
    source = rasters.check_source(path)
    columns = footprint_columns([source.lonlat], ZOOM)
    assert selected_tile_count(columns, None) == len(list(mercantile.tiles(*source.lonlat, ZOOM)))
    settings = PlanSettings(margin=16)
    units = [unit for shard in raster_shards([source], columns, ZOOM, None, settings)
             for unit in plan_shard(shard, None, _output(tmp_path), settings)]
    assert sum(tile.write for unit in units for tile in unit.tiles) == selected_tile_count(columns, None)
    assert all(unit.sources == [path] for unit in units)
    unit = units[0]
    first = unit.tiles[0]
    bounds, width, height = rasters.unit_window(first.key, first.col, first.row, unit.columns, unit.rows,
                                                unit.margin, 64)
    pixels, read_valid = rasters.read_window(unit.sources, bounds, width, height)
    assert (width, height) == (unit.columns * 64 + 32, unit.rows * 64 + 32)
    assert 0 < read_valid.mean() < 1 and not pixels[~read_valid].any()
    # The scene's west 700 px (350 m) are masked: the window's west part is invalid.
    assert not read_valid[:, :16].any()


def _output(tmp_path):
    from pix2pix import storage

    return storage.resolve(str(tmp_path / "out"))
