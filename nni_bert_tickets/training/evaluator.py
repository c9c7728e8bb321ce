"""The training loop as an NNI evaluator: what :class:`~nni_bert_tickets.IMPPruner` drives, round after round."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from nni.compression import TorchEvaluator

from ..core.round_evaluator import RoundEvaluator
from .checkpoints import clear_checkpoint, read_progress

__all__ = ["FineTunerEvaluator", "nni_evaluator"]


class FineTunerEvaluator(TorchEvaluator, RoundEvaluator):
    """NNI's ``TorchEvaluator`` over a :class:`~nni_bert_tickets.training.FineTuner`'s loop, with traced AdamW and
    linear-decay scheduler (NNI rebuilds both fresh for every round), and what IMP asks beyond NNI's interface
    (:class:`~nni_bert_tickets.core.round_evaluator.RoundEvaluator`), answered by the loop."""

    def __init__(self, tuner, model):
        optimizer, scheduler = tuner.optimizer_and_scheduler(model, traced=True)
        super().__init__(tuner.train, optimizer, tuner.training_step, scheduler, evaluating_func=tuner.evaluate)
        self.tuner = tuner

    def num_training_steps(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        return self.tuner.num_training_steps(max_steps, max_epochs)

    def current_step(self) -> int:
        return self.tuner.optimizer_steps

    @property
    def checkpoint_extras(self) -> Dict[str, Any]:
        return self.tuner.checkpoint_extras

    def set_log_offset(self, steps: int) -> None:
        self.tuner.log_offset = steps

    def checkpoint_step(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        progress = read_progress(self.tuner.checkpoint_dir, self.num_training_steps(max_steps, max_epochs))
        return 0 if progress is None else int(progress["step"])

    def discard_checkpoint(self) -> None:
        clear_checkpoint(self.tuner.accelerator, self.tuner.checkpoint_dir)

    def patch_optimizer_step(self, before_step_tasks: List[Callable], after_step_tasks: List[Callable]) -> None:
        super().patch_optimizer_step(before_step_tasks, after_step_tasks)
        # NNI replaces optimizer.step after bind_model built the LR scheduler, which torch's scheduler reports at its
        # first step ("optimizer.step() has been overridden after learning rate scheduler initialization"). Build
        # the scheduler again, from its traced construction, after the patch: nothing has stepped yet, so it starts
        # where the first one did (same base LRs, step 0), and it tracks the patched step.
        self._lr_schedulers = [helper.call(self._optimizers[self._lrs_opt_map[i]])
                               for i, helper in enumerate(self._lr_scheduler_helpers)]


def nni_evaluator(tuner, model) -> FineTunerEvaluator:
    """The NNI evaluator over ``tuner``'s loop (see :class:`FineTunerEvaluator`)."""
    return FineTunerEvaluator(tuner, model)
