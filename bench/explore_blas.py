"""Exploration: does the BLAS library, chosen per call, give the decode step's matmuls faster kernels?

    python bench/explore_blas.py --configs .gpu/hf

Without a cuBLAS workspace (no split-K kernels) the 7B o and down matmuls ran faster at batch 1 and the
1.5B down matmul more than twice as slow (explore_gemm.py); that setting is process-wide. Two settings
that torch reads at each call instead: the preferred BLAS library (cuBLAS or cuBLASLt) and whether bf16
reductions (split-K) may round to bf16. This times each decode matmul as the model calls it (q/k/v with
its bias, o and down added into the residual, gate/up, the output projection) under each, captured 100
times in one CUDA graph (the setting in force while capturing), median of 5 replays, microseconds.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-blas.log): no lever. At batch 1 every
matmul of both models runs within 0.2 us under all four settings (7B down 53.3-53.5 us, o 7.7-7.8); at
batch 64 cuBLASLt runs the 7B down matmul in 50.2 us against 55.3 and its o matmul in 8.6 against 7.6.
The defaults stay.
"""

import argparse
import contextlib
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_attention  # noqa: E402
from model import load_config  # noqa: E402

per_call_us = functools.partial(explore_attention.per_call_us, calls=100)


@contextlib.contextmanager
def setting(lib: str, reduced: bool):
    old_lib = torch.backends.cuda.preferred_blas_library()
    old_red = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    torch.backends.cuda.preferred_blas_library(lib)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = reduced
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(old_lib)
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = old_red


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__,
          "default library", torch.backends.cuda.preferred_blas_library(),
          "reduced-precision bf16 reduction", torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
          flush=True)
    dev, dt = "cuda", torch.bfloat16
    settings = [("cublas", True), ("cublas", False), ("cublaslt", True), ("cublaslt", False)]
    for d in sorted(args.configs.iterdir()):
        c = load_config(d)
        H, I, V = c.hidden_size, c.intermediate_size, c.vocab_size
        qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
        print(f"\n{d.name}: us per call; " + " | ".join(f"{lib} reduced={r}" for lib, r in settings))
        for B in (1, 16, 64):
            x = torch.randn(B, H, device=dev, dtype=dt)
            h = torch.randn(B, I, device=dev, dtype=dt)
            w_qkv, b_qkv = torch.randn(qkv, H, device=dev, dtype=dt), torch.randn(qkv, device=dev, dtype=dt)
            w_o, w_gu = torch.randn(H, H, device=dev, dtype=dt), torch.randn(2 * I, H, device=dev, dtype=dt)
            w_d, w_v = torch.randn(H, I, device=dev, dtype=dt), torch.randn(V, H, device=dev, dtype=dt)
            calls = {"qkv": lambda: F.linear(x, w_qkv, b_qkv), "o": lambda: x.addmm_(x, w_o.t()),
                     "gate_up": lambda: F.linear(x, w_gu), "down": lambda: x.addmm_(h, w_d.t()),
                     "lm_head": lambda: F.linear(x, w_v)}
            for name, fn in calls.items():
                cells = []
                for lib, red in settings:
                    with setting(lib, red):
                        cells.append(per_call_us(fn))
                best = min(cells)
                marks = [f"{t:8.1f}{'*' if t == best else ' '}" for t in cells]
                print(f"{B:>5} {name:>8} " + " ".join(marks), flush=True)
            x.zero_()


if __name__ == "__main__":
    main()
