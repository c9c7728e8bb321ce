"""Training: the one fine-tuning loop (Accelerate), its step checkpoints, and the NNI evaluator over it."""
from .loop import FineTuner, TrainConfig, linear_decay

__all__ = ["FineTuner", "TrainConfig", "linear_decay"]
