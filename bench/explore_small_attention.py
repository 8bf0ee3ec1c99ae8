"""Exploration: a batch-1 decode attention of batched matmuls instead of the flash kernel ("a cheaper decode
attention for short contexts", the one lever BENCHMARKS.md's "Next" left for batch-1 latency).

    python bench/explore_small_attention.py --configs .gpu/hf

At batch 1 every kv head's keys are one [L, hd] run of the head-major cache and its G query heads one [G, hd]
block of q, so attention is one strided-batched matmul over the kv heads for the scores, a softmax, and a second
for the output, all on views (no copies). A length mask (0, or -inf past the row's position) is the baddbmm's
input, built once per step and shared by every layer, so it is not timed here. Variants, one layer, against
KVCache.attend (the flash call the sampler makes, with the bound it passes, sample.round_size of the length):
  * bf16: scores, softmax and output in bf16 (3 kernels; the scores rounded to bf16 before the softmax);
  * fp32 scores: baddbmm(out_dtype=float32), softmax in float32, cast to bf16, output matmul (4 kernels);
each 200 calls in a CUDA graph, median of 5 replays, microseconds per call, and the largest difference from
float32 attention. (From 2 rows on the rows' key runs are no longer one strided batch: the k heads of row b sit
2 x n_kv_heads runs apart, so a batched matmul would need a copy or a call per row.)

Found on an H200 (2026-11-24, bench/results/2026-11-24-h200-explore-small-attention.log): the flash call is
never slower by more than noise (7B: 7.5 / 9.7 / 10.2 / 11.6 / 14.1 us at positions 100 / 300 / 700 / 1,500 /
3,000, bf16 matmuls 8.9 / 9.7 / 12.4 / 16.7 / 13.8, float32 scores 9.6 / 10.4 / 12.4 / 15.6 / 14.8; 1.5B the
same), and the bf16 form is the least exact (up to 2.7e-3 from float32 attention, flash 1.8e-3). Not used.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us, random_cache  # noqa: E402
from sample import round_size  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for name in ("qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct"):
        cfg = one_layer(args.configs / name)
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        G = H // Hkv
        print(f"{name}: {'position':>8} {'bound':>6} {'flash':>9} {'bf16 mm':>9} {'fp32 s mm':>10}"
              f" {'diff flash':>10} {'diff bf16':>10} {'diff fp32 s':>11}", flush=True)
        for p in (100, 300, 700, 1500, 3000):
            bound = round_size(p + 17)  # the longest the row gets over a 16-step chunk, rounded as the sampler does
            cache, q = random_cache(cfg, 1, 4096)
            cache.attend_len = bound
            cache.prepare(torch.full((1, 1), p, device="cuda"))
            k = cache.kv[0][0, :Hkv, :bound]  # [Hkv, bound, D], views of the cache
            v = cache.kv[0][0, Hkv:, :bound]
            qf = q.view(Hkv, G, D)
            mask = torch.zeros(1, 1, bound, device="cuda", dtype=torch.bfloat16)
            mask[..., p + 1:] = float("-inf")
            mask32 = mask.float()
            scale = D**-0.5

            def mm_bf16():
                return torch.bmm(torch.baddbmm(mask, qf, k.transpose(1, 2), alpha=scale).softmax(-1), v)

            def mm_fp32():
                s = torch.baddbmm(mask32, qf, k.transpose(1, 2), alpha=scale, out_dtype=torch.float32)
                return torch.bmm(s.softmax(-1).to(torch.bfloat16), v)

            flash = per_call_us(lambda: cache.attend(0, q))
            bf16 = per_call_us(mm_bf16)
            try:
                fp32 = per_call_us(mm_fp32)
                out32 = mm_fp32()
            except (RuntimeError, TypeError) as e:
                print("float32 scores:", str(e)[:100])
                fp32, out32 = float("nan"), None
            ref = torch.softmax((qf.float() @ k.float().transpose(1, 2)) * scale + mask32, -1) @ v.float()
            diff = [(out.float().view(Hkv, G, D) - ref).abs().max().item() if out is not None else float("nan")
                    for out in (cache.attend(0, q), mm_bf16(), out32)]
            print(f"{'':>{len(name) + 1}} {p:>8} {bound:>6} {flash:>6.1f} us {bf16:>6.1f} us {fp32:>7.1f} us"
                  f" {diff[0]:>10.1e} {diff[1]:>10.1e} {diff[2]:>11.1e}", flush=True)


if __name__ == "__main__":
    main()
