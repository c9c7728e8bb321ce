"""Early-stopped IMP rounds: stop training a round once the mask the next pruning step would take has settled.

Early-bird tickets (You et al., ICLR 2020; EarlyBERT, Chen et al., ACL 2021) show that the magnitude mask a
training run ends with is often fixed long before the run ends. An IMP round that only serves to find the next
mask can therefore stop there. :class:`RoundWatch` is an after-optimizer-step task: every ``check_every`` steps it
computes the mask the next pruning step would take from the live weights, measures how far it is from the masks
of the last ``window`` checks (the largest of those distances; ``window`` 1: how far it moved since the previous
check), and raises :class:`StopTraining` once that is below ``threshold`` at ``patience`` checks in a row, but not
before ``min_fraction`` of the round's steps are done.

Why a window: the distance between consecutive checks says how fast the mask moves, not whether it has arrived. A
mask that drifts slowly but steadily passes a small threshold check after check while still moving far; its
distance to the mask of several checks ago does not (the Early-Bird rule keeps the last five masks). Why a floor:
with a linear learning-rate decay the weights still move a lot halfway through a round; a stop there can miss the
weights that settle late (measured on STS-B: rounds stopped at step 25-30 of 64, the learning rate still ~55 % of
its peak, gave a ticket that collapsed in retraining although 99.5 % of its mask bits agreed with the fully searched
one).

Distance between two candidate masks ``a`` and ``b`` (both nested in the current mask ``m``): the normalised
Hamming distance over the weights the step prunes, ``|a xor b| / (|m and not a| + |m and not b|)`` — 0 when both
would prune the same weights, 1 when they share none. (Normalising by all weights instead, as You et al. do,
would shrink it by the pruning step, e.g. 10x for a 10 % step.)
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
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
        A check is calm when the new mask is less than this (see :func:`mask_distance`) from each of the masks of
        the last ``window`` checks ...
    patience
        ... and the round stops at this many calm checks in a row.
    window
        How many earlier checks' masks a check compares against (Early-Bird: 5). 1 (default): only the previous
        one. A check before ``window`` masks are kept is not judged, so the earliest stop is at step
        ``(window + patience) * check_every``.
    min_fraction
        No stop before this fraction of the round's optimizer steps, in [0, 1) (0, default: no floor); needs the
        round's length.

    Every setting is refused at construction, by name, when it could let a round stop on a mask that nothing has
    been compared against: ``check_every``, ``patience`` and ``window`` are whole numbers >= 1 (so at least
    ``window`` + 1 masks, the first after step 1, are seen before any stop), ``threshold`` in [0, 1].
    """
    check_every: int = 10
    threshold: float = 0.01
    patience: int = 3
    window: int = 1
    min_fraction: float = 0.0

    def __post_init__(self) -> None:
        for key in ("check_every", "patience", "window"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EarlyStop.{key} must be a positive whole number of steps/checks, got {value!r}")
        for key, what in (("threshold", "a fraction of the pruned weights in [0, 1]"),
                          ("min_fraction", "a fraction of the round's steps in [0, 1)")):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (0 <= value <= 1 if key == "threshold" else 0 <= value < 1):
                raise ValueError(f"EarlyStop.{key} is {what}, got {value!r}")

    def earliest_stop(self, total_steps: Optional[int] = None) -> int:
        """The first step at which this rule can stop a round of ``total_steps`` steps (a check step)."""
        floor = math.ceil(self.min_fraction * total_steps) if self.min_fraction and total_steps else 0
        return max(self.window + self.patience, math.ceil(floor / self.check_every)) * self.check_every

    def check_round(self, total_steps: Optional[int]) -> None:
        """Before training rounds of ``total_steps`` steps (None: unknown): a ``min_fraction`` floor needs their
        length; a rule that cannot stop such a round is logged, not refused (the same settings may suit another
        task's longer rounds)."""
        if self.min_fraction and total_steps is None:
            raise ValueError(f"EarlyStop.min_fraction {self.min_fraction:g} needs the round's length: "
                             "compress(max_steps=...) or an evaluator that knows its num_training_steps(); or "
                             "leave min_fraction at 0")
        if total_steps is not None and self.earliest_stop(total_steps) > total_steps:
            _log.warning("early stopping cannot stop a round of %d steps (its earliest stop is step %d, from "
                         "(window + patience) x check_every and min_fraction): search rounds train fully",
                         total_steps, self.earliest_stop(total_steps))

    def settings(self) -> Dict[str, Any]:
        """The fields, the ones added after the first release only where set (a saved run's settings, compared on
        resume, stay those it was saved with)."""
        later = {f.name: f.default for f in fields(self) if f.name in ("window", "min_fraction")}
        return {k: v for k, v in asdict(self).items() if k not in later or v != later[k]}


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
    step checkpoint, else calls are counted. ``total_steps``: the round's length in optimizer steps, needed (and
    only read) for ``settings.min_fraction``. ``may_stop()`` can hold the stop back (e.g. until a θi snapshot is
    taken). ``state_dict``/``load_state_dict`` let a step checkpoint carry the watch (its kept masks included), so
    a resumed round stops where an uninterrupted one does.
    """

    def __init__(self, settings: Optional[EarlyStop] = None,
                 propose: Optional[Callable[[], Dict[str, Dict[str, torch.Tensor]]]] = None,
                 current: Optional[Dict[str, Dict[str, torch.Tensor]]] = None,
                 current_step: Optional[Callable[[], int]] = None, may_stop: Callable[[], bool] = lambda: True,
                 total_steps: Optional[int] = None):
        if settings is not None and (propose is None or current is None):
            raise ValueError("an early-stopping watch needs propose() and the current masks")
        if settings is not None and settings.min_fraction and not (isinstance(total_steps, int) and total_steps > 0):
            raise ValueError(f"EarlyStop.min_fraction {settings.min_fraction:g} needs the round's length: pass "
                             f"total_steps (a positive number of optimizer steps), got {total_steps!r}")
        self.settings, self.propose, self.current_step, self.may_stop = settings, propose, current_step, may_stop
        self.total_steps = total_steps
        self._current = _flat(current) if settings is not None else None
        self._floor = math.ceil(settings.min_fraction * total_steps) if settings and settings.min_fraction else 0
        self.step = 0                                 # the last step seen
        self.checks: List[Tuple[int, float]] = []     # (step, largest distance to the kept masks)
        self.stopped_at: Optional[int] = None
        self._kept: List[torch.Tensor] = []           # the masks of the last `window` checks, oldest first
        self._calm = 0                                # consecutive checks below the threshold

    def __call__(self) -> None:
        self.step = self.current_step() if self.current_step is not None else self.step + 1
        if self.settings is None or self.step % self.settings.check_every:
            return
        mask = _flat(self.propose())
        if len(self._kept) >= self.settings.window:  # judged only against a full window
            distance = max(mask_distance(kept, mask, self._current) for kept in self._kept)
            self.checks.append((self.step, distance))
            self._calm = self._calm + 1 if distance < self.settings.threshold else 0
            _log.debug("step %d: next mask %.4f from the masks of the last %d checks", self.step, distance,
                       len(self._kept))
        self._kept = (self._kept + [mask])[-self.settings.window:]
        last = self.total_steps is not None and self.step >= self.total_steps  # the round ends here anyway
        if self._calm >= self.settings.patience and self.step >= self._floor and not last and self.may_stop():
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
        if self._kept:
            state["kept"] = torch.stack(self._kept)
        return state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self._calm = int(state["calm"][0])
        self.checks = [(int(s), float(d)) for s, d in state["checks"].tolist()]
        if "kept" in state:
            self._kept = list(state["kept"].bool().unbind(0))
        else:  # a step checkpoint from before the window: the previous check's mask, if any
            self._kept = [state["previous"].bool()] if "previous" in state else []
