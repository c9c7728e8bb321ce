"""benchmarks/search_cost_table2.py as shipped (issue 22, item 5), on a tiny Table 2: both searches run on one store,
and the fine-tunings it counts are the units the two tables really made (read from the store's folders)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "benchmarks/search_cost_table2.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=check, timeout=900)


def test_steps_to_the_verdict_count_the_units_each_search_made(tmp_path, minilm_path, glue_dir):
    store = tmp_path / "runs"
    config = tmp_path / "table2-wnli.yaml"
    model = tiny_checkpoint(tmp_path / "model", minilm_path)  # a unit is a second
    config.write_text(yaml.safe_dump({
        "experiment": "table2", "task": "wnli", "model": model,
        "data_dir": glue_dir, "max_train_samples": 32, "max_eval_samples": 16, "batch_size": 16,
        "max_length": 32, "max_steps": 6, "target_sparsity": 0.2, "step": 0.1, "head": "rewind", "prune_pooler": False,
        "seeds": 2, "verdict_seeds": 2, "baselines": ["random_pruning"], "baseline_offsets": [0], "seed": 42,
        "output_root": str(store)}))
    out = tmp_path / "cost.json"
    # a threshold of 1 settles at the first distance: the check at step 2 records a mask, the one at step 4 measures
    # how far it moved and stops the round, so every search round trains 4 of its 6 steps
    _run("--configs", str(config), "--check-every", "2", "--threshold", "1", "--patience", "1", "--window", "1",
         "--threads", "1", "--json", str(out))
    (task,) = json.loads(out.read_text())["tasks"]
    full, cheap = task["full_search"], task["cheap_search"]
    assert task["one_finetuning_steps"] == 6
    assert full["imp_run_steps"] == 3 * 6 and cheap["imp_run_steps"] == 2 * 4 + 6
    units = {kind: len([p for p in store.iterdir() if p.name.startswith(kind + "-")])
             for kind in ("full", "imp_fresh_head", "random_pruning")}
    assert full["trainings"]["full_model"] == cheap["trainings"]["full_model"] == units["full"] == 2  # shared
    assert full["trainings"]["imp_verdicts"] + cheap["trainings"]["imp_verdicts"] == units["imp_fresh_head"]
    assert full["trainings"]["baselines"] + cheap["trainings"]["baselines"] == units["random_pruning"]
    for side in (full, cheap):
        assert side["total_steps"] == side["imp_run_steps"] + 6 * sum(side["trainings"].values())
    assert task["steps_ratio"] == pytest.approx(full["total_steps"] / cheap["total_steps"])
    for side in (full, cheap):  # the search's part: the IMP run and the trainings of its masks, nothing else
        assert side["search_steps"] == side["imp_run_steps"] + 6 * side["trainings"]["imp_verdicts"]
    assert task["search_steps_ratio"] == pytest.approx(full["search_steps"] / cheap["search_steps"])
    # the store's Table 2 is the full search's (it runs second)
    saved = json.loads((store / "tables" / "table2-wnli.json").read_text())
    assert saved["imp_run"] == full["imp_run"] != cheap["imp_run"] and saved["verdict_levels"] == "all"


def test_a_missing_config_is_refused_before_any_work(tmp_path):
    done = _run("--configs", str(tmp_path / "nope.yaml"), check=False)
    assert done.returncode == 2 and "no config at" in done.stderr
