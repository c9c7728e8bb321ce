"""What early-stopped search rounds save: optimizer steps to reach the IMP ticket at the target sparsity, with and
without early stopping, each ticket's fully trained metric, and how much the two tickets' masks overlap.

Per task, in one run (all runs are cached under ``--output-root``, so a killed benchmark resumes where it stopped):

* IMP without early stopping (every round trains its full budget; round 0 is also a full-model fine-tuning),
* IMP with early stopping (rounds 0 .. L-1 only search for the next mask and stop once it settles; round L, the
  ticket at the target sparsity, trains fully: its metric is a fully trained f(x; m ⊙ θ0, γ0), like the other's),
* the full model over ``--seeds`` fine-tunings (round 0 of the first run, plus seeds+1 ... of ``full_model``),
* each of the two tickets retrained in full from (θ0, γ0) with ``--retrain-seeds`` other data-order seeds, since a
  single fine-tuning at this budget is noisy (the metric's ``ticket_metric_mean`` is over its run's last round and
  these retrainings).

    python benchmarks/search_cost.py --tasks sst2 stsb --json docs/results/search_cost.json
"""
import argparse
import dataclasses
import json
import logging
import os
import statistics
from datetime import datetime
from pathlib import Path

import torch

from accelerate.utils import set_seed

from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare, run_imp
from nni_bert_tickets.experiments.tables import cached, full_model
from nni_bert_tickets.core.imp_state import ticket_file
from nni_bert_tickets.core.ticket import Ticket


def ticket(config: ExperimentConfig, record) -> Ticket:
    return Ticket.load(Path(config.output_root) / config.run_name() / "imp" / ticket_file(record["round"]))


def overlap(a: Ticket, b: Ticket):
    """Jaccard index of the kept weights, and the fraction of equal mask bits."""
    both = sum(int((a.masks[k] & b.masks[k]).sum()) for k in a.masks)
    either = sum(int((a.masks[k] | b.masks[k]).sum()) for k in a.masks)
    equal = sum(int((a.masks[k] == b.masks[k]).sum()) for k in a.masks)
    return both / either, equal / sum(m.numel() for m in a.masks.values())


def wall_seconds(config: ExperimentConfig) -> float:
    """From the IMP run's first to its last log line (also right when the run was read back from its cache)."""
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in
              (Path(config.output_root) / config.run_name() / "log.txt").read_text().splitlines() if line[:4].isdigit()]
    return (stamps[-1] - stamps[0]).total_seconds()


def steps(trajectory):
    search = sum(r["steps"] for r in trajectory[:-1])
    return {"search": search, "final_training": trajectory[-1]["steps"], "total": search + trajectory[-1]["steps"]}


def retrain(config: ExperimentConfig, run: dict, seed: int) -> float:
    """The run's final ticket fine-tuned in full from (θ0, γ0) with data-order seed ``seed`` (cached)."""
    settings = {**config.training_settings(), "ticket_of": run["run"], "round": run["trajectory"][-1]["round"],
                "seed": seed}

    def compute(run_dir):
        model, tuner = prepare(config, checkpoint_dir=run_dir / "step-checkpoint")  # θ0, and γ0 from config.seed
        ticket(config, run["trajectory"][-1]).apply(model)
        set_seed(seed)
        return tuner.fit(model)
    return cached(Path(config.output_root), f"retrain-{config.task}", settings, compute)["default"]


def one_task(task: str, args) -> dict:
    base = ExperimentConfig(task=task, model=args.model, data_dir=args.data_dir, max_train_samples=args.train_samples,
                            max_length=args.max_length, learning_rate=args.learning_rate, epochs=args.epochs,
                            target_sparsity=args.target, step=args.step, prune_pooler=False, head="rewind",
                            seed=args.seed, output_root=args.output_root).validate()
    early = dataclasses.replace(base, early_stop_every=args.check_every, early_stop_threshold=args.threshold,
                                early_stop_patience=args.patience, early_stop_window=args.window,
                                early_stop_min_fraction=args.min_fraction).validate()
    plain = run_imp(base)
    stopped = run_imp(early)
    fulls = [plain["trajectory"][0]["metric"]] + [full_model(base, args.seed + i)["default"] for i in range(1, args.seeds)]
    mean, std = statistics.fmean(fulls), statistics.pstdev(fulls)
    jaccard, equal_bits = overlap(ticket(base, plain["trajectory"][-1]), ticket(early, stopped["trajectory"][-1]))
    a, b = steps(plain["trajectory"]), steps(stopped["trajectory"])
    again = {name: [retrain(config, run, args.seed + 100 + i) for i in range(args.retrain_seeds)]
             for name, config, run in (("without", base, plain), ("with", early, stopped))}
    result = {
        "task": task, "metric": plain["metric"], "sparsity": plain["trajectory"][-1]["sparsity"],
        "full_model": {"runs": fulls, "mean": mean, "std": std},
        "without_early_stop": {"steps": a, "ticket_metric": plain["trajectory"][-1]["metric"], "run": plain["run"],
                               "wall_s": wall_seconds(base)},
        "with_early_stop": {"steps": b, "ticket_metric": stopped["trajectory"][-1]["metric"], "run": stopped["run"],
                            "wall_s": wall_seconds(early),
                            "search_round_steps": [r["steps"] for r in stopped["trajectory"][:-1]],
                            "mask_checks": [r["mask_checks"] for r in stopped["trajectory"][:-1]]},
        "search_steps_ratio": a["search"] / b["search"], "total_steps_ratio": a["total"] / b["total"],
        "mask_jaccard_kept": jaccard, "mask_equal_bits": equal_bits,
    }
    for key, name in (("without_early_stop", "without"), ("with_early_stop", "with")):
        runs = [result[key]["ticket_metric"], *again[name]]
        result[key].update(retrained=again[name], ticket_metric_mean=statistics.fmean(runs),
                           ticket_metric_std=statistics.pstdev(runs))
        result[key]["within_full_std"] = result[key]["ticket_metric"] >= mean - std - 1e-9
        result[key]["mean_within_full_std"] = result[key]["ticket_metric_mean"] >= mean - std - 1e-9
    return result


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of the searches compared here (also read by ``mask_swap.py``)."""
    parser.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--check-every", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--window", type=int, default=1, help="Early-Bird window: largest distance to the last W masks")
    parser.add_argument("--min-fraction", type=float, default=0.0, help="no round stops before this fraction of it")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    parser.add_argument("--output-root", default="runs/search_cost")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["sst2", "stsb"])
    add_search_arguments(parser)
    parser.add_argument("--seeds", type=int, default=2, help="full-model fine-tunings (round 0 is one of them)")
    parser.add_argument("--retrain-seeds", type=int, default=2, help="extra full trainings of each final ticket")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (the full model's std needs two fine-tunings)")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = [one_task(task, args) for task in args.tasks]
    print("| task | full model (mean ± std) | steps without ES (search + final) | ticket (mean ± std) | steps with "
          "ES (search + final) | ticket (mean ± std) | search steps saved | total saved | mask Jaccard | equal bits |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        a, b, full = r["without_early_stop"], r["with_early_stop"], r["full_model"]
        print(f"| {r['task']} | {full['mean']:.4f} ± {full['std']:.4f} | {a['steps']['search']} + "
              f"{a['steps']['final_training']} | {a['ticket_metric']:.4f} ({a['ticket_metric_mean']:.4f} ± "
              f"{a['ticket_metric_std']:.4f}) | {b['steps']['search']} + {b['steps']['final_training']} | "
              f"{b['ticket_metric']:.4f} ({b['ticket_metric_mean']:.4f} ± {b['ticket_metric_std']:.4f}) | "
              f"{r['search_steps_ratio']:.2f}x | "
              f"{r['total_steps_ratio']:.2f}x | {r['mask_jaccard_kept']:.4f} | {r['mask_equal_bits']:.4f} |")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
