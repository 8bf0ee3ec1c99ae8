"""Exploration: decode attention as one sequence per (row, kv head) holding G query heads of one token.

    python bench/explore_kv_head_sequences.py --configs .gpu/hf

KVCache.attend calls the flash kernel one of two ways (see its comments). Below fold_from (row, kv head)
pairs, one sequence per row with H query heads: the kernel then regroups the G query heads of each kv head
into G query rows (its "decode" path, the only one in which it splits long rows' keys), which costs two
copies of q and one of the output from 2 rows on (profile_step.py: 16.4 kernels per layer at batch 1,
20.4 at batch 2). From fold_from on, one sequence per (row, kv head) holding its G query heads as G
query tokens of one head: no regrouping, but no split either.

The form tried here: one sequence per (row, kv head), whose G query heads stay heads of one query token,
over the same contiguous runs of keys as the folded call. The kernel's decode path still applies (one
query token, more query heads than kv heads), so it may split keys, and with one kv head per sequence
its regrouping is a reshape of adjacent dimensions: no copies. q needs one copy out of the fused qkv
(as the folded call's does). Times one call, q a view of a fused qkv tensor as in the model, rows at a
given position, attend_len as the sampler bounds it: 200 calls in one CUDA graph, median of 5 replays.
Each result is checked against KVCache.attend on rows of mixed lengths.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-kv-head-sequences.log; "now" there is
the one-sequence-per-row call): 4-6 us faster per call at every batch from 2 rows to the folding point and
every position tried (1.5B, 16 rows at 2,500: 27.3 -> 21.9 us; 7B, 8 rows at 300: 17.0 -> 12.4), the same
at batch 1 (9.1 / 9.4 us, 10.8 / 9.8). Above the folding point the folded call stays (this form ties with
it or is up to 9% slower at 6,000 positions). KVCache.attend uses this form below fold_from since then:
the ragged GRPO batch ran 1.2-1.4% faster end to end (2026-11-22-h200-kv-head-sequences-ab.log).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us  # noqa: E402

from model import KVCache  # noqa: E402
from sample import round_size  # noqa: E402


def by_kv_head(cache: KVCache, q: torch.Tensor, cu_q: torch.Tensor) -> torch.Tensor:
    """q [B,1,H,hd] -> [B,1,H,hd]; cache prepared as folded (cu_k and lens per (row, kv head))."""
    B, _, H, D = q.shape
    Hkv = cache.n_kv_heads
    runs, shift = cache.kv[0].view(-1, 1, D), Hkv * cache.max_len
    y = torch.ops.aten._flash_attention_forward(
        q.reshape(B * Hkv, H // Hkv, D), runs[:-shift], runs[shift:], cu_q, cache.cu_k, 1, cache.attend_len,
        0.0, False, False, seqused_k=cache.lens)[0]
    return y.view(B, 1, H, D)


def setup(cfg, B, attend):
    cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
    cache.kv[0].normal_()
    cache.attend_len = attend
    qkv = torch.randn(B, 1, cfg.n_heads + 2 * cfg.n_kv_heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
    cu_q = torch.arange(B * cfg.n_kv_heads + 1, device="cuda", dtype=torch.int32)
    return cache, qkv[:, :, : cfg.n_heads], cu_q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    positions = (300, 1000, 2500, 6000)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call: KVCache.attend now / one sequence per "
              f"(row, kv head) with G heads (* where faster)")
        print(f"{'batch':>5} " + " ".join(f"{'position ' + str(p):>20}" for p in positions))
        for B in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            cells = []
            for p in positions:
                attend = max(256, round_size(p + 2))
                cache, q, cu_q = setup(cfg, B, attend)
                fold_from = cache.fold_from
                # correctness on rows of mixed lengths (1 .. p+1)
                mixed = torch.randint(0, p + 1, (B, 1), device="cuda")
                mixed[0] = 0
                cache.prepare(mixed)
                want = cache.attend(0, q)
                cache.fold_from = 0
                cache.prepare(mixed)
                torch.testing.assert_close(by_kv_head(cache, q, cu_q), want, atol=2e-2, rtol=2e-2)
                # timing with every row at p
                pos = torch.full((B, 1), p, device="cuda")
                cache.fold_from = fold_from
                cache.prepare(pos)
                now = per_call_us(lambda: cache.attend(0, q))
                cache.fold_from = 0
                cache.prepare(pos)
                new = per_call_us(lambda: by_kv_head(cache, q, cu_q))
                cells.append(f"{now:6.1f} / {new:6.1f}{'*' if new < now else ' '}")
            print(f"{B:>5} " + " ".join(f"{c:>20}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
