"""Where a ragged GRPO-shaped batch spends its time: the bench_sample.py ragged workload, run once after a
warm-up, then again with each engine phase timed (synchronised, so phases add up to the wall time).

    python bench/explore_ragged.py [--config .gpu/hf/qwen2.5-1.5b-instruct] [--slots N] [--uniform] [--sync-every K]

Prints tokens/s of a plain run; then, for the timed run, per decode batch size: chunks, steps, rows still
live at each chunk's end, ms per step; then prefill, row moves, prompt-row copies, and the rest (host
bookkeeping and its syncs).
"""

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sample  # noqa: E402
from bench_sample import our_model, ragged_workload, timed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-1.5b-instruct"))
    ap.add_argument("--slots", type=int, default=None)
    ap.add_argument("--uniform", action="store_true", help="every sequence at the mean length instead")
    ap.add_argument("--sync-every", type=int, default=16, help="decode steps between host syncs")
    args = ap.parse_args()
    m = our_model(args.config)
    _, seq_prompts, lengths = ragged_workload()
    if args.uniform:
        lengths = [round(sum(lengths) / len(lengths))] * len(lengths)
    run = lambda: sample.generate(m, seq_prompts, lengths, temperature=1.0, slots=args.slots,
                                   sync_every=args.sync_every)  # noqa: E731
    run()  # warm-up: engine and graphs
    plain = timed(run, 1)  # the same run without the phase timers' syncs

    phases = collections.defaultdict(float)
    chunks = collections.defaultdict(lambda: [0, 0, 0, 0.0])  # batch -> chunks, steps, live row-steps, seconds

    depth = [0]  # only outermost calls are timed (_move calls _copy_rows), so the phases are disjoint

    def phase_timer(name, fn):
        def wrapper(self, *a):
            if depth[0]:
                return fn(self, *a)
            torch.cuda.synchronize()
            t = time.perf_counter()
            depth[0] += 1
            out = fn(self, *a)
            depth[0] -= 1
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            phases[name] += dt
            if name == "_run":
                steps, B = a[0], a[1]
                live = int((~self.s.done[:B]).sum())  # at the chunk's end: rows that ran all of it
                c = chunks[B]
                c[0], c[1], c[2], c[3] = c[0] + 1, c[1] + steps, c[2] + live * steps, c[3] + dt
            return out
        return wrapper

    for name in ("_run", "_prefill", "_move", "_copy_rows", "_start"):
        setattr(sample.Engine, name, phase_timer(name, getattr(sample.Engine, name)))
    wall = timed(run, 1)
    print(f"{args.config.name}, {'uniform' if args.uniform else 'ragged'}, slots {args.slots or 'default'}, sync every {args.sync_every}: "
          f"{sum(lengths)} tokens in {plain:.2f} s = {sum(lengths) / plain:,.0f} tok/s "
          f"({wall:.2f} s with the phase timers)")
    print("| decode batch | chunks | steps | rows still live at the chunk's end, per step | ms per step | seconds |\n|---|---|---|---|---|---|")
    for B in sorted(chunks, reverse=True):
        n, steps, live, sec = chunks[B]
        print(f"| {B} | {n} | {steps} | {live / steps:.1f} | {1e3 * sec / steps:.2f} | {sec:.2f} |")
    rest = wall - sum(phases.values())
    print(f"decode {phases['_run']:.2f} s, prefill {phases['_prefill']:.2f} s, row moves {phases['_move']:.3f} s, "
          f"prompt-row copies {phases['_copy_rows']:.3f} s, starts {phases['_start']:.3f} s, the rest (host) {rest:.2f} s")

if __name__ == "__main__":
    main()
