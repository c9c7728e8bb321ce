"""The structured ticket against the structured pruners people would pick instead, at equal measured speed-up.

At the CPU settings of ``examples/configs/cpu/table2-<task>.yaml`` (overridable for smoke runs), at each point
(head sparsity H, FFN channel sparsity C), one fine-tuning being T optimizer steps:

* ``ticket``: ``StructuredIMP`` (mean |w|), rewound to θ0 and retrained each round, ``--step`` per round; its
  round 0 is the dense fine-tuning below, read back, not retrained;
* ``ticket_taylor``: the same with ``importance="taylor"`` (|w · grad| on ``--taylor-batches`` training batches);
* ``ticket_layer``: the same with ``scope="layer"``: every layer loses the same fraction, as the peers' layers do;
* ``tp_magnitude`` / ``tp_taylor``: torch-pruning's ``BasePruner`` with ``MagnitudeImportance`` (L2 group norm) /
  ``TaylorImportance`` (gradients of ``--taylor-batches`` training batches) on the fine-tuned dense model, one shot,
  whole heads (``num_heads``, ``prune_num_heads``, no head dims) and FFN channels, the hidden size untouched, each
  layer at round(H·heads) heads and round(C·channels) channels removed; the Hugging Face attention attributes set by
  hand afterwards (torch-pruning does not know them); then one fine-tuning (T steps);
* ``tp_magnitude_matched`` / ``tp_taylor_matched``: the same, fine-tuned for the ticket's steps after its dense
  round (rounds × T), so that the total equals the ticket's.

NNI 3 ``TaylorPruner`` + ``ModelSpeedup`` is tried first, on θ0 (two gradient steps, then the speed-up):
what it did, with the versions, is recorded in the JSON (``nni_modelspeedup``). Every variant's shape (its first
seed's heads and channels per layer, with θ0's values: a forward's cost depends on shapes only) is timed in this one
process (batch 1 and batch 32, length 128, ``--threads`` threads, median of ``--repeats`` interleaved timings)
against the dense model; speed-up = dense median / variant median. Each fine-tuning is a unit of the run store
(``cached``): a killed benchmark resumes at the first unfinished one, and units carried to another machine without
their weights need a dense fine-tuning redone (checked to reproduce) only when an unfinished variant starts from it.
Steps count from θ0, dense round included.

    python benchmarks/structured_peers.py --task sst2 --json docs/results/peers_structured-sst2.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file

from nni_bert_tickets.core.architectures import structured_layers
from nni_bert_tickets.core.files import atomic_write, atomic_write_text
from nni_bert_tickets.core.naming import unit_name
from nni_bert_tickets.core.structured import StructuredIMP, StructuredTicket, structured_ticket_model
from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
from nni_bert_tickets.experiments.imp_run import prepare
from nni_bert_tickets.experiments.tables import cached
from nni_bert_tickets.tasks import get_task

from nni_speedup import nni_modelspeedup  # noqa: E402  (benchmarks/ is the script's folder)
from structured_args import check_overwrite, check_points, parse_point  # noqa: E402
from output import command  # noqa: E402
from timing import time_models, timing_batches  # noqa: E402

_log = logging.getLogger("structured_peers")
WEIGHTS = "model.safetensors"
METHODS = {"ticket": "StructuredIMP (mean |w|), rewound to θ0, retrained each round",
           "ticket_taylor": "StructuredIMP, importance='taylor' (|w · grad|)",
           "ticket_layer": "StructuredIMP, scope='layer' (the same fraction of every layer, as the peers)",
           "tp_magnitude": "torch-pruning BasePruner + MagnitudeImportance (L2) on the fine-tuned model, 1 fine-tuning",
           "tp_taylor": "torch-pruning BasePruner + TaylorImportance on the fine-tuned model, 1 fine-tuning",
           "tp_magnitude_matched": "tp_magnitude fine-tuned for the ticket's steps after its dense round",
           "tp_taylor_matched": "tp_taylor fine-tuned for the ticket's steps after its dense round"}


def survivors(before: torch.Tensor, after: torch.Tensor, block: int) -> List[int]:
    """The original indices of the ``block``-row blocks of ``before`` that ``after`` kept (in order, as pruned)."""
    kept, j, n = [], 0, after.shape[0] // block
    for i in range(before.shape[0] // block):
        if j < n and torch.equal(before[i * block:(i + 1) * block], after[j * block:(j + 1) * block]):
            kept.append(i)
            j += 1
    if j != n:
        raise RuntimeError("the pruned rows are not a subset of the original ones, in order")
    return kept


def tp_prune(model, importance: str, heads_removed: int, channels_removed: int, example_inputs,
             grad_batches=()) -> StructuredTicket:
    """Prune ``heads_removed`` whole heads and ``channels_removed`` FFN channels from every layer of ``model`` in
    place with torch-pruning's ``BasePruner``, set the attention attributes by hand, and return what survived."""
    import torch_pruning as tp
    layers = structured_layers(model)
    count_attr, width_attr = layers[0].head_attrs
    n_heads = getattr(layers[0].attention, count_attr)
    d = layers[0].heads[0].out_features // n_heads
    hidden = layers[0].heads[0].in_features
    before = [(l.heads[0].weight.detach().clone(), l.ffn_in.weight.detach().clone()) for l in layers]
    if importance == "taylor":  # TaylorImportance reads .grad: |w · grad| summed over the group
        model.eval().zero_grad(set_to_none=True)
        for batch in grad_batches:
            model(**batch).loss.backward()
        imp = tp.importance.TaylorImportance()
    else:
        imp = tp.importance.MagnitudeImportance(p=2)
    # ratios chosen so torch-pruning's rounding (ceil for heads, floor of the kept channels) gives these counts
    width = {}
    for l in layers:
        if channels_removed:
            width[l.ffn_in] = (channels_removed - 0.5) / l.ffn_in.out_features
        if heads_removed:  # the attention group needs a positive width ratio for its heads to be pruned at all
            width[l.heads[0]] = (heads_removed - 0.5) / n_heads
    pruner = tp.pruner.BasePruner(
        model, example_inputs, importance=imp, pruning_ratio=0.0, pruning_ratio_dict=width,
        num_heads={q: n_heads for l in layers for q in l.heads}, prune_num_heads=bool(heads_removed),
        prune_head_dims=False, head_pruning_ratio=(heads_removed - 0.5) / n_heads if heads_removed else 0.0,
        ignored_layers=[m for m in (getattr(model, "classifier", None),) if m is not None],
        forward_fn=lambda m, x: m(**x), output_transform=lambda out: out.logits.sum())
    pruner.step()
    model.zero_grad(set_to_none=True)
    ticket = StructuredTicket(heads=[], channels=[], head_size=d)
    for i, (l, (query, ffn)) in enumerate(zip(layers, before)):
        kept = l.heads[0].out_features // d
        setattr(l.attention, count_attr, kept)  # what torch-pruning's BERT example does by hand
        setattr(l.attention, width_attr, kept * d)
        ticket.heads.append(survivors(query, l.heads[0].weight, d))
        ticket.channels.append(survivors(ffn, l.ffn_in.weight, 1))
        if l.heads[0].in_features != hidden or l.attention_output.out_features != hidden or \
                (kept, len(ticket.channels[-1])) != (n_heads - heads_removed, ffn.shape[0] - channels_removed):
            raise RuntimeError(f"layer {i}: torch-pruning kept {kept} heads, {len(ticket.channels[-1])} channels and "
                               f"hidden size {l.heads[0].in_features}, not {n_heads - heads_removed}, "
                               f"{ffn.shape[0] - channels_removed} and {hidden}")
    ticket.metrics.update(total_heads=n_heads * len(layers), total_channels=sum(q.shape[0] for _, q in before))
    return ticket


# ---- units of the run store ---------------------------------------------------------------------------------
def _unit(config: ExperimentConfig, kind: str, settings: Dict[str, Any], compute) -> Tuple[Dict[str, Any], Path]:
    root = Path(config.output_root)
    return cached(root, f"{kind}-{config.task}", settings, compute), root / unit_name(f"{kind}-{config.task}", settings)


def _save(model, run_dir: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(tensors, tmp))


def _structure(model, ticket: StructuredTicket) -> Dict[str, Any]:
    return {"heads": ticket.heads, "channels": ticket.channels, "head_size": ticket.head_size,
            "parameters": sum(p.numel() for p in model.parameters())}


def example_inputs(tuner, n: int = 2) -> Dict[str, torch.Tensor]:
    batch = next(iter(tuner.eval_batches(tuner.eval_data[tuner.task.eval_splits[0]])))
    return {k: v[:n] for k, v in batch.items() if k != "labels"}


def grad_batches(tuner, seed: int, count: int) -> List[Dict[str, torch.Tensor]]:
    batches = []
    for batch in tuner.train_loader(seed):
        if len(batches) == count:
            break
        batches.append({k: v.to(tuner.accelerator.device) for k, v in batch.items()})
    return batches


class DenseMismatch(RuntimeError):
    """A dense unit fine-tuned again for its missing weights did not reproduce its recorded result."""


def dense_unit(config: ExperimentConfig, seed: int) -> Tuple[Dict[str, Any], Callable[[], Path]]:
    """The dense model fine-tuned once: every variant's start (the ticket's round 0, the peers' input). Returns its
    result and a function giving its weights' path.

    A unit whose result is recorded but whose weights are gone (units travel between machines without their
    weights) is fine-tuned again when a variant first needs the weights, and must reproduce its recorded metrics
    exactly before anything starts from it."""
    seeded = dataclasses.replace(config, seed=seed)

    def compute(run_dir):
        model, tuner = prepare(seeded)
        set_seed(seed)
        metrics = tuner.fit(model)
        _save(model, run_dir)
        return {**metrics, "steps": tuner.optimizer_steps, "parameters": sum(p.numel() for p in model.parameters())}
    result, run_dir = _unit(config, "spdense", {**config.training_settings(), "seed": seed}, compute)

    def weights() -> Path:
        if not (run_dir / WEIGHTS).exists():
            _log.info("%s has its result but not its weights: fine-tuning it again", run_dir.name)
            again = json.loads(json.dumps(compute(run_dir), default=str))
            if again != result:
                (run_dir / WEIGHTS).unlink()
                raise DenseMismatch(f"{run_dir.name}: fine-tuned again for its missing weights, it gave {again}, not "
                                   f"its recorded {result}; the variants built on it would not match. Remove "
                                   f"{run_dir} to start it and them over")
        return run_dir / WEIGHTS
    return result, weights


def ticket_unit(config: ExperimentConfig, seed: int, h: float, c: float, step: float, importance: str,
                taylor_batches: int, dense, scope: str = "global"):
    seeded, (dense_result, dense_weights) = dataclasses.replace(config, seed=seed), dense
    settings = {**config.training_settings(), "seed": seed, "head_sparsity": h, "channel_sparsity": c,
                "step": step, "importance": importance,
                **({"taylor_batches": taylor_batches} if importance == "taylor" else {}),
                **({"scope": scope} if scope != "global" else {})}  # global units keep their names

    def compute(run_dir):
        model, tuner = prepare(seeded)
        steps: List[int] = []

        def fit(m):
            if not steps:  # round 0 is the dense fine-tuning: read back, not retrained
                m.load_state_dict(load_file(str(dense_weights())))
                steps.append(dense_result["steps"])
                return dense_result
            metrics = tuner.fit(m)
            steps.append(tuner.optimizer_steps)
            return metrics

        def gradients(m):
            m.eval()
            for batch in grad_batches(tuner, seed, taylor_batches):
                m(**batch).loss.backward()
        imp = StructuredIMP(model, fit, example_inputs(tuner), h, c, step, importance=importance,
                            gradients=gradients if importance == "taylor" else None, scope=scope)
        set_seed(seed)
        small = imp.run()
        _save(small, run_dir)
        return {"default": imp.trajectory[-1]["metric"], "steps": sum(steps), "steps_per_round": steps,
                "trajectory": imp.trajectory, **_structure(small, imp.ticket)}
    return _unit(config, "spticket", settings, compute)


def peer_unit(config: ExperimentConfig, seed: int, h: float, c: float, importance: str, finetune_steps: int,
              taylor_batches: int, dense):
    import torch_pruning as tp
    seeded, (dense_result, dense_weights) = dataclasses.replace(config, seed=seed), dense
    settings = {**config.training_settings(), "seed": seed, "head_sparsity": h, "channel_sparsity": c,
                "importance": importance, "finetune_steps": finetune_steps, "torch_pruning": tp.__version__,
                **({"taylor_batches": taylor_batches} if importance == "taylor" else {})}

    def compute(run_dir):
        model, tuner = prepare(seeded)
        model.load_state_dict(load_file(str(dense_weights())))
        first = structured_layers(model)[0]
        heads, channels = getattr(first.attention, first.head_attrs[0]), first.ffn_in.out_features
        ticket = tp_prune(model, importance, round(h * heads), round(c * channels), example_inputs(tuner),
                          grad_batches(tuner, seed, taylor_batches) if importance == "taylor" else ())
        set_seed(seed)
        optimizer, scheduler = tuner.optimizer_and_scheduler(model)
        tuner.train(model, optimizer, tuner.training_step, scheduler, max_steps=finetune_steps)
        metrics = tuner.evaluate(model)
        _save(model, run_dir)
        return {**metrics, "steps": dense_result["steps"] + tuner.optimizer_steps, **_structure(model, ticket)}
    return _unit(config, "sppeer", settings, compute)


# ---- timing -------------------------------------------------------------------------------------------------
def _shape(base, example, result: Dict[str, Any]):
    """A model of the variant's shape (its heads and channels per layer) with ``base``'s values: what is timed. A
    forward's cost depends on the shapes, not on the values, so timing needs no weights from the run store."""
    ticket = StructuredTicket(result["heads"], result["channels"], result["head_size"])
    return structured_ticket_model(base, ticket, example).eval()


def _summary(runs: List[Dict[str, Any]], what: str) -> Dict[str, Any]:
    metrics = [r["default"] for r in runs]
    return {"what": what, "runs": metrics, "n": len(runs), "mean": statistics.fmean(metrics) if runs else None,
            "std": statistics.stdev(metrics) if len(runs) > 1 else None, "steps": [r["steps"] for r in runs],
            "parameters": runs[0]["parameters"] if runs else None,
            **({"heads_per_layer": [len(h) for h in runs[0]["heads"]],
                "channels_per_layer": [len(c) for c in runs[0]["channels"]]} if runs and "heads" in runs[0] else {})}


def run(args) -> Dict[str, Any]:
    import nni
    import torch_pruning as tp
    import transformers
    from transformers import AutoConfig
    path = args.config or f"examples/configs/cpu/table2-{args.task}.yaml"
    if not Path(path).is_file():
        raise SystemExit(f"--task {args.task}: no config {path} (pass --config)")
    overrides = {k: getattr(args, k) for k in ("max_train_samples", "max_eval_samples", "epochs", "max_steps",
                                                "max_length", "output_root") if getattr(args, k) is not None}
    config = dataclasses.replace(ExperimentConfig(**load_yaml(path)), **overrides).validate()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown method(s) {unknown}; known: {list(METHODS)}")
    if not 0 < args.step <= 1:
        raise SystemExit(f"--step must be in (0, 1], got {args.step}")
    if min(args.threads, args.repeats, args.taylor_batches, *args.batch_sizes) < 1 or \
            any(args.timing_examples % b for b in args.batch_sizes):
        raise SystemExit("--threads, --repeats, --taylor-batches and --batch-sizes must be positive, and "
                         "--timing-examples a multiple of every batch size")
    points = [parse_point(p) for p in args.points]
    model_config = AutoConfig.from_pretrained(config.model)
    check_points(points, model_config.num_attention_heads, model_config.intermediate_size)
    out = Path(args.json or f"docs/results/peers_structured-{config.task}.json")
    check_overwrite(out, args.methods, points, args.replace)
    base, tuner = prepare(config)
    finetuning = tuner.num_training_steps()  # T
    result = {"command": command(__file__),
              "task": config.task, "config": path, "model": config.model, "metric": get_task(config.task).metric,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "nni": nni.__version__, "torch_pruning": tp.__version__},
              "one_finetuning_steps": finetuning, "step": args.step, "taylor_batches": args.taylor_batches,
              "timing": {"threads": args.threads, "length": args.length, "batch_sizes": args.batch_sizes,
                         "examples": args.timing_examples, "repeats": args.repeats,
                         "statistic": "median seconds per forward, repeats interleaved over all models"},
              "methods": {m: METHODS[m] for m in args.methods}, "points": []}

    def write():
        atomic_write_text(out, json.dumps(result, indent=1, default=str))
    result["nni_modelspeedup"] = nni_modelspeedup(config, *points[0][:2])
    write()
    dense = [dense_unit(config, config.seed + i) for i in range(max(p[2] for p in points))]
    result["dense"] = _summary([d for d, _ in dense], "the dense model, fine-tuned once")
    timed: Dict[str, Dict[str, Any]] = {}  # the first seed's result of each variant and point (its shape)
    for h, c, seeds in points:
        rounds = math.ceil(max(h, c) / args.step - 1e-9)
        entry = {"head_sparsity": h, "channel_sparsity": c, "seeds": seeds, "ticket_rounds": rounds, "variants": {}}
        result["points"].append(entry)
        for method in args.methods:
            runs, error = [], None
            for i in range(seeds):
                seed = config.seed + i
                try:
                    if method.startswith("ticket"):
                        unit = ticket_unit(config, seed, h, c, args.step, "taylor" if method == "ticket_taylor"
                                           else "magnitude", args.taylor_batches, dense[i],
                                           "layer" if method == "ticket_layer" else "global")
                    else:
                        steps = rounds * finetuning if method.endswith("_matched") else finetuning
                        unit = peer_unit(config, seed, h, c, method.split("_")[1], steps, args.taylor_batches,
                                         dense[i])
                except Exception as exc:  # a peer that fails on this stack is a result, recorded as such
                    if method.startswith("ticket") or isinstance(exc, DenseMismatch):
                        raise
                    _log.exception("%s at %s:%s failed", method, h, c)
                    error = f"{type(exc).__name__}: {exc}"
                    break
                runs.append(unit[0])
                if i == 0:
                    timed[f"{method}@{h}:{c}"] = unit[0]
            entry["variants"][method] = {**_summary(runs, METHODS[method]), **({"error": error} if error else {})}
            write()
    _log.info("timing %d models and the dense one", len(timed))
    result["timing"]["load_average_before"] = os.getloadavg()  # other work on the machine skews the timings
    example = example_inputs(tuner)
    models = {name: _shape(base, example, unit) for name, unit in timed.items()}
    models["dense"] = base.eval()
    medians = time_models(models, timing_batches(tuner, args.length, args.timing_examples, args.batch_sizes),
                          args.repeats, args.threads)
    entries = {f"{m}@{e['head_sparsity']}:{e['channel_sparsity']}": v
               for e in result["points"] for m, v in e["variants"].items()}
    for name, seconds in medians.items():
        (result["dense"] if name == "dense" else entries[name]).update(
            seconds_per_batch={str(b): t for b, t in seconds.items()},
            speedup={str(b): medians["dense"][b] / t for b, t in seconds.items()})
    write()
    _log.info("wrote %s", out)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--config", help="default: examples/configs/cpu/table2-<task>.yaml")
    parser.add_argument("--points", nargs="+", default=["0.25:0.4", "0.5:0.6:3", "0.75:0.75"],
                        help="H:C or H:C:SEEDS (head and FFN channel sparsity, seeds from the config's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"any of {list(METHODS)}")
    parser.add_argument("--step", type=float, default=0.25, help="the ticket's fraction removed per round")
    parser.add_argument("--taylor-batches", type=int, default=8, help="training batches for Taylor gradients")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while timing")
    parser.add_argument("--length", type=int, default=128, help="timed sequence length (padded)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--timing-examples", type=int, default=32, help="examples per timing, in batches of each size")
    parser.add_argument("--repeats", type=int, default=7, help="timings per model and batch size (median)")
    parser.add_argument("--json", help="default: docs/results/peers_structured-<task>.json")
    parser.add_argument("--replace", action="store_true",
                        help="let this call drop methods or points the existing --json holds")
    parser.add_argument("--output-root", help="the run store (default: the config's output_root)")
    for name, kind in (("--max-train-samples", int), ("--max-eval-samples", int), ("--epochs", float),
                       ("--max-steps", int), ("--max-length", int)):  # the config's, for smoke runs
        parser.add_argument(name, type=kind)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    main()
