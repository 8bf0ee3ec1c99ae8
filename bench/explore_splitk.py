"""Exploration: can a batch-1 decode matmul avoid cuBLAS's split-K kernel (and its reduction kernel) by
how it is called, per call, rather than by the process-wide CUBLAS_WORKSPACE_CONFIG=:0:0?

    python bench/explore_splitk.py --configs .gpu/hf

With no workspace the 7B o and down matmuls ran faster at batch 1 (BENCHMARKS.md, "No cuBLAS workspace")
and the 1.5B down matmul twice as slow, so the setting cannot be chosen per model. This times each decode
matmul of the real configs at a few batch sizes, called as the model calls it (F.linear; addmm_ into the
residual for o and down) and as a batched matmul of one batch (bmm / baddbmm_, which cuBLAS serves from
its strided-batched entry point and its own heuristic), and with K cut by hand into s ranges (one bmm of s
partial products, summed into the residual by a [1,s] x [s,N] GEMM: two kernels, where split-K launches a
memset, the GEMM and a reduction), with the kernels each call launches. Each figure: the call captured 200
times in one CUDA graph, median of 5 replays, microseconds per call.

Found on an H100 (2026-11-23, bench/results/2026-11-23-h100-explore-splitk*.log): in torch 2.11 every
decode matmul runs on cuBLASLt, and a batched matmul of one batch gets the same kernel, split-K and its
reduction included, within 0.3 us (qkv's bias as baddbmm costs a copy more). Without a workspace the 7B
down matmul runs one kernel in 49.1 us instead of 53.6, the 1.5B one 14.5 instead of 11.1. K cut by hand
gives the 7B down matmul 52.0 us (s = 2) and the 1.5B one 11.4 (11.7 as called now), with the partial
sums rounded to bf16 (max error 0.036 against 0.030); o gets slower (7B 10.5 against 8.2 us). About 1.6
us per 7B layer, 0.7% of a batch-1 step, at a rounding cost: no per-call lever worth taking.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import per_call_us  # noqa: E402
from model import load_config  # noqa: E402


def kernels(fn):
    """Names of the GPU kernels one call launches (shortened)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return " + ".join(n.split("(")[0].replace("void ", "")[:48] for n in names)


def variants(x, w, bias, res):
    """The ways of computing x @ w.T (+ bias) (+ res, in place), x [B,K], w [N,K]."""
    if res is None:
        return {
            "F.linear": lambda: F.linear(x, w, bias),
            "bmm": (lambda: torch.bmm(x[None], w.t()[None])) if bias is None
            else (lambda: torch.baddbmm(bias, x[None], w.t()[None])),
        }
    out = {
        "addmm_": lambda: res.addmm_(x, w.t()),
        "baddbmm_": lambda: res[None].baddbmm_(x[None], w.t()[None]),
    }
    B, (N, K) = x.shape[0], w.shape
    for s in (2, 4, 8):  # K cut in s ranges by hand: one bmm of s [B, K/s] x [K/s, N] products, summed by a GEMM
        ws, xs = w.view(N, s, K // s).transpose(0, 1), x.view(B, s, K // s).transpose(0, 1)  # [s,N,K/s], [s,B,K/s]
        ones = torch.ones(1, s, device=x.device, dtype=x.dtype)
        out[f"bmm/{s}"] = (lambda ws=ws, xs=xs, ones=ones, s=s:
                           res.view(1, -1).addmm_(ones, torch.bmm(xs, ws.transpose(1, 2)).view(s, -1)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--batches", default="1,2,8,16")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    dev, dt = "cuda", torch.bfloat16
    for d in sorted(args.configs.iterdir()):
        cfg = load_config(d)
        Hd, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        shapes = {  # name: (N, K, bias, residual)
            "qkv": ((cfg.n_heads + 2 * cfg.n_kv_heads) * hd, Hd, cfg.qkv_bias, False),
            "o": (Hd, cfg.n_heads * hd, False, True),
            "gate_up": (2 * I, Hd, False, False),
            "down": (Hd, I, False, True),
        }
        for B in map(int, args.batches.split(",")):
            for name, (N, K, has_bias, has_res) in shapes.items():
                w = torch.randn(N, K, device=dev, dtype=dt) * 0.02
                x = torch.randn(B, K, device=dev, dtype=dt)
                bias = torch.randn(N, device=dev, dtype=dt) if has_bias else None
                res = torch.randn(B, N, device=dev, dtype=dt) if has_res else None
                want = (x.float() @ w.float().t() + (bias.float() if has_bias else 0)
                        + (res.float() if has_res else 0))
                for label, fn in variants(x, w, bias, res).items():
                    if has_res:
                        res.copy_(want - x.float() @ w.float().t())
                    got = fn().reshape(B, N).float()
                    err = (got - want).abs().max().item()
                    us = per_call_us(fn)
                    gbs = N * K * 2 / us / 1e3
                    print(f"{d.name:<22} B={B:<3} {name:<8} {label:<9} {us:7.1f} us {gbs:6.0f} GB/s "
                          f"err {err:.3f}  {kernels(fn)}", flush=True)


if __name__ == "__main__":
    main()
