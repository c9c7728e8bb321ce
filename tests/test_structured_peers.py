"""benchmarks/structured_peers.py: torch-pruning's peers cut exactly the asked heads and channels, whole, with the
attention attributes fixed by hand; on a tiny budget every variant reaches the JSON with its metric, steps and speed."""
import copy
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nni_bert_tickets.core.structured import structured_ticket_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # as when the script runs: its folder is on the path (nni_speedup)
spec = importlib.util.spec_from_file_location("structured_peers", ROOT / "benchmarks" / "structured_peers.py")
sp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sp)


def _batch(n=3, labels=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(1000, 5000, (n, 12), generator=g),
             "attention_mask": torch.ones(n, 12, dtype=torch.long)}
    return {**batch, "labels": torch.randint(0, 2, (n,), generator=g)} if labels else batch


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_peer_cut_removes_whole_heads_and_channels_per_layer_and_fixes_attention(minilm_path, importance):
    torch.manual_seed(0)
    dense = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2).eval()
    model = copy.deepcopy(dense)
    ticket = sp.tp_prune(model, importance, 6, 384, _batch(), [_batch(4, True, s) for s in range(2)])
    assert [len(h) for h in ticket.heads] == [6] * 6 and [len(c) for c in ticket.channels] == [1152] * 6
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert (attention.num_attention_heads, attention.all_head_size, attention.attention_head_size) == (6, 192, 32)
        assert attention.query.out_features == attention.key.out_features == attention.value.out_features == 192
        assert layer.attention.output.dense.weight.shape == (384, 192)
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 1152
    assert all(p.grad is None for p in model.parameters())
    logits = model(**_batch()).logits
    assert logits.shape == (3, 2)
    # the same survivors cut from the dense model by the ticket's own code: equal outputs, so whole heads were
    # removed (no partial head) and the attributes fixed by hand are the ones the model needs
    reference = structured_ticket_model(dense, ticket, _batch())
    assert torch.allclose(logits, reference(**_batch()).logits, atol=1e-5)


def test_points_the_peers_cannot_cut_evenly_are_refused():
    with pytest.raises(SystemExit, match="not a whole number of this model's 12 heads"):
        sp.check_points([(0.3, 0.5, 1)], 12, 1536)
    with pytest.raises(SystemExit, match="not H:C or H:C:SEEDS"):
        sp.parse_point("0.5")
    assert sp.parse_point("0.5:0.6:3") == (0.5, 0.6, 3)


def test_a_call_that_would_drop_methods_or_points_of_the_json_is_refused_before_training(tmp_path, monkeypatch,
                                                                                          minilm_path):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "peers_structured.json"
    held = {"methods": {"ticket": "", "tp_taylor": ""},
            "points": [{"head_sparsity": 0.5, "channel_sparsity": 0.25, "seeds": 1, "variants": {}},
                       {"head_sparsity": 0.25, "channel_sparsity": 0.4, "seeds": 1, "variants": {}}]}
    out.write_text(json.dumps(held))
    runs = tmp_path / "runs"
    base = ["--task", "sst2", "--max-train-samples", "32", "--max-steps", "1", "--output-root", str(runs),
            "--json", str(out)]
    with pytest.raises(SystemExit, match=r"holds methods \['tp_taylor'\] and points \['0.25:0.4'\] that this "
                                         r"call would drop"):
        sp.main(base + ["--methods", "ticket", "--points", "0.5:0.25"])
    with pytest.raises(SystemExit, match=r"holds points \['0.5:0.25'\]"):
        sp.main(base + ["--methods", "ticket", "tp_taylor", "tp_magnitude", "--points", "0.25:0.4"])
    assert not runs.exists() and json.loads(out.read_text()) == held  # nothing trained, nothing written
    # naming them all again, or --replace, or another file passes the check
    sp.check_overwrite(out, ["ticket", "tp_taylor"], [(0.5, 0.25, 3), (0.25, 0.4, 1)], replace=False)
    sp.check_overwrite(out, ["ticket"], [(0.5, 0.25, 1)], replace=True)
    sp.check_overwrite(tmp_path / "new.json", ["ticket"], [(0.5, 0.25, 1)], replace=False)


def test_every_variant_on_a_tiny_budget(tmp_path, monkeypatch, glue_dir):  # glue_dir fails if ../shared is missing
    monkeypatch.chdir(ROOT)
    out = tmp_path / "peers_structured.json"
    argv = ["--task", "sst2", "--max-train-samples", "32", "--max-eval-samples", "16", "--max-steps", "1",
            "--max-length", "32", "--points", "0.5:0.25", "--repeats", "1", "--length", "32", "--batch-sizes", "1",
            "4", "--timing-examples", "4", "--taylor-batches", "1", "--output-root", str(tmp_path / "runs"),
            "--json", str(out)]
    sp.main(argv)
    result = json.loads(out.read_text())
    assert result["one_finetuning_steps"] == 1 and set(result["versions"]) >= {"torch", "transformers", "nni"}
    nni = result["nni_modelspeedup"]
    assert nni["ran"] or (nni["stage"] in ("TaylorPruner", "ModelSpeedup") and nni["error"])
    assert result["dense"]["speedup"] == {"1": 1.0, "4": 1.0}
    (point,) = result["points"]
    assert set(point["variants"]) == set(sp.METHODS) and point["ticket_rounds"] == 2
    for method, v in point["variants"].items():
        assert "error" not in v, (method, v.get("error"))
        assert v["n"] == 1 and 0.0 <= v["runs"][0] <= 1.0
        assert set(v["speedup"]) == {"1", "4"} and all(s > 0 for s in v["speedup"].values())
        assert all(s > 0 for s in v["seconds_per_batch"].values())
        # the same totals as the structured ticket: 36 of 72 heads and 6,912 of 9,216 channels kept
        assert sum(v["heads_per_layer"]) == 36 and sum(v["channels_per_layer"]) == 6912, method
        if method.startswith("tp_") or method == "ticket_layer":  # the same fraction of every layer
            assert v["heads_per_layer"] == [6] * 6 and v["channels_per_layer"] == [1152] * 6
        assert v["parameters"] < result["dense"]["parameters"]
    steps = {m: v["steps"][0] for m, v in point["variants"].items()}
    # from θ0: the dense fine-tuning (1 step) plus 2 IMP rounds / 1 fine-tuning / the ticket's 2 rounds
    assert steps == {"ticket": 3, "ticket_taylor": 3, "ticket_layer": 3, "tp_magnitude": 2, "tp_taylor": 2, "tp_magnitude_matched": 3,
                     "tp_taylor_matched": 3}
    # the results page renders it: every variant with its metric and speed-ups, and which peers are above the ticket
    import peers_page  # benchmarks/ is on the path (above)
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "peers_structured-sst2.json").write_text(out.read_text())
    text = peers_page.page(folder)
    assert result["command"] in text and "speed-up b1" in text and "speed-up b4" in text
    for method, v in point["variants"].items():
        assert f"| `{method}` | {peers_page.cell(v)} |" in text
        assert f"{v['speedup']['4']:.2f}×" in text
    ahead = [m for m, v in point["variants"].items() if m.startswith("tp_")
             and v["mean"] > point["variants"]["ticket"]["mean"]]
    assert ("Peers above the ticket here: " + (", ".join(f"`{m}`" for m in ahead) if ahead else "none") + ".") in text

    # carried without weights (settings.json and result.json only): every unit is read back and timing needs no
    # weights, so nothing is fine-tuned again
    runs = tmp_path / "runs"
    for weights in runs.rglob(sp.WEIGHTS):
        weights.unlink()
    sp.main(argv)
    again = json.loads(out.read_text())
    assert {m: v["runs"] for m, v in again["points"][0]["variants"].items()} == \
        {m: v["runs"] for m, v in point["variants"].items()}
    assert not list(runs.rglob(sp.WEIGHTS))
    # an unfinished variant needs the dense model: it is fine-tuned again, checked, and the variant comes out the same
    (dense_dir,) = [d for d in runs.iterdir() if d.name.startswith("spdense-")]
    (peer_dir,) = [d for d in runs.iterdir() if d.name.startswith("sppeer-") and
                   json.loads((d / "settings.json").read_text())["importance"] == "magnitude" and
                   json.loads((d / "result.json").read_text())["steps"] == steps["tp_magnitude"]]
    shutil.rmtree(peer_dir)
    sp.main(argv)
    again = json.loads(out.read_text())
    assert again["points"][0]["variants"]["tp_magnitude"]["runs"] == point["variants"]["tp_magnitude"]["runs"]
    assert (dense_dir / sp.WEIGHTS).exists() and (peer_dir / sp.WEIGHTS).exists()
    # a dense unit that does not reproduce its recorded result is refused, naming it, and leaves no weights
    recorded = json.loads((dense_dir / "result.json").read_text())
    (dense_dir / "result.json").write_text(json.dumps({**recorded, "default": recorded["default"] + 0.5}))
    (dense_dir / sp.WEIGHTS).unlink()
    shutil.rmtree(peer_dir)
    with pytest.raises(RuntimeError, match=f"{dense_dir.name}: fine-tuned again for its missing weights"):
        sp.main(argv)
    assert not (dense_dir / sp.WEIGHTS).exists()


def test_a_structured_point_gives_the_tickets_lead_over_each_variant_with_seeds():
    """Against scipy's Welch t-test; a variant with one training, or a ticket with one, gets no line."""
    from scipy import stats
    import peers_page
    ticket, taylor, layer = [0.80, 0.81, 0.805], [0.83, 0.84, 0.835], [0.81]
    point = {"variants": {"ticket": {"runs": ticket}, "tp_taylor": {"runs": taylor},
                          "ticket_layer": {"runs": layer}}}
    (line,) = peers_page.point_leads(point)
    ci = stats.ttest_ind(ticket, taylor, equal_var=False).confidence_interval(0.95)
    assert line.startswith("`ticket` against `tp_taylor`: -3.0 points")
    assert f"[{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]" in line and "excludes zero" in line
    point["variants"]["ticket_layer"]["runs"] = [0.85, 0.86, 0.855]  # an option with seeds: against the ticket too
    ticket_line, option_line, peer_line = peers_page.point_leads(point)
    assert ticket_line == line and option_line.startswith("`ticket` against `ticket_layer`: -5.0 points")
    assert peer_line.startswith("`ticket_layer` against `tp_taylor`: +2.0 points") and "excludes zero" in peer_line
    point["variants"]["ticket"]["runs"] = [0.80]
    (peer_only,) = peers_page.point_leads(point)
    assert peer_only == peer_line


def test_the_page_lists_structured_points_by_speed_whatever_order_the_json_holds():
    """A call may train its headline point first (``--points 0.5:0.6:3 0.25:0.4``); the page still reads 1.4× first."""
    import peers_page
    variant = {"mean": 0.8, "std": None, "n": 1, "runs": [0.8], "steps": [10]}
    result = {"task": "sst2", "metric": "accuracy", "one_finetuning_steps": 10, "command": "python x.py",
              "dense": {"mean": 0.85, "std": None, "n": 1}, "nni_modelspeedup": None,
              "timing": {"batch_sizes": [1], "statistic": "median", "length": 8, "threads": 1},
              "points": [{"head_sparsity": h, "channel_sparsity": c, "variants": {"ticket": variant}}
                         for h, c in ((0.5, 0.6), (0.25, 0.4), (0.75, 0.75))]}
    text = "\n".join(peers_page.structured(result))
    at = [text.index(f"Heads {h} %, FFN channels {c} % removed") for h, c in ((25, 40), (50, 60), (75, 75))]
    assert at == sorted(at)
