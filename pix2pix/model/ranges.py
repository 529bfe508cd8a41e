"""The pixel ranges images move between: uint8 0..255 (files, tiles) and the model's floats in
[-1, 1]; metrics that want [0, 1] floats."""

from __future__ import annotations

import torch
from torch import Tensor


def to_model_range(images):
    """uint8 0..255 (tensor or array) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0 if hasattr(images, "float") else images / 127.5 - 1.0


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 0..255 (rounded, clamped), same layout."""
    scaled = (images.detach().float() + 1.0) * 127.5
    return scaled.round().clamp(0, 255).to(torch.uint8)


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] floats -> float32 in [0, 1] (clamped), same layout."""
    return ((images.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
