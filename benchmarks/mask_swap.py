"""Why an early-stopped search can lose the ticket (issue 22, item 1): the fully searched mask A against the
early-stopped mask B of the same IMP run settings, matrix by matrix, and retrained with one layer at a time of B's
mask swapped into A (and, as a control, the same number of random bits of that layer changed the same way).

Settings are those of ``benchmarks/search_cost.py`` (its runs are reused when they are in ``--output-root``):

    python benchmarks/mask_swap.py --task stsb --json docs/results/mask_swap_stsb.json

Every retraining is f(x; m ⊙ θ0, γ0) trained in full (the IMP run's schedule) with data-order seed
``--seed + 100``, cached per mask variant, so a killed run resumes.
"""
import argparse
import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch
from accelerate.utils import set_seed

from nni_bert_tickets.core.ticket import Ticket, prunable_weights
from nni_bert_tickets.experiments.config import ExperimentConfig
from nni_bert_tickets.experiments.imp_run import prepare, run_imp
from nni_bert_tickets.experiments.tables import cached

from search_cost import add_search_arguments, ticket  # noqa: E402  (benchmarks/ is the script's folder)


KINDS = (("attention.self.query", "query"), ("attention.self.key", "key"), ("attention.self.value", "value"),
         ("attention.output.dense", "attention output"), ("intermediate.dense", "intermediate"),
         ("output.dense", "output"))


def group_of(name: str, by: str = "layer") -> str:
    """The group a matrix is swapped with: its layer (``layer 3``), its kind across layers (``query``) or ``all``."""
    if by == "all":
        return "all"
    if by == "kind":
        return next((label for part, label in KINDS if part in name), "other")
    found = re.search(r"layer\.(\d+)\.", name)
    return f"layer {found.group(1)}" if found else "other"


def compare(a: Ticket, b: Ticket, theta0: dict) -> list:
    """Per matrix: sparsity under A and B, the bits that differ, and the mean |θ0| of the weights only one keeps."""
    rows = []
    for name in a.masks:
        ma, mb, w = a.masks[name], b.masks[name], theta0[name].abs()
        only_a, only_b = ma & ~mb, mb & ~ma
        rows.append({"matrix": name, "group": group_of(name), "numel": ma.numel(),
                     "sparsity_a": 1 - ma.float().mean().item(), "sparsity_b": 1 - mb.float().mean().item(),
                     "kept_only_by_a": int(only_a.sum()), "kept_only_by_b": int(only_b.sum()),
                     "mean_abs_theta0_kept_by_both": w[ma & mb].mean().item() if (ma & mb).any() else None,
                     "mean_abs_theta0_only_a": w[only_a].mean().item() if only_a.any() else None,
                     "mean_abs_theta0_only_b": w[only_b].mean().item() if only_b.any() else None})
    return rows


def in_group(name: str, by: str, group: str) -> bool:
    """Whether matrix ``name`` belongs to ``group``; ``prefix`` groups (``layers 0-k``) hold every layer up to k."""
    if by == "prefix":
        return int(group_of(name).split()[1]) <= int(group.split("-")[1])
    return group_of(name, by) == group


def groups(names, by: str) -> list:
    if by == "prefix":  # layers 0-1 .. 0-(L-2): layer 0 alone and all layers are the layer and all groups
        last = max(int(group_of(n).split()[1]) for n in names)
        return [f"layers 0-{k}" for k in range(1, last)]
    return sorted({group_of(n, by) for n in names})


def swapped(a: Ticket, b: Ticket, group: str, by: str = "layer") -> Ticket:
    return dataclasses.replace(a, masks={k: (b.masks[k] if in_group(k, by, group) else a.masks[k]) for k in a.masks})


def control(a: Ticket, b: Ticket, group: str, seed: int, by: str = "layer") -> Ticket:
    """A with, in each of ``group``'s matrices, as many random kept weights pruned and random pruned weights kept
    as B differs from A there (same per-matrix sparsity as the swap, random positions)."""
    g = torch.Generator().manual_seed(seed)
    masks = dict(a.masks)
    for k in a.masks:
        if not in_group(k, by, group):
            continue
        ma, mb = a.masks[k].flatten(), b.masks[k].flatten()
        new = ma.clone()
        kept, pruned = ma.nonzero().flatten(), (~ma).nonzero().flatten()
        new[kept[torch.randperm(len(kept), generator=g)[:int((ma & ~mb).sum())]]] = False
        new[pruned[torch.randperm(len(pruned), generator=g)[:int((mb & ~ma).sum())]]] = True
        masks[k] = new.view_as(a.masks[k])
    return dataclasses.replace(a, masks=masks)


def retrain(config: ExperimentConfig, variant: str, mask: Ticket, seed: int) -> float:
    """f(x; m ⊙ θ0, γ0) trained in full with data-order seed ``seed`` (cached per variant)."""
    settings = {**config.training_settings(), "variant": variant, "seed": seed,
                "kept": sum(int(m.sum()) for m in mask.masks.values())}

    def compute(run_dir):
        model, tuner = prepare(config, checkpoint_dir=run_dir / "step-checkpoint")  # θ0, and γ0 from config.seed
        # a mixed mask no longer matches the fingerprints of the weights A or B kept: θ0 is the fresh model here
        mask.apply(model, check_weights=variant in ("A", "B"))
        set_seed(seed)
        return tuner.fit(model)
    return cached(Path(config.output_root), f"maskswap-{config.task}", settings, compute)["default"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="stsb")
    add_search_arguments(parser)
    parser.add_argument("--by", nargs="+", default=["layer"], choices=["layer", "kind", "all", "prefix"],
                        help="swap the early mask in by layer, by kind of matrix across layers, whole, and/or for "
                             "layers 0..k (no random control there)")
    parser.add_argument("--all-draws", type=int, default=3,
                        help="random controls of the whole mask (as many changed bits as B has, at random)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = ExperimentConfig(task=args.task, model=args.model, data_dir=args.data_dir,
                            max_train_samples=args.train_samples, max_length=args.max_length,
                            learning_rate=args.learning_rate, epochs=args.epochs, target_sparsity=args.target,
                            step=args.step, prune_pooler=False, head="rewind", seed=args.seed,
                            output_root=args.output_root).validate()
    early = dataclasses.replace(base, early_stop_every=args.check_every, early_stop_threshold=args.threshold,
                                early_stop_patience=args.patience, early_stop_window=args.window,
                                early_stop_min_fraction=args.min_fraction).validate()
    plain, stopped = run_imp(base), run_imp(early)
    a, b = ticket(base, plain["trajectory"][-1]), ticket(early, stopped["trajectory"][-1])
    model, _ = prepare(base)
    theta0 = {k: v.detach().clone() for k, v in prunable_weights(model).items()}  # the masks' own names
    matrices = compare(a, b, theta0)
    seed = args.seed + 100
    result = {"task": args.task, "metric": plain["metric"], "sparsity": args.target,
              "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "command": "python benchmarks/mask_swap.py " + " ".join(
                  f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if k != "json"),
              "note": f"the embedded 6-layer model at {args.train_samples} training examples, one retraining per mask: "
                      "a single run, not a verdict",
              "full_search_ticket": retrain(base, "A", a, seed), "early_ticket": retrain(base, "B", b, seed),
              "full_model_round0": plain["trajectory"][0]["metric"], "swaps": [], "matrices": matrices}
    for by in args.by:
        for group in groups(a.masks, by):
            differ = sum(r["kept_only_by_a"] + r["kept_only_by_b"] for r in matrices if in_group(r["matrix"], by, group))
            name = f"kind {group}" if by == "kind" else group
            draws = args.all_draws if by == "all" else 0 if by == "prefix" else 1
            controls = [retrain(base, f"control {name}" + (f" draw {j}" if j else ""),
                                control(a, b, group, args.seed + j, by), seed) for j in range(draws)]
            result["swaps"].append({"by": by, "group": group, "bits_that_differ": differ,
                                    "b_swapped_into_a": result["early_ticket"] if by == "all" else
                                    retrain(base, f"swap {name}", swapped(a, b, group, by), seed),
                                    "random_control": controls[0] if controls else None,
                                    "random_controls": controls})
            logging.warning("%s", result["swaps"][-1])
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.json)
    print(f"A (full search) {result['full_search_ticket']:.4f}  B (early) {result['early_ticket']:.4f}")
    for s in result["swaps"]:
        print(f"{s['group']:16s} differ {s['bits_that_differ']:7d}  swap {s['b_swapped_into_a']:.4f}  "
              f"control {' '.join(f'{c:.4f}' for c in s['random_controls']) or '-'}")


if __name__ == "__main__":
    main()
