"""Profile one eager decode step of a random-weight model: kernel counts and times by name.

    python bench/profile_step.py .gpu/hf/qwen2.5-1.5b-instruct [batch] [position] [prefill length]

With a prefill length T, profiles instead the prefill of `batch` prompts of T tokens into the cache
(as the sampler does it: last-position logits only). With OPS=1 in the environment, also prints the
time of each PyTorch op's kernels (which op launched what).
"""
import os
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
T = int(sys.argv[4]) if len(sys.argv) > 4 else 1
cache = KVCache(m.cfg, B, p + T + 256, device="cuda")
if T == 1:  # one decode step at position p
    tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
    pos = torch.full((B, 1), p, device="cuda")
    cache.attend_len = p + 256
    step = lambda: m(tok, cache, pos)  # noqa: E731
else:  # a prefill of T tokens per row
    tok = torch.randint(0, 150000, (B, T), device="cuda")
    pos = torch.arange(T, device="cuda").expand(B, T)
    step = lambda: m.logits(m.hidden(tok, cache, pos)[:, -1])  # noqa: E731
with torch.no_grad():
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    ops = os.environ.get("OPS") == "1"
    with profile(activities=[ProfilerActivity.CUDA] + [ProfilerActivity.CPU] * ops, record_shapes=ops) as prof:
        step()
        torch.cuda.synchronize()
ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
what = f"position {p}" if T == 1 else f"prefill of {T} tokens"
print(f"batch {B}, {what}: kernels per step: {len(ev)}, per layer: {len(ev) / m.cfg.n_layers:.1f}, "
      f"kernel time {sum(e.time_range.elapsed_us() for e in ev) / 1e3:.2f} ms")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
if ops:
    rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    rows.sort(key=lambda e: -e.self_device_time_total)
    for e in rows[:25]:
        print(f"{e.key:28s} {e.count:5d} calls {e.self_device_time_total / e.count:8.2f} us  {str(e.input_shapes)[:110]}")
