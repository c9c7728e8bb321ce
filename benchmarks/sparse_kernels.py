"""Do torch's sparse kernels speed up CPU inference of unstructured tickets at 70-90 % sparsity?

Times ``x @ W.T`` for the prunable matrix shapes of the embedded model (384x384, 1536x384, 384x1536) with a
magnitude mask at each sparsity: dense (zeros kept), CSR (``to_sparse_csr``) and COO, on the same inputs, in
one run. A ratio above 1 means the sparse format is faster than the dense matmul.

    python benchmarks/sparse_kernels.py
"""
import argparse
import json
import statistics
import time

import torch


def timed(fn, repeats=20):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32 * 64, help="rows of x (batch x sequence length)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for out_f, in_f in [(384, 384), (1536, 384), (384, 1536)]:
            x = torch.randn(args.tokens, in_f)
            for sparsity in (0.7, 0.8, 0.9):
                w = torch.randn(out_f, in_f)
                w[w.abs() < w.abs().flatten().kthvalue(int(sparsity * w.numel())).values] = 0
                csr, coo = w.to_sparse_csr(), w.to_sparse_coo()
                dense_t = timed(lambda: x @ w.T)
                csr_t = timed(lambda: torch.sparse.mm(csr, x.T).T)
                coo_t = timed(lambda: torch.sparse.mm(coo, x.T).T)
                assert torch.allclose(torch.sparse.mm(csr, x.T).T, x @ w.T, atol=1e-3)
                rows.append({"shape": [out_f, in_f], "sparsity": sparsity, "dense_ms": 1e3 * dense_t,
                             "csr_ms": 1e3 * csr_t, "coo_ms": 1e3 * coo_t,
                             "csr_speedup": dense_t / csr_t, "coo_speedup": dense_t / coo_t})
                print(f"{out_f}x{in_f} at {sparsity:.0%}: dense {1e3 * dense_t:.2f} ms, CSR {1e3 * csr_t:.2f} ms "
                      f"({dense_t / csr_t:.2f}x), COO {1e3 * coo_t:.2f} ms ({dense_t / coo_t:.2f}x)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
