"""Masked language modelling as a task: tickets found on the pre-training objective (the paper's MLM ticket).

Data: WikiText-2 from the Hub (``Salesforce/wikitext``, ``wikitext-2-raw-v1``) by default, or a folder of
text files, one paragraph per line: ``train.txt`` and ``validation.txt``, or WikiText's ``valid.txt`` and
``test.txt`` (as in ``../shared/data/wikitext2``, which lacks the train split: then ``valid.txt`` trains and
``test.txt`` evaluates, and a warning says so). Text is tokenised once and cut into blocks of ``max_length``.
The evaluation split is masked once with a fixed seed, so its masked-token accuracy and loss are deterministic.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from dataclasses import dataclass
from typing import ClassVar, Dict

import torch

from .data import DataError, limit_splits, load_pretrained_body

__all__ = ["MLMTask"]
_log = logging.getLogger(__name__)
HUB_DATASET = ("Salesforce/wikitext", "wikitext-2-raw-v1")


@dataclass(frozen=True)
class MLMTask:
    name: str = "mlm"
    metric: str = "accuracy"             # masked-token accuracy
    metric_scale: ClassVar[float] = 100.0  # a fraction: × 100 gives points
    eval_splits: tuple = ("validation",)
    mlm_probability: float = 0.15

    def load(self, config):
        import datasets
        if config.data_dir is None:
            data = datasets.load_dataset(*HUB_DATASET)
            data = datasets.DatasetDict({"train": data["train"], "validation": data["validation"]})
        else:
            files = text_files(config.data_dir)
            if os.path.basename(files["train"]) == "valid.txt":
                _log.warning("%s has no train split: training on valid.txt, evaluating on test.txt", config.data_dir)
            data = datasets.load_dataset("text", data_files=files)
        data = data.filter(lambda row: bool(row["text"].strip()) and not row["text"].strip().startswith("="))
        empty = [split for split in ("train", "validation") if len(data[split]) == 0]
        if empty:
            raise DataError(f"MLM data{' in ' + config.data_dir if config.data_dir else ''}: the {empty[0]} text "
                            "has no usable line (blank lines and '= Heading =' lines are skipped)")
        return limit_splits(data, config, self.eval_splits)

    def tokenize(self, data, tokenizer, config):
        block = config.max_length

        def blocks(batch):
            ids = [i for text in tokenizer(batch["text"], add_special_tokens=False)["input_ids"] for i in text]
            size = block - 2
            chunks = [ids[i:i + size] for i in range(0, len(ids) - size + 1, size)]
            first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
            last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
            enc = [[first, *c, last] for c in chunks]
            return {"input_ids": enc, "attention_mask": [[1] * len(e) for e in enc],
                    "length": [len(e) for e in enc]}
        out = data.map(blocks, batched=True, remove_columns=data["train"].column_names, desc="tokenizing mlm")
        generator = torch.Generator().manual_seed(0)
        out["validation"] = out["validation"].map(
            lambda row: _mask(row, tokenizer, self.mlm_probability, generator), desc="masking mlm eval")
        return out

    def load_model(self, name_or_path: str):
        from transformers import AutoModelForMaskedLM
        return load_pretrained_body(AutoModelForMaskedLM, name_or_path)

    def collator(self, tokenizer, padding: str):
        return _MLMCollator(tokenizer, self.mlm_probability)

    def evaluate(self, tuner, model) -> Dict[str, float]:
        from transformers import default_data_collator
        correct = total = 0
        loss_sum = 0.0
        for batch in tuner.eval_batches(tuner.eval_data["validation"], collate=default_data_collator):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"]
            picked = labels != -100
            loss = torch.nn.functional.cross_entropy(logits[picked], labels[picked], reduction="sum")
            hits = (logits.argmax(-1)[picked] == labels[picked]).sum()
            stats = tuner.accelerator.reduce(torch.stack([hits.float(), picked.sum().float(), loss]), "sum")
            correct, total, loss_sum = correct + stats[0].item(), total + stats[1].item(), loss_sum + stats[2].item()
        accuracy, loss = correct / max(total, 1), loss_sum / max(total, 1)
        return {"default": accuracy, "accuracy": accuracy, "loss": loss, "perplexity": math.exp(loss),
                "masked_tokens": total}


def warm_up_head(model, tuner, config, root) -> str:
    """Train the MLM head of ``model`` with the body frozen for ``config.mlm_head_warmup_steps`` steps, once: the
    result is cached under ``root`` (a unit named by its settings) and loaded on later calls. Returns a note for
    tickets' metadata. A checkpoint without an MLM head (a sentence encoder) gets a random one from transformers;
    an MLM ticket found through a random head is not the paper's MLM ticket, so θ0 becomes body + warmed head."""
    from pathlib import Path

    from accelerate.utils import set_seed
    from safetensors.torch import load_file, save_file

    from ..core.locks import unit_lock
    from ..core.naming import unit_name
    from ..core.files import atomic_write
    from ..core.targets import base_prefix

    steps, prefix = config.mlm_head_warmup_steps, base_prefix(model)
    settings = {"model": config.model, "data_dir": config.data_dir, "max_train_samples": config.max_train_samples,
                "max_length": config.max_length, "batch_size": config.batch_size, "steps": steps,
                "lr": config.mlm_head_warmup_lr, "mlm_probability": config.mlm_probability, "seed": config.seed}
    name = unit_name("mlm-head", settings)
    path = Path(root) / name / "head.safetensors"
    head = {n: p for n, p in model.named_parameters() if not n.startswith(prefix)}  # tied decoder: in the body
    note = f"θ0 = pre-trained body + MLM head warmed {steps} steps with the body frozen ({name})"
    with unit_lock(path.parent, tuner.accelerator):  # one writer: another process may be warming it up
        if path.exists():
            saved = load_file(str(path))
            with torch.no_grad():
                for n, p in head.items():
                    p.copy_(saved[n])
            return note
        _log.info("warming up the MLM head for %d steps with the body frozen (%s)", steps, name)
        device = next(model.parameters()).device  # give the model back where it was, as the cached path does
        frozen = [p for n, p in model.named_parameters() if n not in head and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        checkpoint_dir, lr = tuner.checkpoint_dir, tuner.config.learning_rate
        tuner.checkpoint_dir, tuner.config.learning_rate = None, config.mlm_head_warmup_lr
        try:
            set_seed(config.seed)
            optimizer, scheduler = tuner.optimizer_and_scheduler(model)
            tuner.train(model, optimizer, tuner.training_step, scheduler, max_steps=steps)
        finally:
            tuner.checkpoint_dir, tuner.config.learning_rate = checkpoint_dir, lr
            for p in frozen:
                p.requires_grad_(True)
        if tuner.accelerator.is_main_process:
            tensors = {n: p.detach().cpu().clone().contiguous() for n, p in head.items()}
            atomic_write(path, lambda tmp: save_file(tensors, tmp))
        _log.info("MLM head warmed: %s", tuner.evaluate(model))
        model.to(device)
        return note


class _MLMCollator:
    """BERT's dynamic masking for training batches (drops the bookkeeping ``length`` column).

    After :meth:`reseed` a batch's masks are drawn from that seed and the batch's own token ids, not from the
    global RNG: a pass over the data masks the same way whether or not training was resumed mid-pass, and
    each pass (a new seed) masks differently. Blocks all have the same length, so no padding is needed.
    """

    def __init__(self, tokenizer, probability: float):
        self.tokenizer, self.probability, self.seed = tokenizer, probability, None

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, rows):
        from transformers import default_data_collator
        generator = None
        if self.seed is not None:
            ids = torch.tensor([i for r in rows for i in r["input_ids"]], dtype=torch.int64).numpy().tobytes()
            # torch's CPU generator keeps 32 bits of a seed: mix the pass seed and the batch into 32 bits
            generator = torch.Generator().manual_seed(zlib.crc32(str(self.seed).encode() + b":" + ids))
        return default_data_collator([{**_mask(r, self.tokenizer, self.probability, generator),
                                       "attention_mask": r["attention_mask"]} for r in rows])


def _mask(row, tokenizer, probability: float, generator: torch.Generator):
    """BERT's 80/10/10 masking of one block, drawn from ``generator`` (fixed for evaluation)."""
    ids = torch.tensor(row["input_ids"])
    special = torch.tensor(tokenizer.get_special_tokens_mask(row["input_ids"], already_has_special_tokens=True),
                           dtype=torch.bool)
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator)
    masked = ids.clone()
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(len(tokenizer), ids.shape, generator=generator)[swap]
    return {"input_ids": masked.tolist(), "labels": labels.tolist()}


def text_files(folder: str) -> Dict[str, str]:
    """The train and evaluation text files of ``folder``: train.txt + validation.txt, else WikiText's valid.txt +
    test.txt (the offline copy without a train split)."""
    names = {"train": ["train.txt"], "validation": ["validation.txt"]}
    if os.path.isfile(os.path.join(folder, "train.txt")) and os.path.isfile(os.path.join(folder, "validation.txt")):
        return {split: os.path.join(folder, files[0]) for split, files in names.items()}
    if os.path.isfile(os.path.join(folder, "valid.txt")) and os.path.isfile(os.path.join(folder, "test.txt")):
        return {"train": os.path.join(folder, "valid.txt"), "validation": os.path.join(folder, "test.txt")}
    raise DataError(f"MLM data: {folder} needs train.txt + validation.txt (or WikiText's valid.txt + test.txt)")
