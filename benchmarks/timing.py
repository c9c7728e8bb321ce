"""Forward-pass timing shared by the speed benchmarks: fixed-length batches of real inputs, and the median seconds
per forward of several models measured in one run, their repeats interleaved so drift hits them all alike."""
from __future__ import annotations

import statistics
import time
from typing import Dict, List

import torch

__all__ = ["timing_batches", "time_models"]


def timing_batches(tuner, length: int, examples: int, batch_sizes: List[int]) -> Dict[int, List[Dict]]:
    """The first ``examples`` validation inputs padded to ``length``, split into batches of each size."""
    data = tuner.eval_data[tuner.task.eval_splits[0]]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in data.column_names]
    rows = [{k: data[i % len(data)][k][:length] for k in keys} for i in range(examples)]
    padded = tuner.tokenizer.pad(rows, padding="max_length", max_length=length, return_tensors="pt")
    return {b: [{k: v[i:i + b] for k, v in padded.items()} for i in range(0, examples, b)] for b in batch_sizes}


def time_models(models: Dict[str, torch.nn.Module], batches: Dict[int, List[Dict]], repeats: int,
                threads: int) -> Dict[str, Dict[int, float]]:
    """Median seconds per forward of each batch size, repeats interleaved over the models (order rotated)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    names = list(models)
    samples = {n: {b: [] for b in batches} for n in names}
    try:
        with torch.inference_mode():
            for model in models.values():  # warm-up
                for chunks in batches.values():
                    model.eval()(**chunks[0])
            for r in range(repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    for b, chunks in batches.items():
                        start = time.perf_counter()
                        for chunk in chunks:
                            models[name](**chunk)
                        samples[name][b].append((time.perf_counter() - start) / len(chunks))
    finally:
        torch.set_num_threads(previous)
    return {n: {b: statistics.median(v) for b, v in s.items()} for n, s in samples.items()}
