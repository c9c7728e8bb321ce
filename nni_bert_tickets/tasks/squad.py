"""SQuAD v1.1 as a task: exact match and F1, on the same loop (the paper: lr 3e-5, batch 16, length 384,
stride 128).

Data: ``rajpurkar/squad`` from the Hub by default, or ``<data_dir>/squad/{train,validation}.jsonl`` with the
Hub's columns (``id``, ``context``, ``question``, ``answers`` = ``{"text": [...], "answer_start": [...]}``).
Questions are cut to ``max_query_length`` tokens (64, as the reference's ``run_squad.py``). Long contexts become
overlapping windows of ``max_length`` tokens: ``doc_stride`` is the distance, in context tokens, between the
starts of consecutive windows (the original BERT ``run_squad.py`` meaning, which the paper's reference code
uses: with length 384 and stride 128 a context token is in up to three windows), not the overlap that Hugging
Face tokenizers call ``stride``. Predictions take the best-scoring span over an example's windows. EM and F1
use SQuAD v1.1's answer normalisation, written here.
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

from .data import DataError, limit_splits, load_jsonl_splits, load_pretrained_body, padding_collator

__all__ = ["SquadTask", "squad_scores", "normalize_answer", "resplit_by_article"]
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
    max_query_length: int = 64           # questions are cut to this many tokens (the reference's setting)

    def load(self, config):
        """``train`` and ``validation``; with ``config.squad_train_articles = N`` the dev set alone is re-split by
        article: its first N articles (file order) train and the rest evaluate (no train file is then needed)."""
        import datasets
        articles = getattr(config, "squad_train_articles", None)
        splits = ("validation",) if articles is not None else ("train", "validation")
        if config.data_dir is None:
            hub = datasets.load_dataset(HUB_DATASET)
            data = datasets.DatasetDict({s: hub[s] for s in splits})
        else:
            files = {s: os.path.join(config.data_dir, "squad", f"{s}.jsonl") for s in splits}
            missing = [f for f in files.values() if not os.path.isfile(f)]
            if missing:
                raise DataError(f"SQuAD: cannot read {missing[0]} (expected <data_dir>/squad/<split>.jsonl"
                                + ("" if articles is not None else "; with only the dev set, set "
                                   "squad_train_articles to train on part of it") + ")")
            data = load_jsonl_splits(files)
        for split, dataset in data.items():
            absent = [c for c in _COLUMNS if c not in dataset.column_names]
            if absent:
                raise DataError(f"SQuAD {split}: missing column(s) {absent}; has {dataset.column_names}")
        if articles is not None:
            data = resplit_by_article(data["validation"], articles)
        return limit_splits(datasets.DatasetDict({s: data[s] for s in ("train", "validation")}), config,
                            self.eval_splits)

    def tokenize(self, data, tokenizer, config):
        for name, value in (("doc_stride", config.doc_stride), ("max_query_length", self.max_query_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SQuAD: {name} must be a whole number of tokens >= 1, got {value!r}")

        def windows(batch, **extra):
            return self.windows(tokenizer, batch["question"], batch["context"], config.max_length,
                                config.doc_stride, **extra)

        def train_features(batch):  # padded here when asked: the collator then stacks them as they are
            enc = windows(batch, **({"padding": "max_length"} if config.padding == "max_length" else {}))
            starts, ends = [], []
            for i, offsets in enumerate(enc["offset_mapping"]):
                answer = batch["answers"][enc["sample"][i]]
                first = answer["answer_start"][0]
                last = first + len(answer["text"][0])
                context = [k for k, s in enumerate(enc["sequence_ids"][i]) if s == 1]
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
            for key in ("offset_mapping", "sequence_ids", "sample"):
                enc.pop(key)
            return enc

        def eval_features(batch):
            enc = windows(batch, padding="max_length")
            enc["example_id"] = [batch["id"][j] for j in enc.pop("sample")]
            enc["offset_mapping"] = [[o if s == 1 else None for o, s in zip(offsets, enc["sequence_ids"][i])]
                                     for i, offsets in enumerate(enc["offset_mapping"])]
            enc.pop("sequence_ids")
            enc["feature_index"] = list(range(len(enc["input_ids"])))  # re-numbered below
            return enc

        train = data["train"].map(train_features, batched=True, remove_columns=data["train"].column_names,
                                  desc="tokenizing squad train")
        valid = data["validation"].map(eval_features, batched=True, desc="tokenizing squad validation",
                                       remove_columns=data["validation"].column_names)
        valid = valid.map(lambda _, i: {"feature_index": i}, with_indices=True)
        import datasets  # "_examples": contexts and gold answers for post-processing (FineTuner.extra)
        return datasets.DatasetDict({"train": train, "validation": valid, "_examples": data["validation"]})

    def windows(self, tokenizer, questions: List[str], contexts: List[str], max_length: int, doc_stride: int,
                **extra) -> Dict[str, list]:
        """Features of (question, context) pairs: each question cut to ``max_query_length`` tokens, each context
        split into windows of ``max_length`` tokens in all whose context parts start ``doc_stride`` context
        tokens apart (or follow each other without overlap when a window holds fewer than ``doc_stride``).

        Returns the tokenizer's columns (with ``offset_mapping``) plus ``sequence_ids`` and ``sample`` (the
        pair's index), windows in order, pairs in order. Hugging Face's ``stride`` is the overlap, which depends
        on the question's length, so pairs are tokenised in groups of equal question length.
        """
        questions = [q.lstrip() for q in questions]
        pieces = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
        lengths = []
        for i, (ids, offsets) in enumerate(zip(pieces["input_ids"], pieces["offset_mapping"])):
            if len(ids) > self.max_query_length:  # cut after the last token kept
                questions[i] = questions[i][:offsets[self.max_query_length - 1][1]]
                ids = tokenizer(questions[i], add_special_tokens=False)["input_ids"]
            lengths.append(len(ids))
        special = tokenizer.num_special_tokens_to_add(pair=True)
        groups: Dict[int, List[int]] = collections.defaultdict(list)
        for i, n in enumerate(lengths):
            groups[n].append(i)
        features = []
        for n, members in groups.items():
            room = max_length - n - special  # context tokens per window
            if room < 1:
                raise DataError(f"SQuAD: a question of {n} tokens leaves no room for its context in max_length "
                                f"{max_length}; raise max_length or lower max_query_length ({self.max_query_length})")
            enc = tokenizer([questions[i] for i in members], [contexts[i] for i in members], truncation="only_second",
                            max_length=max_length, stride=max(0, room - doc_stride), return_overflowing_tokens=True,
                            return_offsets_mapping=True, **extra)
            _check_windows(tokenizer, [contexts[i] for i in members], enc["overflow_to_sample_mapping"], room,
                           min(doc_stride, room))
            for f, j in enumerate(enc.pop("overflow_to_sample_mapping")):
                row = {k: v[f] for k, v in enc.items()}
                features.append((members[j], f, {**row, "sequence_ids": enc.sequence_ids(f), "sample": members[j]}))
        features.sort(key=lambda x: x[:2])
        keys = features[0][2].keys() if features else ("input_ids", "offset_mapping", "sequence_ids", "sample")
        return {k: [row[k] for _, _, row in features] for k in keys}

    def load_model(self, name_or_path: str):
        from transformers import AutoModelForQuestionAnswering
        return load_pretrained_body(AutoModelForQuestionAnswering, name_or_path)

    def collator(self, tokenizer, padding: str):
        return padding_collator(tokenizer, padding)

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


def resplit_by_article(dev, train_articles: int):
    """The dev set as ``train`` (its first ``train_articles`` articles, in file order) and ``validation`` (the
    rest): split by article, never by question, so no paragraph is on both sides. Numbers from such a split are
    a dev re-split, not comparable with results trained on SQuAD's train set."""
    import datasets
    if "title" not in dev.column_names:
        raise DataError(f"squad_train_articles needs a 'title' column to split by article; has {dev.column_names}")
    titles = list(dict.fromkeys(dev["title"]))
    if isinstance(train_articles, bool) or not 0 < train_articles < len(titles):
        raise DataError(f"squad_train_articles={train_articles!r} leaves no article on one side: the dev set has "
                        f"{len(titles)} articles; e.g. squad_train_articles: {max(1, len(titles) - 10)}")
    train_titles = set(titles[:train_articles])
    in_train = [t in train_titles for t in dev["title"]]
    return datasets.DatasetDict({"train": dev.select([i for i, x in enumerate(in_train) if x]),
                                 "validation": dev.select([i for i, x in enumerate(in_train) if not x])})


def _tensor_collate(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


def _check_windows(tokenizer, contexts: List[str], sample_of_window: List[int], room: int, step: int) -> None:
    """Each context must be covered to its end: ``1 + ceil((tokens - room) / step)`` windows. tokenizers 0.23.2
    returns only the first overflowing window, which would silently drop most of a long context."""
    counts = collections.Counter(sample_of_window)
    lengths = [len(ids) for ids in tokenizer(contexts, add_special_tokens=False)["input_ids"]]
    for j, n in enumerate(lengths):
        expected = 1 + -(-max(0, n - room) // step)
        if counts[j] != expected:
            import tokenizers
            raise DataError(f"SQuAD: the tokenizer split a context of {n} tokens into {counts[j]} windows, not the "
                            f"{expected} that cover it ({room} context tokens a window, {step} apart); tokenizers "
                            f"{tokenizers.__version__} is installed, and 0.23.2 is known to drop overflowing windows: "
                            f"install another version (pip install 'tokenizers!=0.23.2')")
