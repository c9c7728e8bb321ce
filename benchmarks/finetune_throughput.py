"""Fine-tuning throughput of our data path versus the fixed-128 reference path, per GLUE task, in one run.

Our path: tokenise once, pad per batch (dynamic padding), batches of similar length. Reference path: pad every
example to max_length (128) and draw random batches, as the paper's code does. Both run the same loop
(:class:`nni_bert_tickets.training.loop.FineTuner`) on the same model and real data; the ratio is what counts.
Padding does not change the function computed (attention masks hide the pads): the script checks that the
logits of the same examples agree between paths, and ``--accuracy`` fine-tunes both ways on one task and
compares the metric.

    python benchmarks/finetune_throughput.py --model ../shared/models/all-MiniLM-L6-v2 --data-dir ../shared/data/glue
"""
import argparse
import dataclasses
import json
import time

import torch
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from nni_bert_tickets.tasks import get_task
from nni_bert_tickets.tasks.glue import load_glue, tokenize_glue
from nni_bert_tickets.training.loop import FineTuner, TrainConfig

TABLE2_TASKS = ["rte", "mrpc", "stsb", "cola", "sst2", "wnli"]


def tuner_for(task, data, tokenizer, config, path):
    return FineTuner(task, tokenize_glue(data, tokenizer, task, 128, path), tokenizer,
                     dataclasses.replace(config, padding=path, group_by_length=path == "dynamic"))


def examples_per_second(tuner, model_path, num_labels, steps, warmup=2):
    set_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    tuner.train(model, optimizer, tuner.training_step, max_steps=warmup)
    start = time.perf_counter()
    tuner.train(model, optimizer, tuner.training_step, max_steps=steps)
    return steps * tuner.config.batch_size / (time.perf_counter() - start)


def max_logit_gap(task, data, tokenizer, model_path):
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=task.num_labels).eval()
    rows = data["validation" if "validation" in data else task.eval_splits[0]].select(range(16))
    out = []
    for path in ("dynamic", "max_length"):
        enc = tokenize_glue(type(data)({"validation": rows}), tokenizer, task, 128, path)["validation"]
        batch = tokenizer.pad({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                              return_tensors="pt")
        with torch.no_grad():
            out.append(model(**batch).logits)
    return float((out[0] - out[1]).abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="../shared/models/all-MiniLM-L6-v2")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--tasks", nargs="+", default=TABLE2_TASKS)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accuracy", metavar="TASK", help="also fine-tune TASK both ways and compare metrics")
    parser.add_argument("--accuracy-samples", type=int, default=2000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = TrainConfig(batch_size=args.batch_size, epochs=1)
    rows = []
    for name in args.tasks:
        task = get_task(name)
        data = load_glue(task, args.data_dir)
        speed = {path: examples_per_second(tuner_for(task, data, tokenizer, config, path), args.model,
                                           task.num_labels, args.steps) for path in ("dynamic", "max_length")}
        rows.append({"task": name, "ours_ex_per_s": speed["dynamic"], "fixed128_ex_per_s": speed["max_length"],
                     "ratio": speed["dynamic"] / speed["max_length"],
                     "max_logit_gap": max_logit_gap(task, data, tokenizer, args.model)})
        print(f"{name:6s} ours {speed['dynamic']:7.1f} ex/s  fixed-128 {speed['max_length']:7.1f} ex/s  "
              f"ratio {rows[-1]['ratio']:.2f}x  max |logit gap| {rows[-1]['max_logit_gap']:.1e}", flush=True)
    ratios = torch.tensor([r["ratio"] for r in rows])
    summary = {"tasks": rows, "geomean_ratio": float(ratios.log().mean().exp())}
    print(f"geometric-mean speed-up over {len(rows)} tasks: {summary['geomean_ratio']:.2f}x")
    if args.accuracy:
        task = get_task(args.accuracy)
        data = load_glue(task, args.data_dir)
        data["train"] = data["train"].select(range(min(args.accuracy_samples, len(data["train"]))))
        summary["accuracy"] = {}
        for path in ("dynamic", "max_length"):
            set_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=task.num_labels)
            tuner = tuner_for(task, data, tokenizer, dataclasses.replace(config, learning_rate=5e-5), path)
            start = time.perf_counter()
            metric = tuner.fit(model)["default"]
            summary["accuracy"][path] = {"metric": metric, "seconds": time.perf_counter() - start}
            print(f"{args.accuracy} {path}: {task.metric} {metric:.4f} in {summary['accuracy'][path]['seconds']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
