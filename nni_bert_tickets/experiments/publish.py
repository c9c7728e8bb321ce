"""Publish an experiment's tickets as ticket folders, their model cards filled from the result files.

    python -m nni_bert_tickets.experiments.publish runs/cpu --out tickets/all-MiniLM-L6-v2 \\
        --base-model sentence-transformers/all-MiniLM-L6-v2

For each task with a result in ``<output_root>/tables/`` (``table2-<task>.json``, else ``imp-<task>.json``), the
ticket at the task's highest matching level is read from its IMP run under ``<output_root>`` and written with
:meth:`Ticket.save_pretrained` to ``<out>/<task>-<sparsity in %>/``. Table 2 names that level
(``highest_winning_sparsity``: within one standard deviation of the full model's mean over seeds); an IMP-only run
(MLM) has one dense run and no spread, so its level is the highest one at or above the dense model's value.
``--level task=sparsity`` picks a level instead. The card's numbers are the result file's, never typed by hand;
rerun the command when the results change (folders of a task at another level are replaced).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..core.hub import CARD_FILE, TICKET_FILE, read_card
from ..core.files import atomic_write_text
from ..tasks.data import DataError
from ..tasks.mlm import text_files
from .tables import ticket_at
from .verdicts import matching

__all__ = ["publish", "main"]
_log = logging.getLogger(__name__)
# the Hub datasets the tasks' data come from (the runs read offline copies of them)
_DATASETS = {"squad": ("rajpurkar/squad", None), "mlm": ("Salesforce/wikitext", "wikitext-2-raw-v1")}


def publish(output_root: str | Path, out: str | Path, *, base_model: Optional[str] = None, license: str = "mit",
            levels: Optional[Dict[str, float]] = None, tasks: Optional[Sequence[str]] = None,
            tables: Optional[str | Path] = None) -> List[Path]:
    """Write a ticket folder per task (see the module's text); returns the folders written."""
    output_root, out = Path(output_root), Path(out)
    tables = Path(tables) if tables else output_root / "tables"
    results = _results(tables)
    if not results:
        raise FileNotFoundError(f"{tables} holds no table2-<task>.json or imp-<task>.json results to publish from")
    unknown = sorted(set(tasks or []) - set(results)) + sorted(set(levels or {}) - set(results))
    if unknown:
        raise ValueError(f"no result for {unknown} in {tables} (it has {sorted(results)})")
    chosen = {task: found for task, found in sorted(results.items()) if not tasks or task in tasks}
    missing = [f"{path.name} names the IMP run {result['imp_run']}" for path, result in chosen.values()
               if not (output_root / result["imp_run"] / "imp" / "trajectory.json").is_file()]
    if missing:  # every task is checked before any folder is written
        raise FileNotFoundError(f"{'; '.join(missing)}: not under {output_root}; pass the output_root the results were "
                                f"made in, or --tasks without them")
    entries = {task: _entry(path, result, (levels or {}).get(task)) for task, (path, result) in chosen.items()}
    written = []
    for task, (path, result) in chosen.items():
        entry = entries[task]
        if entry is None:
            _log.warning("%s: no matching level in %s; nothing published for it", task, path.name)
            continue
        run_dir = output_root / result["imp_run"]
        ticket = ticket_at(run_dir, entry["level"])
        folder = out / f"{task}-{round(100 * entry['level'])}"
        dataset, config = _DATASETS.get(task, ("nyu-mll/glue", task))
        ticket.save_pretrained(folder, metric=result["metric"], value=entry["value"], full_model=entry["full"],
                               found_by=entry["found_by"], base_model=base_model, license=license, dataset=dataset,
                               dataset_config=config, notes=_notes(path, result, entry))
        _remove_other_levels(out, task, folder)
        _log.info("%s: the %.0f%% ticket (%s %.4g; full model %.4g) -> %s", task, 100 * entry["level"],
                  result["metric"], entry["value"], entry["full"]["mean"], folder)
        written.append(folder)
    _index(out)
    return written


def _results(tables: Path) -> Dict[str, tuple]:
    """``task -> (path, result)``: Table 2's result where there is one, else the IMP run's."""
    found: Dict[str, tuple] = {}
    for kind in ("imp", "table2"):  # table2 last: it wins
        for path in sorted(tables.glob(f"{kind}-*.json")):
            result = json.loads(path.read_text())
            if result.get("experiment") == kind and result.get("imp_run"):
                found[result["task"]] = (path, result)
    return found


def _entry(path: Path, result: Dict[str, Any], level: Optional[float]) -> Optional[Dict[str, Any]]:
    """The level to publish, the ticket's value there, the full model's, and how the ticket was found."""
    if result["experiment"] == "table2":
        rows = {round(r["sparsity"], 6): r for r in result["rows"]}
        level = result["highest_winning_sparsity"] if level is None else level
        if level is None:
            return None
        if round(level, 6) not in rows:
            raise ValueError(f"{path.name} has no level {level}; it has {sorted(rows)}")
        found_by = (f"iterative magnitude pruning, {result['settings']['step']:.0%} of the weights a round "
                    f"({result['settings']['schedule']}); IMP row: {result['imp_row']}; pruned: {result['pruned']}")
        row = rows[round(level, 6)]
        return {"level": level, "value": row["imp"], "full": result["full"], "found_by": found_by,
                "n": (row.get("imp_stats") or {}).get("n", 1)}
    metric = result["metric"]
    trajectory = result["imp_trajectory"]
    dense = trajectory[0][metric]
    full = {"mean": dense, "std": 0.0, "runs": [dense]}  # one run: no spread to call a level matching by
    by_level = {round(r["sparsity"], 6): r[metric] for r in trajectory[1:]}
    if level is None:
        winners = [s for s, v in by_level.items() if matching(v, full)]
        level = max(winners) if winners else None
        if level is None:
            return None
    elif round(level, 6) not in by_level:
        raise ValueError(f"{path.name} has no level {level}; it has {sorted(by_level)}")
    found_by = (f"iterative magnitude pruning, {result['settings']['step']:.0%} of the weights a round "
                f"({result['settings']['schedule']}), head: {result['settings']['head']}; one IMP run: the highest "
                f"level at or above the dense model's {metric}")
    return {"level": level, "value": by_level[round(level, 6)], "full": full, "found_by": found_by, "n": 1}


def _notes(path: Path, result: Dict[str, Any], entry: Dict[str, Any]) -> str:
    s = result["settings"]
    data = _data(result)
    trainings = f", the mean of {entry['n']} trainings" if entry["n"] > 1 else " (one training)"
    return (f"Found by nni_bert_tickets on {result['model']} (`{path.name}`, experiment `{result['experiment']}`, "
            f"IMP run `{result['imp_run']}`): {data}, learning rate {s['learning_rate']}, batch {s['batch_size']}, "
            f"{s['epochs']:g} epoch{'' if s['epochs'] == 1 else 's'} a round, max length {s['max_length']}, "
            f"seed {s['seed']}. The value is the ticket's "
            f"{result['metric']} on the task's evaluation split after fine-tuning from θ0{trainings}; the full "
            f"model's is the mean (and spread) of {len(entry['full'].get('runs', [])) or 'its'} dense fine-tuning(s). "
            f"These figures are this run's, on this base model and data: not the paper's results (bert-base)."
            + _theta0_note(result))


def _data(result: Dict[str, Any]) -> str:
    """What trained the ticket, in words: the split actually read (offline copies may lack one) and its size."""
    s = result["settings"]
    cap = f" (at most {s['max_train_samples']} examples)" if s.get("max_train_samples") else ""
    if result["task"] == "mlm" and s.get("data_dir"):
        try:
            files = text_files(s["data_dir"])
        except DataError:
            return f"the training text in {s['data_dir']}{cap}"
        train, evaluation = (os.path.basename(files[k]) for k in ("train", "validation"))
        return f"{train} of {s['data_dir']} trains, {evaluation} evaluates{cap}"
    if result["task"] == "squad" and s.get("squad_train_articles"):
        return (f"a re-split of the SQuAD v1.1 dev set: its first {s['squad_train_articles']} articles train{cap}, "
                "the rest evaluate")
    return f"{s['max_train_samples']} training examples" if s.get("max_train_samples") else "the full training set"


def _theta0_note(result: Dict[str, Any]) -> str:
    """θ0 was more than the checkpoint (MLM: a head warmed before IMP), and the file holds masks only."""
    if not result.get("theta0"):
        return ""
    return (f" Here {result['theta0']}; that head is not in the ticket file. `examples/{result['task']}.py "
            f"--experiment ticket --ticket <this folder>` warms one the same way before training the ticket; a "
            f"model loaded as in the snippet below starts from a fresh head instead.")


def _remove_other_levels(out: Path, task: str, keep: Path) -> None:
    """A task's ticket folders at other levels, written by an earlier publish (their card names the task)."""
    for folder in out.glob(f"{task}-*"):
        if folder == keep or not re.fullmatch(rf"{re.escape(task)}-\d+", folder.name):
            continue
        if (folder / TICKET_FILE).is_file() and (read_card(folder / CARD_FILE).get("ticket") or {}).get("task") == task:
            shutil.rmtree(folder)
            _log.info("removed %s: %s is now published at another level", folder, task)


def _index(out: Path) -> None:
    """``<out>/README.md``: one line per ticket folder, from the cards."""
    lines = ["# Published tickets", "",
             "Written by `python -m nni_bert_tickets.experiments.publish`; each folder loads "
             "with `Ticket.from_pretrained(\"<folder>\")`.", "",
             "| folder | task | sparsity | metric | ticket | full model (mean) |", "|---|---|---:|---|---:|---:|"]
    for card in sorted(out.glob(f"*/{CARD_FILE}")):
        facts = read_card(card).get("ticket") or {}
        lines.append(f"| {card.parent.name} | {facts.get('task')} | {facts.get('sparsity', 0):.0%} | "
                     f"{facts.get('metric')} | {facts.get('value', float('nan')):.4g} | "
                     f"{(facts.get('full_model') or {}).get('mean', float('nan')):.4g} |")
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_root", help="the experiments' output_root (its tables/ and IMP runs)")
    parser.add_argument("--out", required=True, help="where the ticket folders go, e.g. tickets/all-MiniLM-L6-v2")
    parser.add_argument("--base-model", help="the base checkpoint's Hub id, for the card and the ticket file")
    parser.add_argument("--license", default="mit", help="the license the cards state (default: mit)")
    parser.add_argument("--tables", help="where the result files are (default: <output_root>/tables)")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (default: every task with a result)")
    parser.add_argument("--level", action="append", default=[], metavar="TASK=SPARSITY",
                        help="publish TASK's ticket at this level instead of its highest matching one")
    args = parser.parse_args(argv)
    levels = {}
    for item in args.level:
        task, _, value = item.partition("=")
        try:
            levels[task] = float(value)
        except ValueError:
            parser.error(f"--level takes TASK=SPARSITY (e.g. mlm=0.6), not {item!r}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return publish(args.output_root, args.out, base_model=args.base_model, license=args.license, levels=levels,
                   tasks=args.tasks, tables=args.tables)


if __name__ == "__main__":
    main()
