"""Exploration: decode attention with the keys split by the caller into c chunks, each chunk its own folded
flash sequence, the chunks' outputs combined through their log-sum-exps.

    python bench/explore_split.py --configs .gpu/hf

Small batches at long positions (a ragged batch's tail, evaluation of long judgments) call the flash kernel
one sequence per row, and it splits long rows' keys itself (its own split count, one query row per
sequence, the query heads regrouped by copies). Here every (row, kv head) is cut into c key ranges; each
range is one sequence of G queries (folded: no regrouping), so B x kv heads x c sequences fill the GPU,
and the c partial outputs are merged: out = sum_j softmax_j(lse_j) out_j. The ranges are computed once per
step (not timed); an empty range (a row shorter than c) gets weight 0.

Times one layer's call as KVCache.attend makes it now, and the chunked call for several c (in brackets:
the flash call alone, without the q copy and the merge): 200 calls in one CUDA graph, median of 5
replays, microseconds. Each chunked result is checked against KVCache.attend on rows of mixed lengths.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-split.log): not used. The flash call
alone does get faster with more ranges where the kernel's own split leaves SMs idle (1.5B, 16 rows at
position 2,500: 23.6 us with c = 8 against 36.7 for the call now), but the q copy and the merge (five small
kernels) add 12-17 us, so the chunked call is slower than the call now at every batch and position tried
(at 16 rows and 2,500 positions its best is 40.3 us against 36.7).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402

from model import KVCache  # noqa: E402


class Chunks:
    """The per-step layout of c key ranges per (row, kv head), for rows 0..B-1 with lengths lens [B]."""

    def __init__(self, cache: KVCache, lens: torch.Tensor, c: int):
        B, Hkv, L = lens.shape[0], cache.n_kv_heads, cache.max_len
        G = cache.n_heads // Hkv
        cut = lens[:, None] * torch.arange(c + 1, device=lens.device) // c  # [B,c+1] range j: cut[j]..cut[j+1]
        heads = torch.arange(B, device=lens.device)[:, None] * 2 * Hkv + torch.arange(Hkv, device=lens.device)
        start = (heads[:, :, None] * L + cut[:, None, :-1]).flatten()  # [B*Hkv*c] first key of each range
        self.cu_k = torch.cat([start, start[-1:] + 1]).to(torch.int32)
        used = (cut[:, 1:] - cut[:, :-1])[:, None, :].expand(B, Hkv, c)
        self.used = used.flatten().to(torch.int32).contiguous()
        self.empty = (used == 0)[..., None]  # [B,Hkv,c,1]
        self.cu_q = torch.arange(B * Hkv * c + 1, device=lens.device, dtype=torch.int32) * G
        self.max_k = -(-cache.attend_len // c)
        self.B, self.Hkv, self.G, self.c = B, Hkv, G, c


def chunked(cache: KVCache, ch: Chunks, q: torch.Tensor, merge: bool = True):
    B, _, H, D = q.shape
    runs, shift = cache.kv[0].view(-1, 1, D), ch.Hkv * cache.max_len
    # each range's G queries: q [B,1,H,hd] as [B,Hkv,1,G,hd], repeated over the c ranges (one copy)
    qc = q.view(B, ch.Hkv, 1, ch.G, D).expand(B, ch.Hkv, ch.c, ch.G, D).reshape(-1, 1, D)
    y, lse = torch.ops.aten._flash_attention_forward(
        qc, runs[:-shift], runs[shift:], ch.cu_q, ch.cu_k, ch.G, ch.max_k, 0.0, False, False,
        seqused_k=ch.used)[:2]
    if not merge:
        return y
    lse = lse.view(B, ch.Hkv, ch.c, ch.G).masked_fill(ch.empty, float("-inf"))
    w = torch.softmax(lse, dim=2).to(q.dtype)  # [B,Hkv,c,G] each range's share
    return (y.view(B, ch.Hkv, ch.c, ch.G, D) * w[..., None]).sum(2).view(B, 1, H, D)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    splits = (2, 4, 8, 16, 32)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call: attend now / chunked, c ranges (flash call alone)")
        print(f"{'batch':>5} {'position':>8} {'now':>7} " + " ".join(f"{'c=' + str(c):>15}" for c in splits))
        for B in (1, 4, 8, 16, 32, 64):
            for p in (300, 1000, 2500, 6000):
                attend = 1 << (p + 1).bit_length()
                cache, q = random_cache(cfg, B, attend)
                cache.attend_len = attend
                # correctness on rows of mixed lengths (1 .. p+1), then timing with every row at p
                mixed = torch.randint(0, p + 1, (B, 1), device="cuda")
                mixed[0] = 0
                cache.prepare(mixed)
                want = cache.attend(0, q)
                for c in splits:
                    got = chunked(cache, Chunks(cache, mixed[:, 0] + 1, c), q)
                    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
                cache.prepare(torch.full((B, 1), p, device="cuda"))
                now = per_call_us(lambda c=cache, q=q: c.attend(0, q))
                cells = []
                for c in splits:
                    ch = Chunks(cache, torch.full((B,), p + 1, device="cuda"), c)
                    full = per_call_us(lambda ch=ch: chunked(cache, ch, q))
                    alone = per_call_us(lambda ch=ch: chunked(cache, ch, q, merge=False))
                    cells.append(f"{full:6.1f} ({alone:5.1f}){'*' if full < now else ' '}")
                print(f"{B:>5} {p:>8} {now:>7.1f} " + " ".join(f"{x:>15}" for x in cells), flush=True)


if __name__ == "__main__":
    main()
