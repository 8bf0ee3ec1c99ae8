"""Exploration: would a batch-1 decode run faster padded to a few rows?

    python bench/explore_min_batch.py --configs .gpu/hf

cuBLAS chooses its kernel from the problem size, and at one row it picks split-K kernels for some decode
matmuls that are slower than what it runs at 64 rows (bench/explore_gemm.py: the 1.5B o projection 6.0 us
at batch 1, 4.6 at 64). Part 1 times each decode matmul as the model calls it (qkv with its bias, o and down
accumulating into the residual, gate_up in one GEMM) at 1, 2, 4, 8 and 16 rows. Part 2 runs the batch-1
benchmark (prompt 128, 256 new, greedy) through engines whose smallest decode batch is 1, 2, 4 or 8 rows
(the extra rows are empty slots, as finished rows are), interleaved, median of the rounds.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-min-batch.log): not used. Some matmuls
do get faster with more rows (1.5B o 5.9 -> 4.3 us and down 9.6 -> 8.5 at 8 rows; 7B qkv 9.4 -> 7.7), but
the padded step is slower as a whole: 1.5B 443.1 tok/s at one row against 387.5-392.7 at 2-8, 7B 193.5
against 179.5-182.2 (from two rows on, the step takes the many-row paths: two gate/up GEMMs, attention
and token picking over the empty rows).
"""

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import explore_attention  # noqa: E402
import sample  # noqa: E402
from bench_sample import our_model, timed, weight_bytes  # noqa: E402

per_call_us = functools.partial(explore_attention.per_call_us, calls=100)
ROUND_SIZE = sample.round_size


def with_min_batch(m, prompt, new, min_b):
    """Tokens/s of one greedy generation whose decode batch is padded to min_b rows."""
    sample.round_size = lambda n: max(min_b, ROUND_SIZE(n))
    try:
        eng = sample.Engine(m, slots=min_b, max_len=len(prompt) + new, max_new=new, temperature=0)
        eng.generate([prompt], 1, [new])  # warm-up: captures the graph
        return new / timed(lambda: eng.generate([prompt], 1, [new]), 1)
    finally:
        sample.round_size = ROUND_SIZE


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    sizes = (1, 2, 4, 8)
    for d in sorted(args.configs.iterdir()):
        m = our_model(d)
        blk = m.layers[0]
        print(f"\n{d.name}: one decode matmul as the model calls it, us per call")
        print(f"{'rows':>5} {'qkv+bias':>9} {'o (+=)':>9} {'gate_up':>9} {'down (+=)':>9}")
        for B in (1, 2, 4, 8, 16):
            x = torch.randn(B, m.cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
            a = torch.randn(B, blk.attn.o.weight.shape[1], device="cuda", dtype=torch.bfloat16)
            h = torch.randn(B, blk.mlp.down.weight.shape[1], device="cuda", dtype=torch.bfloat16)
            cells = [per_call_us(lambda: blk.attn.qkv(x)), per_call_us(lambda: x.addmm_(a, blk.attn.o.weight.t())),
                     per_call_us(lambda: blk.mlp.gate_up(x)), per_call_us(lambda: x.addmm_(h, blk.mlp.down.weight.t()))]
            print(f"{B:>5} " + " ".join(f"{c:9.1f}" for c in cells), flush=True)
        prompt = torch.randint(0, 150000, (128,), generator=torch.Generator().manual_seed(1)).tolist()
        runs = {b: [] for b in sizes}
        for _ in range(args.rounds):
            for b in sizes:
                runs[b].append(with_min_batch(m, prompt, 256, b))
        bw = weight_bytes(m)
        print(f"{d.name}: batch 1, prompt 128, 256 new, greedy; tok/s by smallest decode batch "
              f"(median of {args.rounds} interleaved rounds; weights {bw / 1e9:.2f} GB per step)")
        for b in sizes:
            each = ", ".join(f"{r:.1f}" for r in runs[b])
            print(f"  {b} rows: {statistics.median(runs[b]):7.1f} tok/s  (runs {each})")
        del m
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
