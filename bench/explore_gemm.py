"""Exploration: which way round should a decode step's matmuls and its MLP run?

    python bench/explore_gemm.py --configs .gpu/hf

cuBLAS picks its kernel from the problem's orientation: F.linear(x, W) writes [B,N] (cuBLAS sees m=N,
n=B), torch.mm(W, x.t()) writes [N,B] (m=B, n=N). At batch 1 the two outputs are the same memory.
Part 1 times each decode matmul of the real configs both ways (and torch.mv at batch 1), as weight-read
bandwidth. Part 2 times the whole decode MLP (gate/up matmul, SiLU * up, down matmul added to the
residual) three ways: one [B,2I] GEMM whose gate and up are strided views (the code at the time),
two GEMMs, and one GEMM written [2I,B], whose gate and up halves are contiguous blocks.
Each figure: the call captured 100 times in one CUDA graph, median of 5 replays, microseconds per call.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-gemm*.log, BENCHMARKS.md): both
orientations (and torch.mv) run the same kernels' times within 1 us; the [2I,B] MLP ties with two GEMMs
at batch 64 and loses at batch 1, so the model uses one GEMM at batch 1 and two otherwise. Under
CUBLAS_WORKSPACE_CONFIG=:0:0 (no split-K) the 7B o and down matmuls get faster at batch 1 and the 1.5B
down matmul more than twice as slow.

On an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-gemm.log, MLP at 1-448 rows): the [2I,B] MLP
is 1-5 us faster than two GEMMs from 8 to 256 rows for both models, and 204 us faster for the 7B at 448
(294.8 against 498.8 us). Used for every decode step of more than one row, it ran the 7B batch-64
benchmark 0.9-1.3% faster but the 1.5B ragged batch 0.5-0.6% slower (its uniform batch +0.3% and -0.7%),
in two interleaved rounds (2026-11-22-h100-mlp-transposed-ab.log), so it was not kept.
"""

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_attention  # noqa: E402
import model as M  # noqa: E402

per_call_us = functools.partial(explore_attention.per_call_us, calls=100)


def mlp_one_gemm(x, wgu, wd):  # [B,2I]: gate and up are strided views
    gate, up = F.linear(x, wgu).chunk(2, dim=-1)
    return x.addmm_(F.silu(gate) * up, wd.t())


def mlp_two_gemms(x, wgu, wd):
    n = wgu.shape[0] // 2
    return x.addmm_(F.silu(F.linear(x, wgu[:n])) * F.linear(x, wgu[n:]), wd.t())


def mlp_transposed(x, wgu, wd):  # [2I,B]: gate and up are contiguous blocks
    gate, up = torch.mm(wgu, x.t()).chunk(2, dim=0)
    return x.addmm_((F.silu(gate) * up).t(), wd.t())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    dev, dt = "cuda", torch.bfloat16
    for d in sorted(args.configs.iterdir()):
        cfg = M.load_config(d)
        H, I = cfg.hidden_size, cfg.intermediate_size
        with torch.device("meta"):  # the model's own matrices, [N,K] each (no memory)
            layer = M.Transformer(cfg).layers[0]
        shapes = {"qkv": layer.attn.qkv.weight.shape, "o": layer.attn.o.weight.shape,
                  "gate_up": layer.mlp.gate_up.weight.shape, "down": layer.mlp.down.weight.shape,
                  "lm_head": (cfg.vocab_size, H)}
        print(f"\n{d.name}: one matmul, us per call (weight-read TB/s)")
        print(f"{'batch':>5} {'matmul':>8} {'F.linear [B,N]':>20} {'mm(W, x.t()) [N,B]':>20} {'mv':>20}")
        for B in (1, 64, 256):
            for name, (N, K) in shapes.items():
                w = torch.randn(N, K, device=dev, dtype=dt)
                x = torch.randn(B, K, device=dev, dtype=dt)
                tb = lambda us, w=w: f"{us:8.1f} ({w.numel() * 2 / us / 1e6:4.2f})"  # noqa: E731
                cells = [tb(per_call_us(lambda: F.linear(x, w))), tb(per_call_us(lambda: torch.mm(w, x.t())))]
                cells.append(tb(per_call_us(lambda: torch.mv(w, x[0]))) if B == 1 else "-")
                print(f"{B:>5} {name:>8} " + " ".join(f"{c:>20}" for c in cells), flush=True)
        print(f"\n{d.name}: decode MLP with its residual add, us per call")
        print(f"{'batch':>5} {'one GEMM [B,2I]':>16} {'two GEMMs':>16} {'one GEMM [2I,B]':>16}")
        wgu = torch.randn(2 * I, H, device=dev, dtype=dt) * 0.02
        wd = torch.randn(H, I, device=dev, dtype=dt) * 0.02
        for B in (1, 8, 16, 32, 64, 128, 256, 448):
            x = torch.randn(B, H, device=dev, dtype=dt)
            ref = mlp_one_gemm(x.clone(), wgu, wd).float()
            for f in (mlp_two_gemms, mlp_transposed):  # same result up to rounding
                torch.testing.assert_close(f(x.clone(), wgu, wd).float(), ref, atol=0.05, rtol=0.02)
            cells = [per_call_us(lambda f=f: f(x, wgu, wd)) for f in (mlp_one_gemm, mlp_two_gemms, mlp_transposed)]
            print(f"{B:>5} " + " ".join(f"{c:>13.1f} us" for c in cells), flush=True)


if __name__ == "__main__":
    main()
