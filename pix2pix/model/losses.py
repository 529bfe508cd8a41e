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
    iou_weight: float = 0.0  # of a soft-Jaccard term on the same class probabilities (soft_iou_loss)

    @classmethod
    def build(cls, palette: Palette, class_weights: list[float], weight: float, temperature: float,
              device: torch.device | str = "cpu", iou_weight: float = 0.0) -> PaletteTerm:
        colours = to_model_range(torch.tensor(list(palette.values()))).to(device)
        return cls(palette, colours, torch.tensor(class_weights, dtype=torch.float32, device=device), weight,
                   temperature, iou_weight)


def palette_logits(images: Tensor, colours: Tensor, temperature: float) -> Tensor:
    """(N, 3, H, W) images -> (N, K, H, W) logits: -(squared distance to each colour) / temperature."""
    x = images.float()
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: no (N, K, 3, H, W) intermediate
    distances = (x * x).sum(dim=1, keepdim=True) - 2 * torch.einsum("nchw,kc->nkhw", x, colours) \
        + (colours * colours).sum(dim=1).view(1, -1, 1, 1)
    return -distances / temperature


def palette_scores(fake: Tensor, target: Tensor, term: PaletteTerm,
                   class_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(N, K, H, W) logits and the (N, H, W) target classes the palette terms compare.
    ``class_logits``: a palette-output generator's own (``GeneratorConfig.palette``); else the
    logits are read off the output colours."""
    classes = palette_classes(target, term.palette)  # the target's nearest colour, as the metrics read it
    logits = class_logits.float() if class_logits is not None else palette_logits(fake, term.colours, term.temperature)
    return logits, classes


def palette_cross_entropy(logits: Tensor, classes: Tensor, term: PaletteTerm) -> Tensor:
    """The class-balanced cross-entropy over the palette's classes."""
    return F.cross_entropy(logits, classes, weight=term.class_weights)


def palette_loss(fake: Tensor, target: Tensor, term: PaletteTerm, class_logits: Tensor | None = None) -> Tensor:
    """``palette_cross_entropy`` of an output against its target."""
    return palette_cross_entropy(*palette_scores(fake, target, term, class_logits), term)


def soft_iou_loss(logits: Tensor, classes: Tensor) -> Tensor:
    """1 - the soft IoU (softmax probabilities against the one-hot target), averaged over the
    classes present in each image: the metric itself made differentiable, where every class
    present counts the same however few its pixels (Rahman & Wang 2016; Berman et al. 2018)."""
    probabilities = logits.softmax(dim=1)
    onehot = F.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    intersection = (probabilities * onehot).sum(dim=(2, 3))
    union = (probabilities + onehot).sum(dim=(2, 3)) - intersection
    present = onehot.sum(dim=(2, 3)) > 0
    return (1 - intersection[present] / union[present]).mean()


def generator_loss(
    fake_logits: Tensor, fake: Tensor, target: Tensor, lambda_l1: float = 100.0,
    palette: PaletteTerm | None = None, class_logits: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    gan = _bce_against(fake_logits, 1.0)
    l1 = F.l1_loss(fake.float(), target.float())
    loss = gan + lambda_l1 * l1
    parts = {"G_GAN": gan.detach(), "G_L1": l1.detach()}
    if palette is not None:
        logits, classes = palette_scores(fake, target, palette, class_logits)
        cross_entropy = palette_cross_entropy(logits, classes, palette)
        loss = loss + palette.weight * cross_entropy
        parts["G_palette"] = cross_entropy.detach()
        if palette.iou_weight > 0:
            iou = soft_iou_loss(logits, classes)
            loss = loss + palette.iou_weight * iou
            parts["G_palette_iou"] = iou.detach()
    return loss, parts
