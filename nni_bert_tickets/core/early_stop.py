"""Early-stopped IMP rounds: stop training a round once the mask the next pruning step would take has settled.

Early-bird tickets (You et al., ICLR 2020; EarlyBERT, Chen et al., ACL 2021) show that the magnitude mask a
training run ends with is often fixed long before the run ends. An IMP round that only serves to find the next
mask can therefore stop there. :class:`RoundWatch` is an after-optimizer-step task: every ``check_every`` steps it
computes the mask the next pruning step would take from the live weights, measures how far it moved since the
previous check, and raises :class:`StopTraining` once it has moved less than ``threshold`` for ``patience``
checks in a row.

Distance between two candidate masks ``a`` and ``b`` (both nested in the current mask ``m``): the normalised
Hamming distance over the weights the step prunes, ``|a xor b| / (|m and not a| + |m and not b|)`` — 0 when both
would prune the same weights, 1 when they share none. (Normalising by all weights instead, as You et al. do,
would shrink it by the pruning step, e.g. 10x for a 10 % step.)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .round_evaluator import RoundEvaluator

__all__ = ["EarlyStop", "StopTraining", "RoundWatch", "mask_distance"]
_log = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by an optimizer-step task to end a training run after the step it just took.

    ``FineTuner.train`` ends the run there as if its budget were spent (its step checkpoint is cleared); a
    training loop that does not know it lets it propagate, and ``IMPPruner`` catches it."""


@dataclass(frozen=True)
class EarlyStop:
    """When an IMP round that only searches for the next mask may stop.

    check_every
        Optimizer steps between two computations of the next mask.
    threshold
        The round stops once the mask moved less than this (see :func:`mask_distance`) ...
    patience
        ... at this many consecutive checks. The earliest stop is at step ``(patience + 1) * check_every``.
    """
    check_every: int = 10
    threshold: float = 0.01
    patience: int = 3

    def __post_init__(self) -> None:
        for key in ("check_every", "patience"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EarlyStop.{key} must be a positive whole number of steps/checks, got {value!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0 <= self.threshold <= 1:
            raise ValueError(f"EarlyStop.threshold is a fraction of the pruned weights in [0, 1], got {self.threshold!r}")


def mask_distance(a: torch.Tensor, b: torch.Tensor, current: torch.Tensor) -> float:
    """Normalised Hamming distance of two candidate masks over the weights they prune beyond ``current``
    (flat bool tensors, True = kept)."""
    newly = int((current & ~a).sum()) + int((current & ~b).sum())
    return float((a ^ b).sum()) / newly if newly else 0.0


def _flat(masks: Dict[str, Dict[str, torch.Tensor]]) -> torch.Tensor:
    """NNI masks ``{module: {target: mask}}`` as one flat bool vector, in a fixed order."""
    return torch.cat([masks[m][t].detach().flatten().bool().cpu() for m in sorted(masks) for t in sorted(masks[m])])


class RoundWatch:
    """The after-optimizer-step task of one IMP round: counts its steps and, with ``settings``, stops it early.

    ``propose()`` returns the NNI masks the next pruning step would take from the live weights, ``current`` the
    round's masks; ``current_step()`` (optional) tells which step just finished, also in a round resumed from a
    step checkpoint, else calls are counted. ``may_stop()`` can hold the stop back (e.g. until a θi snapshot is
    taken). ``state_dict``/``load_state_dict`` let a step checkpoint carry the watch, so a resumed round stops
    where an uninterrupted one does.
    """

    def __init__(self, settings: Optional[EarlyStop] = None,
                 propose: Optional[Callable[[], Dict[str, Dict[str, torch.Tensor]]]] = None,
                 current: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                 current_step: Optional[Callable[[], int]] = None, may_stop: Callable[[], bool] = lambda: True):
        if settings is not None and (propose is None or current is None):
            raise ValueError("an early-stopping watch needs propose() and the current masks")
        self.settings, self.propose, self.current_step, self.may_stop = settings, propose, current_step, may_stop
        self._current = _flat(current) if settings is not None else None
        self.step = 0                                 # the last step seen
        self.checks: List[Tuple[int, float]] = []     # (step, distance to the previous check's mask)
        self.stopped_at: Optional[int] = None
        self._previous: Optional[torch.Tensor] = None
        self._calm = 0                                # consecutive checks below the threshold

    def __call__(self) -> None:
        self.step = self.current_step() if self.current_step is not None else self.step + 1
        if self.settings is None or self.step % self.settings.check_every:
            return
        mask = _flat(self.propose())
        if self._previous is not None:
            distance = mask_distance(self._previous, mask, self._current)
            self.checks.append((self.step, distance))
            self._calm = self._calm + 1 if distance < self.settings.threshold else 0
            _log.debug("step %d: next mask moved %.4f since step %d", self.step, distance,
                       self.step - self.settings.check_every)
        self._previous = mask
        if self._calm >= self.settings.patience and self.may_stop():
            self.stopped_at = self.step
            _log.info("the next mask has settled (distance < %g at %d checks): round stopped at step %d",
                      self.settings.threshold, self._calm, self.step)
            raise StopTraining(self.step)

    def train(self, evaluator, max_steps=None, max_epochs=None, steps_before: int = 0) -> None:
        """``evaluator.train(...)`` with this watch in the step checkpoints of a
        :class:`~.round_evaluator.RoundEvaluator`; ends quietly if it stops it. ``steps_before``: steps the unit
        trained before this round (where its tracker logs continue)."""
        extras: Dict[str, Any] = {}
        if isinstance(evaluator, RoundEvaluator):
            evaluator.set_log_offset(steps_before)
            extras = evaluator.checkpoint_extras
        extras["early_stop"] = self
        try:
            evaluator.train(max_steps, max_epochs)
        except StopTraining:  # a training loop that lets it through
            if self.stopped_at is None:
                raise
        finally:
            extras.pop("early_stop", None)

    def record(self, early_stop: bool) -> Dict[str, Any]:
        """The round's fields of a trajectory record: ``steps`` and, under early stopping, whether it stopped and
        its checks (``[step, distance]``)."""
        return {"steps": self.step, **({"early_stopped": self.stopped_at is not None,
                                        "mask_checks": [list(c) for c in self.checks]} if early_stop else {})}

    # ---- carried by a step checkpoint ---------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        state = {"calm": torch.tensor([self._calm]), "checks": torch.tensor(self.checks, dtype=torch.float64)
                 .reshape(-1, 2)}
        if self._previous is not None:
            state["previous"] = self._previous
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self._calm = int(state["calm"][0])
        self.checks = [(int(s), float(d)) for s, d in state["checks"].tolist()]
        self._previous = state.get("previous")
