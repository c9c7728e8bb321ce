"""Published tickets: `python -m nni_bert_tickets.experiments.publish` on a tiny run store made here (Table 2 on one
task, an IMP-only run on another), its folders loaded back and checked against the result files and the runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import tiny_checkpoint
from nni_bert_tickets import Ticket
from nni_bert_tickets.core.hub import read_card
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import run_imp
from nni_bert_tickets.experiments.publish import publish
from nni_bert_tickets.experiments.tables import save_imp, table2, ticket_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory, minilm_path, glue_dir):
    root = tmp_path_factory.mktemp("store")
    model = tiny_checkpoint(root / "model", minilm_path)
    base = dict(model=model, data_dir=glue_dir, max_train_samples=32, max_eval_samples=32, max_length=48,
                batch_size=8, max_steps=2, learning_rate=1e-3, target_sparsity=0.3, step=0.1, head="rewind",
                seed=1, seeds=2, baselines=[], output_root=str(root / "runs"), log_level="WARNING")
    table = table2(ExperimentConfig(task="rte", experiment="table2", **base).validate())
    imp_config = ExperimentConfig(task="mrpc", experiment="imp", **base).validate()
    save_imp(imp_config, run_imp(imp_config))
    return root, table, json.loads((root / "runs" / "tables" / "imp-mrpc.json").read_text())


@pytest.fixture(scope="module")
def minilm_path():
    from conftest import MINILM
    return str(MINILM)


@pytest.fixture(scope="module")
def glue_dir():
    from conftest import GLUE
    return str(GLUE)


def test_publish_writes_each_tasks_ticket_at_its_highest_matching_level_from_the_results(store, tmp_path):
    root, table, imp = store
    level = table["highest_winning_sparsity"]
    assert level is not None, "the tiny Table 2 run has no matching level: choose another seed for the test"
    dense = imp["imp_trajectory"][0]["accuracy"]
    imp_level = max(r["sparsity"] for r in imp["imp_trajectory"][1:] if r["accuracy"] >= dense)
    out = tmp_path / "tickets" / "tiny"
    done = subprocess.run([sys.executable, "-m", "nni_bert_tickets.experiments.publish", str(root / "runs"),
                           "--out", str(out), "--base-model", "someone/tiny-bert", "--license", "apache-2.0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = {f"rte-{round(100 * level)}", f"mrpc-{round(100 * imp_level)}"}
    assert {p.name for p in out.iterdir() if p.is_dir()} == folders
    index = (out / "README.md").read_text()
    assert all(f"| {name} |" in index for name in folders)

    model = AutoModelForSequenceClassification.from_pretrained(root / "model")
    for task, result, at in (("rte", table, level), ("mrpc", imp, imp_level)):
        folder = out / f"{task}-{round(100 * at)}"
        ticket = Ticket.from_pretrained(folder)
        run = ticket_at(root / "runs" / result["imp_run"], at)
        assert ticket.sparsity == pytest.approx(at, abs=0.01) and ticket.fingerprint == run.fingerprint
        assert all(torch.equal(ticket.masks[k], run.masks[k]) for k in run.masks)
        assert ticket.base_model == "someone/tiny-bert" and ticket.task == task
        ticket.apply(AutoModelForSequenceClassification.from_pretrained(root / "model"))  # its base weights
        meta = read_card(folder / "README.md")
        facts = meta["ticket"]
        assert meta["base_model"] == "someone/tiny-bert" and meta["license"] == "apache-2.0"
        assert facts["metric"] == "accuracy" and facts["sparsity"] == pytest.approx(ticket.sparsity)
        if task == "rte":
            (row,) = [r for r in table["rows"] if abs(r["sparsity"] - at) < 1e-6]
            assert facts["value"] == row["imp"] and facts["full_model"] == table["full"]
            assert meta["model-index"][0]["results"][0]["dataset"] == {"name": "nyu-mll/glue rte",
                                                                       "type": "nyu-mll/glue", "config": "rte"}
        else:
            (row,) = [r for r in imp["imp_trajectory"] if abs(r["sparsity"] - at) < 1e-6]
            assert facts["value"] == row["accuracy"] and facts["full_model"]["mean"] == dense
        assert result["imp_run"] in (folder / "README.md").read_text()
    del model

    # an explicit level, and a rerun at another level replaces the task's old folder
    publish(root / "runs", out, base_model="someone/tiny-bert", levels={"mrpc": 0.1}, tasks=["mrpc"])
    assert {p.name for p in out.iterdir() if p.is_dir()} == {f"rte-{round(100 * level)}", "mrpc-10"}
    assert Ticket.from_pretrained(out / "mrpc-10").sparsity == pytest.approx(0.1, abs=0.01)


def test_publish_refuses_bad_input_before_writing(store, tmp_path):
    root, _, _ = store
    with pytest.raises(FileNotFoundError, match="holds no table2-<task>.json or imp-<task>.json"):
        publish(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match=r"no result for \['sst2'\]"):
        publish(root / "runs", tmp_path / "out", tasks=["sst2"])
    with pytest.raises(ValueError, match="imp-mrpc.json has no level 0.55"):
        publish(root / "runs", tmp_path / "out", levels={"mrpc": 0.55}, tasks=["mrpc"])
    with pytest.raises(FileNotFoundError, match="names the IMP run imp-rte-.* pass the output_root"):
        publish(tmp_path, tmp_path / "out", tables=root / "runs" / "tables", tasks=["rte"])
    # a store that holds MRPC's run but not RTE's: refused before MRPC's folder (first in order) is written
    partial = tmp_path / "partial"
    partial.mkdir()
    (imp_run,) = [p for p in (root / "runs").iterdir() if p.name.startswith("imp-mrpc-")]
    (partial / imp_run.name).symlink_to(imp_run)
    with pytest.raises(FileNotFoundError, match="names the IMP run imp-rte-"):
        publish(partial, tmp_path / "out", tables=root / "runs" / "tables", tasks=["mrpc", "rte"])
    with pytest.raises(ValueError, match="table2-rte.json has no level 0.55"):  # mrpc's level (first) is fine
        publish(root / "runs", tmp_path / "out", levels={"mrpc": 0.1, "rte": 0.55})
    assert not (tmp_path / "out").exists()


def test_the_card_names_the_data_that_trained_the_ticket(tmp_path):
    from nni_bert_tickets.experiments.publish import _data
    wikitext = tmp_path / "wikitext2"
    wikitext.mkdir()
    for name in ("valid.txt", "test.txt"):
        (wikitext / name).write_text("some text\n")
    mlm = {"task": "mlm", "settings": {"data_dir": str(wikitext), "max_train_samples": None}}
    assert _data(mlm) == f"valid.txt of {wikitext} trains, test.txt evaluates"  # the copy without a train split
    for name in ("train.txt", "validation.txt"):
        (wikitext / name).write_text("some text\n")
    assert _data(mlm) == f"train.txt of {wikitext} trains, validation.txt evaluates"
    squad = {"task": "squad", "settings": {"squad_train_articles": 38, "max_train_samples": 2000}}
    assert _data(squad) == ("a re-split of the SQuAD v1.1 dev set: its first 38 articles train (at most 2000 "
                            "examples), the rest evaluate")
    assert _data({"task": "rte", "settings": {"max_train_samples": None}}) == "the full training set"
    assert _data({"task": "sst2", "settings": {"max_train_samples": 5000}}) == "5000 training examples"
