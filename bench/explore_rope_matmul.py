"""Exploration: the decode step's rotation as one batched matmul instead of three elementwise kernels.

    python bench/explore_rope_matmul.py --configs .gpu/hf

At one token per row every head of a row sits at the same position, so rotating q and k is one [hd, hd]
matrix per row: qkv [B, N, hd] @ [R | I] [B, hd, 2hd] gives each head rotated (first hd columns) and as it
was (last hd columns), so q and k are read from the one half and v from the other, and k and v still go
into the cache by one scatter (a strided view of the product). One GEMM replaces roll, multiply and
multiply-add. This times, for one layer, the rotation + cache write + decode attention both ways (200
calls captured in one CUDA graph, median of 5 replays, microseconds per call), the matrices' construction
(once per step, shared by every layer), and checks that both give the same attention output.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-rope-matmul.log): the matmul form is
1.2-1.9 us faster per layer from 1 to 64 rows on both models and the matrices are cheaper to build than the
tables up to 8 rows (20 against 26 us per step at batch 1); from 128 rows (1.5B) or 256 (7B) the matrices,
64 KiB per row and layer, cost more to read than the three kernels save (1.5B, 448 rows: 99.3 against
92.4 us). So model.py rotates decode steps of up to ROPE_MATRIX_ROWS = 64 rows this way.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import per_call_us  # noqa: E402
from model import KVCache, apply_rope, apply_rope_matrix, load_config, rope_cos_sin, rope_matrix  # noqa: E402


def setup(cfg, B, p, max_len=4096):
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    N = H + 2 * Hkv
    cache = KVCache(cfg, B, max_len, device="cuda", dtype=torch.bfloat16)
    cache.kv[0].normal_()
    cache.attend_len = 512 if p < 512 else 4096
    pos = torch.full((B, 1), p, device="cuda")
    cache.prepare(pos)
    qkv = torch.randn(B, 1, N, D, device="cuda", dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(pos, cfg, torch.bfloat16)
    M = rope_matrix(pos, cfg, torch.bfloat16)

    def elementwise():
        x = apply_rope(qkv, cos, sin)
        cache.write(0, x[:, :, H:].unflatten(2, (2, Hkv)))
        return cache.attend(0, x[:, :, :H])

    def matmul():
        q, kv = apply_rope_matrix(qkv, M, H)
        cache.write(0, kv)
        return cache.attend(0, q)

    return elementwise, matmul, lambda: rope_matrix(pos, cfg, torch.bfloat16), lambda: rope_cos_sin(
        pos, cfg, torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    print(f"{'model':24} {'batch':>5} {'pos':>5} {'3 kernels':>10} {'matmul':>10} {'diff':>9}"
          f" {'tables':>8} {'matrices':>9}  (us; rotation + cache write + attention; tables/matrices once per step)")
    for d in sorted(args.configs.iterdir()):
        cfg = load_config(d)
        cfg.n_layers = 1
        for B in (1, 2, 4, 8, 16, 64, 128, 256, 448):
            for p in (300, 1500):
                ew, mm, mat, tab = setup(cfg, B, p)
                a, b = ew(), mm()
                diff = (a.float() - b.float()).abs().max().item()
                ew, mm, mat, tab = setup(cfg, B, p)  # fresh cache for timing
                print(f"{d.name:24} {B:>5} {p:>5} {per_call_us(ew):>10.2f} {per_call_us(mm):>10.2f} {diff:>9.2e}"
                      f" {per_call_us(tab, 20):>8.2f} {per_call_us(mat, 20):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
