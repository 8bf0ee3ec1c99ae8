"""The order generate() admits prompts in, on the judging workload of bench_eval.py, by simulating its scheduler on
the CPU (no model): which prompts each sync admits, how their prefill batches pad, how many decode steps run and at
what batch sizes.

    python bench/explore_queue_order.py [--shared ../shared] [--draws 30]

The simulation follows Engine.generate: `slots` rows, a sync every 16 steps that collects finished rows and hands
their slots to the next prompts of the queue, prefill batches of at most 16,384 padded tokens (each padded to its
longest prompt, the admitted prompts taken in queue order), live rows packed to the front once the queue is empty,
and each chunk decoding at the smallest batch size (round_size) covering the live rows. It checks itself against
the GPU: the padding it gives for the bench's draws (length seeds 0 and 95) is what bench_eval.py counted in the
model's prefill forwards on an H100 (BENCHMARKS.md, Judging throughput).

Prints, for prompts in their own order, shortest first and longest first: the prefill padding and decode steps of
the bench's draws, and how many of those steps put the attention in split calls by an H100's rule (see simulate);
then the mean decode steps over --draws other draws of the judgment lengths, independent of the prompts' lengths
(as in the bench) and growing with them (median 400 x (prompt / mean prompt)^2). The padded tokens and the steps in
split calls were also counted with the engine's own scheduling (Engine._run and _step replaced by bookkeeping, as
count_graphs.py does), for the three orders and both draws: the same numbers. Last, the decode work of the bench's
draws: the three orders generate the same row-steps and read the same keys, but not at the same batch sizes (the
keys read at 256 rows or more).
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import judgment_lengths, workload  # noqa: E402
from sample import PREFILL_TOKENS, SYNC_EVERY, round_size  # noqa: E402


def simulate(order, P, L, slots, sync=SYNC_EVERY, prefill_tokens=PREFILL_TOKENS, fold_from=106, split_from=3072):
    """order: prompt indices as queued; P, L: prompt and judgment lengths. -> (padded prefill tokens, decode steps,
    steps in split calls, their rows, of those steps the ones whose live rows' mean length is under split_from),
    and the decode work as a dict: row-steps of rows still generating ("live"), row-steps at the batch size run
    ("run": chunk x batch), keys read by the generating rows (a token at position p reads p + 1), and of those the
    keys read in steps of 256 rows or more ("keys_full": where attention's reads cost time; below, a step's time
    is mostly the weights and kernel launches, explore_chunk_times.py).

    Steps in split calls: decode batches of at least fold_from rows (212 (row, kv head) sequences on 132 SMs, the
    1.5B model's 2 kv heads) whose attention bound is split_from keys or more (an H100's 3,072), where
    KVCache.prepare puts the sequences in calls of about SMs each instead of one folded call."""
    queue = list(order)[::-1]
    owner, left, at = [None] * slots, [0] * slots, [0] * slots  # slot -> prompt; steps it still needs; position
    padded = steps = split = split_rows = split_short = 0
    work = {"live": 0, "run": 0, "keys": 0, "keys_full": 0}
    while queue or any(o is not None for o in owner):
        for k in range(slots):  # collect
            if owner[k] is not None and left[k] <= 0:
                owner[k] = None
        new = []
        for k in range(slots):  # refill, in queue order
            if owner[k] is None and queue:
                owner[k] = queue.pop()
                left[k], at[k] = int(L[owner[k]]) - 1, int(P[owner[k]])  # the first token comes from the prefill
                new.append(owner[k])
        # Engine._prefill: greedy batches under prefill_tokens padded tokens, of the admitted prompts shortest first
        # (before the queue was sorted, _prefill sorted each admission; sorted queues admit them so)
        batch, width = 0, 0
        for p in sorted(P[i] for i in new):
            if batch and (batch + 1) * max(width, p) > prefill_tokens:
                padded, batch, width = padded + batch * width, 0, 0
            batch, width = batch + 1, max(width, p)
        padded += batch * width
        live = [k for k in range(slots) if owner[k] is not None]
        if not live:
            continue
        cover = lambda k: min(slots, round_size(k + 1))  # noqa: E731  (as in Engine.generate)
        if not queue and cover(len(live) - 1) < cover(live[-1]):  # pack the live rows to the front
            holes, movers = [k for k in range(len(live)) if owner[k] is None], [k for k in live if k >= len(live)]
            for src, dst in zip(movers, holes):
                owner[dst], left[dst], at[dst], owner[src] = owner[src], left[src], at[src], None
            live = list(range(len(live)))
        chunk = min(sync, max(left[k] for k in live))
        if chunk <= 0:
            continue
        steps += chunk
        B, bound = cover(live[-1]), max(256, round_size(max(at[k] for k in live) + chunk + 1))
        if B >= fold_from and bound >= split_from:
            split, split_rows = split + chunk, split_rows + chunk * B
            split_short += chunk * (sum(at[k] for k in live) / len(live) + chunk / 2 < split_from)
        work["run"] += chunk * B
        for k in live:
            n = min(chunk, max(left[k], 0))  # tokens this row makes in the chunk
            work["live"] += n
            keys = n * at[k] + n * (n + 1) // 2
            work["keys"] += keys
            work["keys_full"] += keys * (B >= 256)
            left[k] -= chunk
            at[k] += chunk
    return padded, steps, split, split_rows, split_short, work


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--slots", type=int, default=384, help="what eval's default gave the 1.5B model on an H100")
    ap.add_argument("--draws", type=int, default=30)
    args = ap.parse_args()

    _, prompts, _ = workload(args.shared, args.items, 400, 0, 4096)
    P = np.array([len(p) for p in prompts])
    orders = {"own order": list(range(len(P))), "shortest first": sorted(range(len(P)), key=lambda i: P[i]),
              "longest first": sorted(range(len(P)), key=lambda i: -P[i])}

    def lengths(seed, grow=False):  # as bench_eval.py draws them (--length-seed)
        return judgment_lengths(len(P), 400, seed, 4096, (P / P.mean()) ** 2 if grow else 1.0)

    print(f"{len(P)} prompts of {P.min()}-{P.max()} tokens, {P.sum()} in all; {args.slots} slots\n")
    print("| order | " + " | ".join(f"length seed {s}: prefill padding, decode steps, of them in split calls "
                                   "(row-steps; steps whose rows' mean is under 3,072)" for s in (0, 95)) +
          f" | mean decode steps over {args.draws} draws (sd) | the same, judgments growing with prompts |")
    print("|---|---|---|---|---|")
    work_rows = []
    for name, order in orders.items():
        cells, work_cells = [], []
        for seed in (0, 95):
            padded, steps, split, split_rows, short, work = simulate(order, P, lengths(seed), args.slots)
            cells.append(f"{padded / P.sum() - 1:+.1%}, {steps}, {split} ({split_rows:,}; {short})")
            work_cells.append(f"{work['live']:,}, {work['run']:,}, {work['keys']:,} ({work['keys_full']:,})")
        work_rows.append(f"| {name} | " + " | ".join(work_cells) + " |")
        for grow in (False, True):
            s = [simulate(order, P, lengths(seed, grow), args.slots)[1] for seed in range(1, args.draws + 1)]
            cells.append(f"{statistics.mean(s):,.0f} ({statistics.pstdev(s):,.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print("\n| order | " + " | ".join(f"length seed {s}: decode row-steps generating, row-steps at the batch size run, "
                                     "keys read (of them in steps of 256 rows or more)" for s in (0, 95)) + " |")
    print("|---|---|---|")
    print("\n".join(work_rows))


if __name__ == "__main__":
    main()
