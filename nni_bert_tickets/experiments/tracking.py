"""Experiment trackers through Accelerate (``report_to``): one tracker run per unit of work.

``report_to`` takes what ``Accelerator(log_with=...)`` takes (``tensorboard``, ``wandb``, ``mlflow``, ``aim``,
``comet_ml``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio`` or ``all``). Each unit — an IMP run, a full-model
fine-tuning, a baseline, a transfer — opens its own run, named by its directory name, under
``<output_root>/tracking/`` (``tensorboard --logdir <output_root>/tracking``). The training loop logs
``train/loss`` and ``train/lr`` per optimizer step; an IMP run logs ``imp/metric``, ``imp/sparsity`` and
``imp/steps`` per level (x = round); other units log their final metrics as ``eval/<name>``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

__all__ = ["check_trackers", "make_accelerator", "tracking_dir", "unit_run", "log_values"]
_log = logging.getLogger(__name__)
_EXTRA = {"tensorboard": "pip install 'nni_bert_tickets[tensorboard]'"}


def check_trackers(names: Sequence[str]) -> List[str]:
    """``names`` if Accelerate knows each tracker and its package is installed; else a clear error (Accelerate
    itself would drop a missing one silently)."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"report_to is a list of tracker names, got {names!r}; e.g. report_to: [tensorboard]")
    known = sorted(LOGGER_TYPE_TO_CLASS)
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name == "all":
            continue
        if name not in known:
            raise ValueError(f"report_to: unknown tracker {name!r}; Accelerate knows {known} (or 'all')")
        if name not in available:
            raise ValueError(f"report_to: {name!r} is not installed; "
                             + _EXTRA.get(name, f"install the {name} package") + ", or leave it out of report_to")
    if "all" in names and not available:
        raise ValueError("report_to: 'all' but no tracker package is installed; e.g. "
                         + _EXTRA["tensorboard"])
    return list(names)


def tracking_dir(output_root: str) -> str:
    return os.path.join(output_root, "tracking")


def make_accelerator(report_to: Sequence[str] = (), output_root: str = "runs", **kwargs: Any) -> Accelerator:
    """An ``Accelerator`` that logs to ``report_to`` under ``<output_root>/tracking`` (none: no trackers)."""
    if not report_to:
        return Accelerator(**kwargs)
    return Accelerator(log_with=check_trackers(report_to), project_dir=tracking_dir(output_root), **kwargs)


@contextlib.contextmanager
def unit_run(accelerator: Optional[Accelerator], name: str) -> Iterator[None]:
    """Open one tracker run named ``name`` for the block, and close it after (no-op without trackers).

    Not ``end_training``, which would also end the process group that later units still need."""
    if accelerator is None or not getattr(accelerator, "log_with", None):
        yield
        return
    if accelerator.trackers:
        raise RuntimeError(f"a tracker run is still open while starting {name!r}: units do not nest")
    accelerator.init_trackers(name)
    try:
        yield
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers = []


def log_values(accelerator: Optional[Accelerator], prefix: str, values: Dict[str, Any],
               step: Optional[int] = None) -> None:
    """Log the numbers among ``values`` as ``<prefix>/<key>`` to the open run (None, text and lists skipped)."""
    if accelerator is None or not accelerator.trackers:
        return
    numbers = {f"{prefix}/{k}": float(v) for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        accelerator.log(numbers, step=step)
