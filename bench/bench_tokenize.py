"""Tokenizing before the GPU starts: eval's judge prompts and sft's rows, one conversation at a time against
Tokenizer.encode_chats (the distinct pieces of 256 conversations per batch, spread over the CPU's cores).

    python bench/bench_tokenize.py                   # needs ../shared (or RMR1_SHARED); CPU only
    python bench/bench_tokenize.py --rows 8700 --runs 3

eval: every RM-Bench pair (chosen answer placed as eval.py places it) rendered as the Instruct judge prompt with
the Qwen2.5 tokenizer. sft: `--rows` rows from RM-Bench pairs with a seeded trace of 1,500 words each (about the
length of the distilled traces), read by sft.load_rows. One at a time means encode_chat per conversation (two per
SFT row: the prompt, and the prompt with its trace). Median of --runs runs; each way's ids are checked equal.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8700, help="SFT rows (the paper's 8.7K distilled traces)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tok = data.Tokenizer.load(SHARED / "hf" / "qwen2.5-7b-instruct")
    pairs = data.read_rmbench(SHARED / "benchmarks" / "rm-bench")
    prompts = [judge_messages(*p.conversations(at), "instruct") for p, at in data.place(pairs, "random", 0)]
    print(f"{os.cpu_count()} CPUs; {len(prompts)} RM-Bench judge prompts, {args.rows} SFT rows; median of {args.runs}")

    one, ids = median_time(lambda: [tok.encode_chat(m, add_generation_prompt=True) for m in prompts], args.runs)
    batched, ids_b = median_time(lambda: tok.encode_chats(prompts, add_generation_prompt=True), args.runs)
    assert ids == ids_b
    print(f"eval prompts: one at a time {one:.1f} s, encode_chats {batched:.1f} s ({one / batched:.1f}x), "
          f"{sum(map(len, ids)):,} tokens")

    rnd, words = random.Random(0), (ROOT / "README.md").read_text().split()
    rows = data.training_rows((pairs * (args.rows // len(pairs) + 1))[: args.rows])
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
