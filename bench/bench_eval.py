"""Judging throughput on a GPU: every judgment in one generate() call, as eval.py makes them, against calls of 256
judgments each, as eval.py made them before (its --batch), on real RM-Bench judge prompts.

    python bench/bench_eval.py --config .gpu/hf/qwen2.5-1.5b-instruct --shared .gpu/shared --items 1024

Random bf16 weights of the config. The judgments' lengths are drawn long-tailed (lognormal, median --median tokens,
clipped to [64, --max-new]) and forced (no EOS: each row runs to its own length). Every way does eval's work on each
judgment (decode, parse the verdict, write a JSON line, flush) and, unless named, uses the slot count eval gets by
default (rows of the longest prompt + --max-new positions, sample._slots_that_fit). The --ways, each run once to
warm up (graph captures) and then --rounds times:
  * chunks: generate() per 256 judgments, each written once its call returns (eval before 5c0bf34);
  * one: every judgment in one generate(), each written in progress() as its row finishes (eval now);
  * after: the same call with the writing after it returns (what the writing costs inside the loop);
  * half: as `one`, with the slot count of the rule before: rows in half the free memory.
Prints each way's median time, judgments/s, new tokens/s, peak memory beyond the weights and the cache, and the
prefill forwards' tokens: those the prompts hold and those the right-padded batches ran.

--order passes the prompts (with their lengths) in their own order, shortest first or longest first. Since 0746642
generate() queues prompts shortest first whatever the order; on older code the order is the queue's.

    python bench/bench_eval.py --config ... --prefill     # only the prefill: each prompt and one new token

With --prefill, every prompt is prefilled (in waves of the default slot count) and one token taken, --rounds times
after a warm-up: the time of the prefill forwards, whose batches are right-padded to their longest prompt. Run it
from two checkouts to compare how they pack prompts into batches.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
import sample  # noqa: E402
from model import KVCache  # noqa: E402
from bench_sample import our_model  # noqa: E402
from rubrics import judge_messages, parse_verdict  # noqa: E402
from sample import generate  # noqa: E402

CHUNK = 256  # eval.py's --batch default before


def judgment_lengths(n: int, median: int, seed: int, max_new: int, scale=1.0) -> np.ndarray:
    """n judgment lengths drawn lognormal around `median` (times `scale`, one number or one per judgment),
    clipped to [64, max_new]."""
    x = np.random.default_rng(seed).lognormal(np.log(median), 0.8, n) * scale
    return np.clip(x, 64, max_new).astype(int)


def workload(shared: Path, items: int, median: int, length_seed: int, max_new: int):
    """-> (tokenizer, judge prompts of the first `items` RM-Bench pairs placed by seed 0, their judgment lengths)."""
    tok = data.Tokenizer.load(shared / "hf" / "qwen2.5-7b-instruct")
    pairs = data.place(data.read_rmbench(shared / "benchmarks" / "rm-bench"), "random", 0)[:items]
    prompts = tok.encode_chats([judge_messages(*p.conversations(at), "instruct") for p, at in pairs], True)
    return tok, prompts, judgment_lengths(len(prompts), median, length_seed, max_new).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-1.5b-instruct"))
    ap.add_argument("--shared", type=Path, default=Path(".gpu/shared"))
    ap.add_argument("--items", type=int, default=1024, help="judgments (RM-Bench pairs, placed by seed 0)")
    ap.add_argument("--median", type=int, default=400, help="median judgment length in tokens")
    ap.add_argument("--length-seed", type=int, default=0, help="the seed of the judgments' lengths")
    ap.add_argument("--max-new", type=int, default=4096, help="eval's --max-new-tokens: the longest judgment")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", action="store_true", help="time only the prefill of every prompt")
    ap.add_argument("--ways", default="chunks,one,after", help="comma list of: chunks, one, after, half")
    ap.add_argument("--order", choices=["given", "shortest", "longest"], default="given",
                    help="the order the prompts are passed in")
    ap.add_argument("--weight-layout", choices=["columns", "rows"], default="columns",
                    help="rows: every matrix row-major (the comparison for the model's column-major layout)")
    args = ap.parse_args()

    tok, prompts, lengths = workload(args.shared, args.items, args.median, args.length_seed, args.max_new)
    if args.order != "given":
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=args.order == "longest")  # stable
        prompts, lengths = [prompts[i] for i in order], [lengths[i] for i in order]
    total = sum(lengths)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    print(f"{len(prompts)} judge prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens "
          f"(mean {statistics.mean(map(len, prompts)):.0f}); judgments of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {total / len(lengths):.0f}, {total} in all)", flush=True)

    m = our_model(args.config, column_major=args.weight_layout == "columns")
    padded, hidden = [0], m.hidden  # tokens of the prefill forwards, padding included (decode steps have T == 1)

    def counted(ids, *a, **k):
        padded[0] += ids.numel() if ids.shape[1] > 1 else 0
        return hidden(ids, *a, **k)

    m.hidden = counted  # each prompt is prefilled once per call: it holds sum(len(p) for p in prompts) tokens
    held = sum(map(len, prompts))
    weights = torch.cuda.memory_allocated()
    kv = KVCache.bytes_per_token(m.cfg)
    max_len = sample.round_len(max(map(len, prompts)) + args.max_new)  # what eval's budgets of --max-new tokens ask for
    slots = sample._slots_that_fit(m, max_len, args.max_new, sample.PREFILL_TOKENS)  # eval's default
    # the rule before 2026-11-23 (a2cf4f4 and earlier): rows of the longest prompt + --max-new in half the free memory
    free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    half = sample.round_size_down(int(0.5 * free / ((max(map(len, prompts)) + args.max_new) * kv)))
    print(f"{args.config.name}: {slots} slots by default ({half} by the half-memory rule); free {free / 2**30:.1f} "
          f"GiB, KV cache {slots * max_len * kv / 2**30:.1f} GiB at {max_len} positions a row", flush=True)

    def peak():  # memory beyond the weights and the last engine's KV cache at its peak
        cache = sample._engine.slots * sample._engine.max_len * kv  # its rows: as long as the call's forced lengths
        return (torch.cuda.max_memory_allocated() - weights - cache) / 2**30

    if args.prefill:
        times = []
        for r in range(args.rounds + 1):  # round 0: warm-up
            torch.cuda.synchronize()
            t, padded[0] = time.perf_counter(), 0
            generate(m, prompts, 1, temperature=0, slots=slots)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: prefill of {len(prompts)} prompts: {times[-1]:.3f} s, "
                  f"{padded[0]} tokens through the model for {held} ({padded[0] / held - 1:+.1%})")
        t = statistics.median(times[1:])
        print(f"prefill: median {t:.3f} s ({', '.join(f'{x:.3f}' for x in times[1:])}), "
              f"{held / t:,.0f} prompt tokens/s; peak beyond weights and cache "
              f"{peak():.2f} GiB")
        return
    log = open(Path(tempfile.mkdtemp()) / "judgments.jsonl", "w", encoding="utf-8")

    def write(o):  # eval's work on one judgment
        text = tok.decode(o.tokens, skip_special_tokens=True)
        log.write(json.dumps({"i": o.prompt_index, "output": text, "verdict": parse_verdict(text)}) + "\n")
        log.flush()

    def chunks(n_slots):
        for start in range(0, len(prompts), CHUNK):
            for o in generate(m, prompts[start:start + CHUNK], lengths[start:start + CHUNK], temperature=0,
                              slots=n_slots):
                write(o)

    def one_call(n_slots):
        generate(m, prompts, lengths, temperature=0, slots=n_slots, progress=write)

    def one_call_written_after(n_slots):
        for o in generate(m, prompts, lengths, temperature=0, slots=n_slots):
            write(o)

    ways = {"chunks": (f"calls of {CHUNK} (eval before 5c0bf34), {slots} slots", chunks, slots),
            "one": (f"one call, written as made (eval now), {slots} slots", one_call, slots),
            "after": (f"one call, written after it returns, {slots} slots", one_call_written_after, slots),
            "half": (f"one call, written as made, {half} slots (half-memory rule)", one_call, half)}
    table = []
    for key in args.ways.split(","):  # each way: a warm-up, then its rounds (one engine and its graphs per way)
        name, fn, n_slots = ways[key]
        sample.release()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for r in range(args.rounds + 1):
            torch.cuda.synchronize()
            t, padded[0] = time.perf_counter(), 0
            fn(n_slots)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            print(f"{name}: round {r}{' (warm-up)' if r == 0 else ''}: {times[-1]:.2f} s; prefill {padded[0]} tokens "
                  f"through the model for {held} ({padded[0] / held - 1:+.1%})", flush=True)
        t = statistics.median(times[1:])
        runs = ", ".join(f"{x:.2f}" for x in times[1:])
        table.append(f"| {name} | {t:.2f} s ({runs}) | {len(prompts) / t:.1f} | {total / t:,.0f} | "
                     f"{peak():.2f} GiB | {padded[0] / held - 1:+.1%} |")
    print(f"\n| {args.config.name}, {len(prompts)} judgments, order {args.order} | median of {args.rounds} "
          f"| judgments/s | new tokens/s | peak beyond weights and cache | prefill padding (last round) |\n"
          f"|---|---|---|---|---|---|")
    print("\n".join(table))

if __name__ == "__main__":
    main()
