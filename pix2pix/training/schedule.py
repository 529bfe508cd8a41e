"""What sets the learning rate and ends a run: the paper's epoch schedule or a user's budget.

Both answer the same two questions before every step, so the training loop never asks which
one it runs: ``lr_factor(model)`` (the multiplier of the recipe's lr) and ``done(model)``.
They read the model's epoch and step, not a step count alone: a resumed run may have another
number of workers, and so of steps per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pix2pix.training.budget import Budget
from pix2pix.training.step import Pix2Pix

BUDGET_SECONDS = "budget_seconds_used"  # in a checkpoint: the budget's seconds spent before it


def linear_decay(epochs: int, epochs_decay: int) -> Callable[[int], float]:
    """The paper's schedule: lr constant for ``epochs``, then linearly to zero."""

    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)

    return factor


class EpochSchedule:
    """The paper's: the lr constant for ``epochs``, then linearly to zero over ``epochs_decay``;
    done after both."""

    def __init__(self, epochs: int, epochs_decay: int):
        self.total = epochs + epochs_decay
        self.factor = linear_decay(epochs, epochs_decay)

    def lr_factor(self, model: Pix2Pix) -> float:
        return self.factor(model.epoch)

    def done(self, model: Pix2Pix) -> bool:
        return model.epoch >= self.total

    def checkpoint_state(self) -> dict:
        return {}

    def metrics(self, model: Pix2Pix) -> dict:
        return {}


class BudgetSchedule:
    """A budget's: the lr constant, then decaying to zero over the budget's last share; done once
    it is spent. Every worker must stop at the same step (none left waiting in a collective), so
    rank 0's reading is the one that counts: ``agree`` hands it to every worker (a broadcast,
    called the same number of times on each). The seconds of earlier attempts come from the
    checkpoint."""

    def __init__(self, budget: Budget, started_at: float, seconds_before: float, pairs_per_step: int,
                 agree: Callable[[float], float] = lambda value: value):
        self.budget, self.started_at, self.seconds_before = budget, started_at, seconds_before
        self.pairs_per_step, self.agree = pairs_per_step, agree
        self._read: tuple[int, float] | None = None  # (step, share used) of the last reading

    def seconds(self) -> float:
        return self.seconds_before + time.time() - self.started_at

    def used(self, model: Pix2Pix) -> float:
        """The share of the budget used at the model's step: read once per step, on every worker."""
        if self._read is None or self._read[0] != model.step:
            self._read = (model.step, self.agree(self.budget.used(self.seconds(), model.step * self.pairs_per_step)))
        return self._read[1]

    def lr_factor(self, model: Pix2Pix) -> float:
        return self.budget.lr_factor(self.used(model))

    def done(self, model: Pix2Pix) -> bool:
        return self.used(model) >= 1.0

    def checkpoint_state(self) -> dict:
        """A resumed run keeps what is left of its budget."""
        return {BUDGET_SECONDS: self.seconds()}

    def metrics(self, model: Pix2Pix) -> dict:
        return {"budget_used": min(1.0, self.used(model))}
