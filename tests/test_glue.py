"""GLUE registry, data loading (real ../shared data and the Hub layout), metrics, batching, configs."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from nni_bert_tickets.experiments.cli import parse_args
from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
from nni_bert_tickets.tasks import DataError, get_task
from nni_bert_tickets.tasks.data import LengthGroupedBatchSampler
from nni_bert_tickets.tasks.glue import TASKS, GlueTask, compute_metrics, load_glue, tokenize_glue

LOCAL = ["rte", "mrpc", "stsb", "cola", "sst2", "wnli"]


def test_registry_covers_the_nine_tasks_with_the_papers_metrics():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_task("cola").metric == "matthews_correlation" and get_task("STS-B").metric == "pearson"
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").num_labels == 3 and get_task("stsb").is_regression
    assert not isinstance(get_task("squad"), GlueTask) and get_task("SST-2") is TASKS["sst2"]  # one registry
    with pytest.raises(DataError, match="unknown task 'qnli2'"):
        get_task("qnli2")


def test_metrics_against_hand_computed_cases():
    cola = compute_metrics("cola", np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert cola["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    mrpc = compute_metrics("mrpc", np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1]))
    assert mrpc == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    stsb = compute_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    assert stsb == pytest.approx({"pearson": 0.5, "spearman": 0.5})
    assert compute_metrics("rte", np.array([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx({"accuracy": 2 / 3})


@pytest.mark.parametrize("task", LOCAL)
def test_every_local_task_loads_and_tokenizes(task, glue_dir, minilm_path):
    data = load_glue(task, glue_dir)
    assert set(data) == {"train", "validation"} and len(data["train"]) > len(data["validation"]) > 0
    small = data.__class__({s: d.select(range(50)) for s, d in data.items()})
    tok = tokenize_glue(small, AutoTokenizer.from_pretrained(minilm_path), task, max_length=128)
    row = tok["train"][0]
    assert {"input_ids", "attention_mask", "labels", "length"} <= set(row)
    assert row["length"] == len(row["input_ids"]) <= 128
    assert isinstance(row["labels"], float) == get_task(task).is_regression
    if len(get_task(task).text_columns) == 2:
        assert row["token_type_ids"].count(1) > 0  # sentence pairs are encoded as pairs


@pytest.mark.parametrize("task", ["qqp", "mnli", "qnli"])
def test_tasks_without_local_copy_load_from_the_hub_layout(task, tmp_path):
    spec = get_task(task)
    for split in ("train", *spec.eval_splits):
        rows = [{**{c: f"text {i} {c}" for c in spec.text_columns}, "label": i % spec.num_labels, "idx": i}
                for i in range(6)]
        (tmp_path / task).mkdir(exist_ok=True)
        (tmp_path / task / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = load_glue(task, str(tmp_path))
    assert set(data) == {"train", *spec.eval_splits}


def test_missing_file_or_column_is_a_clear_error(tmp_path, glue_dir):
    with pytest.raises(DataError, match="cannot read"):
        load_glue("rte", str(tmp_path))
    (tmp_path / "rte").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "rte" / f"{split}.jsonl").write_text(json.dumps({"sentence1": "a", "label": 0}) + "\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['sentence2'\]"):
        load_glue("rte", str(tmp_path))


def test_length_grouped_batches_cover_every_index_once_and_group_lengths():
    lengths = torch.randint(5, 120, (1000,)).tolist()
    torch.manual_seed(0)
    batches = list(LengthGroupedBatchSampler(lengths, 32))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert len(batches) == len(LengthGroupedBatchSampler(lengths, 32))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 15  # random batches would spread ~100
    torch.manual_seed(0)
    assert list(LengthGroupedBatchSampler(lengths, 32)) == batches


def test_config_precedence_validation_and_run_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: mrpc\nepochs: 1\nrewind: 0.1\n")
    config = parse_args(["--config", str(path), "--epochs", "2"])
    assert (config.task, config.epochs, config.rewind) == ("mrpc", 2.0, 0.1)
    assert config.run_name() == ExperimentConfig(task="mrpc", epochs=2, rewind=0.1).run_name()
    assert config.run_name() != ExperimentConfig(task="mrpc", epochs=3, rewind=0.1).run_name()
    assert config.run_name() == ExperimentConfig(task="mrpc", epochs=2, rewind=0.1, output_root="x").run_name()
    assert parse_args(["--rewind", "none"]).rewind is None
    path.write_text("task: mrpc\nepochz: 1\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_yaml(str(path))
    with pytest.raises(ValueError, match="target_sparsity"):
        parse_args(["--target-sparsity", "1.0"])
    with pytest.raises(DataError):
        parse_args(["--task", "nope"])


def test_malformed_jsonl_is_a_clear_error(tmp_path):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n{oops\n')
    (tmp_path / "rte" / "validation.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n')
    with pytest.raises(DataError, match="train.jsonl is not valid jsonl"):
        load_glue("rte", str(tmp_path))


def test_correlation_of_constant_predictions_is_zero_not_nan():
    assert compute_metrics("stsb", np.array([2.0, 2.0, 2.0]), np.array([1.0, 3.0, 2.0])) == {"pearson": 0.0,
                                                                                              "spearman": 0.0}
