"""SQuAD's dev re-split by article, the MLM head warm-up that makes θ0 for MLM tickets, and their bad input,
on the real offline data (../shared/data/squad, ../shared/data/wikitext2)."""
import pytest
import torch

from conftest import SHARED
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare, run_imp
from nni_bert_tickets.tasks import DataError
from nni_bert_tickets.core.targets import base_prefix
from nni_bert_tickets.tasks import get_task
from nni_bert_tickets.core.ticket import Ticket
from nni_bert_tickets.training.loop import FineTuner

SQUAD = SHARED / "data"
WIKITEXT = SHARED / "data" / "wikitext2"


def test_squad_dev_resplit_by_article_has_no_shared_paragraph():
    config = ExperimentConfig(task="squad", data_dir=str(SQUAD), squad_train_articles=38)
    data = get_task("squad").load(config)
    train_titles, eval_titles = set(data["train"]["title"]), set(data["validation"]["title"])
    assert len(train_titles) == 38 and len(eval_titles) == 10 and not train_titles & eval_titles
    assert len(data["train"]) + len(data["validation"]) == 10570
    assert not set(data["train"]["context"]) & set(data["validation"]["context"])
    first = data["train"][0]["title"]  # file order: the dev set's first article trains
    assert first == "Super_Bowl_50"


@pytest.mark.parametrize("articles", [0, 48])
def test_a_squad_split_leaving_no_article_on_one_side_is_refused(articles):
    with pytest.raises(DataError, match="leaves no article on one side"):
        get_task("squad").load(ExperimentConfig(task="squad", data_dir=str(SQUAD), squad_train_articles=articles))


def test_squad_without_a_train_file_says_how_to_resplit(tmp_path):
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "validation.jsonl").write_text((SQUAD / "squad" / "validation.jsonl").read_text()[:5000]
                                                          .rsplit("\n", 1)[0] + "\n")
    with pytest.raises(DataError, match="squad_train_articles"):
        get_task("squad").load(ExperimentConfig(task="squad", data_dir=str(tmp_path)))


def test_an_mlm_folder_with_no_usable_line_is_refused(tmp_path):
    (tmp_path / "valid.txt").write_text("\n = Heading = \n\n   \n")
    (tmp_path / "test.txt").write_text("Some real text .\n")
    with pytest.raises(DataError, match="no usable line"):
        get_task("mlm").load(ExperimentConfig(task="mlm", data_dir=str(tmp_path)))


def test_mlm_head_is_warmed_with_the_body_frozen_cached_and_named_in_the_tickets(tmp_path, minilm_path,
                                                                                   monkeypatch):
    config = ExperimentConfig(task="mlm", model=minilm_path, data_dir=str(WIKITEXT), max_train_samples=48,
                              max_eval_samples=16, max_length=32, batch_size=8, max_steps=1, target_sparsity=0.1,
                              mlm_head_warmup_steps=3, output_root=str(tmp_path)).validate()
    untouched = ExperimentConfig(**{**config.__dict__, "mlm_head_warmup_steps": 0})
    cold, _ = prepare(untouched)
    warm, tuner = prepare(config)
    prefix = base_prefix(warm)
    body = {n: p for n, p in warm.named_parameters() if n.startswith(prefix)}
    cold_params = dict(cold.named_parameters())
    assert all(torch.equal(p.cpu(), cold_params[n]) for n, p in body.items())  # the body did not move
    head = [n for n in cold_params if not n.startswith(prefix)]
    assert head and all(not torch.equal(dict(warm.named_parameters())[n].cpu(), cold_params[n]) for n in head)
    assert tuner.theta0.startswith("θ0 = pre-trained body + MLM head warmed 3 steps")
    assert len(list(tmp_path.glob("mlm-head-*/head.safetensors"))) == 1

    calls = []
    original = FineTuner.train
    monkeypatch.setattr(FineTuner, "train", lambda self, *a, **k: calls.append(k.get("max_steps")) or
                        original(self, *a, **k))
    again, _ = prepare(config)  # cached: loaded, not trained again
    assert calls == [] and all(torch.equal(p, dict(warm.named_parameters())[n]) for n, p in again.named_parameters())
    results = run_imp(config)
    assert all(step is None for step in calls)  # IMP rounds only, no second warm-up
    ticket = Ticket.load(tmp_path / results["run"] / "imp" / "ticket-round01.safetensors")
    assert ticket.theta0 == tuner.theta0 and ticket.task == "mlm"

    # what `examples/mlm.py --config ...` does with the finished run: no training, the per-level table and the report
    import yaml
    from nni_bert_tickets.experiments import cli, report
    path = tmp_path / "mlm.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.__dict__.items() if v is not None}))
    monkeypatch.setattr(FineTuner, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained again")))
    cli.main(["--config", str(path)], default_task="mlm")
    saved = __import__("json").loads((tmp_path / "tables" / "imp-mlm.json").read_text())
    assert saved["theta0"] == tuner.theta0
    assert [lv["sparsity"] for lv in saved["imp_trajectory"]] == [r["target_sparsity"] for r in results["trajectory"]]
    assert all(lv["perplexity"] == pytest.approx(torch.tensor(lv["loss"]).exp().item()) for lv in saved["imp_trajectory"])
    text = report.render(tmp_path).read_text()
    assert "every metric per level" in text and "perplexity" in text and tuner.theta0 in text
    assert (tmp_path / "report" / "imp-mlm.png").exists()
