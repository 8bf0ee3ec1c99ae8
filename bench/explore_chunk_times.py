"""Exploration: where the judging run spends its GPU time, chunk by chunk, with prompts queued shortest first (as
generate does) and longest first, to find the time the two orders differ by beyond their step counts.

    python bench/explore_chunk_times.py [--config .gpu/hf/qwen2.5-1.5b-instruct] [--shared .gpu/shared]

bench_eval.py's workload (1,024 RM-Bench judge prompts, forced judgment lengths of --length-seed, greedy, nothing
written). Each order runs once to warm up (graph captures), then once timed: CUDA events around every prefill call
(Engine._prefill) and every chunk of decode steps (Engine._run), read after the run, so nothing synchronises in
between. Longest first is generate's own sort reversed (sample.sorted shadowed for its calls; ties keep their
order). Prints per order the wall time, the prefill time, and the decode time and steps by the batch sizes they ran
at and by how KVCache.prepare grouped the attention (one folded call, calls of about SMs sequences, or one unfolded
call below the folding point) and by the bound on the longest row. generate picks the slots (448 for the 1.5B on an
H100: rows as long as the longest prompt plus its own judgment; bench_eval.py sizes them for the longest prompt plus
4,096, as eval does, 384).

Found on an H100 (2026-11-23, bench/results/2026-11-23-h100-explore-chunk-times.log): 33.72 s shortest first,
35.23 s longest first. Of the 1.51 s, 0.74 s is 240 more steps of 1-15 rows (the draw's step count) and 1.22 s the
steps of 256 rows or more, 7.5% slower each (13.79 against 12.83 ms): longest first reads the long prompts' keys
while the batch is full (711 against 668 million keys in those steps, explore_queue_order.py --slots 448).
(That log's table lists the same rows in another order: it was printed before the rows were put in a fixed one.)
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
            # KVCache.prepare's rule, restated: a replayed graph keeps the plan made at its capture
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


BUCKETS = ["1-15", "16-63", "64-105", "106-255", "256+"]  # decode batch sizes (106 rows: the 1.5B's folding point)


def bucket(B):
    return BUCKETS[(B >= 16) + (B >= 64) + (B >= 106) + (B >= 256)]


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
        stats = defaultdict(lambda: [0, 0.0])  # row of the table -> [steps, ms]
        for kind, steps, B, attend, grouping, a, b in RECORD:
            keys = ["prefill calls"] if kind == "prefill" else [
                "decode", f"batch {bucket(B)}", f"grouping {grouping}", f"bound {attend}"]
            for key in keys:
                stats[key][0] += steps
                stats[key][1] += a.elapsed_time(b)
        rows[order] = (wall, stats)
        print(f"slots: {sample._engine.slots}", flush=True)
    (w0, s0), (w1, s1) = rows.values()
    bounds = sorted({int(k.split()[1]) for s in (s0, s1) for k in s if k.startswith("bound")})
    keys = (["prefill calls", "decode"] + [f"batch {b}" for b in BUCKETS]
            + [f"grouping {g}" for g in ("one call", "folded", "calls")] + [f"bound {b}" for b in bounds])
    print("\n| part | " + " | ".join(f"{o}: steps, s (ms a step)" for o in rows) + " | difference, s |")
    print("|---|---|---|---|")
    print(f"| wall | {w0:.2f} s | {w1:.2f} s | {w1 - w0:+.2f} |")
    for k in keys:
        if k not in s0 and k not in s1:
            continue
        cells = [f"{steps:,}, {ms / 1e3:.2f}" + (f" ({ms / steps:.2f})" if steps else "")
                 for steps, ms in (s.get(k, (0, 0.0)) for s in (s0, s1))]
        print(f"| {k} | {cells[0]} | {cells[1]} | {(s1.get(k, (0, 0.0))[1] - s0.get(k, (0, 0.0))[1]) / 1e3:+.2f} |")

if __name__ == "__main__":
    main()
