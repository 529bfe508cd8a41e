"""jobs/pack.py --output city.tif: a folder of translated class tiles (real Recife maps, some
nodata, two tiles missing) as one class COG that is valid in rio-cogeo's strict mode, in
EPSG:3857 on the XYZ grid, with the palette as its colour table, nodata 255, the class names in
its tags and its .aux.xml sidecar, and every tile's classes read back exactly; locally and on S3."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import boto3
import mercantile
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.windows import from_bounds
from rio_cogeo.cogeo import cog_validate

from pix2pix import storage
from pix2pix.model.palette import NODATA_CLASS, RECIFE_PALETTE, encode_paletted_png, palette_classes
from pix2pix.tiles.tileset import TILEJSON_FILE, TileSetError, scan, tilejson, xyz_template
from pix2pix.tiles.xyz import TileKey
from tests.conftest import REPO, load_job

ZOOM = 17
CORNER = mercantile.tile(-34.9, -8.05, ZOOM)  # Recife; off the 8-tile blocks, so the COG's grid must widen
COLUMNS, ROWS = 6, 5
MISSING = {(0, 0), (3, 2)}  # tiles without a valid pixel: translation writes none


def class_maps(recife: Path, count: int) -> np.ndarray:
    """The first ``count`` real Recife maps (RGB) as (count, 256, 256) class indices, snapped to
    the palette as the project snaps (one call: each costs a thread pool's start)."""
    rgb = np.stack([np.asarray(Image.open(recife / "train" / "map" / f"{number:04d}.png").convert("RGB"))
                    for number in range(1, count + 1)])
    return palette_classes(torch.from_numpy(rgb).permute(0, 3, 1, 2), RECIFE_PALETTE).numpy().astype(np.uint8)


def write_class_tiles(folder: Path, recife: Path) -> dict[TileKey, np.ndarray]:
    """COLUMNS x ROWS paletted tiles at ZOOM, from real maps: one tile half nodata, one with
    nodata every other pixel, one whose blocks are 2-2 ties (two real maps interleaved across
    the diagonals); and the folder's tiles.json with the palette. Returns each tile's classes."""
    tiles = {}
    maps = iter(class_maps(recife, COLUMNS * ROWS + 1))
    other = next(maps)
    for column in range(COLUMNS):
        for row in range(ROWS):
            if (column, row) in MISSING:
                continue
            classes = next(maps).copy()
            if (column, row) == (COLUMNS - 1, 1):
                classes[:, 100:] = NODATA_CLASS
            if (column, row) == (2, ROWS - 1):
                classes[::2, 1::2] = NODATA_CLASS
            if (column, row) == (1, 1):
                classes[0::2, 1::2] = other[0::2, 1::2]
                classes[1::2, 0::2] = other[1::2, 0::2]
            tile = TileKey(ZOOM, CORNER.x + column, CORNER.y + row)
            path = folder / str(tile.z) / str(tile.x) / f"{tile.y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_paletted_png(classes, RECIFE_PALETTE))
            tiles[tile] = classes
    location = storage.resolve(str(folder))
    (folder / TILEJSON_FILE).write_text(json.dumps(tilejson(scan(location), xyz_template(location, ".png"),
                                                            RECIFE_PALETTE)))
    return tiles


def pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "jobs/pack.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def tile_window(dataset, tile: TileKey):
    """The tile's pixels in the raster, found from the tile's own bounds in metres."""
    bounds = mercantile.xy_bounds(tile.x, tile.y, tile.z)
    return from_bounds(bounds.left, bounds.bottom, bounds.right, bounds.top, dataset.transform).round_offsets() \
        .round_lengths()


def check_class_cog(dataset, tiles: dict[TileKey, np.ndarray]) -> None:
    assert (dataset.count, dataset.dtypes[0], dataset.crs.to_epsg(), dataset.nodata) == (1, "uint8", 3857, 255)
    assert dataset.block_shapes == [(256, 256)] and dataset.overviews(1) == [2, 4, 8]
    table = dataset.colormap(1)
    assert [table[index][:3] for index in range(len(RECIFE_PALETTE))] == list(RECIFE_PALETTE.values())
    assert table[NODATA_CLASS][3] == 0
    assert json.loads(dataset.tags()["CLASS_NAMES"]) == list(RECIFE_PALETTE)
    # The grid is the XYZ grid: the raster starts on a tile corner of zoom 14 (three overviews).
    west, north = dataset.transform @ (0, 0)
    corner = mercantile.tile(*mercantile.lnglat(west + 1, north - 1), ZOOM - 3)
    assert np.allclose((west, north), (mercantile.xy_bounds(corner).left, mercantile.xy_bounds(corner).top))
    everything = dataset.read(1)
    for tile, classes in tiles.items():
        window = tile_window(dataset, tile)
        assert (window.width, window.height) == (256, 256)
        assert np.array_equal(dataset.read(1, window=window), classes), tile
    # And nothing else: outside the tiles, only nodata.
    assert (everything != NODATA_CLASS).sum() == sum(int((c != NODATA_CLASS).sum()) for c in tiles.values())


def test_the_class_cog_is_strictly_valid_and_gives_back_every_tiles_classes(tmp_path, recife):
    tiles = write_class_tiles(tmp_path / "maps", recife)
    target = tmp_path / "out" / "city.tif"
    done = pack("--input", str(tmp_path / "maps"), "--output", str(target), "--min-zoom", "14")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["tiles"], summary["overview_zooms"]) == (len(tiles), [16, 15, 14])
    assert cog_validate(str(target), strict=True) == (True, [], [])
    with rasterio.open(target) as dataset:
        check_class_cog(dataset, tiles)
    sidecar = ElementTree.parse(str(target) + ".aux.xml").getroot()
    names = [category.text for category in sidecar.iter("Category")]
    assert sidecar.find("PAMRasterBand").get("band") == "1" and names == list(RECIFE_PALETTE)
    assert sorted(path.name for path in target.parent.iterdir()) == ["city.tif", "city.tif.aux.xml"]


def test_an_existing_cog_is_kept_whole_without_overwrite(tmp_path, recife, capsys):
    write_class_tiles(tmp_path / "maps", recife)
    target = tmp_path / "city.tif"
    target.write_bytes(b"a COG from before")
    done = pack("--input", str(tmp_path / "maps"), "--output", str(target))
    assert done.returncode == 1 and "city.tif exists: pass --overwrite" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    colour = tmp_path / "colour" / "17" / "5" / "9.png"
    colour.parent.mkdir(parents=True)
    Image.new("RGB", (256, 256), (10, 20, 30)).save(colour)
    (tmp_path / "other.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar alone is a COG's too
    main = load_job("pack").main
    cases = [
        ((tmp_path / "maps", tmp_path / "other.tif"), "other.tif.aux.xml exists: pass --overwrite"),
        ((tmp_path / "colour", tmp_path / "colour.tif"), "needs paletted tiles"),
        ((tmp_path / "maps", tmp_path / "deep.tif", "--min-zoom", "18"), "deeper than the translated zoom 17"),
    ]
    for (source, output, *flags), message in cases:
        with pytest.raises(TileSetError, match=message):
            main(["--input", str(source), "--output", str(output), *flags])
    assert target.read_bytes() == b"a COG from before"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["city.tif", "colour", "maps", "other.tif.aux.xml"]
    assert main(["--input", str(tmp_path / "maps"), "--output", str(target), "--overwrite"]) == 0
    assert cog_validate(str(target), strict=True) == (True, [], [])


def test_the_class_cog_goes_to_s3_and_reads_from_there(tmp_path, recife, s3_bucket, capsys):
    tiles = write_class_tiles(tmp_path / "maps", recife)
    uri = f"s3://{s3_bucket}/cities/city.tif"
    main = load_job("pack").main
    assert main(["--input", str(tmp_path / "maps"), "--output", uri, "--min-zoom", "14"]) == 0
    keys = [item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["cities/city.tif", "cities/city.tif.aux.xml"]
    with rasterio.Env(**storage.gdal_settings()):
        assert cog_validate(uri, strict=True) == (True, [], [])
        with rasterio.open(uri) as dataset:
            check_class_cog(dataset, tiles)
    with pytest.raises(TileSetError, match="city.tif exists: pass --overwrite"):
        main(["--input", str(tmp_path / "maps"), "--output", uri])
