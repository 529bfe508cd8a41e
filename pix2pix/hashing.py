"""One stable hash for every decision made from a name: train/val splits, which worker validates
a pair, and the seeds of --stochastic outputs.

Python's hash() is salted per process; these numbers must be the same in every process, run and
machine. Changing them would move existing datasets' pairs between splits and change stochastic
outputs, so the digests are pinned by tests (tests/test_hashing.py).
"""

from __future__ import annotations

import hashlib

SEED_MASK = 2**63 - 1  # torch.manual_seed takes up to 64 bits; 63 keep it a non-negative int64


def stable_hash(text: str) -> int:
    """The first 64 bits of the SHA-256 of ``text``, big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def stable_seed(text: str) -> int:
    """A 63-bit seed from ``text``."""
    return stable_hash(text) & SEED_MASK
