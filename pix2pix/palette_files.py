"""Palettes named on a command line: "recife" (built in) or a JSON file, local or s3://, and
the palette translated tiles are snapped to."""

from __future__ import annotations

import json

from pix2pix import storage
from pix2pix.model.palette import RECIFE_PALETTE, Palette, PaletteError, parse_palette


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
    except RecursionError:
        raise PaletteError(f"palette {spec} is nested too deeply to be a palette") from None
    return parse_palette(raw, spec)


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
