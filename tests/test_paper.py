"""The paper's experiments at a tiny budget (a 2-layer model with the embedded tokenizer, real data): reuse of runs,
verdicts, the report."""
import dataclasses
import json
import logging
import math

import pytest
import yaml

from conftest import SHARED, tiny_checkpoint
from nni_bert_tickets.experiments import report
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.core.imp_state import ticket_file
from nni_bert_tickets.experiments.imp_run import imp_run_dir
from nni_bert_tickets.experiments.tables import imp_ticket, table2, table3, transfer
from nni_bert_tickets.training.loop import FineTuner


@pytest.fixture
def counted(monkeypatch):
    calls = []
    original = FineTuner.train

    def train(self, *args, **kwargs):
        calls.append(self.task.name)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FineTuner, "train", train)
    return calls


@pytest.fixture
def tiny_path(tmp_path_factory, minilm_path):
    """The experiments' logic needs no 6-layer model: a 2-layer one with the same tokenizer (SQuAD takes 96 tokens)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"), minilm_path, positions=128)


def _config(tmp_path, minilm_path, glue_dir, **overrides):
    settings = dict(task="wnli", model=minilm_path, data_dir=glue_dir, max_train_samples=32, max_eval_samples=16,
                    batch_size=16, max_steps=1, max_length=32, target_sparsity=0.2, step=0.1, seeds=2,
                    baselines=["random_pruning", "random_reinit", "shuffled"], baseline_sparsities=[0.2],
                    rewind_points=[0.0, 0.5], transfer_tasks=["wnli", "rte"], transfer_sparsity=0.1,
                    transfer_sources=["mlm"], mlm_data_dir=str(SHARED / "data" / "wikitext2"),
                    head="rewind", output_root=str(tmp_path))
    settings.update(overrides)
    return ExperimentConfig(**settings).validate()


def test_tables_share_runs_and_never_recompute(tmp_path, tiny_path, glue_dir, counted):
    config = _config(tmp_path, tiny_path, glue_dir)
    t2 = table2(config)
    assert len(counted) == 2 + 3 + 3  # 2 full-model seeds, IMP rounds 0/0.1/0.2, 3 baselines at 0.2
    assert [r["sparsity"] for r in t2["rows"]] == [0.1, 0.2]
    assert set(t2["rows"][1]) >= {"imp", "random_pruning", "random_reinit", "shuffled", "matching"}
    assert "random_pruning" not in t2["rows"][0]
    full = t2["full"]
    for row in t2["rows"]:
        assert row["matching"] == (row["imp"] >= full["mean"] - full["std"])
    winners = [r["sparsity"] for r in t2["rows"] if r["matching"]]
    assert t2["highest_winning_sparsity"] == (max(winners) if winners else None)

    counted.clear()  # head carried across rounds: the IMP row is the mask retrained from θ0 with a fresh head
    kept = table2(_config(tmp_path, tiny_path, glue_dir, head="keep", baselines=["random_pruning"]))
    assert len(counted) == 3 + 2 + 1  # its own IMP run, imp_fresh_head at both levels, one baseline; full reused
    assert all("imp_carried_head" in r for r in kept["rows"]) and kept["imp_row"].startswith("IMP mask retrained")
    assert "imp_carried_head" not in t2["rows"][0] and t2["imp_row"].startswith("head rewound")

    counted.clear()
    t3 = table3(config)
    # θ0 IMP and full models are reused; the 50 % row trains round 0 once more to take θ at 50 % (Table 2's run
    # asked for no snapshots) and its two rounds; standard pruning reads that round 0 back and trains its two
    assert len(counted) == 3 + 2
    assert [r["rewind"] for r in t3["rows"]] == ["0%", "50%", "standard pruning"]
    assert t3["rows"][0]["metric"] == t2["rows"][-1]["imp"]

    counted.clear()  # a SQuAD source comes from its own config (its own length, the dev set re-split)
    squad = tmp_path / "squad.yaml"
    squad.write_text(yaml.safe_dump(dict(task="squad", model=tiny_path, data_dir=str(SHARED / "data"),
                                         squad_train_articles=38, max_train_samples=24, max_eval_samples=8,
                                         max_length=96, doc_stride=32, batch_size=8, max_steps=1,
                                         target_sparsity=0.2, step=0.1)))
    config = dataclasses.replace(config, transfer_sources=["mlm", str(squad)]).validate()
    tr = transfer(config)
    # rte, mlm and squad need their IMP runs (3 rounds each), rte its full models (2); 4 sources x 2 targets;
    # 2 one-shot rows; wnli's runs are reused
    assert len(counted) == 3 + 3 + 3 + 2 + 8 + 2
    assert set(tr["matrix"]) == {"wnli", "rte", "mlm", "squad", "oneshot"}
    assert set(tr["matrix"]["squad"]) == {"wnli", "rte"}
    own, std = tr["matrix"]["wnli"]["wnli"], tr["full"]["wnli"]["std"]
    assert tr["at_least_own_ticket"]["rte"] == int(tr["matrix"]["rte"]["wnli"] >= own - std - 1e-9)
    mean = tr["full"]["wnli"]["mean"]
    assert ("wnli" in tr["matching_targets"]["squad"]) == (tr["matrix"]["squad"]["wnli"] >= mean - std - 1e-9)

    counted.clear()
    table2(config), table3(config), transfer(config)
    assert counted == []  # everything is cached

    imp_ticket(config, 0.1).save(tmp_path / "shared-ticket.safetensors")  # a ticket file is a source too
    rewound = _config(tmp_path, tiny_path, glue_dir, rewind=1, transfer_tasks=["wnli"],
                      transfer_sources=[str(tmp_path / "shared-ticket.safetensors")])
    fig4 = transfer(rewound)  # Figure 4: tickets found with rewinding carry θ1 of the source into the target
    assert fig4["rewind"] == 1 and imp_ticket(rewound, 0.1).weights is not None
    assert set(fig4["matrix"]) == {"wnli", "shared-ticket", "oneshot"}
    assert (tmp_path / "tables" / "transfer-matrix-rewind-1.json").exists()
    # finished cells read no ticket: a θi run's last ticket (it holds θi) may be gone once its row is done
    rewound_run = imp_run_dir(rewound) / "imp"
    final = rewound_run / ticket_file(json.loads((rewound_run / "trajectory.json").read_text())[-1]["round"])
    final.unlink()
    counted.clear()
    assert transfer(rewound)["matrix"] == fig4["matrix"] and counted == []
    with pytest.raises(FileNotFoundError, match="run it again"):  # read directly: named, with the way back
        imp_ticket(rewound, 0.1)

    out = report.render(tmp_path, tmp_path / "report")
    text = out.read_text()
    assert "## Table 2" in text and "## Table 3" in text and "## Figure 3" in text
    assert "| highest winning sparsity |" in text and "| standard pruning |" in text
    for png in ("table2-wnli.png", "table3.png", "transfer.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000
    saved = json.loads((tmp_path / "tables" / "table2-wnli.json").read_text())
    assert saved["rows"] == t2["rows"]


def test_glue_tickets_transfer_onto_squad_and_mlm_targets(tmp_path, tiny_path, glue_dir, caplog):
    """GLUE → SQuAD/MLM inside the transfer experiment (the other direction is in the test above): a WNLI ticket
    (with a pooler mask) and the SQuAD and MLM tickets, each trained on SQuAD and on MLM with a fresh head."""
    squad = dict(data_dir=str(SHARED / "data"), squad_train_articles=38, max_train_samples=24, max_eval_samples=8,
                 max_length=96, doc_stride=32, batch_size=8)
    config = _config(tmp_path, tiny_path, glue_dir, experiment="transfer", target_sparsity=0.1,
                     baseline_sparsities=[0.1],
                     transfer_tasks=["squad", "mlm"], transfer_sources=["wnli"], task_overrides={"squad": squad})
    with caplog.at_level(logging.INFO):
        tr = transfer(config)
    assert tr["sources"] == ["squad", "mlm", "wnli"]
    assert {s: sorted(row) for s, row in tr["matrix"].items()} == {
        s: ["mlm", "squad"] for s in ("squad", "mlm", "wnli", "oneshot")}
    assert all(math.isfinite(v) for row in tr["matrix"].values() for v in row.values())
    assert tr["metrics"] == {"squad": "f1", "mlm": "accuracy"}
    # the WNLI ticket's pooler mask was dropped on the way to SQuAD and to MLM
    assert caplog.text.count("the model has no pooler: the ticket's pooler mask") >= 2
    assert sorted(tr["matching_targets"]) == ["mlm", "oneshot", "squad", "wnli"]


def test_a_transfer_source_that_names_no_ticket_is_refused_before_training(tmp_path, minilm_path, glue_dir):
    for source, match in (("nothing", "names no task"), (str(tmp_path / "missing.safetensors"), "no such file"),
                          (str(tmp_path / "missing.yaml"), "no such file")):
        with pytest.raises(ValueError, match=match):
            _config(tmp_path, minilm_path, glue_dir, experiment="transfer", transfer_sources=[source])
    (tmp_path / "not-a-ticket.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable ticket"):
        _config(tmp_path, minilm_path, glue_dir, experiment="transfer",
                transfer_sources=[str(tmp_path / "not-a-ticket.safetensors")])
    assert not (tmp_path / "tables").exists()


def test_report_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        report.render(tmp_path)
