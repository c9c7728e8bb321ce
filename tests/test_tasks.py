"""SQuAD and MLM on the same loop: metrics against hand-checked cases, span bookkeeping, deterministic eval."""
import json

import numpy as np
import pytest
import torch

from conftest import SHARED
from nni_bert_tickets.config import ExperimentConfig
from nni_bert_tickets.experiment import prepare
from nni_bert_tickets.glue import DataError
from nni_bert_tickets.squad import normalize_answer, squad_scores
from nni_bert_tickets.tasks import get_task


def test_squad_metrics_against_hand_computed_cases():
    assert normalize_answer("The  Cat!") == "cat"
    scores = squad_scores({"1": "the big cat", "2": "Paris"}, {"1": ["cat"], "2": ["paris", "Rome"]})
    # example 1: EM 0, F1 = 2 * (1/2 * 1) / (1/2 + 1) = 2/3; example 2: EM 1, F1 1
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (2 / 3 + 1) / 2})


@pytest.fixture
def squad_dir(tmp_path):
    rows = []
    for i, city in enumerate(["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "Vienna"] * 2):
        filler = " ".join(["the old town has many bridges"] * (1 + i % 4))
        context = f"{filler}. The capital of land {i} is {city}. {filler}."
        rows.append({"id": str(i), "title": "t", "context": context, "question": f"What is the capital of land {i}?",
                     "answers": {"text": [city], "answer_start": [context.index(f"is {city}") + 3]}})
    (tmp_path / "squad").mkdir()
    for split, part in (("train", rows[:8]), ("validation", rows[8:])):
        (tmp_path / "squad" / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in part))
    return tmp_path


def _squad_config(data_dir, minilm_path):
    return ExperimentConfig(task="squad", model=minilm_path, data_dir=str(data_dir), batch_size=4, max_steps=1,
                            max_length=48, doc_stride=16)


def test_squad_windows_locate_answers_and_oracle_logits_score_100(squad_dir, minilm_path):
    model, tuner = prepare(_squad_config(squad_dir, minilm_path))
    train = tuner.train_data
    assert len(train) > 8  # long contexts were split into overlapping windows
    found = 0
    for row in train:
        if row["start_positions"]:
            span = tuner.tokenizer.decode(row["input_ids"][row["start_positions"]:row["end_positions"] + 1])
            assert span in {"paris", "berlin", "rome", "madrid", "lisbon", "vienna"}
            found += 1
    assert found >= 8
    features = tuner.eval_data["validation"]
    examples = tuner.extra["_examples"]
    starts = np.full((len(features), 48), -10.0)
    ends = np.full((len(features), 48), -10.0)
    gold = {ex["id"]: (ex["answers"]["answer_start"][0], ex["answers"]["answer_start"][0] + len(ex["answers"]["text"][0]))
            for ex in examples}
    for i, (example_id, offsets) in enumerate(zip(features["example_id"], features["offset_mapping"])):
        first, last = gold[example_id]
        for k, o in enumerate(offsets):
            if o is not None and o[0] == first:
                starts[i, k] = 10.0
            if o is not None and o[1] == last:
                ends[i, k] = 10.0
    predictions = tuner.task._best_spans(examples, features, starts, ends)
    assert squad_scores(predictions, {ex["id"]: ex["answers"]["text"] for ex in examples})["exact_match"] == 100.0
    metrics = tuner.fit(model)
    assert set(metrics) == {"default", "exact_match", "f1"} and 0 <= metrics["f1"] <= 100


def test_squad_missing_column_is_a_clear_error(squad_dir, minilm_path):
    path = squad_dir / "squad" / "train.jsonl"
    path.write_text(json.dumps({"id": "1", "context": "c", "question": "q"}))
    with pytest.raises(DataError, match=r"missing column\(s\) \['answers'\]"):
        prepare(_squad_config(squad_dir, minilm_path))


def test_mlm_blocks_and_deterministic_masked_evaluation(minilm_path):
    config = ExperimentConfig(task="mlm", model=minilm_path, data_dir=str(SHARED / "data" / "wikitext2"), batch_size=8,
                              max_steps=1, max_length=32, max_train_samples=40, max_eval_samples=20)
    model, tuner = prepare(config)
    assert all(len(ids) == 32 for ids in tuner.train_data["input_ids"])
    labels = np.array(tuner.eval_data["validation"]["labels"])
    assert 0.08 < (labels != -100).mean() < 0.22  # ~15 % of the tokens are masked
    first, second = tuner.evaluate(model), tuner.evaluate(model)
    assert first == second and 0 <= first["accuracy"] <= 1 and first["masked_tokens"] == (labels != -100).sum()
    _, again = prepare(config)
    assert again.eval_data["validation"]["labels"] == tuner.eval_data["validation"]["labels"]
    assert get_task("mlm").eval_splits == ("validation",)
    rows = [tuner.train_data[i] for i in range(8)]  # training masks: from the pass seed and the batch, ~15 %
    tuner.collate.reseed(5)
    a, b = tuner.collate(rows), tuner.collate(rows)
    tuner.collate.reseed(6)
    c = tuner.collate(rows)
    assert torch.equal(a["labels"], b["labels"]) and not torch.equal(a["labels"], c["labels"])
    assert 0.08 < float((a["labels"] != -100).float().mean()) < 0.22
    assert a["attention_mask"].shape == a["input_ids"].shape == (8, 32)
    with pytest.raises(DataError, match="needs train.txt"):
        prepare(ExperimentConfig(task="mlm", model=minilm_path, data_dir=str(SHARED / "data" / "glue")))
