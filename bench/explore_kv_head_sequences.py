"""Exploration: decode attention as one sequence per (row, kv head) holding G query heads of one token.

    python bench/explore_kv_head_sequences.py --configs .gpu/hf

Up to d618852 KVCache.attend called the flash kernel one of two ways. Below fold_from (row, kv head)
pairs, one sequence per row with H query heads: the kernel regroups the G query heads of each kv head
into G query rows (its decoding path, the only one in which it splits long rows' keys), which cost two
copies of q and one of the output from 2 rows on (profile_step.py: 16.4 kernels per layer at batch 1,
20.4 at batch 2). From fold_from on, one sequence per (row, kv head) holding its G query heads as G query
tokens of one head: no regrouping, but no split either.

The form tried here: one sequence per (row, kv head) whose G query heads stay heads of one query token,
over the same contiguous runs of keys as the folded call. The decoding path still applies (one query
token, more query heads than kv heads), so the kernel may split keys, and with one kv head per sequence
its regrouping is a reshape of adjacent dimensions: no copies. q needs one copy out of the fused qkv (as
the folded call's does). Times one call, q a view of a fused qkv tensor as in the model, rows at a given
position, attend_len as the sampler bounds it: 200 calls in one CUDA graph, median of 5 replays. Each
result is checked against the call before on rows of mixed lengths.

Since 432ad72 KVCache.attend is this form below the folding point, so the script compares it (fold_from
set out of reach) with a dated copy of the call before (`per_row`, and the folded call from fold_from).
Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-kv-head-sequences.log: an earlier
version of this script before the change, then this one after it, the same two columns within 0.5 us):
4-6 us faster per call at every batch from 2 rows to the folding point and every position tried (1.5B, 16
rows at 2,500: 27.3 -> 21.9 us; 7B, 8 rows at 300: 17.0 -> 12.4), the same at batch 1 (9.1 / 9.4 us, 10.8
/ 9.8). From the folding point on the folded call stays (this form ties with it, or is up to 9% slower at
6,000 positions). End to end the ragged GRPO batch ran 1.2-1.4% faster
(2026-11-22-h200-kv-head-sequences-ab.log).
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


def per_row(cache: KVCache, q: torch.Tensor, pos: torch.Tensor):
    """KVCache.attend's unfolded call as it was up to d618852 (a dated copy, for comparison): one sequence
    per row with all H query heads, the keys a strided [index, Hkv, hd] view of the head-major cache.
    Returns the call, its per-step layout computed beforehand (as prepare did)."""
    B, _, H, D = q.shape
    Hkv, L = cache.n_kv_heads, cache.max_len
    rows = torch.arange(B, device=q.device)
    cu_k = (torch.cat([rows * 2 * Hkv, rows[-1:] * 2 * Hkv + 1]) * L).to(torch.int32)
    cu_q = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    lens = (pos[:, 0] + 1).to(torch.int32)
    flat = cache.kv[0].view(-1)
    n = flat.numel() // D - (2 * Hkv - 1) * L
    k = flat.as_strided((n, Hkv, D), (D, L * D, 1))
    v = flat.as_strided((n, Hkv, D), (D, L * D, 1), Hkv * L * D)
    return lambda: torch.ops.aten._flash_attention_forward(
        q.reshape(B, H, D), k, v, cu_q, cu_k, 1, cache.attend_len, 0.0, False, False,
        seqused_k=lens)[0].view(B, 1, H, D)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    positions = (300, 1000, 2500, 6000)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call: the call up to d618852 (one sequence per row "
              f"below the folding point, folded from it) / one sequence per (row, kv head) with G heads of one "
              f"query token, never folded (* where faster)")
        print(f"{'batch':>5} " + " ".join(f"{'position ' + str(p):>20}" for p in positions))
        for B in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            cells = []
            for p in positions:
                attend = max(256, round_size(p + 2))
                cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
                cache.kv[0].normal_()
                cache.attend_len = attend
                cache.split_from = 10**9  # one call, as when this was measured (long rows in chunks since then)
                heads = cfg.n_heads + 2 * cfg.n_kv_heads  # q a view of a fused qkv tensor, as in the model
                q = torch.randn(B, 1, heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)[:, :, : cfg.n_heads]
                folds = B * cfg.n_kv_heads >= cache.fold_from

                def before(pos):
                    cache.fold_from = 0 if folds else 10**9
                    cache.prepare(pos)
                    return (lambda: cache.attend(0, q)) if folds else per_row(cache, q, pos)

                def heads_form(pos):
                    cache.fold_from = 10**9
                    cache.prepare(pos)
                    return lambda: cache.attend(0, q)

                # correctness on rows of mixed lengths (1 .. p+1)
                mixed = torch.randint(0, p + 1, (B, 1), device="cuda")
                mixed[0] = 0
                torch.testing.assert_close(heads_form(mixed)(), before(mixed)(), atol=2e-2, rtol=2e-2)
                # timing with every row at p
                pos = torch.full((B, 1), p, device="cuda")
                old, new = per_call_us(before(pos)), per_call_us(heads_form(pos))
                cells.append(f"{old:6.1f} / {new:6.1f}{'*' if new < old else ' '}")
            print(f"{B:>5} " + " ".join(f"{c:>20}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
