"""Judging throughput on a GPU: every judgment in one generate() call, as eval.py makes them, against calls of 256
judgments each, as eval.py made them before (its --batch), on real RM-Bench judge prompts.

    python bench/bench_eval.py --config .gpu/hf/qwen2.5-1.5b-instruct --shared .gpu/shared --items 1024

Random bf16 weights of the config. The judgments' lengths are drawn long-tailed (lognormal, median --median tokens,
clipped to [64, --max-new]) and forced (no EOS: each row runs to its own length). Both ways use the slot count eval
gets by default (rows of the longest prompt + --max-new tokens in half the free memory) and do eval's work on every
judgment: decode, parse the verdict, write a JSON line, flush. The ways, each timed --rounds times, interleaved, after
one warm-up (graph captures) of each:
  * chunks: generate() per 256 judgments, each written once its call returns (eval before);
  * one call: every judgment in one generate(), each written in progress() as its row finishes (eval now);
  * one call, written after: the same call with the writing after it returns (what the writing costs in the loop).
Prints judgments/s and tokens/s (new tokens) of each, medians, and a markdown table.

    python bench/bench_eval.py --config ... --prefill     # only the prefill: each prompt and one new token

With --prefill, every prompt is prefilled (default slots: waves of what half the free memory holds) and one token
taken, --rounds times after a warm-up: the time of the prefill forwards, whose batches are right-padded to their
longest prompt. Run it from two checkouts to compare how they pack prompts into batches.
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
from bench_sample import our_model  # noqa: E402
from rubrics import judge_messages, parse_verdict  # noqa: E402
from sample import generate  # noqa: E402

CHUNK = 256  # eval.py's --batch default before


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-1.5b-instruct"))
    ap.add_argument("--shared", type=Path, default=Path(".gpu/shared"))
    ap.add_argument("--items", type=int, default=1024, help="judgments (RM-Bench pairs, placed by seed 0)")
    ap.add_argument("--median", type=int, default=400, help="median judgment length in tokens")
    ap.add_argument("--max-new", type=int, default=4096, help="eval's --max-new-tokens: the longest judgment")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", action="store_true", help="time only the prefill of every prompt")
    args = ap.parse_args()

    tok = data.Tokenizer.load(args.shared / "hf" / "qwen2.5-7b-instruct")
    items = data.place(data.read_rmbench(args.shared / "benchmarks" / "rm-bench"), "random", 0)[: args.items]
    prompts = tok.encode_chats([judge_messages(*p.conversations(at), "instruct") for p, at in items], True)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(args.median), 0.8, len(prompts)), 64, args.max_new).astype(int).tolist()
    total = sum(lengths)
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    print(f"{len(prompts)} judge prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens "
          f"(mean {statistics.mean(map(len, prompts)):.0f}); judgments of {min(lengths)}-{max(lengths)} tokens "
          f"(mean {total / len(lengths):.0f}, {total} in all)", flush=True)

    m = our_model(args.config)
    if args.prefill:
        times = []
        for r in range(args.rounds + 1):  # round 0: warm-up
            torch.cuda.synchronize()
            t = time.perf_counter()
            generate(m, prompts, 1, temperature=0)  # default slots: as many as half the free memory holds
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: prefill of {len(prompts)} prompts: {times[-1]:.3f} s")
        t = statistics.median(times[1:])
        print(f"prefill: median {t:.3f} s ({', '.join(f'{x:.3f}' for x in times[1:])}), "
              f"{sum(map(len, prompts)) / t:,.0f} prompt tokens/s")
        return
    slots = sample._slots_that_fit(m, max(map(len, prompts)) + args.max_new)  # eval's default
    print(f"{args.config.name}: {slots} slots", flush=True)
    log = open(Path(tempfile.mkdtemp()) / "judgments.jsonl", "w", encoding="utf-8")

    def write(o):  # eval's work on one judgment
        text = tok.decode(o.tokens, skip_special_tokens=True)
        log.write(json.dumps({"i": o.prompt_index, "output": text, "verdict": parse_verdict(text)}) + "\n")
        log.flush()

    def chunks():
        for start in range(0, len(prompts), CHUNK):
            for o in generate(m, prompts[start:start + CHUNK], lengths[start:start + CHUNK], temperature=0,
                              slots=slots):
                write(o)

    def one_call():
        generate(m, prompts, lengths, temperature=0, slots=slots, progress=write)

    def one_call_written_after():
        for o in generate(m, prompts, lengths, temperature=0, slots=slots):
            write(o)

    ways = {f"chunks of {CHUNK} (eval before)": chunks, "one call, written as made (eval now)": one_call,
            "one call, written after it returns": one_call_written_after}
    times = {name: [] for name in ways}
    for r in range(args.rounds + 1):  # round 0: warm-up
        for name, fn in ways.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter() - t
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: {name}: {t:.2f} s", flush=True)
            if r:
                times[name].append(t)
    print(f"\n| {args.config.name}, {len(prompts)} judgments, {slots} slots | median of {args.rounds} | "
          f"judgments/s | new tokens/s |\n|---|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        runs = ", ".join(f"{x:.2f}" for x in ts)
        print(f"| {name} | {t:.2f} s ({runs}) | {len(prompts) / t:.1f} | {total / t:,.0f} |")


if __name__ == "__main__":
    main()
