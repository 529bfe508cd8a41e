"""Palettes: loading and checking them, and translation that snaps outputs to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.images import decode_image, encode_image
from pix2pix.model.export import CONFIG_FILE, CheckpointError, ExportInfo
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.model.palette import (
    RECIFE_PALETTE,
    PaletteError,
    balanced_class_weights,
    class_counts,
    encode_paletted_png,
    parse_palette,
    snap_to_palette,
)
from pix2pix.palette_files import load_palette, output_palette
from pix2pix.tiles.translator import Translator


def test_palette_files_and_their_errors(tmp_path):
    assert load_palette(None) is None and load_palette("recife") == RECIFE_PALETTE
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"sea": [0, 0, 255], "land": [0, 255, 0]}))
    assert load_palette(str(good)) == {"sea": (0, 0, 255), "land": (0, 255, 0)}
    bad = {"list.json": "[1, 2]", "colour.json": '{"sea": [0, 0, 256]}', "short.json": '{"sea": [0, 0]}',
           "same.json": '{"a": [1, 2, 3], "b": [1, 2, 3]}', "broken.json": "{not json"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(PaletteError):
            load_palette(str(tmp_path / name))
    with pytest.raises(PaletteError, match="not found"):
        load_palette(str(tmp_path / "missing.json"))


def test_translator_snaps_every_pixel_to_its_nearest_palette_colour():
    torch.manual_seed(0)
    generator = UNetGenerator(GeneratorConfig(ngf=8, depth=6))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    raw = Translator(generator)(images)
    snapped = Translator(generator, palette=RECIFE_PALETTE)(images)
    colours = {tuple(colour) for colour in snapped.reshape(-1, 3).tolist()}
    assert colours <= set(RECIFE_PALETTE.values())
    expected = snap_to_palette(torch.from_numpy(raw).permute(0, 3, 1, 2), RECIFE_PALETTE).permute(0, 2, 3, 1)
    assert np.array_equal(snapped, expected.numpy())
    assert not np.array_equal(snapped, raw)


def test_a_palette_must_fit_in_a_paletted_png_beside_the_nodata_index():
    too_many = {f"class{i}": [i // 256, i % 256, 0] for i in range(256)}
    with pytest.raises(PaletteError, match="at most 255"):
        parse_palette(too_many)
    assert len(parse_palette(dict(list(too_many.items())[:255]))) == 255


def test_nodata_pixels_are_transparent_and_full_tiles_keep_their_bytes():
    import io

    from PIL import Image

    from pix2pix.model.palette import NODATA_CLASS, encode_paletted_png

    classes = np.full((8, 8), 3, np.uint8)
    full = encode_paletted_png(classes, RECIFE_PALETTE)
    assert "transparency" not in Image.open(io.BytesIO(full)).info
    classes[:2] = NODATA_CLASS
    decoded = Image.open(io.BytesIO(encode_paletted_png(classes, RECIFE_PALETTE)))
    assert (np.asarray(decoded) == classes).all()  # indices survive, nodata included
    rgba = np.asarray(decoded.convert("RGBA"))
    assert (rgba[:2, :, 3] == 0).all() and (rgba[2:, :, 3] == 255).all()
    assert tuple(rgba[4, 4, :3]) == RECIFE_PALETTE["road"]


def test_paletted_png_decodes_to_the_snapped_image_in_fewer_bytes():
    torch.manual_seed(0)
    translator = Translator(UNetGenerator(GeneratorConfig(ngf=8, depth=6)), palette=RECIFE_PALETTE)
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    snapped, classes = translator(images), translator.classes(images)
    assert classes.shape == (2, 64, 64) and classes.dtype == np.uint8
    for rgb, indices in zip(snapped, classes):
        paletted = encode_paletted_png(indices, RECIFE_PALETTE)
        assert np.array_equal(decode_image(paletted), rgb)
        assert len(paletted) < len(encode_image(rgb, "png"))


def test_the_export_records_the_palette(tmp_path):
    config = GeneratorConfig(ngf=8, depth=6)
    location = storage.resolve(str(tmp_path))
    palette = {"sea": (0, 0, 255), "land": (0, 255, 0)}
    checkpoint.export_generator(UNetGenerator(config), ExportInfo(config, 64, palette=palette), location)
    info = checkpoint.read_export_info(location)
    assert info.palette == palette and list(info.palette) == ["sea", "land"]  # order = class indices
    checkpoint.export_generator(UNetGenerator(config), ExportInfo(config, 64), location)
    assert checkpoint.read_export_info(location).palette is None


def test_a_broken_palette_in_an_export_is_a_checkpoint_error(tmp_path):
    config = GeneratorConfig(ngf=8, depth=6)
    location = storage.resolve(str(tmp_path))
    checkpoint.export_generator(UNetGenerator(config), ExportInfo(config, 64), location)
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    raw["palette"] = {"sea": [0, 0, 999]}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="palette"):
        checkpoint.read_export_info(location)


@pytest.mark.parametrize("flags, image_format, expected", [
    ({}, "png", "trained"), ({"no_palette": True}, "png", None), ({}, "jpeg", None),
    ({"palette": "recife"}, "png", "recife"),
])
def test_translation_snaps_to_the_trained_palette_unless_told_otherwise(flags, image_format, expected):
    trained = {"sea": (0, 0, 255), "land": (0, 255, 0)}
    chosen = output_palette(flags.get("palette"), flags.get("no_palette", False), image_format, trained)
    assert chosen == {"trained": trained, "recife": RECIFE_PALETTE, None: None}[expected]


def test_a_requested_palette_needs_png_and_excludes_no_palette():
    with pytest.raises(PaletteError, match="--format png"):
        output_palette("recife", False, "jpeg", None)
    with pytest.raises(PaletteError, match="not both"):
        output_palette("recife", True, "png", None)


def test_class_counts_and_median_frequency_weights():
    colours = list(RECIFE_PALETTE.values())
    image = torch.zeros(1, 3, 4, 10, dtype=torch.uint8)
    image[..., :6] = torch.tensor(colours[0], dtype=torch.uint8).view(3, 1, 1)  # water 60%
    image[..., 6:9] = torch.tensor(colours[2], dtype=torch.uint8).view(3, 1, 1)  # vegetation 30%
    image[..., 9:] = torch.tensor(colours[3], dtype=torch.uint8).view(3, 1, 1)  # road 10%
    counts = class_counts(image, RECIFE_PALETTE)
    assert counts.tolist() == [24, 0, 12, 4, 0, 0, 0]
    weights = balanced_class_weights(counts)
    assert weights == pytest.approx([0.5, 1, 1, 3, 1, 1, 1])  # median 0.3; absent classes 1
    assert balanced_class_weights(counts, power=2) == pytest.approx([0.25, 1, 1, 9, 1, 1, 1])
    assert balanced_class_weights(counts, power=0) == pytest.approx([1] * 7)
    assert balanced_class_weights(torch.zeros(7, dtype=torch.float64)) == [1.0] * 7  # nothing sampled
