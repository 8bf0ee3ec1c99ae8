"""Memory held beyond the engine's own tensors after a generate of many graph shapes (48 rows finishing one
by one, Qwen2.5-1.5B config, random bf16 weights).

    python bench/explore_side_stream.py new     # this checkout's sample.py
    python bench/explore_side_stream.py old     # a sample.py placed in .gpu/old/ (git show 4f2a953:sample.py)

Found (H100, bench/results/2026-11-23-h100-side-stream.log): with a new side stream for each captured shape
("old", 4f2a953; "mid" captured on it too), cuBLAS kept a workspace for every stream: 13 graphs, 495 MiB
beyond the engine's 672 MiB of tensors. One side stream per engine ("new"): 66 MiB.
"""

import json
import sys

if sys.argv[1] != "new":
    sys.path.insert(0, f".gpu/{sys.argv[1]}")  # that sample.py shadows this checkout's
sys.path.append(".")

import torch  # noqa: E402

import model as M  # noqa: E402
import sample  # noqa: E402

cfg = M.Config.from_hf(json.load(open(".gpu/hf/qwen2.5-1.5b-instruct/config.json")))
with torch.device("meta"):
    m = M.Transformer(cfg)
m = m.to_empty(device="cuda").to(torch.bfloat16).eval()
for p in m.parameters():
    p.data.normal_(0, 0.02)
torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(0, 1000, (64,), generator=g).tolist() for _ in range(48)]
limits = [8 + 6 * k for k in range(48)]  # rows finish one by one: many batch sizes and bounds, one graph each
sample.generate(m, prompts, limits, temperature=1.0, eos_ids=[], sync_every=4)
e = sample._engine
torch.cuda.synchronize()
own = sum(t.untyped_storage().nbytes() for t in [*e.cache.kv, *vars(e.s).values()])
held = torch.cuda.memory_allocated() - base
print(f"{sys.argv[1]}: graphs {len(e.graphs)}, allocated beyond the weights {held / 2**20:.1f} MiB, engine tensors "
      f"{own / 2**20:.1f} MiB, rest {(held - own) / 2**20:.1f} MiB, reserved {torch.cuda.memory_reserved() / 2**20:.0f} MiB")
