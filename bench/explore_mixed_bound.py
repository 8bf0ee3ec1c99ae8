"""Exploration: past the folding point, one folded flash call or calls of about SMs sequences, when the rows have
mixed lengths, as in a judging run.

    python bench/explore_mixed_bound.py [--configs .gpu/hf]

KVCache.prepare picks between the two by the bound on the longest row (attend_len >= split_from: 3,072 keys on
an H100, 1,024 on an H200). explore_chunks.py set that line with every row at one position. In a judging batch
most rows are far shorter than the longest: judge prompts of 800-1,900 tokens plus judgments so far. Times
KVCache.attend for one layer (200 calls in a CUDA graph, median of 5 replays, explore_attention.per_call_us)
folded and in calls, for snapshots of such a batch: row i at prompt P_i + u_i x L_i, P uniform in 801-1,885,
L lognormal with median 400 clipped to 64-4,096, u uniform in [0, 1), one row then set to the longest position.

Found on an H100 (2026-11-23, bench/results/2026-11-23-h100-explore-mixed-bound.log; rows' mean 1,600-1,680): once
the longest row passes 3,072 the rule picks calls, and they are slower than the folded call, the more so the longer
that row: 1.5B at 384 rows 341.0 / 386.2 / 455.7 us against 301.2 / 314.7 / 316.1 folded (longest 3,500 / 5,000 /
6,000: +13%, +23%, +44%); 7B at 160 rows 287.2 / 353.7 / 373.5 against 268.6 / 290.2 / 275.5 (+7%, +22%, +36%).
The folded call follows the rows' own lengths; the calls' key splits follow the bound. At a longest row of 2,500
(the rule folds) the calls were 5% slower for the 1.5B and 7% faster for the 7B. Each line is one random snapshot.
These per-call gaps did not carry over to a whole judging run: a rule choosing by the rows' mean length instead
(branch mean-row-length) folded every such step and changed 1,024 judgments by 0.05-0.08 s of 33-35 s
(BENCHMARKS.md, "The queue, shortest prompts first").
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us  # noqa: E402

from model import KVCache  # noqa: E402
from sample import round_size  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--longest", default="2500,3500,5000,6000", help="the longest row's position, one per snapshot")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    rng = np.random.default_rng(0)
    batches = {"qwen2.5-1.5b-instruct": 384, "qwen2.5-7b-instruct": 160}  # eval's default slots on an H100
    print("| model | rows | longest | mean position | bound | rule picks | folded us | calls us (plan) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, B in batches.items():
        cfg = one_layer(args.configs / name)
        for longest in map(int, args.longest.split(",")):
            P = rng.integers(801, 1886, B)
            L = np.clip(rng.lognormal(np.log(400), 0.8, B), 64, 4096)
            pos = (P + rng.random(B) * L).astype(int)
            pos[0] = longest
            attend = max(256, round_size(longest + 17))  # as generate bounds a chunk of 16 steps
            cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
            cache.kv[0].normal_()
            cache.attend_len = attend
            q = torch.randn(B, 1, cfg.n_heads + 2 * cfg.n_kv_heads, cfg.head_dim, device="cuda",
                            dtype=torch.bfloat16)[:, :, : cfg.n_heads]  # a view of a fused qkv, as in the model
            p = torch.tensor(pos, device="cuda")[:, None]
            rule = "calls" if attend >= cache.split_from else "folded"
            cache.split_from = 10**9  # folded (this snapshot's cache is dropped after it)
            cache.prepare(p)
            folded = per_call_us(lambda: cache.attend(0, q))
            cache.split_from = 0
            cache.prepare(p)
            plan = "+".join(str(b - a) for a, b in cache.calls)
            calls = per_call_us(lambda: cache.attend(0, q))
            print(f"| {name.split('-')[1]} | {B} | {longest} | {pos.mean():.0f} | {attend} | {rule} | {folded:.1f} | "
                  f"{calls:.1f} ({plan}) |", flush=True)


if __name__ == "__main__":
    main()
