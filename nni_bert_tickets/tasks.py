"""All tasks by name: the nine GLUE tasks, ``squad`` (SQuAD v1.1) and ``mlm`` (masked language modelling).

A task supplies what :func:`~nni_bert_tickets.experiment.prepare` and
:class:`~nni_bert_tickets.training.FineTuner` need: ``load(config)`` (raw data, checked),
``tokenize(data, tokenizer, config)``, ``load_model(name_or_path)``, ``collator(tokenizer, padding)`` and
``evaluate(tuner, model)``, plus ``name``, ``metric``, ``eval_splits`` and ``metric_scale`` (what turns the
metric into points: 100 for a fraction such as accuracy, 1 for a percentage such as SQuAD's F1).
"""
from __future__ import annotations

from .glue import TASKS as GLUE_TASKS
from .glue import DataError, get_task as _glue_task

__all__ = ["get_task", "task_names"]


def task_names():
    return [*GLUE_TASKS, "squad", "mlm"]


def get_task(name: str, config=None):
    """The task called ``name``; ``config`` (an ExperimentConfig) sets task options such as the MLM masking."""
    key = name.lower()
    if key == "mlm":
        from .mlm import MLMTask
        return MLMTask(mlm_probability=config.mlm_probability) if config is not None else MLMTask()
    if key in ("squad", "squad1", "squad_v1"):
        from .squad import SquadTask
        return SquadTask()
    try:
        return _glue_task(name)
    except DataError:
        raise DataError(f"unknown task {name!r}; known: {', '.join(task_names())}") from None
