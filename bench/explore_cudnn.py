"""Exploration: would cuDNN's attention (through SDPA) decode large batches faster than the flash calls?

    python bench/explore_cudnn.py --configs .gpu/hf

At large batches KVCache.attend folds each (row, kv head) into one flash sequence of G query tokens, and the
flash kernel, whose query tiles are 128 rows, reads keys and values at about half the copy bandwidth
(BENCHMARKS, "Next (not done)", batch 64). cuDNN's fused attention is another kernel inside plain PyTorch.
It has no variable-length form in torch's SDPA, so here each row is padded to the call's bound (attend_len,
as the sampler rounds it) and masked by a float bias [B,1,1,S] of 0 / -inf, the queries folded as in the
flash path: [B, Hkv, G, hd] against the cache's own k and v views [B, Hkv, S, hd] (no copies). A second
cuDNN figure has no mask at all (every row exactly at the bound), the best it could do; two more give the
same mask as a bool tensor, and as the float bias expanded (stride 0) to every head and query.

One attention call of one layer, 200 calls in a CUDA graph, median of 5 replays, microseconds per call, with
what each call's keys and values are in TB/s (the real rows' bytes, not the padding). Every output is
checked against KVCache.attend first.

Found on an H200 (2026-11-24, cuDNN 9.19, bench/results/2026-11-24-h200-explore-cudnn.log): with no mask, cuDNN's
kernel reads keys and values fast (7B, from 64 rows of 768 keys on: 3.3-4.1 TB/s, where the flash calls read their
rows' real keys at 1.9-2.8). A length mask makes it slower than the flash calls in every case but one (1.5B, 64
rows of 150-300 keys: 14.2 against 14.9 us). 7B, 64 rows of 350-700 keys in a bound of 768: flash 36.8 us, cuDNN
masked 43.3, unmasked with every row at the bound 30.9; 126 rows of 1,500-3,000 keys: 208.7, 272.2 and 192.9. A
bool mask is slower still (50.2 and 276.2 us), and a bias expanded to every head and query takes the float bias's
time. Decoding cannot go unmasked (rows differ in length, and a graph's bound is rounded above them), so the flash
calls stay.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402
from sample import round_size  # noqa: E402


def cudnn_attend(c, q, bias):
    """The folded decode attention of one layer through cuDNN: q [B,1,H,hd] -> [B,1,H,hd]."""
    B, _, H, D = q.shape
    Hkv, S = c.n_kv_heads, c.attend_len
    kv = c.kv[0][:B, :, :S]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        y = F.scaled_dot_product_attention(q.view(B, Hkv, H // Hkv, D), kv[:, :Hkv], kv[:, Hkv:], attn_mask=bias)
    return y.reshape(B, 1, H, D)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "cudnn", torch.backends.cudnn.version(),
          flush=True)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name}: us per call (TB/s of real keys and values): flash as KVCache calls it / cuDNN "
              f"masked / cuDNN, no mask (rows at the bound) / bool mask / expanded bias")
        for B in (16, 64, 126, 256):
            for p in (300, 700, 1500, 3000):
                bound = round_size(p + 2)
                cache, q = random_cache(cfg, B, bound)
                cache.attend_len = bound
                pos = torch.randint(p // 2, p + 1, (B, 1), device="cuda")  # rows of different lengths
                pos[0] = p
                cache.prepare(pos)
                bias = torch.zeros(B, 1, 1, bound, device="cuda", dtype=q.dtype)
                bias.view(B, bound).masked_fill_(torch.arange(bound, device="cuda") > pos, float("-inf"))  # [B,S]
                real = 2 * cfg.n_kv_heads * cfg.head_dim * 2 * (pos + 1).sum().item()  # bytes of k and v read
                cells = [per_call_us(lambda: cache.attend(0, q))]
                want = cache.attend(0, q)
                for b in (bias, None, bias == 0, bias.expand(B, cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads, bound)):
                    try:
                        if b is None:  # every row at the bound: compare with flash at that position
                            cache.prepare(torch.full((B, 1), bound - 1, device="cuda"))
                            full_want = cache.attend(0, q)
                            torch.testing.assert_close(cudnn_attend(cache, q, b), full_want, atol=2e-2, rtol=2e-2)
                            cells.append(per_call_us(lambda b=b: cudnn_attend(cache, q, b)))
                            continue
                        torch.testing.assert_close(cudnn_attend(cache, q, b), want, atol=2e-2, rtol=2e-2)
                        cells.append(per_call_us(lambda b=b: cudnn_attend(cache, q, b)))
                    except (RuntimeError, AssertionError) as e:
                        print(f"  cuDNN, batch {B}, position {p}, {'no mask' if b is None else b.dtype}: "
                              f"{str(e).splitlines()[0][:300]}")
                        cells.append(float("nan"))
                full = 2 * cfg.n_kv_heads * cfg.head_dim * 2 * B * bound
                rates = [real / cells[0], real / cells[1], full / cells[2], real / cells[3], real / cells[4]]
                print(f"  batch {B:>3}, rows {p // 2}-{p} keys, bound {bound:>5}: "
                      + " / ".join(f"{t:7.1f} ({r / 1e6:4.2f})" for t, r in zip(cells, rates)), flush=True)


if __name__ == "__main__":
    main()
