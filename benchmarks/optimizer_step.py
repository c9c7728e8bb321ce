"""What one AdamW step costs on this CPU, by implementation: PyTorch's per-tensor loop (its CPU default, what the
fine-tuning loop uses), ``foreach=True`` and ``fused=True``, on the embedded model's parameters with the loop's
parameter groups (no decay on biases and LayerNorm) and gradients shaped like a training step's.

A profile of an MRPC fine-tuning on two threads put about a fifth of a step in ``_single_tensor_adam``. This measures
the step alone, the implementations interleaved (order rotated each repeat, median), and after ``--steps`` steps
from the same start compares every parameter with the per-tensor loop's: a faster implementation is only a drop-in
if the parameters stay equal (the run store's cached units were trained with the loop).

    python benchmarks/optimizer_step.py --json docs/results/optimizer_step.json
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from nni_bert_tickets.tasks.data import load_pretrained_body
from nni_bert_tickets.training.loop import parameter_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command, emit  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"per_tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def groups(model):
    """The loop's groups (decay 0.01 here: a non-zero decay exercises that branch too)."""
    return parameter_groups(model, 0.01)


def fake_grads(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    base = load_pretrained_body(AutoModelForSequenceClassification, args.model, num_labels=2)
    models = {k: copy.deepcopy(base) for k in KINDS}
    opts = {k: torch.optim.AdamW(groups(m), lr=1e-4, eps=1e-8, **KINDS[k]) for k, m in models.items()}
    samples = {k: [] for k in KINDS}
    names = list(KINDS)
    for step in range(args.steps):
        order = names[step % len(names):] + names[:step % len(names)]
        for k in order:
            fake_grads(models[k], step)  # the same gradients for every implementation
            start = time.perf_counter()
            opts[k].step()
            samples[k].append(time.perf_counter() - start)
    reference = dict(models["per_tensor"].named_parameters())
    out = {"command": command(__file__),
           "model": args.model, "threads": args.threads, "steps": args.steps,
           "parameters": sum(p.numel() for p in base.parameters()),
           "note": "one AdamW step on this machine's CPU; other work paused; median over the steps after the first",
           "torch": torch.__version__, "kinds": {}}
    for k in KINDS:
        params = dict(models[k].named_parameters())
        with torch.no_grad():
            diff = max(float((params[n] - reference[n]).abs().max()) for n in reference)
        median = statistics.median(samples[k][1:])
        out["kinds"][k] = {"median_s": median, "speedup_vs_per_tensor": None, "max_abs_diff_vs_per_tensor": diff,
                           "bitwise_equal": diff == 0.0}
    for k in KINDS:
        out["kinds"][k]["speedup_vs_per_tensor"] = out["kinds"]["per_tensor"]["median_s"] / out["kinds"][k]["median_s"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--steps", type=int, default=21, help="optimizer steps per implementation (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.threads < 1:
        parser.error("--steps must be at least 2 (the first is warm-up) and --threads at least 1")
    emit(run(args), args.json)


if __name__ == "__main__":
    main()
