"""Profile one eager decode step of a random-weight model: kernel counts and times by name.

    python bench/profile_step.py .gpu/hf/qwen2.5-1.5b-instruct [batch] [position]
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sample import our_model  # noqa: E402

from model import KVCache  # noqa: E402

m = our_model(Path(sys.argv[1]))
B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
p = int(sys.argv[3]) if len(sys.argv) > 3 else 100
cache = KVCache(m.cfg, B, p + 256, device="cuda")
tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
pos = torch.full((B, 1), p, device="cuda")
cache.attend_len = p + 256
with torch.no_grad():
    for _ in range(3):
        m(tok, cache, pos)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m(tok, cache, pos)
        torch.cuda.synchronize()
ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
print(f"batch {B}, position {p}: kernels per step: {len(ev)}, per layer: {len(ev) / m.cfg.n_layers:.1f}")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
