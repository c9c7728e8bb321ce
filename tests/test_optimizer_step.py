"""benchmarks/optimizer_step.py: the three AdamW implementations start from the same parameters and gradients; the
per-tensor loop is its own reference, foreach reproduces it bit for bit; bad input is refused before any work."""
import importlib.util
import json
from pathlib import Path

import pytest

from conftest import tiny_bert, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("optimizer_step", ROOT / "benchmarks" / "optimizer_step.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_implementations_compared_on_one_start(tmp_path, minilm_path):
    model = tiny_checkpoint(tmp_path / "tiny", minilm_path)
    out = tmp_path / "opt.json"
    bench.main(["--model", model, "--steps", "3", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    kinds = result["kinds"]
    assert set(kinds) == {"per_tensor", "foreach", "fused"} and result["steps"] == 3
    assert kinds["per_tensor"]["bitwise_equal"] and kinds["per_tensor"]["speedup_vs_per_tensor"] == 1.0
    assert kinds["foreach"]["max_abs_diff_vs_per_tensor"] == 0.0  # the same arithmetic, batched
    assert kinds["fused"]["max_abs_diff_vs_per_tensor"] < 1e-5  # close, but a different kernel
    for entry in kinds.values():
        assert entry["median_s"] > 0
        assert entry["speedup_vs_per_tensor"] == pytest.approx(kinds["per_tensor"]["median_s"] / entry["median_s"])


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--steps", "1", "--json", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_the_benchmark_and_the_loop_share_one_grouping_rule():
    """No decay exactly on biases and LayerNorm, decay on every matrix (embeddings too), every parameter once: the
    rule's one home is the loop, and the benchmark's optimizers use it."""
    from nni_bert_tickets.training.loop import parameter_groups
    model = tiny_bert()
    decay, rest = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in rest["params"]}
    assert no_decay == {n for n in names.values() if n.endswith(".bias") or ".LayerNorm." in n}
    assert len(decay["params"]) + len(rest["params"]) == len(names)
    assert "bert.embeddings.word_embeddings.weight" in {names[id(p)] for p in decay["params"]}
    assert [[id(p) for p in g["params"]] for g in bench.groups(model)] == \
        [[id(p) for p in g["params"]] for g in parameter_groups(model, 0.01)]
