import math

import pytest
import torch

from pix2pix.losses import discriminator_loss, generator_loss

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
