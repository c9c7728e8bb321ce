"""Which IMP levels a Table-2 verdict needs trained (issue 22, item 3), replayed on committed trajectories.

Under early-stopped search (or a fresh head) no IMP round is a verdict of its own: each level that a verdict looks
at is one more fine-tuning from θ0. ``verdict_levels`` chooses which: ``all`` (the paper), ``top_down`` (from the
highest level down to the strict answer: exact by definition) or ``bisect`` (assumes the matching levels form a
down-set). This replays :func:`~nni_bert_tickets.experiments.verdicts.probe` on every committed CPU Table 2, one run
per level (the IMP run's own round, the only run every level has), and reports per task the trainings each order
needs, whether its answers equal ``all``'s, and whether the trajectory is a down-set under each criterion.
No training happens here: it reads ``docs/results/cpu/tables/table2-*.json``.

Cost, in full IMP rounds (a model, not a measurement): a search of L levels with early stopping costs L x f + 1
(round 0 and L - 1 search rounds that stop at a fraction f of the round, the last level trained in full, which is
its own verdict under ``head: rewind``) plus one round per level the order trains. Against it: the full search
with ``head: rewind`` (L + 1 rounds, every verdict free: the CPU configs) and with a fresh head (L + 1 + L, each
level retrained from θ0: the reference code's protocol). f defaults to the fraction measured in
``docs/results/search_cost.json`` (threshold 0.01); ``--search-cost`` takes other measurements (several files: the
mean over their tasks). ``--verdict-seeds k`` adds the seeds Table 2 gives its decisive levels (k - 1 more trainings
for each level :func:`~nni_bert_tickets.experiments.verdicts.decisive_levels` names from the single runs) to both
sides: they cost the same under either search, and dilute what early stopping saves.

    python benchmarks/verdict_levels.py --json docs/results/verdict_levels.json
    python benchmarks/verdict_levels.py --search-cost docs/results/search_cost_*_window5.json --verdict-seeds 3 \
        --json docs/results/verdict_levels_window5_seeds3.json
"""
import argparse
import json
import statistics
from pathlib import Path

from nni_bert_tickets.core.files import atomic_write_text
from nni_bert_tickets.experiments.verdicts import (PROBE_ORDERS, decisive_levels, highest, is_down_set, matching,
                                                   probe, strictly_matching)

ROOT = Path(__file__).resolve().parents[1]


def search_fraction(*paths: Path) -> float:
    """Steps of the early-stopped search rounds over the steps of the same rounds trained in full, over tasks."""
    results = [r for path in paths for r in json.loads(path.read_text())["results"]]
    return statistics.fmean(r["with_early_stop"]["steps"]["search"] / r["without_early_stop"]["steps"]["search"]
                            for r in results)


def replay(table: dict, f: float, verdict_seeds: int = 1) -> dict:
    first = {row["sparsity"]: row["imp_stats"]["runs"][0] if "imp_stats" in row else row["imp"] for row in table["rows"]}
    full, levels = table["full"], sorted(first)
    out = {"task": table["task"], "levels": len(levels),
           "down_set": {"matching": is_down_set({lv: matching(v, full) for lv, v in first.items()}),
                        "strictly_matching": is_down_set({lv: strictly_matching(v, full) for lv, v in first.items()})}}
    n = len(levels)
    seeds = (verdict_seeds - 1) * len(decisive_levels({lv: [v] for lv, v in first.items()}, full))
    out["rounds_full_search_head_rewind"], out["rounds_full_search_fresh_head"] = n + 1 + seeds, 2 * n + 1 + seeds
    out["verdict_seed_trainings"] = seeds
    for order in PROBE_ORDERS:
        calls = []
        runs = probe(levels, full, 1, lambda level, i: calls.append(level) or first[level], order,
                     runs={levels[-1]: [first[levels[-1]]]})  # the last round trains in full: its own verdict
        rounds = n * f + 1 + len(calls) + seeds
        out[order] = {"trained": len(calls), "highest_matching": highest(runs, full),
                      "highest_strictly_matching": highest(runs, full, strict=True), "rounds": rounds,
                      "saving_vs_head_rewind": out["rounds_full_search_head_rewind"] / rounds,
                      "saving_vs_fresh_head": out["rounds_full_search_fresh_head"] / rounds}
    for order in PROBE_ORDERS[1:]:
        out[order]["same_answers"] = all(out[order][key] == out["all"][key]
                                         for key in ("highest_matching", "highest_strictly_matching"))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="docs/results/cpu/tables")
    parser.add_argument("--search-cost", nargs="+", default=["docs/results/search_cost.json"],
                        help="where f, the fraction of a round an early-stopped search round trains, is read")
    parser.add_argument("--verdict-seeds", type=int, default=1, help="trainings a decisive level gets (Table 2's "
                        "verdict_seeds); the extra ones are added to both searches")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.verdict_seeds < 1:
        parser.error(f"--verdict-seeds must be at least 1, got {args.verdict_seeds}")
    f = search_fraction(*(ROOT / p for p in args.search_cost))
    tasks = [replay(json.loads(p.read_text()), f, args.verdict_seeds)
             for p in sorted((ROOT / args.tables).glob("table2-*.json"))]
    summary = {order: {"trained": sum(t[order]["trained"] for t in tasks),
                       "geomean_saving_vs_head_rewind": statistics.geometric_mean(
                           t[order]["saving_vs_head_rewind"] for t in tasks),
                       "geomean_saving_vs_fresh_head": statistics.geometric_mean(
                           t[order]["saving_vs_fresh_head"] for t in tasks),
                       "tasks_with_the_same_answers": sum(t[order].get("same_answers", True) for t in tasks)}
               for order in PROBE_ORDERS}
    options = ([] if args.search_cost == parser.get_default("search_cost") else ["--search-cost", *args.search_cost]) \
        + ([] if args.verdict_seeds == 1 else ["--verdict-seeds", str(args.verdict_seeds)])
    result = {"command": " ".join(["python benchmarks/verdict_levels.py", *options, "--json", str(args.json)]),
              "source": f"{args.tables}/table2-*.json (one run per level: the IMP run's own round)",
              "search_cost": args.search_cost, "verdict_seeds": args.verdict_seeds,
              "note": "the embedded 6-layer model at CPU scale, not the paper's numbers; single runs per level",
              "search_fraction": f, "tasks": tasks, "summary": summary}
    text = json.dumps(result, indent=1)
    if args.json:
        atomic_write_text(args.json, text + "\n")
    for t in tasks:
        print(f"{t['task']:6s} down-set {t['down_set']['matching']!s:5s} / {t['down_set']['strictly_matching']!s:5s}  "
              + "  ".join(f"{o} {t[o]['trained']} ({t[o]['highest_matching']}, {t[o]['highest_strictly_matching']}) "
                          f"{t[o]['saving_vs_head_rewind']:.2f}x/{t[o]['saving_vs_fresh_head']:.2f}x"
                          for o in PROBE_ORDERS))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
