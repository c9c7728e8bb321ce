"""Ticket and IMP resume-state file sizes: the embedded model measured, bert-base computed.

    python benchmarks/storage_sizes.py [--model ../shared/models/all-MiniLM-L6-v2] [--json out.json]

Measures the files the installed ``nni_bert_tickets`` writes for the embedded model (a ticket over its 37
matrices; the IMP resume state with θ0 rewinding after a middle round and after the last one, from a run whose
training loop does nothing, since only the files are measured), and computes the same files for bert-base
(73 matrices, a randomly shaped model on the meta device: no download) for the 0.1.0 layout and the current one.
The computed sizes are tensor bytes only; the measured ones also hold the header (JSON metadata), so the script
prints the computed embedded-model sizes beside the measured ones as a check of the formulas.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

import nni
import torch
from nni.compression import TorchEvaluator
from transformers import BertConfig, BertForSequenceClassification

from nni_bert_tickets import IMPPruner, bert_config_list, one_shot_magnitude_ticket, prunable_weights

ROOT = Path(__file__).resolve().parents[1]


def layout(model: torch.nn.Module) -> dict:
    """Counts the file formats depend on: parameter bytes of the whole model and of the task head, prunable
    weights, and bytes of the prunable masks packed 8 per byte."""
    prefix = model.base_model_prefix + "."
    params = dict(model.named_parameters())
    masks = prunable_weights(model)
    return {"param_bytes": sum(p.numel() * p.element_size() for p in params.values()),
            "head_bytes": sum(p.numel() * p.element_size() for n, p in params.items() if not n.startswith(prefix)),
            "matrices": len(masks), "prunable": sum(w.numel() for w in masks.values()),
            "packed": sum(math.ceil(w.numel() / 8) for w in masks.values())}


def computed(c: dict) -> dict:
    """Tensor bytes of each file. 0.1.0: bool masks; a state of the wrapped model's state_dict (parameters, NNI's
    copy of each pruned weight, float32 masks) plus θ0 rewind tensors for every parameter. Now: packed masks; a
    state after a rewinding round holds the head, its θ0 and the packed masks (the body is θ0 ⊙ m, reloaded from
    the model); after the last round it holds the trained parameters, the head's θ0 and the packed masks."""
    return {"ticket_0.1.0": c["prunable"], "ticket_now": c["packed"],
            "state_0.1.0": c["param_bytes"] + 2 * 4 * c["prunable"] + c["param_bytes"],
            "state_middle_now": 2 * c["head_bytes"] + c["packed"],
            "state_final_now": c["param_bytes"] + c["head_bytes"] + c["packed"]}


def measure(model_path: str, folder: str) -> dict:
    model = BertForSequenceClassification.from_pretrained(model_path, num_labels=2)
    c = layout(model)
    ticket = one_shot_magnitude_ticket(model, 0.5)
    ticket.save(os.path.join(folder, "ticket.safetensors"))
    out = {"ticket": os.path.getsize(os.path.join(folder, "ticket.safetensors"))}
    state = os.path.join(folder, "imp", "imp_state.safetensors")

    def no_training(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None):
        pass

    def on_round(record, ticket):  # round 1 starts from the state written after round 0
        if record["round"] == 1:
            out["state_middle"] = os.path.getsize(state)
    optimizer = nni.trace(torch.optim.AdamW)(model.parameters(), lr=1e-5)
    evaluator = TorchEvaluator(no_training, optimizer, lambda batch, model: None, evaluating_func=lambda m: 0.0)
    pruner = IMPPruner(model, bert_config_list(model, 0.1), evaluator, output_dir=os.path.join(folder, "imp"),
                       on_round=on_round)
    pruner.compress()
    out["state_final"] = os.path.getsize(state)
    return {"layout": c, "measured": out, "computed": computed(c)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        embedded = measure(args.model, folder)
    with torch.device("meta"):
        bert_base = BertForSequenceClassification(BertConfig(num_labels=2))  # bert-base-uncased's shapes
    base = {"layout": layout(bert_base)}
    base["computed"] = computed(base["layout"])
    result = {"embedded": embedded, "bert_base": base}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
