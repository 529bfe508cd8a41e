"""The tile pipeline's rows: schemas from the dataclasses, pixels as views of Arrow buffers, and
the generator stage's batch format (no Ray: the stage is called as Ray Data would call it)."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.model.export import ExportInfo
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.model.palette import RECIFE_PALETTE
from pix2pix.tiles.rows import (
    CANVAS_SCHEMA,
    STATUS_SCHEMA,
    UNIT_SCHEMA,
    Canvas,
    TileRef,
    binary_column,
    pixel_views,
    to_table,
)
from pix2pix.tiles.translator import Translator, translate_canvases

SMALL = GeneratorConfig(ngf=4, depth=6)  # 64 px


def test_schemas_follow_the_dataclasses():
    assert UNIT_SCHEMA.names == ["unit", "key", "tiles", "columns", "rows", "margin", "skipped", "reason", "sources"]
    assert UNIT_SCHEMA.field("sources").type == pa.list_(pa.string())  # the rasters a raster unit warps from
    assert UNIT_SCHEMA.field("tiles").type == pa.list_(pa.struct([("key", pa.string()), ("col", pa.int64()),
                                                                  ("row", pa.int64()), ("write", pa.bool_())]))
    assert CANVAS_SCHEMA.names[:len(UNIT_SCHEMA)] == UNIT_SCHEMA.names  # a canvas is a unit with pixels
    assert CANVAS_SCHEMA.field("pixels").type == pa.large_binary()
    assert CANVAS_SCHEMA.field("valid").type == pa.large_binary()  # a raster unit's validity mask
    assert STATUS_SCHEMA.names == ["key", "status", "reason", "count", "bytes_read", "tile_bytes"]
    row = Canvas("u", "k", [TileRef("k", 1, 2, False)], pixels=b"abc", failed=[], bytes_read=7)
    assert to_table([row], Canvas).to_pylist()[0]["tiles"] == [{"key": "k", "col": 1, "row": 2, "write": False}]


def test_pixels_round_trip_through_one_buffer_with_nulls_and_slices():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), None, rng.integers(0, 256, (2, 2), dtype=np.uint8),
              b"raw"]
    column = binary_column(arrays)
    assert column.null_count == 1 and column.to_pylist()[1] is None
    views = pixel_views(column)
    assert bytes(views[0]) == arrays[0].tobytes() and views[1] is None and bytes(views[3]) == b"raw"
    # A slice of a table (what Ray Data hands a stage) keeps its offsets.
    sliced = pixel_views(pa.chunked_array([column]).slice(2, 2))
    assert [bytes(view) for view in sliced] == [arrays[2].tobytes(), b"raw"]
    assert pixel_views(binary_column([])) == []


def test_pixel_views_do_not_copy():
    column = binary_column([np.arange(12, dtype=np.uint8)])
    view = np.frombuffer(pixel_views(column)[0], np.uint8)
    assert view.ctypes.data == column.buffers()[2].address


@pytest.mark.parametrize("palette", [None, RECIFE_PALETTE], ids=["rgb", "classes"])
def test_the_generator_stage_translates_each_canvas_as_the_translator_does(tmp_path, palette):
    from pix2pix.distributed.translate_stages import GeneratorStage

    torch.manual_seed(0)
    generator = UNetGenerator(SMALL)
    checkpoint.export_generator(generator, ExportInfo(SMALL, image_size=64), storage.resolve(str(tmp_path)))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    rows = [Canvas(f"u{i}", f"k{i}", [TileRef(f"k{i}")], height=64, width=64) for i in range(3)]
    rows.insert(1, Canvas("gone", "gone", [TileRef("gone", write=False)], failed=[]))  # nothing left to write
    table = to_table(rows, Canvas).set_column(CANVAS_SCHEMA.get_field_index("pixels"), "pixels",
                                              binary_column([images[0], None, images[1], images[2]]))
    stage = GeneratorStage(str(tmp_path), "cpu", "fp32", 1, micro_batch=2, stochastic=False, seed=0, palette=palette)
    out = stage(table.slice(1, 3))  # Ray Data hands over slices
    views = pixel_views(out.column("pixels"))
    expected = Translator(generator, "cpu", "fp32", micro_batch=2, palette=palette)
    translate = expected.classes if palette else expected
    assert views[0] is None
    for view, image in zip(views[1:], images[1:]):
        assert bytes(view) == translate(image[None])[0].tobytes()
    assert out.column("unit").to_pylist() == ["gone", "u1", "u2"]


def test_translate_canvases_groups_shapes_and_keeps_order():
    torch.manual_seed(0)
    translator = Translator(UNetGenerator(SMALL), micro_batch=2)
    rng = np.random.default_rng(2)
    canvases = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(64, 64, 3), (128, 64, 3), (64, 64, 3)]]
    outputs = translate_canvases(translator, [canvases[0], None, canvases[1], canvases[2]], ["a", "b", "c", "d"], 0)
    assert outputs[1] is None
    for output, canvas in zip([outputs[0], outputs[2], outputs[3]], canvases):
        assert np.array_equal(output, translator(canvas[None])[0])


def test_a_units_byte_counts_ride_on_its_first_status(tmp_path):
    from pix2pix.distributed.translate_stages import write_units

    pixels = np.zeros((64, 64, 3), np.uint8).tobytes()
    rows = [Canvas("a", "1/0/0.jpg", [TileRef("1/0/0.jpg")], pixels=pixels, height=64, width=64, bytes_read=900,
                   tile_bytes=500, failed=[]),
            Canvas("b", "1/0/1.jpg", reason="unsafe key: x"),
            Canvas("", "1/0/2.jpg", skipped=3)]
    statuses = write_units(to_table(rows, Canvas), storage.resolve(str(tmp_path)), "png", 64).to_pylist()
    assert [(s["key"], s["status"], s["count"], s["bytes_read"], s["tile_bytes"]) for s in statuses] == [
        ("1/0/0.jpg", "written", 1, 900, 500), ("1/0/1.jpg", "failed", 1, 0, 0), ("1/0/2.jpg", "skipped", 3, 0, 0)]
    assert "read" not in {s["status"] for s in statuses}
    assert (tmp_path / "1" / "0" / "0.png").exists()

