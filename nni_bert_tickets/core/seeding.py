"""How IMP rounds are seeded: by the run seed and the round alone, so equal seeds give equal rounds and no round
depends on where IMP stops (which is why runs can share their first rounds)."""
from __future__ import annotations

import datetime
import json
import random
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_text

__all__ = ["environment", "level_seed", "record_environment", "seed_round"]
ENVIRONMENT_FILE = "environment.jsonl"


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


def environment() -> str:
    """What a run's floats depend on beyond its seeds, as one line for its log: library versions, the CPU kernels
    torch dispatches to, its thread count and any CUDA device. Equal seeds reproduce a run bit for bit only where
    this line is equal too, so a rerun that drifts from a logged run can be told apart from a code change."""
    import transformers  # only here: seeding itself does not need it
    parts = [f"torch {torch.__version__}", f"transformers {transformers.__version__}",
             f"CPU kernels {torch.backends.cpu.get_cpu_capability()}", f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(f"CUDA device {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def record_environment(folder) -> str:
    """Add this start's :func:`environment` line, with the time, to ``folder/environment.jsonl`` (one JSON line per
    start, the file rewritten whole), and return it. The file stays beside a run's results where the log may not
    (it travels with them), so a run resumed on another machine, or a remake that drifts, shows which starts ran
    on which kernels."""
    line = environment()
    path = Path(folder) / ENVIRONMENT_FILE
    before = path.read_text() if path.exists() else ""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(path, before + json.dumps({"started": stamp, "environment": line}) + "\n")
    return line
