"""The results page of issue 23: the ticket against the pruners people would pick instead, from the benchmarks' JSON.

Reads ``peers-<task>.json`` (``benchmarks/peers.py``: unstructured pruners and the 2:4 rows),
``peers_structured-<task>.json`` (``benchmarks/structured_peers.py``) and, where present, ``semi_structured.json``
(``benchmarks/semi_structured.py``: 2:4 speed on a GPU) in a folder and writes one markdown page: per
task a table of every method at every sparsity (mean ± sample std over n trainings, and the optimizer steps it
took), the commands that made it, the plot where ``peers.py --plot`` drew one, and in words every place where a peer
scores above the ticket. Nothing is typed by hand: rerun it when a results file changes.

    python benchmarks/peers_page.py docs/results --out docs/results/peers.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from nni_bert_tickets.core.files import atomic_write_text
from nni_bert_tickets.experiments.verdicts import lead_interval
from nni_bert_tickets.tasks.glue import TASKS

NOTE = ("The embedded 6-layer all-MiniLM-L6-v2 at CPU scale: the method on a small model, **not the paper's "
        "numbers**. Each cell is the mean ± sample std over n trainings; a row with n = 1 is one training, and a "
        "verdict from one training is a guess. What these tables do not measure is the ticket's own property: it is "
        "found from θ0, trains from θ0 and transfers to other tasks (docs/results/cpu/); a peer that scores higher "
        "here is said so below, plainly.")


def title(task: str) -> str:
    """The task as GLUE writes it: ``SST-2``, ``MRPC``."""
    return TASKS[task].display_name if task in TASKS else task.upper()


def pct(level: float) -> str:
    return f"{100 * level:.0f} %"


def pts(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def cell(row: Dict[str, Any]) -> str:
    """``80.1 ± 0.9 (n = 3)``; a row that failed gives its error."""
    if row.get("error"):
        return f"failed: `{row['error'][:80]}`"
    if row["mean"] is None:
        return "–"
    spread = f" ± {pts(row['std'])}" if row.get("std") is not None else ""
    return f"{pts(row['mean'])}{spread} (n = {row['n']})"


def _steps(row: Dict[str, Any]) -> str:
    steps = sorted({s for s in row.get("steps") or [] if s})
    return "–" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def above_ticket(result: Dict[str, Any], ticket: str = "imp") -> List[str]:
    """Every (peer, sparsity) whose mean is above the ticket's at the same sparsity, said plainly."""
    mine = {r["sparsity"]: r for r in result["methods"].get(ticket, {}).get("rows", []) if r.get("mean") is not None}
    out = []
    for method, entry in result["methods"].items():
        if method == ticket:
            continue
        for row in entry["rows"]:
            base = mine.get(row["sparsity"])
            if base is not None and row.get("mean") is not None and row["mean"] > base["mean"]:
                out.append(f"At {pct(row['sparsity'])}, `{method}` ({cell(row)}, {_steps(row)} steps) scores "
                           f"{100 * (row['mean'] - base['mean']):.1f} points above the IMP ticket ({cell(base)}, "
                           f"{_steps(base)} steps).")
    return out


def _full(result: Dict[str, Any]) -> str:
    full = result.get("full")
    if not full:
        return "The full model was not recorded with these results."
    line = "the band of one std around its mean" if full.get("std") else "its line"
    return (f"The full model (dense, one fine-tuning, the same run-store units as Table 2's) scores {cell(full)}; "
            f"the plot shows {line}.")


def leads(result: Dict[str, Any], ticket: str = "imp") -> List[str]:
    """The ticket's lead over each peer at each level where both have two trainings or more, with Welch's 95 %
    interval; one training on either side is no verdict, and is left out."""
    mine = {r["sparsity"]: r for r in result["methods"].get(ticket, {}).get("rows", []) if len(r.get("runs") or []) > 1}
    out = []
    for method, entry in result["methods"].items():
        for row in entry["rows"]:
            base = mine.get(row["sparsity"])
            if method == ticket or base is None or len(row.get("runs") or []) < 2:
                continue
            out.append(f"At {pct(row['sparsity'])}, over `{method}`: {_lead(base['runs'], row['runs'])}")
    return out


def _lead(ticket: List[float], other: List[float]) -> str:
    """``+1.3 points, 95 % Welch interval [...] (n = 3 and 3); it excludes zero.``"""
    lead = lead_interval(ticket, other)
    verdict = "excludes zero" if lead["excludes_zero"] else "includes zero: within noise"
    return (f"{100 * lead['lead']:+.1f} points, 95 % Welch interval [{100 * lead['low']:+.1f}, "
            f"{100 * lead['high']:+.1f}] (n = {lead['n'][0]} and {lead['n'][1]}); it {verdict}.")


def unstructured(result: Dict[str, Any], png: Optional[str]) -> List[str]:
    levels = sorted({r["sparsity"] for e in result["methods"].values() for r in e["rows"]})
    lines = [f"## {title(result['task'])}: unstructured pruners ({result['metric']})", "",
             f"One fine-tuning is {result['one_finetuning_steps']} optimizer steps. {_full(result)} Made by:", "",
             "```bash",
             *result["commands"], "```", "",
             "| method | what it is | " + " | ".join(pct(s) for s in levels) + " | steps |",
             "|---|---|" + "---:|" * len(levels) + "---|"]
    for method, entry in result["methods"].items():
        rows = {r["sparsity"]: r for r in entry["rows"]}
        steps = " / ".join(_steps(rows[s]) for s in levels if s in rows)
        lines.append(f"| `{method}` | {entry['what']} | "
                     + " | ".join(cell(rows[s]) if s in rows else "" for s in levels) + f" | {steps} |")
    lines.append("")
    if png:
        lines += [f"![{title(result['task'])}: accuracy against sparsity]({png})", ""]
    beaten = above_ticket(result)
    nowhere = "- nowhere: the IMP ticket is highest at every level it has."
    lines += ["**Where a peer scores above the ticket:**", ""] + ([f"- {b}" for b in beaten] or [nowhere])
    lines.append("")
    lines += ["**The ticket's lead over each peer** (where both have two trainings or more):", ""] + (
        [f"- {line}" for line in leads(result)] or ["- no level has two trainings of the ticket and of a peer yet."])
    lines.append("")
    nm, dense = result["methods"].get("imp_2:4"), result["methods"].get("imp")
    if nm and dense:
        a = next((r for r in nm["rows"] if r.get("mean") is not None), None)
        b = next((r for r in dense["rows"] if a and abs(r["sparsity"] - a["sparsity"]) < 1e-9), None)
        if a and b and b.get("mean") is not None:
            gap = 100 * (a["mean"] - b["mean"])
            lines += [f"**2:4 ticket against the unstructured ticket at {pct(a['sparsity'])}:** {cell(a)} against "
                      f"{cell(b)}, {gap:+.2f} points ({'within' if abs(gap) <= 1 else 'not within'} 1 point). "
                      "Accuracy only: no CPU speed-up is claimed for 2:4 (its GPU timing: the last section).", ""]
    return lines


def semi_structured(result: Dict[str, Any]) -> List[str]:
    """2:4 speed on a GPU: dense (zeros in place) against semi-structured matrices, whole models and one matrix."""
    rows, matmuls = result["rows"], result.get("matmuls") or []
    batches = sorted({r["batch"] for r in rows})
    lines = ["## 2:4 tickets on a GPU (speed)", "",
             f"{result['device']}, torch {result['torch']}, one run: forward passes of a random model with a one-shot "
             f"2:4 mask, dense with its zeros against every pruned matrix semi-structured (milliseconds, the median of "
             f"the timed passes; in brackets dense over 2:4, below 1 a slowdown). Length {rows[0]['length']}. Made by:",
             "", "```bash", result["command"], "```", "",
             "| shape | dtype | backend | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|---|" + "---:|" * len(batches)]
    groups: Dict[tuple, Dict[int, Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["dtype"], r["backend"]), {})[r["batch"]] = r
    for (shape, dtype, backend), by_batch in groups.items():
        cells = [f"{by_batch[b]['dense_ms']:.1f} / {by_batch[b]['semi_structured_ms']:.1f} "
                 f"({by_batch[b]['speedup']:.2f}×)" if b in by_batch else "–" for b in batches]
        lines.append(f"| {shape} | {dtype} | {backend} | " + " | ".join(cells) + " |")
    speedups = [r["speedup"] for r in rows]
    verdict = "faster" if min(speedups) > 1 else "slower" if max(speedups) < 1 else "faster in some cells only"
    lines += ["", f"Speed-up from {min(speedups):.2f}× to {max(speedups):.2f}×: 2:4 is {verdict} here. Largest "
              f"logit difference from dense: {max(r['max_abs_logit_difference'] for r in rows):.3g}.", ""]
    if matmuls:
        sparse = [m["semi_structured_ms"] for m in matmuls]
        dense = [m["dense_ms"] for m in matmuls]
        lines += [f"One FFN matrix alone ({len(matmuls)} cells, {min(m['tokens'] for m in matmuls)} to "
                  f"{max(m['tokens'] for m in matmuls)} tokens): semi-structured {1000 * min(sparse):.0f}–"
                  f"{1000 * max(sparse):.0f} µs a call against dense {1000 * min(dense):.0f}–"
                  f"{1000 * max(dense):.0f} µs.", ""]
    return lines


def structured(result: Dict[str, Any]) -> List[str]:
    batches = [str(b) for b in result["timing"]["batch_sizes"]]
    lines = [f"## {title(result['task'])}: structured pruners at equal measured speed-up ({result['metric']})", "",
             f"One fine-tuning is {result['one_finetuning_steps']} optimizer steps; speed-up against the dense "
             f"model ({cell(result['dense'])}), {result['timing']['statistic']}, length {result['timing']['length']}, "
             f"{result['timing']['threads']} threads. Made by:", "", "```bash", result["command"], "```", ""]
    nni = result.get("nni_modelspeedup") or {}
    if nni and not nni.get("ran"):
        lines += [f"NNI 3 `TaylorPruner` + `ModelSpeedup` did not run here (stage {nni.get('stage')}: "
                  f"`{str(nni.get('error'))[:160]}`); the Taylor peer runs through torch-pruning.", ""]
    for point in sorted(result["points"], key=lambda p: (p["head_sparsity"], p["channel_sparsity"])):  # by speed
        lines += [f"Heads {pct(point['head_sparsity'])}, FFN channels {pct(point['channel_sparsity'])} removed:", "",
                  "| variant | " + " | ".join(["metric", "steps", *(f"speed-up b{b}" for b in batches)]) + " |",
                  "|---|---:|---:|" + "---:|" * len(batches)]
        for method, v in point["variants"].items():
            speed = [f"{v['speedup'][b]:.2f}×" if b in (v.get("speedup") or {}) else "–" for b in batches]
            lines.append(f"| `{method}` | {cell(v)} | {_steps(v)} | " + " | ".join(speed) + " |")
        for name, v in point["variants"].items():  # the ticket and each of its options against the peers
            if not name.startswith("ticket") or v.get("mean") is None:
                continue
            ahead = [m for m, p in point["variants"].items() if m.startswith("tp_") and p.get("mean") is not None
                     and p["mean"] > v["mean"]]
            who = "the ticket" if name == "ticket" else f"`{name}`"
            lines += ["", f"Peers above {who} here: " + (", ".join(f"`{m}`" for m in ahead) if ahead else "none") + "."]
        leads_here = point_leads(point)
        lines += ([""] + [f"- {line}" for line in leads_here]) if leads_here else []
        lines.append("")
    return lines


def point_leads(point: Dict[str, Any]) -> List[str]:
    """Where both sides have two trainings or more, with Welch's 95 % interval: the default ticket against every
    other variant of a structured point (the peers and its own options), and each option against each peer."""
    variants, out = point["variants"], []
    options = [m for m in variants if m.startswith("ticket_")]
    pairs = [("ticket", m) for m in variants if m != "ticket" and "ticket" in variants]
    pairs += [(o, m) for o in options for m in variants if m.startswith("tp_")]
    for a, b in pairs:
        if len(variants[a].get("runs") or []) >= 2 and len(variants[b].get("runs") or []) >= 2:
            out.append(f"`{a}` against `{b}`: {_lead(variants[a]['runs'], variants[b]['runs'])}")
    return out


def page(folder: Path) -> str:
    lines = ["# Against the pruners people would pick instead (issue 23)", "", NOTE, "",
             "Made by `python benchmarks/peers_page.py docs/results --out docs/results/peers.md` from the JSON files "
             "beside this page.", ""]
    found = False
    for path in sorted(folder.glob("peers-*.json")):
        found = True
        png = path.with_suffix(".png")
        lines += unstructured(json.loads(path.read_text()), png.name if png.is_file() else None)
    for path in sorted(folder.glob("peers_structured-*.json")):
        found = True
        lines += structured(json.loads(path.read_text()))
    if (folder / "semi_structured.json").is_file():
        lines += semi_structured(json.loads((folder / "semi_structured.json").read_text()))
    if not found:
        raise SystemExit(f"{folder} holds no peers-<task>.json or peers_structured-<task>.json: run "
                         "benchmarks/peers.py or benchmarks/structured_peers.py first")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where the results files are (docs/results)")
    parser.add_argument("--out", type=Path, required=True, help="the page to write (docs/results/peers.md)")
    args = parser.parse_args(argv)
    atomic_write_text(args.out, page(args.folder))


if __name__ == "__main__":
    main()
