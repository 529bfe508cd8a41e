import math

import pytest
import torch

from pix2pix.model.losses import (
    PaletteTerm,
    discriminator_loss,
    generator_loss,
    palette_loss,
)
from pix2pix.model.palette import RECIFE_PALETTE

LOG2 = math.log(2.0)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_zero_logits_give_log2_everywhere():
    zeros = torch.zeros(2, 1, 30, 30)
    loss, parts = discriminator_loss(zeros, zeros)
    assert loss.item() == pytest.approx(LOG2)
    assert parts["D_real"].item() == pytest.approx(LOG2)
    assert parts["D_fake"].item() == pytest.approx(LOG2)
    g_loss, g_parts = generator_loss(zeros, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    assert g_parts["G_GAN"].item() == pytest.approx(LOG2)
    assert g_parts["G_L1"].item() == 0.0
    assert g_loss.item() == pytest.approx(LOG2)


def test_discriminator_loss_halves_the_sum():
    real, fake = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    loss, parts = discriminator_loss(real, fake)
    torch.testing.assert_close(loss, 0.5 * (parts["D_real"] + parts["D_fake"]))


def test_confident_correct_discriminator_has_near_zero_loss():
    real, fake = torch.full((1, 1, 30, 30), 30.0), torch.full((1, 1, 30, 30), -30.0)
    loss, _ = discriminator_loss(real, fake)
    assert 0.0 <= loss.item() < 1e-6


def test_confident_wrong_discriminator_has_large_loss():
    loss, _ = discriminator_loss(torch.full((4,), -10.0), torch.full((4,), 10.0))
    assert loss.item() == pytest.approx(10.0, abs=1e-3)


def test_generator_l1_is_mean_abs_error_and_lambda_scales_it():
    fake = torch.tensor([[0.5, -1.0], [0.25, 1.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    expected_l1 = (0.5 + 1.0 + 0.75 + 0.0) / 4
    logits = torch.zeros(1, 1, 2, 2)
    for lam in (0.0, 1.0, 100.0):
        loss, parts = generator_loss(logits, fake, target, lambda_l1=lam)
        assert parts["G_L1"].item() == expected_l1
        assert loss.item() == pytest.approx(LOG2 + lam * expected_l1)


def test_the_generator_objective_is_the_papers_gan_plus_100_l1():
    """log(1 + e^-x) per logit (the non-saturating GAN term against "real") plus 100 times the
    mean absolute error, computed by hand on numbers small enough to check."""
    logits = torch.tensor([[[[0.0, 2.0]]]])
    fake = torch.tensor([[[[0.5, -0.5]]]])
    target = torch.tensor([[[[0.25, 0.25]]]])
    loss, parts = generator_loss(logits, fake, target)
    gan = (math.log(2.0) + math.log(1.0 + math.exp(-2.0))) / 2
    l1 = (0.25 + 0.75) / 2
    assert parts["G_GAN"].item() == pytest.approx(gan, rel=1e-6)
    assert parts["G_L1"].item() == pytest.approx(l1, rel=1e-6)
    assert loss.item() == pytest.approx(gan + 100.0 * l1, rel=1e-6)


def test_losses_backpropagate_but_parts_are_detached():
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    fake = torch.randn(1, 3, 8, 8, requires_grad=True)
    d_loss, d_parts = discriminator_loss(logits, logits)
    g_loss, g_parts = generator_loss(logits, fake, torch.randn(1, 3, 8, 8))
    assert d_loss.requires_grad and g_loss.requires_grad
    assert all(not p.requires_grad for p in {**d_parts, **g_parts}.values())
    g_loss.backward()
    assert fake.grad is not None and logits.grad is not None


def test_bf16_inputs_give_float32_losses():
    logits = torch.randn(2, 1, 30, 30).bfloat16()
    fake, target = torch.rand(2, 3, 16, 16).bfloat16(), torch.rand(2, 3, 16, 16).bfloat16()
    d_loss, d_parts = discriminator_loss(logits, -logits)
    g_loss, g_parts = generator_loss(logits, fake, target)
    for t in (d_loss, g_loss, *d_parts.values(), *g_parts.values()):
        assert t.dtype == torch.float32
    expected_l1 = (fake.float() - target.float()).abs().mean()
    assert g_parts["G_L1"].item() == pytest.approx(expected_l1.item(), rel=1e-6)


def recife_term(weights=None, weight=1.0, temperature=0.1):
    weights = [1.0] * len(RECIFE_PALETTE) if weights is None else weights
    return PaletteTerm.build(RECIFE_PALETTE, weights, weight, temperature)


def test_the_palette_term_is_lowest_on_the_targets_colour_and_weighs_rare_classes():
    term = recife_term()
    road, building = term.colours[3], term.colours[1]
    target = road.view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()
    on_colour = palette_loss(target.clone(), target, term)
    between = palette_loss(((road + building) / 2).view(1, 3, 1, 1).expand(1, 3, 4, 4), target, term)
    wrong = palette_loss(building.view(1, 3, 1, 1).expand(1, 3, 4, 4), target, term)
    assert float(on_colour) < 0.01 < float(between) < float(wrong)
    # half road, half building, the output all road: weighting buildings up raises the loss
    mixed = target.clone()
    mixed[..., 2:] = building.view(3, 1, 1)
    all_road = target.clone()
    plain = palette_loss(all_road, mixed, term)
    weighted = palette_loss(all_road, mixed, recife_term(weights=[1, 3, 1, 1, 1, 1, 1]))
    assert float(weighted) > float(plain)


def test_the_palette_term_joins_the_generator_objective_with_its_weight():
    fake = (torch.rand(1, 3, 8, 8) * 2 - 1).requires_grad_()
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    logits = torch.zeros(1, 1, 2, 2)
    term = recife_term(weight=5.0)
    plain, _ = generator_loss(logits, fake, target)
    with_term, parts = generator_loss(logits, fake, target, palette=term)
    assert torch.allclose(with_term, plain + 5.0 * palette_loss(fake, target, term))
    with_term.backward()
    assert fake.grad is not None and parts["G_palette"].requires_grad is False
