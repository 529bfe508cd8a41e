"""A training budget a user gives (minutes, pairs) and the paper's schedule fitted into it:
the learning rate is constant, then decays linearly to zero over the budget's last share (half
by default, as in the paper), so a run that stops at its budget ends at lr 0 instead of
mid-schedule."""

from __future__ import annotations

from dataclasses import dataclass

from pix2pix.errors import ConfigError

DECAY_FRACTION = 0.5  # the paper's shape: 100 epochs constant, 100 decaying


@dataclass(frozen=True)
class Budget:
    max_seconds: float | None = None  # wall clock from the job's start: start-up, validation, checkpoints included
    max_pairs: int | None = None      # training pairs seen, over all workers
    decay_fraction: float = DECAY_FRACTION  # the budget's last share, over which the lr decays to 0

    def __post_init__(self):
        if self.max_seconds is None and self.max_pairs is None:
            raise ConfigError("a budget needs minutes or pairs")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"a time budget must be positive, not {self.max_seconds:g} s")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"a budget of pairs must be at least 1, not {self.max_pairs}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ConfigError(f"the decay fraction must be in (0, 1], not {self.decay_fraction:g}")

    def used(self, seconds: float, pairs: int) -> float:
        """The share of the budget used (the larger of the two when both are given); 1 or more: spent."""
        shares = []
        if self.max_seconds is not None:
            shares.append(seconds / self.max_seconds)
        if self.max_pairs is not None:
            shares.append(pairs / self.max_pairs)
        return max(shares)

    def lr_factor(self, used: float) -> float:
        return lr_factor(used, self.decay_fraction)


def lr_factor(used: float, decay_fraction: float = DECAY_FRACTION) -> float:
    """The learning rate's multiplier after ``used`` of the budget."""
    start = 1.0 - decay_fraction
    if used <= start:
        return 1.0
    return max(0.0, (1.0 - used) / decay_fraction)
