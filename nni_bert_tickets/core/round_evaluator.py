"""What :class:`~nni_bert_tickets.IMPPruner` may ask of an evaluator beyond NNI's ``Evaluator`` interface.

An NNI evaluator trains and evaluates; IMP also wants to know how long a round is (to resolve a rewind point given as
a fraction), which step just finished (to take θi and to watch for early stopping, also in a round resumed from a step
checkpoint), where to log (a tracker's steps run on across rounds) and what a step checkpoint must carry (the
early-stop watch). An evaluator that can say so subclasses :class:`RoundEvaluator` (the training loop's does:
:class:`~nni_bert_tickets.training.evaluator.FineTunerEvaluator`); any other NNI evaluator still works, with steps
counted by calls and a fraction rewind needing ``compress(max_steps=...)``.
"""
from __future__ import annotations

import abc
import contextlib
import warnings
from typing import Any, Dict, Optional

__all__ = ["RoundEvaluator", "quiet_step_patch"]


class RoundEvaluator(abc.ABC):
    """The contract between an evaluator (mixed into an NNI ``Evaluator``) and the IMP pruner."""

    @abc.abstractmethod
    def num_training_steps(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        """Optimizer steps one round takes (per process)."""

    @abc.abstractmethod
    def current_step(self) -> int:
        """The optimizer step that just finished in the round being trained (counted across a resume)."""

    @property
    @abc.abstractmethod
    def checkpoint_extras(self) -> Dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` that every step checkpoint saves and restores, by name."""

    @abc.abstractmethod
    def set_log_offset(self, steps: int) -> None:
        """Tracker logs of the next round start after ``steps`` (the steps the unit trained before it)."""

    def checkpoint_step(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        """The step a step checkpoint of the next round would resume it after (0: none; the default)."""
        return 0

    def discard_checkpoint(self) -> None:
        """Forget any step checkpoint of the next round (it was not trained after all: read back); by default none."""


@contextlib.contextmanager
def quiet_step_patch(evaluator):
    """NNI's evaluators build the LR scheduler in ``bind_model`` and replace ``optimizer.step`` afterwards
    (``patch_optimizer_step``, which only adds tasks around the original step), so torch's scheduler reports
    "`optimizer.step()` has been overridden after learning rate scheduler initialization" at its first step of
    every round, though the steps run in the right order. A :class:`RoundEvaluator` owns that order (the training
    loop's builds its scheduler after the patch); for any other NNI evaluator exactly that message is filtered
    while the round trains. Other warnings, such as a scheduler stepped before the optimizer, still show."""
    if isinstance(evaluator, RoundEvaluator):
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"Seems like `optimizer\.step\(\)` has been overridden after learning rate "
                                        r"scheduler initialization")
        yield
