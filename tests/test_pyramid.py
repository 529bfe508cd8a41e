"""The zoom pyramid jobs/pack.py builds below the translated zoom: class tiles by GDAL's mode
(every 2x2 block against GDAL's own overview, nodata and ties included), each level equal to
the class COG's overview at its zoom pixel for pixel, in the archive and the folder with their
zooms in the TileJSON; colour tiles averaged, alpha respected."""

from __future__ import annotations

import io
import itertools
import json

import mercantile
import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from pix2pix.model.palette import NODATA_CLASS, RECIFE_PALETTE
from pix2pix.tiles.archive import Archive
from pix2pix.tiles.pyramid import default_min_zoom, mode_of_blocks
from pix2pix.tiles.viewer import folder_layer
from pix2pix.tiles.xyz import TileKey
from tests.conftest import load_job
from tests.test_class_cog import COLUMNS, CORNER, ROWS, tile_window, write_class_tiles


def gdal_mode_overview(classes: np.ndarray) -> np.ndarray:
    """GDAL's own 2x mode overview of a class raster with nodata 255."""
    profile = dict(driver="MEM", width=classes.shape[1], height=classes.shape[0], count=1, dtype="uint8",
                   crs="EPSG:3857", transform=from_origin(0, classes.shape[0], 1, 1), nodata=NODATA_CLASS)
    with rasterio.MemoryFile() as memory, memory.open(**profile) as dataset:
        dataset.write(classes, 1)
        dataset.build_overviews([2], Resampling.mode)
        return dataset.read(1, out_shape=(classes.shape[0] // 2, classes.shape[1] // 2))


def test_every_2x2_block_takes_the_class_gdal_takes():
    values = (0, 1, 2, NODATA_CLASS)
    blocks = list(itertools.product(values, repeat=4))  # every block of three classes and nodata: 256
    classes = np.zeros((32, 32), np.uint8)
    for index, (top_left, top_right, bottom_left, bottom_right) in enumerate(blocks):
        row, column = divmod(index, 16)
        classes[2 * row:2 * row + 2, 2 * column:2 * column + 2] = [[top_left, top_right], [bottom_left, bottom_right]]
    ours = mode_of_blocks(classes)
    assert np.array_equal(ours, gdal_mode_overview(classes))
    # The rule, readably: ties go to the class whose last pixel comes first in row order.
    assert mode_of_blocks(np.array([[0, 1], [1, 0]], np.uint8)) == 1
    assert mode_of_blocks(np.array([[0, 1], [0, 1]], np.uint8)) == 0
    assert mode_of_blocks(np.array([[2, 1], [0, 3]], np.uint8)) == 2
    assert mode_of_blocks(np.array([[255, 255], [255, 4]], np.uint8)) == 4
    assert mode_of_blocks(np.full((2, 2), 255, np.uint8)) == 255


def test_the_default_lowest_zoom_shows_the_area_in_a_few_tiles():
    area = [TileKey(17, x, y) for x in range(52829, 52829 + 40) for y in range(68476, 68476 + 9)]
    assert default_min_zoom(area) == 13  # 40 columns: 4 tiles at zoom 13, 6 at 14
    assert default_min_zoom([TileKey(17, 5, 9)]) == 17
    assert default_min_zoom([TileKey(3, 0, 0), TileKey(3, 7, 7)]) == 2


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_each_pyramid_level_equals_the_class_cogs_overview(tmp_path, recife, capsys):
    tiles = write_class_tiles(tmp_path / "maps", recife)
    main = load_job("pack").main
    assert main(["--input", str(tmp_path / "maps"), "--output", str(tmp_path / "city.pmtiles"),
                 "--min-zoom", "14"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["--input", str(tmp_path / "maps"), "--output", str(tmp_path / "city.tif"),
                 "--min-zoom", "14"]) == 0
    assert summary["zooms"] == [14, 17] and list(summary["pyramid_tiles"]) == ["16", "15", "14"]
    assert summary["tiles"] == len(tiles) + sum(summary["pyramid_tiles"].values())
    # Level 16 meets the cases the rule is about: 2-2 ties the top left loses, and nodata.
    level = np.full((ROWS * 256, COLUMNS * 256), NODATA_CLASS, np.uint8)
    for tile, classes in tiles.items():
        level[(tile.y - CORNER.y) * 256:(tile.y - CORNER.y + 1) * 256,
              (tile.x - CORNER.x) * 256:(tile.x - CORNER.x + 1) * 256] = classes
    top_left, top_right = level[0::2, 0::2], level[0::2, 1::2]
    bottom_left, bottom_right = level[1::2, 0::2], level[1::2, 1::2]
    ties_lost_by_top_left = (top_left == bottom_right) & (top_right == bottom_left) & (top_left != top_right) \
        & (top_left != NODATA_CLASS) & (top_right != NODATA_CLASS)
    assert ties_lost_by_top_left.sum() > 1000 and ((level == NODATA_CLASS).any())

    archive = Archive(str(tmp_path / "city.pmtiles"))
    compared = {}
    try:
        assert (archive.metadata["minzoom"], archive.metadata["maxzoom"]) == (14, 17)
        with rasterio.open(tmp_path / "city.tif") as cog:
            for levels_up, zoom in enumerate((16, 15, 14), start=1):
                with rasterio.open(tmp_path / "city.tif", overview_level=levels_up - 1) as overview:
                    assert overview.width == cog.width >> levels_up
                    everything = overview.read(1)
                    written = sorted((tmp_path / "maps" / str(zoom)).glob("*/*.png"))
                    for path in written:
                        tile = TileKey(zoom, int(path.parent.name), int(path.stem))
                        pyramid = decoded(path.read_bytes())
                        window = tile_window(overview, tile)
                        assert np.array_equal(pyramid, overview.read(1, window=window)), tile
                        assert archive.get(tile.z, tile.x, tile.y) == path.read_bytes()
                    compared[zoom] = len(written)
                    # No pyramid tile is missing: outside them the overview is nodata only.
                    valid = sum(int((decoded(path.read_bytes()) != NODATA_CLASS).sum()) for path in written)
                    assert (everything != NODATA_CLASS).sum() == valid
    finally:
        archive.close()
    assert compared == {int(zoom): count for zoom, count in summary["pyramid_tiles"].items()}
    assert all(compared.values())
    assert (folder_layer("map", str(tmp_path / "maps")).spec["minzoom"]) == 14


def test_colour_tiles_are_averaged_with_their_alpha(tmp_path, capsys):
    folder = tmp_path / "satellite"
    red = np.zeros((256, 256, 4), np.uint8)
    red[...] = (200, 0, 0, 255)
    stripes = np.zeros((256, 256, 4), np.uint8)
    stripes[:, 0::2] = (255, 255, 255, 255)
    stripes[:, 1::2] = (0, 0, 0, 255)
    faded = np.zeros((256, 256, 4), np.uint8)
    faded[:, 0::2] = (0, 0, 90, 255)
    faded[:, 1::2] = (255, 0, 0, 0)  # transparent: its colour must not count
    for (x, y), pixels in {(10, 20): red, (11, 20): stripes, (10, 21): faded}.items():  # (11, 21) missing
        (folder / "9" / str(x)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "9" / str(x) / f"{y}.png")
    assert load_job("pack").main(["--input", str(folder), "--output", str(tmp_path / "s.pmtiles"),
                                  "--min-zoom", "8"]) == 0
    parent = np.asarray(Image.open(folder / "8" / "5" / "10.png"))
    assert parent.shape == (256, 256, 4)
    quarters = {(0, 0): (200, 0, 0, 255), (0, 1): (128, 128, 128, 255), (1, 0): (0, 0, 90, 128), (1, 1): (0, 0, 0, 0)}
    for (row, column), expected in quarters.items():
        quarter = parent[row * 128:(row + 1) * 128, column * 128:(column + 1) * 128]
        assert (quarter == expected).all(), ((row, column), quarter[0, 0])


def test_the_map_page_zoomed_out_shows_the_pyramid_level(tmp_path, recife, capsys):
    from tests.test_map_page import browser_or_skip, screenshot, start_viewer

    driver = browser_or_skip()
    write_class_tiles(tmp_path / "maps", recife)
    assert load_job("pack").main(["--input", str(tmp_path / "maps"), "--output", str(tmp_path / "city.pmtiles"),
                                  "--min-zoom", "14"]) == 0
    middle = mercantile.Tile((CORNER.x + COLUMNS // 2) >> 3, (CORNER.y + ROWS // 2) >> 3, 14)  # the area's middle
    box = mercantile.bounds(middle)
    colours = np.array(list(RECIFE_PALETTE.values()), np.uint8)
    process, url = start_viewer(str(tmp_path / "city.pmtiles"), str(tmp_path / "maps"))
    try:
        driver.get(f"{url}#14/{(box.south + box.north) / 2:.9f}/{(box.west + box.east) / 2:.9f}")
        driver.find_element("css selector", "[data-mode=map]").click()
        image, _ = screenshot(driver)
        shown = driver.execute_script("return [...document.querySelectorAll('#maps img')]"
                                      ".filter(i => i.complete && i.naturalWidth).map(i => i.src)")
        assert shown and all("/map/14/" in source for source in shown), shown
        # The centre of the screen is the centre of tile `middle`: compare the pixels around it.
        height, width = image.shape[:2]
        checked = 0
        for dy in range(-140, 141, 10):
            for dx in range(-190, 191, 10):
                world_x, world_y = middle.x * 256 + 128 + dx, middle.y * 256 + 128 + dy
                path = tmp_path / "maps" / "14" / str(world_x // 256) / f"{world_y // 256}.png"
                if not path.exists():
                    continue
                index = decoded(path.read_bytes())[world_y % 256, world_x % 256]
                if index != NODATA_CLASS:
                    assert tuple(image[height // 2 + dy, width // 2 + dx]) == tuple(colours[index]), (dx, dy)
                    checked += 1
        assert checked > 200
    finally:
        driver.quit()
        process.kill()
        process.wait()
