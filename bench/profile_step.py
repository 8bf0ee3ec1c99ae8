"""Profile one eager decode step of a random-weight model: kernel counts and times by name."""
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sample import our_model  # noqa
from model import KVCache
m = our_model(Path(sys.argv[1]))
cache = KVCache(m.cfg, 1, 512, device="cuda")
tok = torch.zeros(1, 1, dtype=torch.long, device="cuda"); pos = torch.full((1, 1), 100, device="cuda")
cache.attend_len = 256
with torch.no_grad():
    for _ in range(3): m(tok, cache, pos)
    torch.cuda.synchronize()
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m(tok, cache, pos); torch.cuda.synchronize()
ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
print("kernels per step:", len(ev), "per layer:", len(ev) / m.cfg.n_layers)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
