"""The training loop as an NNI evaluator: what :class:`~nni_bert_tickets.IMPPruner` drives, round after round."""
from __future__ import annotations

from nni.compression import TorchEvaluator

__all__ = ["nni_evaluator"]


def nni_evaluator(tuner, model) -> TorchEvaluator:
    """An NNI ``TorchEvaluator`` over ``tuner``'s loop (a :class:`~nni_bert_tickets.training.FineTuner`), with
    traced AdamW and linear-decay scheduler (NNI rebuilds both fresh for every round), plus what IMPPruner asks
    of it beyond NNI's interface."""
    optimizer, scheduler = tuner.optimizer_and_scheduler(model, traced=True)
    evaluator = TorchEvaluator(tuner.train, optimizer, tuner.training_step, scheduler,
                               evaluating_func=tuner.evaluate)
    evaluator.num_training_steps = tuner.num_training_steps  # lets IMPPruner resolve rewind fractions
    evaluator.current_step = lambda: tuner.optimizer_steps            # and count steps across a resumed round
    evaluator.checkpoint_extras = tuner.checkpoint_extras     # step checkpoints carry its early-stop watch
    evaluator.set_log_offset = lambda n: setattr(tuner, "log_offset", n)  # tracker steps across its rounds
    return evaluator
