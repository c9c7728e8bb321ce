"""The lottery ticket against the unstructured pruners people would pick instead, on the same model, data and budget.

At the settings of ``examples/configs/cpu/table2-<task>.yaml`` (model, data, lr, batch, epochs, length, pooler left
out of the pruned set), at each sparsity of the same prunable matrices (``bert_config_list(model, s, pooler=False)``),
one fine-tuning's budget being T optimizer steps:

* ``movement`` / ``movement_3x``: NNI 3 ``MovementPruner`` during fine-tuning, T and 3T steps, single weights, each
  matrix at the sparsity (cubic schedule from 10 % to 2/3 of the run, scores trained with Adam 1e-2 as NNI does);
* ``movement_block`` / ``movement_block_3x``: the same with NNI's block granularity, 32×32 blocks scored and pruned
  together, ranked globally over the matrices (NNI 3 supports ``granularity: [32, 32]`` for it);
* ``gradual_magnitude``: NNI's ``AGPPruner`` over a ``LevelPruner`` during fine-tuning, T steps, each matrix at the
  sparsity (masks updated 10 times over the first 2/3 of the run);
* ``oneshot``: one-shot global magnitude pruning of θ0, then one fine-tuning (the runner's ``oneshot`` baseline unit);
* ``standard``: standard pruning, IMP without rewinding (the runner's IMP run with ``rewind: null``);
* ``imp``: the IMP ticket f(x; m ⊙ θ0, γ0) (the Table 2 IMP run; further seeds retrain its mask from θ0 as
  Table 2's verdict seeds do);
* ``imp_2:4`` / ``oneshot_2:4``: the same two with the 2:4 pattern (``pattern: "2:4"``: at most 2 of every 4
  consecutive input weights of a row pruned, so the mask is exactly 2:4 at 50 %); rows at 50 % only, beside the
  unstructured 50 % ticket. Accuracy only: no CPU speed-up is claimed (``benchmarks/semi_structured.py`` times 2:4 on
  a GPU).

Every (method, sparsity, seed) is a unit of the run store (``cached``): an interrupted benchmark resumes at the first
unfinished unit, and runs the Table 2 / Table 3 runner already finished are read, not retrained (the IMP run and
the first seed's standard pruning run go to the config's ``target_sparsity``, whatever this call asks, so that every
call shares them with Table 2 and with each other). Calls add to the results file: a (method, sparsity) whose
stored row already has at least the call's seeds is kept and not trained (a call's seeds are config.seed, +1, ..., so
fewer seeds are the stored row's first ones; its units need not be in this run store), a row with fewer seeds is
replaced, and other rows are left, so a plan of several calls (three seeds at the headline level, one elsewhere)
ends in one file, each row with its own ``n``; the file lists every call in ``commands``. To redo a row, move the
file away. A file made at other settings (config, model, budget) is refused, naming it. Steps are counted: the
optimizer steps the peer took, and for IMP and standard pruning every round up to that level (the search).

    python benchmarks/peers.py --task mrpc --sparsities 0.5 0.7 0.9 --seeds 1
    python benchmarks/peers.py --task mrpc --sparsities 0.5 --methods imp imp_2:4 oneshot oneshot_2:4 --seeds 3
    python benchmarks/peers.py --plot docs/results/peers-mrpc.json   # accuracy against sparsity, steps in the legend
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from nni_bert_tickets.core.files import atomic_write_text
from nni_bert_tickets.core.masks import parse_nm
from nni_bert_tickets.core.targets import bert_config_list, prunable_modules
from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
from nni_bert_tickets.experiments.imp_run import prepare, run_imp
from nni_bert_tickets.experiments.tables import baseline, cached, full_model
from nni_bert_tickets.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command as script_command  # noqa: E402  (benchmarks/ is the script's folder)
from peers_page import title  # noqa: E402

_log = logging.getLogger("peers")
BLOCK = [32, 32]


def _settings(config_list, granularity, per_matrix: bool):
    """``bert_config_list``'s matrices with NNI's ``granularity``; ``per_matrix``: each matrix at the sparsity rather
    than one global ranking (NNI ranks a global group of single weights in a Python heap: about 110 s per mask
    update for this 6-layer model's 10.6 M weights here, which a pruner updating every step cannot afford)."""
    for entry in config_list:
        weight = entry["target_settings"]["weight"]
        weight["granularity"] = granularity
        if per_matrix:
            del weight["global_group_id"]
    return config_list


def _movement(block: bool) -> Callable:
    def build(model, config_list, evaluator, steps):
        from nni.compression.pruning import MovementPruner
        # NNI's MovementPruner scores whole output rows by default: [1, 1] asks for single weights
        config_list = _settings(config_list, list(BLOCK), False) if block else _settings(config_list, [1, 1], True)
        warmup = steps // 10
        return MovementPruner(model, config_list, evaluator, warmup_step=warmup,
                              cooldown_begin_step=max(warmup + 1, 2 * steps // 3))
    return build


def _gradual_magnitude(model, config_list, evaluator, steps):
    from nni.compression.pruning import AGPPruner, LevelPruner
    ramp = max(1, 2 * steps // 3)
    times = min(10, ramp)
    return AGPPruner(LevelPruner(model, _settings(config_list, "default", True)), interval_steps=ramp // times,
                     total_times=times, evaluator=evaluator)


# name -> (NNI pruner builder or the runner's unit, budget in fine-tunings, what it is)
PEERS = {
    "movement": (_movement(False), 1, "NNI MovementPruner during fine-tuning, single weights, per matrix"),
    "movement_3x": (_movement(False), 3,
                    "NNI MovementPruner during fine-tuning, single weights, per matrix, 3x budget"),
    "movement_block": (_movement(True), 1, "NNI MovementPruner, 32x32 blocks, global"),
    "movement_block_3x": (_movement(True), 3, "NNI MovementPruner, 32x32 blocks, global, 3x budget"),
    "gradual_magnitude": (_gradual_magnitude, 1, "NNI AGPPruner over LevelPruner during fine-tuning, per matrix"),
}
RUNNER = {"oneshot": "one-shot magnitude pruning of θ0, then fine-tuning",
          "standard": "standard pruning (IMP, no rewind)",
          "imp": "IMP ticket f(x; m ⊙ θ0, γ0)",
          "oneshot_2:4": "one-shot 2:4 magnitude mask of θ0, then fine-tuning",
          "imp_2:4": "IMP ticket ending on a 2:4 mask, f(x; m ⊙ θ0, γ0)"}
METHODS = [*PEERS, *RUNNER]
NM = "2:4"  # the pattern of the ``_2:4`` methods
# a 2:4 mask is exactly this sparse: the _2:4 methods have rows there only
NM_SPARSITY = 1 - parse_nm(NM)[0] / parse_nm(NM)[1]


def _split(method: str):
    """``imp_2:4`` -> ("imp", "2:4"); ``imp`` -> ("imp", None)."""
    base, _, pattern = method.partition("_")
    return (base, pattern) if pattern == NM else (method, None)


def zero_sparsity(model) -> float:
    """The fraction of exactly-zero weights over the prunable matrices (pooler left out), read from the model."""
    weights = [m.weight for m in prunable_modules(model, pooler=False).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def empty_rows(model) -> float:
    """The fraction of the prunable matrices' rows that are entirely zero (near 0 for single-weight pruning at
    moderate sparsity; the sparsity itself for a pruner that removes whole rows)."""
    weights = [m.weight for m in prunable_modules(model, pooler=False).values()]
    return sum(int((w == 0).all(dim=1).sum()) for w in weights) / sum(w.shape[0] for w in weights)


def _peer(config: ExperimentConfig, method: str, sparsity: float, seed: int, accelerator=None) -> Dict[str, Any]:
    """One NNI pruner trained during fine-tuning, its masks applied to the weights, evaluated."""
    from accelerate.utils import set_seed
    import nni
    build, budget, _ = PEERS[method]
    seeded = dataclasses.replace(config, seed=seed)
    settings = {**seeded.training_settings(), "seed": seed, "method": method, "sparsity": sparsity,
                "budget": budget, "nni": nni.__version__}

    def compute(run_dir):
        model, tuner = prepare(seeded, accelerator)  # no step checkpoint: a pruner's state is not in it
        steps = budget * tuner.num_training_steps()
        pruner = build(model, bert_config_list(model, sparsity, pooler=False), tuner.evaluator(model), steps)
        set_seed(seed)
        pruner.compress(max_steps=steps, max_epochs=None)
        taken = tuner.optimizer_steps
        masks = pruner.get_masks()
        pruner.unwrap_model()
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, targets in masks.items():
                weight = modules[name].weight
                weight.mul_(targets["weight"].to(weight.device, weight.dtype))
                if bool((weight[targets["weight"] == 0] != 0).any()):
                    raise RuntimeError(f"{name}: pruned weights are not zero after applying the mask")
        return {**tuner.evaluate(model), "steps": taken, "sparsity": zero_sparsity(model),
                "empty_rows": empty_rows(model), "sparsity_from": "zeros of the evaluated model"}
    return cached(Path(config.output_root), f"peer-{method}-{config.task}", settings, compute, accelerator)


def _imp_config(config: ExperimentConfig, rewind: Any, top: float) -> ExperimentConfig:
    return dataclasses.replace(config, rewind=rewind, target_sparsity=top)


def _level(trajectory: List[Dict[str, Any]], sparsity: float) -> Dict[str, Any]:
    for record in trajectory:
        if abs(record["target_sparsity"] - sparsity) < 1e-6:
            return record
    raise ValueError(f"the IMP run has no level {sparsity}")


def _top(config: ExperimentConfig, method: str, seed: int, asked: float) -> float:
    """Where the method's IMP run stops: an N:M run at its pattern's sparsity; the IMP ticket's run and the first
    seed's standard pruning at the config's target (shared with Table 2 and every call); a further seed's standard
    pruning run, its own and costly, only as far as this call asks."""
    method, pattern = _split(method)
    if pattern:
        return NM_SPARSITY
    if method == "imp" or seed == config.seed:
        return max(config.target_sparsity, asked)
    return asked


def _runner(config: ExperimentConfig, method: str, sparsity: float, seed: int, top: float, finetuning: int,
            accelerator=None):
    """A unit of the existing runner: the one-shot baseline (``finetuning`` steps: it is one fine-tuning), or the
    IMP run (rewound or standard) at a level; ``top``: where that run stops (:func:`_top`)."""
    method, pattern = _split(method)
    if pattern:
        config = dataclasses.replace(config, pattern=pattern)
    if method == "oneshot":
        result = baseline(config, "oneshot", sparsity, accelerator, seed=seed)
        return {**result, "steps": finetuning, "sparsity_from": "the ticket's mask (runner unit)"}
    imp_config = _imp_config(config, None if method == "standard" else config.rewind, top)
    if method == "standard":  # standard pruning has no mask to retrain: each seed is its own run
        imp_config = dataclasses.replace(imp_config, seed=seed)
    imp = run_imp(imp_config, accelerator)
    record = _level(imp["trajectory"], sparsity)
    search = sum(r.get("steps") or 0 for r in imp["trajectory"] if r["round"] <= record["round"])
    out = {"default": record["metric"], "steps": search, "sparsity": record["sparsity"],
           "sparsity_from": "the IMP round's mask (runner unit)", "imp_run": imp["run"]}
    if method == "imp" and seed != config.seed:  # Table 2's verdict seeds: the mask retrained from θ0
        again = baseline(imp_config, "imp_fresh_head", sparsity, accelerator, seed=seed)
        out.update(default=again["default"], steps=search + (record.get("steps") or 0),
                   retrained="IMP mask retrained from θ0 with a fresh head (seed)")
    return out


def sparsities_of(method: str, sparsities: List[float]) -> List[float]:
    """The sparsities a method has rows at: all asked, or for an N:M method only its pattern's own."""
    return [s for s in sparsities if abs(s - NM_SPARSITY) < 1e-9] if _split(method)[1] else list(sparsities)


def check(methods: List[str], sparsities: List[float], seeds: int, config: ExperimentConfig,
          named: bool = True) -> None:
    """Refuse bad input before any training, naming the setting. ``named``: the methods were asked for by name
    (an N:M method without its sparsity is then refused; the default list just leaves it out)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown method(s) {unknown}; known: {METHODS}")
    idle = [m for m in methods if not sparsities_of(m, sparsities)]
    if named and idle:
        raise SystemExit(f"--methods {' '.join(idle)}: a 2:4 mask is exactly {NM_SPARSITY:g} sparse; add "
                         f"{NM_SPARSITY:g} to --sparsities")
    for s in sparsities:
        if not 0.0 < s < 1.0:
            raise SystemExit(f"--sparsities: {s} is outside (0, 1)")
    if seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {seeds}")
    if {"imp", "standard"} & set(methods):
        levels = _imp_config(config, config.rewind, max(config.target_sparsity, *sparsities)).levels()
        missing = [s for s in sparsities if not any(abs(s - level) < 1e-6 for level in levels)]
        if missing:
            raise SystemExit(f"--sparsities: {missing} are not levels of the IMP run ({config.schedule}, step "
                             f"{config.step}: {[round(x, 4) for x in levels]}); imp and standard exist only there")


def _full(config: ExperimentConfig, finetuning: int) -> Dict[str, Any]:
    """The dense model every row is read against: the config's ``seeds`` full-model fine-tunings, the same run-store
    units as Table 2's (read back where Table 2 ran at these settings)."""
    runs = [full_model(config, config.seed + i)["default"] for i in range(config.seeds)]
    return {"n": len(runs), "runs": runs, "mean": statistics.fmean(runs),
            "std": statistics.stdev(runs) if len(runs) > 1 else None, "steps": [finetuning] * len(runs)}


def run(args) -> Dict[str, Any]:
    import nni
    import transformers
    path = args.config or f"examples/configs/cpu/table2-{args.task}.yaml"
    if not Path(path).is_file():
        raise SystemExit(f"--task {args.task}: no config {path} (pass --config)")
    values = load_yaml(path)
    overrides = {k: getattr(args, k) for k in ("max_train_samples", "max_eval_samples", "max_steps", "output_root")
                 if getattr(args, k) is not None}
    config = dataclasses.replace(ExperimentConfig(**values), prune_pooler=False, **overrides).validate()
    named, methods = args.methods is not None, args.methods or METHODS
    check(methods, args.sparsities, args.seeds, config, named)
    out = Path(args.json or f"docs/results/peers-{config.task}.json")
    settings = {"task": config.task, "config": path, "model": config.model,
                "overrides": {k: v for k, v in overrides.items() if k != "output_root"}}
    previous = json.loads(out.read_text()) if out.is_file() else None
    if previous is not None and {k: previous.get(k) for k in settings} != settings:
        raise SystemExit(f"--json {out} holds results made at other settings "
                         f"({ {k: previous.get(k) for k in settings} }, this call: {settings}); "
                         f"pass another --json or move that file away")
    asked = max(args.sparsities)
    finetuning = prepare(config)[1].num_training_steps()  # T: one fine-tuning's optimizer steps
    command = script_command(__file__)
    result = previous or {**settings, "metric": get_task(config.task).metric, "one_finetuning_steps": finetuning,
                          "commands": [], "methods": {}}
    result.update(versions={"torch": torch.__version__, "transformers": transformers.__version__,
                            "nni": nni.__version__},
                  commands=result["commands"] + [command] * (command not in result["commands"]),  # a repeat: once
                  full=_full(config, finetuning))
    atomic_write_text(out, json.dumps(result, indent=1, default=str))
    for method in (m for m in methods if sparsities_of(m, args.sparsities)):
        entry = result["methods"].setdefault(method, {"rows": []})
        entry.update(what=PEERS[method][2] if method in PEERS else RUNNER[method],
                     budget=PEERS[method][1] if method in PEERS else None)
        for s in sparsities_of(method, args.sparsities):
            stored = [r for r in entry["rows"] if abs(r["sparsity"] - s) < 1e-9]
            if stored and stored[0]["n"] >= args.seeds and "error" not in stored[0]:
                _log.info("%s at %.2f: kept the stored row (n = %d), nothing to train", method, s, stored[0]["n"])
                continue  # its units may be gone from the run store; the results file holds them
            runs, error = [], None
            for i in range(args.seeds):
                try:
                    unit = _peer(config, method, s, config.seed + i) if method in PEERS else \
                        _runner(config, method, s, config.seed + i, _top(config, method, config.seed + i, asked),
                                finetuning)
                except Exception as exc:  # a peer that does not run on this stack is a result, recorded as such
                    if method not in PEERS:
                        raise
                    _log.exception("%s at %.2f failed", method, s)
                    error = f"{type(exc).__name__}: {exc}"
                    break
                runs.append(unit)
            row = {"sparsity": s, "n": len(runs), "runs": [r["default"] for r in runs],
                   "mean": statistics.fmean(r["default"] for r in runs) if runs else None,
                   "std": statistics.stdev(r["default"] for r in runs) if len(runs) > 1 else None,
                   "steps": [r.get("steps") for r in runs], "measured_sparsity": [r["sparsity"] for r in runs],
                   **({"empty_rows": [r.get("empty_rows") for r in runs]} if method in PEERS else {}),
                   "sparsity_from": runs[0]["sparsity_from"] if runs else None}
            if error:
                row["error"] = error
            entry["rows"] = sorted([r for r in entry["rows"] if abs(r["sparsity"] - s) > 1e-9] + [row],
                                   key=lambda r: r["sparsity"])
            atomic_write_text(out, json.dumps(result, indent=1, default=str))
    atomic_write_text(out, json.dumps(result, indent=1, default=str))
    _log.info("wrote %s", out)
    return result


def plot(json_path: str, png_path: str) -> str:
    """Accuracy (the task's metric) against sparsity, one line per method, its optimizer steps in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    result = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, entry in result["methods"].items():
        rows = [r for r in entry["rows"] if r["mean"] is not None]
        if not rows:
            continue
        steps = sorted({s for r in rows for s in r["steps"] if s})
        label = f"{method} ({steps[0] if len(steps) == 1 else f'{steps[0]}-{steps[-1]}'} steps)" if steps else method
        ax.errorbar([r["sparsity"] for r in rows], [r["mean"] for r in rows],
                    yerr=[r["std"] or 0 for r in rows], marker="o", capsize=3, label=label)
    full = result.get("full")
    if full:
        ax.axhline(full["mean"], color="black", linestyle="--", linewidth=1,
                   label=f"full model, n = {full['n']} ({full['steps'][0]} steps)")
        if full.get("std"):
            ax.axhspan(full["mean"] - full["std"], full["mean"] + full["std"], color="black", alpha=0.08)
    ax.set_xlabel("sparsity of the prunable matrices")
    ax.set_ylabel(result.get("metric") or "metric")
    ax.set_title(f"{title(result['task'])}: pruners at one fine-tuning = {result.get('one_finetuning_steps')} steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--config", help="default: examples/configs/cpu/table2-<task>.yaml")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--methods", nargs="+", help=f"any of {METHODS} (default: all; the 2:4 ones where "
                        f"--sparsities has {NM_SPARSITY:g})")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per (method, sparsity): config seed, +1, ...")
    parser.add_argument("--json", help="default: docs/results/peers-<task>.json")
    parser.add_argument("--output-root", help="the run store (default: the config's output_root)")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--max-steps", type=int, help="one fine-tuning's steps (default: the config's epochs)")
    parser.add_argument("--plot", metavar="JSON", help="only plot this results file (to --png)")
    parser.add_argument("--png", help="where --plot writes (default: the JSON's name with .png)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.plot:
        plot(args.plot, args.png or str(Path(args.plot).with_suffix(".png")))
        return
    run(args)


if __name__ == "__main__":
    main()
