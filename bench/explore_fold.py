"""Exploration: from which batch size should decode attention fold its query heads?

    python bench/explore_fold.py --configs .gpu/hf

KVCache.attend calls the flash kernel in one of two ways (see its comments): unfolded, where each query
token's heads are heads and the kernel regroups them itself and may split long rows' keys across thread
blocks (when this was written: one sequence per row, the regrouping copying q and the output; see the
note at the end); or folded, one sequence per (row, kv head) holding the G query heads that share it as G
query tokens, with no copies and no split. This times one call, rows at a given position, with attend_len
the sampler's bound (the next power of two above the position), both ways: 200 calls captured in one CUDA
graph, median of 5 replays, microseconds per call. KVCache.fold_from picks the way by B * kv heads.
A third figure: the folded sequences through the memory-efficient kernel instead (which, unlike the flash
kernel, tiles queries by 32 rather than 128 rows, so G queries waste less of each tile).

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-fold*.log): folding saves about 10 us
per call at short positions once B * kv heads >= 8 (7B, batch 64, position 300: 30.0 -> 20.0 us), but
below about 200 pairs it loses at long positions, where the unfolded call splits the keys (7B, batch 16,
position 3000: 47.7 -> 92.6 us). Above ~200 pairs it wins or ties, except at position 3000 with 512+ pairs
(3-5% slower). Hence fold_from = 1.6 x SMs (211 on an H200; 212 since the kernel's line was restated
exactly, which folds the same batches). The memory-efficient kernel was no better overall (7B batch 64:
21.7 / 57.5 / 157.8 us against 20.0 / 54.2 / 163.9 folded), so it is not used.

Since then the unfolded call is one sequence per (row, kv head) with its G query heads as heads of one
query token, which the kernel regroups by reshapes instead of copies (bench/explore_kv_head_sequences.py):
run now, the first column measures that form, 4-6 us faster than the figures above below the folding
point; the folding point stays where the kernel stops splitting keys.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402


def efficient(c, q):
    """The folded call (prepare with fold_from 0) through the memory-efficient kernel."""
    B, _, H, D = q.shape
    runs, shift = c.kv[0].view(-1, 1, D), c.n_kv_heads * c.max_len
    return torch.ops.aten._efficient_attention_forward(
        q.reshape(1, B * H, 1, D), runs[None, :-shift], runs[None, shift:], None, c.cu_q, c.cu_k,
        H // c.n_kv_heads, c.attend_len, 0.0, 0, False, seqlen_k=c.lens)[0].view(B, 1, H, D)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        positions = (300, 1000, 3000)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call, unfolded / folded / folded, memory-efficient kernel")
        print(f"{'batch':>5} {'B*kv':>5} " + " ".join(f"{'position ' + str(p):>28}" for p in positions))
        for B in (1, 4, 16, 32, 48, 64, 96, 128, 192, 256):
            cells = []
            for p in positions:
                attend = 1 << (p + 1).bit_length()
                cache, q = random_cache(cfg, B, attend)
                cache.split_from = 10**9  # one call, as when this was measured (long rows in chunks since then)
                t = []
                for fold_from in (10**9, 0):
                    cache.fold_from, cache.attend_len = fold_from, attend
                    cache.prepare(torch.full((B, 1), p, device="cuda"))
                    t.append(per_call_us(lambda c=cache, q=q: c.attend(0, q)))
                try:
                    torch.testing.assert_close(efficient(cache, q), cache.attend(0, q), atol=2e-2, rtol=2e-2)
                    t.append(per_call_us(lambda c=cache, q=q: efficient(c, q)))
                except (RuntimeError, AssertionError) as e:
                    print(f"memory-efficient kernel, batch {B}, position {p}: {str(e)[:300]}")
                    t.append(float("nan"))
                cells.append(f"{t[0]:7.1f} / {t[1]:6.1f} / {t[2]:6.1f}{' *' if t[1] < t[0] else '  '}")
            print(f"{B:>5} {B * cfg.n_kv_heads:>5} " + " ".join(f"{c:>28}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
