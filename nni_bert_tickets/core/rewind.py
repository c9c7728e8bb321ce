"""Where IMP sends the surviving weights after each pruning step: the one home of the ``rewind`` setting.

``0`` is θ0, the pre-trained weights (the paper's default); a whole number k >= 1 is θk, the weights after k
optimizer steps of the first (dense) round; a fraction in (0, 1) is that fraction of the first round's steps;
``None`` is no rewinding at all, i.e. standard pruning (keep the trained weights). :meth:`Rewind.parse` reads it
from Python, YAML or the command line, checks it and normalises it (``100.0`` is the step count 100), once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

__all__ = ["Rewind"]
RewindValue = Union[int, float, None]


@dataclass(frozen=True)
class Rewind:
    """A parsed, checked rewind setting. ``value`` is what runs record (0, a step count, a fraction or None)."""
    value: RewindValue = 0

    HELP = ("where survivors go back after pruning: 0 = θ0 (pre-trained), a step count k = θk, a fraction in (0, 1) "
            "of the first round's steps, none = standard pruning (no rewind)")

    def __post_init__(self) -> None:
        value = self.value
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and
                               (value == 0 or 0 < value < 1 or (value >= 1 and float(value).is_integer())))
        if not ok:
            raise ValueError(f"rewind must be 0 (θ0), a step count >= 1, a fraction in (0, 1) or None (standard "
                             f"pruning), got {value!r}")
        if isinstance(value, float) and (value == 0 or value >= 1):
            object.__setattr__(self, "value", int(value))  # 0.0 is θ0, 100.0 the step count 100

    @classmethod
    def parse(cls, value: Any) -> "Rewind":
        """A :class:`Rewind` from a setting: a Rewind, None, a number, or text (``none``/``null``, ``0``, ``100``,
        ``0.05``)."""
        if isinstance(value, Rewind):
            return value
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("none", "null", "standard"):
                return cls(None)
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"rewind must be 0, a step count, a fraction in (0, 1) or none, got {value!r}") \
                    from None
        return cls(value)

    @staticmethod
    def from_text(text: str) -> RewindValue:
        """The value of a ``--rewind`` flag (for argparse's ``type``)."""
        return Rewind.parse(text).value

    @property
    def standard(self) -> bool:
        """No rewinding: standard pruning keeps the trained weights."""
        return self.value is None

    @property
    def to_theta0(self) -> bool:
        return self.value == 0

    @property
    def to_theta_i(self) -> bool:
        """Rewinding to weights taken during the first round (θi): a snapshot must be taken there."""
        return self.value is not None and self.value != 0

    def step(self, total_steps: Optional[int]) -> int:
        """The optimizer step of the first round whose weights are θi; ``total_steps``: that round's length,
        needed only for a fraction."""
        if not self.to_theta_i:
            raise ValueError(f"rewind {self.value!r} takes no snapshot")
        if isinstance(self.value, int):
            return self.value
        if total_steps is None:
            raise ValueError("rewind given as a fraction needs compress(max_steps=...) or an evaluator that knows "
                             "its num_training_steps(); give a step count instead")
        return max(1, round(self.value * total_steps))

    @property
    def name(self) -> str:
        """How tickets record it: ``none``, ``theta0`` or ``theta_i:<value>``."""
        return "none" if self.standard else "theta0" if self.to_theta0 else f"theta_i:{self.value}"
