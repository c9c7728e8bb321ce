"""The one fine-tuning loop, on Accelerate (its step checkpoints: :mod:`.checkpoints`; the NNI evaluator over it:
:mod:`.evaluator`).

:class:`FineTuner` owns the data and the loop. ``FineTuner.train`` has the signature NNI's ``TorchEvaluator``
expects of a ``training_func``; :meth:`FineTuner.evaluator` wraps it so ``IMPPruner`` drives it, and
:meth:`FineTuner.fit` runs the same loop directly (full model, baselines, transfer). The paper's defaults:
AdamW lr 2e-5, batch 32, 3 epochs, linear decay to 0, no warm-up, gradient clipping 1.0.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import nni
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file
from nni.compression import TorchEvaluator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..core.early_stop import StopTraining
from ..tasks.data import LengthGroupedBatchSampler
from .checkpoints import SigtermWatch, clear_checkpoint, read_progress, save_checkpoint

__all__ = ["TrainConfig", "FineTuner", "linear_decay", "parameter_groups"]
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
    checkpoint_steps: int = 0     # save a resumable Accelerate state every N optimizer steps (0: never)


def _draw_seed() -> int:
    """A data-order seed from torch's global RNG (which the caller has seeded)."""
    return int(torch.randint(0, 2**31 - 1, ()))


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """AdamW's parameter groups: ``weight_decay`` on the matrices, none on biases and LayerNorm."""
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]


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
                 accelerator: Optional[Accelerator] = None, checkpoint_dir: Optional[str] = None):
        self.task, self.config = task, config
        self.checkpoint_dir = checkpoint_dir  # where ``train`` keeps its step checkpoint (with checkpoint_steps)
        self.optimizer_steps = 0              # optimizer steps taken by the current ``train`` call
        self._run_steps: Optional[int] = None  # and the steps it takes in all
        self._save_s = 0.0                     # how long the last step checkpoint took to save
        self.log_offset = 0                    # tracker logs of step s go to step log_offset + s (IMP rounds)
        # name -> object with state_dict()/load_state_dict() of tensors, saved with every step checkpoint
        self.checkpoint_extras: Dict[str, Any] = {}
        self.accelerator = accelerator or Accelerator()
        self.train_data = data["train"].remove_columns([c for c in ("length",) if c in data["train"].column_names])
        self.tokenizer = tokenizer
        self.lengths = data["train"]["length"] if "length" in data["train"].column_names else None
        self.eval_data = {s: data[s].remove_columns([c for c in ("length",) if c in data[s].column_names])
                          for s in task.eval_splits}
        self.extra = {s: d for s, d in data.items() if s.startswith("_")}  # task bookkeeping, never batched
        self.collate = task.collator(tokenizer, config.padding)
        self.theta0 = ""                      # what θ0 is when not just the checkpoint (a warmed MLM head)

    # ---- sizes --------------------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.train_data) / self.config.batch_size) / self.accelerator.num_processes)

    def num_training_steps(self, max_steps: Optional[int] = None, max_epochs: Optional[float] = None) -> int:
        """Optimizer steps per process for one training run (what ``IMPPruner`` calls a round)."""
        if max_steps is not None or self.config.max_steps is not None:
            return int(max_steps if max_steps is not None else self.config.max_steps)
        return math.ceil((max_epochs or self.config.epochs) * self.steps_per_epoch())

    # ---- the loop -----------------------------------------------------------------------------------------
    def train_loader(self, seed: int) -> DataLoader:
        """Shuffled training batches; pass ``k`` over the data is ordered by ``seed + k`` (see ``reseed``)."""
        grouped = self.config.padding == "dynamic" and self.config.group_by_length and self.lengths is not None
        lengths = self.lengths if grouped else [0] * len(self.train_data)  # equal lengths: plain random batches
        sampler = LengthGroupedBatchSampler(lengths, self.config.batch_size, seed=seed)
        # its own generator: starting a pass must not draw from the global RNG, which a resumed run restores
        # from the checkpoint and which dropout goes on drawing from
        return DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collate,
                          generator=torch.Generator().manual_seed(seed))

    def train(self, model, optimizer, training_step, lr_scheduler=None, max_steps: Optional[int] = None,
              max_epochs: Optional[float] = None) -> None:
        """Train ``model`` (NNI's ``training_func`` signature); stops after ``max_steps`` or ``max_epochs``.

        With ``checkpoint_steps`` and ``checkpoint_dir`` set, the Accelerate state (model, optimizer, scheduler,
        RNGs) is saved every ``checkpoint_steps`` steps, and a call that finds such a checkpoint continues from
        it, replaying the interrupted pass over the data from where it stopped: the same result as a run that
        was never stopped. The checkpoint is removed once training ends. An optimizer-step task that raises
        :class:`~.early_stop.StopTraining` ends training after that step. With trackers (``Accelerator(log_with=
        ...)``, an open run) each step logs ``train/loss`` (the main process's batch) and ``train/lr``.
        """
        acc = self.accelerator
        total = self._run_steps = self.num_training_steps(max_steps, max_epochs)
        progress = read_progress(self.checkpoint_dir, total)
        data_seed = progress["data_seed"] if progress else broadcast_object_list([_draw_seed()])[0]
        loader = self.train_loader(data_seed)
        prepared = acc.prepare(model, optimizer, loader, *([lr_scheduler] if lr_scheduler else []))
        p_model, p_optimizer, p_loader = prepared[:3]
        p_scheduler = prepared[3] if lr_scheduler else None
        self.optimizer_steps = 0
        if progress:
            acc.load_state(progress["folder"])
            self.optimizer_steps = progress["step"]
            for name, extra in self.checkpoint_extras.items():
                path = os.path.join(progress["folder"], f"extra-{name}.safetensors")
                if os.path.isfile(path):
                    extra.load_state_dict(load_file(path))
                else:  # a checkpoint written before this state was carried
                    _log.warning("the step checkpoint has no %s state; it starts afresh", name)
            _log.info("resuming training at step %d of %d from %s", self.optimizer_steps, total, progress["folder"])
        # with step checkpoints, a SIGTERM (a scheduler ending the job) saves one on the way out; one process only,
        # as ranks receiving it at different steps could not save together
        saving = bool(self.config.checkpoint_steps and self.checkpoint_dir and acc.num_processes == 1)
        try:
            try:
                with SigtermWatch(enabled=saving) as term:
                    self._loop(p_model, p_optimizer, p_loader, loader.batch_sampler, p_scheduler, training_step,
                               total, data_seed, term)
            except StopTraining:  # raised inside optimizer.step: the step is taken, the rest of it is not
                p_optimizer.zero_grad()
                _log.info("training stopped at step %d of %d", self.optimizer_steps, total)
            clear_checkpoint(self.accelerator, self.checkpoint_dir)
        finally:
            acc.unwrap_model(p_model).eval()
            acc.free_memory()  # the Accelerator holds no stale model, optimizer or loader

    def _loop(self, model, optimizer, loader, sampler, scheduler, training_step, total: int, data_seed: int,
              term: Optional[SigtermWatch] = None) -> None:
        """Optimizer steps from ``self.optimizer_steps`` to ``total``; pass k over the data is ordered by
        ``data_seed + k`` (``sampler`` is the batch sampler that the prepared ``loader`` wraps, or shards over
        processes)."""
        acc, config = self.accelerator, self.config
        model.train()
        bar = tqdm(total=total, initial=self.optimizer_steps, desc="train", disable=not acc.is_local_main_process,
                   leave=False)
        while self.optimizer_steps < total:
            data_pass, done = divmod(self.optimizer_steps, len(loader))
            sampler.reseed(data_pass)
            if hasattr(self.collate, "reseed"):  # a collator that draws (MLM masking) draws per pass too
                self.collate.reseed(data_seed + data_pass)
            for batch in acc.skip_first_batches(loader, done) if done else loader:
                loss = training_step(batch, model)
                acc.backward(loss)
                if config.max_grad_norm:
                    acc.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                self.optimizer_steps += 1  # counted before the optimizer step, so step hooks see the step they finish
                if acc.trackers:  # the LR this step uses
                    acc.log({"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]},
                            step=self.log_offset + self.optimizer_steps)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                progress = {"step": self.optimizer_steps, "total": total, "data_seed": data_seed}
                saved = config.checkpoint_steps and self.checkpoint_dir and \
                    self.optimizer_steps % config.checkpoint_steps == 0 and self.optimizer_steps < total
                if saved:
                    start = time.monotonic()
                    save_checkpoint(self.accelerator, self.checkpoint_dir, progress, self.checkpoint_extras)
                    self._save_s = time.monotonic() - start
                if term is not None and term.pending:  # a SIGTERM came: end after this step, saved if there is time
                    self._save_on_the_way_out(term, progress, saved)
                if self.optimizer_steps >= total:
                    break
        bar.close()

    def _save_on_the_way_out(self, term: SigtermWatch, progress: Dict[str, Any], saved: bool) -> None:
        """After a SIGTERM: save a step checkpoint (unless this step's is ``saved``) if it can be written in time,
        then end as SIGTERM ends."""
        if saved:
            _log.warning("SIGTERM: the step checkpoint at step %d is saved; a rerun resumes from it", progress["step"])
        elif term.in_time(self._save_s):
            save_checkpoint(self.accelerator, self.checkpoint_dir, progress, self.checkpoint_extras)
            _log.warning("SIGTERM: saved a step checkpoint at step %d of %d in %s; a rerun resumes from it",
                         progress["step"], progress["total"], self.checkpoint_dir)
        else:
            _log.warning("SIGTERM: no time to save a step checkpoint at step %d (within TERM_GRACE_S of the signal); "
                         "a rerun resumes from the last one", progress["step"])
        term.terminate()

    @staticmethod
    def training_step(batch: Dict[str, torch.Tensor], model) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model) -> Dict[str, Any]:
        """The task's metrics on its evaluation splits (``'default'``: the main one). The model goes to the
        Accelerator's device first: one never trained here (θ0, a loaded ticket) is still on the CPU."""
        model.to(self.accelerator.device)
        model.eval()
        return self.task.evaluate(self, model)

    def eval_batches(self, data, collate=None):
        """Batches of an evaluation split, sharded over processes (gather with ``gather_for_metrics``)."""
        loader = DataLoader(data, batch_size=self.config.eval_batch_size, collate_fn=collate or self.collate)
        return tqdm(self.accelerator.prepare(loader), desc="eval", leave=False,
                    disable=not self.accelerator.is_local_main_process)

    # ---- NNI and direct use -------------------------------------------------------------------------------
    def optimizer_and_scheduler(self, model, traced: bool = False):
        """AdamW (no decay on biases and LayerNorm) and the linear-decay schedule; ``traced`` for NNI."""
        wrap = nni.trace if traced else (lambda cls: cls)
        groups = parameter_groups(model, self.config.weight_decay)
        optimizer = wrap(torch.optim.AdamW)(groups, lr=self.config.learning_rate, eps=self.config.adam_epsilon)
        def schedule(step: int) -> float:  # decays over the run ``train`` is doing (compress(max_steps=...) too)
            # Accelerate steps a prepared scheduler once per process for each optimizer step
            total = (self._run_steps or self.num_training_steps()) * self.accelerator.num_processes
            return linear_decay(total, int(self.config.warmup_ratio * total))(step)
        scheduler = wrap(torch.optim.lr_scheduler.LambdaLR)(optimizer, lr_lambda=schedule)
        return optimizer, scheduler

    def evaluator(self, model) -> TorchEvaluator:
        """An NNI ``TorchEvaluator`` over this loop (see :func:`~nni_bert_tickets.training.evaluator.nni_evaluator`)."""
        from .evaluator import nni_evaluator
        return nni_evaluator(self, model)

    def fit(self, model) -> Dict[str, Any]:
        """Fine-tune ``model`` with a fresh optimizer and schedule, then evaluate it."""
        optimizer, scheduler = self.optimizer_and_scheduler(model)
        self.train(model, optimizer, self.training_step, scheduler)
        return self.evaluate(model)
