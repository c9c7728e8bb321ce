"""Is the full model trained well? The dense model alone over a small grid of learning rate × epochs.

Every cell is ``seeds`` full-model fine-tunings (seeds ``seed``, ``seed + 1``, …), the same cached units Table 2
reads, so the cell at a Table-2 config's own setting is that table's full model, trained once. Seeds run outermost:
an interrupted grid has every cell at its first seed before any cell gets a second. The result,
``tables/dense_grid-<task>.json``, gives each cell's runs, mean and sample std; :func:`grid_verdict` compares the
settings across tasks (one setting for every task, never one per task).
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Dict, List, Optional, Sequence

from accelerate import Accelerator

from .config import ExperimentConfig
from .tables import _save, check_model, full_model

__all__ = ["dense_grid", "grid_verdict"]


def _cells(config: ExperimentConfig) -> List[ExperimentConfig]:
    return [dataclasses.replace(config, learning_rate=lr, epochs=epochs)
            for lr in config.grid_learning_rates for epochs in config.grid_epochs]


def dense_grid(config: ExperimentConfig, accelerator: Optional[Accelerator] = None) -> Dict[str, Any]:
    """The full model of ``config`` at each ``grid_learning_rates`` × ``grid_epochs`` cell, ``seeds`` times."""
    check_model(config)
    cells = _cells(config)
    runs: Dict[int, List[float]] = {i: [] for i in range(len(cells))}
    for k in range(config.seeds):  # seed-major: a partial grid is complete at its first seeds
        for i, cell in enumerate(cells):
            runs[i].append(full_model(cell, config.seed + k, accelerator)["default"])
    rows = [{"learning_rate": cell.learning_rate, "epochs": cell.epochs, "runs": runs[i], "n": len(runs[i]),
             "mean": statistics.fmean(runs[i]),
             "std": statistics.stdev(runs[i]) if len(runs[i]) > 1 else None}  # sample std
            for i, cell in enumerate(cells)]
    return _save(config, "dense_grid", {"task": config.task, "seeds": [config.seed + k for k in range(config.seeds)],
                                        "current": {"learning_rate": config.learning_rate, "epochs": config.epochs},
                                        "cells": rows})


def grid_verdict(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Which setting is best across tasks: for each (learning rate, epochs), its mean over seeds minus the task's
    current setting, in units of that task's pooled sample std over the grid (so a task with a noisy metric does not
    dominate), averaged over the tasks. A setting is *clearly better* when its average gain is positive and every
    task's own gain is at least −1 std (no task pays for the others)."""
    table: Dict[tuple, Dict[str, float]] = {}
    for result in results:
        cells = result["cells"]
        current = next((c for c in cells if (c["learning_rate"], c["epochs"]) ==
                        (result["current"]["learning_rate"], result["current"]["epochs"])), None)
        if current is None:
            raise ValueError(f"the grid of {result['task']} has no cell at its current setting {result['current']}")
        stds = [c["std"] for c in cells if c["std"] is not None]
        scale = statistics.fmean(stds) if stds else 1.0
        for c in cells:
            table.setdefault((c["learning_rate"], c["epochs"]), {})[result["task"]] = (c["mean"] - current["mean"]) / scale
    settings = []
    for (lr, epochs), gains in sorted(table.items()):
        average = statistics.fmean(gains.values())
        settings.append({"learning_rate": lr, "epochs": epochs, "gain_in_std": gains, "average_gain_in_std": average,
                         "clearly_better": len(gains) == len(results) and average > 0 and min(gains.values()) >= -1})
    best = max(settings, key=lambda s: s["average_gain_in_std"])
    return {"settings": settings, "best": {k: best[k] for k in ("learning_rate", "epochs")},
            "change": bool(best["clearly_better"]), "tasks": [r["task"] for r in results]}
