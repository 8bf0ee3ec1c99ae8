"""Sampling speed on a GPU: sample.py against transformers' eager generate, side by side.

    python bench/bench_sample.py --configs .gpu/hf      # folders holding the official config.json files

Random bf16 weights of the real configs (speed does not depend on the values). Every figure is the
median of --repeats runs. Prints a markdown table; BENCHMARKS.md records it.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import Config, KVCache, Transformer  # noqa: E402
import sample  # noqa: E402
from sample import Engine, generate  # noqa: E402

ROWS = []


T0 = time.time()


def row(name, value, unit, note=""):
    ROWS.append((name, value, unit, note))
    print(f"[{time.time() - T0:6.0f}s] {name:58s} {value:12.1f} {unit:8s} {note}", flush=True)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ceilings():
    n = 2 * 2**30  # 2 GiB copied: 4 GiB moved
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    t = timed(lambda: [b.copy_(a) for _ in range(10)], 5) / 10
    return 2 * n / t, matmul_ceiling()  # the buffers are freed on return


def matmul_ceiling(device="cuda"):
    """bf16 8192^3 matrix product rate on random data, FLOP/s."""
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    y = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    x @ y
    return 2 * 8192**3 / (timed(lambda: [x @ y for _ in range(10)], 5) / 10)


def our_model(cfg_dir, column_major=True):
    cfg = Config.from_hf(json.loads((cfg_dir / "config.json").read_text()))
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        m = Transformer(cfg, column_major).eval()
        torch.set_default_dtype(torch.float32)
    return m


def hf_model(cfg_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(cfg_dir)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()


def weight_bytes(m: Transformer):
    """Bytes read per decode step: every matrix, the output projection once; embedding rows are negligible."""
    total = sum(p.numel() * p.element_size() for p in m.parameters())
    if m.lm_head is not None:  # untied: the input embedding table is only gathered from
        total -= m.embed.weight.numel() * m.embed.weight.element_size()
    return total


def random_prompts(batch, prompt_len, seed=1) -> list[list[int]]:
    """batch prompts of prompt_len token ids, the same for a seed (speed does not depend on the ids)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (batch, prompt_len), generator=g).tolist()


def bench_ours(m, batch, prompt_len, new, repeats, engine_len=None, **kw):
    """engine_len: first install an engine whose cache holds engine_len tokens per row (what a call for
    long generations leaves behind; generate reuses it for shorter calls)."""
    prompts = random_prompts(batch, prompt_len)
    if engine_len:
        sample._engine = None
        sample._engine = Engine(m, slots=batch, max_len=engine_len, max_new=engine_len, temperature=0)
    generate(m, prompts, new, temperature=0, **kw)  # warm-up: captures the graphs' first use
    t = timed(lambda: generate(m, prompts, new, temperature=0, **kw), repeats)
    return batch * new / t


def bench_hf(hf, batch, prompt_len, new, repeats):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 150000, (batch, prompt_len), generator=g).cuda()
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
              attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        hf.generate(ids, **{**kw, "max_new_tokens": 8, "min_new_tokens": 8})
        t = timed(lambda: hf.generate(ids, **kw), repeats)
    return batch * new / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path(".gpu/hf"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--parts", default="b1,b64,ragged,long", help="comma list of: b1, b64, ragged, long")
    ap.add_argument("--no-flash", action="store_true", help="decode attention by masked SDPA (comparison)")
    ap.add_argument("--weight-layout", choices=["columns", "rows"], default="columns",
                    help="rows: every matrix row-major (the comparison for the model's column-major layout)")
    ap.add_argument("--ragged-slots", default="default,256", help="slot counts for the ragged part")
    ap.add_argument("--long-prompts", default="18,8", help="prompt counts for the long part (x 7 rows each)")
    args = ap.parse_args()
    if args.no_flash:
        import model

        model._flash_attention_usable = lambda t: False
    parts = set(args.parts.split(","))
    torch.backends.cuda.matmul.allow_tf32 = True
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    bw, flops = ceilings()
    row("copy bandwidth (read+write)", bw / 1e12, "TB/s")
    row("bf16 matmul 8192^3", flops / 1e12, "TFLOP/s")

    for name, b1_target in (("qwen2.5-1.5b-instruct", 0.40), ("qwen2.5-7b-instruct", 0.75)):
        d = args.configs / name
        if name.startswith("qwen2.5-1.5b") and not parts & {"b1", "ragged"}:
            continue
        m = our_model(d, column_major=args.weight_layout == "columns")
        roof = bw / weight_bytes(m)
        if "b1" in parts:
            t = bench_ours(m, 1, 128, 256, args.repeats)
            row(f"{name} batch 1, prompt 128, 256 new: ours", t, "tok/s",
                f"{t / roof:.1%} of weight-read roofline {roof:.0f} tok/s (target {b1_target:.0%})")
            t = bench_ours(m, 1, 128, 256, args.repeats, cuda_graph=False)
            row(f"{name} batch 1: ours without CUDA graphs", t, "tok/s", f"{t / roof:.0%} of roofline")
            t = bench_ours(m, 1, 128, 256, args.repeats, engine_len=8448)
            row(f"{name} batch 1, in an engine sized for 8192 new tokens", t, "tok/s", f"{t / roof:.0%} of roofline")
            sample._engine = None
        if name.startswith("qwen2.5-7b") and "b64" in parts:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t64 = bench_ours(m, 64, 512, 256, args.repeats)
            peak = torch.cuda.max_memory_allocated() - base
            cache = 64 * (512 + 256) * KVCache.bytes_per_token(m.cfg)
            row(f"{name} batch 64, prompt 512, 256 new: ours", t64, "tok/s",
                f"peak beyond weights {peak / 2**30:.2f} GiB, of which KV cache {cache / 2**30:.2f} GiB")
            c = KV_GiB(m.cfg, 64, 4096)
            row(f"{name} KV cache at batch 64 x 4096 tokens", c, "GiB",
                f"{KVCache.bytes_per_token(m.cfg) / 1024:.0f} KiB per token")
        if name.startswith("qwen2.5-7b") and "long" in parts:
            for n_prompts in args.long_prompts.split(","):
                long_rollouts(m, args.repeats, int(n_prompts))
        if name.startswith("qwen2.5-1.5b") and "ragged" in parts:
            ragged(m, args.repeats, [None if x == "default" else int(x) for x in args.ragged_slots.split(",")])
        del m
        torch.cuda.empty_cache()
        if not args.skip_hf and parts & {"b1", "b64"}:
            hf = hf_model(d)
            if "b1" in parts:
                t = bench_hf(hf, 1, 128, 256, args.repeats)
                row(f"{name} batch 1: transformers eager generate", t, "tok/s", f"{t / roof:.0%} of roofline")
            if name.startswith("qwen2.5-7b") and "b64" in parts:
                th = bench_hf(hf, 64, 512, 256, args.repeats)
                row(f"{name} batch 64: transformers eager generate", th, "tok/s",
                    f"ours / transformers = {t64 / th:.2f}x (target 4x)")
            del hf
            torch.cuda.empty_cache()

    print("\n| measurement | value | unit | note |\n|---|---|---|---|")
    for r in ROWS:
        print(f"| {r[0]} | {r[1]:,.1f} | {r[2]} | {r[3]} |")


def KV_GiB(cfg, batch, tokens):
    return batch * tokens * KVCache.bytes_per_token(cfg) / 2**30


def ragged_workload():
    """GRPO shape: 64 prompts x 7 samples, prompt 1024, response lengths long-tailed in [128, 2048]
    (forced: EOS ignored until each row's own length). Returns the 64 prompts, the 448 sequences'
    prompts and their lengths.

    generate() takes one limit per prompt, so each of the 448 sequences gets its own prompt entry (n=1)
    and with it its own length, while prompts repeat in groups of 7 as in GRPO."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(450), 0.75, 64 * 7), 128, 2048).astype(int).tolist()
    prompts = random_prompts(64, 1024, seed=2)
    return prompts, [prompts[i // 7] for i in range(64 * 7)], lengths


def ragged(m, repeats, slot_counts):
    """The ragged workload against a uniform batch of the same total tokens."""
    prompts, seq_prompts, lengths = ragged_workload()
    total = sum(lengths)
    uniform_len = int(round(total / len(lengths)))
    for slots in slot_counts:  # None: the default, every sequence at once if the cache fits (448 here)
        kw = dict(temperature=1.0, slots=slots)
        generate(m, seq_prompts, lengths, **kw)  # warm-up: sizes the engine, captures its graphs
        t_r = timed(lambda kw=kw: generate(m, seq_prompts, lengths, **kw), repeats)
        t_u = timed(lambda kw=kw: generate(m, seq_prompts, [uniform_len] * len(lengths), **kw), repeats)
        r, u = total / t_r, uniform_len * len(lengths) / t_u
        name = "default slots (all 448)" if slots is None else f"{slots} slots"
        row(f"ragged GRPO batch (448 seqs, {total} tokens, {name})", r, "tok/s",
            f"uniform {uniform_len} each: {u:.0f} tok/s; ragged/uniform = {r / u:.1%} (target 70%)")
        if slots is None:
            # With n=7 each prompt is prefilled once and copied to its samples.
            t = timed(lambda kw=kw: generate(m, prompts, uniform_len, n=7, **kw), repeats)
            row(f"same uniform batch via n=7 (one prefill per prompt, {name})", uniform_len * 448 / t, "tok/s")


def long_rollouts(m, repeats, n_prompts):
    """GRPO rollouts at length on the 7B: n_prompts prompts of 2,048 tokens, 7 samples each (one prefill per
    prompt), 1,024 new tokens each, temperature 1 with log-probs, as GRPO samples. At 18 prompts, 126 rows
    decode at positions 2,048-3,072, where reading the cache costs more than reading the weights; 8 prompts
    make 56 rows, what an 80 GB GPU holds of a 7B GRPO run at the recipe's lengths (about 9,000 positions
    each)."""
    prompts = random_prompts(n_prompts, 2048, seed=3)
    kw = dict(n=7, temperature=1.0, return_logprobs=True)
    generate(m, prompts, 1024, **kw)  # warm-up: sizes the engine, captures its graphs
    t = timed(lambda: generate(m, prompts, 1024, **kw), repeats)
    rows = 7 * n_prompts
    row(f"GRPO rollouts, 7B: {n_prompts} prompts x 7, prompt 2048, 1024 new", rows * 1024 / t, "tok/s",
        f"temperature 1, log-probs, default slots (all {rows})")
    sample._engine = None


if __name__ == "__main__":
    main()
