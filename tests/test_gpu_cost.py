"""benchmarks/gpu_cost.py as shipped (issue 22, item 6): the timing runs the library's IMP runner on the given shape,
the projection is the paper protocol's fine-tunings × steps × seconds a step, bad input is refused before any work."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_cost", ROOT / "benchmarks" / "gpu_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "benchmarks/gpu_cost.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=check, timeout=600)


def test_the_projection_is_fine_tunings_times_steps_times_seconds_a_step():
    gpu_cost = _module()
    rows = {r["task"]: r for r in gpu_cost.project({"glue": {"seconds_per_step": 0.1,
                                                             "plain_loop": {"seconds_per_step": 0.04}},
                                                    "squad": {"seconds_per_step": 0.3}}, saving=2.0)}
    assert set(rows) == {"cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli", "squad"}
    mnli = rows["mnli"]  # 3 epochs of 392,702 examples at batch 32; IMP 0..90 % by 10: 10 rounds; 2 more seeds;
    assert mnli["steps_a_finetuning"] == 3 * math.ceil(392_702 / 32)  # three baselines at 70 %
    assert (mnli["imp_rounds"], mnli["full_model_other_seeds"], mnli["baselines"]) == (10, 2, 3)
    assert mnli["gpu_hours_full_search"] == pytest.approx(15 * 36_816 * 0.1 / 3600)
    assert mnli["gpu_hours_cheap_search"] == pytest.approx(15 / 2 * 36_816 * 0.1 / 3600)  # the measured saving
    assert mnli["gpu_hours_full_search_bare_loop"] == pytest.approx(15 * 36_816 * 0.04 / 3600)  # the floor
    assert "gpu_hours_full_search_bare_loop" not in rows["squad"]  # no bare loop measured for it
    assert rows["squad"]["steps_a_finetuning"] == 2 * math.ceil(87_599 / 16)
    assert rows["squad"]["gpu_hours_full_search"] == pytest.approx(
        sum(rows["squad"][k] for k in ("imp_rounds", "full_model_other_seeds", "baselines"))
        * rows["squad"]["steps_a_finetuning"] * 0.3 / 3600)


def test_tiny_rounds_on_cpu_are_timed_by_the_imp_runner(tmp_path, minilm_path, glue_dir):
    out = tmp_path / "gpu_cost.json"
    _run(tmp_path, "--tokenizer", minilm_path, "--glue-dir", glue_dir,
         "--device", "cpu", "--precision", "no", "--shape", "tiny", "--kinds", "glue", "--steps", "1",
         "--rounds", "2", "--eval-samples", "4", "--train-samples", "64", "--output-root", str(tmp_path / "runs"), "--json", str(out))
    result = json.loads(out.read_text())
    glue = result["measured"]["glue"]
    assert [r["round"] for r in glue["rounds"]] == [0, 1] and glue["batch_size"] == 32 and glue["max_length"] == 128
    assert glue["seconds_per_step"] == pytest.approx(glue["rounds"][1]["seconds"])  # rounds after the first, 1 step
    assert result["projection"] is None and "--kinds glue" in result["command"]
    bare = glue["plain_loop"]  # the baseline beside the rounds, and the two variants that attribute the gap
    assert bare["batch_size"] == 32 and bare["library_over_plain"] == pytest.approx(
        glue["seconds_per_step"] / bare["seconds_per_step"])
    assert set(glue["plain_loop_variants"]) == {"loss_item", "nni_wrappers"}
    for variant in glue["plain_loop_variants"].values():
        assert variant["over_bare"] == pytest.approx(variant["seconds_per_step"] / bare["seconds_per_step"])
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("imp-sst2-")]
    trajectory = json.loads((run / "metrics.json").read_text())["trajectory"]
    assert [r["steps"] for r in trajectory] == [1, 1] and trajectory[1]["target_sparsity"] == pytest.approx(0.1)


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu", "--precision", "no", "--rounds", "1"], "--rounds must be >= 2"),
    (["--device", "cpu", "--precision", "bf16"], "--precision bf16 on --device cpu"),
    (["--device", "cpu", "--precision", "no", "--steps", "0"], "--steps must be >= 1"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, args, message):
    done = _run(tmp_path, *args, "--output-root", str(tmp_path / "runs"), check=False)
    assert done.returncode == 2 and message in done.stderr and not (tmp_path / "runs").exists()


def test_a_saved_measurement_is_projected_again_without_a_gpu(tmp_path):
    measured = {kind: {"seconds_per_step": step, "plain_loop": {"seconds_per_step": step / 4}}
                for kind, step in (("glue", 0.1), ("squad", 0.2))}
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"command": "python benchmarks/gpu_cost.py --precision bf16", "device": "NVIDIA X",
                                   "torch": "2.11", "precision": "bf16", "shape": "base", "measured": measured}))
    search_cost = tmp_path / "search_cost.json"
    search_cost.write_text(json.dumps({"steps_ratio_geometric_mean": 1.25, "tasks": [{"task": "rte"}]}))
    out = tmp_path / "again.json"
    _run(tmp_path, "--from-json", str(earlier), "--search-cost", str(search_cost), "--json", str(out))
    result = json.loads(out.read_text())
    assert result["measured"] == measured and result["device"] == "NVIDIA X"
    assert result["measured_by"] == "python benchmarks/gpu_cost.py --precision bf16"
    expected = _module().project(measured, saving=1.25)
    assert [r["task"] for r in result["projection"]] == [r["task"] for r in expected]
    for got, want in zip(result["projection"], expected):
        assert got == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in want.items()}
    assert result["total_gpu_hours_cheap_search"] == pytest.approx(
        sum(r["gpu_hours_full_search"] for r in expected) / 1.25)
    assert result["total_gpu_hours_full_search_bare_loop"] == pytest.approx(
        sum(r["gpu_hours_full_search"] for r in expected) / 4)
    assert "1.250x" in result["note"] and "rte" in result["note"]


@pytest.mark.parametrize("option", ["--from-json", "--search-cost"])
def test_a_missing_input_file_is_refused_by_name(tmp_path, option):
    done = _run(tmp_path, option, str(tmp_path / "nothing.json"), check=False)
    assert done.returncode == 2 and f"{option} {tmp_path / 'nothing.json'}: no such file" in done.stderr


def test_the_wrapped_variant_trains_the_model_under_nni_wrappers(tmp_path, minilm_path, monkeypatch):
    import argparse

    import nni_bert_tickets
    gpu_cost = _module()
    model = gpu_cost.random_bert(tmp_path / "tiny", Path(minilm_path), "tiny", seed=0)
    args = argparse.Namespace(device="cpu", precision="no", steps=1)
    wrapped_forwards = []
    real = nni_bert_tickets.RandomPruner.compress

    def compress(pruner):  # the real compress, then count the wrapped matrices' forwards during training
        out = real(pruner)
        for module in pruner.bound_model.modules():
            if hasattr(module, "_nni_wrapper"):
                module.register_forward_hook(lambda *a: wrapped_forwards.append(1))
        return out
    monkeypatch.setattr(nni_bert_tickets.RandomPruner, "compress", compress)
    assert gpu_cost.plain_loop("glue", model, args, "bare")["seconds_per_step"] > 0 and not wrapped_forwards
    gpu_cost.plain_loop("glue", model, args, "nni_wrappers")
    assert len(wrapped_forwards) == 6 * 13  # 6 steps (5 warm-up, 1 timed) x 13 matrices (2 layers x 6, pooler)
