"""Exploration: how finely should the attention bound (KVCache.attend_len) follow the rows' lengths?

    python bench/explore_bound.py --configs .gpu/hf

Below the folding point the flash kernel splits each row's keys into a number of ranges it computes from
the bound (max_seqlen_k), not from the rows' real lengths: ranges past a row's end get no work. With the
bound a power of two above the longest row, a row at 2,100 positions under a bound of 4,096 leaves about
half of the kernel's thread blocks idle. This times one KVCache.attend call (one layer, every row at the
given position) with the bound rounded up three ways: to a power of two (the sampler's rule before), to
one of four sizes per doubling, and to a multiple of 128 (the kernel's key block). 200 calls in one CUDA
graph, median of 5 replays, microseconds per call.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-bound.log): four sizes per doubling
is nearly as fast as multiples of 128 and up to 1.3x faster than a power of two just above one (1.5B: batch
1 at position 5,000 21.8 -> 17.1 us, 16 rows at 2,100 34.6 -> 28.5 us; 7B 64 rows, folded, no split: within
2.5 us either way), so the sampler now rounds the bound with round_size, as it rounds batch sizes.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402

import sample  # noqa: E402


def bounds(n: int) -> dict[str, int]:
    return {"power of two": max(256, 1 << (n - 1).bit_length()),
            "four per doubling": max(256, sample.round_size(n)), "multiple of 128": -(-n // 128) * 128}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name}; us per call, bound rounded to: " + " / ".join(bounds(1000)))
        for B in (1, 4, 8, 16, 32, 64):
            cells = []
            for p in (600, 1100, 1600, 2100, 2600, 3000, 5000):
                b = bounds(p + 1)
                cache, q = random_cache(cfg, B, max(b.values()))
                t = []
                for bound in b.values():
                    cache.attend_len = bound
                    cache.prepare(torch.full((B, 1), p, device="cuda"))
                    t.append(per_call_us(lambda c=cache, q=q: c.attend(0, q)))
                cells.append(f"{p}: " + "/".join(f"{x:.1f}" for x in t))
            print(f"{B:>3} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
