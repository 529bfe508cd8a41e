"""The one way a generator runs outside its training step: validation (Pix2Pix.translate),
evaluation (pix2pix.evaluation) and production tiles (pix2pix.tiles.translator) all call
``run_generator``, so they share the input conversion, the memory layout, the precision and the
per-image seeding of stochastic runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pix2pix.model.precision import autocast
from pix2pix.model.ranges import to_model_range


def memory_format(channels_last: bool | None = None, device: torch.device | str = "cpu",
                  precision: str = "fp32") -> torch.memory_format:
    """Training and inference alike: channels_last (NHWC) or NCHW as chosen (--[no-]channels-last);
    None: NCHW for fp32 on a CPU (training 1.25x faster than channels_last on an AVX2 CPU without
    bf16, bench/README.md), channels_last for bf16 and GPUs."""
    # channels_last reaches the convolutions only: torch 2.13's InstanceNorm2d (the default norm)
    # returns NCHW for a channels_last input (checked on a CPU), and the next convolution, whose
    # weights are channels_last, turns its output back.
    if channels_last is None:
        channels_last = not (torch.device(device).type == "cpu" and precision == "fp32")
    return torch.channels_last if channels_last else torch.contiguous_format


def model_inputs(images: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """uint8 (0..255) or float ([-1, 1]) NCHW images -> the model's floats on ``device`` in ``layout``."""
    x = images.to(device, non_blocking=True)
    return (to_model_range(x) if x.dtype == torch.uint8 else x).contiguous(memory_format=layout)


def run_generator(generator: nn.Module, images: torch.Tensor, device: torch.device, precision: str,
                  layout: torch.memory_format = torch.channels_last,
                  seeds: Sequence[int] | None = None) -> torch.Tensor:
    """uint8 (0..255) or float ([-1, 1]) NCHW images -> float32 NCHW in [-1, 1] on ``device``.

    The caller sets the generator's mode (eval; dropout or batch statistics on for stochastic
    and paper-mode runs) and the grad mode. ``seeds``: one per image; each image then runs alone
    under its own seed, so its output depends neither on its batch mates nor on what ran
    before it.
    """
    x = model_inputs(images, device, layout)
    if seeds is None:
        return _forward(generator, x, device, precision)
    if len(seeds) != len(x):
        raise ValueError(f"{len(seeds)} seeds for {len(x)} images")
    outputs = []
    for image, seed in zip(x, seeds):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            outputs.append(_forward(generator, image[None], device, precision))
    return torch.cat(outputs)


def _forward(generator: nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    with autocast(device, precision):
        return generator(x).float().clamp(-1, 1)
