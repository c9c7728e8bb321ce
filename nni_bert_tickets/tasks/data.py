"""What every task shares: the data error, local jsonl splits, sample limits, collators, batching, and loading a
pre-trained body under a new task head."""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence

import torch

__all__ = ["DataError", "load_jsonl_splits", "limit_splits", "padding_collator", "LengthGroupedBatchSampler",
           "load_pretrained_body"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Unknown task, unreadable path, or data without the columns a task needs."""


def load_jsonl_splits(files: Dict[str, str]):
    """``{split: path}`` of jsonl files as a ``DatasetDict``, one split at a time so a file whose columns differ
    is reported by name; unreadable or malformed files raise :class:`DataError`."""
    import datasets

    out = {}
    for split, path in files.items():
        if not os.path.isfile(path):
            raise DataError(f"cannot read {path}")
        try:
            out[split] = datasets.load_dataset("json", data_files={split: path})[split]
        except Exception as err:  # datasets wraps JSON and schema errors in several exception types
            raise DataError(f"{path} is not valid jsonl: {err}") from err
    return datasets.DatasetDict(out)


def limit_splits(data, config, eval_splits: Sequence[str]):
    """Keep the first ``max_train_samples`` / ``max_eval_samples`` rows of the splits, when set."""
    limits = [("train", config.max_train_samples)] + [(s, config.max_eval_samples) for s in eval_splits]
    for split, limit in limits:
        if limit is not None and split in data and limit < len(data[split]):
            data[split] = data[split].select(range(limit))
    return data


def padding_collator(tokenizer, padding: str):
    """``'dynamic'``: pad each batch to its longest example; ``'max_length'``: inputs are padded already."""
    from transformers import DataCollatorWithPadding, default_data_collator
    return DataCollatorWithPadding(tokenizer) if padding == "dynamic" else default_data_collator


class LengthGroupedBatchSampler(torch.utils.data.Sampler[List[int]]):
    """Shuffled batches of similar-length examples, so dynamic padding wastes little.

    Indices are shuffled, cut into mega-batches of ``mega * batch_size``, each sorted by length and cut into
    batches; the batch order is shuffled again. With ``seed`` set, pass ``k`` draws its order from
    ``seed + k`` (:meth:`reseed` picks the pass), so a resumed run can replay the order of an interrupted pass;
    without it, from ``torch``'s global RNG at each ``__iter__``. Equal lengths give plain random batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, mega: int = 50, shuffle: bool = True,
                 seed: Optional[int] = None):
        self.lengths, self.batch_size, self.mega, self.shuffle = list(lengths), batch_size, mega, shuffle
        self.seed, self.pass_index = seed, 0

    def reseed(self, pass_index: int) -> None:
        """Draw the next ``__iter__``'s order from ``seed + pass_index``."""
        self.pass_index = pass_index

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        n = len(self.lengths)
        generator = None if self.seed is None else torch.Generator().manual_seed(self.seed + self.pass_index)
        order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        size = self.mega * self.batch_size
        batches = []
        for start in range(0, n, size):
            chunk = sorted(order[start:start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter(batches)


class _HeadNotes(logging.Filter):
    """Holds back the two notes transformers 5 logs as warnings when a checkpoint lacks the task head: the LOAD
    REPORT table of missing keys, and (for heads with tied weights, like BERT's MLM head) "this checkpoint seem
    corrupted" for a tie whose two ends are both absent. :func:`load_pretrained_body` judges them afterwards."""

    def __init__(self):
        super().__init__()
        self.held: List[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message or ("tied weights" in message and "absent from the checkpoint" in message):
            self.held.append(message)
            return False
        return True


@contextlib.contextmanager
def _held_head_notes():
    """A filter, not a higher level, on transformers' logger: transformers runs extra checks that warn whenever its
    logger's level is WARNING or above."""
    loud = logging.getLogger("transformers.modeling_utils")
    notes = _HeadNotes()
    loud.addFilter(notes)
    try:
        yield notes
    finally:
        loud.removeFilter(notes)


def load_pretrained_body(auto_class, name_or_path: str, **kwargs):
    """``auto_class.from_pretrained(name_or_path, **kwargs)`` for a checkpoint that holds the model's body (the
    encoder under ``base_model_prefix``) but maybe not its task head.

    A head the checkpoint lacks is initialised fresh, as fine-tuning expects, and said once at INFO. A body weight the
    checkpoint lacks is a real problem (a wrong or truncated checkpoint) and is logged as a warning naming the keys;
    size mismatches and conversion errors still raise inside transformers."""
    with _held_head_notes() as notes:
        model, info = auto_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    body = model.base_model_prefix + "."
    name = type(model).__name__
    missing = sorted(info.get("missing_keys") or ())
    head = [k for k in missing if not k.startswith(body)]
    lost = [k for k in missing if k.startswith(body)]
    if head:
        logger.info("%s: new task head initialised (%s), as fine-tuning from %s expects", name, ", ".join(head),
                    name_or_path)
    if lost:
        logger.warning("%s: %d body weights are missing from %s and were initialised at random: %s", name, len(lost),
                       name_or_path, ", ".join(lost[:8]) + (" ..." if len(lost) > 8 else ""))
    for note in notes.held:  # a tie note about the body is not about a fresh head: pass it on
        if "LOAD REPORT" not in note and body in note:
            logger.warning("transformers, loading %s: %s", name_or_path, note)
    unused = sorted(info.get("unexpected_keys") or ())
    if unused:
        logger.info("%s: %d checkpoint weights unused (%s)", name, len(unused), ", ".join(unused[:8]))
    return model
