"""benchmarks/peers.py as shipped: every pruner runs through the shipped MRPC config and real MRPC rows on a tiny
budget (the config's model swapped for a 2-layer BERT whose matrices hold whole 32x32 blocks), the evaluated models
are as sparse as asked (read from their zeros), steps are counted, bad input is refused first."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_checkpoint
from nni_bert_tickets.experiments.tables import ticket_at

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "cpu" / "table2-mrpc.yaml"


def _peers(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "benchmarks/peers.py", "--task", "mrpc",
                           "--output-root", str(tmp_path / "runs"), "--json", str(tmp_path / "peers.json"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=900)


def _tiny_config(tmp_path, minilm_path, glue_dir) -> str:
    """The shipped config with a 2-layer model of hidden 128 / intermediate 256 (4 and 8 blocks of 32 a side, so
    half the blocks is a whole number in every matrix) and absolute paths: the method logic needs no 6-layer model."""
    model = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path, positions=128, hidden=128, intermediate=256)
    lines = [f"model: {model}" if line.startswith("model:") else f"data_dir: {glue_dir}"
             if line.startswith("data_dir:") else line for line in CONFIG.read_text().splitlines()]
    assert sum(line.startswith(("model:", "data_dir:")) for line in CONFIG.read_text().splitlines()) == 2
    path = tmp_path / "table2-mrpc.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_every_method_on_a_tiny_budget(tmp_path, minilm_path, glue_dir):
    config = _tiny_config(tmp_path, minilm_path, glue_dir)
    budget = ("--config", config, "--sparsities", "0.5", "--max-train-samples", "32", "--max-eval-samples", "16",
              "--max-steps", "2")
    _peers(tmp_path, *budget)
    result = json.loads((tmp_path / "peers.json").read_text())
    (command,) = result["commands"]
    assert "benchmarks/peers.py" in command and "--max-steps 2" in command
    assert result["one_finetuning_steps"] == 2
    # the dense reference: the config's seeds of full-model fine-tunings, the very units Table 2 reads
    units = sorted((tmp_path / "runs").glob("full-mrpc-*"),
                   key=lambda d: json.loads((d / "settings.json").read_text())["seed"])
    assert len(units) == result["full"]["n"] == 3 and result["full"]["steps"] == [2, 2, 2]
    assert result["full"]["runs"] == [json.loads((d / "result.json").read_text())["default"] for d in units]
    expected = {"movement", "movement_3x", "movement_block", "movement_block_3x", "gradual_magnitude", "oneshot",
                "standard", "imp", "oneshot_2:4", "imp_2:4"}  # the 2:4 ones: 0.5 is asked
    assert set(result["methods"]) == expected
    for method, entry in result["methods"].items():
        (row,) = entry["rows"]
        assert "error" not in row, (method, row.get("error"))
        assert row["n"] == 1 and len(row["runs"]) == 1 and 0.0 <= row["runs"][0] <= 1.0
        (measured,) = row["measured_sparsity"]
        if entry["budget"] is not None:  # the NNI peers: read from the evaluated model's zeros
            assert row["sparsity_from"] == "zeros of the evaluated model"
        if method in ("movement", "movement_3x", "gradual_magnitude"):  # single weights, not NNI's default rows
            assert row["empty_rows"][0] < 0.01, (method, row["empty_rows"])
        assert abs(measured - 0.5) < 1e-3, (method, measured)
    steps = {m: e["rows"][0]["steps"][0] for m, e in result["methods"].items()}
    assert steps["movement"] == steps["movement_block"] == steps["gradual_magnitude"] == steps["oneshot"] == 2
    assert steps["oneshot_2:4"] == 2
    assert steps["movement_3x"] == steps["movement_block_3x"] == 3 * steps["movement"]
    # IMP and standard pruning count their search: rounds 0..5 (0 %, 10 %, ..., 50 %) of 2 steps each
    assert steps["imp"] == steps["standard"] == steps["imp_2:4"] == 6 * 2
    # the 2:4 ticket is a run of its own (its name carries the pattern), its mask exactly 2:4; the unstructured
    # ticket at the same level is not
    runs = {d: (d / "config.yaml").read_text() for d in (tmp_path / "runs").glob("imp-mrpc-*")}
    (nm_run,) = [d for d, text in runs.items() if "2:4" in text]
    (imp_run,) = [d for d, text in runs.items() if "2:4" not in text and "rewind: null" not in text]

    def two_of_four(run_dir):
        return all(bool((m.reshape(-1, 4).sum(dim=1) == 2).all()) for m in ticket_at(run_dir, 0.5).masks.values())
    assert two_of_four(nm_run) and not two_of_four(imp_run)
    # a second call finds every row in the results file: same numbers, nothing retrained
    again = _peers(tmp_path, *budget)
    assert "tables: running" not in again.stderr and "imp_run: IMP on" not in again.stderr
    again_result = json.loads((tmp_path / "peers.json").read_text())
    assert again_result["methods"] == result["methods"]
    assert again_result["commands"] == result["commands"]  # the same call again is listed once
    # a plan of calls adds up in one file: more seeds for one method replace its row, the others stay
    _peers(tmp_path, *budget[:2], "--methods", "oneshot", "--seeds", "2", *budget[2:])
    merged = json.loads((tmp_path / "peers.json").read_text())
    assert len(merged["commands"]) == 2 and "--seeds 2" in merged["commands"][-1]
    (row,) = merged["methods"]["oneshot"]["rows"]
    assert row["n"] == 2 and row["runs"][0] == result["methods"]["oneshot"]["rows"][0]["runs"][0]
    assert {m: e for m, e in merged["methods"].items() if m != "oneshot"} == \
        {m: e for m, e in result["methods"].items() if m != "oneshot"}
    # one seed where the file holds two: the row is kept and nothing trains, even with its units gone from the store
    for unit in (tmp_path / "runs").glob("oneshot-mrpc-*"):
        shutil.rmtree(unit)
    kept = _peers(tmp_path, *budget[:2], "--methods", "oneshot", *budget[2:])
    assert "oneshot at 0.50: kept the stored row (n = 2)" in kept.stderr and "tables: running" not in kept.stderr
    assert json.loads((tmp_path / "peers.json").read_text())["methods"] == merged["methods"]
    assert not list((tmp_path / "runs").glob("oneshot-mrpc-*"))
    png = tmp_path / "peers.png"
    _peers(tmp_path, "--plot", str(tmp_path / "peers.json"), "--png", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _check_page(tmp_path, json.loads((tmp_path / "peers.json").read_text()), png)


def _check_page(tmp_path, result, png):
    """benchmarks/peers_page.py renders the results file: every method's cell, the calls, the plot, and a sentence
    for exactly the peers whose mean is above the IMP ticket's (found here from the JSON)."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "peers-mrpc.json").write_text(json.dumps(result))
    (folder / "peers-mrpc.png").write_bytes(png.read_bytes())
    spec = importlib.util.spec_from_file_location("peers_page", ROOT / "benchmarks" / "peers_page.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    page.main([str(folder), "--out", str(folder / "peers.md")])
    text = (folder / "peers.md").read_text()
    assert "not the paper's numbers" in text and "(peers-mrpc.png)" in text
    assert "## MRPC: unstructured" in text and "![MRPC" in text  # tasks as GLUE writes them
    assert [page.title(t) for t in ("sst2", "stsb", "cola", "mrpc")] == ["SST-2", "STS-B", "CoLA", "MRPC"]
    assert all(command in text for command in result["commands"])
    assert f"The full model (dense, one fine-tuning, the same run-store units as Table 2's) scores " \
           f"{page.cell(result['full'])}" in text
    imp = result["methods"]["imp"]["rows"][0]["mean"]
    for method, entry in result["methods"].items():
        (row,) = entry["rows"]
        assert f"{100 * row['mean']:.1f}" in text and f"`{method}`" in text
        said = f"`{method}` (" in text.split("Where a peer scores above the ticket")[1].split("**2:4")[0]
        assert said == (method != "imp" and row["mean"] > imp), method
    nm = result["methods"]["imp_2:4"]["rows"][0]["mean"]
    assert f"{100 * (nm - imp):+.2f} points" in text
    with pytest.raises(SystemExit, match="holds no peers"):
        page.main([str(tmp_path / "runs"), "--out", str(tmp_path / "nothing.md")])


@pytest.mark.parametrize("args, named", [
    (["--methods", "movement", "lasso"], "lasso"),
    (["--sparsities", "1.0"], "--sparsities: 1.0"),
    (["--sparsities", "0.0"], "--sparsities: 0.0"),
    (["--sparsities", "0.55", "0.9", "--methods", "imp"], "not levels of the IMP run"),
    (["--seeds", "0"], "--seeds"),
    (["--sparsities", "0.7", "--methods", "imp", "imp_2:4"], "--methods imp_2:4: a 2:4 mask is exactly 0.5 sparse"),
    (["--task", "qqp"], "--task qqp: no config examples/configs/cpu/table2-qqp.yaml"),
])
def test_bad_input_is_refused_before_any_training(tmp_path, monkeypatch, args, named):
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)  # in process: the subprocess path is the test above
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit, match=re.escape(named)):
        peers.main(["--task", "mrpc", "--output-root", str(tmp_path / "runs"), "--json", str(tmp_path / "peers.json"),
                    *args])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "peers.json").exists()


def test_a_results_file_of_other_settings_is_refused_before_any_training(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "peers.json"
    made = {"task": "mrpc", "config": "examples/configs/cpu/table2-mrpc.yaml", "model": "../shared/models/all-MiniLM-L6-v2",
            "overrides": {"max_steps": 2}, "commands": ["python benchmarks/peers.py --max-steps 2"], "methods": {}}
    out.write_text(json.dumps(made))
    with pytest.raises(SystemExit, match=re.escape(f"--json {out} holds results made at other settings")):
        peers.main(["--task", "mrpc", "--output-root", str(tmp_path / "runs"), "--json", str(out),
                    "--methods", "oneshot", "--sparsities", "0.5"])
    assert json.loads(out.read_text()) == made and not (tmp_path / "runs").exists()


def test_the_page_gives_the_tickets_lead_with_welchs_interval_where_both_sides_have_seeds():
    """The interval against scipy's Welch t-test (an independent reference); a row with one training gets none."""
    from scipy import stats
    spec = importlib.util.spec_from_file_location("peers_page", ROOT / "benchmarks" / "peers_page.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    imp, block, one = [0.748, 0.755, 0.752], [0.725, 0.752, 0.738], [0.70]
    result = {"methods": {"imp": {"rows": [{"sparsity": 0.7, "runs": imp}]},
                          "movement_block": {"rows": [{"sparsity": 0.7, "runs": block}]},
                          "movement": {"rows": [{"sparsity": 0.7, "runs": one}]}}}
    (line,) = page.leads(result)
    ci = stats.ttest_ind(imp, block, equal_var=False).confidence_interval(0.95)
    assert line.startswith("At 70 %, over `movement_block`: +1.3 points")
    assert f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]" in line and "includes zero" in line
    result["methods"]["movement_block"]["rows"][0]["runs"] = [0.70, 0.71, 0.705]
    (line,) = page.leads(result)
    assert "excludes zero" in line


def test_the_page_says_whether_2_4_ran_faster_on_a_gpu_from_the_timing_file():
    spec = importlib.util.spec_from_file_location("peers_page", ROOT / "benchmarks" / "peers_page.py")
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    row = dict(shape="base", dtype="bf16", backend="cusparselt", length=128, max_abs_logit_difference=0.004)
    result = {"device": "NVIDIA X", "torch": "2.11", "command": "python benchmarks/semi_structured.py",
              "rows": [{**row, "batch": 4, "dense_ms": 7.0, "semi_structured_ms": 70.0, "speedup": 0.1},
                       {**row, "batch": 64, "dense_ms": 14.0, "semi_structured_ms": 28.0, "speedup": 0.5}],
              "matmuls": [{"tokens": 512, "dense_ms": 0.024, "semi_structured_ms": 1.007}]}
    text = "\n".join(page.semi_structured(result))
    assert "| base | bf16 | cusparselt | 7.0 / 70.0 (0.10×) | 14.0 / 28.0 (0.50×) |" in text
    assert "2:4 is slower here" in text and "1007–1007 µs a call against dense 24–24 µs" in text
    result["rows"][1]["speedup"] = 1.2
    assert "2:4 is faster in some cells only" in "\n".join(page.semi_structured(result))


def test_movement_scores_learn_through_our_training_loop_and_decide_the_mask(tmp_path, minilm_path, glue_dir):
    # MRPC's single-weight movement rows predict the majority class: this separates NNI's wiring from the method.
    # The scores are trained by NNI's own optimizer patched onto our loop's step; if our loop bypassed the patch they
    # would stay 0 and the mask would be an arbitrary tie-break
    from nni_bert_tickets.core.targets import bert_config_list
    from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
    from nni_bert_tickets.experiments.imp_run import prepare
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    config = ExperimentConfig(**{**load_yaml(_tiny_config(tmp_path, minilm_path, glue_dir)), "max_steps": 12,
                                 "max_train_samples": 64, "max_eval_samples": 16,
                                 "output_root": str(tmp_path / "runs")}).validate()
    model, tuner = prepare(config)
    pruner = peers.PEERS["movement"][0](model, bert_config_list(model, 0.5, pooler=False), tuner.evaluator(model), 12)
    pruner.compress(max_steps=12, max_epochs=None)
    masks = pruner.get_masks()
    assert tuner.optimizer_steps == 12 and len(pruner.scores) == len(masks) > 0
    for name, targets in pruner.scores.items():
        score, keep = targets["weight"].detach(), masks[name]["weight"].bool()
        assert bool((score != 0).all()), f"{name}: movement scores never moved"
        assert keep.float().mean().item() == pytest.approx(0.5, abs=1e-6)  # per matrix, single weights
        assert score[keep].min() >= score[~keep].max(), f"{name}: the mask does not keep the highest scores"
