"""Tokenizing before the GPU starts: eval's judge prompts and sft's rows, one conversation at a time against
Tokenizer.encode_chats (the distinct pieces of 256 conversations per batch, spread over the CPU's cores).

    python bench/bench_tokenize.py                   # needs ../shared (or RMR1_SHARED); CPU only
    python bench/bench_tokenize.py --rows 8700 --runs 3
    python bench/bench_tokenize.py --ranks 8             # eval's check under torchrun: 8 processes at once

eval: every RM-Bench pair (chosen answer placed as eval.py places it) rendered as the Instruct judge prompt with
the Qwen2.5 tokenizer. sft: `--rows` rows from RM-Bench pairs with a seeded trace of 1,500 words each (about the
length of the distilled traces), read by sft.load_rows. One at a time means encode_chat per conversation (two per
SFT row: the prompt, and the prompt with its trace). Median of --runs runs; each way's ids are checked equal.

--ranks N: N processes start together, as eval's ranks under torchrun do on one node, and the wall time until the
last is done is reported for each process encoding its 1/N share one prompt at a time (the code before eval
checked every pair) and for each encoding every prompt with encode_chats (what eval does now).
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import sft  # noqa: E402
from rubrics import judge_messages  # noqa: E402

SHARED = Path(os.environ.get("RMR1_SHARED", ROOT.parent / "shared"))


def median_time(fn, runs):
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def judge_prompts():
    pairs = data.read_rmbench(SHARED / "benchmarks" / "rm-bench")
    return pairs, [judge_messages(*p.conversations(at), "instruct") for p, at in data.place(pairs, "random", 0)]


def rank_process(rank, ranks, mode, barrier, done):
    """One of `ranks` processes: loads the tokenizer and prompts, waits for the others, encodes, reports."""
    tok = data.Tokenizer.load(SHARED / "hf" / "qwen2.5-7b-instruct")
    _, prompts = judge_prompts()
    barrier.wait()
    if mode == "share":
        [tok.encode_chat(m, add_generation_prompt=True) for m in prompts[rank::ranks]]
    else:
        tok.encode_chats(prompts, add_generation_prompt=True)
    done.put(time.perf_counter())


def ranks_at_once(ranks, mode):
    """Seconds from the moment all `ranks` processes are ready until the last one has encoded."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, done = ctx.Barrier(ranks + 1), ctx.Queue()
    procs = [ctx.Process(target=rank_process, args=(r, ranks, mode, barrier, done)) for r in range(ranks)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    last = max(done.get() for _ in procs)
    for p in procs:
        p.join()
    return last - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8700, help="SFT rows (the paper's 8.7K distilled traces)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ranks", type=int, default=0, help="only the torchrun case, with this many processes")
    args = ap.parse_args()
    if args.ranks:
        print(f"{os.cpu_count()} CPUs; {args.ranks} processes at once; median of {args.runs}")
        for mode, what in (("share", "its share, one at a time"), ("all", "every prompt, encode_chats")):
            times = [ranks_at_once(args.ranks, mode) for _ in range(args.runs)]
            print(f"each process encodes {what}: {statistics.median(times):.1f} s "
                  f"({', '.join(f'{t:.1f}' for t in times)})")
        return
    tok = data.Tokenizer.load(SHARED / "hf" / "qwen2.5-7b-instruct")
    pairs, prompts = judge_prompts()
    print(f"{os.cpu_count()} CPUs; {len(prompts)} RM-Bench judge prompts, {args.rows} SFT rows; median of {args.runs}")

    one, ids = median_time(lambda: [tok.encode_chat(m, add_generation_prompt=True) for m in prompts], args.runs)
    batched, ids_b = median_time(lambda: tok.encode_chats(prompts, add_generation_prompt=True), args.runs)
    assert ids == ids_b
    print(f"eval prompts: one at a time {one:.1f} s, encode_chats {batched:.1f} s ({one / batched:.1f}x), "
          f"{sum(map(len, ids)):,} tokens")

    rnd, words = random.Random(0), (ROOT / "README.md").read_text().split()
    rows = sft.training_rows((pairs * (args.rows // len(pairs) + 1))[: args.rows])
    for r in rows:
        letter = "A" if r["winner"] == "model_a" else "B"
        r["response"] = (f"<type>Chat</type>\n<rubric>{' '.join(rnd.choice(words) for _ in range(1500))}</rubric>\n"
                         f"<answer>[[{letter}]]</answer>")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        read = data.read_rmr1_training(path)
        one, rows_one = median_time(lambda: [sft.mask_row(tok, tok.encode_chat(r["messages"]), tok.encode_chat(
            [*r["messages"], {"role": "assistant", "content": r["target"]}])) for r in read], args.runs)
        cfg = sft.SFTConfig(data=str(path), max_len=12288)
        batched, (rows_b, _) = median_time(lambda: sft.load_rows(cfg, tok), args.runs)
    assert rows_one == [(ids.tolist(), mask.tolist()) for ids, mask in rows_b]
    print(f"sft rows: one at a time {one:.1f} s, load_rows {batched:.1f} s ({one / batched:.1f}x), "
          f"{sum(len(i) for i, _ in rows_b):,} tokens")


if __name__ == "__main__":
    main()
