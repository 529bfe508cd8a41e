"""The Translator: a generator running on uint8 tiles, in fixed micro-batches, optionally
stochastic (seeded per tile) and snapped to a palette; and ``translate_canvases``, the
generator stage's core. PyTorch and numpy only (no Ray, Arrow or OpenCV), so it runs as is on a
bare GPU machine (bench/gpu_check.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pix2pix.hashing import stable_seed
from pix2pix.model.inference import memory_format, run_generator
from pix2pix.model.palette import palette_classes, snap_to_palette
from pix2pix.model.ranges import to_uint8


def unit_seed(unit: str, seed: int) -> int:
    """A 63-bit seed for one tile (or block) from its identity and the run's --seed."""
    return stable_seed(f"{seed}\0{unit}")


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
