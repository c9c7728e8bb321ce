"""Tasks: one protocol, one registry (the nine GLUE tasks, ``squad`` for SQuAD v1.1, ``mlm`` for masked language
modelling) and the data helpers they share (:mod:`.data`).

A task supplies what :func:`~nni_bert_tickets.experiments.imp_run.prepare` and
:class:`~nni_bert_tickets.training.FineTuner` need (:class:`Task`).
"""
from __future__ import annotations

from typing import Any, Dict, Protocol, Tuple

from .data import DataError
from .glue import ALIASES as _GLUE_ALIASES
from .glue import TASKS as GLUE_TASKS

__all__ = ["Task", "get_task", "task_names", "DataError"]


class Task(Protocol):
    """What every task provides. ``metric`` is the paper's main metric (``evaluate``'s ``'default'``);
    ``metric_scale`` turns it into points: 100 for a fraction such as accuracy, 1 for a percentage (SQuAD's F1)."""

    name: str
    metric: str
    metric_scale: float
    eval_splits: Tuple[str, ...]

    def load(self, config) -> Any: ...                        # raw DatasetDict, checked; fails before training
    def tokenize(self, data, tokenizer, config) -> Any: ...   # tokenised DatasetDict: train + eval splits
    def load_model(self, name_or_path: str) -> Any: ...        # the pre-trained body with this task's head
    def collator(self, tokenizer, padding: str) -> Any: ...    # training batches
    def evaluate(self, tuner, model) -> Dict[str, float]: ...  # metrics, 'default' = the main one


def task_names():
    return [*GLUE_TASKS, "squad", "mlm"]


def get_task(name: str, config=None) -> Task:
    """The task called ``name`` (GLUE aliases such as ``sst-2`` too); ``config`` (an ExperimentConfig) sets task
    options such as the MLM masking rate."""
    key = name.lower()
    if key == "mlm":
        from .mlm import MLMTask
        return MLMTask(mlm_probability=config.mlm_probability) if config is not None else MLMTask()
    if key in ("squad", "squad1", "squad_v1"):
        from .squad import SquadTask
        return SquadTask()
    key = _GLUE_ALIASES.get(key, key)
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    raise DataError(f"unknown task {name!r}; known: {', '.join(task_names())}")
