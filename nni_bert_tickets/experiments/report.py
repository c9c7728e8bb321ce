"""Render the paper's tables (markdown) and plots (PNG) from an experiment root.

    python -m nni_bert_tickets.experiments.report runs/smoke [--out docs/results/smoke]

Reads ``<root>/tables/*.json`` written by :mod:`nni_bert_tickets.experiments.tables` and writes ``report.md`` plus
``table2-<task>.png`` (metric vs sparsity with the baselines and the full model's ±1 std band),
``table3.png`` (rewinding bars), ``transfer.png`` (the transfer heatmap) and, for IMP-only runs
(``experiment: imp``, e.g. MLM), ``imp-<task>.png``; every IMP run's levels are listed with every metric.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report_table2 import (LABELS, POINTS, _fmt, _points, _scale,  # noqa: E402
                            table2_markdown, table2_plot)
from .config import TRAINING_FIELDS  # noqa: E402
from .verdicts import transfer_verdicts  # noqa: E402

__all__ = ["render", "main", "table2_markdown"]
_log = logging.getLogger(__name__)


def _load(root: Path) -> List[Dict[str, Any]]:
    files = sorted((root / "tables").glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no results under {root / 'tables'}; run an experiment with output_root={root}")
    return [json.loads(f.read_text()) for f in files]


def dense_grid_markdown(results: List[Dict[str, Any]]) -> str:
    """The full model alone over learning rate × epochs, per task, and the cross-task verdict."""
    from .grid import grid_verdict
    out = ["## Is the full model trained well? The dense grid", "",
           "The full model alone at each learning rate × epochs: mean ± sample std (n seeds). " + POINTS]
    for r in results:
        scale = _scale(r["task"])
        out += ["", f"### {r['task']} (current setting: lr {r['current']['learning_rate']:g}, "
                    f"{r['current']['epochs']:g} epoch{'' if r['current']['epochs'] == 1 else 's'})", "",
                "| learning rate | epochs | full model | runs |", "|---:|---:|---:|---|"]
        for c in r["cells"]:
            std = "–" if c["std"] is None else _fmt(c["std"], scale)
            out.append(f"| {c['learning_rate']:g} | {c['epochs']:g} | {_fmt(c['mean'], scale)} ± {std} ({c['n']}) | "
                       + ", ".join(_fmt(x, scale) for x in c["runs"]) + " |")
    verdict = grid_verdict(results)
    scale = {r["task"]: _scale(r["task"]) for r in results}
    unit = "std" if verdict["decidable"] else "points"
    out += ["", "Across tasks: each cell's mean minus the current setting's, "
            + ("in units of the task's mean std over its cells:" if verdict["decidable"] else
               "in points (single runs: no std yet, so no verdict):"), "",
            "| learning rate | epochs | " + " | ".join(verdict["tasks"]) + " | average | clearly better |",
            "|---:|---:|" + "---:|" * (len(verdict["tasks"]) + 1) + "---|"]
    for row in verdict["settings"]:
        cells = [("–" if t not in row["gain"] else f"{row['gain_in_std'][t]:+.2f}" if unit == "std"
                  else f"{scale[t] * row['gain'][t]:+.1f}") for t in verdict["tasks"]]
        average = "–" if row["average_gain_in_std"] is None else f"{row['average_gain_in_std']:+.2f}"
        out.append(f"| {row['learning_rate']:g} | {row['epochs']:g} | " + " | ".join(cells)
                   + f" | {average} | {'yes' if row['clearly_better'] else 'no'} |")
    best = verdict["best"]
    if best is None:
        out += ["", "No verdict: a task's cells are single runs (n = 1), which give no std to judge these gains by. "
                "Run more seeds (`seeds`) before choosing a setting."]
    else:
        out += ["", f"Best on average: lr {best['learning_rate']:g}, {best['epochs']:g} epochs; "
                + ("clearly better than the current setting on every task: use it for every task."
                   if verdict["change"] else "not clearly better on every task: the setting stays.")]
    return "\n".join(out)


def trajectory_markdown(result: Dict[str, Any]) -> str:
    """Every metric the task's evaluation returned at each IMP level, as it returned them (not scaled)."""
    levels = result["imp_trajectory"]
    keys = [k for k in levels[0] if k != "sparsity"]
    title = f"### {result['task']}: the IMP run ({result['imp_run']}), every metric per level"
    note = [f"θ0: {result['theta0']}", ""] if result.get("theta0") else []
    out = [title, "", *note, "| sparsity | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for level in levels:
        out.append(f"| {100 * level['sparsity']:.0f}% | " + " | ".join(
            _cell(level.get(k)) for k in keys) + " |")
    return "\n".join(out)


def _cell(x: Optional[float]) -> str:
    """A metric as evaluated: counts (e.g. MLM's masked tokens) whole, the rest to 4 significant digits."""
    return "–" if x is None else f"{x:.0f}" if float(x).is_integer() and abs(x) >= 1 else f"{x:.4g}"


def trajectory_plot(result: Dict[str, Any], path: Path) -> None:
    levels, metric = result["imp_trajectory"], result["metric"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([100 * r["sparsity"] for r in levels], [r.get(metric) for r in levels], "o-", label=LABELS["imp"])
    ax.set(xlabel="sparsity (%)", ylabel=metric, title=f"{result['task']}: IMP tickets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table3_markdown(results: List[Dict[str, Any]]) -> str:
    tasks = [r["task"] for r in results]
    scales = [_scale(t) for t in tasks]
    out = ["## Table 3: rewinding", "", "The metric at the IMP target sparsity, rewinding to θi (i = % of "
           "training) or not rewinding at all (standard pruning). " + POINTS, "",
           "| rewind to | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks),
           "| full model | " + " | ".join(_fmt(r["full"]["mean"], k) for r, k in zip(results, scales)) + " |"]
    for i, row in enumerate(results[0]["rows"]):
        out.append(f"| {row['rewind']} | " + " | ".join(
            f"{_fmt(r['rows'][i]['metric'], k)}{' ✓' if r['rows'][i]['matching'] else ''}"
            for r, k in zip(results, scales)) + " |")
    return "\n".join(out)


def table3_plot(results: List[Dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(results), 3.6))
    labels = [row["rewind"] for row in results[0]["rows"]]
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        ax.bar([i + j * width for i in range(len(results))],  # points, so tasks of either scale share an axis
               [_points(r["rows"][j]["metric"], r["task"]) for r in results], width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(results))], [r["task"] for r in results])
    ax.set(ylabel="metric at target sparsity (points)", title="Rewinding (Table 3)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rewind_and_epochs(result: Dict[str, Any]) -> Tuple[float, Optional[float]]:
    """What tells transfer matrices apart: the rewinding point (0 for θ0) and the epochs each cell trained."""
    return result.get("rewind") or 0, result.get("settings", {}).get("epochs")


def _transfer_label(result: Dict[str, Any]) -> Tuple[str, str]:
    """Which figure a transfer matrix answers and how its tickets were found and trained: its section's and its
    plot's title, so a θ0 twin and Figure 3, or θi and θ0 matrices, are never mistaken for each other."""
    rewind, epochs = _rewind_and_epochs(result)
    how = "θ0 tickets" if not rewind else f"tickets found with rewinding to θi, i = {100 * rewind:g} % of training"
    return ("Figure 3" if not rewind else "Figure 4"), how + (f"; {epochs:g} epochs" if epochs is not None else "")


def transfer_markdown(result: Dict[str, Any]) -> str:
    tasks, m, full = result["tasks"], result["matrix"], result["full"]
    scale = {t: _scale(t) for t in tasks}  # a column is one target task: one metric, one scale
    figure, how = _transfer_label(result)
    rows = [*result.get("sources", tasks), "oneshot"]
    at_least_own, matching = transfer_verdicts(m, full, tasks, rows)  # the same verdicts tables.transfer stores
    out = [f"## {figure}: transfer of {100 * result['sparsity']:.0f}% tickets ({how})", "",
           "Rows: source of the ticket; columns: target task (its metric). **Bold**: at least as good as the "
           "target's own ticket (the diagonal) within one standard deviation of the target's full model; "
           "'≥ own' counts them. 'matching' counts the targets where the row is within one standard deviation of "
           "the target's full-model mean (its own task included); a row matching on every target is universal. "
           + POINTS, "", "| source \\ target | " + " | ".join(tasks) + " | ≥ own | matching |",
           "|---|" + "---:|" * (len(tasks) + 2)]
    for src in rows:
        cells = [f"**{_fmt(m[src][t], scale[t])}**" if t in at_least_own[src] else _fmt(m[src][t], scale[t])
                 for t in tasks]
        out.append(f"| {src} | " + " | ".join(cells) + f" | {len(at_least_own[src])} | {len(matching[src])} |")
    out.append("| full model | " + " | ".join(_fmt(full[t]["mean"], scale[t]) for t in tasks) + " | | |")
    universal = [s for s in rows if len(matching[s]) == len(tasks)]
    out += ["", "Universal (matching on all %d targets): %s." % (len(tasks), ", ".join(universal) or "none")]
    return "\n".join(out)


def same_training(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether two transfer matrices trained their cells alike (all but rewinding and the choice of tasks)."""
    keys = [k for k in TRAINING_FIELDS if k != "task"] + ["task_overrides", "seed", "seeds", "transfer_sparsity"]
    return all(a.get("settings", {}).get(k) == b.get("settings", {}).get(k) for k in keys)


def rewind_comparison_markdown(theta0: Dict[str, Any], rewound: Dict[str, Any]) -> str:
    """Figure 4 against Figure 3: on the sources and targets both matrices share, each transfer with θi rewinding
    minus the same transfer with θ0, and per source the targets where each is at least as good as the target's own
    ticket or matching (the same verdicts as the matrices)."""
    tasks = [t for t in rewound["tasks"] if t in theta0["tasks"]]
    sources = [s for s in [*rewound.get("sources", rewound["tasks"]), "oneshot"]
               if s in theta0["matrix"] and s in rewound["matrix"]]
    verdicts = {name: transfer_verdicts(r["matrix"], r["full"], tasks, sources)
                for name, r in (("θ0", theta0), ("θi", rewound))}
    out = [f"## Does rewinding to θi transfer better than θ0? ({100 * rewound['sparsity']:.0f}% tickets, "
           f"i = {100 * rewound['rewind']:g} %)", "",
           "Each cell: the θi matrix minus the θ0 matrix, in points (one run each; the targets' full-model std is "
           "the yardstick). Right: targets where the source is at least as good as the target's own ticket, and "
           "matching, under θ0 → θi. " + POINTS, "",
           "| source \\ target | " + " | ".join(tasks) + " | ≥ own θ0 → θi | matching θ0 → θi |",
           "|---|" + "---:|" * (len(tasks) + 2)]
    for src in sources:
        cells = [f"{_scale(t) * (rewound['matrix'][src][t] - theta0['matrix'][src][t]):+.1f}" for t in tasks]
        own = " → ".join(str(len(verdicts[k][0][src])) for k in ("θ0", "θi"))
        match = " → ".join(str(len(verdicts[k][1][src])) for k in ("θ0", "θi"))
        out.append(f"| {src} | " + " | ".join(cells) + f" | {own} | {match} |")
    out.append("| full model std | " + " | ".join(_fmt(rewound["full"][t]["std"], _scale(t)) for t in tasks) + " | | |")
    return "\n".join(out)


def transfer_plot(result: Dict[str, Any], path: Path) -> None:
    tasks, m = result["tasks"], result["matrix"]
    rows = [*result.get("sources", tasks), "oneshot"]
    # points relative to the target's own ticket, so tasks with different metrics share one colour scale
    scale = {t: _scale(t) for t in tasks}
    grid = [[scale[t] * (m[s][t] - m[t][t]) for t in tasks] for s in rows]
    fig, ax = plt.subplots(figsize=(1.5 + 0.9 * len(tasks), 1.2 + 0.7 * len(rows)))
    bound = max(1e-6, max(abs(v) for row in grid for v in row))
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
    for i, s in enumerate(rows):
        for j, t in enumerate(tasks):
            ax.text(j, i, _fmt(m[s][t], scale[t]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_yticks(range(len(rows)), rows)
    figure, how = _transfer_label(result)
    ax.set(xlabel="target task", ylabel="source ticket")
    ax.set_title(f"{figure}: {how}\n(colour: vs the target's own ticket)", fontsize=8)
    fig.colorbar(image, ax=ax, label="points vs own ticket")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tickets_markdown(results: List[Dict[str, Any]]) -> str:
    """Given tickets trained on their tasks (``experiment: ticket``), beside what their cards say."""
    out = ["## Tickets trained from θ0", "",
           "Each ticket's subnetwork f(x; m ⊙ θ0, γ0) fine-tuned from the start: "
           "mean ± sample std (n trainings), beside the value its model card reports. " + POINTS, "",
           "| ticket | task | sparsity | metric | trained here | its card |", "|---|---|---:|---|---:|---:|"]
    for r in results:
        k, runs = _scale(r["task"]), r["runs"]
        here = f"{_fmt(runs['mean'], k)}" + (f" ± {_fmt(runs['std'], k)}" if runs["std"] is not None else "")
        card = r["card"].get("value")
        out.append(f"| `{r['ticket']}` | {r['task']} | {100 * r['sparsity']:.1f}% | {r['metric']} | {here} "
                   f"({runs['n']}) | {_fmt(card, k) if card is not None else 'not recorded'} |")
    return "\n".join(out)


def _transfer_plot_name(result: Dict[str, Any], transfers: List[Dict[str, Any]], taken: set) -> str:
    """``transfer.png`` (θ0) or ``transfer-rewind-<i>.png``; where two matrices share the rewinding point (a θ0 twin
    beside Figure 3), each also names its epochs, so one plot never overwrites another."""
    rewind, epochs = _rewind_and_epochs(result)
    name = "transfer" if not rewind else f"transfer-rewind-{rewind}"
    if sum(1 for t in transfers if _rewind_and_epochs(t)[0] == rewind) > 1:
        name += f"-{epochs or 0:g}-epochs"
    stem, k = name, 2
    while name in taken:  # alike in rewinding and epochs too: numbered in file order
        name, k = f"{stem}-{k}", k + 1
    taken.add(name)
    return name + ".png"


def render(root: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and the PNGs for every result under ``root``; returns the report's path."""
    root = Path(root)
    out = Path(out) if out else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = _load(root)
    sections = [f"# Results ({results[0]['model']})"]
    t2 = [r for r in results if r["experiment"] == "table2"]
    if t2:
        sections.append(table2_markdown(t2))
        for r in t2:
            table2_plot(r, out / f"table2-{r['task']}.png")
            sections.append(f"![{r['task']}](table2-{r['task']}.png)")
    with_levels = [r for r in results if r["experiment"] in ("table2", "imp") and r.get("imp_trajectory")]
    if with_levels:
        sections.append("## IMP runs: every metric per level")
    for r in with_levels:
        sections.append(trajectory_markdown(r))
        if r["experiment"] == "imp":
            trajectory_plot(r, out / f"imp-{r['task']}.png")
            sections.append(f"![{r['task']}](imp-{r['task']}.png)")
    grids = [r for r in results if r["experiment"] == "dense_grid"]
    if grids:
        sections.append(dense_grid_markdown(grids))
    trained = [r for r in results if r["experiment"] == "ticket"]
    if trained:
        sections.append(tickets_markdown(trained))
    t3 = [r for r in results if r["experiment"] == "table3"]
    if t3:
        sections.append(table3_markdown(t3))
        table3_plot(t3, out / "table3.png")
        sections.append("![rewinding](table3.png)")
    transfers = sorted((r for r in results if r["experiment"] == "transfer"),  # θ0 before θi, fewer epochs first
                       key=lambda r: tuple(v or 0 for v in _rewind_and_epochs(r)))
    plots: set = set()
    for r in transfers:
        name = _transfer_plot_name(r, transfers, plots)
        sections.append(transfer_markdown(r))
        transfer_plot(r, out / name)
        sections.append(f"![transfer]({name})")
    for r in (r for r in transfers if r.get("rewind")):
        theta0 = next((t for t in transfers if not t.get("rewind") and same_training(t, r)), None)
        sections.append(rewind_comparison_markdown(theta0, r) if theta0 is not None else
                        f"## Does rewinding to θi transfer better than θ0? "
                        f"(i = {100 * r['rewind']:g} %)\n\nNo θ0 matrix "
                        "trained as this one was (same epochs, learning rate, data and seeds) is among these results, "
                        "so no cell is compared: make one with the θi matrix's config and `--rewind 0`.")
    report = out / "report.md"
    report.write_text("\n\n".join(sections) + "\n")
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="an experiment's output_root (holding tables/)")
    parser.add_argument("--out", help="where to write report.md and the PNGs (default: <root>/report)")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO")
    _log.info("wrote %s", render(args.root, args.out))


if __name__ == "__main__":
    main()
