"""Colour palettes of colour-coded maps: the built-in Recife palette, parsing and checking one,
class indices and weights, and paletted PNGs (one byte per pixel, the palette in the file)."""

from __future__ import annotations

import functools
import io
import statistics
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pix2pix.errors import JobError

# torch is imported by the functions that take tensors: a tile pipeline's read and write actors
# use this module's palettes and paletted PNGs only, and each would pay torch's import (seconds
# of CPU, hundreds of MB) at start-up.
if TYPE_CHECKING:
    import torch
    from torch import Tensor

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
# An 8-bit paletted PNG holds 256 indices; the last is reserved for nodata (pixels outside every
# source raster, or masked there), transparent in tiles and the class COG's nodata value.
NODATA_CLASS = 255
MAX_CLASSES = NODATA_CLASS


class PaletteError(JobError):
    """An unusable palette: missing file, bad JSON, bad colours."""


def parse_palette(raw, origin: str = "palette") -> Palette:
    if not isinstance(raw, dict) or not raw:
        raise PaletteError(f'{origin} must be a non-empty JSON object {{"class": [r, g, b], ...}}')
    if len(raw) > MAX_CLASSES:
        raise PaletteError(f"{origin} has {len(raw)} classes; at most {MAX_CLASSES} fit in a paletted PNG "
                           f"beside the nodata index")
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


def palette_to_json(palette: Palette) -> dict[str, list[int]]:
    return {name: list(colour) for name, colour in palette.items()}


def encode_paletted_png(classes: np.ndarray, palette: Palette, compress_level: int = 6) -> bytes:
    """An (H, W) uint8 array of class indices (palette order) as an 8-bit paletted PNG: decoded
    to RGB it is the snapped image, pixel for pixel. Pixels at NODATA_CLASS are transparent
    (a tRNS chunk, written only when there are some, so full tiles keep their bytes)."""
    if classes.dtype != np.uint8 or classes.ndim != 2:
        raise ValueError(f"expected (H, W) uint8 class indices, got {classes.shape} {classes.dtype}")
    image = Image.fromarray(classes)
    colours = [value for colour in palette.values() for value in colour]
    options = {}
    if (classes == NODATA_CLASS).any():  # a full 256-entry palette, else Pillow packs the indices
        colours += [0] * (3 * 256 - len(colours))
        options["transparency"] = NODATA_CLASS
    image.putpalette(colours)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level, **options)
    return buffer.getvalue()


def palette_classes(images: Tensor, palette: Palette) -> Tensor:
    """Index (in palette order) of the nearest palette colour per pixel -> LongTensor (N, H, W).

    The dtype picks the scale: uint8 images are read as 0..255, floating images as the model's
    [-1, 1] (quantised with `to_uint8` first). Distance is squared RGB distance on 0..255; ties
    go to the earlier palette entry. Takes (N, 3, H, W) or one (3, H, W) image.
    """
    import torch

    from pix2pix.model.ranges import to_uint8

    images = images.detach()
    images = images.unsqueeze(0) if images.dim() == 3 else images
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
    rgb = images if images.dtype == torch.uint8 else to_uint8(images)
    channels = rgb.int()
    codes = (channels[:, 0] << 16) | (channels[:, 1] << 8) | channels[:, 2]  # (N, H, W)
    return class_table(tuple(tuple(colour) for colour in palette.values()), rgb.device)[codes].long()


@functools.lru_cache(maxsize=4)
def class_table(colours: tuple[tuple[int, int, int], ...], device: torch.device) -> Tensor:
    """The class of every 24-bit colour, R << 16 | G << 8 | B -> uint8 (2**24,): 16 MB, built once
    per palette and device (~0.26 s on a CPU thread). A pixel's class is then one lookup: sorting
    each call's distinct colours (``torch.unique``) cost 17-24 ms a 256 px tile of a generator's
    continuous colours on a CPU thread, the lookup ~0.5-2."""
    import torch

    palette = torch.tensor(colours, dtype=torch.int32, device=device)  # (K, 3)
    # |c - p|^2 = |c|^2 - 2 c.p + |p|^2, and |c|^2 is the same for every entry: the argmin of the
    # rest is the nearest entry (the first of equals, as torch.argmin picks), exactly, in int32.
    levels = torch.arange(256, dtype=torch.int32, device=device)
    green_blue = (palette ** 2).sum(1) - 2 * (levels.view(256, 1, 1) * palette[:, 1]
                                              + levels.view(1, 256, 1) * palette[:, 2])  # (G, B, K)
    table = torch.empty((256, 256, 256), dtype=torch.uint8, device=device)
    for red in range(256):
        table[red] = (green_blue - 2 * red * palette[:, 0]).argmin(dim=-1)
    return table.view(-1)


def snap_to_palette(images: Tensor, palette: Palette) -> Tensor:
    """Every pixel replaced by its nearest palette colour -> uint8 (N, 3, H, W): a colour-coded
    map with exact class colours (a generator only approaches them)."""
    import torch

    colours = torch.tensor(list(palette.values()), dtype=torch.uint8, device=images.device)
    return colours[palette_classes(images, palette)].permute(0, 3, 1, 2).contiguous()


def class_counts(images: Tensor, palette: Palette) -> Tensor:
    """Pixels of each class (palette order) in a batch of target maps: float64 (K,)."""
    import torch

    return torch.bincount(palette_classes(images, palette).reshape(-1), minlength=len(palette)).double()


def balanced_class_weights(counts: Tensor, power: float = 1.0) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, 2015) of class pixel counts: weight = (median
    frequency / frequency) ** power, so rare classes (roads, buildings) count as much as common
    ones (power 1), or more (power > 1); a class never seen gets 1."""
    frequencies = (counts / counts.sum()).tolist() if counts.sum() > 0 else [0.0] * len(counts)
    present = [f for f in frequencies if f > 0]
    median = statistics.median(present) if present else 1.0
    return [(median / f) ** power if f > 0 else 1.0 for f in frequencies]
