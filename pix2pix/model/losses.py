"""pix2pix objectives: conditional GAN loss (BCE on logits) plus L1 for the generator.

Everything is computed in float32, because training runs under bf16 autocast and a
bf16 log/mean loses too much precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pix2pix.model.palette import Palette, palette_classes
from pix2pix.model.ranges import to_model_range


def _bce_against(logits: Tensor, label: float) -> Tensor:
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    real = _bce_against(real_logits, 1.0)
    fake = _bce_against(fake_logits, 0.0)
    # Halved, as in the paper, to slow D down relative to G.
    loss = 0.5 * (real + fake)
    return loss, {"D_real": real.detach(), "D_fake": fake.detach()}


@dataclass(frozen=True)
class PaletteTerm:
    """For colour-coded targets: a class-balanced cross-entropy over the palette's classes, added
    to (not replacing) GAN + L1. A pixel's logits are -(squared distance to each palette
    colour) / temperature, so it is differentiable in the output colours and lowest when the
    output sits on the target's colour; class weights make rare classes (roads) count."""

    palette: Palette
    colours: Tensor  # (K, 3): the palette's colours in [-1, 1], on the training device
    class_weights: Tensor  # (K,)
    weight: float  # of the term, beside lambda_l1's L1
    temperature: float  # in squared [-1, 1] units: 0.1 is a tenth of the closest Recife colours' distance

    @classmethod
    def build(cls, palette: Palette, class_weights: list[float], weight: float, temperature: float,
              device: torch.device | str = "cpu") -> PaletteTerm:
        colours = to_model_range(torch.tensor(list(palette.values()))).to(device)
        return cls(palette, colours, torch.tensor(class_weights, dtype=torch.float32, device=device), weight,
                   temperature)


def palette_logits(images: Tensor, colours: Tensor, temperature: float) -> Tensor:
    """(N, 3, H, W) images -> (N, K, H, W) logits: -(squared distance to each colour) / temperature."""
    x = images.float()
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: no (N, K, 3, H, W) intermediate
    distances = (x * x).sum(dim=1, keepdim=True) - 2 * torch.einsum("nchw,kc->nkhw", x, colours) \
        + (colours * colours).sum(dim=1).view(1, -1, 1, 1)
    return -distances / temperature


def palette_loss(fake: Tensor, target: Tensor, term: PaletteTerm) -> Tensor:
    """The class-balanced cross-entropy over the palette's classes of an output (its logits read
    off its colours) against its target's classes (the nearest colour, as the metrics read it)."""
    classes = palette_classes(target, term.palette)
    logits = palette_logits(fake, term.colours, term.temperature)
    return F.cross_entropy(logits, classes, weight=term.class_weights)


def generator_loss(
    fake_logits: Tensor, fake: Tensor, target: Tensor, lambda_l1: float = 100.0,
    palette: PaletteTerm | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    gan = _bce_against(fake_logits, 1.0)
    l1 = F.l1_loss(fake.float(), target.float())
    loss = gan + lambda_l1 * l1
    parts = {"G_GAN": gan.detach(), "G_L1": l1.detach()}
    if palette is not None:
        cross_entropy = palette_loss(fake, target, palette)
        loss = loss + palette.weight * cross_entropy
        parts["G_palette"] = cross_entropy.detach()
    return loss, parts
