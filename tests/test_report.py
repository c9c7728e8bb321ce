"""The report prints every task's metric in points: fractions × 100, SQuAD's percentages as they are."""
import json
import re
from pathlib import Path

import pytest

from nni_bert_tickets.experiments import report, verdicts
from nni_bert_tickets.tasks import get_task, task_names

# SQuAD's F1 / EM are percentages; GLUE's and MLM's metrics are fractions
SQUAD = {"full": 88.25, "std": 0.5, "imp": 87.75, "random_pruning": 61.25, "table3": 86.5, "to_sst2": 0.8125}
SST2 = {"full": 0.9125, "std": 0.0025, "imp": 0.9075, "random_pruning": 0.8525, "table3": 0.9025, "to_squad": 71.5}


def _table2(task, v):
    return {"experiment": "table2", "model": "m", "task": task, "metric": "f1" if task == "squad" else "accuracy",
            "full": {"runs": [v["full"] - v["std"], v["full"] + v["std"]], "mean": v["full"], "std": v["std"]},
            "rows": [{"sparsity": 0.4, "imp": v["imp"], "matching": True, "random_pruning": v["random_pruning"]}],
            "baselines": ["random_pruning"], "highest_winning_sparsity": 0.4}


def _table3(task, v):
    return {"experiment": "table3", "model": "m", "task": task, "metric": "?",
            "full": {"runs": [v["full"]], "mean": v["full"], "std": 0.0},
            "rows": [{"rewind": "0%", "metric": v["table3"], "matching": False}]}


def _transfer():
    matrix = {"sst2": {"sst2": SST2["imp"], "squad": SST2["to_squad"]},
              "squad": {"sst2": SQUAD["to_sst2"], "squad": SQUAD["imp"]},
              "oneshot": {"sst2": SST2["random_pruning"], "squad": SQUAD["random_pruning"]}}
    return {"experiment": "transfer", "model": "m", "tasks": ["sst2", "squad"], "sources": ["sst2", "squad"],
            "sparsity": 0.4, "matrix": matrix, "rewind": 0, "at_least_own_ticket": {"sst2": 0, "squad": 0, "oneshot": 0},
            "full": {"sst2": {"mean": SST2["full"]}, "squad": {"mean": SQUAD["full"]}}}


@pytest.fixture
def root(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    for name, result in {"table2-squad": _table2("squad", SQUAD), "table2-sst2": _table2("sst2", SST2),
                         "table3-squad": _table3("squad", SQUAD), "table3-sst2": _table3("sst2", SST2),
                         "transfer-matrix": _transfer()}.items():
        (tables / f"{name}.json").write_text(json.dumps(result))
    return tmp_path


def _row(text, label):
    (line,) = [l for l in text.splitlines() if l.startswith(f"| {label} |")]
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_every_task_states_its_metric_scale_once():
    scales = {name: get_task(name).metric_scale for name in task_names()}
    assert scales["squad"] == 1 and scales["mlm"] == 100
    assert all(scales[t] == 100 for t in task_names() if t not in ("squad", "mlm"))


def test_report_shows_squad_percentages_as_they_are_and_fractions_times_100(root):
    text = report.render(root, root / "out").read_text()
    sections = re.split(r"^## ", text, flags=re.M)
    table2 = next(s for s in sections if s.startswith("Table 2"))
    # the summary: columns squad, sst2 (results sorted by file name)
    assert _row(table2, "full model (mean ± std)") == ["88.2 ± 0.5", "91.2 ± 0.2"]
    assert _row(table2, "IMP (m_IMP ⊙ θ0)") == ["87.8", "90.8"]
    assert _row(table2, "random pruning") == ["61.2", "85.2"]
    assert "### squad (f1; full model 88.2 ± 0.5 over 2 seeds)" in table2
    table3 = next(s for s in sections if s.startswith("Table 3"))
    assert _row(table3, "full model") == ["88.2", "91.2"] and _row(table3, "0%") == ["86.5", "90.2"]
    figure3 = next(s for s in sections if s.startswith("Figure 3"))  # columns are target tasks: sst2, squad
    assert _row(figure3, "sst2")[:2] == ["90.8", "71.5"] and _row(figure3, "squad")[:2] == ["81.2", "87.8"]
    assert _row(figure3, "oneshot")[:2] == ["85.2", "61.2"] and _row(figure3, "full model")[:2] == ["91.2", "88.2"]
    numbers = [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d(?!\d)", text)]
    assert numbers and max(numbers) <= 100  # no F1 of 8,800
    for png in ("table3.png", "transfer.png", "table2-squad.png"):
        assert (root / "out" / png).stat().st_size > 5000


def test_every_metric_of_each_imp_level_is_listed_as_returned(root):
    squad = {**_table2("squad", SQUAD), "imp_run": "imp-squad-x",
             "imp_trajectory": [{"sparsity": 0.0, "exact_match": 80.5, "f1": 88.25},
                                {"sparsity": 0.4, "exact_match": 79.25, "f1": 87.75}]}
    (root / "tables" / "table2-squad.json").write_text(json.dumps(squad))
    text = report.render(root).read_text()
    assert "### squad: the IMP run (imp-squad-x), every metric per level" in text
    section = text.split("(imp-squad-x), every metric per level", 1)[1].split("\n\n#", 1)[0]
    assert "| sparsity | exact_match | f1 |" in section
    assert _row(section, "40%") == ["79.25", "87.75"] and _row(section, "0%") == ["80.5", "88.25"]
    assert not (root / "report" / "imp-squad.png").exists()  # Table 2 runs already have their plot


def test_transfer_bolds_and_counts_by_one_std_and_names_universal_tickets():
    # targets rte, mrpc: full model rte 80 ± 2, mrpc 60 ± 1 (as fractions); own tickets 79 and 60
    matrix = {"rte": {"rte": 0.79, "mrpc": 0.595},  # on mrpc: 0.5 below own, within mrpc's std: bold, matching
              "mrpc": {"rte": 0.765, "mrpc": 0.60},  # on rte: 2.5 below own, beyond its std: plain, not matching
              "oneshot": {"rte": 0.70, "mrpc": 0.50}}
    result = {"experiment": "transfer", "tasks": ["rte", "mrpc"], "sources": ["rte", "mrpc"], "sparsity": 0.5,
              "matrix": matrix, "full": {"rte": {"mean": 0.80, "std": 0.02}, "mrpc": {"mean": 0.60, "std": 0.01}}}
    text = report.transfer_markdown(result)
    assert _row(text, "rte") == ["79.0", "**59.5**", "1", "2"]
    assert _row(text, "mrpc") == ["76.5", "60.0", "0", "1"]
    assert _row(text, "oneshot") == ["70.0", "50.0", "0", "0"]
    assert "Universal (matching on all 2 targets): rte." in text


def test_verdicts_count_the_threshold_and_never_a_missing_run():
    full = {"mean": 0.80, "std": 0.02}
    assert verdicts.matching(0.78, full) and verdicts.matching(0.80 - 0.02, full)  # exactly one std below counts
    assert not verdicts.matching(0.7799, full) and not verdicts.matching(None, full)
    assert verdicts.matching(0.80, {"mean": 0.80})  # one seed: no std, the mean itself


@pytest.mark.parametrize("name", ["transfer-matrix", "transfer-matrix-4-epochs", "transfer-matrix-rewind-0.05"])
def test_report_renders_the_verdicts_the_transfer_table_stored(name):
    # the committed CPU Figures 3 and 4, written by tables.transfer: the report's counts must be the stored ones
    result = json.loads((Path(__file__).parents[1] / f"docs/results/cpu/tables/{name}.json").read_text())
    text = report.transfer_markdown(result)
    for source in [*result["sources"], "oneshot"]:
        *_, at_least_own, matching = _row(text, source)
        assert int(at_least_own) == result["at_least_own_ticket"][source], source
        assert int(matching) == len(result["matching_targets"][source]), source


def test_rewinding_is_compared_with_theta0_cell_by_cell():
    full = {"rte": {"mean": 0.80, "std": 0.02}, "mrpc": {"mean": 0.60, "std": 0.01}}
    theta0 = {"experiment": "transfer", "tasks": ["rte", "mrpc"], "sources": ["rte", "mrpc"], "sparsity": 0.5,
              "rewind": 0, "full": full, "matrix": {"rte": {"rte": 0.79, "mrpc": 0.57}, "mrpc": {"rte": 0.70, "mrpc": 0.60},
                                                    "oneshot": {"rte": 0.70, "mrpc": 0.50}}}
    rewound = {**theta0, "rewind": 0.05, "matrix": {"rte": {"rte": 0.80, "mrpc": 0.595}, "mrpc": {"rte": 0.70, "mrpc": 0.60},
                                                    "oneshot": {"rte": 0.70, "mrpc": 0.50}}}
    text = report.rewind_comparison_markdown(theta0, rewound)
    # rte → mrpc moves from 3 below mrpc's own ticket (not ≥ own, not matching) to 0.5 below (both, at std 1)
    assert _row(text, "rte") == ["+1.0", "+2.5", "0 → 1", "1 → 2"]
    assert _row(text, "mrpc") == ["+0.0", "+0.0", "0 → 0", "1 → 1"]
    assert _row(text, "oneshot") == ["+0.0", "+0.0", "0 → 0", "0 → 0"]


def test_rewinding_is_compared_only_with_a_theta0_matrix_trained_alike(tmp_path):
    # the committed θ0 matrix was trained 2 epochs; a θi matrix at 4 must not be set against it
    tables = tmp_path / "tables"
    tables.mkdir()
    theta0 = json.loads((Path(__file__).parents[1] / "docs/results/cpu/tables/transfer-matrix.json").read_text())
    tasks = ["mrpc", "stsb"]
    rewound = {**theta0, "rewind": 0.05, "tasks": tasks, "sources": tasks,
               "settings": {**theta0["settings"], "rewind": 0.05, "epochs": theta0["settings"]["epochs"] + 2}}
    for name, result in {"transfer-matrix": theta0, "transfer-matrix-rewind-0.05": rewound}.items():
        (tables / f"{name}.json").write_text(json.dumps(result))
    text = report.render(tmp_path, tmp_path / "out").read_text()
    assert "No θ0 matrix trained as this one was" in text and "| source \\ target |" in text  # Figure 3 still shown
    assert "≥ own θ0 → θi" not in text
    rewound["settings"]["epochs"] = theta0["settings"]["epochs"]  # trained alike: compared cell by cell
    (tables / "transfer-matrix-rewind-0.05.json").write_text(json.dumps(rewound))
    text = report.render(tmp_path, tmp_path / "out").read_text()
    assert "≥ own θ0 → θi" in text and "No θ0 matrix" not in text


def test_the_summary_states_each_tasks_epochs_and_trainings_per_verdict(tmp_path):
    # tasks rerun at a new setting sit beside older results: the summary says which rests on what
    tables = tmp_path / "tables"
    tables.mkdir()
    old, new = _table2("sst2", SST2), _table2("squad", SQUAD)
    old["settings"] = {"epochs": 2.0}
    new.update(settings={"epochs": 4}, verdict_seeds=3)
    for name, result in {"table2-sst2": old, "table2-squad": new}.items():
        (tables / f"{name}.json").write_text(json.dumps(result))
    table2 = report.table2_markdown(report._load(tmp_path))
    assert _row(table2, "epochs a training · trainings per verdict") == ["4 · 3", "2 · 1"]


def test_answers_missing_from_older_results_are_derived_from_their_rows_not_shown_as_none(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    old = _table2("sst2", SST2)  # stored before the strict answer, the contiguity flag and the lead existed
    old["rows"] = [{"sparsity": 0.1, "imp": 0.92, "matching": True},
                   {"sparsity": 0.2, "imp": 0.90, "matching": False},
                   {"sparsity": 0.3, "imp": 0.9105, "matching": True, "random_pruning": 0.85}]
    old["highest_winning_sparsity"] = 0.3
    new = _table2("squad", SQUAD)
    new.update(highest_strictly_matching_sparsity=None, matching_up_to_highest=True)
    for name, result in {"table2-sst2": old, "table2-squad": new}.items():
        (tables / f"{name}.json").write_text(json.dumps(result))
    table2 = report.table2_markdown(report._load(tmp_path))
    assert _row(table2, "highest strictly matching (≥ mean)") == ["none", "10%"]  # 0.92 ≥ 0.9125 > 0.9105
    assert _row(table2, "matching at every level up to it") == ["yes", "no"]
    assert _row(table2, "highest with every level below matching") == ["40%", "10%"]
    assert _row(table2, "IMP lead over the best baseline there [95 % interval]")[1] == "+6.0 (n = 1)"


def test_two_theta0_matrices_get_a_plot_each(tmp_path):
    # a θ0 twin trained at 4 epochs beside Figure 3 at 2: neither plot may overwrite the other
    tables = tmp_path / "tables"
    tables.mkdir()
    theta0 = json.loads((Path(__file__).parents[1] / "docs/results/cpu/tables/transfer-matrix.json").read_text())
    twin = {**theta0, "settings": {**theta0["settings"], "epochs": theta0["settings"]["epochs"] + 2}}
    twin["matrix"] = {s: {t: v / 2 for t, v in row.items()} for s, row in theta0["matrix"].items()}
    for name, result in {"transfer-matrix": theta0, "transfer-matrix-twin": twin}.items():
        (tables / f"{name}.json").write_text(json.dumps(result))
    text = report.render(tmp_path, tmp_path / "out").read_text()
    epochs = theta0["settings"]["epochs"]
    names = [f"transfer-{epochs:g}-epochs.png", f"transfer-{epochs + 2:g}-epochs.png"]
    assert all(f"]({n})" in text for n in names) and "](transfer.png)" not in text
    first, second = ((tmp_path / "out" / n).read_bytes() for n in names)
    assert first != second
    # and their sections say which is which
    assert f"## Figure 3: transfer of 60% tickets (θ0 tickets; {epochs:g} epochs)" in text
    assert f"## Figure 3: transfer of 60% tickets (θ0 tickets; {epochs + 2:g} epochs)" in text
    # a lone θ0 matrix keeps its plain name
    (tables / "transfer-matrix-twin.json").unlink()
    assert "](transfer.png)" in report.render(tmp_path, tmp_path / "out2").read_text()


def test_a_theta_i_matrix_is_labelled_figure_4_with_its_rewinding_point():
    result = json.loads((Path(__file__).parents[1] / "docs/results/cpu/tables/transfer-matrix-rewind-0.05.json").read_text())
    figure, how = report._transfer_label(result)
    assert (figure, how) == ("Figure 4", "tickets found with rewinding to θi, i = 5 % of training; 4 epochs")
    assert report.transfer_markdown(result).startswith(f"## Figure 4: transfer of 60% tickets ({how})")
    assert report._transfer_label({"rewind": 0})[0] == "Figure 3"


_REPORTS = sorted(p.parent for p in (Path(__file__).parents[1] / "docs/results").rglob("report.md")
                  if (p.parent / "tables").is_dir())


@pytest.mark.parametrize("folder", _REPORTS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_each_committed_report_is_what_its_committed_tables_render(folder, tmp_path):
    # every number on the results pages comes from a committed JSON: the committed report.md must be exactly what
    # `python -m nni_bert_tickets.experiments.report <folder> --out <folder>` writes from the tables beside it
    assert report.render(folder, tmp_path).read_text() == (folder / "report.md").read_text()


def test_the_cpu_report_compares_figure_4_with_its_theta0_twin():
    text = (Path(__file__).parents[1] / "docs/results/cpu/report.md").read_text()
    assert "## Does rewinding to θi transfer better than θ0?" in text and "No θ0 matrix" not in text
    assert len(_REPORTS) >= 5  # cpu, the dense grid and its three sub-grids
