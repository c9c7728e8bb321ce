"""Full trainings only where Table 2's answers need them (issue 22, item 3): ``probe`` in its three orders against
training every level, on synthetic trajectories (``train(level, i)`` is a fixed table, so nothing is random)."""
import random

import pytest

from nni_bert_tickets.experiments.verdicts import highest, is_down_set, matching, probe, stats

FULL = stats([0.80, 0.82, 0.78])  # mean 0.80, sample std 0.02: matching from 0.78, strictly from 0.80
LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]


def counting(table):
    trained = []

    def train(level, i):
        trained.append((level, i))
        value = table[level]
        return value[i] if isinstance(value, list) else value
    return train, trained


def answers(runs):
    return highest(runs, FULL), highest(runs, FULL, strict=True)


# SST-2's committed CPU trajectory in shape: 10 % and 20 % fall below the line that 30 % and 40 % pass
DIP = {0.1: 0.77, 0.2: 0.77, 0.3: 0.805, 0.4: 0.79, 0.5: 0.75, 0.6: 0.74, 0.7: 0.72, 0.8: 0.70, 0.9: 0.60}
MONOTONE = {0.1: 0.81, 0.2: 0.805, 0.3: 0.80, 0.4: 0.79, 0.5: 0.785, 0.6: 0.76, 0.7: 0.74, 0.8: 0.70, 0.9: 0.60}


def test_top_down_gives_every_levels_answers_without_the_levels_below_them():
    train, trained = counting(DIP)
    every = probe(LEVELS, FULL, 1, train, "all")
    assert answers(every) == (0.4, 0.3) and len(trained) == 9
    train, trained = counting(DIP)
    runs = probe(LEVELS, FULL, 1, train, "top_down")
    assert answers(runs) == (0.4, 0.3)
    assert sorted(runs) == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] and len(trained) == 7  # 10 % and 20 % never trained


def test_bisect_is_exact_on_a_down_set_and_can_miss_a_dip():
    assert is_down_set({level: matching(v, FULL) for level, v in MONOTONE.items()})
    train, trained = counting(MONOTONE)
    runs = probe(LEVELS, FULL, 1, train, "bisect")
    assert answers(runs) == answers(probe(LEVELS, FULL, 1, counting(MONOTONE)[0], "all")) == (0.5, 0.3)
    assert len(trained) <= 6 < 9
    # the assumption fails on the dip: bisection probes 50 %, then 20 %, 10 % (all below the line) and answers None
    assert not is_down_set({level: matching(v, FULL) for level, v in DIP.items()})
    runs = probe(LEVELS, FULL, 1, counting(DIP)[0], "bisect")
    assert highest(runs, FULL) is None


def test_more_seeds_that_sink_the_answer_continue_the_walk_down():
    # 60 % looks matching on its first run; its other two sink its mean, so the walk goes on to 50 %
    table = {**MONOTONE, 0.6: [0.79, 0.70, 0.70], 0.5: [0.785, 0.79, 0.78]}
    train, trained = counting(table)
    runs = probe(LEVELS, FULL, 3, train, "top_down")
    assert highest(runs, FULL) == 0.5 and len(runs[0.6]) == 3 and len(runs[0.5]) == 3
    assert 0.1 not in runs and len(trained) == len(set(trained))


def test_runs_already_made_are_used_first():
    train, trained = counting(MONOTONE)
    runs = probe(LEVELS, FULL, 1, train, "top_down", runs={0.9: [0.60], 0.8: [0.70]})
    assert answers(runs) == (0.5, 0.3) and (0.9, 0) not in trained and (0.8, 0) not in trained


@pytest.mark.parametrize("k", [1, 3])
def test_top_down_agrees_with_every_level_on_random_trajectories(k):
    rng = random.Random(0)
    for _ in range(300):
        table = {level: [rng.uniform(0.74, 0.84) - 0.1 * level * rng.random() for _ in range(k)] for level in LEVELS}
        every = probe(LEVELS, FULL, k, counting(table)[0], "all")
        train, trained = counting(table)
        down = probe(LEVELS, FULL, k, train, "top_down")
        assert answers(down) == answers(every)
        assert len(trained) <= sum(len(r) for r in every.values())


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="order is one of"):
        probe(LEVELS, FULL, 1, lambda level, i: 0.8, "sideways")


def test_table2_trains_only_the_levels_top_down_needs(tmp_path, minilm_path, glue_dir):
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.report import render
    from nni_bert_tickets.experiments.tables import table2

    from conftest import tiny_checkpoint
    minilm_path = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path)  # the verdict logic needs no 6-layer model
    # a fresh head: no IMP round is a verdict of its own, so every trained level is an extra training from θ0
    config = ExperimentConfig(task="wnli", model=minilm_path, data_dir=glue_dir, max_train_samples=32,
                              max_eval_samples=16, batch_size=16, max_steps=1, max_length=32, target_sparsity=0.4,
                              step=0.1, seeds=2, verdict_seeds=1, baselines=["random_pruning"], baseline_offsets=[0],
                              head="keep", verdict_levels="top_down", experiment="table2",
                              output_root=str(tmp_path)).validate()
    result = table2(config)
    trained = [r["sparsity"] for r in result["rows"]]
    levels = [0.1, 0.2, 0.3, 0.4]
    assert sorted(trained + result["untrained_levels"]) == pytest.approx(levels)
    # top-down: every level above the strict answer was trained, none below it
    strict = result["highest_strictly_matching_sparsity"]
    floor = strict if strict is not None else 0.1
    assert trained == pytest.approx([level for level in levels if level >= floor - 1e-9])
    fresh_units = [p for p in tmp_path.iterdir() if p.name.startswith("imp_fresh_head-")]
    assert len(fresh_units) == len(trained)
    assert result["verdict_levels"] == "top_down" and "top_down levels" in result["imp_row"]
    assert "Table 2" in render(tmp_path).read_text()


def test_an_unknown_verdict_levels_setting_is_refused(tmp_path):
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.verdicts import PROBE_ORDERS
    with pytest.raises(ValueError, match="verdict_levels"):
        ExperimentConfig(task="rte", experiment="table2", output_root=str(tmp_path),
                         verdict_levels="sideways").validate()
    assert not any(tmp_path.iterdir())
    from nni_bert_tickets.experiments.config import choices_of
    assert choices_of("verdict_levels") == PROBE_ORDERS


def test_the_verdict_levels_benchmark_reproduces_its_committed_json(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "verdict_levels.json"
    subprocess.run([sys.executable, str(root / "benchmarks/verdict_levels.py"), "--json", str(out)], check=True,
                   cwd=root, capture_output=True)
    fresh = json.loads(out.read_text())
    committed = json.loads((root / "docs/results/verdict_levels.json").read_text())
    assert fresh.pop("command") == f"python benchmarks/verdict_levels.py --json {out}"
    assert committed.pop("command") == "python benchmarks/verdict_levels.py --json docs/results/verdict_levels.json"
    assert fresh == committed
    for task in fresh["tasks"]:  # top-down is exact by definition; every order trains at most what all does
        assert task["top_down"]["same_answers"]
        assert task["top_down"]["trained"] <= task["all"]["trained"]


def test_verdict_seeds_cost_both_searches_the_same_trainings(tmp_path):
    """--verdict-seeds k adds k - 1 trainings for each decisive level (each criterion's highest matching level and
    the one above it, found here by hand from the single runs) to the full search and to every cheap order alike."""
    import importlib.util
    import json
    from pathlib import Path
    from nni_bert_tickets.experiments.verdicts import matching, strictly_matching
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("verdict_levels", root / "benchmarks" / "verdict_levels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    one, three = tmp_path / "one.json", tmp_path / "three.json"
    bench.main(["--json", str(one)])
    bench.main(["--verdict-seeds", "3", "--json", str(three)])
    a, b = json.loads(one.read_text()), json.loads(three.read_text())
    assert "--verdict-seeds 3" in b["command"] and b["verdict_seeds"] == 3
    for path, x, y in zip(sorted((root / "docs/results/cpu/tables").glob("table2-*.json")), a["tasks"], b["tasks"]):
        table = json.loads(path.read_text())
        first = {r["sparsity"]: r["imp_stats"]["runs"][0] if "imp_stats" in r else r["imp"] for r in table["rows"]}
        levels, decisive = sorted(first), set()
        for test in (matching, strictly_matching):
            passing = [lv for lv in levels if test(first[lv], table["full"])]
            if not passing:
                decisive.add(levels[0])
                continue
            decisive.add(passing[-1])
            decisive.update(lv for lv in levels[levels.index(passing[-1]) + 1:][:1])
        extra = 2 * len(decisive)
        assert y["verdict_seed_trainings"] == extra and x["verdict_seed_trainings"] == 0
        assert y["rounds_full_search_head_rewind"] == x["rounds_full_search_head_rewind"] + extra
        for order in ("all", "top_down", "bisect"):
            assert y[order]["rounds"] == pytest.approx(x[order]["rounds"] + extra)
            assert y[order]["highest_matching"] == x[order]["highest_matching"]
            # a cost both sides pay alike moves the saving towards 1
            assert abs(y[order]["saving_vs_head_rewind"] - 1) <= abs(x[order]["saving_vs_head_rewind"] - 1) + 1e-12
    with pytest.raises(SystemExit):
        bench.main(["--verdict-seeds", "0", "--json", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


def test_the_committed_window5_cost_model_reproduces(tmp_path):
    """docs/results/verdict_levels_window5_seeds3.json (quoted in docs/experiments.md) is what its command makes from
    the committed tables and search-cost files: a table that changes without it being remade fails here."""
    import glob
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    committed = json.loads((root / "docs/results/verdict_levels_window5_seeds3.json").read_text())
    files = sorted(glob.glob(str(root / "docs/results/search_cost_*_window5.json")))
    assert [str(Path(f).relative_to(root)) for f in files] == committed["search_cost"]
    out = tmp_path / "w5.json"
    subprocess.run([sys.executable, "benchmarks/verdict_levels.py", "--search-cost", *committed["search_cost"],
                    "--verdict-seeds", "3", "--json", str(out)], check=True, cwd=root, capture_output=True)
    fresh = json.loads(out.read_text())
    fresh.pop("command"), committed.pop("command")
    assert fresh == committed
