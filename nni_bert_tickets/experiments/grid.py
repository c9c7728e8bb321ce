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
    current setting (``gain``), and that gain in units of the task's mean sample std over its cells (``gain_in_std``,
    so a task with a noisy metric does not dominate), averaged over the tasks. A setting is *clearly better* when its
    average gain is positive and every task's own gain is at least −1 std (no task pays for the others). A task whose
    cells are single runs has no std: then nothing is decided (``decidable`` false, no ``best``)."""
    table: Dict[tuple, Dict[str, Dict[str, Optional[float]]]] = {}
    decidable = True
    for result in results:
        cells = result["cells"]
        current = next((c for c in cells if (c["learning_rate"], c["epochs"]) ==
                        (result["current"]["learning_rate"], result["current"]["epochs"])), None)
        if current is None:
            raise ValueError(f"the grid of {result['task']} has no cell at its current setting {result['current']}")
        stds = [c["std"] for c in cells if c["std"] is not None]
        scale = statistics.fmean(stds) if stds else None
        decidable = decidable and scale is not None and scale > 0
        for c in cells:
            gain = c["mean"] - current["mean"]
            table.setdefault((c["learning_rate"], c["epochs"]), {})[result["task"]] = {
                "gain": gain, "gain_in_std": gain / scale if scale else None}
    settings = []
    for (lr, epochs), per_task in sorted(table.items()):
        in_std = {t: g["gain_in_std"] for t, g in per_task.items()}
        complete = decidable and len(per_task) == len(results)
        average = statistics.fmean(in_std.values()) if complete else None
        settings.append({"learning_rate": lr, "epochs": epochs, "gain": {t: g["gain"] for t, g in per_task.items()},
                         "gain_in_std": in_std, "average_gain_in_std": average,
                         "clearly_better": bool(complete and average > 0 and min(in_std.values()) >= -1)})
    ranked = [s for s in settings if s["average_gain_in_std"] is not None]
    best = max(ranked, key=lambda s: s["average_gain_in_std"]) if ranked else None
    return {"settings": settings, "decidable": decidable, "tasks": [r["task"] for r in results],
            "best": None if best is None else {k: best[k] for k in ("learning_rate", "epochs")},
            "change": bool(best and best["clearly_better"])}
