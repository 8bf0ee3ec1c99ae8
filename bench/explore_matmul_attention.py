"""Exploration: decode attention of a large batch as two batched matmuls instead of the flash kernel.

    python bench/explore_matmul_attention.py

At large batches KVCache.attend folds each kv head's G query heads into one flash sequence of G queries,
and the flash kernel multiplies 128-row query tiles of which G (6 for Qwen2.5-1.5B, 7 for 7B) are real.
This times, for one layer, that call against scores = q K^T (one bmm over (row, kv head) pairs), a
length mask, softmax, and p V (a second bmm), with k and v each as one [rows * kv heads, L, head_dim]
tensor, L the rows' common length (a uniform batch). Both in bf16 (and once with float32 scores); 200
calls in a CUDA graph, median of 5 replays, microseconds per call; also the bytes of keys and values read
per microsecond.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-matmul-attention.log): the folded
flash call reads 2.2-2.4 TB/s from 256 rows up (copy bandwidth 3.0), the matmuls 0.4-1.0 TB/s (1.5B, 448
rows at position 1,300: 259.6 against 579.9 us). Not used.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402


def matmul_attention(q, k, v, mask, scale):
    """q [B*Hkv, G, D], k and v [B*Hkv, L, D], mask [B*Hkv, 1, L] True where a key is beyond the row."""
    s = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale)  # [B*Hkv, G, L]; mask is 0 or -inf
    return torch.bmm(s.softmax(-1), v)


def main():
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for name in ("qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct"):
        cfg = one_layer(Path(".gpu/hf") / name)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        print(f"{name}: {'batch':>5} {'position':>8} {'flash folded':>14} {'matmuls':>14} {'matmuls fp32 s':>15}"
              f" {'GB/s flash':>10} {'GB/s mm':>8} {'max diff':>9}", flush=True)
        for B in (64, 256, 448):
            for p in (600, 1300, 2500):
                L = p + 1
                cache, q = random_cache(cfg, B, 3072)
                cache.attend_len = 4096 if p >= 2048 else 2048
                cache.prepare(torch.full((B, 1), p, device="cuda"))
                flash = per_call_us(lambda: cache.attend(0, q))
                kv = cache.kv[0][:, :, :L]  # [B, 2Hkv, L, D]
                k = kv[:, :Hkv].reshape(B * Hkv, L, D).contiguous()
                v = kv[:, Hkv:].reshape(B * Hkv, L, D).contiguous()
                qf = q.view(B * Hkv, H // Hkv, D)
                mask = torch.zeros(B * Hkv, 1, L, device="cuda", dtype=torch.bfloat16)
                mm = per_call_us(lambda: matmul_attention(qf, k, v, mask, D**-0.5))
                mask32 = mask.float()
                try:  # float32 scores straight out of the bmm (torch's out_dtype form, CUDA only)
                    mm32 = per_call_us(lambda: torch.bmm(torch.baddbmm(
                        mask32, qf, k.transpose(1, 2), alpha=D**-0.5, out_dtype=torch.float32
                    ).softmax(-1).bfloat16(), v))
                except (RuntimeError, TypeError) as e:
                    print("float32 scores:", str(e)[:100])
                    mm32 = float("nan")
                ref = torch.nn.functional.scaled_dot_product_attention(
                    qf.float()[:, None], k.float()[:, None], v.float()[:, None])[:, 0]
                diff = (matmul_attention(qf, k, v, mask, D**-0.5).float() - ref).abs().max().item()
                gb = 2 * k.numel() * 2 / 1e3
                print(f"{'':>{len(name) + 1}} {B:>5} {p:>8} {flash:>11.1f} us {mm:>11.1f} us {mm32:>12.1f} us"
                      f" {gb / flash:>10.0f} {gb / mm:>8.0f} {diff:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
