"""A training budget, its share used, and the schedules (epochs or budget) the training loop asks."""

from __future__ import annotations

import time

import pytest
import torch

from pix2pix.errors import ConfigError
from pix2pix.training.budget import Budget, lr_factor
from pix2pix.training.schedule import BUDGET_SECONDS, BudgetSchedule, EpochSchedule
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


def test_one_schedule_object_sets_the_lr_and_ends_the_run_epochs_or_budget():
    config = TrainConfig(image_size=64, ngf=8, ndf=8, depth=6, epochs=1, epochs_decay=1, precision="fp32")
    model = Pix2Pix(config, torch.device("cpu"))
    epochs = EpochSchedule(config.epochs, config.epochs_decay)
    assert (epochs.lr_factor(model), epochs.done(model)) == (1.0, False)
    model.end_epoch()
    assert (epochs.lr_factor(model), epochs.done(model)) == (0.5, False)  # epoch 2 of 1 + 1 decays to half
    model.end_epoch()
    assert epochs.done(model) and epochs.checkpoint_state() == {} and epochs.metrics(model) == {}

    readings = []

    def agree(value: float) -> float:  # what the broadcast from rank 0 is, here a record of each call
        readings.append(value)
        return value

    budget = BudgetSchedule(Budget(max_pairs=100), started_at=time.time(), seconds_before=0.0, pairs_per_step=10,
                            agree=agree)
    model.step = 7
    assert budget.lr_factor(model) == pytest.approx(0.6) and not budget.done(model)  # 70%: decaying
    assert budget.metrics(model) == {"budget_used": pytest.approx(0.7)} and len(readings) == 1  # once per step
    model.step = 10
    assert budget.done(model) and budget.lr_factor(model) == 0.0 and len(readings) == 2
    assert budget.checkpoint_state()[BUDGET_SECONDS] >= 0.0
    resumed = BudgetSchedule(Budget(max_seconds=60), started_at=time.time(), seconds_before=45.0, pairs_per_step=10)
    assert 0.75 <= resumed.used(model) < 0.8  # the seconds of earlier attempts count
