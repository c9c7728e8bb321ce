"""One fine-tuning loop, on Accelerate, and the NNI evaluator built on it.

:class:`FineTuner` owns the data and the loop. ``FineTuner.train`` has the signature NNI's ``TorchEvaluator``
expects of a ``training_func``; :meth:`FineTuner.evaluator` wraps it so ``IMPPruner`` drives it, and
:meth:`FineTuner.fit` runs the same loop directly (full model, baselines, transfer). The paper's defaults:
AdamW lr 2e-5, batch 32, 3 epochs, linear decay to 0, no warm-up, gradient clipping 1.0.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import nni
import torch
from accelerate import Accelerator
from nni.compression import TorchEvaluator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .glue import LengthGroupedBatchSampler

__all__ = ["TrainConfig", "FineTuner", "linear_decay"]
_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    learning_rate: float = 2e-5
    batch_size: int = 32          # per process
    epochs: float = 3.0
    max_steps: Optional[int] = None
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.0
    eval_batch_size: int = 128
    padding: str = "dynamic"      # "dynamic" (pad per batch) or "max_length" (the reference path)
    group_by_length: bool = True  # batches of similar length (only with dynamic padding)


def linear_decay(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup_steps`` then linear decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


class FineTuner:
    """Fine-tunes and evaluates a model on one tokenised task.

    ``task`` is a task of :mod:`nni_bert_tickets.tasks` (GLUE, MLM or SQuAD): it supplies the collator and the
    evaluation. ``data`` is its tokenised ``DatasetDict`` (``train`` plus the task's evaluation splits).
    """

    def __init__(self, task, data, tokenizer, config: TrainConfig = TrainConfig(),
                 accelerator: Optional[Accelerator] = None):
        self.task, self.config = task, config
        self.accelerator = accelerator or Accelerator()
        self.train_data = data["train"].remove_columns([c for c in ("length",) if c in data["train"].column_names])
        self.tokenizer = tokenizer
        self.lengths = data["train"]["length"] if "length" in data["train"].column_names else None
        self.eval_data = {s: data[s].remove_columns([c for c in ("length",) if c in data[s].column_names])
                          for s in task.eval_splits}
        self.extra = {s: d for s, d in data.items() if s.startswith("_")}  # task bookkeeping, never batched
        self.collate = task.collator(tokenizer, config.padding)

    # ---- sizes --------------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.train_data) / self.config.batch_size) / self.accelerator.num_processes)

    def num_training_steps(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        """Optimizer steps per process for one training run (what ``IMPPruner`` calls a round)."""
        if max_steps is not None or self.config.max_steps is not None:
            return int(max_steps if max_steps is not None else self.config.max_steps)
        return math.ceil((max_epochs or self.config.epochs) * self.steps_per_epoch())

    # ---- the loop -----------------------------------------------------------------------------------------
    def train_loader(self) -> DataLoader:
        if self.config.padding == "dynamic" and self.config.group_by_length and self.lengths is not None:
            sampler = LengthGroupedBatchSampler(self.lengths, self.config.batch_size)
            return DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collate)
        return DataLoader(self.train_data, batch_size=self.config.batch_size, shuffle=True, collate_fn=self.collate)

    def train(self, model, optimizer, training_step, lr_scheduler=None, max_steps: Optional[int] = None,
              max_epochs: Optional[float] = None) -> None:
        """Train ``model`` (NNI's ``training_func`` signature); stops after ``max_steps`` or ``max_epochs``."""
        acc, config = self.accelerator, self.config
        total = self.num_training_steps(max_steps, max_epochs)
        prepared = acc.prepare(model, optimizer, self.train_loader(), *([lr_scheduler] if lr_scheduler else []))
        p_model, p_optimizer, loader = prepared[:3]
        p_scheduler = prepared[3] if lr_scheduler else None
        p_model.train()
        step = 0
        bar = tqdm(total=total, desc="train", disable=not acc.is_local_main_process, leave=False)
        while step < total:
            for batch in loader:
                loss = training_step(batch, p_model)
                acc.backward(loss)
                if config.max_grad_norm:
                    acc.clip_grad_norm_(p_model.parameters(), config.max_grad_norm)
                p_optimizer.step()
                if p_scheduler is not None:
                    p_scheduler.step()
                p_optimizer.zero_grad()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step >= total:
                    break
        bar.close()
        acc.unwrap_model(p_model).eval()
        acc.free_memory()

    @staticmethod
    def training_step(batch: Dict[str, torch.Tensor], model) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model) -> Dict[str, Any]:
        """The task's metrics on its evaluation splits (``'default'``: the main one)."""
        model.eval()
        return self.task.evaluate(self, model)

    def eval_batches(self, data, collate=None):
        """Batches of an evaluation split, sharded over processes (gather with ``gather_for_metrics``)."""
        loader = DataLoader(data, batch_size=self.config.eval_batch_size, collate_fn=collate or self.collate)
        return tqdm(self.accelerator.prepare(loader), desc="eval", leave=False,
                    disable=not self.accelerator.is_local_main_process)

    # ---- NNI and direct use -------------------------------------------------------------------------------
    def _optimizer_and_scheduler(self, model, traced: bool):
        wrap = nni.trace if traced else (lambda cls: cls)
        no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
        named = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": self.config.weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
        ]
        optimizer = wrap(torch.optim.AdamW)(groups, lr=self.config.learning_rate, eps=self.config.adam_epsilon)
        total = self.num_training_steps() * self.accelerator.num_processes
        schedule = linear_decay(total, int(self.config.warmup_ratio * total))
        scheduler = wrap(torch.optim.lr_scheduler.LambdaLR)(optimizer, lr_lambda=schedule)
        return optimizer, scheduler

    def evaluator(self, model) -> TorchEvaluator:
        """An NNI ``TorchEvaluator`` over this loop, with traced AdamW and linear-decay scheduler."""
        optimizer, scheduler = self._optimizer_and_scheduler(model, traced=True)
        evaluator = TorchEvaluator(self.train, optimizer, self.training_step, scheduler,
                                   evaluating_func=self.evaluate)
        evaluator.num_training_steps = self.num_training_steps  # lets IMPPruner resolve rewind fractions
        return evaluator

    def fit(self, model) -> Dict[str, Any]:
        """Fine-tune ``model`` with a fresh optimizer and schedule, then evaluate it."""
        optimizer, scheduler = self._optimizer_and_scheduler(model, traced=False)
        self.train(model, optimizer, self.training_step, scheduler)
        return self.evaluate(model)
