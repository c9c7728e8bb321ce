"""Do 2:4 tickets run faster on a GPU? Dense against ``torch.sparse.to_sparse_semi_structured`` (issue 23, item 3).

A 2:4 ticket keeps 2 of every 4 consecutive input weights in each row of each prunable matrix, the pattern NVIDIA's
sparse tensor cores (Ampere and later) execute at up to twice the dense rate. Speed does not depend on the weights'
values, so the model is a ``BertForSequenceClassification`` of the given shape with random weights (``minilm``: the
embedded model's 6 × 384; ``base``: bert-base's 12 × 768), masked by the one-shot 2:4 magnitude mask of its weights
(``one_shot_magnitude_ticket(..., pattern="2:4")``, pooler left dense). Per dtype and batch (length 128): the dense
model with the zeros in place, then the same model with every pruned matrix converted to a semi-structured sparse
tensor, timed in one run (CUDA events, median of ``--repeats`` after warm-up), and the largest difference of
their logits (the same function, up to the kernels' rounding). torch has two semi-structured kernels, cuSPARSELt
(its default where the library is present) and CUTLASS (``SparseSemiStructuredTensor._FORCE_CUTLASS``), which torch
builds for compute capability 8.x only: each that the GPU runs is measured (``--backends``; CUTLASS asked for on
another capability is refused before any work, as torch 2.11 refused it on an H200, 9.0). ``matmuls``: one
bert-base FFN matrix (3072 x 768 and 768 x 3072) alone, ``F.linear`` over batch x length tokens, dense against
each backend, with the relative error against float64: the kernels' own speed, without the launch gaps of a whole
eager model.

CPU: the kernels exist only on CUDA GPUs of compute capability 8.0 or higher, so no CPU speed-up is claimed and
``--device cpu`` is refused. Accuracy of 2:4 tickets is a CPU experiment (``pattern: "2:4"`` in a Table 2 config).

    python benchmarks/semi_structured.py --json docs/results/semi_structured.json     # on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import torch

from nni_bert_tickets.core.baselines import one_shot_magnitude_ticket
from nni_bert_tickets.core.masks import is_nm
from nni_bert_tickets.core.targets import prunable_modules

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import command, emit  # noqa: E402  (benchmarks/ is the script's folder)

SHAPES = {"minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
          "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
          "tiny": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def two_four_model(shape: str, seed: int = 0) -> torch.nn.Module:
    """A random ``BertForSequenceClassification`` of ``shape`` whose prunable matrices (pooler aside) are 2:4."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, **SHAPES[shape])).eval()
    ticket = one_shot_magnitude_ticket(model, 0.5, pooler=False, pattern="2:4")
    if not is_nm(ticket.masks, 2, 4):
        raise AssertionError("the one-shot 2:4 mask is not 2:4")
    ticket.apply(model).remove()  # zeros in place; no gradient hooks needed for inference
    return model


@contextlib.contextmanager
def backend_forced(backend: str) -> Iterator[None]:
    """Conversions inside go to ``backend``: torch's ``_FORCE_CUTLASS`` switch, restored on the way out."""
    from torch.sparse import SparseSemiStructuredTensor

    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        yield
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced


def to_semi_structured(model: torch.nn.Module, backend: str) -> List[str]:
    """Replace each prunable matrix (pooler aside) by its semi-structured sparse form through ``backend``
    (``cusparselt``, torch's default where cuSPARSELt is present, or ``cutlass``); returns the backend each got
    (torch falls back to CUTLASS where cuSPARSELt is missing)."""
    from torch.sparse import to_sparse_semi_structured

    modules = prunable_modules(model, pooler=False)
    with backend_forced(backend):
        for module in modules.values():
            module.weight = torch.nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
    return [module.weight.BACKEND for module in modules.values()]


@torch.inference_mode()
def milliseconds(call, repeats: int) -> float:
    """Median of ``repeats`` CUDA-event timings of ``call()`` after three warm-up calls."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(shape: str, dtype: str, backends: List[str], batches: List[int], length: int,
            repeats: int) -> List[Dict[str, Any]]:
    """The whole model: dense (zeros in place) against each backend's semi-structured matrices."""
    import copy

    model = two_four_model(shape).to("cuda", DTYPES[dtype])
    generator = torch.Generator().manual_seed(1)
    inputs = {b: {"input_ids": torch.randint(1000, 30000, (b, length), generator=generator).cuda(),
                  "attention_mask": torch.ones(b, length, dtype=torch.long).cuda()} for b in batches}
    with torch.inference_mode():
        dense = {b: (milliseconds(lambda: model(**inputs[b]), repeats), model(**inputs[b]).logits.float())
                 for b in batches}
    rows = []
    for backend in backends:
        sparse = copy.deepcopy(model)
        used = to_semi_structured(sparse, backend)
        for b in batches:
            sparse_ms = milliseconds(lambda: sparse(**inputs[b]), repeats)
            with torch.inference_mode():
                diff = (sparse(**inputs[b]).logits.float() - dense[b][1]).abs().max().item()
            rows.append({"shape": shape, "dtype": dtype, "backend": backend, "backends_used": sorted(set(used)),
                         "batch": b, "length": length, "matrices": len(used), "dense_ms": dense[b][0],
                         "semi_structured_ms": sparse_ms, "speedup": dense[b][0] / sparse_ms,
                         "max_abs_logit_difference": diff})
    return rows


def measure_matmuls(dtype: str, backends: List[str], batches: List[int], length: int,
                    repeats: int) -> List[Dict[str, Any]]:
    """One bert-base FFN matrix at a time (no launch gaps between layers): ``F.linear`` of batch x length tokens."""
    from torch.nn.functional import linear
    from torch.sparse import to_sparse_semi_structured

    from nni_bert_tickets.core.masks import nm_magnitude_masks
    rows = []
    generator = torch.Generator().manual_seed(2)
    for out_features, in_features in ((3072, 768), (768, 3072)):
        weight = torch.randn(out_features, in_features, generator=generator)
        weight = (weight * nm_magnitude_masks({"w": weight}, 0.5, 2, 4)["w"]).to("cuda", DTYPES[dtype])
        for b in batches:
            x = torch.randn(b * length, in_features, generator=generator).to("cuda", DTYPES[dtype])
            dense_ms = milliseconds(lambda: linear(x, weight), repeats)
            reference = linear(x.double(), weight.double())
            dense_error = ((linear(x, weight).double() - reference).norm() / reference.norm()).item()
            for backend in backends:
                with backend_forced(backend):
                    sparse = to_sparse_semi_structured(weight)
                sparse_ms = milliseconds(lambda: linear(x, sparse), repeats)
                with torch.inference_mode():
                    error = (linear(x, sparse).double() - reference).norm() / reference.norm()
                rows.append({"dtype": dtype, "backend": backend, "backend_used": sparse.BACKEND,
                             "out_features": out_features, "in_features": in_features, "tokens": b * length,
                             "dense_ms": dense_ms, "semi_structured_ms": sparse_ms, "speedup": dense_ms / sparse_ms,
                             "relative_error_vs_float64": error.item(), "dense_relative_error_vs_float64": dense_error,
                             "dense_tflops": 2 * b * length * in_features * out_features / dense_ms / 1e9})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["minilm", "base"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--backends", nargs="+", choices=["cusparselt", "cutlass"], default=None,
                        help="torch's semi-structured kernels: cuSPARSELt (its default) and CUTLASS (compute "
                             "capability 8.x only); default: each that this GPU runs")
    parser.add_argument("--batches", nargs="+", type=int, default=[4, 16, 64, 256])
    parser.add_argument("--length", type=int, default=128, help="tokens an input")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per cell (median)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.device == "cpu" or not torch.cuda.is_available():
        parser.error("semi-structured (2:4) sparse kernels run only on CUDA GPUs of compute capability >= 8.0 "
                     f"(torch {torch.__version__} sees no GPU here): no CPU speed-up is claimed; 2:4 accuracy is the "
                     "CPU experiment `pattern: \"2:4\"`")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 0):
        parser.error(f"{torch.cuda.get_device_name()} has compute capability {capability}; 2:4 kernels need >= 8.0")
    if args.backends is None:
        args.backends = ["cusparselt"] + (["cutlass"] if capability[0] == 8 else [])
    elif "cutlass" in args.backends and capability[0] != 8:
        parser.error(f"--backends cutlass: torch's CUTLASS 2:4 kernels run on compute capability 8.x only; "
                     f"{torch.cuda.get_device_name()} has {capability[0]}.{capability[1]}")
    if min(args.batches) < 1 or args.length < 1 or args.repeats < 1:
        parser.error("--batches, --length and --repeats must be >= 1")
    rows = [row for shape in args.shapes for dtype in args.dtypes
            for row in measure(shape, dtype, args.backends, args.batches, args.length, args.repeats)]
    matmuls = [row for dtype in args.dtypes
               for row in measure_matmuls(dtype, args.backends, args.batches, args.length, args.repeats)]
    result = {"command": command(__file__, argv),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "note": "random weights with a one-shot 2:4 magnitude mask (speed does not depend on the values); "
                      "dense = the same model with its zeros; pooler, embeddings and head dense in both",
              "rows": rows, "matmuls": matmuls}
    emit(result, args.json)


if __name__ == "__main__":
    main()
