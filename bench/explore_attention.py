"""Exploration: does the cache length (max_len) change what one decode attention call costs?

    python bench/explore_attention.py --config .gpu/hf/qwen2.5-7b-instruct

The flash kernel's split-KV heuristic sees max_seqlen_k (KVCache.attend_len), not the rows' real lengths
(seqused_k). This times KVCache.attend for one layer, rows at a given position, with attend_len = the
cache length, for several cache lengths: 200 calls captured in one CUDA graph, median of 5 replays,
microseconds per call.

Found on an H200 (2026-11-22, bench/results/2026-11-22-h200-explore-attention.log): at small batches a
long cache made the call up to 2.5x slower (7B, batch 1, position 300: 9.3 us at 512, 23.6 us at 8,448),
so the sampler, which passed the cache length, now passes a power-of-two bound on the rows' lengths.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import KVCache, load_config  # noqa: E402


def one_layer(config_dir):
    """The model config of a Hugging Face folder, cut to one layer (attention is timed per layer)."""
    cfg = load_config(config_dir)
    cfg.n_layers = 1
    return cfg


def random_cache(cfg, batch: int, max_len: int):
    """A one-layer bf16 KVCache on the GPU filled with random entries, and a decode query [batch,1,H,hd]."""
    cache = KVCache(cfg, batch, max_len, device="cuda", dtype=torch.bfloat16)
    cache.kv[0].normal_()
    return cache, torch.randn(batch, 1, cfg.n_heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)


def per_call_us(fn, calls=200, repeats=5):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-7b-instruct"))
    args = ap.parse_args()
    cfg = one_layer(args.config)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, args.config.name, flush=True)
    print(f"{'batch':>5} {'position':>8} " + " ".join(f"{'max_len ' + str(m):>14}" for m in (512, 2304, 8448, 16640)))
    for B in (1, 4, 16, 64):
        for p in (300, 2000, 8000):
            cells = []
            for max_len in (512, 2304, 8448, 16640):
                if p >= max_len:
                    cells.append(f"{'-':>14}")
                    continue
                cache, q = random_cache(cfg, B, max_len)
                cache.prepare(torch.full((B, 1), p, device="cuda"))
                cells.append(f"{per_call_us(lambda c=cache, q=q: c.attend(0, q)):>11.1f} us")
            print(f"{B:>5} {p:>8} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
