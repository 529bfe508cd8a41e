"""Colour palettes of colour-coded maps: the built-in Recife palette or a JSON file, and
paletted PNGs (one byte per pixel, the palette in the file)."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from pix2pix import storage

Palette = dict[str, tuple[int, int, int]]

RECIFE_PALETTE: Palette = {
    "water": (0, 127, 255),
    "building": (255, 0, 0),
    "vegetation": (0, 255, 0),
    "road": (127, 127, 127),
    "soil": (255, 255, 0),
    "other": (255, 255, 255),
    "wetland": (0, 255, 255),
}
MAX_CLASSES = 256  # what an 8-bit paletted PNG can hold


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
    if len(raw) > MAX_CLASSES:
        raise PaletteError(f"{origin} has {len(raw)} classes; at most {MAX_CLASSES} fit in a paletted PNG")
    palette = {}
    for name, colour in raw.items():
        valid = isinstance(colour, (list, tuple)) and len(colour) == 3 and all(
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255 for value in colour)
        if not valid:
            raise PaletteError(f"{origin}: class {name!r} must be [r, g, b] integers in 0..255, got {colour!r}")
        if name == "mIoU":  # the metrics use this name for the mean
            raise PaletteError(f"{origin}: 'mIoU' is reserved, rename that class")
        palette[name] = tuple(colour)
    if len(set(palette.values())) < len(palette):
        raise PaletteError(f"{origin}: two classes share one colour")
    return palette


def output_palette(requested: str | None, no_palette: bool, image_format: str, trained: Palette | None
                   ) -> Palette | None:
    """What translated tiles are snapped to: the requested palette, else the one the model was
    trained with, PNG only (a lossy encoding would blur the exact colours, so JPEG and WebP keep
    the generator's raw colours), and none with ``no_palette``."""
    if requested and no_palette:
        raise PaletteError("give --palette or --no-palette, not both")
    if requested:
        if image_format != "png":
            raise PaletteError("--palette needs --format png: lossy encodings blur the exact colours")
        return load_palette(requested)
    return trained if trained and not no_palette and image_format == "png" else None


def palette_to_json(palette: Palette) -> dict[str, list[int]]:
    return {name: list(colour) for name, colour in palette.items()}


def encode_paletted_png(classes: np.ndarray, palette: Palette, compress_level: int = 6) -> bytes:
    """An (H, W) uint8 array of class indices (palette order) as an 8-bit paletted PNG: decoded
    to RGB it is the snapped image, pixel for pixel."""
    if classes.dtype != np.uint8 or classes.ndim != 2:
        raise ValueError(f"expected (H, W) uint8 class indices, got {classes.shape} {classes.dtype}")
    image = Image.fromarray(classes)
    image.putpalette([value for colour in palette.values() for value in colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
