"""Exploration: what does picking the next token cost next to the decode forward, at the batch sizes a
ragged batch runs through?

    python bench/explore_sampling.py [--config .gpu/hf/qwen2.5-1.5b-instruct]

Times, per call, captured 200 times in one CUDA graph (median of 5 replays): the 1.5B decode forward at
the shapes a ragged batch runs, then picking tokens from [B, vocab] bf16 logits (as the model returns
them) for several batch sizes B: `sample.sample_next` before (one cumsum over the vocabulary, with the
float32 copy the engine made first) and now (`inverse_cdf`), a variant with exp(x - max) in place of the
softmax, greedy before and now, and the full and a blocked cumsum alone.

Found on an H100 (2026-11-22, bench/results/2026-11-22-h100-explore-sampling.log): the one-pass cumsum
took 190 us at every batch from 2 to 32 (one thread block per 32 rows), so picking tokens cost 316 us per
step at batch 16 and 1,726 us at 448; the two-level draw (a58b64a) 125 and 828 us.
Then (bench/results/2026-11-22-h100-explore-sampling-table.log, "hash+draw" is 4015d5d's sampling, "now"
reads the row's uniform number from the engine's table and draws with flat running sums): 101.1 -> 87.9 us
at batch 1, 122.8 -> 110.4 at 16, 197.6 against 204.9 at 64, 839.6 against 823.8 at 448; the same token on
every row up to 64 rows (one row of 256 differs: u now has 23 random bits, not 24). The GPU's cumsum kept the
running sum flat over every zero it was given (0 of 294,626), which torch does not promise.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sample  # noqa: E402
from bench_sample import our_model  # noqa: E402
from explore_attention import per_call_us  # noqa: E402
from model import KVCache, load_config  # noqa: E402


def blocked_cumsum(x, c=128):
    B, V = x.shape
    x = F.pad(x, (0, (-V) % c))
    runs = x.view(B, -1, c).cumsum(-1)  # [B, V/c, c], each run on its own
    ends = runs[:, :, -1].cumsum(-1)  # [B, V/c] inclusive totals
    return (runs + F.pad(ends[:, :-1], (1, 0))[:, :, None]).view(B, -1)[:, :V]


@torch.no_grad()
def time_forward(path, cfg):
    m = our_model(path)
    for B, p in ((1, 300), (16, 2500), (64, 2000), (448, 1300)):
        cache = KVCache(cfg, B, 3072, device="cuda")
        cache.attend_len = 3072
        tok = torch.zeros(B, 1, dtype=torch.long, device="cuda")
        pos = torch.full((B, 1), p, device="cuda")
        cache.prepare(pos)
        us = per_call_us(lambda: m(tok, cache, pos), calls=20)
        print(f"decode forward, batch {B:>3} at position {p}: {us:9.1f} us", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=Path(".gpu/hf/qwen2.5-1.5b-instruct"))
    args = ap.parse_args()
    cfg = load_config(args.config)
    V = cfg.vocab_size
    print(torch.cuda.get_device_name(), "torch", torch.__version__, args.config.name, "vocab", V, flush=True)

    time_forward(args.config, cfg)
    torch.cuda.empty_cache()

    g = torch.Generator(device="cuda").manual_seed(0)
    # Does the GPU's scan keep running sums flat over zeros? (inverse_cdf's flat_cumsum assumes it may not)
    for n in (128, 1187):
        x = torch.rand(448, n, device="cuda", generator=g)
        x[x < 0.5] = 0
        c = x.cumsum(-1)
        moved = ((c[:, 1:] != c[:, :-1]) & (x[:, 1:] == 0)).sum().item()
        print(f"cumsum over [448, {n}], half zeros: {moved} of {(x[:, 1:] == 0).sum().item()} zeros change the "
              f"running sum", flush=True)
    names = ("one-pass", "hash+draw", "now", "exp variant", "greedy before", "greedy now", "cumsum",
             "blocked cumsum")
    print(f"{'batch':>5} " + " ".join(f"{n:>14}" for n in names) + "   same tokens as hash+draw")
    for B in (1, 2, 8, 16, 64, 256, 448):
        logits = (torch.randn(B, V, device="cuda", generator=g) * 3).bfloat16()  # as the model returns them
        key = sample.sequence_key(0, torch.arange(B, device="cuda"))
        pos = torch.full((B,), 1000, device="cuda")
        # the engine's per-row table of uniform numbers (drawn when a sequence starts) and its one read per step
        table = sample.uniform_at(key[:, None], 900 + torch.arange(2048, device="cuda"))  # positions 900 on
        col = pos[:, None] - 900
        now = lambda: sample.sample_next(logits, table.gather(1, col)[:, 0], 1.0, logprobs=False)  # noqa: E731
        probs = logits.float().softmax(-1)
        same = (hash_and_draw(logits, key, pos) == now()[0]).float().mean()
        cells = [per_call_us(f) for f in (
            lambda: one_pass(logits, key, pos, 1.0),
            lambda: hash_and_draw(logits, key, pos),
            now,
            lambda: exp_variant(logits, key, pos),
            lambda: one_pass(logits, key, pos, 0.0),
            lambda: sample.sample_next(logits, None, 0.0, logprobs=False),
            lambda: probs.cumsum(-1),
            lambda: blocked_cumsum(probs),
        )]
        print(f"{B:>5} " + " ".join(f"{c:>11.1f} us" for c in cells) + f"   {same:.4f}", flush=True)


def uniform_24(key, pos):
    """uniform_at before 2026-11-22's change to 23 bits: [0, 1 - 2**-24]."""
    return (sample._mix((key + pos) & sample._M32) >> 8).float() / 2**24


def one_pass(logits, key, pos, temperature):
    """sample_next as it was at ed4931b (softmax, one cumsum over the vocabulary, logsumexp), with the
    float32 copy of the logits the engine made before calling it."""
    logits = logits.float()
    if temperature == 0:
        tok = logits.argmax(-1)
    else:
        probs = logits.softmax(-1)
        cdf = probs.cumsum(-1)
        u = uniform_24(key, pos)[:, None] * cdf[:, -1:]
        tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    return tok, logits.gather(-1, tok[:, None])[:, 0] - torch.logsumexp(logits, -1)


def hash_and_draw(logits, key, pos, run=128):
    """Sampling without log-probs as it was at 4015d5d: the position hashed at every step (15 small kernels),
    then the two-level draw with its bounds kept by nextafter (no flat running sums)."""
    u = uniform_24(key, pos)
    w = logits.softmax(-1, dtype=torch.float32)
    B = w.shape[0]
    below = lambda x, b: torch.minimum(x, torch.nextafter(b, torch.zeros_like(b)))  # noqa: E731
    runs = w.view(B, -1, run)
    mass = runs.sum(-1)
    ends = mass.cumsum(-1)
    target = below(u[:, None] * ends[:, -1:], ends[:, -1:])
    r = torch.searchsorted(ends, target, right=True)
    start = torch.where(r > 0, ends.gather(-1, (r - 1).clamp(min=0)), 0.0)
    inside = runs.gather(1, r[:, :, None].expand(B, 1, run))[:, 0].cumsum(-1)
    t = below((target - start).clamp(min=0) / mass.gather(-1, r) * inside[:, -1:], inside[:, -1:])
    return (r * run + torch.searchsorted(inside, t, right=True))[:, 0]


def exp_variant(logits, key, pos):
    """Unnormalised weights exp(x - max) instead of softmax; log-prob from their sum."""
    m = logits.amax(-1, keepdim=True).float()
    w = torch.sub(logits, m).exp_()
    tok = sample.inverse_cdf(w, sample.uniform_at(key, pos))  # (hashing at the step, as before)
    return tok, (logits.gather(-1, tok[:, None]).float() - m)[:, 0] - w.sum(-1).log()


if __name__ == "__main__":
    main()
