"""Exploration: large-batch decode attention as several flash calls small enough for the kernel to split keys.

    python bench/explore_chunks.py --configs .gpu/hf

From fold_from (row, kv head) sequences on, the flash kernel no longer splits a sequence's keys across
thread blocks, whatever its length: its heuristic splits only while sequences < 0.8 x 2 x SMs. Unsplit,
each thread block walks a whole row with a 128-row query tile of which G are real, and the kernel reads
the cache at about 2.4 TB/s; below the line, where it splits, 32 rows of the 7B at 6,000 positions read
at 3.7 TB/s (explore_kv_head_sequences). So a batch past the line might run faster as m calls of S/m
sequences each, every call below the line (and so split), their outputs concatenated.

Times one call of KVCache.attend as it is (folded from fold_from) against the same sequences cut into m
balanced chunks, each an unfolded call (G heads of one query token, the kernel's decoding path), plus the
concatenation: 200 calls in one CUDA graph, median of 5 replays, every row at the given position and
attend_len as the sampler bounds it. Each chunked result is checked against attend on rows of mixed lengths.
With --rules: ways of cutting the sequences into calls, at the batch sizes the sampler uses.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-chunks.log), the same for both models:
* From 1,500 positions on, calls of about SMs (132) sequences beat the folded call at every batch past the
  folding point: 7B, 64 rows at 2,500 133.6 -> 101.7 us, at 6,000 311.9 -> 208.6; 256 rows at 6,000
  1,273.6 -> 824.9 (2.5 -> 3.8 TB/s of keys and values read); 1.5B, 448 rows at 2,000 374.8 -> 291.3.
  At 1,000 positions they are within 3% of it either way (or up to 7% faster), at 1,200 2-18% faster; at
  300-700 the folded call is 12-45% faster than they are.
* 128-132 sequences per call is the sweet spot (by the kernel's heuristic each is then split in two: one
  wave of 2 x SMs thread blocks); at 96 per call it picks more splits and runs slower (7B, 96 rows at 2,500:
  4 calls of 96 185.7 us against 3 of 128 150.0). Calls of SMs sequences with the rest in a last call beat
  balanced ones at 320 and 448 sequences (320 at 4,000: 132 + 132 + 56 193.1 us against 3 x 107 223.9),
  tie at multiples of 128, and lose at 224 (2,000 positions: 132 + 92 90.5 us against 2 x 112 82.5).
  What sets them apart is the kernel's split count (model.flash_splits): 56 and 52 are cut into 4 or 5 pieces,
  one wave of thread blocks, 92 into 5 to 8, spread over two or three waves, 107 into 7 at 4,096 keys. So
  KVCache.call_sizes takes SMs each with the rest last unless the rest would spill over one wave and equal
  calls would not (224 -> 2 x 112, and 768-1,280 at most bounds -> calls of 128). Re-run with that rule
  (2026-11-22-h200-explore-chunks-call-sizes.log): it is within 1% of the best column at all but two of 57
  points (1.2%, 1.7%: timing noise, its own calls in another column came closer), and at 224 sequences 61.0 /
  82.2 / 140.5 us at 1,200 / 2,000 / 4,000 positions where the rest-last calls took 64.1 / 90.5 / 144.7; on an
  H100 at 3,500 and 6,000 positions 165.1 -> 160.4 and 259.2 -> 254.7 (2026-11-22-h100-call-sizes.log).
On an H100 (bench/results/2026-11-22-h100-explore-chunks.log) the folded call reads keys at the same
~2.4 TB/s (it is bound by tensor-core work on its mostly empty query tiles, the same SMs), but that is 80%
of the memory's 3.0 TB/s copy rate, so the calls gain less per key and win only later: 9-18% slower at
1,000 positions, from 9% slower to 20% faster by batch at 1,200-2,500, 7-21% faster at 4,000 and 9-15% at
6,000 (1.5B, 448 rows: 1,153.1 -> 986.1 us). A 1,024-key rule made the ragged batch 2.5% and its uniform batch
5.4% slower there (2026-11-22-h100-chunks-ab.log).
Hence KVCache: from fold_from sequences on, rows bounded by `split_from` keys or more go in calls of about
SMs sequences (`call_sizes`); shorter ones stay folded. Below fold_from one call splits by itself. split_from is
1,024 where the memory's peak bandwidth (from the device's properties) is at least 4 TB/s, as on the H200
(4.8), else 3,072 (H100: 3.35).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import one_layer, per_call_us  # noqa: E402

from model import KVCache, flash_unsplit_from  # noqa: E402
from sample import round_size  # noqa: E402


def balanced(S: int, m: int) -> list[int]:
    """S sequences as m chunks of (nearly) equal size."""
    return [S // m + (i < S % m) for i in range(m)]


def fixed(S: int, size: int) -> list[int]:
    """S sequences as chunks of `size`, the remainder last."""
    return [size] * (S // size) + ([S % size] if S % size else [])


def chunked(cache: KVCache, q: torch.Tensor, pos: torch.Tensor, sizes: list[int]):
    """KVCache.attend with its (row, kv head) sequences in unfolded calls over consecutive ranges of the given
    sizes: the plan `prepare` makes past the folding point for long rows (calls of about SMs sequences,
    KVCache.call_sizes), here with any sizes. (The first logs named above were made with a copy of this loop
    written in the script, before KVCache had it: the same flash calls and concatenation.)"""
    cache.prepare(pos)
    assert sum(sizes) == pos.shape[0] * cache.n_kv_heads
    cache.plan_calls(sizes, fold=False)
    return lambda: cache.attend(0, q)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--positions", default="1000,2500,6000")
    ap.add_argument("--rules", action="store_true",
                    help="compare chunking rules at the batch sizes the sampler uses, instead of fixed chunk counts")
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    positions = [int(p) for p in args.positions.split(",")]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.rules:
        return rules(args, positions, sms)
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call: attend as it is (f: folded) | m chunks "
              f"of unfolded sequences, m = 1, 2, 3, 4, 6, 8 and ceil(sequences / SMs) (* the best)")
        for B in (32, 48, 64, 96, 128, 192, 256, 448):
            for p in positions:
                attend = max(256, round_size(p + 2))
                if B * attend * cfg.n_kv_heads * 2 * cfg.head_dim * 2 > 40e9:
                    continue
                cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
                cache.kv[0].normal_()
                cache.attend_len = attend
                heads = cfg.n_heads + 2 * cfg.n_kv_heads  # q a view of a fused qkv tensor, as in the model
                q = torch.randn(B, 1, heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)[:, :, : cfg.n_heads]
                fold_from = cache.fold_from
                folds = B * cfg.n_kv_heads >= fold_from
                by_sms = -(-B * cfg.n_kv_heads // sms)
                chunk_counts = (1, 2, 3, 4, 6, 8, by_sms)

                def now(pos):
                    cache.fold_from, cache.split_from = fold_from, 10**9  # folded, as before the chunks
                    cache.prepare(pos)
                    return lambda: cache.attend(0, q)

                def chunks(pos, m):
                    return chunked(cache, q, pos, balanced(B * cfg.n_kv_heads, m))

                mixed = torch.randint(0, p + 1, (B, 1), device="cuda")
                mixed[0] = 0
                ref = now(mixed)()
                for m in chunk_counts:
                    torch.testing.assert_close(chunks(mixed, m)(), ref, atol=2e-2, rtol=2e-2)
                pos = torch.full((B, 1), p, device="cuda")
                base = per_call_us(now(pos))
                times = [per_call_us(chunks(pos, m)) for m in chunk_counts]
                best = min(range(len(times)), key=times.__getitem__)
                cells = " ".join(f"{t:7.1f}{'*' if i == best else ' '}" for i, t in enumerate(times[:-1]))
                cells += f" | m={by_sms}: {times[-1]:7.1f}"
                mb = B * cfg.n_kv_heads * (p + 1) * 2 * cfg.head_dim * 2 / 1e6
                print(f"batch {B:>4} ({B * cfg.n_kv_heads:>4} seqs) position {p:>5}: {base:7.1f}{'f' if folds else ' '}"
                      f" | {cells}  ({mb:.0f} MB: {mb / base:.2f} TB/s now, {mb / min(times):.2f} best)", flush=True)


def rules(args, positions, sms):
    """Chunking rules at the decode batch sizes the sampler uses past the folding point."""
    candidates = {
        "balanced, ceil(S/SMs)": lambda S: balanced(S, -(-S // sms)),
        "balanced, round(S/SMs)": lambda S: balanced(S, max(1, round(S / sms))),
        "SMs each, rest last": lambda S: fixed(S, sms),
        "balanced, ceil(S/128)": lambda S: balanced(S, -(-S // 128)),
    }
    print("\nus per call: folded | " + " | ".join(candidates) + " | KVCache.attend as it is")
    for d in sorted(args.configs.iterdir()):
        cfg = one_layer(d)
        Hkv = cfg.n_kv_heads
        for B in (56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448):
            if B * Hkv < flash_unsplit_from(sms) or B * Hkv > 1024:
                continue
            for p in positions:
                attend = max(256, round_size(p + 2))
                cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
                cache.kv[0].normal_()
                cache.attend_len = attend
                q = torch.randn(B, 1, cfg.n_heads + 2 * Hkv, cfg.head_dim, device="cuda",
                                dtype=torch.bfloat16)[:, :, : cfg.n_heads]
                pos = torch.full((B, 1), p, device="cuda")
                cache.prepare(pos)  # KVCache.attend as it is
                now = per_call_us(lambda: cache.attend(0, q))
                plan = "+".join(str(b - a) for a, b in cache.calls)
                cache.split_from = 10**9
                cache.prepare(pos)  # folded
                fold = per_call_us(lambda: cache.attend(0, q))
                cells = []
                for rule in candidates.values():
                    sizes = rule(B * Hkv)
                    cells.append(f"{per_call_us(chunked(cache, q, pos, sizes)):7.1f} ({len(sizes)} x {max(sizes)})")
                print(f"{d.name[6:10]} batch {B:>4} ({B * Hkv:>4} seqs) position {p:>5}: {fold:7.1f} | "
                      + " | ".join(cells) + f" | attend: {now:7.1f} ({plan})", flush=True)


if __name__ == "__main__":
    main()
