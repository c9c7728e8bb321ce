"""CPU inference throughput of a structured ticket versus the dense model, with its accuracy, in one run.

A structured ticket (whole heads and FFN channels removed, rewound to θ0, retrained each round) is found on a
real GLUE task with the embedded model; the dense model is the same IMP run's first (unpruned) round. Both are
timed on the same validation inputs, same batches, in this process.

    python benchmarks/structured_speed.py --task sst2 --head-sparsity 0.5 --channel-sparsity 0.5
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from nni_bert_tickets.core.files import atomic_write_text
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare
from nni_bert_tickets.core.structured import StructuredIMP, save_structured

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command, structured_arguments  # noqa: E402  (benchmarks/ is the script's folder)


@torch.no_grad()
def examples_per_second(model, batches, repeats=3):
    model.eval()
    model(**batches[0])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
        times.append(time.perf_counter() - start)
    return sum(len(b["input_ids"]) for b in batches) / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    structured_arguments(parser)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--step", type=float, default=0.25)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--save", help="also save the structured ticket here (loads with transformers alone)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    config = ExperimentConfig(task=args.task, model=args.model, data_dir=args.data_dir, epochs=args.epochs,
                              max_train_samples=args.train_samples, learning_rate=args.learning_rate,
                              max_length=args.max_length, seed=args.seed).validate()
    model, tuner = prepare(config)
    example = next(iter(tuner.eval_batches(tuner.eval_data[tuner.task.eval_splits[0]])))
    inputs = {k: v[:2] for k, v in example.items() if k != "labels"}
    dense_state = {}

    def fit(m):
        metrics = tuner.fit(m)
        if not dense_state:
            dense_state["model"] = m
            dense_state["metric"] = metrics["default"]
        return metrics
    imp = StructuredIMP(model, fit, inputs, args.head_sparsity, args.channel_sparsity, args.step)
    small = imp.run()
    batches = [{k: v for k, v in b.items() if k != "labels"}
               for b in tuner.eval_batches(tuner.eval_data[tuner.task.eval_splits[0]])]
    dense_speed = examples_per_second(dense_state["model"], batches)
    small_speed = examples_per_second(small, batches)
    result = {"command": command(__file__, argv), "task": args.task, "head_sparsity": imp.ticket.head_sparsity,
              "channel_sparsity": imp.ticket.channel_sparsity,
              "dense_params": sum(p.numel() for p in dense_state["model"].parameters()),
              "ticket_params": sum(p.numel() for p in small.parameters()),
              "dense_metric": dense_state["metric"], "ticket_metric": imp.trajectory[-1]["metric"],
              "dense_ex_per_s": dense_speed, "ticket_ex_per_s": small_speed, "speedup": small_speed / dense_speed,
              "trajectory": imp.trajectory}
    print(f"{args.task}: dense {result['dense_metric']:.4f} at {dense_speed:.1f} ex/s; structured ticket "
          f"({result['head_sparsity']:.0%} heads, {result['channel_sparsity']:.0%} FFN channels removed) "
          f"{result['ticket_metric']:.4f} at {small_speed:.1f} ex/s: {result['speedup']:.2f}x, "
          f"{100 * (result['dense_metric'] - result['ticket_metric']):+.2f} points lost")
    if args.save:
        save_structured(small, imp.ticket, args.save, tuner.tokenizer)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
