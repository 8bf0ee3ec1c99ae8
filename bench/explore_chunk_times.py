"""Exploration: where the judging run spends its GPU time, chunk by chunk, with prompts queued shortest first (as
generate does) and longest first, to find the time the two orders differ by beyond their step counts.

    python bench/explore_chunk_times.py [--config .gpu/hf/qwen2.5-1.5b-instruct] [--shared .gpu/shared]

bench_eval.py's workload (1,024 RM-Bench judge prompts, forced judgment lengths of --length-seed, eval's default
slots, greedy, nothing written). Each order runs once to warm up (graph captures), then once timed: CUDA events
around every prefill call (Engine._prefill) and every chunk of decode steps (Engine._run), read after the run, so
nothing synchronises in between. Longest first is generate's own sort reversed (sample.sorted shadowed for the
timed calls; ties keep their order). Prints per order the wall time, the prefill time, and the decode time and steps
by the batch sizes they ran at and by how KVCache.prepare grouped the attention (one folded call, calls of about
SMs sequences, or one unfolded call below the folding point), then the decode time per step by bound on the
longest row. generate picks the slots (448 for the 1.5B on an H100: rows as long as the longest prompt plus its own
judgment; bench_eval.py sizes them for the longest prompt plus 4,096, as eval does, 384).

Found on an H100 (2026-11-23, bench/results/2026-11-23-h100-explore-chunk-times.log): 33.72 s shortest first,
35.23 s longest first. Of the 1.51 s, 0.74 s is 240 more steps of 1-15 rows (the draw's step count) and 1.22 s the
steps of 256 rows or more, 7.5% slower each (13.79 against 12.83 ms): longest first reads the long prompts' keys
while the batch is full (711 against 668 million keys in those steps, explore_queue_order.py --slots 448).
"""

import argparse
import builtins
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sample  # noqa: E402
from bench_eval import workload  # noqa: E402
from bench_sample import our_model  # noqa: E402

RECORD = []  # (kind, steps, B, attend_len, grouping, start event, end event)


def timed(kind, method):
    def wrapper(self, *args):
        if kind == "decode":
            steps, B, attend_len = args
            c = self.cache
            many = c.flash and B * c.n_kv_heads >= c.fold_from
            grouping = ("calls" if attend_len >= c.split_from else "folded") if many else "one call"
        else:
            steps, B, attend_len, grouping = 1, len(args[0]), 0, ""  # a prefill counts as one "step"
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = method(self, *args)
        b.record()
        RECORD.append((kind, steps, B, attend_len, grouping, a, b))
        return out
    return wrapper


sample.Engine._run = timed("decode", sample.Engine._run)
sample.Engine._prefill = timed("prefill", sample.Engine._prefill)


def longest_first(iterable, key=None):  # generate's sort, reversed (stable: ties keep their order)
    return builtins.sorted(iterable, key=key, reverse=True)


def bucket(B):
    return "1-15" if B < 16 else "16-63" if B < 64 else "64-105" if B < 106 else "106-255" if B < 256 else "256+"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-1.5b-instruct"))
    ap.add_argument("--shared", type=Path, default=Path(".gpu/shared"))
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--length-seed", type=int, default=0)
    args = ap.parse_args()
    tok, prompts, lengths = workload(args.shared, args.items, 400, args.length_seed, 4096)
    m = our_model(args.config)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    rows = {}
    for order in ("shortest first", "longest first"):
        if order == "longest first":
            sample.sorted = longest_first
        for rnd in ("warm-up", "timed"):
            RECORD.clear()
            torch.cuda.synchronize()
            t = time.perf_counter()
            sample.generate(m, prompts, lengths, temperature=0)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
            print(f"{order}, {rnd}: {wall:.2f} s, {len(RECORD)} timed calls", flush=True)
        stats = defaultdict(lambda: [0, 0.0])  # key -> [steps, ms]
        for kind, steps, B, attend, grouping, a, b in RECORD:
            ms = a.elapsed_time(b)
            keys = [("prefill calls",)] if kind == "prefill" else [
                ("decode",), ("batch", bucket(B)), ("grouping", grouping), ("bound", attend)]
            for key in keys:
                stats[key][0] += steps
                stats[key][1] += ms
        rows[order] = (wall, stats)
        print(f"slots: {sample._engine.slots}", flush=True)
    keys = sorted({k for _, s in rows.values() for k in s}, key=lambda k: (k[0] != "prefill calls", k[0] != "decode",
                                                                          k[0], str(k[1:])))
    orders = list(rows)
    print("\n| part | " + " | ".join(f"{o}: steps, s (ms a step)" for o in orders) + " | difference, s |")
    print("|---|---|---|---|")
    print("| wall | " + " | ".join(f"{rows[o][0]:.2f} s" for o in orders) +
          f" | {rows[orders[1]][0] - rows[orders[0]][0]:+.2f} |")
    for k in keys:
        if k[0] == "bound":
            continue
        cells, secs = [], []
        for o in orders:
            steps, ms = rows[o][1].get(k, (0, 0.0))
            secs.append(ms / 1e3)
            cells.append(f"{steps:,}, {ms / 1e3:.2f}" + (f" ({ms / steps:.2f})" if steps else ""))
        print(f"| {' '.join(map(str, k))} | " + " | ".join(cells) + f" | {secs[1] - secs[0]:+.2f} |")
    print("\n| bound | " + " | ".join(f"{o}: steps, s (ms a step)" for o in orders) + " |")
    print("|---|---|---|")
    for bound in sorted({k[1] for _, s in rows.values() for k in s if k[0] == "bound"}):
        cells = []
        for o in orders:
            steps, ms = rows[o][1].get(("bound", bound), (0, 0.0))
            cells.append(f"{steps:,}, {ms / 1e3:.2f}" + (f" ({ms / steps:.2f})" if steps else ""))
        print(f"| {bound} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
