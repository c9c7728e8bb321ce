"""The dense grid: the full model alone over learning rate × epochs, seeds outermost, and its cross-task verdict."""
import json
import statistics

import pytest

from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.grid import dense_grid, grid_verdict
from nni_bert_tickets.experiments.tables import full_model


def _config(tmp_path, minilm_path, glue_dir, **overrides):
    settings = dict(task="rte", model=minilm_path, data_dir=glue_dir, max_train_samples=32, max_eval_samples=32,
                    batch_size=16, epochs=1, learning_rate=1e-4, seed=5, seeds=2, experiment="dense_grid",
                    grid_learning_rates=[1e-4], grid_epochs=[1, 0.5], output_root=str(tmp_path))
    settings.update(overrides)
    return ExperimentConfig(**settings).validate()


def test_grid_cells_are_the_cached_full_model_units(tmp_path, minilm_path, glue_dir):
    config = _config(tmp_path, minilm_path, glue_dir)
    result = dense_grid(config)
    cells = {(c["learning_rate"], c["epochs"]): c for c in result["cells"]}
    assert set(cells) == {(1e-4, 1.0), (1e-4, 0.5)} and all(c["n"] == 2 for c in cells.values())
    # the cell at the config's own setting is the same unit Table 2 reads (read back, not retrained)
    own = [full_model(config, config.seed + k)["default"] for k in range(2)]
    assert cells[(1e-4, 1.0)]["runs"] == own
    assert cells[(1e-4, 1.0)]["std"] == pytest.approx(statistics.stdev(own))  # sample std
    stored = json.loads((tmp_path / "tables" / "dense_grid-rte.json").read_text())
    assert stored["cells"] == result["cells"] and stored["current"] == {"learning_rate": 1e-4, "epochs": 1.0}

    from nni_bert_tickets.experiments.report import render
    text = render(tmp_path).read_text()
    section = text[text.index("## Is the full model trained well?"):]
    mean, std = cells[(1e-4, 0.5)]["mean"], cells[(1e-4, 0.5)]["std"]
    assert f"| 0.0001 | 0.5 | {100 * mean:.1f} ± {100 * std:.1f} (2) |" in section
    assert "| 0.0001 | 1 | +0.00 | +0.00 | no |" in section  # the current setting against itself


def test_single_runs_decide_nothing():
    # one seed per cell: no std, so however large the gains, no setting is called better
    a = _result("a", 2.0, [(2.0, 0.50, None), (4.0, 0.60, None)])
    b = _result("b", 2.0, [(2.0, 0.80, None), (4.0, 0.90, None)])
    verdict = grid_verdict([a, b])
    assert not verdict["decidable"] and verdict["best"] is None and not verdict["change"]
    four = next(s for s in verdict["settings"] if s["epochs"] == 4.0)
    assert four["gain"] == pytest.approx({"a": 0.10, "b": 0.10}) and not four["clearly_better"]
    from nni_bert_tickets.experiments.report import dense_grid_markdown
    text = dense_grid_markdown([{**a, "task": "rte"}, {**b, "task": "mrpc"}])
    assert "| 0.0001 | 4 | +10.0 | +10.0 | – | no |" in text and "No verdict" in text


def test_grid_refuses_bad_settings(tmp_path, minilm_path, glue_dir):
    with pytest.raises(ValueError, match="grid must contain the config's own setting"):
        _config(tmp_path, minilm_path, glue_dir, grid_epochs=[2, 4])
    with pytest.raises(ValueError, match="grid_learning_rates and grid_epochs"):
        _config(tmp_path, minilm_path, glue_dir, grid_epochs=[1, -2])
    with pytest.raises(ValueError, match="grid_learning_rates and grid_epochs"):
        _config(tmp_path, minilm_path, glue_dir, grid_learning_rates=[])


def _result(task, current, cells):
    return {"task": task, "current": {"learning_rate": 1e-4, "epochs": current},
            "cells": [{"learning_rate": 1e-4, "epochs": e, "mean": m, "std": s, "runs": [m], "n": 1 if s is None else 2}
                      for e, m, s in cells]}


def test_grid_verdict_needs_every_task_to_gain_or_hold():
    # 4 epochs gains 2 std on task a and loses 0.5 std on task b: clearly better on average, no task pays > 1 std
    a = _result("a", 2.0, [(2.0, 0.50, 0.01), (4.0, 0.52, 0.01)])
    b = _result("b", 2.0, [(2.0, 0.80, 0.02), (4.0, 0.79, 0.02)])
    verdict = grid_verdict([a, b])
    assert verdict["best"] == {"learning_rate": 1e-4, "epochs": 4.0} and verdict["change"]
    four = next(s for s in verdict["settings"] if s["epochs"] == 4.0)
    assert four["gain_in_std"] == pytest.approx({"a": 2.0, "b": -0.5})
    # the same average gain, but task b loses 3 std: not clearly better, the setting stays
    b = _result("b", 2.0, [(2.0, 0.80, 0.02), (4.0, 0.74, 0.02)])
    assert not grid_verdict([a, _result("a2", 2.0, [(2.0, 0.5, 0.01), (4.0, 0.56, 0.01)]), b])["change"]
    with pytest.raises(ValueError, match="no cell at its current setting"):
        grid_verdict([_result("c", 3.0, [(2.0, 0.5, 0.01)])])
