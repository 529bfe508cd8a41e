"""A training budget: its share used, and the paper's schedule shape fitted into it."""

from __future__ import annotations

import pytest
import torch

from pix2pix.errors import ConfigError
from pix2pix.training.budget import Budget, lr_factor
from pix2pix.training.step import Pix2Pix, TrainConfig


def test_the_share_used_is_the_larger_of_minutes_and_pairs():
    assert Budget(max_seconds=600).used(150, 10**9) == 0.25
    assert Budget(max_pairs=1000).used(10**9, 250) == 0.25
    assert Budget(max_seconds=600, max_pairs=1000).used(300, 900) == 0.9
    for bad in ({}, {"max_seconds": 0}, {"max_pairs": 0}):
        with pytest.raises(ConfigError):
            Budget(**bad)


def test_constant_for_the_first_half_then_linear_to_zero():
    assert [lr_factor(used) for used in (0.0, 0.25, 0.5)] == [1.0, 1.0, 1.0]
    assert lr_factor(0.75) == pytest.approx(0.5) and lr_factor(0.9) == pytest.approx(0.2)
    assert lr_factor(1.0) == 0.0 and lr_factor(1.5) == 0.0


def test_a_budget_can_decay_over_another_share_of_it():
    from_the_start = Budget(max_pairs=1000, decay_fraction=1.0)
    assert [from_the_start.lr_factor(used) for used in (0.0, 0.25, 1.0)] == [1.0, 0.75, 0.0]
    last_quarter = Budget(max_pairs=1000, decay_fraction=0.25)
    assert last_quarter.lr_factor(0.75) == 1.0 and last_quarter.lr_factor(0.875) == pytest.approx(0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="decay fraction"):
            Budget(max_pairs=1000, decay_fraction=bad)


def test_a_budget_sets_the_learning_rate_and_the_epoch_schedule_stays_out():
    config = TrainConfig(image_size=64, ngf=8, ndf=8, depth=6, epochs=1, epochs_decay=1, precision="fp32")
    model = Pix2Pix(config, torch.device("cpu"))
    model.set_learning_rate_factor(0.25)
    model.end_epoch(schedule=False)
    groups = [group["lr"] for optimizer in (model.optimizer_g, model.optimizer_d) for group in optimizer.param_groups]
    assert groups == [config.lr * 0.25] * len(groups) and model.epoch == 1
    model.end_epoch()  # the epoch schedule: epoch 2 of 1 + 1 decays to half
    assert model.learning_rate == pytest.approx(config.lr * 0.5)
