"""What a cheap search saves on the way to a Table-2 verdict, at the settings of the CPU Table 2 (issue 22, item 5).

For each ``examples/configs/cpu/table2-<task>.yaml`` it runs Table 2 twice on the same run store:

* **full search**: the config as shipped (every IMP round trained in full; each round with the head rewound is its
  own verdict training; the decisive levels get ``verdict_seeds`` trainings, the baselines theirs);
* **cheap search**: the same config with early-stopped search rounds (``--check-every``, ``--threshold``,
  ``--patience``, ``--window``, ``--min-fraction``) and ``verdict_levels: top_down`` (only the levels the answers
  need are trained in full from θ0).

Both share every unit they can (the full model's seeds; the full search is the Table 2 rerun itself, read from the
store). Per task: optimizer steps to the verdict (the IMP run's rounds as run, plus one fine-tuning's steps for each
other training the table made: the full model's seeds, the verdict seeds and trained levels, the baselines; and
``search_steps``, the part the search rule changes: the IMP run and the trainings of its masks), the IMP
runs' wall time, the highest matching and strictly matching levels of both, each answer's ticket over its
trainings (mean ± std, n), and how much the two tickets' masks agree at the full search's answer. The cheap search
runs first, so ``tables/table2-<task>.json`` ends as the full search's.

    python benchmarks/search_cost_table2.py --configs examples/configs/cpu/table2-mrpc.yaml \\
        --json docs/results/search_cost_table2.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from nni_bert_tickets.core.files import atomic_write_text
from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
from nni_bert_tickets.experiments.imp_run import imp_run_dir
from nni_bert_tickets.experiments.tables import imp_ticket, table2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command  # noqa: E402  (the benchmarks beside this one)
from search_cost import overlap  # noqa: E402


def trainings(result: Dict[str, Any], config: ExperimentConfig) -> Dict[str, int]:
    """Fine-tunings Table 2 made besides the IMP run's rounds: full-model seeds, verdict trainings of IMP masks
    (an IMP round trained in full with the head rewound is one of its level's runs, not an extra), baselines."""
    rounds = {r["target_sparsity"]: r for r in _trajectory(config)[1:]}
    own = 0
    for row in result["rows"]:
        record = rounds.get(row["sparsity"])
        own += int(config.head == "rewind" and record is not None and record.get("metric") is not None)
    imp = sum(row["imp_stats"]["n"] for row in result["rows"]) - own
    base = sum(row[f"{kind}_stats"]["n"] for row in result["rows"] for kind in result["baselines"]
               if f"{kind}_stats" in row)
    return {"full_model": result["full"]["n"], "imp_verdicts": imp, "baselines": base}


def _trajectory(config: ExperimentConfig) -> List[Dict[str, Any]]:
    return json.loads((imp_run_dir(config) / "metrics.json").read_text())["trajectory"][:len(config.levels())]


def cost(result: Dict[str, Any], config: ExperimentConfig, finetuning: int) -> Dict[str, Any]:
    counted = trainings(result, config)
    imp_steps = sum(r.get("steps") or 0 for r in _trajectory(config))
    other = sum(counted.values()) * finetuning
    return {"imp_run_steps": imp_steps, "trainings": counted, "other_steps": other, "total_steps": imp_steps + other,
            "search_steps": imp_steps + counted["imp_verdicts"] * finetuning,
            "imp_run_wall_s": _wall_seconds(imp_run_dir(config) / "log.txt")}


def _wall_seconds(log: Path) -> Optional[float]:
    """From the IMP run's first to its last log line (a resumed run counts the pause between its sessions too)."""
    from datetime import datetime
    stamps = [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in log.read_text().splitlines()
              if line[:4].isdigit()] if log.is_file() else []
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else None


def answer(result: Dict[str, Any], key: str) -> Optional[Dict[str, Any]]:
    level = result[key]
    row = next((r for r in result["rows"] if level is not None and abs(r["sparsity"] - level) < 1e-6), None)
    return None if row is None else {"sparsity": level, **row["imp_stats"]}


def one_task(path: str, args) -> Dict[str, Any]:
    full_config = ExperimentConfig(**load_yaml(path)).validate()
    if full_config.experiment != "table2":
        raise SystemExit(f"{path}: experiment {full_config.experiment!r}, expected table2")
    cheap_config = dataclasses.replace(
        full_config, early_stop_every=args.check_every, early_stop_threshold=args.threshold,
        early_stop_patience=args.patience, early_stop_window=args.window, early_stop_min_fraction=args.min_fraction,
        verdict_levels="top_down").validate()
    cheap = table2(cheap_config)
    full = table2(full_config)
    finetuning = _trajectory(full_config)[0]["steps"]  # round 0 of the full search: one whole fine-tuning
    a, b = cost(full, full_config, finetuning), cost(cheap, cheap_config, finetuning)
    level = full["highest_winning_sparsity"]
    agreement = None
    if level is not None and any(abs(r["target_sparsity"] - level) < 1e-6 for r in _trajectory(cheap_config)):
        jaccard, equal = overlap(imp_ticket(full_config, level), imp_ticket(cheap_config, level))
        agreement = {"sparsity": level, "jaccard_kept": jaccard, "equal_bits": equal}
    return {
        "task": full_config.task, "config": path, "metric": full["metric"], "full_model": full["full"],
        "one_finetuning_steps": finetuning,
        "full_search": {**a, "highest_matching": answer(full, "highest_winning_sparsity"),
                        "highest_strictly_matching": answer(full, "highest_strictly_matching_sparsity"),
                        "imp_run": full["imp_run"]},
        "cheap_search": {**b, "highest_matching": answer(cheap, "highest_winning_sparsity"),
                         "highest_strictly_matching": answer(cheap, "highest_strictly_matching_sparsity"),
                         "imp_run": cheap["imp_run"], "untrained_levels": cheap["untrained_levels"]},
        "steps_ratio": a["total_steps"] / b["total_steps"],
        "search_steps_ratio": a["search_steps"] / b["search_steps"],
        "same_highest_matching": full["highest_winning_sparsity"] == cheap["highest_winning_sparsity"],
        "same_highest_strictly_matching":
            full["highest_strictly_matching_sparsity"] == cheap["highest_strictly_matching_sparsity"],
        "masks_at_full_answer": agreement,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", required=True, help="Table 2 configs (examples/configs/cpu/...)")
    parser.add_argument("--check-every", type=int, default=5, help="early stop: steps between mask checks")
    parser.add_argument("--threshold", type=float, default=0.01, help="early stop: mask distance that counts as settled")
    parser.add_argument("--patience", type=int, default=3, help="early stop: settled checks in a row")
    parser.add_argument("--window", type=int, default=5, help="Early-Bird window: largest distance to the last W masks")
    parser.add_argument("--min-fraction", type=float, default=0.0, help="no round stops before this fraction of it")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the results here (after each task, atomically)")
    args = parser.parse_args(argv)
    for path in args.configs:  # bad input before any training
        if not Path(path).is_file():
            parser.error(f"no config at {path}")
        config = ExperimentConfig(**load_yaml(path)).validate()
        dataclasses.replace(config, early_stop_every=args.check_every, early_stop_threshold=args.threshold,
                            early_stop_patience=args.patience, early_stop_window=args.window,
                            early_stop_min_fraction=args.min_fraction).validate()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"command": command(__file__, argv),
              "note": "the embedded 6-layer model at CPU scale, not the paper's numbers",
              "early_stop": {"check_every": args.check_every, "threshold": args.threshold, "patience": args.patience,
                             "window": args.window, "min_fraction": args.min_fraction},
              "tasks": []}
    for path in args.configs:
        result["tasks"].append(one_task(path, args))
        ratios = [t["steps_ratio"] for t in result["tasks"]]
        result["steps_ratio_geometric_mean"] = math.exp(statistics.fmean(math.log(r) for r in ratios))
        result["search_steps_ratio_geometric_mean"] = math.exp(statistics.fmean(
            math.log(t["search_steps_ratio"]) for t in result["tasks"]))
        result["same_answers_everywhere"] = all(t["same_highest_matching"] for t in result["tasks"])
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
