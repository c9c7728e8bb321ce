"""Table 2 in the report: the summary across tasks, each task's levels, the verdicts and the lead, and the plot of
metric against sparsity; with the formatting every section shares (metrics in points)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..tasks import get_task  # noqa: E402
from .verdicts import lead_at, row_answers  # noqa: E402

__all__ = ["table2_markdown", "table2_plot", "LABELS", "POINTS"]

LABELS = {"imp": "IMP (m_IMP ⊙ θ0)", "random_pruning": "random pruning", "random_reinit": "random reinit θ0′",
          "shuffled": "shuffled θ0″", "oneshot": "one-shot θ0", "imp_fresh_head": "IMP mask on θ0, fresh head",
          "imp_carried_head": "IMP trajectory, head carried across rounds (reference code)"}
POINTS = ("Metrics in points: fractions (accuracy, correlations) × 100, SQuAD's exact match and F1 as they are "
          "(already percentages).")


def _rows_keys(result: Dict[str, Any]) -> List[str]:
    """The IMP row, the carried-head trajectory where the table has one, then the baselines."""
    carried = ["imp_carried_head"] if any("imp_carried_head" in r for r in result["rows"]) else []
    return ["imp", *carried, *result["baselines"]]


def _scale(task: str) -> float:
    """What turns ``task``'s metric into points (0–100): its task's ``metric_scale``."""
    return get_task(task).metric_scale


def _points(x: Optional[float], task: str) -> float:
    return float("nan") if x is None else _scale(task) * x


def _fmt(x: Optional[float], scale: float) -> str:
    return "–" if x is None else f"{scale * x:.1f}"


def table2_markdown(results: List[Dict[str, Any]]) -> str:
    tasks = [r["task"] for r in results]
    scales = [_scale(t) for t in tasks]
    out = ["## Table 2: winning tickets and baselines", "",
           "The metric at the highest winning sparsity among the levels with baselines (else the lowest "
           "such level): a mean ± sample std (n trainings) where a cell rests on several seeds, else one training. "
           "A ticket is *winning* (matching) when it (its mean) is within one standard deviation of the full "
           "model's mean; *strictly* when it is at least that mean. " + POINTS, "",
           "| | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    out.append("| sparsity | " + " | ".join(f"{100 * _pick(r)['sparsity']:.0f}%" for r in results) + " |")
    out.append("| epochs a training · trainings per verdict | " + " | ".join(_budget(r) for r in results) + " |")
    out.append("| full model (mean ± std) | " + " | ".join(
        f"{_fmt(r['full']['mean'], k)} ± {_fmt(r['full']['std'], k)}" for r, k in zip(results, scales)) + " |")
    for key in _rows_keys(results[0]):
        out.append(f"| {LABELS.get(key, key)} | " + " | ".join(_cell_stats(_pick(r), key, k)
                                                          for r, k in zip(results, scales)) + " |")
    out.append("| highest winning sparsity | " + " | ".join(_level(r["highest_winning_sparsity"]) for r in results)
               + " |")
    if any("highest_strictly_matching_sparsity" in r for r in results):
        answers = [_answers(r) for r in results]  # derived from the rows where a result predates them
        out.append("| highest strictly matching (≥ mean) | " + " | ".join(_level(a[0]) for a in answers) + " |")
        out.append("| matching at every level up to it | " + " | ".join("yes" if a[1] else "no" for a in answers)
                   + " |")
        out.append("| highest with every level below matching | " + " | ".join(_level(a[2]) for a in answers)
                   + " |")
        leads = [r.get("lead") or lead_at(r["rows"], r.get("highest_winning_sparsity"), r.get("baselines", []))
                 for r in results]  # results stored before ``lead`` was: a point lead (n = 1)
        out.append("| IMP lead over the best baseline there [95 % interval] | "
                   + " | ".join(_lead_cell(lead, k) for lead, k in zip(leads, scales)) + " |")
    for r, scale in zip(results, scales):
        keys = _rows_keys(r)
        out += ["", f"### {r['task']} ({r['metric']}; full model {_fmt(r['full']['mean'], scale)} ± "
                    f"{_fmt(r['full']['std'], scale)} over {len(r['full']['runs'])} seeds)", "",
                "| sparsity | " + " | ".join(LABELS.get(k, k) for k in keys) + " | winning |",
                "|---:|" + "---:|" * (len(keys) + 1)]
        for row in r["rows"]:
            out.append(f"| {100 * row['sparsity']:.0f}% | " + " | ".join(_cell_stats(row, k, scale) for k in keys)
                       + f" | {'yes' if row['matching'] else 'no'} |")
        if r.get("lead"):
            out += ["", _lead_words(r, scale)]
    return "\n".join(out)


def _answers(result: Dict[str, Any]) -> tuple:
    """(highest strictly matching level, matching at every level up to the highest matching one, highest level with
    every level below it matching), from the rows: results stored before Table 2 kept these have them too."""
    found = row_answers(result["rows"], result["full"], result["highest_winning_sparsity"])
    return (found["highest_strictly_matching_sparsity"], found["matching_up_to_highest"],
            found["highest_contiguous_matching_sparsity"])


def _budget(result: Dict[str, Any]) -> str:
    """The setting a task's verdicts rest on: epochs of each training, and trainings per decisive level."""
    epochs = (result.get("settings") or {}).get("epochs")
    return f"{'?' if epochs is None else f'{epochs:g}'} · {result.get('verdict_seeds', 1)}"


def _level(x: Optional[float]) -> str:
    return "none" if x is None else f"{100 * x:.0f}%"


def _cell_stats(row: Dict[str, Any], key: str, scale: float) -> str:
    """A row's value for ``key``: mean ± sample std (n) where it rests on several trainings."""
    found = row.get(f"{key}_stats")
    if found and found["n"] > 1:
        return f"{_fmt(found['mean'], scale)} ± {_fmt(found['std'], scale)} ({found['n']})"
    return _fmt(row.get(key), scale)


def _lead_cell(lead: Optional[Dict[str, Any]], scale: float) -> str:
    if not lead:
        return "–"
    if lead["low"] is None:
        return f"{scale * lead['lead']:+.1f} (n = 1)"
    return f"{scale * lead['lead']:+.1f} [{scale * lead['low']:+.1f}, {scale * lead['high']:+.1f}]"


def _lead_words(result: Dict[str, Any], scale: float) -> str:
    lead = result["lead"]
    name = LABELS.get(lead["baseline"], lead["baseline"])
    head = (f"At {_level(lead['sparsity'])} IMP leads the best baseline ({name}) by {scale * lead['lead']:+.1f} "
            f"points")
    if lead["low"] is None:
        return head + ", from single trainings: a guess, not a verdict."
    real = "excludes zero: the lead is real at this confidence" if lead["excludes_zero"] else \
        "includes zero: the lead is not established"
    return (head + f"; the 95 % interval over seeds (Welch, n = {lead['n'][0]} and {lead['n'][1]}) is "
            f"[{scale * lead['low']:+.1f}, {scale * lead['high']:+.1f}] and {real}.")


def _pick(result: Dict[str, Any]) -> Dict[str, Any]:
    """The row shown in the summary: among rows that have the baselines, the highest sparsity that is still
    winning, else the lowest one."""
    rows = [r for r in result["rows"] if any(k in r for k in result["baselines"])] or result["rows"]
    win = result["highest_winning_sparsity"]
    winning = [r for r in rows if win is not None and r["sparsity"] <= win + 1e-9]
    return max(winning, key=lambda r: r["sparsity"]) if winning else min(rows, key=lambda r: r["sparsity"])


def table2_plot(result: Dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    full = result["full"]
    xs = [0.0] + [r["sparsity"] for r in result["rows"]]
    ax.axhspan(full["mean"] - full["std"], full["mean"] + full["std"], color="grey", alpha=0.25,
               label="full model ±1 std")
    ax.axhline(full["mean"], color="grey", lw=1)
    ax.plot([100 * x for x in xs], [full["mean"]] + [r["imp"] for r in result["rows"]], "o-", label=LABELS["imp"])
    for key in _rows_keys(result)[1:]:
        pts = [(100 * r["sparsity"], r[key]) for r in result["rows"] if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "s--", label=LABELS.get(key, key))
    ax.set(xlabel="sparsity (%)", ylabel=result["metric"], title=f"{result['task']}: tickets vs baselines")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
