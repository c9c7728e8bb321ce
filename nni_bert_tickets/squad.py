"""SQuAD v1.1 as a task: exact match and F1, on the same loop (the paper: lr 3e-5, batch 16, length 384,
stride 128).

Data: ``rajpurkar/squad`` from the Hub by default, or ``<data_dir>/squad/{train,validation}.jsonl`` with the
Hub's columns (``id``, ``context``, ``question``, ``answers`` = ``{"text": [...], "answer_start": [...]}``).
Long contexts become overlapping windows of ``max_length`` tokens (``doc_stride`` apart); predictions take the
best-scoring span over an example's windows. EM and F1 use SQuAD v1.1's answer normalisation, written here.
"""
from __future__ import annotations

import collections
import os
import re
import string
from dataclasses import dataclass
from typing import ClassVar, Dict, List

import numpy as np
import torch

from .glue import DataError, limit_splits, load_jsonl_splits

__all__ = ["SquadTask", "squad_scores", "normalize_answer"]
HUB_DATASET = "rajpurkar/squad"
_COLUMNS = ("id", "context", "question", "answers")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the and extra whitespace (SQuAD v1.1's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Dict[str, str], answers: Dict[str, List[str]]) -> Dict[str, float]:
    """Exact match and F1 (× 100), each the best over an example's gold answers, averaged over examples."""
    em = [max(float(normalize_answer(predictions[i]) == normalize_answer(a)) for a in answers[i]) for i in answers]
    f1 = [max(_f1(predictions[i], a) for a in answers[i]) for i in answers]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


@dataclass(frozen=True)
class SquadTask:
    name: str = "squad"
    metric: str = "f1"
    # exact match and F1 are already percentages (F1 88.5): the report shows them as they are
    metric_scale: ClassVar[float] = 1.0
    eval_splits: tuple = ("validation",)
    n_best: int = 20
    max_answer_length: int = 30

    def load(self, config):
        import datasets
        if config.data_dir is None:
            data = datasets.load_dataset(HUB_DATASET)
        else:
            files = {s: os.path.join(config.data_dir, "squad", f"{s}.jsonl") for s in ("train", "validation")}
            missing = [f for f in files.values() if not os.path.isfile(f)]
            if missing:
                raise DataError(f"SQuAD: cannot read {missing[0]} (expected <data_dir>/squad/<split>.jsonl)")
            data = load_jsonl_splits(files)
        for split, dataset in data.items():
            absent = [c for c in _COLUMNS if c not in dataset.column_names]
            if absent:
                raise DataError(f"SQuAD {split}: missing column(s) {absent}; has {dataset.column_names}")
        return limit_splits(datasets.DatasetDict({s: data[s] for s in ("train", "validation")}), config,
                            self.eval_splits)

    def tokenize(self, data, tokenizer, config):
        window = dict(truncation="only_second", max_length=config.max_length, stride=config.doc_stride,
                      return_overflowing_tokens=True, return_offsets_mapping=True)

        def train_features(batch):
            enc = tokenizer([q.lstrip() for q in batch["question"]], batch["context"], **window)
            starts, ends = [], []
            for i, offsets in enumerate(enc["offset_mapping"]):
                answer = batch["answers"][enc["overflow_to_sample_mapping"][i]]
                first = answer["answer_start"][0]
                last = first + len(answer["text"][0])
                context = [k for k, s in enumerate(enc.sequence_ids(i)) if s == 1]
                lo, hi = context[0], context[-1]
                if offsets[lo][0] > first or offsets[hi][1] < last:  # answer not in this window
                    starts.append(0)
                    ends.append(0)
                    continue
                start = next(k for k in range(lo, hi + 1) if offsets[k][1] > first)
                end = next(k for k in range(hi, lo - 1, -1) if offsets[k][0] < last)
                starts.append(start)
                ends.append(end)
            enc["start_positions"], enc["end_positions"] = starts, ends
            enc["length"] = [len(x) for x in enc["input_ids"]]
            enc.pop("offset_mapping")
            enc.pop("overflow_to_sample_mapping")
            return enc

        def eval_features(batch):
            enc = tokenizer([q.lstrip() for q in batch["question"]], batch["context"], padding="max_length",
                            **window)
            enc["example_id"] = [batch["id"][j] for j in enc.pop("overflow_to_sample_mapping")]
            enc["offset_mapping"] = [[o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i))]
                                     for i, offsets in enumerate(enc["offset_mapping"])]
            enc["feature_index"] = list(range(len(enc["input_ids"])))  # re-numbered below
            return enc

        train = data["train"].map(train_features, batched=True, remove_columns=data["train"].column_names,
                                  desc="tokenizing squad train")
        valid = data["validation"].map(eval_features, batched=True, desc="tokenizing squad validation",
                                       remove_columns=data["validation"].column_names)
        valid = valid.map(lambda _, i: {"feature_index": i}, with_indices=True)
        import datasets  # "_examples": contexts and gold answers for post-processing (FineTuner.extra)
        return datasets.DatasetDict({"train": train, "validation": valid, "_examples": data["validation"]})

    def load_model(self, name_or_path: str):
        from transformers import AutoModelForQuestionAnswering
        return AutoModelForQuestionAnswering.from_pretrained(name_or_path)

    def collator(self, tokenizer, padding: str):
        from transformers import DataCollatorWithPadding, default_data_collator
        return DataCollatorWithPadding(tokenizer) if padding == "dynamic" else default_data_collator

    def evaluate(self, tuner, model) -> Dict[str, float]:
        features = tuner.eval_data["validation"]
        inputs = features.remove_columns(["example_id", "offset_mapping"])
        start_all, end_all, index_all = [], [], []
        for batch in tuner.eval_batches(inputs, collate=_tensor_collate):
            out = model(**{k: v for k, v in batch.items() if k != "feature_index"})
            start, end, index = tuner.accelerator.gather_for_metrics(
                (out.start_logits, out.end_logits, batch["feature_index"]))
            start_all.append(start.cpu().numpy())
            end_all.append(end.cpu().numpy())
            index_all.append(index.cpu().numpy())
        order = np.concatenate(index_all)
        starts, ends = np.concatenate(start_all)[np.argsort(order)], np.concatenate(end_all)[np.argsort(order)]
        examples = tuner.extra["_examples"]
        predictions = self._best_spans(examples, features, starts, ends)
        answers = {ex["id"]: ex["answers"]["text"] for ex in examples}
        scores = squad_scores(predictions, answers)
        return {"default": scores["f1"], **scores}

    def _best_spans(self, examples, features, starts, ends) -> Dict[str, str]:
        by_example = collections.defaultdict(list)
        for i, example_id in enumerate(features["example_id"]):
            by_example[example_id].append(i)
        offsets_all = features["offset_mapping"]
        predictions = {}
        for example in examples:
            best, best_text = -np.inf, ""
            for i in by_example[example["id"]]:
                offsets = offsets_all[i]
                top_s = np.argsort(starts[i])[-self.n_best:][::-1]
                top_e = np.argsort(ends[i])[-self.n_best:][::-1]
                for s in top_s:
                    for e in top_e:
                        if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > self.max_answer_length:
                            continue
                        score = starts[i][s] + ends[i][e]
                        if score > best:
                            best, best_text = score, example["context"][offsets[s][0]:offsets[e][1]]
            predictions[example["id"]] = best_text
        return predictions


def _tensor_collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}
