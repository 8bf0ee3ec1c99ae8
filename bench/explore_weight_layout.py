"""Exploration: would decode matmuls run faster with each weight stored transposed?

    python bench/explore_weight_layout.py --configs .gpu/hf

The model keeps each nn.Linear weight as Hugging Face stores it, W [N,K] (out, in), and multiplies x @ W.t():
cuBLAS sees the weight transposed ("T"). Stored as Wt [K,N] contiguous, x @ Wt is the same product with the
weight untransposed ("N"), for which cuBLAS has other kernels and another heuristic, perhaps one that skips
split-K (the 7B o and down matmuls at batch 1 run split-K: the GEMM, then a reduction kernel). Each matmul of a
decode step is timed both ways as the model calls it (qkv with its bias, o and down accumulated into the residual,
gate/up plain), at 1 to 448 rows and for prefills of 4,096 and 16,384 tokens (gate and up also as the model's
multi-token forward runs them: two GEMMs, one per half). Each figure: the call captured in one CUDA graph, cycling
over enough copies of the weight that none is read from L2 twice, median of 5 replays, us per call.

Found (2026-11-24, bench/results/2026-11-24-h{100,200}-explore-weight-layout.log, BENCHMARKS.md): at batch 1 the
untransposed kernels are faster for every 7B matrix on the H100 and most on the H200 (the output projection by
14-22 us); the 1.5B down matmul at 256-448 rows is slower on both, and prefills move by up to 10% either way.
End to end the H100 gains (7B batch 1 +2.7-4.2%) and the H200 does not move, so model.py stores matrices
column-major.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_attention  # noqa: E402
import model as M  # noqa: E402


def per_call_us(fns):
    """fns: calls that read different weights; one graph runs each in turn, twice over (us per call)."""
    return explore_attention.per_call_us(lambda: [f() for f in fns], calls=2) / len(fns)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    dev, dt = "cuda", torch.bfloat16
    for d in sorted(args.configs.iterdir()):
        cfg = M.load_config(d)
        with torch.device("meta"):  # the model's own matrices, [N,K] each (no memory)
            m = M.Transformer(cfg)
        attn, mlp = m.layers[0].attn, m.layers[0].mlp
        print(f"\n{d.name}: us per call, W [N,K] as stored (x @ W.t()) | Wt [K,N] contiguous (x @ Wt)")
        shapes = {"qkv+bias": attn.qkv.weight.shape, "o+residual": attn.o.weight.shape,
                  "gate_up": mlp.gate_up.weight.shape, "down+residual": mlp.down.weight.shape,
                  "gate, up (halves)": mlp.gate_up.weight.shape}
        if m.lm_head is not None:  # a tied output projection is the embedding, row-major whatever the layout
            shapes["lm_head"] = m.lm_head.weight.shape
        print(f"{'rows':>5} " + " ".join(f"{n:>17}" for n in shapes))
        for B in (1, 2, 8, 16, 64, 128, 256, 448, 4096, 16384):
            cells = []
            for name, (N, K) in shapes.items():
                if name == "lm_head" and B > 448:
                    cells.append("-")
                    continue
                copies = max(2, -(-(256 << 20) // (N * K * 2)))  # 256 MiB of weights: more than any L2
                ws = [torch.randn(N, K, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
                wts = [w.t().contiguous() for w in ws]
                x = torch.randn(B, K, device=dev, dtype=dt)
                bias = torch.randn(N, device=dev, dtype=dt)
                res = torch.randn(B, N, device=dev, dtype=dt)
                if name == "qkv+bias":
                    call = lambda w, x=x, bias=bias: torch.addmm(bias, x, w)  # noqa: E731
                elif name in ("gate_up", "lm_head"):
                    call = lambda w, x=x: torch.mm(x, w)  # noqa: E731
                elif name.startswith("gate, up"):  # as the model's multi-token forward: two GEMMs on the two halves
                    call = lambda w, x=x, n=N // 2: (torch.mm(x, w[:, :n]), torch.mm(x, w[:, n:]))  # noqa: E731
                else:
                    call = lambda w, x=x, res=res: res.addmm_(x, w)  # noqa: E731
                before = res.clone()
                one = lambda w: torch.cat(call(w), 1) if name.startswith("gate, up") else call(w)  # noqa: E731
                want = one(ws[0].t()).float()
                res.copy_(before)  # the residual calls accumulate in place: the same start for both
                torch.testing.assert_close(one(wts[0]).float(), want, atol=0.05, rtol=0.02)
                t = [per_call_us([lambda w=w: call(w.t()) for w in ws]),
                     per_call_us([lambda w=w: call(w) for w in wts])]
                cells.append(f"{t[0]:7.1f} | {t[1]:7.1f}")
                del ws, wts
            print(f"{B:>5} " + " ".join(f"{c:>17}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
