import math

import mercantile
import numpy as np
import pytest
from PIL import Image

from pix2pix.errors import ConfigError
from pix2pix.images import image_grid, side_by_side
from pix2pix.tiles.xyz import TileKey, mosaic, neighbours, parse_bbox, parse_tile_key, tile_key_path, tiles_in_bbox

RECIFE = (-34.95, -8.10, -34.85, -8.00)


def solid(colour, size=(4, 4)):
    return Image.new("RGB", size, colour)


@pytest.mark.parametrize("key", ["17/38591/49283.jpg", "city/17/38591/49283.png", "a/b/0/0/0.webp"])
def test_parse_and_format_round_trip(key):
    tile = parse_tile_key(key)
    ext = key.rsplit(".", 1)[1]
    assert key.endswith(tile_key_path(tile, ext))
    assert parse_tile_key(tile_key_path(tile, "." + ext)) == tile


def test_parse_tile_key_values():
    assert parse_tile_key("city/17/38591/49283.png") == TileKey(17, 38591, 49283)
    assert tile_key_path(TileKey(17, 38591, 49283), "png") == "17/38591/49283.png"


@pytest.mark.parametrize(
    "key",
    [
        "49283.jpg",
        "38591/49283.jpg",
        "17/38591/49283",  # no extension
        "17/abc/49283.jpg",
        "17/-1/49283.jpg",
        "2/4/0.png",  # x outside 0..3
        "2/0/4.png",  # y outside 0..3
        "city/meta/index.json",
        "",
    ],
)
def test_non_xyz_keys_give_none(key):
    assert parse_tile_key(key) is None


def test_tiles_in_bbox_recife():
    zoom = 15
    tiles = tiles_in_bbox(*RECIFE, zoom)
    west, south, east, north = RECIFE
    top_left = mercantile.tile(west, north, zoom)
    bottom_right = mercantile.tile(east, south, zoom)
    expected_count = (bottom_right.x - top_left.x + 1) * (bottom_right.y - top_left.y + 1)
    assert len(tiles) == expected_count == len(set(tiles))
    assert tiles == sorted(tiles)

    # the tile holding the centre of Recife, from the slippy-map formula by hand
    lon, lat = -34.90, -8.05
    n = 2**zoom
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    assert TileKey(zoom, x, y) in tiles


@pytest.mark.parametrize(
    "bbox",
    [
        (-34.85, -8.10, -34.95, -8.00),  # west > east
        (-34.95, -8.00, -34.85, -8.10),  # south > north
        (-34.95, -8.10, -34.95, -8.00),  # zero width
        (-34.95, -89.0, -34.85, -8.00),  # below Web Mercator range
        (-190.0, -8.10, -34.85, -8.00),
        (-34.95, float("nan"), -34.85, -8.00),
    ],
)
def test_bad_bbox_raises(bbox):
    with pytest.raises(ConfigError):
        tiles_in_bbox(*bbox, 14)


def test_bad_zoom_raises():
    with pytest.raises(ConfigError):
        tiles_in_bbox(*RECIFE, -1)


def test_parse_bbox():
    assert parse_bbox("-34.95,-8.10,-34.85,-8.00") == RECIFE
    assert parse_bbox(" -34.95 , -8.1 , -34.85 , -8 ") == RECIFE
    for text in ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "-34.85,-8.10,-34.95,-8.00"]:
        with pytest.raises(ConfigError):
            parse_bbox(text)


def test_neighbours():
    around = neighbours(TileKey(5, 10, 12))
    assert len(around) == 8
    assert around[(-1, -1)] == TileKey(5, 9, 11)
    assert around[(1, 0)] == TileKey(5, 11, 12)
    corner = neighbours(TileKey(2, 0, 0))
    assert set(corner) == {(1, 0), (0, 1), (1, 1)}
    assert neighbours(TileKey(0, 0, 0)) == {}


def test_mosaic_places_tiles_and_fills_background():
    tiles = {
        TileKey(3, 4, 2): solid((255, 0, 0)),  # top left
        TileKey(3, 5, 2): np.full((4, 4, 3), (0, 255, 0), dtype=np.uint8),  # top right
        TileKey(3, 4, 3): solid((0, 0, 255)),  # bottom left; bottom right missing
    }
    image = mosaic(tiles, background=(9, 9, 9))
    assert image.size == (8, 8)
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((3, 3)) == (255, 0, 0)
    assert image.getpixel((4, 0)) == (0, 255, 0)
    assert image.getpixel((0, 4)) == (0, 0, 255)
    assert image.getpixel((7, 7)) == (9, 9, 9)


def test_mosaic_rejects_mixed_sizes_and_zooms():
    with pytest.raises(ValueError):
        mosaic({TileKey(3, 4, 2): solid((1, 1, 1)), TileKey(3, 5, 2): solid((1, 1, 1), (8, 8))})
    with pytest.raises(ValueError):
        mosaic({TileKey(3, 4, 2): solid((1, 1, 1)), TileKey(4, 8, 4): solid((1, 1, 1))})
    with pytest.raises(ValueError):
        mosaic({})


def test_side_by_side_and_grid():
    row = side_by_side(solid((255, 0, 0), (3, 4)), np.zeros((6, 5, 3), np.uint8), solid((0, 0, 255), (2, 2)), gap=1)
    assert row.size == (3 + 5 + 2 + 2, 6)
    assert row.getpixel((0, 0)) == (255, 0, 0)
    assert row.getpixel((10, 0)) == (0, 0, 255)

    grid = image_grid([[solid((255, 0, 0)), solid((0, 255, 0))], [solid((0, 0, 255)), solid((9, 9, 9))]])
    assert grid.size == (8, 8)
    assert grid.getpixel((5, 1)) == (0, 255, 0)
    assert grid.getpixel((1, 5)) == (0, 0, 255)


def test_bad_array_raises():
    with pytest.raises(ValueError):
        side_by_side(np.zeros((4, 4), np.float32))
