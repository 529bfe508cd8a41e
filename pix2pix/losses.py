"""pix2pix objectives: conditional GAN loss (BCE on logits) plus L1 for the generator.

Everything is computed in float32, because training runs under bf16 autocast and a
bf16 log/mean loses too much precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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


def generator_loss(
    fake_logits: Tensor, fake: Tensor, target: Tensor, lambda_l1: float = 100.0
) -> tuple[Tensor, dict[str, Tensor]]:
    gan = _bce_against(fake_logits, 1.0)
    l1 = F.l1_loss(fake.float(), target.float())
    loss = gan + lambda_l1 * l1
    return loss, {"G_GAN": gan.detach(), "G_L1": l1.detach()}
