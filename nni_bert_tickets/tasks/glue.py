"""GLUE: the nine tasks, their data (Hub or a local jsonl folder), tokenisation, batching and metrics.

Metrics are computed locally with scipy / scikit-learn (``evaluate.load`` would fetch scripts from the Hub).
The main metric per task is the one the paper reports: Matthews correlation (CoLA), Pearson (STS-B),
matched accuracy (MNLI), accuracy elsewhere; F1 is reported beside accuracy for MRPC and QQP.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .data import DataError, limit_splits, load_jsonl_splits, load_pretrained_body, padding_collator

__all__ = ["GlueTask", "TASKS", "ALIASES", "compute_metrics", "load_glue", "tokenize_glue"]
_log = logging.getLogger(__name__)
HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: Tuple[str, ...]
    num_labels: int                      # 1 = regression
    eval_splits: Tuple[str, ...] = ("validation",)
    metric: str = "accuracy"             # the paper's main metric
    title: str = ""                      # as GLUE writes it ("SST-2"); empty: the name in capitals
    # the metrics are fractions (accuracy 0.85, Pearson 0.88): × 100 gives the points the paper prints
    metric_scale: ClassVar[float] = 100.0

    @property
    def display_name(self) -> str:
        return self.title or self.name.upper()

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    # ---- the task interface FineTuner and prepare() use (see nni_bert_tickets.tasks) ----------------------
    def load(self, config):
        return limit_splits(load_glue(self, config.data_dir), config, self.eval_splits)

    def tokenize(self, data, tokenizer, config):
        return tokenize_glue(data, tokenizer, self, config.max_length, config.padding)

    def load_model(self, name_or_path: str):
        from transformers import AutoModelForSequenceClassification
        return load_pretrained_body(AutoModelForSequenceClassification, name_or_path, num_labels=self.num_labels)

    def collator(self, tokenizer, padding: str):
        return padding_collator(tokenizer, padding)

    def evaluate(self, tuner, model) -> Dict[str, float]:
        """Metrics on every evaluation split; ``'default'`` is the main metric on the first split."""
        results: Dict[str, float] = {}
        for split, data in tuner.eval_data.items():
            preds, refs = [], []
            for batch in tuner.eval_batches(data):
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                pred = logits.squeeze(-1) if self.is_regression else logits.argmax(-1)
                pred, ref = tuner.accelerator.gather_for_metrics((pred, batch["labels"]))
                preds.append(pred.cpu().numpy())
                refs.append(ref.cpu().numpy())
            metrics = compute_metrics(self, np.concatenate(preds), np.concatenate(refs))
            results.update({f"{split}_{k}" if len(tuner.eval_data) > 1 else k: v for k, v in metrics.items()})
            results.setdefault("default", metrics[self.metric])
        return results


TASKS: Dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", ("sentence",), 2, metric="matthews_correlation", title="CoLA"),
    GlueTask("sst2", ("sentence",), 2, title="SST-2"),
    GlueTask("mrpc", ("sentence1", "sentence2"), 2),
    GlueTask("stsb", ("sentence1", "sentence2"), 1, metric="pearson", title="STS-B"),
    GlueTask("qqp", ("question1", "question2"), 2),
    GlueTask("mnli", ("premise", "hypothesis"), 3, ("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), 2),
    GlueTask("rte", ("sentence1", "sentence2"), 2),
    GlueTask("wnli", ("sentence1", "sentence2"), 2),
]}
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def compute_metrics(task: GlueTask | str, predictions: np.ndarray, references: np.ndarray) -> Dict[str, float]:
    """The task's metrics from predictions (class ids, or scores for STS-B) and references."""
    task = _task(task)
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task.is_regression:
        if np.ptp(predictions) == 0 or np.ptp(references) == 0:  # undefined (NaN) for constant input: no signal
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(predictions, references)[0]),
                "spearman": float(spearmanr(predictions, references)[0])}
    out = {"accuracy": float(accuracy_score(references, predictions))}
    if task.name == "cola":
        out["matthews_correlation"] = float(matthews_corrcoef(references, predictions))
    if task.name in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(references, predictions))
    return out


def load_glue(task: GlueTask | str, data_dir: Optional[str] = None, splits: Optional[Sequence[str]] = None):
    """A ``DatasetDict`` with ``train`` and the task's evaluation splits.

    ``data_dir=None`` loads ``nyu-mll/glue`` from the Hub; otherwise ``<data_dir>/<task>/<split>.jsonl`` with
    the Hub's column names (the layout of ``../shared/data/glue``). Missing files or columns fail here,
    before any training starts.
    """
    import datasets

    task = _task(task)
    splits = list(splits or ("train", *task.eval_splits))
    if data_dir is None:
        data = datasets.load_dataset(HUB_DATASET, task.name)
        data = datasets.DatasetDict({s: data[s] for s in splits})
    else:
        folder = os.path.join(data_dir, task.name)
        files = {s: os.path.join(folder, f"{s}.jsonl") for s in splits}
        missing = [f for f in files.values() if not os.path.isfile(f)]
        if missing:
            raise DataError(f"GLUE {task.name}: cannot read {missing[0]} (expected <data_dir>/{task.name}/"
                            f"<split>.jsonl for splits {splits})")
        data = load_jsonl_splits(files)
    for split, dataset in data.items():
        absent = [c for c in (*task.text_columns, "label") if c not in dataset.column_names]
        if absent:
            raise DataError(f"GLUE {task.name} {split}: missing column(s) {absent}; has {dataset.column_names}")
        if len(dataset) and dataset[0]["label"] is None:
            raise DataError(f"GLUE {task.name} {split}: labels are empty (a test split?)")
    return data


def tokenize_glue(data, tokenizer, task: GlueTask | str, max_length: int = 128, padding: str = "dynamic"):
    """Tokenise every split once (``datasets`` caches the result on disk and reuses it on reruns).

    ``padding='dynamic'`` truncates to ``max_length`` and leaves padding to the collator (pad to the
    longest in the batch); ``'max_length'`` pads everything to ``max_length``, the reference path.
    """
    if padding not in ("dynamic", "max_length"):
        raise ValueError(f"padding must be 'dynamic' or 'max_length', got {padding!r}")
    task = _task(task)

    def encode(batch):
        texts = [batch[c] for c in task.text_columns]
        enc = tokenizer(*texts, truncation=True, max_length=max_length,
                        padding="max_length" if padding == "max_length" else False)
        enc["labels"] = [float(x) for x in batch["label"]] if task.is_regression else batch["label"]
        return enc

    columns = data["train"].column_names if "train" in data else next(iter(data.values())).column_names
    out = data.map(encode, batched=True, remove_columns=columns, desc=f"tokenizing {task.name}")
    return out.map(lambda b: {"length": [len(x) for x in b["input_ids"]]}, batched=True)


def _task(task: "GlueTask | str") -> GlueTask:
    """A GLUE task or its name (aliases such as ``sst-2`` too), from :data:`TASKS`, which the task registry
    (:func:`nni_bert_tickets.tasks.get_task`) serves GLUE from."""
    if isinstance(task, GlueTask):
        return task
    key = ALIASES.get(task.lower(), task.lower())
    if key not in TASKS:
        raise DataError(f"{task!r} is not a GLUE task; GLUE tasks: {', '.join(TASKS)}")
    return TASKS[key]
