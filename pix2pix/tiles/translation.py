"""Translating tiles: the size policy, per-tile seeds, context canvases and the
Translator that runs a generator on uint8 images. Pure PyTorch/numpy; no Ray, no storage."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from pix2pix.errors import ConfigError
from pix2pix.hashing import stable_seed
from pix2pix.images import DEFAULT_MAX_PIXELS, BadImage
from pix2pix.model.inference import memory_format, run_generator
from pix2pix.model.palette import palette_classes, snap_to_palette
from pix2pix.model.ranges import to_uint8

ON_SIZE = ("resize", "error")
# Context blocks are BLOCK_TILES x BLOCK_TILES tiles plus a ring of neighbours: reading the
# ring costs (1 + 2/8)^2 = 1.56x the block's bytes, the model sees (1 + 2m/8T)^2 more pixels.
BLOCK_TILES = 8
HOLE_VALUE = 128  # a missing tile inside a block: mid-grey, ~0 in the model's range
# A tile may be up to this many times the model's size per side (it is resized); anything
# declaring more is refused from its header, before a pixel is decoded (image bombs).
MAX_TILE_SCALE = 8

def tile_pixel_limit(image_size: int) -> int:
    """The most pixels a tile may declare, from the size the job expects."""
    return min(DEFAULT_MAX_PIXELS, (MAX_TILE_SCALE * image_size) ** 2)


def unit_seed(unit: str, seed: int) -> int:
    """A 63-bit seed for one tile (or block) from its identity and the run's --seed."""
    return stable_seed(f"{seed}\0{unit}")


def fit_tile(image: np.ndarray, size: int, on_size: str) -> np.ndarray:
    """Apply the size policy: a tile of another size is resized or rejected (BadImage)."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    if on_size == "error":
        raise BadImage(f"tile is {width}x{height}, expected {size}x{size} (--on-size error)")
    shrinking = width * height > size * size
    try:
        return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    except cv2.error as error:  # e.g. a size OpenCV cannot allocate: a bad tile, not a failed job
        raise BadImage(f"cannot resize the {width}x{height} tile to {size}x{size}: {error.err}") from None


def context_margin(pixels: int, tile_size: int, depth: int) -> int:
    """The margin of real pixels around a block: at least ``pixels``, rounded up so that the
    padded block stays a multiple of 2^depth (tile_size already is one)."""
    if pixels <= 0:
        return 0
    step = 2 ** (depth - 1)
    margin = math.ceil(pixels / step) * step
    if margin > tile_size:
        raise ConfigError(
            f"--context {pixels} needs a {margin} px margin, more than one {tile_size} px tile; "
            f"use at most {tile_size // step * step}"
        )
    return margin


def assemble_canvas(
    tiles: Mapping[tuple[int, int], np.ndarray], columns: int, rows: int, tile_size: int, margin: int
) -> np.ndarray:
    """Place a block's tiles, keyed (column, row) from the block's top-left, on one canvas with
    ``margin`` pixels around it. Positions outside the block are its neighbour ring: their
    pixels fill the margin where present; elsewhere the margin reflects the block. Tiles
    missing inside the block are mid-grey."""
    size = tile_size
    block = np.full((rows * size, columns * size, 3), HOLE_VALUE, dtype=np.uint8)
    for (column, row), image in tiles.items():
        if 0 <= column < columns and 0 <= row < rows:
            block[row * size:(row + 1) * size, column * size:(column + 1) * size] = image
    if margin == 0:
        return block
    canvas = np.pad(block, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    height, width = canvas.shape[:2]
    for (column, row), image in tiles.items():
        if 0 <= column < columns and 0 <= row < rows:
            continue
        top, left = margin + row * size, margin + column * size
        y0, y1 = max(top, 0), min(top + size, height)
        x0, x1 = max(left, 0), min(left + size, width)
        if y0 < y1 and x0 < x1:
            canvas[y0:y1, x0:x1] = image[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


def crop_tile(canvas: np.ndarray, column: int, row: int, tile_size: int, margin: int) -> np.ndarray:
    top, left = margin + row * tile_size, margin + column * tile_size
    return canvas[top:top + tile_size, left:left + tile_size]


def default_micro_batch(device: torch.device | str) -> int:
    """Images per generator call. Fixed per device (never the caller's batch size), because
    convolution kernels may sum in a batch-size-dependent order (batches of different sizes
    differ in the 7th digit, enough to flip a rounded pixel): a constant micro-batch keeps
    each tile's bytes independent of how many tiles arrive together. 8 on a CPU: batching
    still pays there (bench/README.md, Translation)."""
    return 16 if torch.device(device).type == "cuda" else 8


class Translator:
    """A generator in inference mode mapping uint8 NHWC images to uint8 NHWC images.

    Every generator call sees exactly ``micro_batch`` images (the last call is padded), so a
    tile's output never depends on its batch mates. ``stochastic``: dropout stays on and each
    image runs alone under its own seed. ``palette``: every output pixel becomes its nearest
    palette colour (a colour-coded map with exact class colours).
    """

    def __init__(
        self,
        generator: nn.Module,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        micro_batch: int | None = None,
        stochastic: bool = False,
        palette: Mapping[str, tuple[int, int, int]] | None = None,
    ):
        self.device = torch.device(device)
        self.precision = precision
        self.layout = memory_format(channels_last, self.device, precision)
        self.micro_batch = micro_batch or default_micro_batch(self.device)
        self.stochastic = stochastic
        self.palette = palette
        self.generator = generator.to(self.device, memory_format=self.layout).eval()
        if stochastic:
            for module in self.generator.modules():
                if isinstance(module, nn.Dropout):
                    module.train()

    def __call__(self, images: np.ndarray, seeds: Sequence[int] | None = None) -> np.ndarray:
        """uint8 NHWC images -> uint8 NHWC images (snapped to the palette when there is one)."""
        return self._run(images, seeds, classes=False)

    def classes(self, images: np.ndarray, seeds: Sequence[int] | None = None) -> np.ndarray:
        """uint8 NHWC images -> uint8 (N, H, W) palette indices: a third of the bytes of the
        snapped images, and what a paletted PNG stores."""
        if not self.palette:
            raise ValueError("class indices need a palette")
        return self._run(images, seeds, classes=True)

    def _run(self, images: np.ndarray, seeds: Sequence[int] | None, classes: bool) -> np.ndarray:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 NHWC images with 3 channels, got {images.shape} {images.dtype}")
        if self.stochastic and (seeds is None or len(seeds) != len(images)):
            raise ValueError("stochastic translation needs one seed per image")
        # One transfer to the device and one back per call, whatever its micro-batches.
        x = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        outputs = []
        with torch.inference_mode():
            if self.stochastic:  # each image alone under its seed
                outputs.append(self._forward(x, classes, seeds))
            else:
                for start in range(0, len(x), self.micro_batch):
                    chunk = x[start:start + self.micro_batch]
                    padding = self.micro_batch - len(chunk)
                    if padding:
                        chunk = torch.cat([chunk, chunk.new_zeros((padding, *chunk.shape[1:]))])
                    outputs.append(self._forward(chunk, classes)[:len(chunk) - padding])
            return torch.cat(outputs).cpu().numpy()

    def _forward(self, batch: torch.Tensor, classes: bool, seeds: Sequence[int] | None = None) -> torch.Tensor:
        # NHWC viewed as NCHW is already channels_last in memory.
        y = to_uint8(run_generator(self.generator, batch.permute(0, 3, 1, 2), self.device, self.precision,
                                   self.layout, seeds))
        if classes:
            return palette_classes(y, self.palette).to(torch.uint8)
        if self.palette:
            y = snap_to_palette(y, self.palette)
        return y.permute(0, 2, 3, 1).contiguous()


def translate_canvases(translator: Translator, canvases: Sequence[np.ndarray | None], units: Sequence[str],
                       seed: int) -> list[np.ndarray | None]:
    """A pipeline call's canvases (HxWx3 uint8, None: nothing to translate) -> their
    translations, in order: HxW class indices with a palette, else HxWx3. Canvases of one shape
    run together; stochastic runs seed each by its unit's name and the run's --seed."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, canvas in enumerate(canvases):
        if canvas is not None:
            by_shape.setdefault(canvas.shape, []).append(index)
    outputs: list[np.ndarray | None] = [None] * len(canvases)
    translate = translator.classes if translator.palette else translator
    for indices in by_shape.values():
        seeds = [unit_seed(units[i], seed) for i in indices] if translator.stochastic else None
        for index, output in zip(indices, translate(np.stack([canvases[i] for i in indices]), seeds)):
            outputs[index] = output
    return outputs
