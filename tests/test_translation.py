"""Per-tile translation logic and run planning: no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pix2pix import storage
from pix2pix.errors import ConfigError
from pix2pix.images import BadImage
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.tiles.canvases import assemble_canvas, context_margin, crop_tile, fit_tile
from pix2pix.tiles.keys import BadKey, check_key, output_key
from pix2pix.tiles.plan import (
    SHARD_COLUMNS,
    ManifestBlockShard,
    PlanSettings,
    bbox_shards,
    discover_shards,
    manifest_context_shards,
    plan_blocks,
    plan_shard,
)
from pix2pix.tiles.translator import Translator, unit_seed

SMALL = GeneratorConfig(ngf=8, depth=6)  # 64 px; depth 6 keeps one dropout block


@pytest.mark.parametrize("key, expected", [
    ("17/38591/49283.jpg", "17/38591/49283.png"),
    ("city/17/1/2.jpeg", "city/17/1/2.png"),
    ("misc/photo.tar.jpg", "misc/photo.tar.png"),
    ("no-extension", "no-extension.png"),
])
def test_output_key_keeps_the_path_and_swaps_the_extension(key, expected):
    assert output_key(check_key(key), "png") == expected
    assert output_key(key, "jpeg").endswith(".jpg") and output_key(key, "webp").endswith(".webp")


@pytest.mark.parametrize("key", [
    "", "/etc/passwd.jpg", "../up.jpg", "a/../../b.jpg", "a//b.jpg", "./a.jpg", "a\x00b.jpg", "a\nb.jpg",
    "a%2Fb.jpg", "a%2e%2e/b.jpg", "a%5cb.jpg", "a\\b.jpg", "x" * 1100 + ".jpg", "_failures/x.jpg", "a/.hidden.jpg",
])
def test_unsafe_keys_are_rejected_with_a_reason(key):
    with pytest.raises(BadKey) as raised:
        check_key(key)
    assert str(raised.value)


def test_unit_seed_depends_on_key_and_seed_only():
    assert unit_seed("17/1/2.png", 0) == unit_seed("17/1/2.png", 0)
    assert unit_seed("17/1/2.png", 0) != unit_seed("17/1/3.png", 0)
    assert unit_seed("17/1/2.png", 0) != unit_seed("17/1/2.png", 1)
    assert 0 <= unit_seed("k", 5) < 2**63


def test_size_policy():
    tile = np.zeros((50, 70, 3), np.uint8)
    assert fit_tile(tile, 64, "resize").shape == (64, 64, 3)
    assert fit_tile(np.zeros((64, 64, 3), np.uint8), 64, "error").shape == (64, 64, 3)
    with pytest.raises(BadImage, match="70x50, expected 64x64"):
        fit_tile(tile, 64, "error")


def test_context_margin_rounds_up_to_the_unet_multiple():
    assert context_margin(0, 256, 8) == 0
    assert context_margin(1, 256, 8) == 128
    assert context_margin(129, 256, 8) == 256
    assert context_margin(20, 64, 6) == 32
    with pytest.raises(ConfigError, match="more than one"):
        context_margin(300, 256, 8)


def test_canvas_uses_neighbour_pixels_reflects_where_absent_and_crops_back():
    size, margin = 4, 2
    tiles = {(0, 0): np.full((size, size, 3), 10, np.uint8), (1, 0): np.full((size, size, 3), 20, np.uint8),
             (2, 0): np.full((size, size, 3), 30, np.uint8)}  # (2, 0) lies right of a 2x1 block: ring
    canvas = assemble_canvas(tiles, columns=2, rows=1, tile_size=size, margin=margin)
    assert canvas.shape == (size + 2 * margin, 2 * size + 2 * margin, 3)
    assert (canvas[margin:-margin, -margin:] == 30).all()        # right margin: the neighbour's pixels
    assert (canvas[margin:-margin, :margin] == 10).all()         # left margin: reflection
    assert (crop_tile(canvas, 1, 0, size, margin) == 20).all()
    holes = assemble_canvas({(0, 0): tiles[0, 0]}, columns=2, rows=1, tile_size=size, margin=0)
    assert (holes[:, size:] == 128).all()


def _translator(stochastic=False, micro_batch=None):
    torch.manual_seed(0)
    return Translator(UNetGenerator(SMALL), micro_batch=micro_batch, stochastic=stochastic)


def test_translator_output_does_not_depend_on_batch_mates_or_batch_size():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    translator = _translator()
    alone = translator(images[:1])
    assert alone.shape == (1, 64, 64, 3) and alone.dtype == np.uint8
    for batch in (images[:3], images[[0, 4, 5, 6]], images):
        assert np.array_equal(translator(batch)[0], alone[0])
    padded = _translator(micro_batch=4)  # a fixed micro-batch: the padding never shows
    assert np.array_equal(padded(images[:1])[0], padded(images[[0, 1, 2, 3, 4]])[0])


def test_stochastic_translation_is_seeded_per_image():
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    translator = _translator(stochastic=True)
    first = translator(images, seeds=[1, 2, 3])
    assert np.array_equal(first[1], translator(images[1:2], seeds=[2])[0])
    assert not np.array_equal(translator(images[:1], seeds=[9])[0], first[0])
    assert not np.array_equal(_translator()(images[:1])[0], first[0])


# ---- planning over a local tree -------------------------------------------------------------

def _touch(root, key, data=b"x"):
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _units(shards, tmp_path, settings):
    units = []
    for shard in shards:
        units += plan_shard(shard, storage.resolve(str(tmp_path / "in")), storage.resolve(str(tmp_path / "out")),
                            settings)
    return units


def test_columns_are_listed_a_group_at_a_time_in_grid_order(tmp_path):
    count = SHARD_COLUMNS + 5
    for x in range(count):
        _touch(tmp_path / "in", f"7/{x}/0.jpg")
    shards = discover_shards(storage.resolve(str(tmp_path / "in")), PlanSettings())
    assert [len(shard.dirs) for shard in shards] == [SHARD_COLUMNS, 5]
    assert [d for shard in shards for d in shard.dirs] == [f"7/{x}" for x in range(count)]  # x order, not "10" < "2"
    assert len(_units(shards, tmp_path, PlanSettings())) == count


def test_discovery_shards_columns_and_loose_files_and_skips_done(tmp_path):
    for x in range(3):
        for y in range(2):
            _touch(tmp_path / "in", f"5/{x}/{y}.jpg")
    _touch(tmp_path / "in", "loose.jpg")
    _touch(tmp_path / "in", "a/b/c/d/deep.jpg")
    _touch(tmp_path / "out", "5/0/0.png")
    settings = PlanSettings()
    shards = discover_shards(storage.resolve(str(tmp_path / "in")), settings)
    # One shard lists the loose files, one the deep tree, one every column (up to SHARD_COLUMNS).
    assert sorted(s.dirs for s in shards) == [[""], ["5/0", "5/1", "5/2"], ["a/b/c"]]
    units = _units(shards, tmp_path, settings)
    planned = sorted(u.key for u in units if u.tiles)
    assert planned == sorted(["loose.jpg", "a/b/c/d/deep.jpg"] + [f"5/{x}/{y}.jpg" for x in range(3) for y in range(2)
                                                                   if (x, y) != (0, 0)])
    assert sum(u.skipped for u in units) == 1
    overwrite = _units(shards, tmp_path, PlanSettings(overwrite=True))
    assert sum(len(u.tiles) for u in overwrite) == 8 and not any(u.skipped for u in overwrite)


def test_bbox_lists_only_the_columns_it_crosses(tmp_path):
    import mercantile

    tiles = list(mercantile.tiles(-34.95, -8.10, -34.90, -8.05, 14))
    xs, ys = sorted({t.x for t in tiles}), sorted({t.y for t in tiles})
    for x in range(xs[0] - 1, xs[-1] + 2):
        for y in range(ys[0] - 1, ys[-1] + 2):
            _touch(tmp_path / "in", f"14/{x}/{y}.jpg")
    shards = bbox_shards(storage.resolve(str(tmp_path / "in")), (-34.95, -8.10, -34.90, -8.05), 14, PlanSettings())
    assert [d for shard in shards for d in shard.dirs] == [f"14/{x}" for x in xs]
    keys = sorted(u.key for u in _units(shards, tmp_path, PlanSettings()))
    assert keys == sorted(f"14/{t.x}/{t.y}.jpg" for t in tiles)


def _grid_keys(columns, rows, x0=0, y0=0):
    return [f"9/{x}/{y}.jpg" for x in range(x0, x0 + columns) for y in range(y0, y0 + rows)]


def test_context_blocks_are_grid_aligned_and_read_at_most_1_6x():
    keys = _grid_keys(32, 32)
    settings = PlanSettings(margin=32)
    units = plan_blocks(keys, keys, keys, set(), settings)
    assert len(units) == 16
    assert all(u.columns == u.rows == 8 for u in units)
    read = sum(len(u.tiles) for u in units)
    written = sum(t.write for u in units for t in u.tiles)
    assert written == len(keys)
    assert read / written <= 1.6


def test_context_blocks_do_not_depend_on_what_is_selected_or_done():
    keys = _grid_keys(10, 10)
    settings = PlanSettings(margin=32)
    full = {u.unit: u for u in plan_blocks(keys, keys, keys, set(), settings)}
    half = plan_blocks(keys, keys, keys[:37], {"9/0/0.png"}, settings)
    for unit in (u for u in half if u.tiles):
        reference = full[unit.unit]
        assert (unit.columns, unit.rows) == (reference.columns, reference.rows)
        assert {(t.key, t.col, t.row) for t in unit.tiles} == \
            {(t.key, t.col, t.row) for t in reference.tiles}
    assert sum(t.write for u in half for t in u.tiles) == 36
    assert sum(u.skipped for u in half) == 1


def test_manifest_with_context_groups_keys_by_block_column_and_keeps_bad_keys():
    shards = manifest_context_shards(["9/3/1.jpg", "9/9/1.jpg", "photo.jpg", "../9/1/1.jpg"], PlanSettings(margin=32))
    column_shards = [s for s in shards if s.dirs]
    assert [s.core for s in column_shards] == [[f"9/{x}" for x in range(0, 8)], [f"9/{x}" for x in range(8, 16)]]
    assert column_shards[0].dirs == [f"9/{x}" for x in range(0, 9)]  # the core and the column to the right
    assert sorted(k for s in shards if not s.dirs for k in s.keys) == ["../9/1/1.jpg", "photo.jpg"]


def test_bad_keys_in_a_shard_become_failures(tmp_path):
    (tmp_path / "in").mkdir()
    shard = ManifestBlockShard(dirs=[], core=[], keys=["ok.jpg", "../escape.jpg", "/abs.jpg"])
    units = _units([shard], tmp_path, PlanSettings())
    reasons = {u.key: u.reason for u in units}
    assert reasons["ok.jpg"] is None
    assert "'..'" in reasons["../escape.jpg"] and "absolute" in reasons["/abs.jpg"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16"])
def test_every_convertible_mode_decodes_to_rgb(mode):
    import io

    from pix2pix.images import decode_image

    array = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    image = Image.fromarray(array.astype(np.uint16) * 257) if mode == "I;16" else \
        Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert decode_image(buffer.getvalue()).shape == (64, 64, 3)


def test_manifests_are_split_into_row_groups_and_read_back(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pix2pix.tiles.plan import ManifestError, manifest_parts, read_manifest_part

    keys = [f"9/{i}/0.jpg" for i in range(10)]
    pq.write_table(pa.table({"key": keys}), tmp_path / "keys.parquet", row_group_size=4)
    (tmp_path / "more.csv").write_text("key\n0001.jpg\n0002.jpg\n")  # stays text, not numbers
    location = storage.resolve(str(tmp_path))
    parts = manifest_parts(location)
    assert [part[1] for part in parts] == [0, 1, 2, -1]  # keys.parquet's three row groups, then more.csv
    read = [key for part in parts for key in read_manifest_part(location.filesystem, *part)]
    assert read == keys + ["0001.jpg", "0002.jpg"]
    (tmp_path / "bad.csv").write_text("path\nx.jpg\n")
    with pytest.raises(ManifestError, match="no 'key' column"):
        manifest_parts(storage.resolve(str(tmp_path / "bad.csv")))
    with pytest.raises(ManifestError, match="not found"):
        manifest_parts(storage.resolve(str(tmp_path / "none.parquet")))


def test_the_bbox_tile_range_equals_walking_every_tile():
    import mercantile

    from pix2pix.tiles.plan import bbox_tile_range

    def walked(bbox, zoom):
        tiles = list(mercantile.tiles(*bbox, zoom))
        if not tiles:
            return None
        return (min(t.x for t in tiles), max(t.x for t in tiles), min(t.y for t in tiles), max(t.y for t in tiles))

    rng = np.random.default_rng(0)
    for zoom in (3, 9, 12):
        # Recife, across the antimeridian, beyond Mercator's latitudes, no width
        boxes = [(-35.02, -8.16, -34.86, -7.93), (179.0, -1.0, -179.0, 1.0), (-1.0, -89.0, 1.0, 89.0),
                 (10.0, 5.0, 10.0, 6.0)]
        for x, y in rng.integers(0, 2**zoom, size=(6, 2)):  # edges exactly on tile boundaries
            west, south, east, north = mercantile.bounds(int(x), int(y), zoom)
            boxes += [(west, south, east, north), (west, south - 1e-9, east + 1e-9, north)]
        for west, south in rng.uniform((-179, -80), (170, 70), size=(6, 2)):
            boxes.append((west, south, west + rng.uniform(0, 2), south + rng.uniform(0, 2)))
        for bbox in boxes:
            assert bbox_tile_range(bbox, zoom) == walked(bbox, zoom), (bbox, zoom)
