"""Exploration (not a benchmark of record): can plain PyTorch shave the batch-1 decode step further?

    python bench/explore_decode.py --configs .gpu/hf

Variants, each with fresh graphs, tok/s median of 3 (batch 1, prompt 128, 256 new, greedy):
  * base: the model as it is.
  * L2 prefetch: while a latency-bound stretch of the layer runs (norm, rotation + cache write + attention,
    SiLU), a second stream in the same CUDA graph reads the next GEMM's weights (a sum over them), so the
    GEMM finds part of them in the 50 MB L2. Sizes in MB per window: qkv (during norm 1), o (during
    rotation/attention), gate_up (during norm 2), down (during SiLU and multiply).
  * cublaslt: torch.backends.cuda.preferred_blas_library("cublaslt").
Also: 7B batch 64 prompt 512 prefill alone (1 new token), to split the batch-64 run into prefill and decode.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-decode.log, BENCHMARKS.md): every
prefetch variant was slower (1.5B 413 -> 335-381 tok/s, 7B 190 -> 168-182: the reads compete with the
small kernels for SMs and the GEMMs gain little), and cuBLASLt made no difference. Kept as the record of
what was tried; it patches the model's decode block to place the prefetches.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import model as M  # noqa: E402
import sample as S  # noqa: E402
from bench_sample import bench_ours, ceilings, our_model, timed, weight_bytes  # noqa: E402

PF = {}  # parameter name -> MB to prefetch; empty: off
STREAM = {}
BUF = {}
orig_block = M.Block.forward
orig_run = S.Engine._run


def prefetch(main, w, mb):
    if not mb:
        return
    n = min(w.numel(), int(mb * 2**20) // w.element_size())
    side = STREAM.setdefault("pf", torch.cuda.Stream(priority=0))
    side.wait_stream(main)
    with torch.cuda.stream(side):
        buf = BUF.setdefault(w.dtype, torch.empty((), dtype=w.dtype, device=w.device))
        torch.sum(w.view(-1)[:n], dim=0, out=buf)


def block_forward(self, x, rope, cache=None):
    if not PF or cache is None or x.shape[1] > 1 or not x.is_cuda:
        return orig_block(self, x, rope, cache)
    main = torch.cuda.current_stream()
    a, mlp = self.attn, self.mlp
    prefetch(main, a.qkv.weight, PF.get("qkv"))
    h = self.attn_norm(x)
    # o's prefetch went out after the qkv GEMM when the rotation was three kernels of this block; since the
    # batch-1 rotation is one matmul inside the model's attention (model.rope_matrix), it goes out before it.
    prefetch(main, a.o.weight, PF.get("o"))
    x = M.add_linear(x, a(h, rope, cache), a.o)
    prefetch(main, mlp.gate_up.weight, PF.get("gate_up"))
    h = self.mlp_norm(x)
    gate, up = mlp.gate_up(h).chunk(2, dim=-1)
    prefetch(main, mlp.down.weight, PF.get("down"))
    x = M.add_linear(x, F.silu(gate) * up, mlp.down)
    if "pf" in STREAM:
        main.wait_stream(STREAM["pf"])
    return x


def run_high_priority(self, steps, B, attend_len):
    """Engine._run with the graph captured on a high-priority stream (its kernels go first)."""
    key = (B, attend_len, self.logprobs)  # Engine._run's graph key
    if not PF.get("hi") or not self.use_graph or key in self.graphs:
        return orig_run(self, steps, B, attend_len)
    self.cache.attend_len = attend_len
    hp = torch.cuda.Stream(priority=-1)
    hp.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(hp):
        self._step(B)
    torch.cuda.current_stream().wait_stream(hp)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=self.pool, stream=hp):
        self._step(B)
    self.pool = g.pool()
    self.graphs[key] = g
    for _ in range(steps - 1):
        g.replay()


M.Block.forward = block_forward
S.Engine._run = run_high_priority


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    bw, _ = ceilings()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    variants = {
        "base": {},
        "pf o": {"o": 64},
        "pf o hi": {"o": 64, "hi": 1},
        "pf 16/o/16/12": {"qkv": 16, "o": 64, "gate_up": 16, "down": 12},
        "pf 16/o/16/12 hi": {"qkv": 16, "o": 64, "gate_up": 16, "down": 12, "hi": 1},
        "pf 32/o/32/24 hi": {"qkv": 32, "o": 64, "gate_up": 32, "down": 24, "hi": 1},
        "pf 8/o/8/8 hi": {"qkv": 8, "o": 64, "gate_up": 8, "down": 8, "hi": 1},
    }
    for name in ("qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct"):
        m = our_model(args.configs / name)
        roof = bw / weight_bytes(m)
        prompts = [list(range(5, 133))]
        want = [s.tokens for s in S.generate(m, prompts, 64, temperature=0)]
        PF.update(variants["pf 16/o/16/12 hi"])
        S._engine = None
        got = [s.tokens for s in S.generate(m, prompts, 64, temperature=0)]
        print("prefetch variant gives the same greedy tokens:", got == want, flush=True)
        for v, pf in list(variants.items()) + [("cublaslt", "lt")]:
            PF.clear()
            if pf == "lt":
                torch.backends.cuda.preferred_blas_library("cublaslt")
            else:
                PF.update(pf)
            S._engine = None  # fresh engine: fresh graphs
            t = bench_ours(m, 1, 128, 256, args.repeats)
            print(f"{name:24s} b1 {v:20s} {t:7.1f} tok/s  {t / roof:5.1%} of roofline", flush=True)
            torch.backends.cuda.preferred_blas_library("cublas")
        if name.startswith("qwen2.5-7b"):
            PF.clear()
            S._engine = None
            g = torch.Generator().manual_seed(1)
            prompts = torch.randint(0, 150000, (64, 512), generator=g).tolist()
            S.generate(m, prompts, 1, temperature=0)
            t = timed(lambda m=m: S.generate(m, prompts, 1, temperature=0), args.repeats)
            flop = 2 * (sum(p.numel() for p in m.parameters()) - 2 * m.embed.weight.numel()) * 64 * 512
            print(f"7B prefill 64 x 512 (1 new token): {t:.3f} s, {flop / t / 1e12:.0f} TFLOP/s in the linears",
                  flush=True)
            S._engine = None
            S.generate(m, prompts, 256, temperature=0)
            t2 = timed(lambda m=m: S.generate(m, prompts, 256, temperature=0), args.repeats)
            print(f"7B batch 64, 256 new: {t2:.3f} s = {64 * 256 / t2:.0f} tok/s; the 255 decode steps "
                  f"{(t2 - t) * 1e3 / 255:.2f} ms each", flush=True)
        del m
        S._engine = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
