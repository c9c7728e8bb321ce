"""What the paper's Table 2 costs on one GPU: IMP rounds measured at bert-base shape, the whole table projected.

No bert-base checkpoint exists offline, and the cost of a training step does not depend on the weights' values: the
model is a ``BertConfig`` of bert-base size (12 layers, hidden 768, 12 heads, FFN 3072) with the embedded tokenizer's
vocabulary (30,522 entries, the same as bert-base-uncased's) and random weights. It runs the first IMP rounds of a paper
config (``examples/configs/paper/``: learning rate, batch, length as the paper) through the library's own runner
(``run_imp``, Accelerate, the given precision) on real data, ``--steps`` optimizer steps a round:

* ``glue``: batch 32, length 128 (every GLUE config of the paper), on the local SST-2 copy;
* ``squad``: batch 16, length 384, stride 128 (the paper's SQuAD config), on the local SQuAD dev copy re-split by
  article (the timing needs windows of the right length, not the train set).

Measured per round: seconds, optimizer steps per second and training examples per second (each round also
evaluates ``--eval-samples`` dev examples, included in its time), and the peak GPU memory. Projected: the
fine-tunings the paper's protocol needs per task (IMP rounds from 0 to the config's target, the full model's other
seeds, one training per baseline), times that task's steps per fine-tuning (the published training-set sizes,
the paper's epochs and batch), at the steady-state seconds per step (the mean over rounds after the first).
Beside each, the baseline measured in the same run: a bare PyTorch loop of the same model, batch and length
(``plain_loop``), and the library's seconds a step over it (evaluation and pruning included on the library's side);
and two variants of the bare loop that each add one piece of the library's loop (``plain_loop_variants``).
"Cheap search" divides the whole by the saving measured on the CPU Table 2 (``steps_ratio_geometric_mean`` of
``docs/results/search_cost_table2.json``: early-stopped rounds and top-down verdict levels against the full protocol,
all optimizer steps counted; the embedded model at CPU scale, not a GPU measurement). ``_bare_loop`` columns: the same
count at the bare loop's seconds a step, a floor for the library on that machine. Padding is to the full length
(``--padding max_length``, the reference code's), an upper bound for tasks with short sentences.

    python benchmarks/gpu_cost.py --precision bf16 --json docs/results/gpu_cost.json          # on a GPU
    python benchmarks/gpu_cost.py --device cpu --shape tiny --steps 2 --json /tmp/gpu_cost.json  # the logic, on CPU
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from accelerate import Accelerator

from nni_bert_tickets.experiments.config import ExperimentConfig, load_yaml
from nni_bert_tickets.experiments.imp_run import run_imp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command, emit  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "examples" / "configs" / "paper"
# Training-set sizes of the paper's tasks (GLUE: Wang et al. 2019; SQuAD v1.1: Rajpurkar et al. 2016, questions).
TRAIN_SIZES = {"mnli": 392_702, "qqp": 363_846, "qnli": 104_743, "sst2": 67_349, "cola": 8_551, "stsb": 5_749,
               "mrpc": 3_668, "rte": 2_490, "wnli": 635, "squad": 87_599}
SHAPES = {"base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
          "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)}
KINDS = {"glue": ("table2-sst2.yaml", "sst2"), "squad": ("squad.yaml", "squad")}


def random_bert(folder: Path, tokenizer: Path, shape: str, seed: int) -> Path:
    """A randomly initialised ``BertModel`` of ``shape`` saved with the tokenizer files of ``tokenizer``."""
    import shutil

    from transformers import AutoTokenizer, BertConfig, BertModel
    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer)))
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=512, **SHAPES[shape])).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    return folder


def measure(kind: str, model: Path, args) -> Dict[str, Any]:
    """The first ``--rounds`` IMP rounds of the paper's config for ``kind``, timed round by round."""
    yaml_name, task = KINDS[kind]
    settings = load_yaml(PAPER / yaml_name)
    overrides = dict(task=task, model=str(model), max_steps=args.steps, max_eval_samples=args.eval_samples,
                     max_train_samples=args.train_samples,
                     target_sparsity=round(settings.get("step", 0.1) * (args.rounds - 1), 6), padding="max_length",
                     output_root=args.output_root, seeds=1, experiment="imp", report_to=[],
                     baseline_sparsities=None, baseline_offsets=None)
    if kind == "glue":
        overrides.update(data_dir=str(args.glue_dir))
    else:
        overrides.update(data_dir=str(args.squad_root), squad_train_articles=38)
    config = ExperimentConfig(**{**settings, **overrides}).validate()
    accelerator = Accelerator(mixed_precision=args.precision, cpu=args.device == "cpu")
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stamps: List[float] = [time.perf_counter()]
    run_imp(config, accelerator, on_round=lambda record, ticket: stamps.append(time.perf_counter()))
    seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    if len(seconds) != args.rounds:
        raise SystemExit(f"{kind}: expected {args.rounds} timed rounds, got {len(seconds)}: was the run read from "
                         f"the cache? use an empty --output-root")
    rounds = [{"round": i, "seconds": s, "steps_per_second": args.steps / s,
               "examples_per_second": args.steps * config.batch_size / s} for i, s in enumerate(seconds)]
    steady = statistics.fmean(s for s in seconds[1:]) / args.steps if len(seconds) > 1 else seconds[0] / args.steps
    return {"kind": kind, "config": f"examples/configs/paper/{yaml_name}", "batch_size": config.batch_size,
            "max_length": config.max_length, "learning_rate": config.learning_rate, "steps_a_round": args.steps,
            "rounds": rounds, "seconds_per_step": steady,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}


VARIANTS = ("bare", "loss_item", "nni_wrappers")


def plain_loop(kind: str, model: Path, args, variant: str = "bare") -> Dict[str, Any]:
    """The baseline measured in the same run: a bare PyTorch loop (AdamW, autocast in ``--precision``, no masks,
    no data loader, no evaluation) on the same model (a classification head for both kinds), batch and length, random
    token ids; seconds an optimizer step, the mean of ``--steps`` steps after five warm-up steps.

    Two variants add one thing each of what the library's loop does, to attribute its gap: ``loss_item`` reads the
    loss every step (as its progress bar does: on a GPU, a wait for the device each step), ``nni_wrappers`` trains
    the model wrapped by an NNI 3 pruner at 50 % (this library's ``RandomPruner``: NNI's module wrappers apply the
    mask in every forward of each prunable matrix, as in the library's IMP rounds)."""
    from transformers import AutoModelForSequenceClassification

    from nni_bert_tickets import RandomPruner, bert_config_list

    settings = load_yaml(PAPER / KINDS[kind][0])
    batch, length = settings["batch_size"], settings.get("max_length", 128)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    torch.manual_seed(0)
    net = AutoModelForSequenceClassification.from_pretrained(str(model), num_labels=2).to(device).train()
    if variant == "nni_wrappers":
        RandomPruner(net, bert_config_list(net, 0.5)).compress()  # the wrappers stay on: the model is trained wrapped
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings["learning_rate"])
    ids = torch.randint(1000, 30000, (batch, length), device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}[args.precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = net(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if variant == "loss_item":
            loss.item()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return {"batch_size": batch, "max_length": length, "seconds_per_step": seconds,
            "examples_per_second": batch / seconds}


def fine_tunings(settings: Dict[str, Any]) -> Dict[str, int]:
    """The trainings the paper's Table 2 protocol needs for one task's config."""
    config = ExperimentConfig(**{**settings, "model": "unused"})
    imp = len(config.levels())  # rounds 0 (the full model's first seed) .. target
    baselines = len(config.baselines) * len(config.baseline_sparsities or [config.target_sparsity])
    return {"imp_rounds": imp, "full_model_other_seeds": max(config.seeds - 1, 0), "baselines": baselines}


def project(measured: Dict[str, Dict[str, Any]], saving: float) -> List[Dict[str, Any]]:
    """GPU-hours of each paper task's Table 2: its fine-tunings x steps a fine-tuning x seconds a step."""
    rows = []
    for path in sorted(PAPER.glob("table2-*.yaml")) + [PAPER / "squad.yaml"]:
        settings = load_yaml(path)
        task = settings["task"]
        kind = "squad" if task == "squad" else "glue"
        steps = math.ceil(settings.get("epochs", 3) * math.ceil(TRAIN_SIZES[task] / settings["batch_size"]))
        count = fine_tunings(settings)
        per_step = measured[kind]["seconds_per_step"]
        full = sum(count.values()) * steps * per_step / 3600
        row = {"task": task, "config": str(path.relative_to(ROOT)), "train_examples": TRAIN_SIZES[task],
               "steps_a_finetuning": steps, **count, "gpu_hours_full_search": full,
               "gpu_hours_cheap_search": full / saving}
        if "plain_loop" in measured[kind]:
            bare = sum(count.values()) * steps * measured[kind]["plain_loop"]["seconds_per_step"] / 3600
            row.update(gpu_hours_full_search_bare_loop=bare, gpu_hours_cheap_search_bare_loop=bare / saving)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="bf16", help="Accelerate's mixed precision")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: check the logic where no GPU is")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="base: bert-base; tiny: for tests")
    parser.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=sorted(KINDS), help="what to time")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps a timed round")
    parser.add_argument("--rounds", type=int, default=3, help="IMP rounds to time (round 0 is dense; >= 2)")
    parser.add_argument("--eval-samples", type=int, default=256, help="dev examples each round evaluates")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="tokenise only the first N training examples (default: all; tests use a few)")
    parser.add_argument("--tokenizer", type=Path, default=ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2",
                        help="a folder with a BERT uncased WordPiece tokenizer")
    parser.add_argument("--glue-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    parser.add_argument("--squad-root", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the folder holding squad/validation.jsonl")
    parser.add_argument("--output-root", default=None, help="run store (default: a fresh temporary folder)")
    parser.add_argument("--search-cost", type=Path, default=ROOT / "docs" / "results" / "search_cost_table2.json",
                        help="benchmarks/search_cost_table2.py's output: its measured saving gives the cheap column")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="measure nothing: project again from this earlier output's measurements (no GPU needed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be >= {low}, got {value}" for name, value, low in
                (("steps", args.steps, 1), ("rounds", args.rounds, 2), ("eval-samples", args.eval_samples, 1))
                if value < low]
    if args.device == "cuda" and not torch.cuda.is_available() and args.from_json is None:
        problems.append("--device cuda but torch sees no GPU (torch %s); --device cpu checks the logic only"
                        % torch.__version__)
    if args.from_json is not None and not args.from_json.is_file():
        problems.append(f"--from-json {args.from_json}: no such file")
    if not args.search_cost.is_file():
        problems.append(f"--search-cost {args.search_cost}: no such file (benchmarks/search_cost_table2.py writes it)")
    if args.device == "cpu" and args.precision != "no":
        problems.append(f"--precision {args.precision} on --device cpu: this machine has no fast bf16; use --precision no")
    if problems:
        parser.error("; ".join(problems))
    search_cost = json.loads(args.search_cost.read_text())
    saving, tasks = search_cost["steps_ratio_geometric_mean"], [t["task"] for t in search_cost["tasks"]]
    if args.from_json is not None:
        earlier = json.loads(args.from_json.read_text())
        result = {"command": command(__file__, argv), "measured_by": earlier.get("measured_by", earlier["command"]),
                  **{k: earlier[k] for k in ("device", "torch", "precision", "shape", "measured")}}
        emit(finish(result, saving, tasks, args.search_cost.name), args.json)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.output_root = args.output_root or str(Path(tmp) / "runs")
        model = random_bert(Path(tmp) / f"bert-{args.shape}-random", args.tokenizer, args.shape, seed=0)
        measured = {kind: measure(kind, model, args) for kind in args.kinds}
        for kind in args.kinds:  # the same model, batch and length without the library: its overhead, as a ratio
            plain = plain_loop(kind, model, args)
            measured[kind]["plain_loop"] = {**plain, "library_over_plain": measured[kind]["seconds_per_step"]
                                            / plain["seconds_per_step"]}
            measured[kind]["plain_loop_variants"] = {  # what one piece of the library's loop adds to the bare loop
                variant: {**(timed := plain_loop(kind, model, args, variant)),
                          "over_bare": timed["seconds_per_step"] / plain["seconds_per_step"]}
                for variant in VARIANTS[1:]}
    result = {"command": command(__file__, argv),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "precision": args.precision, "shape": args.shape, "measured": measured}
    emit(finish(result, saving, tasks, args.search_cost.name), args.json)


def finish(result: Dict[str, Any], saving: float, tasks: List[str], source: str) -> Dict[str, Any]:
    """The note, the projection and its totals, from ``result["measured"]``."""
    measured = result["measured"]
    result["note"] = ("bert-base shape with random weights and the embedded tokenizer's vocabulary; timings of the "
                      "library's IMP runner, and of a bare PyTorch loop beside it, on the device named; the "
                      "projection multiplies them by the paper protocol's fine-tunings, and the cheap-search column "
                      f"divides by the saving measured on the CPU Table 2 ({saving:.3f}x, geometric mean over "
                      f"{', '.join(tasks)} from {source}; the embedded model at CPU scale), not a GPU measurement")
    result["projection"] = project(measured, saving) if {"glue", "squad"} <= set(measured) else None
    for row in result["projection"] or []:
        for key in [k for k in row if k.startswith("gpu_hours_")]:
            result[f"total_{key}"] = result.get(f"total_{key}", 0.0) + row[key]
    return result


if __name__ == "__main__":
    main()
