"""How IMP rounds are seeded: by the run seed and the round alone, so equal seeds give equal rounds and no round
depends on where IMP stops (which is why runs can share their first rounds)."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["level_seed", "seed_round"]


def level_seed(seed: int, level: int) -> int:
    """The seed of IMP round ``level`` in a run seeded with ``seed``: the run seed and the round alone, so no round
    depends on where IMP stops."""
    return seed * 1000 + level


def seed_round(seed: int, level: int) -> None:
    """Seed Python, NumPy and torch for IMP round ``level`` of a run seeded with ``seed`` (as every IMP driver does
    before training a round, so equal seeds give equal rounds)."""
    seed = level_seed(seed, level)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
