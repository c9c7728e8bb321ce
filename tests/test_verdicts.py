"""Table 2's verdicts over seeds: decisive levels, the strict criterion, the lead's interval, and the runner."""
import pytest
from scipy import stats as st

from nni_bert_tickets.experiments.verdicts import (decisive_levels, highest, lead_interval, settle, stats,
                                                   strictly_matching)

FULL = stats([0.80, 0.82, 0.78])  # mean 0.80, sample std 0.02


def test_stats_use_the_sample_std():
    assert FULL["std"] == pytest.approx(0.02) and FULL["n"] == 3 and stats([0.5])["std"] is None


def test_decisive_levels_under_both_criteria():
    runs = {0.1: [0.81], 0.2: [0.79], 0.3: [0.785], 0.4: [0.70], 0.5: [0.60]}
    assert highest(runs, FULL) == 0.3 and highest(runs, FULL, strict=True) == 0.1
    assert decisive_levels(runs, FULL) == [0.1, 0.2, 0.3, 0.4]
    assert decisive_levels({0.1: [0.5], 0.2: [0.4]}, FULL) == [0.1]  # nothing matches: the lowest level
    assert decisive_levels({0.1: [0.9], 0.2: [0.9]}, FULL) == [0.2]  # the top level has nothing above it
    assert strictly_matching(0.80, FULL) and not strictly_matching(0.799, FULL)


def test_settle_follows_a_verdict_that_flips():
    # single runs: 0.4 looks matching (a lucky seed); its other seeds are far below, so the answer moves to 0.3,
    # which then needs its own seeds, and 0.4 (above it) keeps its three
    later = {0.1: 0.80, 0.2: 0.80, 0.3: 0.79, 0.4: 0.70, 0.5: 0.60}
    trained = []

    def train(level, i):
        trained.append((level, i))
        return later[level]
    runs = settle({0.1: [0.80], 0.2: [0.80], 0.3: [0.79], 0.4: [0.81], 0.5: [0.60]}, FULL, 3, train)
    assert highest(runs, FULL) == 0.3
    assert highest(runs, FULL, strict=True) == 0.2
    # 0.4 and 0.5 were decisive first; then 0.3 (the new answer) and 0.2 (the strict one); 0.1 never was
    assert {level for level, r in runs.items() if len(r) == 3} == {0.2, 0.3, 0.4, 0.5} and runs[0.1] == [0.80]
    assert len(trained) == len(set(trained))  # no run trained twice
    assert all(i in (1, 2) for _, i in trained)  # the first run of each level is the IMP run's own


def test_lead_interval_equals_welch_from_scipy():
    a, b = [0.80, 0.82, 0.81], [0.70, 0.72, 0.69, 0.71]
    lead = lead_interval(a, b)
    reference = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert lead["low"] == pytest.approx(reference.low) and lead["high"] == pytest.approx(reference.high)
    assert lead["excludes_zero"] is True and lead["n"] == [3, 4]
    close = lead_interval([0.80, 0.70, 0.75], [0.74, 0.76, 0.72])
    assert close["low"] < 0 < close["high"] and close["excludes_zero"] is False
    single = lead_interval([0.8], [0.7])
    assert single["lead"] == pytest.approx(0.1) and single["low"] is None and single["excludes_zero"] is None


def test_table2_trains_seeds_at_the_decisive_levels(tmp_path, minilm_path, glue_dir):
    from nni_bert_tickets.experiments.config import ExperimentConfig
    from nni_bert_tickets.experiments.tables import table2

    from conftest import tiny_checkpoint
    minilm_path = tiny_checkpoint(tmp_path / "tiny-bert", minilm_path)  # the verdict logic needs no 6-layer model
    config = ExperimentConfig(task="wnli", model=minilm_path, data_dir=glue_dir, max_train_samples=32,
                              max_eval_samples=16, batch_size=16, max_steps=1, max_length=32, target_sparsity=0.2,
                              step=0.1, seeds=2, verdict_seeds=2, baselines=["random_pruning"],
                              baseline_offsets=[0], head="rewind", experiment="table2",
                              output_root=str(tmp_path)).validate()
    result = table2(config)
    rows = {r["sparsity"]: r for r in result["rows"]}
    runs = {level: row["imp_stats"]["runs"] for level, row in rows.items()}
    decisive = decisive_levels(runs, result["full"])
    assert all(rows[level]["imp_stats"]["n"] == 2 for level in decisive)
    assert all(row["imp_stats"]["n"] == 1 for level, row in rows.items() if level not in decisive)
    trajectory = {r["sparsity"]: r["accuracy"] for r in result["imp_trajectory"]}
    assert all(row["imp_stats"]["runs"][0] == trajectory[level] for level, row in rows.items())  # the IMP run's own
    top = result["highest_winning_sparsity"]
    assert rows[top]["random_pruning_stats"]["n"] == 2 and result["lead"]["baseline"] == "random_pruning"
    assert result["lead"]["n"] == [2, 2] and result["lead"]["sparsity"] == top
    assert result["matching_up_to_highest"] == all(rows[s]["matching"] for s in rows if s <= top)
    contiguous = result["highest_contiguous_matching_sparsity"]
    below = [s for s in sorted(rows) if contiguous is not None and s <= contiguous]
    assert all(rows[s]["matching"] for s in below)
    assert contiguous == max(rows) or not rows[min((s for s in rows if s > (contiguous or -1)))]["matching"]

    from nni_bert_tickets.experiments.report import render
    text = render(tmp_path).read_text()
    stats_top = rows[top]["imp_stats"]
    assert f"{100 * stats_top['mean']:.1f} ± {100 * stats_top['std']:.1f} (2)" in text
    assert f"IMP leads the best baseline (random pruning) by {100 * result['lead']['lead']:+.1f} points" in text


@pytest.mark.parametrize("bad, message", [({"verdict_seeds": 0}, "verdict_seeds"),
                                          ({"verdict_seeds": 1.5}, "verdict_seeds"),
                                          ({"seeds": 1}, "no standard deviation")])
def test_verdict_settings_are_refused_before_training(bad, message, tmp_path):
    from nni_bert_tickets.experiments.config import ExperimentConfig
    with pytest.raises(ValueError, match=message):
        ExperimentConfig(task="rte", experiment="table2", output_root=str(tmp_path), **bad).validate()
    assert not any(tmp_path.iterdir())


def test_the_contiguous_answer_ignores_a_lucky_level_above_a_failing_one():
    from nni_bert_tickets.experiments.verdicts import highest_contiguous
    # RTE at 4 epochs had this shape: matching to 60 %, failing at 70 and 80 %, one lucky pass at 90 %
    passed = {0.9: True, 0.1: True, 0.2: True, 0.6: True, 0.7: False, 0.8: False}
    assert highest_contiguous(passed) == 0.6
    assert highest_contiguous({0.1: False, 0.2: True}) is None
    assert highest_contiguous({0.1: True, 0.2: True}) == 0.2
    assert highest_contiguous({}) is None


def test_lead_at_uses_the_stored_runs_of_the_best_baseline_and_falls_back_to_one_run_a_cell():
    from nni_bert_tickets.experiments.verdicts import lead_at, lead_interval
    rows = [{"sparsity": 0.5, "imp": 0.60, "imp_stats": {"runs": [0.59, 0.60, 0.61]},
             "random_pruning": 0.55, "random_pruning_stats": {"runs": [0.54, 0.55, 0.56]},
             "random_reinit": 0.57, "random_reinit_stats": {"runs": [0.50, 0.57, 0.64]}},
            {"sparsity": 0.7, "imp": 0.52, "random_pruning": 0.50}]
    baselines = ["random_pruning", "random_reinit"]
    lead = lead_at(rows, 0.5, baselines)
    assert lead["baseline"] == "random_reinit" and lead["sparsity"] == 0.5
    assert lead == {"sparsity": 0.5, "baseline": "random_reinit",
                    **lead_interval([0.59, 0.60, 0.61], [0.50, 0.57, 0.64])}
    old = lead_at(rows, 0.7, baselines)  # a row stored before runs were kept: a point lead, no interval
    assert old["lead"] == pytest.approx(0.02) and old["low"] is None and old["n"] == [1, 1]
    assert lead_at(rows, 0.9, baselines) is None and lead_at(rows, None, baselines) is None
