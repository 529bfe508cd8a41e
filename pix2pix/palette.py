"""Colour palettes of colour-coded maps: the built-in Recife palette or a JSON file."""

from __future__ import annotations

import json

from pix2pix import storage
from pix2pix.metrics import RECIFE_PALETTE

Palette = dict[str, tuple[int, int, int]]


class PaletteError(ValueError):
    """An unusable palette: missing file, bad JSON, bad colours."""


def load_palette(spec: str | None) -> Palette | None:
    """None, "recife" (the built-in palette) or a JSON file {"class": [r, g, b], ...}, local or s3://."""
    if spec is None:
        return None
    if spec.lower() == "recife":
        return dict(RECIFE_PALETTE)
    location = storage.resolve(spec)
    if not storage.exists(location):
        raise PaletteError(f"palette file not found: {spec}")
    try:
        raw = json.loads(storage.read_text(location))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PaletteError(f"palette {spec} is not valid JSON: {error}") from None
    return parse_palette(raw, spec)


def parse_palette(raw, origin: str = "palette") -> Palette:
    if not isinstance(raw, dict) or not raw:
        raise PaletteError(f'{origin} must be a non-empty JSON object {{"class": [r, g, b], ...}}')
    palette = {}
    for name, colour in raw.items():
        valid = isinstance(colour, list) and len(colour) == 3 and all(
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255 for value in colour)
        if not valid:
            raise PaletteError(f"{origin}: class {name!r} must be [r, g, b] integers in 0..255, got {colour!r}")
        if name == "mIoU":  # the metrics use this name for the mean
            raise PaletteError(f"{origin}: 'mIoU' is reserved, rename that class")
        palette[name] = tuple(colour)
    if len(set(palette.values())) < len(palette):
        raise PaletteError(f"{origin}: two classes share one colour")
    return palette
