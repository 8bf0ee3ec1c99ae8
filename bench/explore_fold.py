"""Exploration: from which batch size should decode attention fold its query heads?

    python bench/explore_fold.py --configs .gpu/hf

KVCache.attend calls the flash kernel in one of two ways (see its comments): one sequence per row, where
the kernel regroups the query heads itself (copying q and the output) and may split long rows' keys
across thread blocks; or one sequence per (row, kv head) holding the G query heads that share it, with
no copies and no split. This times one call, rows at a given position, with attend_len the sampler's
bound (the next power of two above the position), both ways: 200 calls captured in one CUDA graph,
median of 5 replays, microseconds per call. KVCache.fold_from picks the way by B * kv heads.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from explore_attention import per_call_us  # noqa: E402

from model import Config, KVCache  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    args = ap.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for d in sorted(args.configs.iterdir()):
        cfg = Config.from_hf(json.loads((d / "config.json").read_text()))
        cfg.n_layers = 1
        positions = (300, 1000, 3000)
        print(f"\n{d.name} (kv heads {cfg.n_kv_heads}); us per call, one sequence per row / folded")
        print(f"{'batch':>5} {'B*kv':>5} " + " ".join(f"{'position ' + str(p):>20}" for p in positions))
        for B in (1, 4, 16, 32, 48, 64, 96, 128, 192, 256):
            cells = []
            for p in positions:
                attend = 1 << (p + 1).bit_length()
                cache = KVCache(cfg, B, attend, device="cuda", dtype=torch.bfloat16)
                cache.kv[0].normal_()
                q = torch.randn(B, 1, cfg.n_heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
                t = []
                for fold_from in (10**9, 0):
                    cache.fold_from, cache.attend_len = fold_from, attend
                    cache.prepare(torch.full((B, 1), p, device="cuda"))
                    t.append(per_call_us(lambda c=cache, q=q: c.attend(0, q)))
                cells.append(f"{t[0]:8.1f} / {t[1]:6.1f}{' *' if t[1] < t[0] else '  '}")
            print(f"{B:>5} {B * cfg.n_kv_heads:>5} " + " ".join(f"{c:>20}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
