"""SQuAD and MLM on the same loop: metrics against hand-checked cases, span bookkeeping, deterministic eval."""
import json

import numpy as np
import pytest
import torch

from conftest import SHARED
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare
from nni_bert_tickets.tasks import DataError
from nni_bert_tickets.tasks.squad import normalize_answer, squad_scores
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


def test_squad_trains_with_padding_to_max_length(squad_dir, minilm_path):
    """``padding: max_length`` pads the training windows too (the default collator stacks them unpadded)."""
    import dataclasses
    config = dataclasses.replace(_squad_config(squad_dir, minilm_path), padding="max_length")
    model, tuner = prepare(config)
    assert {len(ids) for ids in tuner.train_data["input_ids"]} == {config.max_length}
    metrics = tuner.fit(model)
    assert 0 <= metrics["f1"] <= 100


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
    assert first["perplexity"] == pytest.approx(np.exp(first["loss"]))  # perplexity = exp(mean masked-token loss)
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


def _long_squad_example():
    rows = [json.loads(line) for line in (SHARED / "data" / "squad" / "validation.jsonl").read_text().splitlines()]
    return max(rows, key=lambda r: len(r["context"]))  # a real dev-set paragraph of ~790 MiniLM tokens


@pytest.mark.parametrize("doc_stride", [50, 500])
def test_squad_windows_start_doc_stride_tokens_apart_and_questions_are_cut_to_64_tokens(doc_stride, minilm_path):
    import datasets
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    example = _long_squad_example()
    long_question = " ".join([example["question"]] * 8)
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list([{**example, "question": long_question}]),
                                 "validation": datasets.Dataset.from_list([example])})
    config = ExperimentConfig(task="squad", max_length=128, doc_stride=doc_stride)
    out = get_task("squad").tokenize(data, tokenizer, config)
    context = tokenizer(example["context"], add_special_tokens=False)["input_ids"]
    assert len(context) > 600
    for split, question in (("train", long_question), ("validation", example["question"])):
        asked = tokenizer(question, add_special_tokens=False)["input_ids"]
        kept = asked[:64]
        assert split == "validation" or len(asked) > 64
        room = 128 - len(kept) - 3  # [CLS] question [SEP] context [SEP]
        features = out[split]
        assert len(features) == 1 + -(-(len(context) - room) // min(doc_stride, room))
        for k, feature in enumerate(features):
            ids = [i for i, m in zip(feature["input_ids"], feature["attention_mask"]) if m]
            types = feature["token_type_ids"][:len(ids)]
            assert ids[1:1 + types.count(0) - 2] == kept  # the question, cut to 64 tokens
            start = k * min(doc_stride, room)  # consecutive windows' contexts start doc_stride tokens apart
            assert ids[types.count(0):-1] == context[start:start + room]
        assert ids[-2] == context[-1]  # the last window reaches the end of the context


def test_squad_windows_that_stop_short_of_the_context_end_are_refused(minilm_path):
    """tokenizers 0.23.2 returns one overflowing window only; a context cut short must fail, naming the cause."""
    from transformers import AutoTokenizer
    from nni_bert_tickets.tasks.squad import _check_windows
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    context = _long_squad_example()["context"]
    n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    room, step = 100, 60
    windows = 1 + -(-(n - room) // step)
    _check_windows(tokenizer, [context, "short."], [0] * windows + [1], room, step)  # complete: accepted
    with pytest.raises(DataError, match=f"context of {n} tokens into 2 windows, not the {windows}.*tokenizers"):
        _check_windows(tokenizer, [context, "short."], [0, 0, 1], room, step)


def test_squad_bad_window_settings_are_refused_before_tokenising(minilm_path):
    import datasets
    from transformers import AutoTokenizer
    from nni_bert_tickets.tasks.squad import SquadTask
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    example = _long_squad_example()
    data = datasets.DatasetDict({s: datasets.Dataset.from_list([example]) for s in ("train", "validation")})
    with pytest.raises(ValueError, match="doc_stride must be a whole number of tokens >= 1, got 0"):
        get_task("squad").tokenize(data, tokenizer, ExperimentConfig(task="squad", doc_stride=0))
    with pytest.raises(ValueError, match="max_query_length must be"):
        SquadTask(max_query_length=0).tokenize(data, tokenizer, ExperimentConfig(task="squad"))
    with pytest.raises(DataError, match="a question of 64 tokens leaves no room for its context in max_length 60"):
        data["train"] = datasets.Dataset.from_list([{**example, "question": example["question"] * 10}])
        get_task("squad").tokenize(data, tokenizer, ExperimentConfig(task="squad", max_length=60))


def _body_checkpoint(folder, drop=()):
    """A tiny BERT body saved as a Hub folder (no task head), optionally without some of its weights."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    body = BertModel(config)
    body.save_pretrained(folder)
    if drop:
        state = {k: v.contiguous() for k, v in body.state_dict().items() if k not in drop}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return body


@pytest.mark.parametrize("task_name, head", [("sst2", "classifier."), ("squad", "qa_outputs."), ("mlm", "cls.")])
def test_loading_a_body_under_a_new_head_says_so_once_without_the_load_report(tmp_path, caplog, task_name, head):
    body = _body_checkpoint(tmp_path)
    caplog.clear()  # saving the checkpoint logs transformers' own sharding notes
    with caplog.at_level("INFO"):
        model = get_task(task_name).load_model(str(tmp_path))
    # transformers' records propagate to the root logger caplog listens on: its LOAD REPORT warning is muted
    assert not [r for r in caplog.records if "LOAD REPORT" in r.getMessage() or r.levelname == "WARNING"]
    records = [r for r in caplog.records if r.name == "nni_bert_tickets.tasks.data"]
    assert [r.levelname for r in records if "new task head" in r.getMessage()] == ["INFO"]
    assert head in records[0].getMessage() and not [r for r in records if r.levelname == "WARNING"]
    # the body really came from the checkpoint
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.base_model.state_dict()[key], body.state_dict()[key])


def test_a_body_weight_missing_from_the_checkpoint_is_a_warning_naming_it(tmp_path, caplog):
    key = "encoder.layer.0.attention.self.query.weight"
    _body_checkpoint(tmp_path, drop=(key,))
    with caplog.at_level("INFO", logger="nni_bert_tickets"):
        get_task("sst2").load_model(str(tmp_path))
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and r.name == "nni_bert_tickets.tasks.data"]
    assert len(warnings) == 1 and "bert." + key in warnings[0] and "1 body weights" in warnings[0]
