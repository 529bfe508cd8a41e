"""Palettes: loading and checking them, and translation that snaps outputs to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pix2pix.metrics import RECIFE_PALETTE, snap_to_palette
from pix2pix.networks import GeneratorConfig, UNetGenerator
from pix2pix.palette import PaletteError, load_palette
from pix2pix.translation import Translator


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
